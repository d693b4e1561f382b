"""Fine-tuning changes on whole models: rules planned against a target, applied, loaded strictly,
and the outputs compared with what the change promises (the old network's outputs, exactly in
float64 where nothing is lost; a gray image's activations; a resized patch's token). Also what
diff, explain and suggest propose for these changes, alone and together.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

import nets
from ckptfix import api
from ckptfix.diagnose import diagnose
from ckptfix.errors import RulesError
from ckptfix.rules import parse_text
from ckptfix.suggest import suggest
from ckptfix.target import from_module

NETS = "tests/nets.py"


def _randomised(model: nn.Module, seed: int, dtype=torch.float64) -> nn.Module:
    """Every parameter and BatchNorm statistic drawn (seeded), so nothing is trivially zero or one."""
    g = torch.Generator().manual_seed(seed)
    model = model.to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 0.5)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g, dtype=dtype))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g, dtype=dtype) + 0.5)
    return model.eval()


def _save(model: nn.Module, path) -> None:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def _apply(tmp_path, src_path, rules: str, target: nn.Module, name="out", every_step=True):
    """Apply and load strictly. ``every_step``: each rule leaves every layer it touched with the
    target's parameter count (a one-rule change; several rules may pass through partial states)."""
    out = tmp_path / f"{name}.safetensors"
    res = api.apply_file(src_path, parse_text(rules), out, target=from_module(target, "target"))
    assert res.ok, res.error
    for step in res.steps if every_step else res.steps[-1:]:
        assert all(ly["ok"] for ly in step.layers), step.layers
    target.load_state_dict(load_file(out), strict=True)
    return target.eval(), res


def _x(shape, seed=1, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- coupled width changes -------------------------------------------------------------------

@pytest.mark.parametrize("layer,kw,fill", [("conv1", {"w1": 12}, "zeros"), ("conv1", {"w1": 21}, "default"),
                                           ("conv2", {"w2": 24}, "zeros"), ("conv2", {"w2": 17}, "default")])
def test_growing_keeps_the_outputs(tmp_path, layer, kw, fill):
    """Readers from the target's graph (conv1 -> bn1 -> depthwise -> conv2; conv2 -> bn2 -> a
    Linear over the flattened map): the grown network computes the old outputs (float64)."""
    src = _randomised(nets.WideCNN(), 3)
    _save(src, tmp_path / "a.safetensors")
    size = next(iter(kw.values()))
    model, res = _apply(tmp_path, tmp_path / "a.safetensors", f"rules:\n- channels: {{layer: {layer}, size: {size}, "
                        f"fill: {fill}}}\n", nets.WideCNN(**kw).double())
    x = _x((3, 3, 9, 9))
    torch.testing.assert_close(model(x), src(x), rtol=1e-12, atol=1e-12)
    assert res.params == sum(p.numel() for p in model.parameters())
    new = model.state_dict()[f"{layer}.weight"][-1]
    assert (new == 0).all() if fill == "zeros" else (new != 0).all()   # default: trainable new filters


def test_growing_then_training_the_new_channels_changes_outputs_only_through_the_readers(tmp_path):
    """Zero reader weights are what keeps the outputs: give them a value and the outputs move."""
    src = _randomised(nets.WideCNN(), 4)
    _save(src, tmp_path / "a.safetensors")
    model, _ = _apply(tmp_path, tmp_path / "a.safetensors", "rules:\n- channels: {layer: conv1, size: 10, fill: default}\n",
                      nets.WideCNN(w1=10).double())
    x = _x((2, 3, 9, 9))
    before = model(x)
    with torch.no_grad():
        model.conv2.weight[:, 8:] = 0.1
    assert not torch.allclose(model(x), before)


def _pruned_reference(src: nets.WideCNN, idx: list[int]) -> nets.WideCNN:
    ref = nets.WideCNN(w1=len(idx)).double().eval()
    sd = src.state_dict()
    i = torch.tensor(idx)
    new = {k: v for k, v in sd.items()}
    for k in ("conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
              "dw.weight", "dw.bias"):
        new[k] = sd[k][i]
    new["conv2.weight"] = sd["conv2.weight"][:, i]
    ref.load_state_dict(new)
    return ref


@pytest.mark.parametrize("how", ["first", "keep", "l1"])
def test_pruning_keeps_the_same_channels_everywhere(tmp_path, how):
    src = _randomised(nets.WideCNN(), 5)
    _save(src, tmp_path / "a.safetensors")
    norms = src.conv1.weight.abs().sum((1, 2, 3))
    idx = {"first": [0, 1, 2, 3, 4], "keep": [6, 0, 3, 7, 1],
           "l1": sorted(torch.topk(norms, 5).indices.tolist())}[how]
    extra = {"first": "", "keep": ", keep: [6, 0, 3, 7, 1]", "l1": ", by: l1"}[how]
    model, res = _apply(tmp_path, tmp_path / "a.safetensors", f"rules:\n- channels: {{layer: conv1, size: 5{extra}}}\n",
                        nets.WideCNN(w1=5).double())
    assert res.fits and res.params == sum(p.numel() for p in model.parameters())
    ref = _pruned_reference(src, idx)
    for k, v in ref.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert "conv1: 8 -> 5 channels" in res.steps[0].summary


def test_pruning_a_map_read_by_a_linear_moves_whole_channels(tmp_path):
    """conv2's 16 channels reach fc as a flattened 16 x 4 x 4 map: keeping channels [3, 9] keeps
    fc's features 3*16..3*16+15 and 9*16..9*16+15 (PyTorch flattens NCHW channel-major)."""
    src = _randomised(nets.WideCNN(), 6)
    _save(src, tmp_path / "a.safetensors")
    model, _ = _apply(tmp_path, tmp_path / "a.safetensors", "rules:\n- channels: {layer: conv2, size: 2, keep: [9, 3]}\n",
                      nets.WideCNN(w2=2).double())
    feats = [c * 16 + j for c in (9, 3) for j in range(16)]
    assert torch.equal(model.fc.weight, src.fc.weight[:, feats])
    assert torch.equal(model.bn2.running_var, src.bn2.running_var[[9, 3]])


def test_l1_pruning_through_the_cli_and_a_dry_run(tmp_path, cli):
    src = _randomised(nets.WideCNN(), 7, torch.float32)
    _save(src, tmp_path / "a.safetensors")
    rules = tmp_path / "r.yaml"
    rules.write_text(f"target: {NETS}:WideCNN\ntarget_kwargs: {{w2: 6}}\nrules:\n- channels: {{layer: conv2, size: 6, by: l1}}\n")
    dry = cli("apply", tmp_path / "a.safetensors", "-r", rules, "--dry-run")
    assert dry.exit_code == 0, dry.stdout
    r = cli("apply", tmp_path / "a.safetensors", "-r", rules, "-o", tmp_path / "o.safetensors")
    assert r.exit_code == 0, r.stdout
    got = load_file(tmp_path / "o.safetensors")
    idx = sorted(torch.topk(src.conv2.weight.abs().double().sum((1, 2, 3)), 6).indices.tolist())
    assert torch.equal(got["conv2.weight"], src.conv2.weight[idx])
    assert torch.equal(got["fc.weight"], src.fc.weight[:, [c * 16 + j for c in idx for j in range(16)]])


class Residual(nn.Module):
    def __init__(self, w=8):
        super().__init__()
        self.a = nn.Conv2d(3, w, 3, padding=1)
        self.b = nn.Conv2d(w, w, 3, padding=1)
        self.head = nn.Linear(w, 2)

    def forward(self, x):
        x = self.a(x)
        x = x + self.b(torch.relu(x))
        return self.head(x.mean((2, 3)))


def test_a_residual_add_is_refused_unless_declared(tmp_path):
    _save(_randomised(Residual(), 8), tmp_path / "a.safetensors")
    res = api.apply_file(tmp_path / "a.safetensors", parse_text("rules:\n- channels: {layer: a, size: 10}\n"),
                         tmp_path / "o.safetensors", target=from_module(Residual(10), "t"))
    assert not res.ok and "meet another tensor at add" in res.error and "then:" in res.error
    assert not (tmp_path / "o.safetensors").exists()
    res = api.apply_file(tmp_path / "a.safetensors", parse_text("rules:\n- channels: {layer: b, size: 10}\n"),
                         tmp_path / "o.safetensors", target=from_module(Residual(10), "t"))
    assert not res.ok and "meet another tensor" in res.error


def test_norms_across_channels_and_unknown_layers_are_refused(tmp_path):
    class LN(nn.Module):
        def __init__(self, w=8):
            super().__init__()
            self.fc1, self.ln, self.fc2 = nn.Linear(4, w), nn.LayerNorm(w), nn.Linear(w, 2)

        def forward(self, x):
            return self.fc2(self.ln(self.fc1(x)))

    _save(LN(), tmp_path / "a.safetensors")
    res = api.apply_file(tmp_path / "a.safetensors", parse_text("rules:\n- channels: {layer: fc1, size: 10}\n"),
                         tmp_path / "o.safetensors", target=from_module(LN(10), "t"))
    assert not res.ok and "ln (LayerNorm) reads fc1's channels and is not a per-channel layer" in res.error
    with pytest.raises(RulesError, match="no layer .fc3. \\(closest layers: fc2, fc1\\)"):
        api.apply_file(tmp_path / "a.safetensors", parse_text("rules:\n- channels: {layer: fc3, size: 10, then: [fc2]}\n"),
                       None, dry_run=True, raise_on_error=True)


# --- input channels and classes ----------------------------------------------------------------

def test_in_channels_refuses_a_grouped_conv(tmp_path):
    class G(nn.Module):
        def __init__(self, c=4):
            super().__init__()
            self.conv = nn.Conv2d(c, 8, 3, groups=2 if c % 2 == 0 else 1)

    _save(G(), tmp_path / "a.safetensors")
    res = api.apply_file(tmp_path / "a.safetensors", parse_text("rules:\n- in_channels: {keys: conv.weight, size: 6}\n"),
                         tmp_path / "o.safetensors", target=from_module(G(6), "t"))
    assert not res.ok and "grouped convolution (groups=2)" in res.error


def test_num_classes_keep_reinit_grow_and_coupled(tmp_path):
    src = _randomised(nets.TimmLike(3, 10), 9)
    _save(src, tmp_path / "a.safetensors")
    x = _x((2, 3, 6, 6))
    model, _ = _apply(tmp_path, tmp_path / "a.safetensors", "rules:\n- num_classes: {layer: head, size: 3, keep: [7, 2, 9]}\n",
                      nets.TimmLike(3, 3).double())
    torch.testing.assert_close(model(x), src(x)[:, [7, 2, 9]], rtol=1e-12, atol=1e-12)
    grown, _ = _apply(tmp_path, tmp_path / "a.safetensors", "rules:\n- num_classes: {layer: head, size: 13, seed: 4}\n",
                      nets.TimmLike(3, 13).double(), "grown")
    torch.testing.assert_close(grown(x)[:, :10], src(x), rtol=1e-12, atol=1e-12)
    bound = 1 / 16 ** 0.5   # PyTorch's Linear(16, n) init: uniform(-1/sqrt(16), 1/sqrt(16))
    new_rows = grown.head.weight[10:]
    assert new_rows.abs().max() <= bound and new_rows.abs().max() > 0
    again, _ = _apply(tmp_path, tmp_path / "a.safetensors", "rules:\n- num_classes: {layer: head, size: 13, seed: 4}\n",
                      nets.TimmLike(3, 13).double(), "again")
    assert torch.equal(again.head.weight, grown.head.weight)   # seeded
    fresh, _ = _apply(tmp_path, tmp_path / "a.safetensors", "rules:\n- num_classes: {layer: head, size: 10, reinit: true}\n",
                      nets.TimmLike(3, 10).double(), "fresh")
    assert not torch.equal(fresh.head.weight, src.head.weight) and fresh.head.weight.abs().max() <= bound
    assert torch.equal(fresh.blocks[0].weight, src.blocks[0].weight)
    # a coupled tensor (a per-class table beside the head) follows the same classes
    sd = {**src.state_dict(), "class_prior": torch.arange(10.0, dtype=torch.float64)}
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "b.safetensors"))
    res = api.apply_file(tmp_path / "b.safetensors", parse_text(
        "rules:\n- num_classes: {layer: head, size: 2, keep: [5, 1], coupled: [class_prior]}\n"), tmp_path / "c.safetensors")
    assert res.ok, res.error
    assert load_file(tmp_path / "c.safetensors")["class_prior"].tolist() == [5.0, 1.0]
    bad = api.apply_file(tmp_path / "a.safetensors", parse_text("rules:\n- num_classes: {layer: head, size: 2, keep: [5, 10]}\n"),
                         tmp_path / "d.safetensors")
    assert not bad.ok and "class 10 is out of range for the 10 classes" in bad.error


def test_grayscale_and_new_classes_together_from_suggest(tmp_path, cli):
    """diff names both causes; suggest writes in_channels (sum) and num_classes; applied, the
    model loads strictly and a gray image gives what its RGB copy gave, for the classes kept."""
    src = _randomised(nets.TimmLike(3, 10), 10, torch.float32)
    _save(src, tmp_path / "a.safetensors")
    fit = api.diff(tmp_path / "a.safetensors", f"{NETS}:TimmLike", target_kwargs={"in_chans": 1, "num_classes": 4})
    assert [c.kind for c in fit.causes] == ["in_channels", "num_classes"]
    rules = tmp_path / "r.yaml"
    r = cli("suggest", tmp_path / "a.safetensors", "--target", f"{NETS}:TimmLike", "--target-kwargs",
            "{in_chans: 1, num_classes: 4}", "-o", rules)
    assert r.exit_code == 0, r.stdout
    text = rules.read_text()
    assert "in_channels: {keys: ^stem\\.0\\.weight$, size: 1, mode: sum}" in text
    assert "num_classes: {layer: head, size: 4}" in text and "a gray image gives exactly" in text
    assert cli("apply", tmp_path / "a.safetensors", "-r", rules, "-o", tmp_path / "o.safetensors").exit_code == 0
    model = nets.TimmLike(1, 4)
    model.load_state_dict(load_file(tmp_path / "o.safetensors"), strict=True)
    gray = _x((2, 1, 7, 7), dtype=torch.float32)
    torch.testing.assert_close(model.eval()(gray), src(gray.expand(2, 3, 7, 7))[:, :4], rtol=1e-5, atol=1e-5)


# --- resolution and patch size -----------------------------------------------------------------

def _vit(seed=11, **kw):
    return _randomised(nets.TinyViT(**kw), seed, torch.float32)


def test_new_resolution_resamples_the_position_embedding(tmp_path):
    src = _vit()
    _save(src, tmp_path / "a.safetensors")
    s = suggest(from_module(src, "a").tensors, from_module(nets.TinyViT(img_size=48), "b"))
    assert s.fits and "resample_pos_embed: {keys: ^pos_embed$, from: [4, 4], to: [6, 6], prefix_tokens: 1}" in s.text
    rules = s.text.split("rules:", 1)[1]
    model, _ = _apply(tmp_path, tmp_path / "a.safetensors", "rules:" + rules, nets.TinyViT(img_size=48))
    assert torch.equal(model.pos_embed[:, 0], src.pos_embed[:, 0])       # the class token's position kept
    grid = src.pos_embed[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(6, 6), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(model.pos_embed[:, 1:], want.permute(0, 2, 3, 1).reshape(1, 36, -1), rtol=0, atol=0)


def test_patch_size_pi_resize_gives_the_same_outputs_on_resized_patches(tmp_path):
    """ViT(patch 8, 32x32) on x, against ViT(patch 16, 64x64) with the PI-resized patch embedding
    on x with each 8x8 patch resized to 16x16 (bicubic, antialias, as the resize it inverts): the
    same 4x4 grid, so the same position embedding, and the same outputs (float32 arithmetic)."""
    src = _vit(12)
    _save(src, tmp_path / "a.safetensors")
    fit = api.diff(tmp_path / "a.safetensors", from_module(nets.TinyViT(img_size=64, patch_size=16), "t"))
    assert [c.kind for c in fit.causes] == ["patch_size"] and "gives the same token exactly" in fit.causes[0].message
    model, _ = _apply(tmp_path, tmp_path / "a.safetensors", fit.causes[0].rules and
                      "rules:\n- resize_kernel: {keys: ^patch_embed\\.proj\\.weight$, size: [16, 16], method: pi}\n",
                      nets.TinyViT(img_size=64, patch_size=16))
    x = _x((2, 3, 32, 32), dtype=torch.float32)
    patches = x.unfold(2, 8, 8).unfold(3, 8, 8)                      # (N, C, 4, 4, 8, 8)
    up = F.interpolate(patches.reshape(-1, 1, 8, 8), size=(16, 16), mode="bicubic", antialias=True, align_corners=False)
    big = up.reshape(2, 3, 4, 4, 16, 16).permute(0, 1, 2, 4, 3, 5).reshape(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(big), src(x), rtol=1e-4, atol=1e-4)


def test_resolution_and_patch_size_together(tmp_path):
    src = _vit(13)
    _save(src, tmp_path / "a.safetensors")
    tgt = nets.TinyViT(img_size=48, patch_size=4)                      # grid 4x4 -> 12x12, patch 8 -> 4
    fit = api.diff(tmp_path / "a.safetensors", from_module(tgt, "t"))
    assert sorted(c.kind for c in fit.causes) == ["patch_size", "pos_embed"]
    assert "different model variant" not in " ".join(c.message for c in fit.causes)
    s = suggest(from_module(src, "a").tensors, from_module(tgt, "t"))
    assert s.fits, s.text
    model, _ = _apply(tmp_path, tmp_path / "a.safetensors", "rules:" + s.text.split("rules:", 1)[1], tgt)
    assert model(_x((1, 3, 48, 48), dtype=torch.float32)).isfinite().all()


def test_a_non_square_grid_needs_the_grids_said(tmp_path):
    src = _vit(14, img_size=(32, 48))                                  # grid 4x6: 24 tokens + 1
    _save(src, tmp_path / "a.safetensors")
    tgt = nets.TinyViT(img_size=(48, 48))
    (cause,) = api.diff(tmp_path / "a.safetensors", from_module(tgt, "t")).causes
    assert not cause.fixable and "from: [h, w], to: [h, w], prefix_tokens: 1" in cause.message
    res = api.apply_file(tmp_path / "a.safetensors", parse_text("rules:\n- resample_pos_embed: {keys: pos_embed, to: [6, 6]}\n"),
                         tmp_path / "o.safetensors", target=from_module(tgt, "t"))
    assert not res.ok and "are not a square grid: give from: [h, w]" in res.error
    model, _ = _apply(tmp_path, tmp_path / "a.safetensors",
                      "rules:\n- resample_pos_embed: {keys: pos_embed, from: [4, 6], to: [6, 6]}\n", tgt)
    assert torch.equal(model.pos_embed[:, 0], src.pos_embed[:, 0])


def test_register_tokens_count_as_prefix():
    a, b = nets.TinyViT(reg_tokens=4), nets.TinyViT(img_size=40, reg_tokens=4)
    causes = diagnose({n: tuple(v.shape) for n, v in a.state_dict().items()},
                      {n: tuple(v.shape) for n, v in b.state_dict().items()})
    assert causes[0].rules == [{"resample_pos_embed": {"keys": "^pos_embed$", "from": [4, 4], "to": [5, 5],
                                                       "prefix_tokens": 5}}]


def test_explain_reads_a_pasted_vit_error():
    from ckptfix.explain import explain

    text = ("RuntimeError: Error(s) in loading state_dict for VisionTransformer:\n"
            "\tsize mismatch for pos_embed: copying a param with shape torch.Size([1, 197, 768]) from checkpoint, "
            "the shape in current model is torch.Size([1, 577, 768]).\n"
            "\tsize mismatch for patch_embed.proj.weight: copying a param with shape torch.Size([768, 3, 16, 16]) "
            "from checkpoint, the shape in current model is torch.Size([768, 3, 14, 14]).\n")
    info = explain(text)
    kinds = [c["kind"] for c in info["causes"]]
    assert "pos_embed" in kinds and "patch_size" in kinds and "variant" not in kinds
    assert "resample_pos_embed: {keys: ^pos_embed$, from: [14, 14], to: [24, 24], prefix_tokens: 1}" in info["rules_yaml"]
    assert "resize_kernel: {keys: ^patch_embed\\.proj\\.weight$, size: [14, 14], method: pi}" in info["rules_yaml"]


def test_rules_schema_refusals_name_the_line():
    with pytest.raises(RulesError, match=r"<rules>:3.*keep lists 2 channels, size says 3"):
        parse_text("ckptfix: 1\nrules:\n- channels: {layer: c, size: 3, keep: [0, 1]}\n")
    with pytest.raises(RulesError, match="map and fill go with mode: keep"):
        parse_text("rules:\n- in_channels: {keys: w, size: 1, mode: sum, map: {0: 1}}\n")
    with pytest.raises(RulesError, match="unknown field 'sizes'"):
        parse_text("rules:\n- resize_kernel: {keys: w, sizes: [3, 3]}\n")


def test_a_grid_only_position_embedding_beside_register_tokens():
    """timm's no_embed_class ViTs (register tokens) embed the grid only: 16 -> 36 tokens, no prefix."""
    ckpt = {"cls_token": (1, 1, 8), "reg_token": (1, 4, 8), "pos_embed": (1, 16, 8)}
    model = {"cls_token": (1, 1, 8), "reg_token": (1, 4, 8), "pos_embed": (1, 36, 8)}
    (cause,) = diagnose(ckpt, model)
    assert cause.rules == [{"resample_pos_embed": {"keys": "^pos_embed$", "from": [4, 4], "to": [6, 6], "prefix_tokens": 0}}]


def test_two_heads_are_both_class_heads():
    """A distilled ViT's head and head_dist both change with the classes (not only the last layer)."""
    ckpt = {"fc1.weight": (8, 4), "head.weight": (10, 8), "head.bias": (10,), "head_dist.weight": (10, 8),
            "head_dist.bias": (10,)}
    model = {**ckpt, "head.weight": (3, 8), "head.bias": (3,), "head_dist.weight": (3, 8), "head_dist.bias": (3,)}
    causes = diagnose(ckpt, model)
    assert [c.rules for c in causes] == [[{"num_classes": {"layer": "head", "size": 3}}],
                                         [{"num_classes": {"layer": "head_dist", "size": 3}}]]


def test_keras_weights_into_a_grayscale_model_with_fewer_classes(tmp_path):
    """From a Keras file: suggest converts (layouts, the flatten order) and adapts (in_channels sum,
    num_classes) in one rules file. The RGB conversion gives Keras' own outputs (the zoo's reference,
    tests/data/zoo/vgg_io.npz); the gray model gives, on a gray image, what the RGB one gives on its
    copy in three channels, for the classes kept."""
    import numpy as np
    from zoo_twins import VGGTwin

    class GrayVGG(VGGTwin):
        def __init__(self):
            super().__init__()
            self.features[0] = nn.Conv2d(1, 8, 3, padding=1)
            self.classifier[2] = nn.Linear(16, 3)

    src = "tests/data/zoo/vgg.keras"
    reader = api.Options().open(src)
    with reader:
        metas, classes, configs, fmt = reader.metas(), reader.layer_classes(), reader.layer_configs(), reader.format
    config = api.keras_config(src)
    models = {}
    for name, model in (("rgb", VGGTwin()), ("gray", GrayVGG())):
        s = suggest(metas, from_module(model, name), classes=classes, configs=configs, keras_config=config,
                    source_format=fmt)
        assert s.fits, s.text
        res = api.apply_file(src, parse_text(s.text), tmp_path / f"{name}.safetensors", target=from_module(model, name))
        assert res.ok, res.error
        model.load_state_dict(load_file(tmp_path / f"{name}.safetensors"), strict=True)
        models[name] = model.eval()
    assert "in_channels: {keys: ^features\\.0\\.weight$, size: 1, mode: sum}" in s.text
    io = np.load("tests/data/zoo/vgg_io.npz")
    with torch.no_grad():
        got = models["rgb"](torch.from_numpy(io["x"]).permute(0, 3, 1, 2))
        torch.testing.assert_close(got, torch.from_numpy(io["y"]), rtol=1e-4, atol=1e-4)
        gray = _x((2, 1, 12, 16), dtype=torch.float32)
        torch.testing.assert_close(models["gray"](gray), models["rgb"](gray.expand(2, 3, 12, 16))[:, :3],
                                   rtol=1e-5, atol=1e-5)


# --- generated architectures: growing keeps outputs, pruning equals zeroing the pruned inputs -----

class Chain(nn.Module):
    """conv -> [bn] -> relu -> [depthwise -> relu] -> conv or convT -> [bn] -> relu -> pool -> flatten
    -> linear -> [bn1d] -> relu -> linear, in 1, 2 or 3 spatial dims, widths from ``w``."""

    def __init__(self, dims: int, w: dict, bn: bool, dw: bool, transposed: bool, pool: int):
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
        convt = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[dims]
        norm = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
        self.dims, self.pool, self.flags = dims, pool, (bn, dw)
        self.c1 = conv(2, w["c1"], 3, padding=1)
        self.n1 = norm(w["c1"]) if bn else nn.Identity()
        self.dw = conv(w["c1"], w["c1"], 3, padding=1, groups=w["c1"]) if dw else nn.Identity()
        self.c2 = (convt if transposed else conv)(w["c1"], w["c2"], 2)
        self.n2 = norm(w["c2"]) if bn else nn.Identity()
        self.f1 = nn.Linear(w["c2"] * pool ** dims, w["f1"])
        self.n3 = nn.BatchNorm1d(w["f1"]) if bn else nn.Identity()
        self.f2 = nn.Linear(w["f1"], 3)

    def forward(self, x):
        x = torch.relu(self.dw(torch.relu(self.n1(self.c1(x)))))
        x = torch.relu(self.n2(self.c2(x)))
        x = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}[self.dims](x, self.pool)
        return self.f2(torch.relu(self.n3(self.f1(x.flatten(1)))))


ARCHS = [dict(dims=d, bn=bn, dw=dw, transposed=t, pool=p)
         for d, bn, dw, t, p in [(2, True, True, False, 2), (2, False, False, True, 1), (1, True, False, False, 3),
                                 (3, True, True, True, 1), (1, False, True, True, 2), (3, False, False, False, 2),
                                 (2, True, False, True, 3), (1, True, True, False, 1)]]
BASE = {"c1": 5, "c2": 6, "f1": 7}


@pytest.mark.parametrize("arch", range(len(ARCHS)))
@pytest.mark.parametrize("layer", ["c1", "c2", "f1"])
def test_generated_architectures_grow_and_prune(tmp_path, arch, layer):
    """For each architecture and producer: readers from the traced graph; grown by 3 (PyTorch init,
    trainable) the outputs are the old ones; pruned to 3 by L1, the outputs are the old network's with
    the pruned channels' reader weights set to zero (what removing them means), in float64."""
    a = ARCHS[arch]
    src = _randomised(Chain(w=BASE, **a), 100 + arch)
    _save(src, tmp_path / "a.safetensors")
    x = _x((4, 2, *([6] * a["dims"])), seed=arch)
    grown, res = _apply(tmp_path, tmp_path / "a.safetensors", f"rules:\n- channels: {{layer: {layer}, size: {BASE[layer] + 3}, "
                        "fill: default}\n", Chain(w={**BASE, layer: BASE[layer] + 3}, **a).double(), "grown")
    with torch.no_grad():
        torch.testing.assert_close(grown(x), src(x), rtol=1e-10, atol=1e-10)
    pruned, res = _apply(tmp_path, tmp_path / "a.safetensors", f"rules:\n- channels: {{layer: {layer}, size: 3, by: l1}}\n",
                         Chain(w={**BASE, layer: 3}, **a).double(), "pruned")
    w = getattr(src, layer).weight
    out_ax = 1 if isinstance(getattr(src, layer), nn.ConvTranspose1d | nn.ConvTranspose2d | nn.ConvTranspose3d) else 0
    norms = w.abs().movedim(out_ax, 0).reshape(w.shape[out_ax], -1).sum(1)
    gone = sorted(set(range(BASE[layer])) - set(torch.topk(norms, 3).indices.tolist()))
    ref = _randomised(Chain(w=BASE, **a), 100 + arch)
    reader = {"c1": ref.c2, "c2": ref.f1, "f1": ref.f2}[layer]
    with torch.no_grad():
        r_ax = 0 if isinstance(reader, nn.ConvTranspose1d | nn.ConvTranspose2d | nn.ConvTranspose3d) else 1
        block = reader.weight.shape[r_ax] // BASE[layer]
        idx = torch.tensor([c * block + j for c in gone for j in range(block)], dtype=torch.long)
        reader.weight.index_fill_(r_ax, idx, 0.0)
        torch.testing.assert_close(pruned(x), ref(x), rtol=1e-10, atol=1e-10)


# --- what the graph walk refuses and accepts (tests/attack round: each of these once went through) ---

def _walk(forward, w=4):
    from ckptfix.trace import channel_readers

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, w, 3, padding=1)
            self.c2 = nn.Conv2d(w, 2, 1)
            self.fc = nn.Linear(w * 4, 2)

        def forward(self, x):
            return forward(self, x)

    return channel_readers(M(), "conv")


MIXING = {
    "nhwc flatten": lambda s, x: s.fc(s.conv(x)[:, :, :2, :2].permute(0, 2, 3, 1).flatten(1)),
    "channel shuffle": lambda s, x: s.c2(s.conv(x).view(x.shape[0], 2, 2, 5, 5).transpose(1, 2).reshape(x.shape[0], 4, 5, 5)),
    "softmax over channels": lambda s, x: s.c2(F.softmax(s.conv(x), dim=1)),
    "mean over channels": lambda s, x: s.c2((lambda a: a - a.mean(1, keepdim=True))(s.conv(x))),
    "concat of two pools": lambda s, x: s.fc(torch.cat([F.adaptive_max_pool2d(s.conv(x), 1), F.adaptive_avg_pool2d(s.conv(x), 1)], 1).flatten(1)[:, :16]),
    "glu": lambda s, x: s.c2(torch.cat([a * torch.sigmoid(b) for a, b in [s.conv(x).chunk(2, 1)]] * 2, 1)),
    "channel slice": lambda s, x: s.c2(s.conv(x)[:, [1, 0, 2, 3]]),
    "linear on the map": lambda s, x: s.fc(s.conv(x)[:, :, 0, :4].reshape(x.shape[0], 4, 4)),
    "residual add": lambda s, x: s.c2(s.conv(x) + x[:, :1]),
}


@pytest.mark.parametrize("case", sorted(MIXING))
def test_the_graph_walk_refuses_ops_that_mix_or_reorder_channels(case):
    readers, why = _walk(MIXING[case])
    assert readers == [] and why and "declare the coupled layers with then:" in why, (case, readers, why)


@pytest.mark.parametrize("forward,readers", [
    (lambda s, x: s.c2(s.conv(x) * torch.sigmoid(s.conv(x))), ["c2"]),
    (lambda s, x: s.fc(s.conv(x)[:, :, :2, :2].reshape(x.shape[0], -1)), None),
    (lambda s, x: s.fc(torch.flatten(F.adaptive_avg_pool2d(F.relu(s.conv(x)), 2), 1)), ["fc"]),
    (lambda s, x: s.fc(F.dropout(s.conv(x).mean((2, 3)), 0.1).repeat(1, 4)), None),
])
def test_the_graph_walk_follows_channelwise_ops(forward, readers):
    got, why = _walk(forward)
    if readers is None:
        assert got == [] and why   # a slice of the map or a repeat: not known to keep channels apart
    else:
        assert (got, why) == (readers, None)


class PreAct(nn.Module):
    """A ResNet block whose shortcut runs first (so execution order pairs differently from names)."""

    def __init__(self, w=8):
        super().__init__()
        self.stem = nn.Conv2d(3, w, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(w)
        self.shortcut = nn.Conv2d(w, 2 * w, 1, bias=False)
        self.conv1 = nn.Conv2d(w, 2 * w, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=False)
        self.fc = nn.Linear(2 * w, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        return self.fc((self.shortcut(x) + self.conv2(F.relu(self.conv1(x)))).mean((2, 3)))


@pytest.mark.parametrize("how", ["diff", "suggest"])
def test_a_widened_residual_net_from_diff_and_suggest_keeps_its_outputs(tmp_path, how):
    """Every name is the same, only widths grow: the rules diff and suggest write apply (chains
    first, the pad rules for the rest), and with zero fills the outputs stay the same even across
    the residual add (every reader's new inputs are zero)."""
    from ckptfix.diagnose import rules_yaml

    src = _randomised(PreAct(8), 21)
    _save(src, tmp_path / "a.safetensors")
    tgt = from_module(PreAct(12), "t")
    text = rules_yaml(api.diff(tmp_path / "a.safetensors", tgt).causes) if how == "diff" else \
        suggest(from_module(src, "s").tensors, tgt).text
    assert "rename" not in text and "variant" not in text, text
    model, _ = _apply(tmp_path, tmp_path / "a.safetensors", text, PreAct(12).double(), every_step=False)
    x = _x((2, 3, 6, 6))
    torch.testing.assert_close(model(x), src(x), rtol=1e-12, atol=1e-12)


def test_diff_takes_the_first_layer_in_execution_order(tmp_path):
    class HeadFirst(nn.Module):
        def __init__(self, c=3, n=10):
            super().__init__()
            self.fc = nn.Linear(8, n)
            self.stem = nn.Conv2d(c, 8, 3)

        def forward(self, x):
            return self.fc(self.stem(x).mean((2, 3)))

    _save(HeadFirst(), tmp_path / "a.safetensors")
    kinds = {c.kind: c.rules for c in api.diff(tmp_path / "a.safetensors", from_module(HeadFirst(1, 4), "t")).causes}
    assert kinds["in_channels"] == [{"in_channels": {"keys": "^stem\\.weight$", "size": 1, "mode": "sum"}}]
    assert kinds["num_classes"] == [{"num_classes": {"layer": "fc", "size": 4}}]


def test_explain_of_a_middle_layer_is_not_the_input_or_the_head():
    from ckptfix.explain import explain

    err = ("RuntimeError: Error(s) in loading state_dict for ResNet:\n\tsize mismatch for layer3.0.conv1.weight: "
           "copying a param with shape torch.Size([256, 128, 3, 3]) from checkpoint, the shape in current model is "
           "torch.Size([256, 64, 3, 3]).\n\tsize mismatch for blocks.0.mlp.fc1.weight: copying a param with shape "
           "torch.Size([3072, 768]) from checkpoint, the shape in current model is torch.Size([2048, 768]).\n")
    info = explain(err)
    assert {c["kind"] for c in info["causes"]} == {"channels"}
    assert "- in_channels:" not in info["rules_yaml"] and "- num_classes:" not in info["rules_yaml"]


def test_then_must_name_distinct_layers_and_not_the_producer():
    with pytest.raises(RulesError, match="then lists 'bn1' twice"):
        parse_text("rules:\n- channels: {layer: conv1, size: 3, then: [bn1, bn1, conv2]}\n")
    with pytest.raises(RulesError, match="then lists the layer 'conv1' itself"):
        parse_text("rules:\n- channels: {layer: conv1, size: 3, then: [conv1]}\n")
    with pytest.raises(RulesError, match="map"):
        parse_text("rules:\n- in_channels: {keys: w, size: 4, map: {3: []}}\n")


def test_working_copies_count_against_memory(tmp_path, monkeypatch):
    """A position embedding resampled to a grid whose float32 copies do not fit is refused when
    planned, with the reason; input and output alone would have fitted."""
    import ckptfix.plan as plan_mod

    monkeypatch.setattr(plan_mod, "memory_limit", lambda: 100 << 20)
    save_file({"pos_embed": torch.zeros(1, 197, 8)}, str(tmp_path / "p.safetensors"))
    res = api.apply_file(tmp_path / "p.safetensors", parse_text("rules:\n- resample_pos_embed: {keys: pos_embed, to: [1200, 1200]}\n"),
                         tmp_path / "o.safetensors")
    assert not res.ok and res.exit_code == 2 and "(input, output and working copies)" in res.error, res.error
    assert not (tmp_path / "o.safetensors").exists()


# --- new-user round: each of these once gave a wrong answer ------------------------------------

def test_a_non_square_grid_with_a_class_token_is_not_read_as_a_square_one():
    """4x6 + 1 class token = 25 tokens: not a 5x5 grid with no prefix (the class token would be
    resampled with the grid). Only a checkpoint with register tokens may embed the grid only."""
    a, b = nets.TinyViT(img_size=(32, 48)), nets.TinyViT(img_size=(48, 64))
    (cause,) = diagnose({n: tuple(v.shape) for n, v in a.state_dict().items()},
                        {n: tuple(v.shape) for n, v in b.state_dict().items()})
    assert not cause.fixable and "prefix_tokens: 1" in cause.message and "[14, 16]" in cause.message


def test_a_change_of_groups_is_a_variant_in_diff_and_suggest(tmp_path):
    class G(nn.Module):
        def __init__(self, g=1):
            super().__init__()
            self.conv1, self.conv2, self.fc = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 16, 3, groups=g), nn.Linear(16, 4)

        def forward(self, x):
            return self.fc(self.conv2(self.conv1(x)).mean((2, 3)))

    _save(G(1), tmp_path / "a.safetensors")
    (cause,) = api.diff(tmp_path / "a.safetensors", from_module(G(2), "t")).causes
    assert cause.kind == "variant" and "grouped convolution (groups=2)" in cause.message
    s = suggest(from_module(G(1), "s").tensors, from_module(G(2), "t"))
    assert not s.fits and any("grouped convolution (groups=2)" in p for p in s.problems)


def test_suggest_with_target_kwargs_writes_them_so_apply_validates(tmp_path, cli):
    _save(_randomised(nets.TimmLike(3, 10), 30, torch.float32), tmp_path / "a.safetensors")
    rules = tmp_path / "r.yaml"
    assert cli("suggest", tmp_path / "a.safetensors", "--target", f"{NETS}:TimmLike", "--target-kwargs",
               "{in_chans: 1, num_classes: 4}", "-o", rules).exit_code == 0
    import yaml

    doc = yaml.safe_load(rules.read_text())
    assert doc["target_kwargs"] == {"in_chans": 1, "num_classes": 4} and doc["target"].endswith("nets.py:TimmLike")
    r = cli("apply", tmp_path / "a.safetensors", "-r", rules, "-o", tmp_path / "o.safetensors", "--json")
    assert r.exit_code == 0 and '"fits": true' in r.stdout


def test_more_refusals_in_one_line(tmp_path):
    _save(nets.WideCNN(), tmp_path / "a.safetensors")
    for rules, want in [
        ("- num_classes: {layer: bn1, size: 5}", "bn1 is not a classifier: its weight bn1.weight is [8]"),
        ("- channels: {layer: conv1, size: 12, by: l1, then: [bn1, dw, conv2]}",
         "by: l1 chooses the channels to keep when pruning; this rule takes conv1 from 8 to 12"),
    ]:
        res = api.apply_file(tmp_path / "a.safetensors", parse_text("rules:\n" + rules + "\n"), tmp_path / "o.safetensors")
        assert not res.ok and want in res.error and "\n" not in res.error, res.error
    with pytest.raises(RulesError, match="unknown field 'form'.*did you mean 'from'"):
        parse_text("rules:\n- resample_pos_embed: {keys: p, form: [4, 4], to: [6, 6]}\n")
    with pytest.raises(RulesError, match="unknown field 'from_'"):
        parse_text("rules:\n- resample_pos_embed: {keys: p, from_: [4, 4], to: [6, 6]}\n")
    with pytest.raises(RulesError) as e:
        parse_text("rules:\n- num_classes: {layer: head, size: 2, keep: [1, 1]}\n")
    assert str(e.value).count("num_classes") == 1 and "num_classes rule: keep lists a class twice" in str(e.value)


def test_a_layernorm_width_change_does_not_promise_the_old_outputs():
    """A ConvNeXt-style block (depthwise, channels-last LayerNorm, Linear pointwise convs): padding
    the LayerNorm keeps its values but not its statistics, and the rule's comment says so."""
    class Block(nn.Module):
        def __init__(self, w=8):
            super().__init__()
            self.stem, self.dw = nn.Conv2d(3, w, 4, 4), nn.Conv2d(w, w, 7, padding=3, groups=w)
            self.norm, self.pw1, self.pw2, self.head = nn.LayerNorm(w), nn.Linear(w, 4 * w), nn.Linear(4 * w, w), nn.Linear(w, 5)

        def forward(self, x):
            x = self.stem(x)
            y = self.pw2(F.gelu(self.pw1(self.norm(self.dw(x).permute(0, 2, 3, 1))))).permute(0, 3, 1, 2)
            return self.head((x + y).mean((2, 3)))

    s = suggest(from_module(Block(8), "s").tensors, from_module(Block(12), "t"))
    norm_lines = [ln for ln in s.text.splitlines() if "norm:" in ln and "review" in ln]
    assert norm_lines and all("its statistics change, so the outputs change too" in ln for ln in norm_lines), s.text
