"""Every Keras/TF format of both real models converts into its PyTorch twin, and the twin's
output equals the stored Keras output within 1e-5 — with the generic preset and no hand edits."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import import_guard
import nets
from conftest import KERAS

# Keras recorded its own float32 outputs (tests/data/keras/*_io.npz) with TensorFlow's kernels; the twin
# computes them with torch's, in another order: equal up to rounding. The outputs are O(1); the
# largest difference seen is ~6e-7, a wrong layout misses by > 1e-2.
KERAS_ATOL = 1e-5

FORMATS = ["{}.keras", "{}.weights.h5", "{}_legacy.h5", "{}_tf1", "{}_tf2", "{}.npz"]


def twin_output(model, weights, x):
    model.load_state_dict(weights, strict=True)
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


TWINS = {"tiny_cnn": (nets.TinyCNN, (0, 3, 1, 2)), "conv1d": (nets.Conv1DNet, (0, 2, 1))}


@pytest.mark.parametrize("model", list(TWINS))
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_matches_keras(cli, tmp_path, model, fmt):
    cls, to_channels_first = TWINS[model]
    out = tmp_path / "out.safetensors"
    r = cli("apply", KERAS / fmt.format(model), "-r", "keras-to-torch", "--target", f"tests/nets.py:{cls.__name__}",
            "-o", out)
    assert r.exit_code == 0, r.stderr
    io = np.load(KERAS / f"{model}_io.npz")
    y = twin_output(cls(), load_file(out), io["x"].transpose(*to_channels_first))
    np.testing.assert_allclose(y, io["y"], atol=KERAS_ATOL, rtol=0)


def test_batchnorm_eps_warning_and_folding(cli, tmp_path):
    src = KERAS / "tiny_cnn.keras"
    io = np.load(KERAS / "tiny_cnn_io.npz")
    x = io["x"].transpose(0, 3, 1, 2)
    out = tmp_path / "a.safetensors"
    # a twin built with PyTorch's default eps: the converted weights load, but ckptfix warns
    r = cli("apply", src, "-r", "keras-to-torch", "--target", "tests/nets.py:TinyCNN", "--target-kwargs",
            "{eps: 1.0e-5}", "-o", out)
    assert r.exit_code == 0, r.stderr
    assert "bn1" in r.stderr and "eps 0.001" in r.stderr and "bn_eps" in r.stderr
    y = twin_output(nets.TinyCNN(eps=1e-5), load_file(out), x)
    # the difference is real: beyond the tolerance the folded twin meets below (it is ~3e-4; 1e-6
    # was within float32 rounding of the recorded output)
    assert np.abs(y - io["y"]).max() > 10 * KERAS_ATOL
    # folding the eps difference into running_var makes it exact again, and silences the warning
    fold = tmp_path / "fold.yaml"
    fold.write_text("rules:\n  - bn_eps: {keys: '^bn1\\.running_var$', from: 0.001, to: 1.0e-5}\n")
    out2 = tmp_path / "b.safetensors"
    r = cli("apply", src, "-r", "keras-to-torch", "-r", fold, "--target", "tests/nets.py:TinyCNN",
            "--target-kwargs", "{eps: 1.0e-5}", "-o", out2)
    assert r.exit_code == 0, r.stderr
    assert "eps" not in r.stderr
    y2 = twin_output(nets.TinyCNN(eps=1e-5), load_file(out2), x)
    np.testing.assert_allclose(y2, io["y"], atol=KERAS_ATOL, rtol=0)


def _guarded(tmp_path, *args):
    log = tmp_path / "forbidden-imports.log"
    r = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300,
                       env=import_guard.guarded_env(tmp_path, log), cwd=Path(__file__).parent.parent)
    return r, import_guard.attempts(log)


def test_never_imports_tensorflow_keras_or_jax(tmp_path):
    """Every ckptfix module, and every command on every Keras/TF format, in one guarded process,
    plus a batch run (its workers are guarded too): not one attempt to import TensorFlow, Keras or
    JAX -- caught even where the import would fail and be swallowed (see tests/import_guard.py)."""
    runs = []  # (command line, expected exit code)
    for model, cls in [("tiny_cnn", "TinyCNN"), ("conv1d", "Conv1DNet")]:
        target = f"tests/nets.py:{cls}"
        for i, fmt in enumerate(FORMATS):
            src = str(KERAS / fmt.format(model))
            runs += [(["inspect", src, "--json"], 0),  # every reader: metadata, then every tensor
                     (["apply", src, "-r", "keras-to-torch", "-o", str(tmp_path / f"{model}{i}.safetensors")], 0)]
        src = str(KERAS / FORMATS[0].format(model))  # every other command, once per model
        runs += [(["inspect", src], 0), (["diff", src, "--target", target], 1),  # Keras layout: does not fit as is
                 (["check", src, "-r", "keras-to-torch", "--target", target], 0),
                 (["suggest", src, "--target", target, "-o", str(tmp_path / f"{model}.yaml")], 0),
                 (["apply", src, "-r", "keras-to-torch", "-o", str(tmp_path / f"{model}.pt")], 0)]
    batch = [str(KERAS / f) for f in ("tiny_cnn.keras", "conv1d_legacy.h5")]  # workers: HDF5 and zip readers
    runs.append((["apply", *batch, "-r", "keras-to-torch", "--out-dir", str(tmp_path / "batch")], 0))
    r, tried = _guarded(tmp_path, "tests/import_guard.py", json.dumps([argv for argv, _ in runs]))
    assert r.returncode == 0, r.stderr
    assert not tried, f"ckptfix tried to import: {tried}"
    codes = json.loads(r.stdout.splitlines()[-1])
    assert [(argv, c) for (argv, _), c in zip(runs, codes)] == runs
    assert len(list((tmp_path / "batch").glob("*.safetensors"))) == len(batch)


@pytest.mark.parametrize("code", [
    "import tensorflow",
    "import keras.layers",
    "from tf_keras import layers",
    "import jax.numpy",
    # swallowed, as optional-dependency code does: still recorded
    "try:\n    import tensorflow as tf\nexcept ImportError:\n    tf = None\nassert tf is None",
    # in a child process (like a batch worker): guarded as well
    "import subprocess, sys\nsys.exit(subprocess.run([sys.executable, '-c', 'import keras']).returncode)",
])
def test_the_import_guard_fires(tmp_path, code):
    """The guard works whether or not the package is installed: the import raises ForbiddenImport
    (an ImportError) and is recorded, even when the caller swallows the error."""
    r, tried = _guarded(tmp_path, "-c", code)
    name = next(n for n in import_guard.FORBIDDEN if n in code.split("import")[1].split()[0].split(".")[0] or
                f"import {n}" in code or f"from {n}" in code)
    assert [t["module"].partition(".")[0] for t in tried] == [name], (tried, r.stderr)
    if "except ImportError" in code:
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode != 0 and "ForbiddenImport" in r.stderr and "is forbidden" in r.stderr


def test_inspect_reads_keras_layers(cli):
    r = cli("inspect", KERAS / "tiny_cnn.keras")
    assert r.exit_code == 0
    assert "conv1/kernel" in r.stdout and "Conv2D(in=3, out=8, kernel=3x3)" in r.stdout
    assert "BatchNormalization" in r.stdout
