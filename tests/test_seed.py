"""The seed case: Conv2d(3, 10, 5) weights into Conv2d(3, 15, 5)."""

import json

import pytest
import torch
from torch import nn

from conftest import TORCH
from numerics import assert_outputs_close, seeded_randn

SEED = TORCH / "seed_conv10.pt"


def test_inspect_reads_the_conv_like_the_article(cli):
    r = cli("inspect", SEED)
    assert r.exit_code == 0
    line = next(l for l in r.stdout.splitlines() if l.strip().startswith("weight"))
    assert "[10, 3, 5, 5]" in line and "-> Conv2d(in=3, out=10, kernel=5x5)" in line
    assert "total params: 760" in r.stdout


def test_inspect_json(cli):
    info = json.loads(cli("inspect", SEED, "--json").stdout)
    assert info["format"] == "pt"
    assert info["params"] == 760
    assert {"name": "weight", "shape": [10, 3, 5, 5], "dtype": "float32"}.items() <= info["tensors"][0].items()
    assert info["layers"] == [{"name": "", "type": "Conv2d", "description": "Conv2d(in=3, out=10, kernel=5x5)",
                               "params": 760, "in_channels": 3, "out_channels": 10, "kernel_size": [5, 5],
                               "groups": 1}]


def test_diff_explains_out_channels_and_params(cli):
    r = cli("diff", SEED, "--target", "Conv2d(3, 15, 5)")
    assert r.exit_code == 1
    assert "out_channels 10 -> 15" in r.stdout
    assert "760 vs 1140 params" in r.stdout
    j = json.loads(cli("diff", SEED, "--target", "Conv2d(3, 15, 5)", "--json").stdout)
    assert j["fits"] is False and j["params"] == 760 and j["target_params"] == 1140
    assert {m["name"] for m in j["mismatched"]} == {"weight", "bias"}


@pytest.mark.parametrize("fill", ["zeros", "normal", "default", "mean", "repeat", "constant"])
def test_pad_rule_makes_it_load_and_keeps_old_outputs(cli, tmp_path, fill):
    rules = tmp_path / "r.yaml"
    extra = ", value: 0.25" if fill == "constant" else ""
    rules.write_text(f"target: Conv2d(3, 15, 5)\nrules:\n"
                     f"  - pad: {{keys: '^(weight|bias)$', axis: 0, size: 15, fill: {fill}{extra}}}\n")
    out = tmp_path / "out.pt"
    r = cli("apply", SEED, "-r", rules, "-o", out)
    assert r.exit_code == 0, r.stderr
    old = nn.Conv2d(3, 10, 5)
    old.load_state_dict(torch.load(SEED, weights_only=True), strict=True)
    new = nn.Conv2d(3, 15, 5)
    new.load_state_dict(torch.load(out, weights_only=True), strict=True)
    # the old channels' weights are kept bit for bit ...
    assert torch.equal(new.weight[:10], old.weight) and torch.equal(new.bias[:10], old.bias)
    # ... so their outputs agree, up to rounding: a 15- and a 10-channel conv accumulate differently
    x = seeded_randn(2, 3, 12, 12)
    with torch.no_grad():
        assert_outputs_close(new(x)[:, :10], old(x))
    added = new.weight[10:]
    if fill == "zeros":
        assert torch.count_nonzero(added) == 0 and torch.count_nonzero(new.bias[10:]) == 0
    elif fill == "constant":
        assert torch.all(added == 0.25)
    elif fill == "repeat":
        assert torch.equal(added, old.weight[:5])
    elif fill == "mean":
        # ckptfix and this line both take a float32 mean over the 10 old channels: rounding only
        torch.testing.assert_close(added, old.weight.mean(0, keepdim=True).expand_as(added), rtol=1e-6, atol=1e-7)
    elif fill == "default":
        bound = 1 / (3 * 5 * 5) ** 0.5   # PyTorch's kaiming_uniform(a=sqrt(5)) bound
        assert added.abs().max() <= bound and added.abs().max() > bound / 2
        assert new.bias[10:].abs().max() <= bound
    elif fill == "normal":
        assert 0.01 < added.std() < 0.03


def test_seeded_fills_are_reproducible(cli, tmp_path):
    rules = tmp_path / "r.yaml"
    rules.write_text("rules:\n  - pad: {keys: '^weight$', axis: 0, size: 15, fill: normal, std: 0.1, seed: 7}\n")
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    assert cli("apply", SEED, "-r", rules, "-o", a).exit_code == 0
    assert cli("apply", SEED, "-r", rules, "-o", b).exit_code == 0
    ta, tb = (torch.load(p, weights_only=True)["weight"] for p in (a, b))
    assert torch.equal(ta, tb)
    rules.write_text("rules:\n  - pad: {keys: '^weight$', axis: 0, size: 15, fill: normal, std: 0.1, seed: 8}\n")
    c = tmp_path / "c.pt"
    assert cli("apply", SEED, "-r", rules, "-o", c).exit_code == 0
    assert not torch.equal(torch.load(c, weights_only=True)["weight"], ta)


def test_preset_and_steps_table(cli, tmp_path):
    out = tmp_path / "o.safetensors"
    r = cli("apply", SEED, "-r", "seed-pad-conv", "-o", out)
    assert r.exit_code == 0, r.stderr
    assert "weight [10, 3, 5, 5] -> [15, 3, 5, 5]" in r.stdout
    assert "2/2 fit target" in r.stdout and "expect ok" in r.stdout
    from safetensors.torch import load_file

    assert load_file(out)["weight"].shape == (15, 3, 5, 5)


def test_without_the_rule_it_does_not_fit(cli, tmp_path):
    rules = tmp_path / "r.yaml"
    rules.write_text("target: Conv2d(3, 15, 5)\nrules:\n  - pad: {keys: '^weight$', axis: 0, size: 15}\n")
    out = tmp_path / "o.pt"
    r = cli("apply", SEED, "-r", rules, "-o", out)
    assert r.exit_code == 1
    assert "bias" in r.stderr and "does not fit" in r.stderr
    assert not out.exists()


def test_failed_expect_is_exit_1(cli, tmp_path):
    rules = tmp_path / "r.yaml"
    rules.write_text("rules:\n  - pad: {keys: '^weight$', axis: 0, size: 15}\n    expect: {params: 999}\n")
    r = cli("apply", SEED, "-r", rules, "--dry-run")
    assert r.exit_code == 1
    assert "expected 999 params, got 1135" in r.stderr
    assert "r.yaml:2" in r.stderr
