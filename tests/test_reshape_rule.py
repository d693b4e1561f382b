"""The ``reshape`` rule: equal-element-count reshapes in C (row-major) order, exactly
``numpy.reshape(a, shape, order="C")``, with one -1 inferred, or ``squeeze: true`` (PReLU alpha
``[1, 1, C]`` -> ``[C]``). On 50c8c96 no rule reached ``ops.Reshape``: ``reshape`` was an unknown rule.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from ckptfix.rules.ops import OpError, Reshape
from ckptfix.tensors import TensorMeta
from conftest import sha256
from numerics import seeded_randn
from test_dry_run import no_data_reads  # noqa: F401  (a fixture)


def one_line_error(r, where: str, pattern: str) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert len(lines) == 1 and "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    assert lines[0].startswith(f"ckptfix: error: {where}"), r.stderr
    assert re.search(pattern, lines[0]), r.stderr
    return lines[0]


@pytest.fixture
def src(tmp_path):
    p = tmp_path / "in.safetensors"
    save_file({"prelu.alpha": seeded_randn(1, 1, 8, seed=1), "v": torch.arange(6.0),
               "w": seeded_randn(3, 4, seed=2), "lone": seeded_randn(2, 1, 5, 1, seed=3)}, p)
    return p


def rules(tmp_path, *lines: str, name="r.yaml"):
    p = tmp_path / name
    p.write_text("rules:\n" + "".join(f"  - {ln}\n" for ln in lines))
    return p


# ---------------------------------------------------------------------------------------------
# the semantics: numpy.reshape in C order, numpy's -1, numpy.squeeze


@settings(max_examples=200, deadline=None)
@given(shape=st.lists(st.integers(0, 4), max_size=4), data=st.data())
def test_a_rule_shape_binds_to_exactly_what_numpy_reshape_does(shape, data):
    """For any requested shape (at most one -1), the bound op is refused exactly when numpy
    refuses, and otherwise gives numpy's shape and numpy's C-order values."""
    want = data.draw(st.lists(st.integers(0, 6), max_size=4), label="want")
    if want and data.draw(st.booleans(), label="with -1"):
        want[data.draw(st.integers(0, len(want) - 1), label="at")] = -1
    a = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    try:
        ref = np.reshape(a, want, order="C")
    except ValueError:
        ref = None
    try:
        op = Reshape.to_shape(TensorMeta(tuple(shape)), want)
        planned = op.shape(TensorMeta(tuple(shape)))
    except OpError:
        assert ref is None, f"numpy reshapes {shape} to {want}, ckptfix refused"
        return
    assert ref is not None, f"numpy refuses {shape} -> {want}, ckptfix planned {planned.shape}"
    assert planned.shape == ref.shape
    assert np.array_equal(op.data(torch.from_numpy(a)).numpy(), ref)


@settings(max_examples=100, deadline=None)
@given(shape=st.lists(st.integers(0, 3), max_size=5))
def test_squeeze_is_numpy_squeeze(shape):
    a = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    op = Reshape.squeezing(TensorMeta(tuple(shape), "int64"))
    assert op.shape(TensorMeta(tuple(shape), "int64")).shape == np.squeeze(a).shape
    assert np.array_equal(op.data(torch.from_numpy(a)).numpy(), np.squeeze(a))


def test_c_order_is_rows_of_consecutive_elements():
    out = Reshape((2, 3)).data(torch.arange(6))
    assert out.tolist() == [[0, 1, 2], [3, 4, 5]]  # not [[0, 2, 4], [1, 3, 5]] (Fortran order)


# ---------------------------------------------------------------------------------------------
# through the CLI


def test_apply_squeeze_and_reshape_on_a_real_file(cli, src, tmp_path):
    before = sha256(src)
    r = rules(tmp_path, "reshape: {keys: '^prelu\\.alpha$', squeeze: true}",
              "reshape: {keys: '^v$', shape: [2, 3]}", "reshape: {keys: '^w$', shape: [-1]}")
    out = tmp_path / "out.safetensors"
    res = cli("apply", src, "-r", r, "-o", out)
    assert res.exit_code == 0, res.stderr
    got, ref = load_file(out), load_file(src)
    assert got["prelu.alpha"].shape == (8,) and torch.equal(got["prelu.alpha"], ref["prelu.alpha"].reshape(8))
    assert got["v"].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert torch.equal(got["w"], ref["w"].reshape(12))
    assert torch.equal(got["lone"], ref["lone"])  # not matched: untouched
    assert sha256(src) == before


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_reshape_after_a_transpose_computes_in_c_order(cli, tmp_path, suffix):
    """Where the bytes cannot just be copied (after a transpose, from a pickle or npz) the data face
    runs: the result is the transposed tensor reshaped in C order."""
    k = seeded_randn(3, 3, 2, 4, seed=5)  # HWIO
    p = tmp_path / f"k{suffix}"
    if suffix == ".pt":
        torch.save({"conv.weight": k}, p)
    else:
        np.savez(p, **{"conv.weight": k.numpy()})
    r = rules(tmp_path, "transpose: {keys: weight, layout: HWIO->OIHW}", "reshape: {keys: weight, shape: [4, -1]}")
    out = tmp_path / "out.safetensors"
    res = cli("apply", p, "-r", r, "-o", out)
    assert res.exit_code == 0, res.stderr
    want = np.reshape(k.numpy().transpose(3, 2, 0, 1), (4, -1), order="C")
    assert np.array_equal(load_file(out)["conv.weight"].numpy(), want)


def test_squeeze_plus_rename_fits_a_prelu_target(cli, src, tmp_path):
    """The MTCNN case of issue 11: Keras PReLU alpha [1, 1, C] into torch PReLU weight [C]."""
    target = tmp_path / "target.safetensors"
    save_file({"prelu.weight": torch.zeros(8)}, target)
    r = rules(tmp_path, "keep: '^prelu\\.'", "reshape: {keys: '^prelu\\.alpha$', squeeze: true}",
              "rename: {pattern: '\\.alpha$', replace: '.weight'}")
    out = tmp_path / "out.safetensors"
    res = cli("apply", src, "-r", r, "--target", target, "-o", out)
    assert res.exit_code == 0, res.stderr
    assert torch.equal(load_file(out)["prelu.weight"], load_file(src)["prelu.alpha"].reshape(8))


def test_a_reshape_that_changes_the_element_count_is_refused_naming_key_shapes_and_line(cli, src, tmp_path):
    before = sha256(src)
    r = rules(tmp_path, "reshape: {keys: '^v$', shape: [2, 3]}", "reshape: {keys: '^w$', shape: [5, 2]}")
    out = tmp_path / "out.safetensors"
    line = one_line_error(cli("apply", src, "-r", r, "-o", out), f"{r}:3: rule 2 (reshape): ",
                          r"w \[3, 4\]: cannot reshape to \[5, 2\] \(10 elements\): it holds 12")
    assert "a reshape keeps the element count" in line
    one_line_error(cli("apply", src, "-r", r, "--dry-run"), f"{r}:3: ", r"cannot reshape to \[5, 2\]")
    r2 = rules(tmp_path, "reshape: {keys: '^v$', shape: [4, -1]}", name="r2.yaml")
    one_line_error(cli("apply", src, "-r", r2, "-o", out), f"{r2}:2: rule 1 (reshape): ",
                   r"v \[6\]: cannot reshape to \[4, -1\]: it holds 6 elements, not a multiple of the 4")
    assert not out.exists() and sha256(src) == before


@pytest.mark.parametrize("body, pattern", [
    ("{keys: v, shape: [-1, -1]}", r"shape \[-1, -1\] has more than one -1"),
    ("{keys: v, shape: [-2, 3]}", r"shape\.0: Input should be greater than or equal to -1"),
    ("{keys: v}", r"give exactly one of shape or squeeze: true"),
    ("{keys: v, shape: [6], squeeze: true}", r"give exactly one of shape or squeeze: true"),
    ("{keys: v, squeeze: false}", r"squeeze: Input should be True"),
    ("{keys: v, shape: 6}", r"shape: Input should be a valid list"),
    ("{keys: v, shap: [6]}", r"unknown field 'shap' in reshape rule \(did you mean 'shape'\?\)"),
    ("{keys: '(', shape: [6]}", r"regex '\(' does not compile"),
    ("{keys: nothing, shape: [6]}", r"keys 'nothing' match no tensor"),
])
def test_bad_reshape_rules_are_one_line_errors_with_the_line(cli, src, tmp_path, body, pattern):
    r = rules(tmp_path, f"reshape: {body}")
    one_line_error(cli("apply", src, "-r", r, "-o", tmp_path / "o.safetensors"), f"{r}:2: ", pattern)


def test_dry_run_shows_the_reshape_steps_and_reads_no_data(no_data_reads, cli, src, tmp_path):  # noqa: F811
    r = rules(tmp_path, "reshape: {keys: '^prelu\\.alpha$', squeeze: true}", "reshape: {keys: '^v$', shape: [2, -1]}")
    res = cli("apply", src, "-r", r, "--dry-run")
    assert res.exit_code == 0, res.stderr
    assert "squeeze (drop size-1 axes)" in res.stdout and "prelu.alpha [1, 1, 8] -> [8]" in res.stdout
    assert "reshape [2, -1]" in res.stdout and "v [6] -> [2, 3]" in res.stdout
    steps = json.loads(cli("apply", src, "-r", r, "--dry-run", "--json").stdout)
    assert steps  # the JSON report carries the plan too


def test_squeeze_leaves_a_tensor_without_size_1_axes_unchanged(cli, src, tmp_path):
    """A squeeze rule may match tensors that need it and tensors that do not (every PReLU of a
    model, some stored [C], some [1, 1, C]): like numpy.squeeze, it leaves the latter as they are."""
    r = rules(tmp_path, "reshape: {keys: '^(prelu\\.alpha|w|lone)$', squeeze: true}")
    res = cli("apply", src, "-r", r, "--dry-run")
    assert res.exit_code == 0, res.stderr
    assert "prelu.alpha [1, 1, 8] -> [8]" in res.stdout and "lone [2, 1, 5, 1] -> [2, 5]" in res.stdout
    assert "w [3, 4] ->" not in res.stdout
    only = rules(tmp_path, "reshape: {keys: '^w$', squeeze: true}", name="only.yaml")
    out = tmp_path / "out.safetensors"
    assert cli("apply", src, "-r", only, "-o", out).exit_code == 0
    assert torch.equal(load_file(out)["w"], load_file(src)["w"])


def test_reshape_by_layer_class(cli, src, tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("layer_classes: {prelu: PReLU}\nrules:\n  - reshape: {keys: '.', classes: [PReLU], squeeze: true}\n")
    res = cli("apply", src, "-r", p, "--dry-run")
    assert res.exit_code == 0, res.stderr
    assert "prelu.alpha [1, 1, 8] -> [8]" in res.stdout and "lone [2, 1, 5, 1] ->" not in res.stdout


def test_schema_lists_reshape(cli):
    schema = json.loads(cli("schema").stdout)
    titles = {w["title"] for w in schema["properties"]["rules"]["items"]["anyOf"]}
    assert "reshape" in titles
    props = schema["$defs"]["ReshapeOp"]["properties"]
    assert {"keys", "classes", "shape", "squeeze"} <= set(props)


def test_for_prelu_alphas_shape_minus_1_keeps_a_single_alpha_a_vector():
    """What the README advises for Keras PReLU alphas: ``shape: [-1]`` gives ``[C]`` from
    ``[1, 1, C]`` and ``[1]`` from a shared-axes ``[1, 1, 1]`` (torch's PReLU() weight), where
    squeeze would give a scalar ``[]``."""
    for shape, flat, squeezed in [((1, 1, 8), (8,), (8,)), ((1, 1, 1), (1,), ())]:
        meta = TensorMeta(shape)
        assert Reshape.to_shape(meta, [-1]).shape(meta).shape == flat
        assert Reshape.squeezing(meta).shape(meta).shape == squeezed
