"""TorchScript archives (torch.jit.save): read without running them, named as
``torch.jit.load(f).state_dict()`` names them.

The reference is torch itself: every fixture (tests/data/torchscript/, from
tools/make_torchscript_fixtures.py) and module trees generated here (``RandomNet``, scripted and
traced) must give the same names, in the same order, with the same dtypes and bit-equal values.
Converted outputs load strictly into the eager models and compute what the scripted modules
compute. Broken and hostile archives are refused in one line naming the file.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import torchscript_nets as nets
from conftest import DATA
from numerics import assert_outputs_close

from ckptfix.errors import InputError, UnsafePickleError
from ckptfix.formats.detect import classify, open_checkpoint

TS = DATA / "torchscript"
FIXTURES = sorted(p.name for p in TS.glob("*.pt"))
NETS_PY = "tests/torchscript_nets.py"


def jit_load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path))


def jit_save(module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(module, str(path))
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_reads_as_torch(path: Path) -> dict:
    """ckptfix's names, order, dtypes and values are torch.jit.load(path).state_dict()'s."""
    ref = jit_load(path).state_dict()
    with open_checkpoint(path) as r:
        assert r.format == "torchscript"
        assert list(r.metas()) == list(ref)
        for name, t in ref.items():
            got = r.read(name)
            assert r.metas()[name].shape == tuple(t.shape), name
            assert got.dtype == t.dtype, name
            assert got.is_contiguous()
            assert torch.equal(got.view(torch.uint8) if got.dtype == torch.bool else got,
                               t.view(torch.uint8) if t.dtype == torch.bool else t), name
            # bit-equal (NaN-safe): the same bytes
            assert got.contiguous().view(-1).view(torch.uint8).tolist() == \
                t.contiguous().view(-1).view(torch.uint8).tolist(), name
        return {"extras": r.extras(), "warnings": r.warnings(), "names": list(ref)}


# ---------------------------------------------------------------------------------------------
# names and values: the fixtures and generated module trees


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_reads_as_torch_jit_load(name):
    assert classify(TS / name) == "torchscript"
    assert_reads_as_torch(TS / name)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("how", ["script", "trace"])
def test_generated_module_trees_read_as_torch_jit_load(seed, how, tmp_path):
    model = nets.RandomNet(seed, share=how == "script")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.script(model) if how == "script" else torch.jit.trace(model, torch.zeros(1))
    p = jit_save(module, tmp_path / f"random{seed}.pt")
    before = sha(p)
    assert_reads_as_torch(p)
    assert sha(p) == before


def test_the_generated_trees_cover_what_they_are_for(tmp_path):
    """The seeds above draw views, shared tensors, non-persistent buffers, plain attributes,
    ModuleDicts, LSTM/GRU, mangled classes and non-float dtypes."""
    seen = set()
    for seed in range(10):
        model = nets.RandomNet(seed)
        eager = model.state_dict()
        names = dict(model.named_buffers(remove_duplicate=False))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = jit_save(torch.jit.script(model), tmp_path / f"r{seed}.pt")
        with open_checkpoint(p) as r:
            metas = r.metas()
            if set(metas) - set(eager):
                seen.add("non-persistent buffer")
            if r.extras().get("tensor_attributes"):
                seen.add("plain tensor attribute")
            if any("___torch_mangle" in n for n in zipfile.ZipFile(p).namelist()):
                seen.add("mangled")
            if {m.dtype for m in metas.values()} & {"bool", "int32", "bfloat16", "float16", "uint8"}:
                seen.add("dtypes")
        if any(n.endswith(".view") for n in names):
            seen.add("view")
        if any(isinstance(m, torch.nn.ModuleDict) for m in model.modules()):
            seen.add("ModuleDict")
        if any(isinstance(m, (torch.nn.LSTM, torch.nn.GRU)) for m in model.modules()):
            seen.add("RNN")
        if any(n.startswith(("again.", "tied")) for n in eager):
            seen.add("shared")
    assert seen == {"non-persistent buffer", "plain tensor attribute", "mangled", "dtypes", "view",
                    "ModuleDict", "RNN", "shared"}


def test_the_code_is_never_run_nor_torch_jit_load_called(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("ckptfix called torch.jit.load")

    monkeypatch.setattr(torch.jit, "load", refuse)
    monkeypatch.setattr(torch._C, "import_ir_module", refuse)
    monkeypatch.setattr(torch._C, "import_ir_module_from_buffer", refuse)
    with open_checkpoint(TS / "convbn_scripted.pt") as r:
        assert len(r.metas()) == 17
        r.read("features.0.weight")


def test_what_is_not_in_the_state_dict_is_listed():
    scripted = assert_reads_as_torch(TS / "convbn_scripted.pt")
    # the non-persistent buffer is in TorchScript's state dict (it does not record persistence),
    # the plain tensor attribute is not; the eager model's state dict has neither
    assert "mask" in scripted["names"] and "offset" not in scripted["names"]
    assert "mask" not in nets.make("convbn").state_dict()
    assert scripted["extras"]["tensor_attributes"] == {"offset": "float32[5]"}
    assert any("offset" in w for w in scripted["warnings"])
    assert scripted["names"][0] == "scale"   # a parameter of the top module comes first
    assert "features.1.num_batches_tracked" in scripted["names"]
    # tracing turned the attribute into a constant of the code
    traced = assert_reads_as_torch(TS / "convbn_traced.pt")
    assert traced["extras"]["constants"] == {"CONSTANTS.c0": "float32[5]"}
    assert not any("frozen" in w for w in traced["warnings"])


def test_a_frozen_module_says_so():
    info = assert_reads_as_torch(TS / "convbn_frozen.pt")
    assert info["names"] == []
    consts = info["extras"]["constants"]
    assert consts["CONSTANTS.c0"] == "float32[6, 3, 3, 3]" and len(consts) == 9
    assert any("frozen" in w and "torch.jit.freeze" in w for w in info["warnings"])


def test_inspect_names_the_format(cli):
    r = cli("inspect", TS / "seq_scripted.pt")
    assert r.exit_code == 0, r.stderr
    params = sum(t.numel() for t in nets.make("seq").state_dict().values())
    assert r.stdout.splitlines()[0].endswith(f": TorchScript archive (torchscript), 11 tensors, {params:,} params")
    assert "LSTM(in=8, hidden=12, layers=2)" in r.stdout
    info = json.loads(cli("inspect", TS / "seq_scripted.pt", "--json").stdout)
    assert info["format"] == "torchscript" and info["format_description"] == "TorchScript archive"
    assert info["module"] == "__torch__.torchscript_nets.SeqNet"
    r = cli("inspect", TS / "convbn_frozen.pt")
    assert r.exit_code == 0 and "0 tensors" in r.stdout and "frozen" in r.stdout


# ---------------------------------------------------------------------------------------------
# converted, then loaded strictly into the eager model


def _io(name):
    io_ = np.load(TS / f"{name}_io.npz")
    return torch.from_numpy(io_["x"]), torch.from_numpy(io_["y"])


@pytest.mark.parametrize("name", ["containers", "seq"])
@pytest.mark.parametrize("kind", ["scripted", "traced"])
def test_converted_weights_load_strictly_and_compute_the_same(cli, tmp_path, name, kind):
    src = TS / f"{name}_{kind}.pt"
    before = sha(src)
    out = tmp_path / "out.safetensors"
    r = cli("apply", src, "-o", out)
    assert r.exit_code == 0, r.stderr
    eager = nets.NETS[name]().eval()
    eager.load_state_dict(load_file(out), strict=True)
    x, y = _io(name)
    with torch.no_grad():
        assert_outputs_close(eager(x), y)
        assert_outputs_close(eager(x), jit_load(src)(x))
    assert sha(src) == before


@pytest.mark.parametrize("kind", ["scripted", "traced"])
def test_a_non_persistent_buffer_is_dropped_by_a_rule_to_fit_the_eager_model(cli, tmp_path, kind):
    src = TS / f"convbn_{kind}.pt"
    out = tmp_path / "plain.safetensors"
    assert cli("apply", src, "-o", out).exit_code == 0
    with pytest.raises(RuntimeError, match='Unexpected key.*"mask"'):
        nets.ConvBNNet().load_state_dict(load_file(out), strict=True)
    r = cli("diff", src, "--target", f"{NETS_PY}:ConvBNNet")
    assert r.exit_code == 1 and "mask" in r.stdout
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - drop: '^mask$'\n")
    out = tmp_path / "fits.safetensors"
    r = cli("apply", src, "-r", rules, "--target", f"{NETS_PY}:ConvBNNet", "-o", out)
    assert r.exit_code == 0, r.stderr
    assert "fits" in r.stdout
    eager = nets.ConvBNNet().eval()
    eager.load_state_dict(load_file(out), strict=True)
    x, y = _io("convbn")
    with torch.no_grad():
        assert_outputs_close(eager(x), y)
    assert eager.features[1].num_batches_tracked.item() == 3


def test_a_pt_output_holds_the_state_dict(cli, tmp_path):
    src = TS / "seq_scripted.pt"
    out = tmp_path / "out.pt"
    r = cli("apply", src, "-o", out, "--verify")
    assert r.exit_code == 0, r.stderr
    got = torch.load(out, weights_only=True)
    ref = jit_load(src).state_dict()
    assert list(got) == list(ref)
    assert all(torch.equal(got[k], ref[k]) for k in ref)


# ---------------------------------------------------------------------------------------------
# broken and hostile archives


def rewrite(src: Path, dst: Path, *, replace: dict | None = None, drop=(), deflate=()) -> Path:
    """A copy of the archive ``src`` with members (named inside the archive's directory)
    replaced, dropped or deflated."""
    replace = replace or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            rel = info.filename.split("/", 1)[1]
            if rel in drop:
                continue
            data = replace[rel] if rel in replace else zin.read(info)
            if callable(data):
                data = data(zin.read(info))
            zout.writestr(zipfile.ZipInfo(info.filename), data,
                          compress_type=zipfile.ZIP_DEFLATED if rel in deflate else zipfile.ZIP_STORED)
    return dst


def _with_entry(src: Path, dst: Path, name: str, data: bytes) -> Path:
    rewrite(src, dst)
    with zipfile.ZipFile(dst, "a") as z:
        z.writestr(zipfile.ZipInfo(name), data)
    return dst


SRC = TS / "convbn_scripted.pt"
CODE = "code/__torch__/torchscript_nets.py"


def test_a_plain_rewrite_still_reads(tmp_path):
    """The helper above keeps a valid archive (so the refusals below are the edits' doing)."""
    assert_reads_as_torch(rewrite(SRC, tmp_path / "same.pt"))


BROKEN = {
    "truncated": (lambda p: p.write_bytes(SRC.read_bytes()[: SRC.stat().st_size // 2]),
                  r"truncated or corrupt zip"),
    "code-does-not-parse": (lambda p: rewrite(SRC, p, replace={CODE: lambda b: b.replace(b"scale : Tensor", b"scale : (")}),
                            rf"code file {CODE} does not parse \(.*line 4\)"),
    "code-missing": (lambda p: rewrite(SRC, p, drop={CODE}), rf"code file {CODE} .*missing"),
    "class-missing": (lambda p: rewrite(SRC, p, replace={CODE: lambda b: b.replace(b"class ConvBNNet", b"class Other")}),
                      r"defines no class ConvBNNet"),
    "attribute-undeclared": (lambda p: rewrite(SRC, p, replace={CODE: lambda b: b.replace(b"  scale : Tensor\n", b"")}),
                             r"attribute scale is not declared"),
    "setstate": (lambda p: rewrite(SRC, p, replace={CODE: lambda b: b.replace(
        b"  def forward(", b"  def __setstate__(self, state: Tuple[int]) -> None:\n    return None\n  def forward(", 1)}),
                 r"__setstate__"),
    "data-pkl-truncated": (lambda p: rewrite(SRC, p, replace={"data.pkl": lambda b: b[: len(b) // 2]}),
                           r"data\.pkl is truncated"),
    "data-pkl-missing": (lambda p: rewrite(SRC, p, drop={"data.pkl"}), r"data\.pkl is missing|not a checkpoint|zip archive"),
    "storage-missing": (lambda p: rewrite(SRC, p, drop={"data/3"}), r"storage record data/3 is missing"),
    "storage-short": (lambda p: rewrite(SRC, p, replace={"data/3": lambda b: b[:-4]}),
                      r"storage record data/3 holds \d+ bytes, expected \d+"),
    "storage-deflated": (lambda p: rewrite(SRC, p, deflate={"data/3"}), r"storage record data/3 is compressed"),
    "entry-outside-the-directory": (lambda p: _with_entry(SRC, p, "", b"x"), r"zip entry '' is not in the archive's directory"),
    "constants-pkl-garbage": (lambda p: rewrite(SRC, p, replace={"constants.pkl": b"\x80\x02garbage"}),
                              r"constants\.pkl"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_archive_is_one_line_naming_the_file(cli, tmp_path, case):
    build, cause = BROKEN[case]
    p = tmp_path / f"{case}.pt"
    build(p)
    before = sha(p)
    with pytest.raises(InputError) as e:
        open_checkpoint(p).close()
    assert e.value.path == str(p)
    for args in (("inspect", p), ("apply", p, "-o", tmp_path / "out.safetensors")):
        r = cli(*args)
        assert r.exit_code == 2, (case, r.stdout)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and str(p) in lines[0], r.stderr
        assert re.search(cause, lines[0]), lines[0]
    assert not (tmp_path / "out.safetensors").exists()
    assert sha(p) == before


def _module_pickle(attr_value: bytes) -> bytes:
    """A data.pkl of ConvBNNet's class whose ``scale`` attribute is built by ``attr_value``
    (pickle opcodes that push one object)."""
    return (b"\x80\x02c__torch__.torchscript_nets\nConvBNNet\n)\x81}(X\x05\x00\x00\x00scale"
            + attr_value + b"ub.")


HOSTILE = {
    "os.system": b"\x80\x02cos\nsystem\nX\x0d\x00\x00\x00touch PWNED_1\x85R.",
    "builtins.eval": _module_pickle(b"c__builtin__\neval\nX\x13\x00\x00\x00open('PWNED_2','w')\x85R"),
    "subprocess.Popen": _module_pickle(b"csubprocess\nPopen\nX\x05\x00\x00\x00touch\x85R"),
    "torch.jit.load": _module_pickle(b"ctorch.jit\nload\nX\x01\x00\x00\x00x\x85R"),
    "torch.jit._pickle.not_a_builder": _module_pickle(b"ctorch.jit._pickle\nnot_a_builder\n)R"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_forbidden_global_refuses_the_archive(cli, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    p = rewrite(SRC, tmp_path / "hostile.pt", replace={"data.pkl": HOSTILE[name]})
    before = sha(p)
    with pytest.raises(UnsafePickleError) as e:
        open_checkpoint(p)
    assert name in e.value.names
    r = cli("inspect", p)
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    assert name in r.stderr and str(p) in r.stderr
    r = cli("apply", p, "-o", tmp_path / "out.safetensors")
    assert r.exit_code == 2 and name in r.stderr
    assert not list(tmp_path.glob("PWNED*")) and not (tmp_path / "out.safetensors").exists()
    assert sha(p) == before


def test_a_hostile_global_in_constants_pkl_is_refused_too(tmp_path):
    p = rewrite(SRC, tmp_path / "hostile.pt", replace={"constants.pkl": HOSTILE["os.system"]})
    with pytest.raises(UnsafePickleError, match="os.system"):
        open_checkpoint(p)


def test_unknown_globals_stay_inert_data(tmp_path):
    """A global that is neither torch's nor code-running is kept as a placeholder (as in .pt
    files), never imported: here a module attribute holding a ``collections.Counter``-like
    unknown class."""
    def edit(data: bytes) -> bytes:  # the top module's `training` flag, NEWFALSE, becomes Thing()
        out, n = re.subn(rb"(X\x08\x00\x00\x00training(?:q.)?)\x89", rb"\1csome_module\nThing\n)R", data, count=1)
        assert n == 1
        return out

    p = rewrite(SRC, tmp_path / "odd.pt", replace={"data.pkl": edit})
    with open_checkpoint(p) as r:
        assert r.extras()["inert_globals"] == ["some_module.Thing"]
        assert len(r.metas()) == 17
    import sys

    assert "some_module" not in sys.modules


def test_torchscript_bytes_in_memory_read_too(tmp_path):
    """An archive written to a buffer (torch names its directory ``archive/``) reads the same."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(nets.make("containers")), buf)
    p = tmp_path / "model.jit"
    p.write_bytes(buf.getvalue())
    info = assert_reads_as_torch(p)
    assert info["extras"]["archive"] == "archive"


# ---------------------------------------------------------------------------------------------
# quantized modules (found by attacking: every torch.ao quantized archive was refused as a
# "corrupt pickle (NotImplementedError: ... 'QuantizedMeta' backend ...)")

def _quantized(kind: str) -> torch.nn.Module:
    torch.manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "linear-per-tensor":
            return torch.jit.script(torch.ao.nn.quantized.Linear(4, 3))
        if kind == "dynamic-lstm":
            return torch.jit.script(torch.ao.nn.quantized.dynamic.LSTM(4, 5))
        aq = torch.ao.quantization
        float_part = torch.nn.Linear(4 * 6 * 6, 2)
        model = torch.nn.Sequential(aq.QuantStub(), torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), aq.DeQuantStub(),
                                    torch.nn.Flatten(), float_part).eval()
        model[1].qconfig = aq.get_default_qconfig("fbgemm")   # per-channel weights (scales are tensors)
        model[0].qconfig = model[1].qconfig
        prepared = aq.prepare(model)
        prepared(torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)))  # calibration
        return torch.jit.script(aq.convert(prepared))


@pytest.mark.parametrize("kind", ["linear-per-tensor", "dynamic-lstm", "conv-per-channel-then-float"])
def test_quantized_modules_read_as_torch_jit_load(tmp_path, kind):
    p = jit_save(_quantized(kind), tmp_path / f"{kind}.pt")
    before = sha(p)
    info = assert_reads_as_torch(p)   # the float layers' tensors, named and valued as torch's
    assert ("5.weight" in info["names"]) == (kind == "conv-per-channel-then-float")
    quantized = [n for n, why in info["extras"]["not_weights"].items() if why == "quantized"]
    assert quantized and not set(quantized) & set(info["names"])
    assert any("quantized tensor(s)" in w for w in info["warnings"]), info["warnings"]
    assert sha(p) == before


def test_a_quantized_archive_with_corrupt_bytes_fails_its_crc(cli, tmp_path):
    p = jit_save(_quantized("linear-per-tensor"), tmp_path / "q.pt")
    with zipfile.ZipFile(p) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("/data/0"))
    data = bytearray(p.read_bytes())
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)  # the local header's
    start = info.header_offset + 30 + name_len + extra_len
    data[start] ^= 0xFF
    p.write_bytes(bytes(data))
    r = cli("inspect", p)
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and str(p) in lines[0], r.stderr
    assert re.search(r"storage record data/0 fails its CRC check", lines[0]), lines[0]


def test_a_setstate_module_that_declares_state_is_still_refused(cli, tmp_path):
    class Custom(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(2))

        def forward(self, x):
            return x * self.w

        @torch.jit.export
        def __getstate__(self):
            return (self.w, self.training)

        @torch.jit.export
        def __setstate__(self, state: tuple[torch.Tensor, bool]):
            self.w = state[0]
            self.training = state[1]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(Custom())
    p = jit_save(scripted, tmp_path / "custom.pt")
    r = cli("inspect", p)
    assert r.exit_code == 2 and re.search(r"restores its state with __setstate__", r.stderr), r.stderr
