"""torch.distributed.checkpoint directories (ckptfix/formats/dcp_io.py), against DCP itself.

Fixtures: tests/data/dcp/{single,fsdp2,tp} written by tools/make_dcp_fixtures.py (one process;
FSDP2 over two ranks; tensor parallel over two ranks, bfloat16). The reference is torch's own
loader, ``torch.distributed.checkpoint.format_utils.dcp_to_torch_save`` (offline, one process),
and ``FileSystemReader.read_metadata`` for what the metadata lists.
"""

import collections
import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, ChunkStorageMetadata, MetadataIndex

import dcp_nets
from conftest import DATA
from numerics import assert_outputs_close
from test_bad_input import assert_bad

from ckptfix.errors import InputError
from ckptfix.formats import dcp_io
from ckptfix.formats.detect import classify, open_checkpoint

DCP = DATA / "dcp"
NETS = "tests/dcp_nets.py"
# fixture -> (eager twin, prefix its model keys carry, tensors split across ranks)
CASES = {"single": (dcp_nets.DcpCnn, "model.", False), "fsdp2": (dcp_nets.DcpMlp, "model.", True),
         "tp": (dcp_nets.DcpTp, "", True)}


def flatten(obj, prefix=""):
    """DCP's fqns for a nested state dict: dict keys joined with '.' (leaves: anything else)."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """fixture -> every tensor torch's own DCP loader reads from it, by fqn."""
    out = {}
    for name in CASES:
        pt = tmp_path_factory.mktemp("ref") / f"{name}.pt"
        dcp_to_torch_save(DCP / name, pt)
        sd = torch.load(pt, weights_only=True)
        out[name] = {k: v for k, v in flatten(sd).items() if isinstance(v, torch.Tensor)}
    return out


def dir_sha(d: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(d.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# reading


@pytest.mark.parametrize("name", list(CASES))
def test_names_shapes_and_values_equal_dcp_loading_them(name, reference):
    assert classify(DCP / name) == "dcp"
    md = FileSystemReader(DCP / name).read_metadata()
    ref = reference[name]
    with open_checkpoint(DCP / name) as r:
        metas = r.metas()
        optimizer = set(r.extras()["optimizer_state"])
        # every tensor DCP lists is a weight or optimizer state; every bytes entry is listed as such
        tensors = [k for k, v in md.state_dict_metadata.items() if not isinstance(v, BytesStorageMetadata)]
        assert list(metas) == [k for k in tensors if k not in optimizer]  # in the metadata's order
        assert set(metas) | optimizer == set(tensors)
        assert not set(metas) & optimizer
        assert all(k.startswith("optim.") for k in optimizer)
        assert r.extras()["non_tensor"] == [k for k, v in md.state_dict_metadata.items()
                                            if isinstance(v, BytesStorageMetadata)]
        for n, m in metas.items():
            want = ref[n]
            assert m.shape == tuple(want.shape) == tuple(md.state_dict_metadata[n].size), n
            assert m.dtype == str(want.dtype).removeprefix("torch."), n
            got = r.read(n)
            assert got.dtype == want.dtype and got.is_contiguous()
            assert torch.equal(got, want), n
    if CASES[name][2]:  # really sharded: some tensor has chunks in both files
        files = {v.relative_path for v in md.storage_data.values()}
        assert len(files) == 2
        assert any(len(v.chunks) == 2 for v in md.state_dict_metadata.values() if hasattr(v, "chunks"))


def test_extras_name_the_prefix_optimizer_state_and_non_tensor_entries():
    with open_checkpoint(DCP / "single") as r:
        ex = r.extras()
        assert ex["state_dict_keys"] == ["model", "optim", "epoch"]
        assert ex["prefixes"] == {"model.": len(r.metas())}
        assert "epoch" in ex["non_tensor"] and "optim.param_groups.0.lr" in ex["non_tensor"]
        assert "optim.state.0.exp_avg" in ex["optimizer_state"]
        assert ex["files"] == ["__0_0.distcp"] and ex["dcp_version"] == "1.0.0"
        assert any("'model.'" in w and "strip_prefix" in w for w in r.warnings())
    with open_checkpoint(DCP / "tp") as r:  # a bare model state dict: no prefix to strip
        assert r.extras()["prefixes"] == {} and r.warnings() == []
        assert r.extras()["chunks"] == 7  # fc2.bias replicated: written once


def test_the_metadata_file_can_be_named_too():
    assert classify(DCP / "fsdp2" / ".metadata") == "dcp"
    with open_checkpoint(DCP / "fsdp2" / ".metadata") as a, open_checkpoint(DCP / "fsdp2") as b:
        assert a.metas() == b.metas()
        assert torch.equal(a.read("model.fc1.weight"), b.read("model.fc1.weight"))


def test_read_touches_only_that_tensors_items(monkeypatch):
    seen = []
    real = dcp_io.read_item

    def spy(src, dtype, sizes):
        seen.append(src.item)
        return real(src, dtype, sizes)

    monkeypatch.setattr(dcp_io, "read_item", spy)
    with open_checkpoint(DCP / "fsdp2") as r:
        r.read("model.fc1.weight")
        assert seen == [c.item for c in r.entries["model.fc1.weight"].chunks] and len(seen) == 2
        assert len({i.file for i in seen}) == 2


def test_inspect_cli(cli):
    r = cli("inspect", DCP / "fsdp2", "--json")
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["format"] == "dcp"
    assert [t["name"] for t in info["tensors"]][:2] == ["model.fc1.weight", "model.fc1.bias"]
    assert info["prefixes"] == {"model.": 6}


# ---------------------------------------------------------------------------------------------
# converting: the eager model loads the output strictly and computes what the source model did


def _rules(tmp_path, prefix):
    p = tmp_path / "rules.yaml"
    p.write_text("ckptfix: 1\nrules:\n" + (f"  - strip_prefix: {prefix}\n" if prefix else "  []\n"))
    return p


def _outputs_match(name, sd):
    cls = CASES[name][0]
    io = np.load(DCP / f"{name}_io.npz")
    model = cls()
    if name == "tp":
        model = model.to(torch.bfloat16)
    model.load_state_dict(sd, strict=True)
    model.eval()
    x = torch.from_numpy(io["x"])
    with torch.no_grad():
        if name == "tp":  # bfloat16: x and y were stored as float32 copies of bfloat16 values
            y = model(x.to(torch.bfloat16))
            torch.testing.assert_close(y, torch.from_numpy(io["y"]).to(torch.bfloat16))
        else:
            assert_outputs_close(model(x), torch.from_numpy(io["y"]))


@pytest.mark.parametrize("name", list(CASES))
def test_apply_to_safetensors_loads_strictly_and_gives_the_source_outputs(cli, tmp_path, name, reference):
    cls, prefix, _ = CASES[name]
    out = tmp_path / "out.safetensors"
    r = cli("apply", DCP / name, "-r", _rules(tmp_path, prefix), "--target", f"{NETS}:{cls.__name__}", "-o", out)
    assert r.exit_code == 0, r.stderr
    assert "fits" in r.stdout
    sd = load_file(out)
    for k, v in sd.items():
        assert torch.equal(v, reference[name][prefix + k]), k
    _outputs_match(name, sd)


@pytest.mark.parametrize("name", ["single", "fsdp2"])
def test_apply_to_hf_sharded_output(cli, tmp_path, name, reference):
    cls, prefix, _ = CASES[name]
    out = tmp_path / "sharded"
    r = cli("apply", DCP / name, "-r", _rules(tmp_path, prefix), "-o", out, "--shard-size", "200B")
    assert r.exit_code == 0, r.stderr
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1
    sd = {}
    for f in files:
        sd.update(load_file(out / f))
    assert set(sd) == {k.removeprefix(prefix) for k in reference[name] if not k.startswith("optim.")}
    _outputs_match(name, sd)


def test_apply_without_rules_keeps_dcp_names_and_pt_output_works(cli, tmp_path, reference):
    out = tmp_path / "out.pt"
    r = cli("apply", DCP / "fsdp2", "-o", out)
    assert r.exit_code == 0, r.stderr
    sd = torch.load(out, weights_only=True)
    assert sorted(sd) == sorted(k for k in reference["fsdp2"] if k.startswith("model."))
    assert all(torch.equal(v, reference["fsdp2"][k]) for k, v in sd.items())


# ---------------------------------------------------------------------------------------------
# tiling


def _chunks(*boxes):
    item = dcp_io.Item("f", 0, 1)
    return tuple(dcp_io.Chunk(tuple(o), tuple(s), item) for o, s in boxes)


@pytest.mark.parametrize("shape,boxes,problem", [
    ((5, 7), [((0, 0), (3, 7)), ((3, 0), (2, 7))], None),
    ((4, 10), [((0, 0), (4, 5)), ((0, 5), (4, 5))], None),
    ((4, 6), [((r, c), (2, 3)) for r in (0, 2) for c in (0, 3)], None),  # a 2x2 grid (FSDP x TP)
    ((), [((), ())], None),
    ((0, 3), [((0, 0), (0, 3))], None),
    ((5, 7), [((0, 0), (3, 7)), ((2, 0), (3, 7))], "overlap"),
    ((5, 7), [((0, 0), (3, 7)), ((3, 0), (1, 7))], "gap"),
    ((5, 7), [((0, 0), (3, 7)), ((3, 0), (3, 7))], "outside"),
    ((5, 7), [((0, 0), (5, 7)), ((0, 0), (5, 7))], "overlap"),
    ((5,), [((0, 0), (5, 1))], "rank"),
    ((), [((), ()), ((), ())], "cover 2 of its 1"),
    ((6,), [((0,), (3,)), ((1,), (1,)), ((4,), (2,))], "overlap"),  # volumes add up; still an overlap
    ((2, 10), [((0, 0), (1, 5)), ((0, 5), (1, 5)), ((1, 0), (1, 3)), ((1, 3), (1, 7))], None),  # not a grid
    ((2, 10), [((0, 0), (1, 5)), ((0, 5), (1, 5)), ((1, 0), (1, 4)), ((1, 3), (1, 7))], "overlap"),
])
def test_tiling(shape, boxes, problem):
    got = dcp_io._tiling_problem(shape, _chunks(*boxes))
    assert (got is None) if problem is None else (problem in got), got


def test_tiling_gives_up_on_layouts_too_irregular_to_check():
    """A staircase of disjoint chunks all overlapping along the swept dimension: quadratic to
    check, so the comparisons are budgeted per checkpoint; grids never spend any."""
    n = 300
    stairs = _chunks(*[((i, i), (n, 1)) for i in range(n)])
    budget = [1000]
    assert "too irregularly" in dcp_io._tiling_problem((2 * n, n), stairs, budget)
    grid = _chunks(*[((r, c), (1, 1)) for r in range(n) for c in range(4)])
    budget = [0]
    assert dcp_io._tiling_problem((n, 4), grid, budget) is None and budget == [0]


# ---------------------------------------------------------------------------------------------
# hostile and broken directories: one line naming the file, nothing written, input unchanged


def _copy(tmp_path, name="fsdp2") -> Path:
    d = tmp_path / "in" / name
    shutil.copytree(DCP / name, d)
    return d


def _edit_metadata(d: Path, edit) -> None:
    """Rewrite .metadata with ``edit(md)`` applied (the test's own trusted fixture, through DCP's classes)."""
    md = FileSystemReader(d).read_metadata()
    md.storage_meta.load_id = None
    edit(md)
    with open(d / ".metadata", "wb") as f:
        pickle.dump(md, f)


def _move_chunk(md, fqn, i, offsets=None, sizes=None):
    """Give chunk ``i`` of ``fqn`` new offsets/sizes, its storage entry following it."""
    c = md.state_dict_metadata[fqn].chunks[i]
    info = next(v for k, v in md.storage_data.items() if k.fqn == fqn and tuple(k.offset) == tuple(c.offsets))
    md.storage_data = {k: v for k, v in md.storage_data.items() if v is not info}
    new = ChunkStorageMetadata(torch.Size(offsets or c.offsets), torch.Size(sizes or c.sizes))
    md.state_dict_metadata[fqn].chunks[i] = new
    md.storage_data[MetadataIndex(fqn, new.offsets, i)] = info


def _storage(md, fqn, i=0):
    c = md.state_dict_metadata[fqn].chunks[i]
    return next(v for k, v in md.storage_data.items() if k.fqn == fqn and tuple(k.offset) == tuple(c.offsets))


class _Pwn:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


def _fires_unsafely(code: str, sentinel: Path) -> bool:
    """Whether the payload is real: loading the file the unsafe way (in a child) runs it."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    fired = sentinel.exists()
    sentinel.unlink(missing_ok=True)
    return fired


def _run_bad(cli, tmp_path, d, named, cause, *, reads_data=False):
    before = dir_sha(d.parent)
    out_dir = tmp_path / "out"
    out_dir.mkdir(exist_ok=True)
    r = cli("inspect", d)
    if reads_data:
        assert r.exit_code == 0, r.stderr
    else:
        assert_bad(r, named, cause)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    out = out_dir / "out.safetensors"
    assert_bad(cli("apply", d, "-o", out), named, cause, out=out)
    sharded = out_dir / "sharded"
    assert_bad(cli("apply", d, "-o", sharded, "--shard-size", "200B"), named, cause, out=sharded)
    assert list(out_dir.iterdir()) == []
    assert dir_sha(d.parent) == before


def test_metadata_naming_os_system_is_refused_and_never_runs(cli, tmp_path):
    d = _copy(tmp_path)
    sentinel = tmp_path / "pwned"
    (d / ".metadata").write_bytes(pickle.dumps(_Pwn(sentinel), protocol=2))
    _run_bad(cli, tmp_path, d, d / ".metadata", r"refused to unpickle.*system.*run code")
    assert not sentinel.exists()
    load = f"from torch.distributed.checkpoint import FileSystemReader as R; R({str(d)!r}).read_metadata()"
    assert _fires_unsafely(load, sentinel)


def test_metadata_hiding_a_payload_inside_a_real_metadata_is_refused(cli, tmp_path):
    d = _copy(tmp_path)
    sentinel = tmp_path / "pwned"
    _edit_metadata(d, lambda md: setattr(md, "planner_data", {"x": _Pwn(sentinel)}))
    _run_bad(cli, tmp_path, d, d / ".metadata", r"refused to unpickle.*system")
    assert not sentinel.exists()
    assert _fires_unsafely(f"import pickle; pickle.load(open({str(d / '.metadata')!r}, 'rb'))", sentinel)


def test_metadata_naming_any_other_global_is_refused(cli, tmp_path):
    import argparse

    d = _copy(tmp_path)
    _edit_metadata(d, lambda md: setattr(md, "planner_data", argparse.Namespace(a=1)))
    _run_bad(cli, tmp_path, d, d / ".metadata", r"names the global argparse\.Namespace.*refused")


def test_metadata_that_is_not_a_pickle(cli, tmp_path):
    d = _copy(tmp_path)
    (d / ".metadata").write_bytes((DCP / "fsdp2" / ".metadata").read_bytes()[:500])
    _run_bad(cli, tmp_path, d, d / ".metadata", r"not a valid pickle")


def test_metadata_declaring_a_huge_length_is_refused_before_any_allocation(cli, tmp_path):
    d = _copy(tmp_path)
    (d / ".metadata").write_bytes(b"\x80\x04\x96" + (1 << 60).to_bytes(8, "little") + b"." + b"\0" * 64)
    _run_bad(cli, tmp_path, d, d / ".metadata", r"not a valid pickle.*bytearray8")


def test_metadata_with_a_wrong_type_is_refused(cli, tmp_path):
    d = _copy(tmp_path)
    _edit_metadata(d, lambda md: setattr(_storage(md, "model.fc1.weight"), "offset", "12"))
    _run_bad(cli, tmp_path, d, d / ".metadata", r"offset is '12', expected a non-negative integer")


@pytest.mark.parametrize("where", ["../x.distcp", "ABS"])
def test_chunk_file_outside_the_directory_is_refused(cli, tmp_path, where):
    d = _copy(tmp_path)
    outside = tmp_path / "in" / "x.distcp"
    shutil.copy(d / "__1_0.distcp", outside)  # a real file: only where it is makes it wrong
    rel = str(outside) if where == "ABS" else where
    _edit_metadata(d, lambda md: setattr(_storage(md, "model.fc1.weight", 1), "relative_path", rel))
    _run_bad(cli, tmp_path, d, d / rel if where != "ABS" else outside, r"outside the checkpoint's directory.*refused")


def test_chunk_file_through_a_symlink_out_is_refused(cli, tmp_path):
    d = _copy(tmp_path)
    outside = tmp_path / "elsewhere.distcp"
    shutil.move(d / "__1_0.distcp", outside)
    os.symlink(outside, d / "__1_0.distcp")
    _run_bad(cli, tmp_path, d, d / "__1_0.distcp", r"resolves to .*outside")


def test_overlapping_chunks_are_refused(cli, tmp_path):
    d = _copy(tmp_path)
    _edit_metadata(d, lambda md: _move_chunk(md, "model.fc1.weight", 1, offsets=(2, 0)))
    _run_bad(cli, tmp_path, d, d / ".metadata", r"model\.fc1\.weight.*offsets \[0, 0\] and \[2, 0\] overlap")


def test_gapped_chunks_are_refused(cli, tmp_path):
    d = _copy(tmp_path)
    _edit_metadata(d, lambda md: _move_chunk(md, "model.fc1.weight", 1, sizes=(1, 7)))
    _run_bad(cli, tmp_path, d, d / ".metadata", r"model\.fc1\.weight.*cover 28 of its 35 elements \(a gap\)")


def test_chunk_outside_its_tensor_is_refused(cli, tmp_path):
    d = _copy(tmp_path)
    _edit_metadata(d, lambda md: _move_chunk(md, "model.fc1.weight", 1, offsets=(4, 0)))
    _run_bad(cli, tmp_path, d, d / ".metadata", r"lies outside its shape")


def test_truncated_distcp_is_refused(cli, tmp_path):
    d = _copy(tmp_path)
    f = d / "__1_0.distcp"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    _run_bad(cli, tmp_path, d, f, r"runs past the end of the file.*truncated")


def test_item_length_past_eof_is_refused(cli, tmp_path):
    d = _copy(tmp_path)
    _edit_metadata(d, lambda md: setattr(_storage(md, "model.fc2.bias", 1), "length", 1 << 40))
    _run_bad(cli, tmp_path, d, d / "__1_0.distcp", r"model\.fc2\.bias.*runs past the end of the file")


def test_overlapping_items_are_refused(cli, tmp_path):
    d = _copy(tmp_path)

    def edit(md):
        a, b = _storage(md, "model.fc1.weight", 1), _storage(md, "model.fc1.bias", 1)
        b.offset = a.offset + 10
    _edit_metadata(d, edit)
    _run_bad(cli, tmp_path, d, d / "__1_0.distcp", r"overlap at byte")


def test_missing_distcp_is_refused(cli, tmp_path):
    d = _copy(tmp_path)
    (d / "__0_0.distcp").unlink()
    _run_bad(cli, tmp_path, d, d / "__0_0.distcp", r"no such file.*missing")


def test_chunk_without_a_storage_entry_is_refused(cli, tmp_path):
    d = _copy(tmp_path)

    def edit(md):
        info = _storage(md, "model.fc2.weight", 0)
        md.storage_data = {k: v for k, v in md.storage_data.items() if v is not info}
    _edit_metadata(d, edit)
    _run_bad(cli, tmp_path, d, d / ".metadata", r"model\.fc2\.weight.*no storage_data entry")


def test_corrupt_chunk_bytes_fail_their_crc_when_read(cli, tmp_path):
    d = _copy(tmp_path)
    with open_checkpoint(d) as r:
        c = r.entries["model.fc1.weight"].chunks[1]
    f = d / c.item.file
    data = bytearray(f.read_bytes())
    rec = bytes(data[c.item.offset:c.item.offset + c.item.length])
    at = c.item.offset + _data_offset(rec)
    data[at] ^= 0xFF
    f.write_bytes(bytes(data))
    _run_bad(cli, tmp_path, d, f, r"model\.fc1\.weight.*data/0 fails its CRC", reads_data=True)


def _data_offset(record: bytes) -> int:
    """Where the storage record archive/data/0 starts inside one torch.save archive."""
    import io
    import struct
    import zipfile

    info = zipfile.ZipFile(io.BytesIO(record)).getinfo("archive/data/0")
    n, m = struct.unpack("<HH", record[info.header_offset + 26:info.header_offset + 30])
    return info.header_offset + 30 + n + m


def test_item_that_is_not_a_torch_save_archive(cli, tmp_path):
    d = _copy(tmp_path)
    f = d / "__1_0.distcp"
    with open_checkpoint(d) as r:
        c = r.entries["model.fc2.bias"].chunks[1]
    data = bytearray(f.read_bytes())
    data[c.item.offset:c.item.offset + 4] = b"\0\0\0\0"
    f.write_bytes(bytes(data))
    _run_bad(cli, tmp_path, d, f, r"model\.fc2\.bias.*not a torch\.save archive", reads_data=True)


def test_item_whose_pickle_runs_code_is_refused_and_never_runs(cli, tmp_path):
    """An item is a torch.save archive: one whose data.pkl names os.system is refused when read."""
    d = _copy(tmp_path)
    sentinel = tmp_path / "pwned"
    import io

    buf = io.BytesIO()
    torch.save(_Pwn(sentinel), buf)
    f = d / "__1_0.distcp"
    start = f.stat().st_size
    with open(f, "ab") as fh:
        fh.write(buf.getvalue())

    def edit(md):
        info = _storage(md, "model.fc2.bias", 1)
        info.offset, info.length = start, len(buf.getvalue())
    _edit_metadata(d, edit)
    _run_bad(cli, tmp_path, d, f, r"model\.fc2\.bias.*refused to unpickle.*system", reads_data=True)
    assert not sentinel.exists()
    assert _fires_unsafely(f"import io, torch; f = open({str(f)!r}, 'rb'); f.seek({start}); "
                           "torch.load(io.BytesIO(f.read()), weights_only=False)", sentinel)


def test_item_holding_the_wrong_shape_is_refused(cli, tmp_path):
    """The metadata says one thing, the item another: the item's own tensor is checked."""
    d = _copy(tmp_path)

    def edit(md):  # swap two chunks' items: same dtype, other shapes
        a, b = _storage(md, "model.fc1.weight", 1), _storage(md, "model.fc2.weight", 1)
        a.offset, b.offset, a.length, b.length = b.offset, a.offset, b.length, a.length
    _edit_metadata(d, edit)
    _run_bad(cli, tmp_path, d, d / "__1_0.distcp", r"model\.fc1\.weight.*holds a float32 tensor of shape "
             r"\[1, 5\], the metadata says float32 \[2, 7\]", reads_data=True)


def test_unsupported_transform_is_refused(cli, tmp_path):
    d = _copy(tmp_path)
    _edit_metadata(d, lambda md: setattr(_storage(md, "model.fc1.weight", 0), "transform_descriptors",
                                         ["stream.zstd/1"]))
    _run_bad(cli, tmp_path, d, d / ".metadata", r"stream\.zstd.*not supported")


def test_errors_are_input_errors_in_the_library_too(tmp_path):
    d = _copy(tmp_path)
    (d / "__1_0.distcp").unlink()
    with pytest.raises(InputError, match="missing"):
        open_checkpoint(d)


def _dcp_save(state, d: Path, **planner):
    import warnings

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import DefaultSavePlanner

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=str(d), no_dist=True,
                 planner=DefaultSavePlanner(**planner) if planner else None)
    return d


@pytest.mark.parametrize("case", ["unflattened", "tuple", "custom-list", "plain-objects"])
def test_tensors_pickled_inside_a_non_tensor_entry_are_said_not_read(cli, tmp_path, case):
    """Found by attacking: `dcp.save(..., planner=DefaultSavePlanner(flatten_state_dict=False))`
    stores the whole nested state dict as one pickled bytes entry; ckptfix read 0 tensors and
    `apply` wrote an empty file with no word. The entry is still never unpickled (only its zip
    directory is listed); a warning names it. Bytes entries holding no tensor say nothing."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 2, generator=g)
    state, planner, holders = {
        "unflattened": ({"model": {"fc.weight": w}}, {"flatten_state_dict": False}, ["model"]),
        "tuple": ({"fc.weight": w, "extra": (torch.ones(2),)}, {}, ["extra"]),
        "custom-list": ({"fc.weight": w, "meta": {"ids": {1, 2}, "q": collections.deque([torch.zeros(1)])}}, {},
                        ["meta.q"]),
        "plain-objects": ({"fc.weight": w, "step": 3, "lrs": [0.1, 0.2], "name": "run"}, {}, []),
    }[case]
    d = _dcp_save(state, tmp_path / "ckpt", **planner)
    with open_checkpoint(d) as r:
        nt = r.extras()["non_tensor"]
        warned = [x for x in r.warnings() if "hold tensors inside a pickled object" in x
                  or "holds tensors inside a pickled object" in x]
        assert bool(warned) == bool(holders), (nt, r.warnings())
        for k in holders:
            assert k in nt and repr(k) in warned[0]
        if case != "unflattened":
            assert torch.equal(r.read("fc.weight"), w)
