"""Ops through the whole pipeline (rules file -> plan -> execute -> file), and container/format choices."""

import shutil

import torch
from safetensors.torch import load_file

from conftest import TORCH

SEED = TORCH / "seed_conv10.pt"


def apply(cli, tmp_path, rules_text, src=SEED, out_name="o.safetensors", *extra):
    rules = tmp_path / "r.yaml"
    rules.write_text(rules_text)
    out = tmp_path / out_name
    r = cli("apply", src, "-r", rules, "-o", out, *extra)
    assert r.exit_code == 0, r.stderr
    return out


def test_cast(cli, tmp_path):
    out = apply(cli, tmp_path, "rules:\n  - cast: {dtype: bfloat16}\n")
    sd, ref = load_file(out), torch.load(SEED, weights_only=True)
    assert sd["weight"].dtype == torch.bfloat16
    assert torch.equal(sd["weight"], ref["weight"].to(torch.bfloat16))


def test_cast_leaves_integer_tensors_alone(cli, tmp_path, data):
    out = apply(cli, tmp_path, "rules:\n  - cast: {dtype: float16}\n", data / "torch/ddp_net.pt")
    sd = load_file(out)
    assert sd["module.bn1.num_batches_tracked"].dtype == torch.int64
    assert sd["module.conv1.weight"].dtype == torch.float16


def test_slice_index_list_and_range(cli, tmp_path):
    out = apply(cli, tmp_path, "rules:\n  - slice: {keys: '^(weight|bias)$', axis: 0, index: [9, 0, 4]}\n"
                               "  - slice: {keys: '^weight$', axis: 1, start: 1}\n")
    sd, ref = load_file(out), torch.load(SEED, weights_only=True)
    assert torch.equal(sd["bias"], ref["bias"][[9, 0, 4]])
    assert torch.equal(sd["weight"], ref["weight"][[9, 0, 4]][:, 1:])


def test_transpose_by_perm_and_back_by_layout(cli, tmp_path):
    out = apply(cli, tmp_path, "rules:\n  - transpose: {keys: '^weight$', perm: [2, 3, 1, 0]}\n"
                               "  - transpose: {keys: '^weight$', layout: HWIO->OIHW}\n"
                               "    expect: {shapes: {weight: [10, 3, 5, 5]}}\n")
    assert torch.equal(load_file(out)["weight"], torch.load(SEED, weights_only=True)["weight"])


def test_state_key_chooses_the_state_dict(cli, tmp_path):
    src = tmp_path / "two.pt"
    sd = torch.load(SEED, weights_only=True)
    torch.save({"model": sd, "ema": {k: v * 2 for k, v in sd.items()}}, src)
    r = cli("inspect", src, "--json")
    assert r.exit_code == 0  # `model` is a known key
    out = tmp_path / "ema.safetensors"
    assert cli("apply", src, "--state-key", "ema", "-o", out).exit_code == 0
    assert torch.equal(load_file(out)["bias"], sd["bias"] * 2)
    r = cli("inspect", src, "--state-key", "nope")
    assert r.exit_code == 2 and "--state-key 'nope' not found" in r.stderr


def test_format_is_detected_from_bytes_not_the_name(cli, tmp_path):
    odd = tmp_path / "really_a_torch_file.safetensors"
    shutil.copy(SEED, odd)
    r = cli("inspect", odd)
    assert r.exit_code == 0 and ": pt," in r.stdout


def test_default_output_format_follows_the_input(cli, tmp_path):
    out = apply(cli, tmp_path, "rules:\n  - add_prefix: conv.\n", SEED, "o_weights")  # no suffix (an unknown one is refused)
    assert torch.load(out, weights_only=True)["conv.bias"].shape == (10,)  # PyTorch in, PyTorch out
