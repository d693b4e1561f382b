"""explain: real load_state_dict errors from torch 2.13, read back exactly."""

import json

import pytest
import torch
from torch import nn

import nets
from ckptfix.diagnose import diagnose
from ckptfix.explain import explain, parse
from ckptfix.plan import make_plan
from ckptfix.rules import parse_text
from ckptfix.target import from_module
from ckptfix.tensors import TensorMeta
from conftest import TORCH


def error_of(model, sd) -> str:
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        return str(e)
    raise AssertionError("loaded without error")


def seed_error():
    return error_of(nn.Conv2d(3, 15, 5), torch.load(TORCH / "seed_conv10.pt", weights_only=True))


def test_seed_two_line_case():
    info = explain(seed_error())
    assert info["model_class"] == "Conv2d"
    w, b = info["mismatches"]
    assert (w["name"], w["checkpoint"], w["model"]) == ("weight", [10, 3, 5, 5], [15, 3, 5, 5])
    assert (b["name"], b["checkpoint"], b["model"]) == ("bias", [10], [15])
    assert w["layer"] == {"checkpoint": "Conv2d(in=3, out=10, kernel=5x5)", "model": "Conv2d(in=3, out=15, kernel=5x5)",
                          "checkpoint_params": 760, "model_params": 1140}
    assert w["differs"] == ["out_channels 10 -> 15"]
    (cause,) = info["causes"]
    assert cause["review"] and cause["rules"] == [{"pad": {"keys": "^(weight|bias)$", "axis": 0, "size": 15,
                                                           "fill": "zeros"}}]


def test_the_proposed_rule_makes_it_fit():
    info = explain(seed_error())
    rules = parse_text(info["rules_yaml"], "explained.yaml").rules
    sd = torch.load(TORCH / "seed_conv10.pt", weights_only=True)
    metas = {k: TensorMeta(tuple(v.shape)) for k, v in sd.items()}
    with torch.device("meta"):
        target = from_module(nn.Conv2d(3, 15, 5), "m")
    assert make_plan(metas, rules, target).fit.fits


@pytest.mark.parametrize("wrap", [lambda t: t, lambda t: t.replace("\t", "    "),
                                  lambda t: "Traceback (most recent call last):\n  File \"train.py\", line 9\n"
                                            "RuntimeError: " + t + "\n\nDuring handling ...",
                                  lambda t: "\n".join(t[i:i + 80] for i in range(0, len(t), 80))])  # wrapped at 80
def test_paste_variants(wrap):
    e = parse(wrap(seed_error()))
    assert [(m.name, m.checkpoint, m.model) for m in e.mismatches] == [
        ("weight", (10, 3, 5, 5), (15, 3, 5, 5)), ("bias", (10,), (15,))]


def test_cut_off_mid_line_keeps_what_it_can():
    text = seed_error()
    cut = text[: text.rindex("the shape in current") + 5]
    e = parse(cut)
    assert e.mismatches[1].name == "bias" and e.mismatches[1].checkpoint == (10,) and e.mismatches[1].model is None


@pytest.mark.parametrize("fixture,prefix", [("ddp_net.pt", "module."), ("compiled_net.pt", "_orig_mod.")])
def test_prefix_cause(fixture, prefix):
    text = error_of(nets.SmallNet(), torch.load(TORCH / fixture, weights_only=True))
    info = explain(text)
    assert len(info["unexpected"]) == 11 and len(info["missing"]) == 10  # torch omits num_batches_tracked
    assert info["causes"][0]["kind"] == "prefix"
    assert info["causes"][0]["rules"] == [{"strip_prefix": prefix}]


def test_num_classes_cause():
    sd = nets.SmallNet(num_classes=10).state_dict()
    info = explain(error_of(nets.SmallNet(num_classes=5), sd))
    (c,) = info["causes"]
    assert c["kind"] == "num_classes" and "10 -> 5" in c["message"]
    assert c["rules"] == [{"num_classes": {"layer": "fc", "size": 5}}]
    assert "keeps the first 5 classes" in c["message"]


def test_input_channels_cause():
    class Gray(nets.SmallNet):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 16, 3, padding=1)

    info = explain(error_of(Gray(), nets.SmallNet().state_dict()))
    (c,) = info["causes"]
    assert c["kind"] == "in_channels" and "3 -> 1" in c["message"]
    # timm's adapt_input_conv for in_chans=1: the sum over RGB
    assert c["rules"] == [{"in_channels": {"keys": "^conv1\\.weight$", "size": 1, "mode": "sum"}}]
    assert "a gray image gives exactly the activations" in c["message"]


def test_tensorflow_layout_cause():
    sd = nets.SmallNet().state_dict()
    sd["conv2.weight"] = sd["conv2.weight"].permute(2, 3, 1, 0).contiguous()  # HWIO
    sd["fc.weight"] = sd["fc.weight"].t().contiguous()                          # IO
    info = explain(error_of(nets.SmallNet(), sd))
    rules = [c["rules"][0]["transpose"] for c in info["causes"]]
    assert {"keys": "^conv2\\.weight$", "layout": "HWIO->OIHW"} in rules
    assert {"keys": "^fc\\.weight$", "layout": "IO->OI"} in rules


def test_a_wider_variant_is_a_width_cause_per_layer():
    class Wide(nn.Module):
        def __init__(self, w):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16 * w, 3)
            self.conv2 = nn.Conv2d(16 * w, 32 * w, 3)
            self.fc = nn.Linear(32 * w, 10)

    """A width multiplier (every layer twice as wide) is one coupled width change per producer
    (conv1 read by conv2, conv2 read by fc), each a `channels` rule marked review: the new channels
    start at zero and are read with zero weights, so the old outputs stay."""
    info = explain(error_of(Wide(2), Wide(1).state_dict()))
    assert [c["kind"] for c in info["causes"]] == ["channels"] * 2
    assert all(c["fixable"] and c["review"] for c in info["causes"])
    assert [c["rules"] for c in info["causes"]] == [[{"channels": {"layer": "conv1", "size": 32, "then": ["conv2"]}}],
                                                    [{"channels": {"layer": "conv2", "size": 64, "then": ["fc"]}}]]
    assert "different model variant" not in info["rules_yaml"] and "outputs are unchanged" in info["rules_yaml"]


def test_kernel_size_variant():
    info = explain(error_of(nn.Conv2d(3, 10, 3), nn.Conv2d(3, 10, 5).state_dict()))
    assert info["mismatches"][0]["differs"] == ["kernel_size 5x5 -> 3x3"]
    assert info["causes"][0]["kind"] == "variant"


def test_cli_reads_stdin_and_files(cli, tmp_path):
    from typer.testing import CliRunner

    from ckptfix.cli import app

    r = CliRunner().invoke(app, ["explain"], input=seed_error())
    assert r.exit_code == 0
    assert "out_channels 10 -> 15" in r.stdout and "760 params in the checkpoint, 1,140 in the model" in r.stdout
    assert "- pad:" in r.stdout
    p = tmp_path / "err.txt"
    p.write_text(seed_error())
    j = json.loads(cli("explain", p, "--json").stdout)
    assert {"mismatches", "missing", "unexpected"} <= j.keys()
    p.write_text("nothing to see here")
    r = cli("explain", p)
    assert r.exit_code == 2 and "no load_state_dict error found" in r.stderr


def test_diagnose_on_metadata_directly():
    causes = diagnose({"module.a.weight": (2, 3)}, {"a.weight": (2, 3)})
    assert causes[0].rules == [{"strip_prefix": "module."}]


def test_a_linear_counts_its_bias_when_only_the_weight_is_pasted():
    """The paste names fc.weight alone; torch's Linear(256, 360) holds 256*360 + 360 = 92,520
    parameters (what diff counts), not 92,160."""
    text = ("size mismatch for fc.weight: copying a param with shape torch.Size([360, 256]) from checkpoint, "
            "the shape in current model is torch.Size([10, 256]).")
    (row,) = explain(text)["mismatches"]
    assert row["layer"]["checkpoint"] == "Linear(in=256, out=360)"
    assert row["layer"]["checkpoint_params"] == 92_520 and row["layer"]["model_params"] == 2_570


def test_one_layer_difference_is_named_once():
    """Was '1 layer(s) differ (several layers differ)'."""
    text = ("size mismatch for conv.weight: copying a param with shape torch.Size([10, 3, 5, 5]) from checkpoint, "
            "the shape in current model is torch.Size([10, 3, 3, 3]).")
    (c,) = explain(text)["causes"]
    assert c["kind"] == "variant" and "several" not in c["message"] and "kernel_size 5x5 -> 3x3" in c["message"]
