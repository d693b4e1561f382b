"""Attack report, round 2: F5 (the HF-cache exception widened by a symlink), F6 (an output onto
any input of the command), F10 (file strings forging lines or sending terminal escapes), F15
(a closed stdout pipe). Each attack is built here and fails on the code before these fixes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ckptfix.errors import EXIT_BROKEN_PIPE, one_line

SECRET = 1234.5
FORGED = "\nckptfix: error: forged second line\x1b[31mRED"


def _one_line_error(r, *needles, code=2):
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    lines = r.stderr.strip().split("\n")
    assert len(lines) == 1 and lines[0].startswith("ckptfix: error: "), r.stderr
    assert "internal error" not in lines[0] and "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _no_escapes(r):
    for stream in (r.stdout, r.stderr):
        assert "\x1b" not in stream, stream
        assert not any(ln.startswith("ckptfix: error: forged") for ln in stream.split("\n")), stream


def _hf_sharded(d: Path, n: int = 2) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    weight_map, files = {}, {}
    for i in range(n):
        name = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        save_file({f"layer{i}.weight": torch.randn(4, 3, generator=g)}, d / name)
        weight_map[f"layer{i}.weight"] = name
        files[name] = d / name
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    files["model.safetensors.index.json"] = d / "model.safetensors.index.json"
    return files


def _hf_cache(root: Path, rev: str = "0123abcd") -> Path:
    """huggingface_hub's layout: models--x--y/{blobs/<hash>, snapshots/<rev>/<name> -> ../../blobs/<hash>,
    refs/main}."""
    repo = root / "models--x--y"
    src = _hf_sharded(root / "src")
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    for i, (name, p) in enumerate(sorted(src.items())):
        blob = repo / "blobs" / f"{i:064x}"
        p.rename(blob)
        (snap / name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    return snap


# ----------------------------------------------------------------------------- F5

def test_hf_cache_layout_still_reads(cli, tmp_path):
    snap = _hf_cache(tmp_path)
    r = cli("apply", snap, "-o", tmp_path / "o.safetensors")
    assert r.exit_code == 0, r.stderr
    assert set(load_file(tmp_path / "o.safetensors")) == {"layer0.weight", "layer1.weight"}


@pytest.mark.parametrize("blobs_target", ["/", "secret_dir"])
def test_blobs_symlink_does_not_widen_the_trusted_root(cli, tmp_path, blobs_target):
    """F5: hf/evil/blobs -> / (or any directory): a shard linking through it is outside."""
    secret = tmp_path / "secret_dir" / "secret.safetensors"
    secret.parent.mkdir()
    save_file({"layer1.weight": torch.full((4, 3), SECRET)}, secret)
    evil = tmp_path / "hf" / "evil"
    snap = evil / "snapshots" / "rev"
    files = _hf_sharded(snap)
    (evil / "blobs").symlink_to("/" if blobs_target == "/" else secret.parent)
    files["model-00002-of-00002.safetensors"].unlink()
    files["model-00002-of-00002.safetensors"].symlink_to(secret)
    out = tmp_path / "hfout.safetensors"
    _one_line_error(cli("apply", snap, "-o", out), "outside")
    assert not out.exists()


def test_blob_links_out_of_a_real_blobs_directory_are_refused(cli, tmp_path):
    """blobs is a real directory, but the snapshot entry goes through a link inside it to elsewhere."""
    snap = _hf_cache(tmp_path)
    secret = tmp_path / "elsewhere" / "secret.safetensors"
    secret.parent.mkdir()
    save_file({"layer1.weight": torch.full((4, 3), SECRET)}, secret)
    blob = Path(os.path.realpath(snap / "model-00002-of-00002.safetensors"))
    blob.unlink()
    blob.symlink_to(secret)
    _one_line_error(cli("apply", snap, "-o", tmp_path / "o.safetensors"), "outside")


def test_a_link_to_a_cache_snapshot_trusts_only_that_cache(cli, tmp_path):
    """A `snapshots` reached through a symlink: the real cache's blobs are trusted, never the
    `blobs -> /` beside the link."""
    snap = _hf_cache(tmp_path)
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "snapshots").symlink_to(snap.parent)
    (fake / "blobs").symlink_to("/")
    r = cli("inspect", fake / "snapshots" / snap.name)
    assert r.exit_code == 0, r.stderr
    secret = tmp_path / "secret.safetensors"
    save_file({"layer1.weight": torch.full((4, 3), SECRET)}, secret)
    (snap / "model-00002-of-00002.safetensors").unlink()
    (snap / "model-00002-of-00002.safetensors").symlink_to(fake / "blobs" / str(secret).lstrip("/"))
    _one_line_error(cli("inspect", fake / "snapshots" / snap.name), "outside")


# ----------------------------------------------------------------------------- F10

def _pt(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def test_forged_top_level_key_is_one_line(cli, tmp_path):
    p = _pt(tmp_path / "h1.pt", {"a" + FORGED: 1, "b\u2028c\x85d": 2})
    r = cli("inspect", p)
    line = _one_line_error(r, "\\n", "\\x1b")
    assert "\\u2028" in line and "\\x85" in line
    _no_escapes(r)


@pytest.mark.parametrize("cmd", ["inspect", "inspect-json", "diff", "apply-rules", "apply"])
def test_forged_tensor_name_is_escaped_everywhere(cli, tmp_path, cmd):
    p = _pt(tmp_path / "h2.pt", {"w" + FORGED: torch.arange(4.0), "ok.weight": torch.zeros(2)})
    if cmd == "inspect":
        r = cli("inspect", p)
        assert r.exit_code == 0, r.stderr
        assert "w\\nckptfix: error: forged second line\\x1b[31mRED" in r.stdout
    elif cmd == "inspect-json":
        r = cli("inspect", p, "--json")
        assert r.exit_code == 0, r.stderr
        assert "w" + FORGED in [t["name"] for t in json.loads(r.stdout)["tensors"]]
    elif cmd == "diff":
        r = cli("diff", p, "--target", "Linear(3, 4)")
        assert r.exit_code == 1, r.stderr
        assert "\\x1b[31m" in r.stdout
    elif cmd == "apply-rules":
        _one_line_error(r := cli("apply", p, "-r", "strip-ddp-prefix", "-o", tmp_path / "o.safetensors"),
                        "\\n")
    else:
        r = cli("apply", p, "-o", tmp_path / "o.safetensors", "--target", "Linear(3, 4)")
        _one_line_error(r, code=1)
    _no_escapes(r)


def test_forged_name_in_suggest_cannot_add_rules(cli, tmp_path):
    """suggest writes comments and rules with checkpoint names: each stays on its line."""
    p = _pt(tmp_path / "s.pt", {"module.w\n  - rename: {from: x, to: y}\x1b[31m": torch.zeros(4, 3)})
    out = tmp_path / "fix.yaml"
    r = cli("suggest", p, "--target", "Linear(3, 4)", "-o", out)
    _no_escapes(r)
    text = out.read_text()
    assert "\x1b" not in text
    assert not any(ln.lstrip().startswith("- rename: {from: x") for ln in text.splitlines()), text


def test_forged_shard_name_is_one_line(cli, tmp_path):
    d = tmp_path / "sharded"
    _hf_sharded(d)
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"layer0.weight": "model-00001-of-00002.safetensors",
                        "layer1.weight": "gone" + FORGED + ".safetensors"}}))
    for cmd in (["inspect", d], ["apply", d, "-o", tmp_path / "o.safetensors"]):
        r = cli(*cmd)
        _one_line_error(r)
        _no_escapes(r)


def test_batch_lines_escape_file_names(cli, tmp_path):
    """--recursive walks a downloaded tree: a file name is file-controlled text too."""
    root = tmp_path / "in"
    root.mkdir()
    bad = root / ("x\nckptfix: error: forged\x1b[31m.safetensors")
    bad.write_bytes(b"not a checkpoint")
    r = cli("apply", root, "--recursive", "--out-dir", tmp_path / "out", "--keep-going")
    assert r.exit_code == 2
    _no_escapes(r)
    errors = [ln for ln in r.stderr.split("\n") if ln.startswith("ckptfix: error:")]
    assert len(errors) == 1 and "\\n" in errors[0], r.stderr


def test_one_line_keeps_ordinary_unicode():
    assert one_line("caf\u00e9 \u6f22\u5b57 \U0001f600 a\\b") == "caf\u00e9 \u6f22\u5b57 \U0001f600 a\\b"
    assert one_line("a\nb\rc\td\x00e\x7f\x9b\u2029\u202e") == "a\\nb\\rc\\td\\x00e\\x7f\\x9b\\u2029\\u202e"


# ----------------------------------------------------------------------------- F15

@pytest.mark.parametrize("json_out", [False, True])
def test_closed_stdout_pipe_is_a_quiet_exit(tmp_path, json_out):
    """`ckptfix inspect x | head -1`: the output is larger than a pipe buffer, so the writer
    meets the closed pipe (no timing involved): exit 141, nothing on stderr."""
    p = tmp_path / "many.safetensors"
    save_file({f"layer{i}.weight": torch.zeros(2) for i in range(3000)}, p)
    cmd = [sys.executable, "-m", "ckptfix.cli", "inspect", str(p)] + (["--json"] if json_out else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.read(10)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == EXIT_BROKEN_PIPE, err
    assert err == ""


# ----------------------------------------------------------------------------- F6

def _linear(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(1)
    save_file({"weight": torch.randn(4, 3, generator=g), "bias": torch.randn(4, generator=g)}, p)
    return p


def _rules(p: Path, text: str = "ckptfix: 1\nrules: []\n") -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def _unchanged(*paths):
    return {p: p.read_bytes() for p in paths}


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_output_onto_the_target_checkpoint_is_refused(cli, tmp_path, force):
    """F6: `apply small -r /dev/null -o tgt --force --target tgt` replaced the target."""
    src, tgt = _linear(tmp_path / "small.safetensors"), _linear(tmp_path / "tgt2.safetensors")
    before = _unchanged(src, tgt)
    line = _one_line_error(cli("apply", src, "-o", tgt, "--target", tgt, *force), "overwrite", "the target")
    assert str(tgt) in line
    assert _unchanged(src, tgt) == before


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_output_onto_the_rules_file_is_refused(cli, tmp_path, force):
    """F6: `apply small -r r2.yaml -o r2.yaml --force` overwrote the rules file."""
    src, rules = _linear(tmp_path / "small.safetensors"), _rules(tmp_path / "r2.yaml")
    before = _unchanged(src, rules)
    _one_line_error(cli("apply", src, "-r", rules, "-o", rules, "--format", "safetensors", *force),
                    "overwrite", "the rules file")
    assert _unchanged(src, rules) == before


@pytest.mark.parametrize("how", ["path", "symlink", "hardlink", "nested"])
def test_output_onto_an_included_rules_file_is_refused(cli, tmp_path, how):
    src = _linear(tmp_path / "small.safetensors")
    deep = _rules(tmp_path / "rules" / "deep.yaml", "ckptfix: 1\nrules:\n  - rename: {pattern: '^bias$', replace: bias}\n")
    inc = _rules(tmp_path / "rules" / "inc.yaml", "ckptfix: 1\ninclude: deep.yaml\nrules:\n"
                 "  - rename: {pattern: '^weight$', replace: weight}\n")
    top = _rules(tmp_path / "rules" / "top.yaml", "ckptfix: 1\ninclude: [inc.yaml]\nrules: []\n")
    out, victim = (deep, deep) if how == "nested" else (inc, inc)
    if how in ("symlink", "hardlink"):
        out = tmp_path / "out.safetensors"
        out.symlink_to(inc) if how == "symlink" else os.link(inc, out)
    before = _unchanged(src, deep, inc, top)
    _one_line_error(cli("apply", src, "-r", top, "-o", out, "--force", "--format", "safetensors"),
                    "overwrite", "the rules file", victim.name)
    assert _unchanged(src, deep, inc, top) == before


@pytest.mark.parametrize("where", ["command line", "rules file"])
def test_output_onto_the_target_factory_py_is_refused(cli, tmp_path, where):
    src = _linear(tmp_path / "small.safetensors")
    net = tmp_path / "net.py"
    net.write_text("import torch\n\n\ndef Net():\n    return torch.nn.Linear(3, 4)\n")
    before = _unchanged(src, net)
    if where == "command line":
        args = ["--target", f"{net}:Net"]
    else:
        args = ["-r", _rules(tmp_path / "r.yaml", "ckptfix: 1\ntarget: net.py:Net\nrules: []\n")]
    _one_line_error(cli("apply", src, *args, "-o", net, "--force", "--format", "safetensors"),
                    "overwrite", "the target", "net.py")
    assert _unchanged(src, net) == before


def test_output_onto_a_layer_spec_yaml_is_refused(cli, tmp_path):
    src = _linear(tmp_path / "small.safetensors")
    spec = _rules(tmp_path / "spec.yaml", "Linear(3, 4)\n")
    before = _unchanged(src, spec)
    _one_line_error(cli("apply", src, "--target", spec, "-o", spec, "--force", "--format", "safetensors"),
                    "the target")
    assert _unchanged(src, spec) == before


def test_the_check_does_not_refuse_ordinary_outputs(cli, tmp_path):
    src = _linear(tmp_path / "small.safetensors")
    rules = _rules(tmp_path / "r.yaml", "ckptfix: 1\ntarget: Linear(3, 4)\nrules: []\n")
    r = cli("apply", src, "-r", rules, "-o", tmp_path / "out.safetensors")
    assert r.exit_code == 0, r.stderr


def test_suggest_output_onto_the_target_or_the_checkpoint_is_refused(cli, tmp_path):
    src = _linear(tmp_path / "small.safetensors")
    spec = _rules(tmp_path / "spec.yaml", "Linear(3, 4)\n")
    before = _unchanged(src, spec)
    _one_line_error(cli("suggest", src, "--target", spec, "-o", spec, "--force"), "the target")
    _one_line_error(cli("suggest", src, "--target", spec, "-o", src, "--force"), "the input")
    assert _unchanged(src, spec) == before
    r = cli("suggest", src, "--target", spec, "-o", tmp_path / "fix.yaml")
    assert r.exit_code == 0, r.stderr


def test_batch_output_onto_the_target_checkpoint_is_refused(cli, tmp_path):
    """--out-dir whose computed output is the target: refused up front, nothing run."""
    src = _linear(tmp_path / "in" / "a.safetensors")
    tgt = _linear(tmp_path / "out" / "a.safetensors")
    before = _unchanged(src, tgt)
    for extra in ([], ["--force"], ["--jobs", "1", "--force"]):
        _one_line_error(cli("apply", src, "--out-dir", tmp_path / "out", "--target", tgt, *extra),
                        "the target")
    assert _unchanged(src, tgt) == before


def test_batch_output_onto_a_rules_file_or_an_input_is_refused(cli, tmp_path):
    a = _linear(tmp_path / "d" / "a.safetensors")
    b = _linear(tmp_path / "e" / "b.safetensors")
    rules = _rules(tmp_path / "out" / "a.safetensors")  # a rules file where a's output would go
    before = _unchanged(a, b, rules)
    _one_line_error(cli("apply", a, "--out-dir", tmp_path / "out", "-r", rules, "--force"),
                    "the rules file", "a.safetensors")
    rules.unlink()
    (tmp_path / "out" / "b.safetensors").symlink_to(b)  # b's output would write through to b
    _one_line_error(cli("apply", a, b, "--out-dir", tmp_path / "out", "--force", "--keep-going"),
                    "the input", "b.safetensors")
    _one_line_error(cli("apply", a, b, "--out-dir", tmp_path / "d", "--force"), "the input", "a.safetensors")
    del before[rules]
    assert _unchanged(a, b) == before
