"""Write TF SavedModel directories as TensorFlow users hold them, with reference outputs.
Run it in a throwaway venv (never ckptfix's):

    python -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu==2.21.0 keras==3.15.1 tf_keras==2.21.0
    /tmp/tfvenv/bin/python tools/make_savedmodel_fixtures.py tests/data/savedmodel

Each case is a directory (saved_model.pb, variables/, ...) as TensorFlow wrote it, plus
``<case>_io.npz``: ``x`` (NHWC input), ``y`` (the model's output on it) and ``var:<name>`` for
every model variable by its Keras path (the values ckptfix must read).

* ``tfkeras``: tf.keras (tf_keras) ``model.save(dir, save_format="tf")`` after one Adam step with
  metrics mae, accuracy and AUC: 14 optimizer and 10 metric variables beside the 10 weights;
  metric variables are named ``total``/``count``, with no ``<layer>/`` (issue 13's file).
* ``k3export``: Keras 3 ``model.export(dir)``: every variable tracked twice (``variables`` and
  ``_all_variables``) under the same name.
* ``module``: a ``tf.Module`` with ``tf.Variable(name="scale")`` (no layer part) beside
  ``dense/kernel`` and ``dense/bias`` (``tf.saved_model.save``).
"""

from __future__ import annotations

import os
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def build(K):
    inp = K.Input((8, 8, 3))
    x = K.layers.Conv2D(4, 3, padding="same", name="conv")(inp)
    x = K.layers.BatchNormalization(name="bn")(x)
    x = K.layers.ReLU()(x)
    x = K.layers.DepthwiseConv2D(3, name="dw")(x)
    x = K.layers.GlobalAveragePooling2D()(x)
    out = K.layers.Dense(5, name="head")(x)
    return K.Model(inp, out)


def train(m, K, metrics):
    m.compile(optimizer="adam", loss="mse", metrics=metrics)
    rng = np.random.RandomState(0)
    m.fit(rng.randn(8, 8, 8, 3).astype("float32"), rng.rand(8, 5).astype("float32"), epochs=1,
          batch_size=8, verbose=0)


def save_io(out, case, m, variables):
    x = np.random.RandomState(1).randn(2, 8, 8, 3).astype("float32")
    y = np.asarray(m(x, training=False) if callable(m) else m.f(x))
    np.savez(os.path.join(out, f"{case}_io.npz"), x=x, y=y,
             **{f"var:{name}": np.asarray(v) for name, v in variables})


def main(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    import tf_keras

    tf.random.set_seed(0)
    tf_keras.utils.set_random_seed(0)
    m = build(tf_keras)
    train(m, tf_keras, ["mae", "accuracy", tf_keras.metrics.AUC(name="auc", num_thresholds=20)])
    d = os.path.join(out, "tfkeras")
    shutil.rmtree(d, ignore_errors=True)
    m.save(d, save_format="tf")
    save_io(out, "tfkeras", m, [(v.name.split(":")[0], v) for v in m.weights])

    import keras

    keras.utils.set_random_seed(0)
    m = build(keras)
    train(m, keras, ["mae"])
    d = os.path.join(out, "k3export")
    shutil.rmtree(d, ignore_errors=True)
    m.export(d, verbose=False)
    save_io(out, "k3export", m, [(v.path, v) for v in m.weights])

    class Scaled(tf.Module):
        def __init__(self):
            super().__init__()
            rng = np.random.RandomState(2)
            self.scale = tf.Variable(rng.rand(5).astype("float32"), name="scale")
            with tf.name_scope("dense"):
                self.kernel = tf.Variable(rng.randn(3, 5).astype("float32"), name="kernel")
                self.bias = tf.Variable(rng.randn(5).astype("float32"), name="bias")

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        def f(self, x):
            return (x @ self.kernel + self.bias) * self.scale

    mod = Scaled()
    d = os.path.join(out, "module")
    shutil.rmtree(d, ignore_errors=True)
    tf.saved_model.save(mod, d)
    x = np.random.RandomState(1).randn(2, 3).astype("float32")
    np.savez(os.path.join(out, "module_io.npz"), x=x, y=mod.f(x).numpy(),
             **{f"var:{v.name.split(':')[0]}": v.numpy() for v in mod.variables})
    for case in ("tfkeras", "k3export", "module"):
        shutil.rmtree(os.path.join(out, case, "assets"), ignore_errors=True)  # empty


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/savedmodel")
