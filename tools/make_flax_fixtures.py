"""Write Flax (flax.linen) checkpoints as Flax users hold them, with reference values and outputs.
Run it in a throwaway venv (never ckptfix's):

    python -m venv /tmp/jaxvenv && /tmp/jaxvenv/bin/pip install jax==0.10.2 flax==0.12.8 orbax-checkpoint optax
    /tmp/jaxvenv/bin/python tools/make_flax_fixtures.py tests/data/flax

Each case ``NAME`` is ``NAME.msgpack``, written by ``flax.serialization.to_bytes`` (``misc``: by
``flax.serialization.msgpack_serialize``, which keeps lists as msgpack arrays), and
``NAME_io.npz``: ``x`` (the input, channels last), ``y`` (the Flax model's output on it, inference
mode) and ``var:<name>`` for every array Flax itself restores from the file
(``flax.serialization.msgpack_restore``), named by its path joined with ``/`` (bfloat16 arrays as
their uint16 bit patterns, listed in ``bf16``). Everything is seeded: the same bytes on every run.

* ``cnn``: ``{"params", "batch_stats"}`` of Conv_0 (8, 3x3 SAME) -> BatchNorm_0 -> relu -> Conv_1
  (16, 3x3, stride 2, padding 1) -> relu -> flatten (NHWC) -> Dense_0 (10). Input 8x8x3.
* ``depthwise``: custom module names: ``dw`` Conv(8, 3x3, feature_group_count=4: depthwise, 2 per
  channel) -> relu -> ``pw`` Conv(8, 1x1, feature_group_count=2) -> ``gn`` GroupNorm(2) -> relu ->
  mean over H, W -> ``head`` Dense(3). Input 6x6x4. ``{"params"}`` only.
* ``mlp``: Dense_0 (32) -> relu -> Dense_1 (16, no bias) -> relu -> Dense_2 (5). Input 12 features.
  ``mlp_chunked``: the same state written with flax's ``MAX_CHUNK_SIZE`` set to 256 bytes, so every
  kernel is a ``__msgpack_chunked_array__`` (Flax does this for arrays over 1 GiB).
* ``embed``: Hugging Face style (the params dict itself, no ``params`` collection): Embed_0 (50 x 16)
  -> LayerNorm_0 -> ``mlp`` (Dense_0 32, gelu, Dense_1 16) + residual -> mean over tokens ->
  Dense_0 (3). Input: int32 tokens (2, 7).
* ``convt``: ConvTranspose_0 (6, 3x3, stride 2, VALID) -> relu -> ConvTranspose_1 (4, 4x4, stride
  2, SAME, transpose_kernel=True) -> relu -> ConvTranspose_2 (4, 2x2, stride 2, VALID). Input 3x3x3.
* ``trainstate``: a ``flax.training.train_state.TrainState`` of the mlp after two Adam steps
  (``step``, ``params``, ``opt_state``).
* ``misc``: dtypes and leaves: bfloat16, float16, float64, int32, uint8, bool, complex64 and
  complex128 arrays, a numpy scalar (ext type 3), a 0-d and an empty array, Python int, float,
  str, bool, None, complex and bytes leaves, and a list.

``orbax_layout.json``: the files a real Orbax ``StandardCheckpointer`` and ``CheckpointManager``
write (their content-hash file names under ``d/`` numbered instead), for the detection test.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
import flax  # noqa: E402
import flax.linen as nn  # noqa: E402
import flax.serialization as fser  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax.training import train_state  # noqa: E402


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(8, (3, 3), padding="SAME")(x)
        x = nn.BatchNorm(use_running_average=True)(x)
        x = nn.relu(x)
        x = nn.Conv(16, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))(x)
        x = nn.relu(x)
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(10)(x)


class Depthwise(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(8, (3, 3), feature_group_count=4, padding="SAME", name="dw")(x)
        x = nn.relu(x)
        x = nn.Conv(8, (1, 1), feature_group_count=2, name="pw")(x)
        x = nn.GroupNorm(num_groups=2, name="gn")(x)
        x = nn.relu(x)
        x = x.mean(axis=(1, 2))
        return nn.Dense(3, name="head")(x)


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(32)(x))
        x = nn.relu(nn.Dense(16, use_bias=False)(x))
        return nn.Dense(5)(x)


class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(16)(nn.gelu(nn.Dense(32)(x)))


class Embed(nn.Module):
    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(50, 16)(tokens)
        x = nn.LayerNorm()(x)
        x = x + Block(name="mlp")(x)
        return nn.Dense(3)(x.mean(axis=1))


class ConvT(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.ConvTranspose(6, (3, 3), strides=(2, 2), padding="VALID")(x))
        x = nn.relu(nn.ConvTranspose(4, (4, 4), strides=(2, 2), padding="SAME", transpose_kernel=True)(x))
        return nn.ConvTranspose(4, (2, 2), strides=(2, 2), padding="VALID")(x)


def perturb(tree, key):
    """Every array drawn afresh (scales and biases included, variances positive), so that a
    conversion that swaps, drops or mislabels any of them changes the outputs."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    keys = jax.random.split(key, len(leaves))
    out = []
    for (path, leaf), k in zip(leaves, keys):
        name = str(path[-1].key)
        if name == "var":
            out.append(jax.random.uniform(k, leaf.shape, leaf.dtype, 0.5, 1.5))
        elif name == "scale":
            out.append(jax.random.uniform(k, leaf.shape, leaf.dtype, 0.5, 1.5))
        else:
            out.append(0.5 * jax.random.normal(k, leaf.shape, leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


def flat(tree, prefix=""):
    """``{path joined with '/': value}`` of a restored state (dicts and lists), in order."""
    out = {}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    for k, v in items:
        name = f"{prefix}{k}"
        if isinstance(v, (dict, list)):
            out.update(flat(v, name + "/"))
        else:
            out[name] = v
    return out


def save(out, case, data: bytes, x, y):
    with open(os.path.join(out, f"{case}.msgpack"), "wb") as f:
        f.write(data)
    restored = fser.msgpack_restore(data)  # what Flax itself reads back
    refs, bf16 = {}, []
    for name, v in flat(restored).items():
        if isinstance(v, (np.ndarray, np.generic)):
            a = np.asarray(v)
            if a.dtype.name == "bfloat16":
                bf16.append(name)
                a = a.view(np.uint16)
            refs[f"var:{name}"] = a
    np.savez(os.path.join(out, f"{case}_io.npz"), x=np.asarray(x), y=np.asarray(y),
             bf16=np.array(bf16, dtype=str), **refs)
    print(f"{case}: {len(data)} bytes, {len(refs)} arrays")


def run(model, variables, x, **kw):
    return model.apply(variables, x, **kw)


def main(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    key = jax.random.PRNGKey(0)
    k = jax.random.split(key, 16)

    # cnn
    x = jax.random.normal(k[0], (2, 8, 8, 3))
    m = CNN()
    v = perturb(m.init(k[1], x), k[2])
    save(out, "cnn", fser.to_bytes(v), x, run(m, v, x))

    # depthwise
    x = jax.random.normal(k[3], (2, 6, 6, 4))
    m = Depthwise()
    v = perturb(m.init(k[4], x), k[5])
    save(out, "depthwise", fser.to_bytes(v), x, run(m, v, x))

    # mlp, and the same state chunked
    x = jax.random.normal(k[6], (4, 12))
    m = MLP()
    v = perturb(m.init(k[7], x), k[8])
    y = run(m, v, x)
    save(out, "mlp", fser.to_bytes(v), x, y)
    old = fser.MAX_CHUNK_SIZE
    fser.MAX_CHUNK_SIZE = 256
    try:
        chunked = fser.to_bytes(v)
    finally:
        fser.MAX_CHUNK_SIZE = old
    assert b"__msgpack_chunked_array__" in chunked
    save(out, "mlp_chunked", chunked, x, y)

    # trainstate: two Adam steps on the mlp
    state = train_state.TrainState.create(apply_fn=m.apply, params=v["params"], tx=optax.adam(1e-2))
    for i in range(2):
        grads = jax.grad(lambda p: jnp.mean(m.apply({"params": p}, x) ** 2))(state.params)
        state = state.apply_gradients(grads=grads)
    save(out, "trainstate", fser.to_bytes(state), x, m.apply({"params": state.params}, x))

    # embed (Hugging Face style: the params dict itself)
    tokens = jax.random.randint(k[9], (2, 7), 0, 50, dtype=jnp.int32)
    m = Embed()
    v = perturb(m.init(k[10], tokens), k[11])
    save(out, "embed", fser.to_bytes(v["params"]), tokens, run(m, v, tokens))

    # convt
    x = jax.random.normal(k[12], (2, 3, 3, 3))
    m = ConvT()
    v = perturb(m.init(k[13], x), k[14])
    save(out, "convt", fser.to_bytes(v), x, run(m, v, x))

    # misc: dtypes and leaves
    rng = np.random.RandomState(0)
    misc = {
        "params": {
            "Dense_0": {"kernel": jnp.asarray(rng.randn(3, 2), jnp.bfloat16),
                        "bias": rng.randn(2).astype(np.float16)},
            "w64": rng.randn(2, 2),
            "i32": rng.randint(-9, 9, size=3).astype(np.int32),
            "u8": rng.randint(0, 255, size=4).astype(np.uint8),
            "mask": np.array([True, False, True]),
            "c64": (rng.randn(2) + 1j * rng.randn(2)).astype(np.complex64),
            "c128": rng.randn(2) + 1j * rng.randn(2),
            "scalar": np.float32(2.5),
            "zero_d": np.array(7, np.int64),
            "empty": np.zeros((0, 3), np.float32),
        },
        "meta": {"step": 3, "lr": 0.1, "name": "run-1", "flag": True, "nothing": None, "z": 1 + 2j,
                 "blob": b"\x00\x01"},
        "lst": [np.arange(3, dtype=np.int16), 5],
    }
    save(out, "misc", fser.msgpack_serialize(misc), np.zeros(0), np.zeros(0))

    orbax_layout(out)


def orbax_layout(out: str) -> None:
    import orbax.checkpoint as ocp

    tree = {"params": {"Dense_0": {"kernel": np.ones((3, 4), np.float32), "bias": np.zeros(4, np.float32)}}}
    layout = {}
    with tempfile.TemporaryDirectory() as d:
        ck = ocp.StandardCheckpointer()
        ck.save(os.path.join(d, "standard"), tree)
        ck.wait_until_finished()
        mgr = ocp.CheckpointManager(os.path.join(d, "manager"))
        mgr.save(3, args=ocp.args.StandardSave(tree))
        mgr.wait_until_finished()
        for case in ("standard", "manager"):
            files, names = [], {}
            for root, _dirs, fs in os.walk(os.path.join(d, case)):
                for f in fs:
                    rel = os.path.relpath(os.path.join(root, f), os.path.join(d, case))
                    parent, base = os.path.split(rel)
                    if os.path.basename(parent) == "d":  # content-hash names: numbered, in order
                        base = names.setdefault(rel, f"blob{len(names)}")
                    files.append(os.path.join(parent, base))
            layout[case] = sorted(files)
    layout["orbax_version"] = ocp.__version__
    with open(os.path.join(out, "orbax_layout.json"), "w") as f:
        json.dump(layout, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    print("jax", jax.__version__, "flax", flax.__version__)
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/flax")
