"""Proof on models ckptfix was not built against (issue 11): every Keras zoo model
(tests/data/zoo, written by real TensorFlow/Keras with tools/make_keras_zoo.py), in every format it
was saved in, converts into each of its PyTorch twins (tests/zoo_twins.py, proved right
independently of ckptfix by tools/zoo_oracle.py) with `ckptfix suggest` + `ckptfix apply` and no
hand edits: the result loads strictly and the twin reproduces Keras' stored output within 1e-5.

TensorFlow is not needed: the zoo's files and reference outputs are committed."""

import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import zoo_twins
from conftest import DATA
from numerics import assert_outputs_close

ZOO_DIR = DATA / "zoo"
TWINS = "tests/zoo_twins.py"
FORMATS = ["{}.keras", "{}.weights.h5", "{}_legacy.h5", "{}_tf1", "{}_tf2", "{}.npz"]

CASES = [pytest.param(arch, twin, in_perm, out_perm, fmt, id=f"{arch}-{twin}-{fmt.format('')}")
         for arch, twins in zoo_twins.ZOO.items() for twin, in_perm, out_perm in twins
         for fmt in FORMATS if (ZOO_DIR / fmt.format(arch)).exists()]


def keras_outputs(arch):
    """The stored input and Keras' outputs: `y`, or `y0`, `y1`, ... for a model with several outputs."""
    io = np.load(ZOO_DIR / f"{arch}_io.npz")
    return io["x"], [io[k] for k in sorted(io.files) if re.fullmatch(r"y\d*", k)]


def uncommented_rules(text: str) -> list[str]:
    """The entries of the top-level `rules:` list that carry no comment (on their first line or on
    the comment lines just above them)."""
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if re.match(r"rules:\s*(#.*)?$", line))
    except StopIteration:
        return []  # `rules: []` or no rules at all: nothing to comment
    items = []
    indent = None
    for i in range(start + 1, len(lines)):
        line = lines[i]
        if line.strip() == "" or line.lstrip().startswith("#"):
            continue
        if not line.startswith((" ", "-")):
            break  # the next top-level key
        m = re.match(r"(\s*)- ", line)
        if m and (indent is None or len(m[1]) == indent):
            indent = len(m[1])
            above = lines[i - 1].strip() if i > start + 1 else ""
            if "#" not in line and not above.startswith("#"):
                items.append(line.strip())
    return items


def test_the_comment_check_finds_uncommented_rules():
    text = ("rules:\n# why the first\n- rename: {from: a, to: b}\n- transpose: {keys: x, perm: [1, 0]}\n"
            "- drop: {keys: y}  # review: training-only\ntarget: m.py:M\n")
    assert uncommented_rules(text) == ["- transpose: {keys: x, perm: [1, 0]}"]


def test_every_format_was_written():
    """Ten architectures, six formats each (the subclassed model: no .keras / legacy .h5)."""
    assert len(zoo_twins.ZOO) >= 10
    for arch in zoo_twins.ZOO:
        missing = [f.format(arch) for f in FORMATS if not (ZOO_DIR / f.format(arch)).exists()]
        assert missing == ([f"{arch}.keras", f"{arch}_legacy.h5"] if arch == "subclassed" else []), arch


@pytest.mark.parametrize("arch", list(zoo_twins.ZOO))
def test_twin_module_names_share_nothing_with_keras(arch):
    """No twin module (nor any part of its dotted name) is named like a Keras layer: only layer
    knowledge can pair them."""
    keras_names = {layer["name"] for layer in json.loads((ZOO_DIR / f"{arch}.json").read_text())["layers"]}
    for twin, _, _ in zoo_twins.ZOO[arch]:
        parts = {p for name, _ in getattr(zoo_twins, twin)().named_modules() for p in name.split(".")}
        assert not parts & keras_names, (twin, parts & keras_names)


# Files with no model config (weights only) cannot say what only the graph knows: a non-square map
# before Flatten (vgg: 3x4 after two poolings of 12x16), a Permute before Flatten (vgg_permute), or
# which of two same-sized BatchNorms follows which conv in parallel branches (resnet). For those,
# the test gives the model's config as a user holding the model code would (`--keras-config`);
# test_weights_only_files_say_what_they_cannot_know checks what suggest says without it.
CONFIG_LESS = ("{}.weights.h5", "{}_tf1", "{}_tf2", "{}.npz")
NEEDS_GRAPH = ("vgg", "vgg_permute", "resnet")


def suggest_args(arch: str, fmt: str) -> list:
    if arch in NEEDS_GRAPH and fmt in CONFIG_LESS:
        return ["--keras-config", ZOO_DIR / f"{arch}.keras"]
    return []


@pytest.mark.parametrize("arch,twin,in_perm,out_perm,fmt", CASES)
def test_suggest_then_apply_reproduces_keras(cli, tmp_path, arch, twin, in_perm, out_perm, fmt):
    src = ZOO_DIR / fmt.format(arch)
    rules = tmp_path / "rules.yaml"
    out = tmp_path / "out.safetensors"
    r = cli("suggest", src, "--target", f"{TWINS}:{twin}", "-o", rules, *suggest_args(arch, fmt))
    assert r.exit_code == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert uncommented_rules(rules.read_text()) == [], rules.read_text()
    r = cli("apply", src, "-r", rules, "-o", out)
    assert r.exit_code == 0, r.stdout[-3000:] + r.stderr[-2000:]

    model = getattr(zoo_twins, twin)()
    model.load_state_dict(load_file(out), strict=True)
    x, ys = keras_outputs(arch)
    got = zoo_twins.run_twin(model, x, in_perm, out_perm)
    assert len(got) == len(ys)
    for i, (g, y) in enumerate(zip(got, ys)):
        assert_outputs_close(g, torch.from_numpy(y), msg=lambda m, i=i: f"output {i}: {m}")


@pytest.mark.parametrize("fmt", CONFIG_LESS)
def test_weights_only_files_say_what_they_cannot_know(cli, tmp_path, fmt):
    """Without a config: a non-square map is refused with what to give; the NHWC assumption and
    the order-only pairing of parallel branches are written into the rules file."""
    r = cli("suggest", ZOO_DIR / fmt.format("vgg"), "--target", f"{TWINS}:VGGTwin")
    assert r.exit_code == 1 and "--input-shape" in r.stdout, r.stdout[-2000:]
    r = cli("suggest", ZOO_DIR / fmt.format("vgg_permute"), "--target", f"{TWINS}:VGGTwin", "--input-shape", "3x12x16")
    assert "assumed it flattens NHWC" in r.stdout, r.stdout[-2000:]
    r = cli("suggest", ZOO_DIR / fmt.format("resnet"), "--target", f"{TWINS}:ResNetTwin")
    assert re.search(r"# review: the checkpoint's layer order (differs from the model's|is lost)", r.stdout), \
        r.stdout[-2000:]


def test_input_shape_fixes_a_non_square_map(cli, tmp_path):
    """vgg.npz with only `--input-shape 3x12x16` (channels first): the traced map is 16x3x4."""
    rules, out = tmp_path / "rules.yaml", tmp_path / "out.safetensors"
    r = cli("suggest", ZOO_DIR / "vgg.npz", "--target", f"{TWINS}:VGGTwin", "--input-shape", "3x12x16", "-o", rules)
    assert r.exit_code == 0, r.stdout[-2000:]
    assert "flatten_order" in rules.read_text()
    assert cli("apply", ZOO_DIR / "vgg.npz", "-r", rules, "-o", out).exit_code == 0
    model = zoo_twins.VGGTwin()
    model.load_state_dict(load_file(out), strict=True)
    x, ys = keras_outputs("vgg")
    twin_cases = dict((t, (i, o)) for t, i, o in zoo_twins.ZOO["vgg"])
    got = zoo_twins.run_twin(model, x, *twin_cases["VGGTwin"])
    assert_outputs_close(got[0], torch.from_numpy(ys[0]))


@pytest.mark.parametrize("arch,twin", [("mobilenet", "MobileNetSeparable"), ("prelu", "PReLUNetTwin"),
                                       ("conv3d", "Conv3DTwin"), ("rnn", "RNNTwin")])
def test_unnamed_arrays_are_cut_into_layers_by_the_target(cli, tmp_path, arch, twin):
    """`numpy.savez(path, *model.get_weights())` (arr_0, arr_1, ...: no names, no classes): the
    arrays are cut into layers by what the target's layers are, in order, and convert as the
    named file does. Made here from the zoo's named npz, in Keras' weight order."""
    named = np.load(ZOO_DIR / f"{arch}.npz")
    src = tmp_path / "weights.npz"
    np.savez(src, *[named[k] for k in named.files])
    rules, out = tmp_path / "rules.yaml", tmp_path / "out.safetensors"
    r = cli("suggest", src, "--target", f"{TWINS}:{twin}", "-o", rules)
    assert r.exit_code == 0, r.stdout[-3000:]
    assert cli("apply", src, "-r", rules, "-o", out).exit_code == 0
    model = getattr(zoo_twins, twin)()
    model.load_state_dict(load_file(out), strict=True)
    x, ys = keras_outputs(arch)
    _, in_perm, out_perm = next(t for t in zoo_twins.ZOO[arch] if t[0] == twin)
    for g, y in zip(zoo_twins.run_twin(model, x, in_perm, out_perm), ys):
        assert_outputs_close(g, torch.from_numpy(y))


def test_a_config_of_another_model_is_refused(cli):
    """--keras-config of another model (vgg's for resnet's weights) names too few of the
    checkpoint's layers (only Keras' default `conv2d` is shared): refused with the file and the
    cause, not trusted for classes and order."""
    r = cli("suggest", ZOO_DIR / "resnet.npz", "--target", f"{TWINS}:ResNetTwin",
            "--keras-config", ZOO_DIR / "vgg.keras")
    assert r.exit_code == 2
    assert "vgg.keras" in r.stderr and "names too few of the checkpoint's layers" in r.stderr
