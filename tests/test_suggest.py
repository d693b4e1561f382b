"""suggest + apply, with no hand edits, makes checkpoints fit and load strictly."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import nets
from conftest import KERAS, TORCH
from numerics import assert_outputs_close, assert_same_weights, seeded_randn

NETS = "tests/nets.py"


def suggest_then_apply(cli, tmp_path, src, target):
    rules = tmp_path / "rules.yaml"
    r = cli("suggest", src, "--target", target, "-o", rules)
    assert r.exit_code == 0, r.stdout + r.stderr
    out = tmp_path / "out.safetensors"
    r = cli("apply", src, "-r", rules, "-o", out)
    assert r.exit_code == 0, r.stderr
    return rules.read_text(), load_file(out)


def test_seed_case_pad_is_marked_for_review(cli, tmp_path):
    text, sd = suggest_then_apply(cli, tmp_path, TORCH / "seed_conv10.pt", "Conv2d(3, 15, 5)")
    assert "# review:" in text and "- pad:" in text
    old, new = torch.nn.Conv2d(3, 10, 5), torch.nn.Conv2d(3, 15, 5)
    old.load_state_dict(torch.load(TORCH / "seed_conv10.pt", weights_only=True))
    new.load_state_dict(sd, strict=True)
    assert torch.equal(new.weight[:10], old.weight) and torch.equal(new.bias[:10], old.bias)
    x = seeded_randn(1, 3, 9, 9)
    with torch.no_grad():  # 15 vs 10 output channels: equal up to rounding only
        assert_outputs_close(new(x)[:, :10], old(x))


@pytest.mark.parametrize("name,cls,prefix", [("ddp_net.pt", "SmallNet", "module."),
                                              ("compiled_net.pt", "SmallNet", "_orig_mod."),
                                              ("lightning_net.ckpt", "LightningNet", None)])
def test_torch_fixtures(cli, tmp_path, name, cls, prefix):
    text, sd = suggest_then_apply(cli, tmp_path, TORCH / name, f"{NETS}:{cls}")
    if prefix:
        assert f"strip_prefix: {prefix}" in text
    model = getattr(nets, cls)()
    model.load_state_dict(sd, strict=True)
    orig = torch.load(TORCH / name, weights_only=True)
    orig = orig.get("state_dict", orig)
    ref = getattr(nets, cls)()
    ref.load_state_dict({k.removeprefix(prefix or ""): v for k, v in orig.items()})
    assert_same_weights(model.state_dict(), ref.state_dict())
    model.eval(), ref.eval()
    x = seeded_randn(2, 3, 8, 8)
    with torch.no_grad():
        assert_outputs_close(model(x), ref(x))


FORMATS = ["{}.keras", "{}.weights.h5", "{}_legacy.h5", "{}_tf1", "{}_tf2", "{}.npz"]
TWINS = {"tiny_cnn": ("TinyCNN", (0, 3, 1, 2)), "conv1d": ("Conv1DSeq", (0, 2, 1))}


@pytest.mark.parametrize("model", list(TWINS))
@pytest.mark.parametrize("fmt", FORMATS)
def test_keras_fixtures_into_their_twins(cli, tmp_path, model, fmt):
    cls, perm = TWINS[model]
    text, sd = suggest_then_apply(cli, tmp_path, KERAS / fmt.format(model), f"{NETS}:{cls}")
    assert "layout" in text and "  # review:" not in text
    twin = getattr(nets, cls)()
    twin.load_state_dict(sd, strict=True)
    twin.eval()
    io = np.load(KERAS / f"{model}_io.npz")
    with torch.no_grad():
        y = twin(torch.from_numpy(io["x"].transpose(*perm))).numpy()
    # float32 torch vs the output Keras recorded (other kernels, other order): equal up to rounding (see
    # KERAS_ATOL in test_keras_to_torch.py)
    np.testing.assert_allclose(y, io["y"], atol=1e-5, rtol=0)


def test_conv1d_names_matched_by_order(cli, tmp_path):
    text, _ = suggest_then_apply(cli, tmp_path, KERAS / "conv1d.keras", f"{NETS}:Conv1DSeq")
    assert "conv1d_1/kernel: features.2.weight" in text and "dense/bias: head.bias" in text


def test_cannot_fit_a_different_variant(cli, tmp_path):
    rules = tmp_path / "r.yaml"
    r = cli("suggest", TORCH / "seed_conv10.pt", "--target", "Conv2d(3, 10, 3)", "-o", rules)
    assert r.exit_code == 1
    assert "does not fit" in r.stdout and "kernel_size 5x5 -> 3x3" in r.stdout
    assert "cannot fix" in rules.read_text()


def test_timm_style_in_chans_classes_renames_and_extras_at_once(cli, tmp_path):
    """An RGB 10-class checkpoint with other module names and two training-only tensors, into the
    same net with in_chans=1, num_classes=5: every cause found at once, one rules file that fits,
    the value-changing rules (slice input channels, slice classes, drop extras) marked review."""
    gen = torch.Generator().manual_seed(11)
    src = nets.RenamedTimmLike()
    with torch.no_grad():
        for p in src.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
        src.features[1].running_var.copy_(torch.rand(8, generator=gen) + 0.5)
    sd = {**src.state_dict(), "ema.decay": torch.tensor(0.999), "teacher.proj.weight": torch.ones(4, 4)}
    ckpt = tmp_path / "rgb10.pt"
    torch.save(sd, ckpt)
    rules, out = tmp_path / "r.yaml", tmp_path / "out.safetensors"
    r = cli("suggest", ckpt, "--target", f"{NETS}:TimmLike", "--target-kwargs", "{in_chans: 1, num_classes: 5}",
            "-o", rules)
    assert r.exit_code == 0, r.stdout[-3000:]
    text = rules.read_text()
    review = [ln for ln in text.splitlines() if ln.strip().startswith("# review:")]
    assert any("input channels (3 -> 1)" in ln for ln in review), text
    assert any("classes (10 -> 5)" in ln for ln in review), text
    assert any("no place for 2 tensor(s)" in ln for ln in review), text
    assert "different model variant" not in text
    assert cli("apply", ckpt, "-r", rules, "-o", out).exit_code == 0
    model = nets.TimmLike(1, 5)
    model.load_state_dict(load_file(out), strict=True)
    # what the review rules did: RGB summed (timm's adapt_input_conv) and the first five classes, the rest as is
    got = load_file(out)
    torch.testing.assert_close(got["stem.0.weight"], sd["features.0.weight"].sum(1, keepdim=True), rtol=0, atol=1e-6)
    assert torch.equal(got["head.weight"], sd["classifier.weight"][:5])
    assert torch.equal(got["blocks.0.weight"], sd["features.3.weight"])
    assert torch.equal(got["stem.1.running_var"], sd["features.1.running_var"])
