"""Keras HDF5 / .keras / sharded readers: real fixtures and files built here with h5py."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from ckptfix.errors import InputError
from ckptfix.formats.detect import open_checkpoint
from ckptfix.formats.keras_h5 import (KerasArchiveReader, KerasH5Reader, KerasShardedReader,
                                      class_to_snake, snake_to_class, variable_names)

DATA = Path(__file__).parent / "data" / "keras"

from conftest import KERAS_EXPECTED as EXPECTED  # noqa: E402
CLASSES = {
    "tiny_cnn": {"conv1": "Conv2D", "bn1": "BatchNormalization", "conv2": "Conv2D",
                 "fc": "Dense"},
    "conv1d": {"conv1d": "Conv1D", "conv1d_1": "Conv1D", "dense": "Dense"},
}
MODELS = ["tiny_cnn", "conv1d"]


def _check_against_npz(reader, model):
    ref = np.load(DATA / f"{model}.npz")
    metas = reader.metas()
    assert list(metas) == EXPECTED[model]
    info = json.loads((DATA / f"{model}.json").read_text())
    shapes = {k: tuple(v) for layer in info["layers"] for k, v in layer["weights"].items()}
    for name, meta in metas.items():
        assert meta.shape == shapes[name]
        assert meta.dtype == "float32"
        arr = reader.read_array(name)
        np.testing.assert_array_equal(arr, ref[name])
    for layer, cls in CLASSES[model].items():
        assert reader.layer_classes()[layer] == cls


@pytest.mark.parametrize("model", MODELS)
def test_weights_h5_fixture(model):
    with KerasH5Reader(DATA / f"{model}.weights.h5") as r:
        _check_against_npz(r, model)
        assert r.extras()["layout"] == "keras3"
        assert r.extras()["keras_config"] is None
        assert r.warnings() == []
        assert r.format == "keras-h5"


@pytest.mark.parametrize("model", MODELS)
def test_legacy_h5_fixture(model):
    with KerasH5Reader(DATA / f"{model}_legacy.h5") as r:
        _check_against_npz(r, model)
        ex = r.extras()
        assert ex["layout"] == "legacy-model"
        assert ex["keras_config"]["class_name"] == "Functional"
        assert ex["layer_order"][0] == "input_layer"
        assert r.layer_classes()["input_layer"] == "InputLayer"


@pytest.mark.parametrize("model", MODELS)
def test_keras_archive_fixture(model):
    with KerasArchiveReader(DATA / f"{model}.keras") as r:
        _check_against_npz(r, model)
        ex = r.extras()
        assert ex["metadata"]["keras_version"] == "3.15.1"
        assert [x for x in ex["layer_order"] if x in CLASSES[model]] == list(CLASSES[model])
        assert r.format == "keras-archive"


@pytest.mark.parametrize("name", ["tiny_cnn.weights.h5", "tiny_cnn_legacy.h5", "tiny_cnn.keras",
                                  "conv1d.weights.h5", "conv1d_legacy.h5", "conv1d.keras"])
def test_open_checkpoint_dispatch_and_torch_read(name):
    with open_checkpoint(DATA / name) as r:
        t = r.read(next(iter(r.metas())))
        assert t.is_contiguous() and t.dtype.is_floating_point


def test_keras_archive_deflated_member(tmp_path):
    """A .keras re-zipped with compression still reads (through memory, not the window)."""
    src = zipfile.ZipFile(DATA / "tiny_cnn.keras")
    out = tmp_path / "deflated.keras"
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for n in src.namelist():
            z.writestr(n, src.read(n))
    with KerasArchiveReader(out) as r:
        _check_against_npz(r, "tiny_cnn")


def test_snake_class_conversions():
    for cls in ["Conv2D", "Conv1D", "Conv3D", "Dense", "BatchNormalization", "DepthwiseConv2D",
                "SeparableConv2D", "Conv2DTranspose", "LayerNormalization", "Embedding"]:
        assert snake_to_class(class_to_snake(cls)) == cls
        assert snake_to_class(class_to_snake(cls) + "_3") == cls
    assert class_to_snake("Conv2DTranspose") == "conv2d_transpose"
    assert snake_to_class("p_re_lu") == "PReLU"
    assert variable_names("SeparableConv2D", 3) == ["depthwise_kernel", "pointwise_kernel",
                                                    "bias"]
    assert variable_names("Dense", 1) == ["kernel"]
    assert variable_names("BatchNormalization", 3, {"scale": False}) == [
        "beta", "moving_mean", "moving_variance"]
    assert variable_names("Mystery", 2) == ["0", "1"]


# ----------------------------------------------------------------------------- built files

def _conv_cfg(name, cls="Conv2D", strides=(1, 1), padding="same", **extra):
    cfg = {"name": name, "filters": 4, "kernel_size": [3, 3], "strides": list(strides),
           "padding": padding}
    cfg.update(extra)
    return {"class_name": cls, "config": cfg, "name": name}


def _model_config(layers, name="m", cls="Functional"):
    return {"class_name": cls, "config": {"name": name, "layers": layers}}


def _write_keras3_layer(f, group, user_name, arrays):
    vars_ = f.create_group(f"{group}/vars")
    vars_.attrs["name"] = user_name
    for i, a in enumerate(arrays):
        vars_[str(i)] = a


def test_keras3_layer_kinds_and_nesting(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "kinds.weights.h5"
    dw = rng.standard_normal((3, 3, 4, 2)).astype(np.float32)
    with h5py.File(p, "w") as f:
        f.create_group("vars").attrs["name"] = "outer"
        _write_keras3_layer(f, "layers/depthwise_conv2d", "dw", [dw, np.zeros(8, np.float32)])
        _write_keras3_layer(f, "layers/separable_conv2d", "sep",
                            [dw, np.ones((1, 1, 8, 5), np.float32), np.zeros(5, np.float32)])
        _write_keras3_layer(f, "layers/conv2d_transpose", "up",
                            [np.ones((2, 2, 3, 5), np.float32)])  # use_bias=False
        _write_keras3_layer(f, "layers/conv3d", "c3", [np.ones((1, 1, 1, 2, 2), np.float32),
                                                       np.zeros(2, np.float32)])
        _write_keras3_layer(f, "layers/functional", "backbone", [])
        _write_keras3_layer(f, "layers/functional/layers/conv2d", "conv1",
                            [np.ones((3, 3, 3, 4), np.float32), np.zeros(4, np.float32)])
        _write_keras3_layer(f, "layers/functional/layers/batch_normalization", "bn1",
                            [np.full(4, i, np.float32) for i in range(4)])
    with KerasH5Reader(p) as r:
        m = r.metas()
        assert m["dw/kernel"].shape == (3, 3, 4, 2)
        assert set(m) == {"dw/kernel", "dw/bias", "sep/depthwise_kernel", "sep/pointwise_kernel",
                          "sep/bias", "up/kernel", "c3/kernel", "c3/bias",
                          "backbone/conv1/kernel", "backbone/conv1/bias", "backbone/bn1/gamma",
                          "backbone/bn1/beta", "backbone/bn1/moving_mean",
                          "backbone/bn1/moving_variance"}
        # datasets were written in this order, and the file order gives the layer order
        assert list(m)[:2] == ["dw/kernel", "dw/bias"]
        np.testing.assert_array_equal(r.read_array("backbone/bn1/moving_variance"),
                                      np.full(4, 3, np.float32))
        np.testing.assert_array_equal(r.read_array("dw/kernel"), dw)
        classes = r.layer_classes()
        assert classes["dw"] == "DepthwiseConv2D"
        assert classes["sep"] == "SeparableConv2D"
        assert classes["up"] == "Conv2DTranspose"
        assert classes["c3"] == "Conv3D"
        assert classes["backbone"] == "Functional"
        assert classes["backbone/conv1"] == "Conv2D"
        assert classes["backbone/bn1"] == "BatchNormalization"


def test_keras3_without_name_attributes_uses_auto_names(tmp_path):
    p = tmp_path / "old.weights.h5"
    with h5py.File(p, "w") as f:
        f["layers/dense/vars/0"] = np.ones((2, 3), np.float32)
        f["layers/dense/vars/1"] = np.ones(3, np.float32)
        f["layers/dense_1/vars/0"] = np.ones((3, 1), np.float32)
    with KerasH5Reader(p) as r:
        assert list(r.metas()) == ["dense/kernel", "dense/bias", "dense_1/kernel"]
        assert r.layer_classes() == {"dense": "Dense", "dense_1": "Dense"}


def test_legacy_tf_keras2_names_split_attributes_and_warnings(tmp_path):
    """tf.keras 2 layout: `dense/dense/kernel:0`, layer_names split into layer_names0/1."""
    cfg = _model_config([
        {"class_name": "InputLayer", "config": {"name": "in"}, "name": "in"},
        _conv_cfg("stem", strides=(2, 2)),
        _conv_cfg("flat", strides=(1, 1)),
        _conv_cfg("down1d", cls="Conv1D", strides=[2], padding="same"),
        _conv_cfg("valid", strides=(2, 2), padding="valid"),
        {"class_name": "Lambda", "config": {"name": "lam", "function": {
            "class_name": "__lambda__",
            "config": {"code": "aW1wb3J0IG9zOyBvcy5zeXN0ZW0oJ3RvdWNoIC90bXAvcHduZWQnKQ=="}}},
         "name": "lam"},
        {"class_name": "Dense", "config": {"name": "dense"}, "name": "dense"},
    ])
    p = tmp_path / "tfk2.h5"
    with h5py.File(p, "w") as f:
        f.attrs["model_config"] = json.dumps(cfg).encode()
        f.attrs["keras_version"] = b"2.15.0"
        mw = f.create_group("model_weights")
        names = [b"in", b"stem", b"flat", b"down1d", b"valid", b"lam", b"dense"]
        mw.attrs["layer_names0"] = names[:3]
        mw.attrs["layer_names1"] = names[3:]
        for n in names:
            g = mw.create_group(n.decode())
            if n == b"dense":
                g.attrs["weight_names"] = [b"dense/kernel:0", b"dense/bias:0"]
                g["dense/kernel:0"] = np.arange(6, dtype=np.float32).reshape(2, 3)
                g["dense/bias:0"] = np.zeros(3, np.float32)
            elif n in (b"in", b"lam"):
                g.attrs["weight_names"] = np.array([], dtype=np.float64)
            else:
                g.attrs["weight_names"] = [f"{n.decode()}/kernel:0".encode()]
                g[f"{n.decode()}/kernel:0"] = np.ones((3, 3, 1, 4), np.float32)
        f.create_group("optimizer_weights")["junk"] = np.ones(3)
    with KerasH5Reader(p) as r:
        assert list(r.metas()) == ["stem/kernel", "flat/kernel", "down1d/kernel",
                                   "valid/kernel", "dense/kernel", "dense/bias"]
        np.testing.assert_array_equal(r.read_array("dense/kernel"),
                                      np.arange(6, dtype=np.float32).reshape(2, 3))
        assert r.layer_classes()["lam"] == "Lambda"
        w = r.warnings()
        assert len(w) == 2
        assert w[0] == ("TF pads 'same' asymmetrically with stride > 1; PyTorch's padding "
                        "cannot reproduce it exactly (layer stem)")
        assert "(layer down1d)" in w[1]
    assert not Path("/tmp/pwned").exists()


def test_legacy_weights_only_h5(tmp_path):
    p = tmp_path / "wonly.h5"
    with h5py.File(p, "w") as f:
        f.attrs["layer_names"] = [b"conv1", b"bn1"]
        f.attrs["backend"] = b"tensorflow"
        g = f.create_group("conv1")
        g.attrs["weight_names"] = [b"conv1/kernel:0", b"conv1/bias:0"]
        g["conv1/kernel:0"] = np.ones((3, 3, 3, 8), np.float32)
        g["conv1/bias:0"] = np.ones(8, np.float32)
        g = f.create_group("bn1")
        names = ["gamma", "beta", "moving_mean", "moving_variance"]
        g.attrs["weight_names"] = [f"bn1/{n}:0".encode() for n in names]
        for i, n in enumerate(names):
            g[f"bn1/{n}:0"] = np.full(8, i, np.float32)
    with KerasH5Reader(p) as r:
        assert r.extras()["layout"] == "legacy-weights"
        assert list(r.metas()) == ["conv1/kernel", "conv1/bias", "bn1/gamma", "bn1/beta",
                                   "bn1/moving_mean", "bn1/moving_variance"]
        np.testing.assert_array_equal(r.read_array("bn1/moving_variance"), np.full(8, 3.0))
        assert r.layer_classes() == {}


def test_legacy_nested_model_names(tmp_path):
    cfg = _model_config([
        {"class_name": "Functional", "name": "backbone", "config": {"name": "backbone", "layers": [
            _conv_cfg("conv1", strides=(2, 2))]}},
        {"class_name": "Dense", "name": "head", "config": {"name": "head"}},
    ])
    p = tmp_path / "nested.h5"
    with h5py.File(p, "w") as f:
        f.attrs["model_config"] = json.dumps(cfg)
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = [b"backbone", b"head"]
        g = mw.create_group("backbone")
        g.attrs["weight_names"] = [b"conv1/kernel:0"]
        g["conv1/kernel:0"] = np.ones((3, 3, 1, 4), np.float32)
        g = mw.create_group("head")
        g.attrs["weight_names"] = [b"head/kernel:0"]
        g["head/kernel:0"] = np.ones((4, 2), np.float32)
    with KerasH5Reader(p) as r:
        assert list(r.metas()) == ["backbone/conv1/kernel", "head/kernel"]
        assert r.layer_classes()["backbone/conv1"] == "Conv2D"
        assert r.layer_classes()["backbone"] == "Functional"
        assert "(layer backbone/conv1)" in r.warnings()[0]


def test_bfloat16_dataset(tmp_path):
    p = tmp_path / "bf.weights.h5"
    raw = np.array([0x3F80, 0xC000], dtype=np.uint16)
    with h5py.File(p, "w") as f:
        g = f.create_group("layers/dense/vars")
        g.attrs["name"] = "d"
        ds = g.create_dataset("0", data=raw.view("V2"))
        ds.attrs["dtype"] = "bfloat16"
    with KerasH5Reader(p) as r:
        assert r.metas()["d/kernel"].dtype == "bfloat16"
        import torch
        t = r.read("d/kernel")
        assert t.dtype == torch.bfloat16 and t.float().tolist() == [1.0, -2.0]


def test_generic_hdf5(tmp_path):
    p = tmp_path / "any.h5"
    with h5py.File(p, "w") as f:
        f["a/b"] = np.ones((2, 2), np.float64)
        f["c:0"] = np.arange(3, dtype=">i4")
        f["s"] = b"not a tensor"
    with KerasH5Reader(p) as r:
        assert list(r.metas()) == ["a/b", "c"]
        assert r.read_array("c").tolist() == [0, 1, 2]
        assert r.read_array("c").dtype == np.dtype("<i4")
        assert any("skipped s" in w for w in r.warnings())


def test_keras_archive_config_warns_and_names(tmp_path):
    cfg = _model_config([_conv_cfg("c", strides=(2, 2)),
                         {"class_name": "Dense", "config": {"name": "d"}, "name": "d"}])
    inner = tmp_path / "inner.h5"
    with h5py.File(inner, "w") as f:  # older Keras 3: no name attributes
        f["layers/conv2d/vars/0"] = np.ones((3, 3, 1, 4), np.float32)
        f["layers/conv2d/vars/1"] = np.ones(4, np.float32)
        f["layers/dense/vars/0"] = np.ones((4, 2), np.float32)
    p = tmp_path / "m.keras"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3.0.0"}))
        z.writestr("config.json", json.dumps(cfg))
        z.write(inner, "model.weights.h5")
    with KerasArchiveReader(p) as r:
        assert list(r.metas()) == ["c/kernel", "c/bias", "d/kernel"]
        assert r.layer_classes() == {"c": "Conv2D", "d": "Dense"}
        assert r.extras()["layer_order"] == ["c", "d"]
        assert "(layer c)" in r.warnings()[0]


# ----------------------------------------------------------------------------- sharded

def _write_sharded(dirpath: Path, base="model"):
    """A Keras 3 sharded save, as ShardedH5IOStore writes it: the weight_map maps each h5
    group path to the shard where it starts; a layer whose variables overflow continues in
    the next shard, which is then only found by its file name."""
    rng = np.random.default_rng(1)
    arrays = {
        "conv1/kernel": rng.standard_normal((3, 3, 3, 8)).astype(np.float32),
        "conv1/bias": rng.standard_normal(8).astype(np.float32),
        "bn1/gamma": np.ones(8, np.float32), "bn1/beta": np.zeros(8, np.float32),
        "bn1/moving_mean": np.full(8, 0.5, np.float32),
        "bn1/moving_variance": np.full(8, 2.0, np.float32),
        "fc/kernel": rng.standard_normal((8, 10)).astype(np.float32),
        "fc/bias": np.zeros(10, np.float32),
    }
    layout = [  # (group, user name, class vars, shard of each var)
        ("layers/conv2d", "conv1", ["kernel", "bias"], [0, 0]),
        ("layers/batch_normalization", "bn1",
         ["gamma", "beta", "moving_mean", "moving_variance"], [0, 1, 1, 1]),
        ("layers/dense", "fc", ["kernel", "bias"], [2, 2]),
    ]
    files = [h5py.File(dirpath / f"{base}_{i:05d}.weights.h5", "w") for i in range(3)]
    weight_map = {}
    files[0].create_group("vars").attrs["name"] = "m"
    for group, user, names, shards in layout:
        for i, (vname, shard) in enumerate(zip(names, shards)):
            f = files[shard]
            if f"{group}/vars" not in f:
                g = f.create_group(f"{group}/vars")
                if i == 0:
                    g.attrs["name"] = user  # the continuation group has no metadata
            f[f"{group}/vars"][str(i)] = arrays[f"{user}/{vname}"]
            weight_map.setdefault(f"/{group}/vars", f.filename.rsplit("/", 1)[-1])
    for f in files:
        f.close()
    (dirpath / f"{base}.weights.json").write_text(json.dumps(
        {"metadata": {"total_size": 1234}, "weight_map": weight_map}, indent=4))
    return arrays, weight_map


def test_sharded_weights(tmp_path):
    arrays, weight_map = _write_sharded(tmp_path)
    assert "model_00001.weights.h5" not in weight_map.values()  # continuation shard
    for path in (tmp_path / "model.weights.json", tmp_path):
        with KerasShardedReader(path) as r:
            assert list(r.metas()) == list(arrays)
            for k, v in arrays.items():
                np.testing.assert_array_equal(r.read_array(k), v)
            assert r.layer_classes() == {"conv1": "Conv2D", "bn1": "BatchNormalization",
                                         "fc": "Dense"}
            assert r.extras()["shards"] == [f"model_{i:05d}.weights.h5" for i in range(3)]
    with open_checkpoint(tmp_path / "model.weights.json") as r:
        assert r.format == "keras-sharded"


def test_sharded_missing_shard(tmp_path):
    _write_sharded(tmp_path)
    (tmp_path / "model_00002.weights.h5").unlink()
    with pytest.raises(InputError, match="missing"):
        KerasShardedReader(tmp_path / "model.weights.json")


def test_sharded_bad_json(tmp_path):
    (tmp_path / "x.weights.json").write_text("{not json")
    with pytest.raises(InputError, match="invalid JSON"):
        KerasShardedReader(tmp_path / "x.weights.json")
    (tmp_path / "x.weights.json").write_text('{"weight_map": {"/a/vars": "../../etc/passwd"}}')
    with pytest.raises(InputError, match="invalid shard"):
        KerasShardedReader(tmp_path / "x.weights.json")


# ----------------------------------------------------------------------------- broken files

@pytest.mark.parametrize("cut", [0, 8, 100, 2000, -100])
def test_truncated_h5(tmp_path, cut):
    data = (DATA / "tiny_cnn.weights.h5").read_bytes()
    p = tmp_path / "t.weights.h5"
    p.write_bytes(data[:cut] if cut >= 0 else data[:cut])
    with pytest.raises(InputError) as e:
        with KerasH5Reader(p) as r:
            for n in r.metas():
                r.read_array(n)
    assert str(p) in str(e.value)


def test_random_bytes_h5(tmp_path):
    p = tmp_path / "r.h5"
    p.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(InputError, match="HDF5"):
        KerasH5Reader(p)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        KerasH5Reader(tmp_path / "nope.h5")
    with pytest.raises(InputError, match="no such file"):
        KerasArchiveReader(tmp_path / "nope.keras")


def test_truncated_keras_archive(tmp_path):
    data = (DATA / "conv1d.keras").read_bytes()
    p = tmp_path / "t.keras"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError):
        KerasArchiveReader(p)


def test_keras_archive_without_config(tmp_path):
    p = tmp_path / "x.keras"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("model.weights.h5", b"")
    with pytest.raises(InputError, match="config.json"):
        KerasArchiveReader(p)


def test_keras_archive_corrupt_inner_h5(tmp_path):
    p = tmp_path / "x.keras"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("config.json", "{}")
        z.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\ngarbage")
    with pytest.raises(InputError, match="model.weights.h5"):
        KerasArchiveReader(p)


def test_legacy_listed_layer_missing(tmp_path):
    p = tmp_path / "l.h5"
    with h5py.File(p, "w") as f:
        f.attrs["layer_names"] = [b"ghost"]
    with pytest.raises(InputError, match="ghost"):
        KerasH5Reader(p)


def test_bad_model_config_json(tmp_path):
    p = tmp_path / "b.h5"
    with h5py.File(p, "w") as f:
        f.attrs["model_config"] = "{oops"
        f.create_group("model_weights").attrs["layer_names"] = [b"x"]
        f["model_weights"].create_group("x").attrs["weight_names"] = np.array([], np.float64)
    with pytest.raises(InputError, match="model_config"):
        KerasH5Reader(p)


def test_readonly_copy_of_fixture_dir(tmp_path):
    # fixtures are read-only on disk; readers must not need write access
    shutil.copy(DATA / "conv1d.weights.h5", tmp_path / "ro.weights.h5")
    (tmp_path / "ro.weights.h5").chmod(0o444)
    with KerasH5Reader(tmp_path / "ro.weights.h5") as r:
        assert len(r.metas()) == 6
