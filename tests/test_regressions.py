"""Bugs found in review, each pinned by a test."""

import json
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import TORCH
from numerics import seeded_randn

SEED = TORCH / "seed_conv10.pt"


def test_views_of_one_storage_are_written_compactly(cli, tmp_path):
    src = tmp_path / "flat.pt"
    base = seeded_randn(100_000)
    torch.save({f"p{i}": base[i * 1000:(i + 1) * 1000] for i in range(100)}, src)
    out = tmp_path / "o.pt"
    assert cli("apply", src, "-o", out).exit_code == 0
    assert out.stat().st_size < 2 * src.stat().st_size
    sd = torch.load(out, weights_only=True)
    assert torch.equal(sd["p7"], base[7000:8000])


def test_sliced_rows_are_not_kept_in_a_pt_output(cli, tmp_path):
    src = tmp_path / "big.pt"
    torch.save({"head.weight": seeded_randn(1000, 512)}, src)
    rules = tmp_path / "r.yaml"
    rules.write_text("rules:\n  - slice: {keys: '^head\\.weight$', axis: 0, stop: 10}\n")
    out = tmp_path / "o.pt"
    assert cli("apply", src, "-r", rules, "-o", out).exit_code == 0
    assert out.stat().st_size < 100_000


def test_reserved_safetensors_name_is_refused(cli, tmp_path):
    src = tmp_path / "m.pt"
    torch.save({"__metadata__": torch.ones(2)}, src)
    out = tmp_path / "m.safetensors"
    r = cli("apply", src, "-o", out)
    assert r.exit_code == 2 and "__metadata__" in r.stderr and not out.exists()


def test_force_never_wipes_a_directory_that_is_not_ours(cli, tmp_path):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("x")
    r = cli("apply", SEED, "-o", keep, "--force")
    assert r.exit_code == 2 and (keep / "notes.txt").read_text() == "x"
    r = cli("apply", SEED, "-o", keep, "--force", "--shard-size", "1KB")
    assert r.exit_code == 2 and (keep / "notes.txt").read_text() == "x"


def test_trailing_slash_means_a_sharded_directory(cli, tmp_path):
    r = cli("apply", SEED, "-o", f"{tmp_path}/newdir/")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "newdir" / "model.safetensors.index.json").is_file()


def test_two_inputs_cannot_write_the_same_output(cli, tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        torch.save({"w": torch.zeros(1) + (d == "b")}, tmp_path / d / "m.pt")
    r = cli("apply", tmp_path / "a/m.pt", tmp_path / "b/m.pt", "--out-dir", tmp_path / "od", "--keep-going")
    assert r.exit_code == 2 and "would both be written" in r.stderr
    assert not (tmp_path / "od/m.pt").exists()  # refused before anything runs


def test_a_rules_file_cannot_call_arbitrary_code(cli, tmp_path):
    sentinel = tmp_path / "PWNED"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"target: subprocess:run\ntarget_kwargs: {{args: [touch, '{sentinel}']}}\n")
    r = cli("check", SEED, "-r", evil)
    assert r.exit_code == 2 and "command line" in r.stderr
    evil.write_text(f"target: /usr/lib/python3/dist-packages/x.py:run\n")
    assert cli("check", SEED, "-r", evil).exit_code == 2
    assert not sentinel.exists()


def test_relative_target_is_relative_to_the_rules_file(cli, tmp_path, monkeypatch):
    d = tmp_path / "rules"
    d.mkdir()
    (d / "mynet.py").write_text("import torch\ndef Net():\n    return torch.nn.Conv2d(3, 10, 5)\n")
    (d / "r.yaml").write_text("target: mynet.py:Net\nrules: []\n")
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "mynet.py").write_text("import torch\ndef Net():\n    return torch.nn.Conv2d(3, 20, 5)\n")
    monkeypatch.chdir(other)
    r = cli("check", SEED, "-r", d / "r.yaml")
    assert r.exit_code == 0, r.stdout + r.stderr


def test_yaml_alias_bomb_fails_fast(cli, tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 8):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\nrules: []\n")
    t = time.process_time()  # CPU time of this process: what expanding 10^8 nodes would cost, whatever the load
    r = cli("apply", SEED, "-r", bomb, "--dry-run")
    assert r.exit_code == 2 and time.process_time() - t < 10


@pytest.mark.parametrize("rule,msg", [("- add: {key: x, shape: [-2, 3]}", "greater than or equal"),
                                      ("- add: {key: x, dtype: int64, value: .inf}", "finite number"),
                                      ("- add: {key: '{}', for_each: weight}", "named groups"),
                                      ("- rename: {map: {'{a}': 'x{}'}}", "placeholder")])
def test_bad_rules_are_clean_errors(cli, tmp_path, rule, msg):
    p = tmp_path / "r.yaml"
    p.write_text("rules:\n  " + rule + "\n")
    r = cli("apply", SEED, "-r", p, "--dry-run")
    assert r.exit_code == 2 and msg in r.stderr and "internal error" not in r.stderr, r.stderr


@pytest.mark.parametrize("spec", ["Conv2d(3, 15, 5, groups=0)", "Conv2d(3, 15, (5,))"])
def test_bad_layer_specs_are_clean_errors(cli, spec):
    r = cli("diff", SEED, "--target", spec)
    assert r.exit_code == 2 and "internal error" not in r.stderr


def test_rename_map_respects_classes(tmp_path):
    from ckptfix.plan import make_plan
    from ckptfix.rules import parse_text
    from ckptfix.tensors import TensorMeta

    metas = {"c/kernel": TensorMeta((3, 3, 2, 4)), "d/kernel": TensorMeta((4, 2))}
    rules = parse_text("rules:\n  - rename: {map: {'{l}/kernel': '{l}.weight'}, classes: [Dense]}\n").rules
    assert list(make_plan(metas, rules).entries) == ["c/kernel", "d.weight"]


def test_non_string_safetensors_metadata_is_refused(cli, tmp_path):
    header = json.dumps({"__metadata__": {"k": 1}, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    p = tmp_path / "m.safetensors"
    p.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    r = cli("inspect", p)
    assert r.exit_code == 2 and "__metadata__" in r.stderr


def test_top_level_tensors_beside_other_entries(cli, tmp_path):
    src = tmp_path / "mixed.pt"
    torch.save({"weight": torch.ones(2, 2), "epoch": 5}, src)
    out = tmp_path / "o.pt"
    r = cli("apply", src, "-o", out)
    assert r.exit_code == 0, r.stderr
    sd = torch.load(out, weights_only=True)
    assert sd["epoch"] == 5 and torch.equal(sd["weight"], torch.ones(2, 2))
    assert torch.equal(load_file(tmp_path / "o.safetensors")["weight"], torch.ones(2, 2)) if \
        cli("apply", src, "-o", tmp_path / "o.safetensors").exit_code == 0 else False


def test_out_dir_names_a_sharded_input_after_its_directory(cli, tmp_path):
    r = cli("apply", TORCH / "hf_sharded/model.safetensors.index.json", "--out-dir", tmp_path / "od")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "od/hf_sharded.safetensors").is_file()


@pytest.mark.parametrize("rule, cause", [
    ("add: {key: extra, shape: [2], dtype: uint8, value: -1}", "value -1.0 does not fit dtype uint8"),
    ("pad: {keys: '^n$', axis: 0, size: 5, fill: constant, value: 300}", "fill value 300 does not fit dtype int8"),
    ("pad: {keys: '^n$', axis: 0, size: 5, fill: constant, value: 0.5}", "fill value 0.5 does not fit dtype int8"),
])
def test_a_value_the_dtype_cannot_hold_is_a_rules_error(cli, tmp_path, rule, cause):
    """Found by the op property test: these planned fine and died in the executor with "internal
    error: RuntimeError: value cannot be converted to type int8_t without overflow" (0.5 was
    silently written as 0)."""
    src = tmp_path / "in.pt"
    torch.save({"w": torch.ones(2), "n": torch.ones(3, dtype=torch.int8)}, src)
    rules = tmp_path / "r.yaml"
    rules.write_text(f"rules:\n  - {rule}\n")
    out = tmp_path / "o.safetensors"
    r = cli("apply", src, "-r", rules, "-o", out)
    assert r.exit_code == 2 and cause in r.stderr and "r.yaml:2" in r.stderr and not out.exists()
    assert "internal error" not in r.stderr


@pytest.mark.parametrize("dtype", [torch.uint16, torch.uint32, torch.uint64])
@pytest.mark.parametrize("rule", ["slice: {keys: '^u$', axis: 0, index: [3, 0]}",
                                  "slice: {keys: '^u$', axis: 0, start: 0, stop: 5, step: 2}",
                                  "pad: {keys: '^u$', axis: 0, size: 7, fill: repeat}"])
def test_unsigned_tensors_can_be_sliced_and_padded(cli, tmp_path, dtype, rule):
    """Found by the op property test: torch has no 1-D index_select for uint16/32/64, so these
    were "internal error: NotImplementedError"."""
    from safetensors.torch import save_file

    src = tmp_path / "in.safetensors"
    u = torch.tensor([1, 2, 3, 60000, 5], dtype=dtype)
    save_file({"u": u}, src)
    rules = tmp_path / "r.yaml"
    rules.write_text(f"rules:\n  - {rule}\n")
    out = tmp_path / "o.safetensors"
    r = cli("apply", src, "-r", rules, "-o", out)
    assert r.exit_code == 0, r.stderr
    want = {"index": [60000, 1], "step": [1, 3, 5], "repeat": [1, 2, 3, 60000, 5, 1, 2]}
    kind = next(k for k in want if k in rule)
    got = load_file(out)["u"]
    assert got.dtype == dtype and got.tolist() == want[kind]
