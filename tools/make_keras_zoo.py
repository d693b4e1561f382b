"""Write the Keras zoo: small Keras models, each saved by real TensorFlow/Keras in every format
TensorFlow users hold, with reference outputs. Run it in a throwaway venv (never ckptfix's):

    python -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu==2.21.0 keras==3.15.1 h5py
    /tmp/tfvenv/bin/python tools/make_keras_zoo.py tests/data/zoo

Per model NAME (see tests/data/zoo/README.md):
  NAME.weights.h5       model.save_weights (Keras 3 layout: layers/<class_snake>[_N]/vars/<i>)
  NAME.keras            model.save (zip: config.json, metadata.json, model.weights.h5)
  NAME_legacy.h5        legacy whole-model HDF5 (model_weights/<layer>/<layer>/<var>, layer_names,
                        weight_names, model_config)
  NAME_tf2/ckpt.*       tf.train.Checkpoint(model=model).write
  NAME_tf1/model.ckpt.* tf.compat.v1.train.Saver, slim names (kernel -> weights, bias -> biases,
                        depthwise_kernel -> depthwise_weights, pointwise_kernel -> pointwise_weights)
  NAME.npz              numpy.savez of every variable as its Keras path (`layer/var`, TF layouts)
  NAME_io.npz           x: a seeded input batch of 2; y (or y0, y1, ... for several outputs): the
                        Keras model's output in inference mode
  NAME.json             each layer's class, variable paths and shapes; input shape; outputs

Everything is seeded: the same TensorFlow/Keras versions write the same numbers. Every variable
that Keras initialises to a constant (biases, BatchNorm gamma/beta/moving statistics, PReLU alpha,
norm scales) is replaced by seeded random values, so the equivalence tests test the real thing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402

SEED = 1234
SLIM = {"kernel": "weights", "bias": "biases", "depthwise_kernel": "depthwise_weights",
        "pointwise_kernel": "pointwise_weights"}


# ----------------------------------------------------------------------------- the models
# Each builder returns (model, input_shape, input_kind). Layer names mix Keras defaults and user
# names; none equals a module name of the PyTorch twins (tests/zoo_twins.py).

def mobilenet():
    i = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv_stem")(i)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU()(x)
    x = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw1")(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.SeparableConv2D(12, 3, padding="same")(x)
    x = layers.ReLU()(x)
    x = layers.GlobalAveragePooling2D()(x)
    o = layers.Dense(5, name="logits")(x)
    return keras.Model(i, o, name="mobilenet"), (8, 8, 3), "float"


def unet():
    i = keras.Input((8, 8, 3))
    e = layers.Conv2D(8, 3, padding="same", activation="relu", name="enc_conv")(i)
    x = layers.MaxPooling2D()(e)
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = layers.Conv2DTranspose(8, 2, strides=2, name="upsample")(x)
    x = layers.Concatenate()([x, e])
    x = layers.GroupNormalization(groups=4, name="gn")(x)
    o = layers.Conv2D(2, 1, name="seg_out")(x)
    return keras.Model(i, o, name="unet"), (8, 8, 3), "float"


def _vgg(permute: bool, name: str):
    i = keras.Input((12, 16, 3))
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="block1_conv")(i)
    x = layers.MaxPooling2D(name="block1_pool")(x)
    x = layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    if permute:
        x = layers.Permute((3, 1, 2))(x)
    x = layers.Flatten()(x)
    x = layers.Dense(16, activation="relu", name="fc1")(x)
    o = layers.Dense(5, name="predictions")(x)
    return keras.Model(i, o, name=name), (12, 16, 3), "float"


def vgg():
    return _vgg(False, "vgg")


def vgg_permute():
    return _vgg(True, "vgg_permute")


def resnet():
    i = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(i)
    x = layers.BatchNormalization(name="bn_conv1")(x)
    x = layers.ReLU()(x)
    # block 1: identity shortcut
    y = layers.Conv2D(8, 3, padding="same", use_bias=False, name="res2a_branch2a")(x)
    y = layers.BatchNormalization(name="bn2a_branch2a")(y)
    y = layers.ReLU()(y)
    y = layers.Conv2D(8, 3, padding="same", use_bias=False, name="res2a_branch2b")(y)
    y = layers.BatchNormalization(name="bn2a_branch2b")(y)
    x = layers.ReLU()(layers.Add()([x, y]))
    # block 2: stride 2, projection shortcut (symmetric padding, as PyTorch's padding=1)
    y = layers.ZeroPadding2D(1)(x)
    y = layers.Conv2D(16, 3, strides=2, use_bias=False)(y)
    y = layers.BatchNormalization()(y)
    y = layers.ReLU()(y)
    y = layers.Conv2D(16, 3, padding="same", use_bias=False)(y)
    y = layers.BatchNormalization()(y)
    s = layers.Conv2D(16, 1, strides=2, use_bias=False, name="res3a_branch1")(x)
    s = layers.BatchNormalization(name="bn3a_branch1")(s)
    x = layers.ReLU()(layers.Add()([s, y]))
    x = layers.GlobalAveragePooling2D()(x)
    o = layers.Dense(10, name="fc1000")(x)
    return keras.Model(i, o, name="resnet"), (8, 8, 3), "float"


def conv1d():
    i = keras.Input((16, 4))
    x = layers.Conv1D(8, 3, padding="same", activation="relu")(i)
    x = layers.Conv1DTranspose(6, 2, strides=2, name="up1d")(x)
    x = layers.Flatten()(x)
    o = layers.Dense(3)(x)
    return keras.Model(i, o, name="conv1d"), (16, 4), "float"


def conv3d():
    i = keras.Input((4, 6, 6, 2))
    x = layers.Conv3D(4, 3, padding="same", name="vol_conv")(i)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.Conv3DTranspose(4, 2, strides=2)(x)
    x = layers.ReLU()(x)
    x = layers.GlobalAveragePooling3D()(x)
    o = layers.Dense(3, name="vol_out")(x)
    return keras.Model(i, o, name="conv3d"), (4, 6, 6, 2), "float"


def prelu():
    """MTCNN-like (RNet shape, tiny): two heads, softmax probabilities and box offsets."""
    i = keras.Input((12, 12, 3))
    x = layers.Conv2D(8, 3, name="conv1")(i)
    x = layers.PReLU(shared_axes=[1, 2], name="prelu1")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(12, 3, name="conv2")(x)
    x = layers.PReLU(shared_axes=[1, 2], name="prelu2")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(16, name="conv3")(x)
    x = layers.PReLU(name="prelu3")(x)
    prob = layers.Dense(2, activation="softmax", name="conv4-1")(x)
    box = layers.Dense(4, name="conv4-2")(x)
    return keras.Model(i, [prob, box], name="prelu"), (12, 12, 3), "float"


def rnn():
    i = keras.Input((7,), dtype="int32")
    x = layers.Embedding(20, 8)(i)
    x = layers.LSTM(12, return_sequences=True, name="encoder_lstm")(x)
    x = layers.LayerNormalization()(x)
    x = layers.GRU(10)(x)  # reset_after=True (the default): bias [2, 3u]
    o = layers.Dense(4, name="classifier_dense")(x)
    return keras.Model(i, o, name="rnn"), (7,), "int"


class ZooSubclassed(keras.Model):
    """A Keras 3 subclassed model: attributes, no config the loaders can rebuild."""

    def __init__(self):
        super().__init__(name="zoo_subclassed")
        self.conv_a = layers.Conv2D(8, 3, padding="same")
        self.norm_a = layers.BatchNormalization()
        self.conv_b = layers.Conv2D(8, 3, padding="same")
        self.dense_out = layers.Dense(5)

    def call(self, x, training=False):
        x = tf.nn.relu(self.norm_a(self.conv_a(x), training=training))
        x = tf.nn.relu(self.conv_b(x))
        return self.dense_out(tf.reduce_mean(x, axis=[1, 2]))


def subclassed():
    m = ZooSubclassed()
    m(np.zeros((1, 8, 8, 3), np.float32))  # build
    return m, (8, 8, 3), "float"


MODELS = {f.__name__: f for f in (mobilenet, unet, vgg, vgg_permute, resnet, conv1d, conv3d, prelu, rnn,
                                  subclassed)}
SUBCLASSED = {"subclassed"}  # cannot be saved as .keras / legacy .h5 portably


# ----------------------------------------------------------------------------- randomising

def randomise(model, rng):
    """Replace every constant-initialised variable by seeded random values (kernels keep Keras'
    seeded initialisers, except embeddings, which are made O(1))."""
    for v in model.weights:
        last = v.path.split("/")[-1]
        shape = tuple(v.shape)
        if last == "moving_variance":  # small variances too: Keras' eps 1e-3 vs torch's 1e-5 shows
            val = rng.uniform(0.01, 1.0, shape)
        elif last == "gamma":
            val = rng.uniform(0.5, 1.5, shape)
        elif last in ("bias", "beta", "moving_mean"):
            val = rng.normal(0.0, 0.3, shape)
        elif last == "alpha":
            val = rng.uniform(0.05, 0.4, shape)
        elif last == "embeddings":
            val = rng.normal(0.0, 1.0, shape)
        else:
            continue
        v.assign(val.astype(np.float32))


# ----------------------------------------------------------------------------- the formats

def variables(model):
    """(Keras path, numpy value) of every variable, in model.weights order."""
    return [(v.path, v.numpy()) for v in model.weights]


def write_tf1(model, d: Path):
    d.mkdir()
    values = variables(model)  # read eagerly, before entering the TF1 graph
    with tf.Graph().as_default():
        tvars = []
        for path, val in values:
            *prefix, last = path.split("/")
            name = "/".join([*prefix, SLIM.get(last, last)])
            tvars.append(tf.compat.v1.Variable(val, name=name))
        saver = tf.compat.v1.train.Saver(tvars)
        with tf.compat.v1.Session() as s:
            s.run(tf.compat.v1.global_variables_initializer())
            saver.save(s, str(d / "model.ckpt"))
    # the `checkpoint` state file records the absolute path of the writer's directory: keep it relative
    (d / "checkpoint").write_text('model_checkpoint_path: "model.ckpt"\nall_model_checkpoint_paths: "model.ckpt"\n')


def write_tf2(model, d: Path):
    d.mkdir()
    tf.train.Checkpoint(model=model).write(str(d / "ckpt"))


def describe(model, input_shape, outputs, kind):
    return {
        "layers": [{"name": l.name, "class": type(l).__name__,
                    "weights": {v.path: list(v.shape) for v in l.weights}} for l in model.layers],
        "input_shape": list(input_shape),
        "input_dtype": "int32" if kind == "int" else "float32",
        "outputs": {k: list(v.shape) for k, v in outputs.items()},
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
    }


def renumber_shared_objects(config: bytes) -> bytes:
    """config.json names shared objects (initialisers) by the writer's id(): number them 1, 2, ..."""
    ids: dict[str, str] = {}
    return re.sub(rb'"shared_object_id": (\d+)',
                  lambda m: b'"shared_object_id": ' + ids.setdefault(m[1], str(len(ids) + 1)).encode(), config)


def strip_keras_dates(path: Path):
    """metadata.json in a .keras zip records the save date, config.json object ids; rewrite them
    (and the zip entry times) so that regenerating gives the same bytes."""
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename == "metadata.json":
                meta = json.loads(data)
                meta["date_saved"] = "2000-01-01@00:00:00"
                data = json.dumps(meta).encode()
            elif info.filename == "config.json":
                data = renumber_shared_objects(data)
            out = zipfile.ZipInfo(info.filename, date_time=(2000, 1, 1, 0, 0, 0))
            out.compress_type = zipfile.ZIP_STORED
            zout.writestr(out, data)
    tmp.replace(path)


def write_model(name: str, out: Path):
    keras.backend.clear_session()  # default layer names restart at `conv2d`, `dense`, ...
    keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(SEED)
    model, input_shape, kind = MODELS[name]()
    randomise(model, rng)

    x = (rng.integers(0, 20, (2, *input_shape)).astype(np.int32) if kind == "int"
         else rng.standard_normal((2, *input_shape)).astype(np.float32))
    y = model(x, training=False)
    ys = {"y": y} if not isinstance(y, (list, tuple)) else {f"y{i}": t for i, t in enumerate(y)}
    outputs = {k: np.asarray(v, dtype=np.float32) for k, v in ys.items()}

    model.save_weights(str(out / f"{name}.weights.h5"))
    if name not in SUBCLASSED:
        model.save(str(out / f"{name}.keras"))
        strip_keras_dates(out / f"{name}.keras")
        model.save(str(out / f"{name}_legacy.h5"))  # Keras 3's legacy whole-model HDF5 writer
    write_tf2(model, out / f"{name}_tf2")
    write_tf1(model, out / f"{name}_tf1")
    np.savez(out / f"{name}.npz", **dict(variables(model)))
    np.savez(out / f"{name}_io.npz", x=x, **outputs)
    (out / f"{name}.json").write_text(json.dumps(describe(model, input_shape, outputs, kind), indent=1) + "\n")
    n = sum(int(np.prod(v.shape)) for v in model.weights)
    print(f"{name}: {n} values, outputs {', '.join(f'{k}{list(v.shape)}' for k, v in outputs.items())}")


def main(argv):
    out = Path(argv[1] if len(argv) > 1 else "tests/data/zoo")
    names = argv[2:] or list(MODELS)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        for p in out.glob(f"{name}[._]*"):
            if p.name.startswith(f"{name}_permute") and name == "vgg":
                continue
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        write_model(name, out)


if __name__ == "__main__":
    main(sys.argv)
