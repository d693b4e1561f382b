"""Issue 10, section 6: an input that changes while it is read never gives a mixed output.

Each test changes the input deterministically between two tensors (a hook in the executor, no
sleeps): replaced with ``os.replace`` by a file with the same header and other values, or
rewritten in place. On f53d0ac both gave exit 0 and an output mixing old and new tensors. Now
every tensor is read through the descriptor opened at the start (so a replaced path cannot feed
the run a second file), and the run stops with exit 2 before anything is published.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ckptfix import execute

sys.path.insert(0, str(Path(__file__).parent))
import tf_bundle_writer as tw  # noqa: E402

N = 60
RENAME = "rules:\n  - rename: {pattern: '^w', replace: 'v'}\n"  # bytes copied as they are
COMPUTE = "rules:\n  - cast: {keys: '.', dtype: float16}\n"  # every tensor read and computed


def tensors(value: float) -> dict:
    return {f"w{i:02d}": torch.full((8, 4), value + i) for i in range(N)}


def write(fmt: str, path: Path, value: float) -> Path:
    """The checkpoint in ``fmt`` at ``path`` (same layout for every value)."""
    t = tensors(value)
    if fmt == "safetensors":
        save_file(t, path)
    elif fmt == "pt":
        torch.save(t, path)
    elif fmt == "tf":
        tw.write_bundle(path, {k: v.numpy() for k, v in t.items()})
    elif fmt == "sharded":
        path.mkdir(exist_ok=True)
        half = sorted(t)[: N // 2]
        names = {"model-00001-of-00002.safetensors": half,
                 "model-00002-of-00002.safetensors": sorted(t)[N // 2:]}
        for shard, keys in names.items():
            save_file({k: t[k] for k in keys}, path / shard)
        (path / "model.safetensors.index.json").write_text(json.dumps(
            {"weight_map": {k: s for s, keys in names.items() for k in keys}}))
    return path


def files_of(fmt: str, path: Path) -> list[Path]:
    if fmt == "tf":
        return [Path(f"{path}.index"), Path(f"{path}.data-00000-of-00001")]
    if fmt == "sharded":
        return sorted(path.iterdir())
    return [path]


@pytest.fixture
def after_tensors(monkeypatch):
    """``after_tensors(k, fn)``: run ``fn`` once, after the executor has queued k tensors."""
    real_write_into, real_tensor = execute._Producer.write_into, execute._Producer.tensor

    def install(k, fn):
        done = []

        def fire():
            if not done:
                done.append(1)
                fn()

        def write_into(self, w, name, writer):
            real_write_into(self, w, name, writer)
            self._queued = getattr(self, "_queued", 0) + 1
            if self._queued == k:
                fire()

        def tensor(self, name):  # the .pt writer computes every tensor without write_into
            out = real_tensor(self, name)
            self._computed = getattr(self, "_computed", 0) + 1
            if self._computed == k:
                fire()
            return out
        monkeypatch.setattr(execute._Producer, "write_into", write_into)
        monkeypatch.setattr(execute._Producer, "tensor", tensor)
    return install


def replace_with_new(fmt: str, path: Path, tmp_path: Path):
    new = write(fmt, tmp_path / ("new" + path.name), 1000.0)

    def go():
        for old, fresh in zip(files_of(fmt, path), files_of(fmt, new)):
            os.replace(fresh, old)
    return go


def rewrite_in_place(fmt: str, path: Path, tmp_path: Path):
    new = write(fmt, tmp_path / ("new" + path.name), 1000.0)

    def go():
        for old, fresh in zip(files_of(fmt, path), files_of(fmt, new)):
            data = fresh.read_bytes()
            with open(old, "r+b") as f:  # same inode, same size: only the values differ
                f.write(data)
                f.truncate()
    return go


def _refused(r, out: Path):
    assert r.exit_code == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "changed while being read" in lines[0], r.stderr
    assert "internal error" not in lines[0]
    assert not out.exists() and not any(p.name.startswith(".ckptfix-tmp-") for p in out.parent.iterdir())


OUT_FORMATS = {"safetensors": "out.safetensors", "pt": "out.pt", "sharded": "outdir"}


@pytest.mark.parametrize("change", [replace_with_new, rewrite_in_place], ids=["os.replace", "in-place"])
@pytest.mark.parametrize("rules", [RENAME, COMPUTE], ids=["copied", "computed"])
@pytest.mark.parametrize("fmt", ["safetensors", "pt", "tf", "sharded"])
@pytest.mark.parametrize("verify", [False, True], ids=["", "verify"])
def test_a_changed_input_never_gives_a_mixed_output(cli, tmp_path, after_tensors, fmt, rules, change, verify):
    src = write(fmt, tmp_path / {"safetensors": "in.safetensors", "pt": "in.pt", "tf": "in.ckpt",
                                 "sharded": "in"}[fmt], 0.0)
    (tmp_path / "r.yaml").write_text(rules)
    outdir = tmp_path / "o"
    outdir.mkdir()
    for kind, name in OUT_FORMATS.items():
        (tmp_path / kind).mkdir()
        after_tensors(N // 3, change(fmt, src, tmp_path / kind))
        out = outdir / name
        args = ["apply", src, "-r", tmp_path / "r.yaml", "-o", out]
        if kind == "sharded":
            args += ["--shard-size", "1KB"]
        r = cli(*(["--debug"] if os.environ.get("DBG") else []), *args, *(["--verify"] if verify else []))
        _refused(r, out)
        for p in files_of(fmt, src):  # the original back, for the next output format
            p.unlink()
        write(fmt, src, 0.0)


def test_unchanged_input_still_converts_and_values_are_the_old_ones(cli, tmp_path):
    src = write("safetensors", tmp_path / "in.safetensors", 0.0)
    (tmp_path / "r.yaml").write_text(RENAME)
    r = cli("apply", src, "-r", tmp_path / "r.yaml", "-o", tmp_path / "o.safetensors", "--verify")
    assert r.exit_code == 0, r.stderr
    got = load_file(tmp_path / "o.safetensors")
    assert all(torch.equal(got[f"v{i:02d}"], torch.full((8, 4), float(i))) for i in range(N))


def test_reads_go_through_the_descriptor_opened_first(tmp_path, monkeypatch):
    """A replaced path cannot feed the reader a second file: with the check switched off, the
    output is entirely the old file (on f53d0ac: a mix of both)."""
    from ckptfix import api
    from ckptfix.formats.fileset import FileSet

    src = write("safetensors", tmp_path / "in.safetensors", 0.0)
    (tmp_path / "r.yaml").write_text(COMPUTE)
    new = write("safetensors", tmp_path / "new.safetensors", 1000.0)
    monkeypatch.setattr(FileSet, "check_unchanged", lambda self: None)
    real = execute._Producer.tensor
    count = []

    def tensor(self, name):
        count.append(name)
        if len(count) == N // 2:
            os.replace(new, src)
        return real(self, name)
    monkeypatch.setattr(execute._Producer, "tensor", tensor)
    res = api.apply_file(src, [tmp_path / "r.yaml"], tmp_path / "o.safetensors")
    assert res.ok, res.error
    got = load_file(tmp_path / "o.safetensors")
    assert all(torch.equal(got[f"w{i:02d}"], torch.full((8, 4), float(i), dtype=torch.float16)) for i in range(N))


def test_a_tf_data_shard_is_opened_with_the_index(tmp_path):
    """All of a bundle's files are opened together, not when a tensor first needs them."""
    from ckptfix.formats import open_checkpoint

    src = write("tf", tmp_path / "in.ckpt", 0.0)
    with open_checkpoint(src) as r:
        assert sorted(p.name for p in r.files()) == ["in.ckpt.data-00000-of-00001", "in.ckpt.index"]
        np.testing.assert_array_equal(r.read_array("w03"), np.full((8, 4), 3.0, np.float32))
