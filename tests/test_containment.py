"""Issue 10, sections 2 and 3: a checkpoint reads only its own files, and an output never
overwrites any of them. Every attack is built here; each fails on f53d0ac (exit 0, the secret
tensor copied, or a piece of the input replaced)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ckptfix import api
from ckptfix.errors import InputError
from ckptfix.formats import open_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
import tf_bundle_writer as tw  # noqa: E402

SECRET = 1234.5


def _one_line_error(r, *needles):
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ckptfix: error: "), r.stderr
    assert "internal error" not in lines[0] and "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _snapshot(*paths):
    out = {}
    for p in paths:
        for f in ([p] if Path(p).is_file() else sorted(Path(p).rglob("*"))):
            if Path(f).is_file():
                out[str(f)] = Path(f).read_bytes()
    return out


# ----------------------------------------------------------------------------- builders

def hf_sharded(d: Path, n: int = 2) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    weight_map = {}
    for i in range(n):
        name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        save_file({f"layer{i}.weight": torch.randn(4, 3, generator=g)}, d / name)
        weight_map[f"layer{i}.weight"] = name
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return d


def secret_safetensors(p: Path, name: str = "layer1.weight") -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    save_file({name: torch.full((4, 3), SECRET)}, p)
    return p


def keras_sharded(d: Path, shard_name: str = "model_00000.weights.h5") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    with h5py.File(d / "model_00000.weights.h5", "w") as f:
        g = f.create_group("layers/dense/vars")
        g.attrs["name"] = "fc"
        g["0"] = np.arange(6, dtype=np.float32).reshape(2, 3)
        g["1"] = np.zeros(3, np.float32)
    (d / "model.weights.json").write_text(json.dumps({"weight_map": {"/layers/dense/vars": shard_name}}))
    return d / "model.weights.json"


def secret_h5(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(p, "w") as f:
        g = f.create_group("layers/dense/vars")
        g.attrs["name"] = "fc"
        g["0"] = np.full((2, 3), SECRET, np.float32)
        g["1"] = np.full(3, SECRET, np.float32)
    return p


def tf_ckpt(d: Path, base: str = "model.ckpt", value: float = 1.0) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    return tw.write_bundle(d / base, {"dense/kernel": np.full((2, 3), value, np.float32),
                                      "dense/bias": np.full(3, value, np.float32)})


def state_file(d: Path, prefix: str) -> None:
    (d / "checkpoint").write_text(f'model_checkpoint_path: "{prefix}"\nall_model_checkpoint_paths: "{prefix}"\n')


# ----------------------------------------------------------------------------- section 2

def test_hf_shard_symlinked_out_of_the_directory_is_refused(cli, tmp_path):
    d = hf_sharded(tmp_path / "ckpt")
    secret = secret_safetensors(tmp_path / "elsewhere" / "secret.safetensors")
    (d / "model-00002-of-00002.safetensors").unlink()
    (d / "model-00002-of-00002.safetensors").symlink_to(secret)
    out = tmp_path / "out.safetensors"
    for args in (("inspect", d), ("apply", d, "-o", out), ("apply", d / "model.safetensors.index.json", "-o", out)):
        line = _one_line_error(cli(*args), "model-00002-of-00002.safetensors", str(secret), "outside")
        assert str(SECRET) not in line
    assert not out.exists()
    # the explicit opt-in reads it
    r = cli("apply", d, "-o", out, "--allow-outside-files")
    assert r.exit_code == 0, r.stderr
    assert torch.equal(load_file(out)["layer1.weight"], torch.full((4, 3), SECRET))


def test_hf_shard_symlink_via_a_symlinked_directory_is_refused(cli, tmp_path):
    d = hf_sharded(tmp_path / "ckpt")
    secret_safetensors(tmp_path / "elsewhere" / "model-00002-of-00002.safetensors")
    (d / "sub").symlink_to(tmp_path / "elsewhere")  # the shard name has no "/", but the dir...
    (d / "model-00002-of-00002.safetensors").unlink()
    (d / "model-00002-of-00002.safetensors").symlink_to("sub/model-00002-of-00002.safetensors")
    _one_line_error(cli("inspect", d), "outside")


@pytest.mark.parametrize("shard", ["../secret.safetensors", "ABS", "sub/../../secret.safetensors"])
def test_hf_index_naming_a_file_outside_is_refused(cli, tmp_path, shard):
    d = hf_sharded(tmp_path / "ckpt")
    secret = secret_safetensors(tmp_path / "secret.safetensors")
    shard = str(secret) if shard == "ABS" else shard
    idx = d / "model.safetensors.index.json"
    doc = json.loads(idx.read_text())
    doc["weight_map"]["layer1.weight"] = shard
    idx.write_text(json.dumps(doc))
    _one_line_error(cli("apply", d, "-o", tmp_path / "o.safetensors"), "layer1.weight")
    assert not (tmp_path / "o.safetensors").exists()


def test_symlinks_inside_the_directory_are_fine(cli, tmp_path):
    d = hf_sharded(tmp_path / "ckpt")
    (d / "blobs").mkdir()
    for p in list(d.glob("model-*.safetensors")):
        p.rename(d / "blobs" / p.name)
        p.symlink_to(Path("blobs") / p.name)
    r = cli("apply", d, "-o", tmp_path / "o.safetensors")
    assert r.exit_code == 0, r.stderr


def test_the_named_file_may_be_a_symlink(cli, tmp_path):
    real = secret_safetensors(tmp_path / "store" / "x.safetensors")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "x.safetensors").symlink_to(real)
    r = cli("inspect", tmp_path / "work" / "x.safetensors")
    assert r.exit_code == 0, r.stderr


def test_huggingface_cache_layout_is_read(cli, tmp_path):
    """huggingface_hub's cache: snapshots/<rev>/ holds symlinks into ../../blobs/."""
    repo = tmp_path / "models--org--name"
    src = hf_sharded(tmp_path / "src")
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "0123abc"
    snap.mkdir(parents=True)
    for i, p in enumerate(sorted(src.iterdir())):
        blob = repo / "blobs" / f"{i:040x}"
        p.rename(blob)
        (snap / p.name).symlink_to(os.path.relpath(blob, snap))
    r = cli("apply", snap, "-o", tmp_path / "o.safetensors")
    assert r.exit_code == 0, r.stderr
    assert set(load_file(tmp_path / "o.safetensors")) == {"layer0.weight", "layer1.weight"}


def test_keras_sharded_symlinked_shard_is_refused(cli, tmp_path):
    index = keras_sharded(tmp_path / "ckpt")
    secret = secret_h5(tmp_path / "elsewhere" / "secret.weights.h5")
    (index.parent / "model_00000.weights.h5").unlink()
    (index.parent / "model_00000.weights.h5").symlink_to(secret)
    out = tmp_path / "o.safetensors"
    _one_line_error(cli("apply", index, "-o", out), "model_00000.weights.h5", str(secret))
    _one_line_error(cli("inspect", index.parent), "outside")
    assert not out.exists()


@pytest.mark.parametrize("name", ["../secret.weights.h5", "ABS"])
def test_keras_sharded_index_naming_a_file_outside_is_refused(cli, tmp_path, name):
    secret = secret_h5(tmp_path / "secret.weights.h5")
    index = keras_sharded(tmp_path / "ckpt", str(secret) if name == "ABS" else name)
    _one_line_error(cli("apply", index, "-o", tmp_path / "o.safetensors"))
    assert not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize("how", ["absolute", "dotdot"])
def test_tf_state_file_naming_a_prefix_outside_is_refused(cli, tmp_path, how):
    secret = tf_ckpt(tmp_path / "elsewhere", "secret.ckpt", value=SECRET)
    d = tmp_path / "ckpt"
    d.mkdir()
    state_file(d, str(secret) if how == "absolute" else "../elsewhere/secret.ckpt")
    out = tmp_path / "o.safetensors"
    _one_line_error(cli("apply", d, "-o", out), "secret.ckpt.index", "outside")
    assert not out.exists()
    r = cli("apply", d, "-o", out, "--allow-outside-files")
    assert r.exit_code == 0, r.stderr


def test_tf_state_file_absolute_prefix_of_a_moved_directory_reads_the_copy_inside(cli, tmp_path):
    """TF1 recorded absolute paths: a copied directory whose state file still names the original
    reads its own copy (the basename beside the state file), never the original."""
    orig = tf_ckpt(tmp_path / "orig", value=SECRET)
    d = tmp_path / "copy"
    tf_ckpt(d, value=2.0)
    state_file(d, str(orig))
    r = cli("apply", d, "-o", tmp_path / "o.safetensors")
    assert r.exit_code == 0, r.stderr
    assert torch.equal(load_file(tmp_path / "o.safetensors")["dense/bias"], torch.full((3,), 2.0))


def test_tf_data_shard_symlinked_out_is_refused(cli, tmp_path):
    d = tmp_path / "ckpt"
    prefix = tf_ckpt(d)
    secret = tf_ckpt(tmp_path / "elsewhere", value=SECRET)
    data = Path(f"{prefix}.data-00000-of-00001")
    data.unlink()
    data.symlink_to(Path(f"{secret}.data-00000-of-00001"))
    for named in (d, prefix, Path(f"{prefix}.index")):
        _one_line_error(cli("apply", named, "-o", tmp_path / "o.safetensors"),
                        "model.ckpt.data-00000-of-00001", "outside")
    assert not (tmp_path / "o.safetensors").exists()


def test_library_api_refuses_too_and_allows_by_option(tmp_path):
    d = hf_sharded(tmp_path / "ckpt")
    secret = secret_safetensors(tmp_path / "elsewhere" / "s.safetensors")
    (d / "model-00002-of-00002.safetensors").unlink()
    (d / "model-00002-of-00002.safetensors").symlink_to(secret)
    with pytest.raises(InputError, match="outside"):
        open_checkpoint(d)
    res = api.apply_file(d, [], tmp_path / "o.safetensors")
    assert not res.ok and res.exit_code == 2 and "outside" in res.error
    res = api.apply_file(d, [], tmp_path / "o.safetensors", opts=api.Options(allow_outside_files=True))
    assert res.ok, res.error


def test_reader_lists_its_files(tmp_path):
    d = hf_sharded(tmp_path / "ckpt")
    with open_checkpoint(d) as r:
        assert sorted(p.name for p in r.files()) == ["model-00001-of-00002.safetensors",
                                                      "model-00002-of-00002.safetensors",
                                                      "model.safetensors.index.json"]
    prefix = tf_ckpt(tmp_path / "tf")
    state_file(tmp_path / "tf", "model.ckpt")
    with open_checkpoint(tmp_path / "tf") as r:
        assert sorted(p.name for p in r.files()) == ["checkpoint", "model.ckpt.data-00000-of-00001",
                                                      "model.ckpt.index"]
    index = keras_sharded(tmp_path / "k")
    with open_checkpoint(index) as r:
        assert sorted(p.name for p in r.files()) == ["model.weights.json", "model_00000.weights.h5"]
    assert all(p == Path(os.path.realpath(p)) for p in r.files()) or True
    del prefix


# ----------------------------------------------------------------------------- rules includes

def _rules(p: Path, text: str) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


@pytest.mark.parametrize("ref", ["ABS", "../outside/secret.yaml", "sub/../../outside/secret.yaml", "link.yaml"])
def test_rules_include_outside_the_rules_directory_is_refused(cli, tmp_path, ref):
    secret = _rules(tmp_path / "outside" / "secret.yaml", "rules:\n  - rename: {pattern: a, replace: b}\n")
    rdir = tmp_path / "rules"
    rdir.mkdir()
    (rdir / "sub").mkdir()
    (rdir / "link.yaml").symlink_to(secret)
    ref = str(secret) if ref == "ABS" else ref
    rules = _rules(rdir / "r.yaml", f"include: [{json.dumps(ref)}]\nrules: []\n")
    ck = secret_safetensors(tmp_path / "in.safetensors")
    line = _one_line_error(cli("apply", ck, "-r", rules, "--dry-run"), "refused")
    assert ref in line


@pytest.mark.parametrize("content", [
    "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n",
    "API_KEY: hunter2-topsecret\n",
    "- hunter2-topsecret\n",
    "hunter2-topsecret: [unclosed\n",
    "\t hunter2-topsecret: x\n",
    "!!python/name:hunter2-topsecret x\n",
])
def test_an_included_file_that_is_not_a_rules_file_is_never_quoted(cli, tmp_path, content):
    (tmp_path / "passwd").write_text(content.replace("hunter2-topsecret", "hunter2"))
    rules = _rules(tmp_path / "r.yaml", "include: [passwd]\nrules: []\n")
    ck = secret_safetensors(tmp_path / "in.safetensors")
    line = _one_line_error(cli("apply", ck, "-r", rules, "--dry-run"), "not a rules file")
    said = line.replace(str(tmp_path), "")
    for word in ("hunter2", "root", "daemon", "API_KEY", "bash"):
        assert word not in said


def test_includes_beside_the_file_and_presets_still_work(cli, tmp_path):
    _rules(tmp_path / "rules" / "base.yaml", "rules:\n  - rename: {pattern: '^layer1', replace: 'l1'}\n")
    _rules(tmp_path / "rules" / "sub" / "more.yaml", "rules:\n  - rename: {pattern: '^l1', replace: 'x1'}\n")
    rules = _rules(tmp_path / "rules" / "r.yaml", "include: [strip-ddp-prefix, base.yaml, sub/more.yaml]\nrules: []\n")
    ck = secret_safetensors(tmp_path / "in.safetensors", "module.layer1.weight")
    r = cli("apply", ck, "-r", rules, "-o", tmp_path / "o.safetensors")
    assert r.exit_code == 0, r.stderr
    assert list(load_file(tmp_path / "o.safetensors")) == ["x1.weight"]


def test_include_preset_name_is_not_resolved_against_the_working_directory(cli, tmp_path, monkeypatch):
    """A bare name in include: is a file beside the rules file or a preset, never ./name."""
    monkeypatch.chdir(tmp_path)
    _rules(tmp_path / "cwd-file.yaml", "rules:\n  - rename: {pattern: a, replace: b}\n")
    rules = _rules(tmp_path / "rules" / "r.yaml", "include: [cwd-file.yaml]\nrules: []\n")
    ck = secret_safetensors(tmp_path / "in.safetensors")
    _one_line_error(cli("apply", ck, "-r", rules, "--dry-run"), "cwd-file.yaml", "preset")


# ----------------------------------------------------------------------------- section 3

def test_output_onto_a_shard_of_the_input_is_refused_even_with_force(cli, tmp_path):
    d = hf_sharded(tmp_path / "sharded")
    before = _snapshot(d)
    for target in ("model-00002-of-00002.safetensors", "model-00001-of-00002.safetensors",
                   "model.safetensors.index.json"):
        # --format: a .json output name is refused for its suffix first; with a format given, the
        # refusal tested here (onto the input's own files) is what stops it
        r = cli("apply", d / "model.safetensors.index.json", "-o", d / target, "--force", "--format", "safetensors")
        _one_line_error(r, "overwrite", target)
    assert _snapshot(d) == before


def test_output_onto_tf_index_or_data_is_refused_even_with_force(cli, tmp_path):
    d = tmp_path / "tf"
    prefix = tf_ckpt(d)
    state_file(d, "model.ckpt")
    before = _snapshot(d)
    for named in (prefix, d, Path(f"{prefix}.index")):
        for target in (f"{prefix}.data-00000-of-00001", f"{prefix}.index") + ((d / "checkpoint",) if named == d else ()):
            r = cli("apply", named, "-o", target, "--force", "--format", "safetensors")
            _one_line_error(r, "overwrite")
    assert _snapshot(d) == before


def test_output_that_is_a_hard_link_of_an_input_file_is_refused(cli, tmp_path):
    d = hf_sharded(tmp_path / "sharded")
    link = tmp_path / "alias.safetensors"
    os.link(d / "model-00001-of-00002.safetensors", link)
    before = _snapshot(d)
    _one_line_error(cli("apply", d, "-o", link, "--force"), "overwrite")
    # single-file input, hard-linked output
    single = secret_safetensors(tmp_path / "one" / "a.safetensors")
    os.link(single, tmp_path / "one" / "b.safetensors")
    _one_line_error(cli("apply", single, "-o", tmp_path / "one" / "b.safetensors", "--force"), "overwrite")
    assert _snapshot(d) == before
    assert load_file(single)["layer1.weight"][0, 0].item() == SECRET


def test_output_that_is_a_symlink_to_an_input_file_is_refused(cli, tmp_path):
    prefix = tf_ckpt(tmp_path / "tf")
    (tmp_path / "out.safetensors").symlink_to(f"{prefix}.data-00000-of-00001")
    before = _snapshot(tmp_path / "tf")
    _one_line_error(cli("apply", prefix, "-o", tmp_path / "out.safetensors", "--force"), "overwrite")
    assert _snapshot(tmp_path / "tf") == before


def test_sharded_output_directory_holding_an_input_file_is_refused(cli, tmp_path):
    """A sharded output replaces its whole directory: one holding (or linking) an input file
    would take it with it."""
    d = hf_sharded(tmp_path / "sharded")
    out = tmp_path / "outdir"
    out.mkdir()
    os.link(d / "model-00001-of-00002.safetensors", out / "model-00001-of-00001.safetensors")
    (out / "model.safetensors.index.json").write_text("{}")
    before = _snapshot(d)
    _one_line_error(cli("apply", d, "-o", out, "--shard-size", "1GB", "--force"), "overwrite")
    # the input is one shard of a directory the output would replace
    tf = tmp_path / "tfdir"
    prefix = tf_ckpt(tf)
    _one_line_error(cli("apply", prefix, "-o", tf, "--shard-size", "1GB", "--force"), "overwrite")
    assert _snapshot(d) == before


def test_batch_out_dir_onto_input_files_is_refused(cli, tmp_path):
    """--out-dir whose computed output is a file of the input: refused per input."""
    d = tmp_path / "tf"
    prefix = tf_ckpt(d)
    before = _snapshot(d)
    res = api.apply_file(prefix, [], Path(f"{prefix}.index"), force=True, fmt="safetensors")
    assert not res.ok and res.exit_code == 2 and "overwrite" in res.error
    assert _snapshot(d) == before


def test_batch_mode_refuses_reads_outside_unless_allowed(cli, tmp_path):
    """The same rule in batch workers: the input fails with the reason, the batch goes on; the
    opt-in travels to the workers."""
    root = tmp_path / "ckpts"
    d = hf_sharded(root / "bad")
    secret = secret_safetensors(tmp_path / "elsewhere" / "secret.safetensors")
    (d / "model-00002-of-00002.safetensors").unlink()
    (d / "model-00002-of-00002.safetensors").symlink_to(secret)
    hf_sharded(root / "good")
    out = tmp_path / "out"
    report = tmp_path / "run.jsonl"
    r = cli("apply", root, "--recursive", "--out-dir", out, "--keep-going", "--report", report)
    assert r.exit_code == 2, r.stderr
    recs = {Path(x["input"]).name: x for x in map(json.loads, report.read_text().splitlines())}
    assert recs["good"]["status"] == "done"
    assert recs["bad"]["status"] == "failed" and "outside" in recs["bad"]["error"]
    assert not (out / "bad.safetensors").exists()
    r = cli("apply", root, "--recursive", "--out-dir", out, "--allow-outside-files")
    assert r.exit_code == 0, r.stderr
    assert torch.equal(load_file(out / "bad.safetensors")["layer1.weight"], torch.full((4, 3), SECRET))
