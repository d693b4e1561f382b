"""The real PyTorch/Lightning/huggingface_hub fixtures fit their nets with a preset or one rule,
load strictly, and the converted model holds exactly the source model's weights (so it computes what
the source model computes; outputs are compared up to rounding, see tests/numerics.py)."""

import json

import pytest
import torch
from safetensors.torch import load_file

import nets
from conftest import TORCH
from numerics import assert_outputs_close, assert_same_weights, outputs_differ, seeded_randn

NETS = "tests/nets.py"


def reference(sd, prefix=""):
    return {k.removeprefix(prefix): v for k, v in sd.items()}


def same_outputs(model_cls, ref_sd, new_sd, shape=(2, 3, 8, 8)):
    """The converted weights are the reference's, bit for bit, and the two models agree."""
    a, b = model_cls(), model_cls()
    a.load_state_dict(ref_sd, strict=True)
    b.load_state_dict(new_sd, strict=True)
    assert_same_weights(b.state_dict(), a.state_dict())
    a.eval(), b.eval()
    x = seeded_randn(*shape)
    with torch.no_grad():
        assert_outputs_close(b(x), a(x))
    return True


@pytest.mark.parametrize("name,preset,prefix", [("ddp_net.pt", "strip-ddp-prefix", "module."),
                                                 ("compiled_net.pt", "strip-torch-compile-prefix", "_orig_mod.")])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_prefixed_checkpoints_fit_with_a_preset(cli, tmp_path, name, preset, prefix, suffix):
    src = TORCH / name
    out = tmp_path / ("out" + suffix)
    r = cli("apply", src, "-r", preset, "--target", f"{NETS}:SmallNet", "-o", out)
    assert r.exit_code == 0, r.stderr
    assert "fits model" in r.stdout
    new = load_file(out) if suffix == ".safetensors" else torch.load(out, weights_only=True)
    assert same_outputs(nets.SmallNet, reference(torch.load(src, weights_only=True), prefix), new)


def test_wrapped_checkpoint_keeps_its_container(cli, tmp_path):
    src = TORCH / "wrapped_net.pt"
    out = tmp_path / "out.pt"
    r = cli("apply", src, "--target", f"{NETS}:SmallNet", "-o", out)
    assert r.exit_code == 0, r.stderr
    orig = torch.load(src, weights_only=True)
    new = torch.load(out, weights_only=True)
    assert new["epoch"] == 7 and new["best_acc"] == orig["best_acc"]
    assert same_outputs(nets.SmallNet, orig["model_state_dict"], new["model_state_dict"])


def test_lightning_checkpoint_extras_kept_and_optimizer_dropped_when_shapes_change(cli, tmp_path):
    src = TORCH / "lightning_net.ckpt"
    orig = torch.load(src, weights_only=True)
    # 1. renames only: everything kept, optimizer state included
    out = tmp_path / "same.ckpt"
    r = cli("apply", src, "--target", f"{NETS}:LightningNet", "-o", out)
    assert r.exit_code == 0, r.stderr
    new = torch.load(out, weights_only=True)
    assert set(new) == set(orig)
    assert new["hyper_parameters"] == orig["hyper_parameters"]
    exp = orig["optimizer_states"][0]["state"][0]["exp_avg"]
    assert torch.equal(new["optimizer_states"][0]["state"][0]["exp_avg"], exp)
    assert same_outputs(nets.LightningNet, orig["state_dict"], new["state_dict"])
    # 2. five classes instead of ten: head sliced, optimizer state dropped with a warning
    rules = tmp_path / "r.yaml"
    rules.write_text("rules:\n  - slice: {keys: '^head\\.(weight|bias)$', axis: 0, stop: 5}\n")
    out5 = tmp_path / "five.ckpt"
    r = cli("apply", src, "-r", rules, "--target", f"{NETS}:LightningNet", "--target-kwargs", "{num_classes: 5}",
            "-o", out5)
    assert r.exit_code == 0, r.stderr
    assert "optimizer" in r.stderr and "dropped" in r.stderr
    new5 = torch.load(out5, weights_only=True)
    assert "optimizer_states" not in new5 and new5["epoch"] == orig["epoch"]
    m_old, m_new = nets.LightningNet(), nets.LightningNet(num_classes=5)
    m_old.load_state_dict(orig["state_dict"])
    m_new.load_state_dict(new5["state_dict"], strict=True)
    # the weights: the backbone copied, the head's first five rows, all bit for bit
    old_sd = m_old.state_dict()
    want = {k: (v[:5] if k.startswith("head.") else v) for k, v in old_sd.items()}
    assert_same_weights(m_new.state_dict(), want)
    # the outputs: Linear(32->5) and a slice of Linear(32->10) may round differently (a matmul's
    # accumulation order depends on its shape), so up to rounding; rows 5..9 would miss by far more
    m_old.eval(), m_new.eval()
    x = seeded_randn(2, 3, 8, 8)
    with torch.no_grad():
        assert_outputs_close(m_new(x), m_old(x)[:, :5])
        assert outputs_differ(m_new(x), m_old(x)[:, 5:])


def test_hf_sharded_reads_and_round_trips(cli, tmp_path):
    src = TORCH / "hf_sharded"
    r = cli("check", src, "--target", f"{NETS}:sharded_net")
    assert r.exit_code == 0, r.stdout + r.stderr
    # sharded -> single file
    single = tmp_path / "one.safetensors"
    assert cli("apply", src, "-o", single).exit_code == 0
    # sharded -> sharded with a small shard size
    outdir = tmp_path / "resharded"
    r = cli("apply", src, "-o", outdir, "--shard-size", "300KB")
    assert r.exit_code == 0, r.stderr
    index = json.loads((outdir / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert index["metadata"]["total_size"] == json.loads((src / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
    ref = load_file(single)
    for p in shards:
        for k, v in load_file(outdir / p).items():
            assert torch.equal(v, ref[k])
    assert sum(len(load_file(outdir / p)) for p in shards) == len(ref) == 12
    assert cli("check", outdir, "--target", f"{NETS}:sharded_net").exit_code == 0


def test_check_exit_codes(cli):
    assert cli("check", TORCH / "seed_conv10.pt", "--target", "Conv2d(3, 10, 5)").exit_code == 0
    r = cli("check", TORCH / "seed_conv10.pt", "--target", "Conv2d(3, 15, 5)")
    assert r.exit_code == 1
    r = cli("check", TORCH / "ddp_net.pt", "TORCH_MISSING", "--target", f"{NETS}:SmallNet")
    assert r.exit_code == 2  # one unreadable input is the worst outcome
    r = cli("check", TORCH / "ddp_net.pt", "--target", f"{NETS}:SmallNet", "-r", "strip-ddp-prefix", "--json")
    line = json.loads(r.stdout.splitlines()[0])
    assert r.exit_code == 0 and line["fits"] is True and line["ok"] is True
