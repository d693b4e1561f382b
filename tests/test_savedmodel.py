"""TF SavedModel directories (issue 13): the root is accepted wherever a TF checkpoint is; names
are resolved per variable (one unnamed or duplicated variable does not cost the others their
names); optimizer slots, metrics and Keras export's second copies are listed as not weights and
not counted. Fixtures written by TensorFlow 2.21 / tf_keras 2.21 / Keras 3.15
(tools/make_savedmodel_fixtures.py); the reference values are the variables as TF held them."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import savedmodel_twins
import tf_bundle_writer as tw
from ckptfix import api
from ckptfix.formats.detect import classify, open_checkpoint
from conftest import DATA
from numerics import assert_outputs_close

SM = DATA / "savedmodel"
CASES = ("tfkeras", "k3export", "module")
V = "/.ATTRIBUTES/VARIABLE_VALUE"


def io(case):
    return np.load(SM / f"{case}_io.npz")


def tree_bytes(d):
    return {p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CASES)
def test_savedmodel_root_reads_every_variable_by_its_name(case):
    ref = {k[4:]: v for k, v in io(case).items() if k.startswith("var:")}
    assert classify(SM / case) == "tf-checkpoint"
    with open_checkpoint(SM / case) as r:
        assert sorted(r.metas()) == sorted(ref)
        for name, want in ref.items():
            np.testing.assert_array_equal(r.read_array(name), want)
        assert r.warnings() == []
    info = api.inspect(SM / case)
    assert info["params"] == sum(v.size for k, v in ref.items() if "moving_" not in k)  # statistics are not params


def test_tf_keras_metrics_and_optimizer_are_not_weights():
    info = api.inspect(SM / "tfkeras")
    why = info["not_weights"]
    assert sum(w == "metric" for w in why.values()) == 10      # mae, accuracy: total/count; AUC: 4 x 20
    assert sum(w == "optimizer" for w in why.values()) == 18   # iterations, lr, Adam m/v of 8 variables
    assert all("keras_api/metrics/" in k for k, w in why.items() if w == "metric")
    assert not any("total" in t["name"] or "count" in t["name"] for t in info["tensors"])


def test_keras_export_copies_are_one_variable():
    with open_checkpoint(SM / "k3export") as r:
        why = r.extras()["not_weights"]
        copies = {k: w for k, w in why.items() if w.startswith("copy of ")}
        assert len(copies) == len(r.metas()) == 10
        assert all(k.startswith("_all_variables/") for k in copies)
        assert {w[len("copy of "):] for w in copies.values()} == set(r.metas())


def test_variables_dir_and_index_name_the_same_bundle():
    with open_checkpoint(SM / "tfkeras") as a, open_checkpoint(SM / "tfkeras" / "variables") as b, \
            open_checkpoint(SM / "tfkeras" / "variables" / "variables.index") as c:
        assert list(a.metas()) == list(b.metas()) == list(c.metas())


@pytest.mark.parametrize("case", ["tfkeras", "k3export"])
def test_savedmodel_converts_to_torch_with_keras_outputs(cli, tmp_path, case):
    before = tree_bytes(SM / case)
    rules, out = tmp_path / "r.yaml", tmp_path / "m.safetensors"
    r = cli("suggest", SM / case, "--target", "tests/savedmodel_twins.py:KerasCNN", "-o", rules)
    assert r.exit_code == 0, r.stdout
    r = cli("apply", SM / case, "-r", rules, "-o", out)
    assert r.exit_code == 0, r.stdout
    m = savedmodel_twins.KerasCNN()
    m.load_state_dict(load_file(out), strict=True)
    m.eval()
    d = io(case)
    with torch.no_grad():
        got = m(torch.from_numpy(d["x"]).permute(0, 3, 1, 2).contiguous())
    assert_outputs_close(got, torch.from_numpy(d["y"]))
    assert tree_bytes(SM / case) == before


def test_savedmodel_without_variables_is_refused(cli, tmp_path):
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "saved_model.pb").write_bytes((SM / "module" / "saved_model.pb").read_bytes())
    r = cli("inspect", tmp_path / "sm")
    assert r.exit_code == 2 and "SavedModel with no variables/variables.index" in r.stdout + r.stderr


# --------------------------------------------------------------- names per variable, generated

def _bundle(tmp_path, variables):
    """variables: [(object path, full name or '', value)] -> a TF2 bundle with an object graph."""
    nodes = [{"children": [(i + 1, f"v{i}") for i in range(len(variables))]}]
    tensors = {}
    for path, full, value in variables:
        nodes.append({"attributes": [("VARIABLE_VALUE", full, path + V)]})
        tensors[path + V] = value
    tensors["_CHECKPOINTABLE_OBJECT_GRAPH"] = [tw.encode_object_graph(nodes)]
    return tw.write_bundle(tmp_path / "ckpt", tensors)


@pytest.mark.parametrize("seed", range(12))
def test_names_are_resolved_per_variable(tmp_path, seed):
    """Random object graphs: unique <layer>/<var> full names are kept; a full name shared by
    variables with different values, a missing one, or one without '/' costs only those
    variables their names (they keep object paths); same-valued copies are one variable."""
    rng = np.random.default_rng(seed)
    pool = [f"layer{i}/{v}" for i in range(4) for v in ("kernel", "bias")]
    variables, expect, copies = [], {}, 0
    for i in range(int(rng.integers(3, 12))):
        path = f"obj/{i}"
        value = rng.standard_normal(int(rng.integers(1, 4))).astype(np.float32)
        kind = rng.choice(["unique", "shared", "none", "noslash", "copy"])
        if kind == "copy" and variables:
            src = variables[int(rng.integers(len(variables)))]
            if src[1] and "/" in src[1]:
                variables.append((path, src[1], src[2].copy()))
                copies += 1
                continue
            kind = "none"
        full = {"unique": f"u{i}/w:0", "shared": str(rng.choice(pool)), "none": "",
                "noslash": f"var{i}:0", "copy": ""}[kind]
        variables.append((path, full, value))
    prefix = _bundle(tmp_path, variables)
    # the expected names: by full name where one set of values holds it, else the object path
    groups = {}
    for path, full, value in variables:
        if "/" in full:
            groups.setdefault(full.split(":")[0], []).append((path, value))
    kept = set()
    for path, full, value in variables:
        name = full.split(":")[0]
        g = groups.get(name)
        if g and all(np.array_equal(v, g[0][1]) and v.shape == g[0][1].shape for _, v in g):
            if g[0][0] == path:
                expect[name] = path
            kept.add(path)
        else:
            expect[path] = path
    with open_checkpoint(prefix) as r:
        metas = r.metas()
        assert dict(r.extras()["original_keys"]) == {n: p + V for n, p in expect.items()}
        for name, key in r.extras()["original_keys"].items():
            value = next(v for p, _, v in variables if p + V == key)
            np.testing.assert_array_equal(r.read_array(name), value)
        assert len(metas) == len(expect)


def test_batch_takes_savedmodel_and_dcp_directories_as_one_input_each(cli, tmp_path):
    """--recursive finds a SavedModel (and a DCP or HF-sharded directory) as one checkpoint,
    written as <dir>.safetensors, not as its variables/variables.index."""
    import shutil

    tree = tmp_path / "in"
    shutil.copytree(SM / "tfkeras", tree / "models" / "cnn")
    shutil.copytree(DATA / "dcp" / "single", tree / "runs" / "fsdp")
    (tree / "notes.txt").write_text("not a checkpoint")
    rules = tmp_path / "r.yaml"
    rules.write_text("rules:\n  - rename: {pattern: '^(.*)$', replace: 'x.\\1'}\n")
    r = cli("apply", tree, "--recursive", "-r", rules, "--out-dir", tmp_path / "out")
    assert r.exit_code == 0, r.stdout
    out = tmp_path / "out" / "models" / "cnn.safetensors"
    got = load_file(out)
    ref = {k[4:]: v for k, v in io("tfkeras").items() if k.startswith("var:")}
    assert sorted(got) == sorted(f"x.{k}" for k in ref)
    np.testing.assert_array_equal(got["x.conv/kernel"].numpy(), ref["conv/kernel"])
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.safetensors")) \
        == ["models/cnn.safetensors", "runs/fsdp.safetensors"]
    with open_checkpoint(DATA / "dcp" / "single") as r:
        assert sorted(load_file(tmp_path / "out" / "runs" / "fsdp.safetensors")) == sorted(f"x.{k}" for k in r.metas())
