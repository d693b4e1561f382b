"""The second zoo (tests/data/zoo2, tools/make_keras_zoo2.py): 24 more Keras models, built by an
attacker to break what the first zoo proved (channels_first, Permute behind Dropout, Reshape as
Flatten, grouped and depthwise x3 convs, SeparableConv1D, BN center/scale=False, nested models,
Inception branches, sorted TF1 names, stacked LSTMs, layers torch cannot hold). From the config
file (.keras) and from a weights-only file (.npz, TF1 for the order case): every convertible model
reproduces Keras within 1e-5 with no hand edits, or says what it needs (`--keras-config`); the
others are refused with the reason, or flagged `review:` where only order could tell."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import zoo2_twins
from conftest import DATA
from numerics import assert_outputs_close

ZOO = DATA / "zoo2"
TWINS = "tests/zoo2_twins.py"
# what a weights-only file cannot know, and needs the config for (the graph: a Permute, a
# channels_first map, a non-square map, the order TF1 sorts away)
NEEDS_CONFIG = {(m, ".npz") for m in ("vsmall", "dropflat", "reshapeflat", "permhw", "permdrop", "permreshape",
                                      "chfirst", "chfirst2")} | {("alpha_order", "_tf1")}
REFUSED = {"gru_ra0": "reset_after=False", "prelu_map": "slope per position", "bilstm": "Bidirectional RNN: not supported yet",
           "densemap": "no counterpart"}
ORDER_ONLY = {"inception"}   # parallel same-shape branches: flagged review, not guaranteed

# the weights-only file where it can differ from the config file: what the graph or the config says
WEIGHTS_ONLY = {m for m, _ in NEEDS_CONFIG} | {"groups", "dw3", "sep1d", "bncs", "lstm2", "inception"}
CASES = [pytest.param(m, t, p, f, id=f"{m}-{t}-{f}") for m, twins in zoo2_twins.ZOO2.items() for t, p in twins
         for f in [".keras"] + ([".npz"] if m in WEIGHTS_ONLY else []) + (["_tf1"] if m == "alpha_order" else [])]


def run_case(cli, tmp_path, model, twin, fmt, extra=()):
    src = ZOO / model / f"{model}{fmt}"
    rules, out = tmp_path / "rules.yaml", tmp_path / "out.safetensors"
    r = cli("suggest", src, "--target", f"{TWINS}:{twin}", "-o", rules, *extra)
    return r, rules, out, src


def outputs_match(cli, model, twin, perm, src, rules, out):
    assert cli("apply", src, "-r", rules, "-o", out).exit_code == 0
    m = getattr(zoo2_twins, twin)()
    m.load_state_dict(load_file(out), strict=True)
    m.eval()
    io = np.load(ZOO / model / f"{model}_io.npz")
    x = torch.from_numpy(io["x"])
    x = x.long() if not x.is_floating_point() else x
    if perm:
        x = x.permute(*perm).contiguous()
    with torch.no_grad():
        return m(x), torch.from_numpy(io["y"])


@pytest.mark.parametrize("model,twin,perm,fmt", CASES)
def test_zoo2(cli, tmp_path, model, twin, perm, fmt):
    r, rules, out, src = run_case(cli, tmp_path, model, twin, fmt)
    said = r.stdout + (rules.read_text() if rules.exists() else "")
    if model in REFUSED:
        assert r.exit_code == 1 and REFUSED[model] in said, said[-2000:]
        return
    if (model, fmt) in NEEDS_CONFIG:  # it says what it cannot know: refuses, or writes its assumption
        assert (r.exit_code == 1 and "--input-shape" in said) or "# review:" in said or "assumed" in said, said[-2000:]
        r, rules, out, src = run_case(cli, tmp_path, model, twin, fmt,
                                      ["--force", "--keras-config", ZOO / model / f"{model}.keras"])
    assert r.exit_code == 0, r.stdout[-3000:]
    if model in ORDER_ONLY:
        assert "read the same input and have the same shapes" in rules.read_text()
        return
    got, want = outputs_match(cli, model, twin, perm, src, rules, out)
    assert_outputs_close(got, want)
