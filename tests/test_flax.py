"""Flax msgpack checkpoints (issue 13): the reader against what Flax itself restores, every fixture
converted (with the flax-to-torch preset and with ``suggest``) into its torch twin, whose outputs
must be jax's; the skimming parser against hand-built msgpack; hostile files; Orbax refused.

The fixtures (tests/data/flax) were written by flax 0.12.8 / jax 0.10.2 (tools/make_flax_fixtures.py);
``NAME_io.npz`` holds the input, jax's output and every array ``flax.serialization.msgpack_restore``
returned (``var:<name>``). Nothing here imports jax, flax or msgpack.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

import flax_twins
from ckptfix import layer_table as T
from ckptfix.api import compose_rules
from ckptfix.errors import InputError
from ckptfix.formats.detect import classify, directory_checkpoint, open_checkpoint
from ckptfix.plan import make_plan
from ckptfix.tensors import TensorMeta

FLAX = Path(__file__).parent / "data" / "flax"
TWINS = "tests/flax_twins.py"
CASES = {  # fixture -> (twin, NHWC -> NCHW axes of the input, of the output)
    "cnn": ("CNN", (0, 3, 1, 2), None),
    "depthwise": ("Depthwise", (0, 3, 1, 2), None),
    "mlp": ("MLP", None, None),
    "mlp_chunked": ("MLP", None, None),
    "trainstate": ("MLP", None, None),
    "embed": ("Embed", None, None),
    "convt": ("ConvT", (0, 3, 1, 2), (0, 2, 3, 1)),
}
# what the preset cannot write (README, configs/flax-to-torch.yaml): the NHWC flatten before cnn's Dense
PRESET_EXTRA = {"cnn": "rules:\n  - flatten_order: {keys: '^Dense_0\\.weight$', dims: [4, 4, 16], layout: HWC->CHW}\n"}
MAX_DIFF: dict[str, float] = {}


def refs(case: str) -> dict[str, np.ndarray]:
    d = np.load(FLAX / f"{case}_io.npz")
    return {k[4:]: d[k] for k in d.files if k.startswith("var:")}


def as_bytes(t: torch.Tensor) -> bytes:
    return bytes(t.contiguous().reshape(-1).view(torch.uint8).numpy())


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def twin_output(case: str, weights: dict) -> tuple[np.ndarray, np.ndarray]:
    cls, to_nchw, back = CASES[case]
    io = np.load(FLAX / f"{case}_io.npz")
    model = getattr(flax_twins, cls)()
    model.load_state_dict(weights, strict=True)
    model.eval()
    x = torch.from_numpy(io["x"])
    x = x.long() if x.dtype == torch.int32 else x.permute(*to_nchw) if to_nchw else x
    with torch.no_grad():
        y = model(x)
    y = y.permute(*back) if back else y
    return y.numpy(), io["y"]


def assert_jax_outputs(case: str, y: np.ndarray, want: np.ndarray) -> None:
    """jax's float32 outputs vs torch's: the same function, other kernels (accumulation order)."""
    scale = max(1.0, float(np.abs(want).max()))
    diff = float(np.abs(y - want).max())
    MAX_DIFF[case] = max(MAX_DIFF.get(case, 0.0), diff / scale)
    np.testing.assert_allclose(y, want, atol=1e-5 * scale, rtol=0)


# ---------------------------------------------------------------------------------------------
# the reader against Flax


@pytest.mark.parametrize("case", list(CASES) + ["misc"])
def test_tensors_are_the_arrays_flax_restores(case):
    with open_checkpoint(FLAX / f"{case}.msgpack") as r:
        metas = r.metas()
        want = refs(case)
        bf16 = set(np.load(FLAX / f"{case}_io.npz")["bf16"].tolist())
        skipped = {n for n in want if n.startswith("opt_state/") or want[n].dtype == np.complex128}
        assert set(metas) == set(want) - skipped
        for name, meta in metas.items():
            t = r.read(name)
            ref = want[name]
            assert tuple(t.shape) == meta.shape == ref.shape, name
            assert meta.dtype == ("bfloat16" if name in bf16 else ref.dtype.name), name
            assert str(t.dtype) == f"torch.{meta.dtype}", name
            assert as_bytes(t) == np.ascontiguousarray(ref).tobytes(), name
            loc = r.locate(name)
            if loc is not None:  # the bytes as stored: what the executor copies without reading
                h, b, e = loc
                assert Path(h.path).read_bytes()[b:e] == ref.tobytes(), name


def test_names_nest_collections_and_modules():
    with open_checkpoint(FLAX / "cnn.msgpack") as r:
        assert r.format == "flax-msgpack"
        assert set(r.metas()) == {
            "params/Conv_0/kernel", "params/Conv_0/bias", "params/BatchNorm_0/scale", "params/BatchNorm_0/bias",
            "params/Conv_1/kernel", "params/Conv_1/bias", "params/Dense_0/kernel", "params/Dense_0/bias",
            "batch_stats/BatchNorm_0/mean", "batch_stats/BatchNorm_0/var"}
        assert r.layer_classes() == {"params/Conv_0": "Conv2D", "params/Conv_1": "Conv2D", "params/Dense_0": "Dense",
                                     "params/BatchNorm_0": "BatchNorm", "batch_stats/BatchNorm_0": "BatchNorm"}
        assert r.extras()["inferred_classes"] == {}
    with open_checkpoint(FLAX / "embed.msgpack") as r:  # Hugging Face style: no collection
        assert "mlp/Dense_1/kernel" in r.metas() and "Embed_0/embedding" in r.metas()
        assert r.layer_classes()["Embed_0"] == "Embed" and r.layer_classes()["LayerNorm_0"] == "LayerNorm"


def test_custom_module_names_are_read_from_their_variables():
    with open_checkpoint(FLAX / "depthwise.msgpack") as r:
        # gn is a GroupNorm: its variables read first as a LayerNorm, which converts the same way;
        # the matcher (suggest) lets the target decide
        assert r.extras()["inferred_classes"] == {"params/dw": "Conv2D", "params/gn": "LayerNorm",
                                                  "params/head": "Dense", "params/pw": "Conv2D"}
    named, inferred = T.flax_classes({"params/bn": {"scale": (4,), "bias": (4,)},
                                      "batch_stats/bn": {"mean": (4,), "var": (4,)},
                                      "params/emb": {"embedding": (9, 4)}, "params/up": {"kernel": (3, 3, 4, 2)},
                                      "params/MultiHeadDotProductAttention_0/query": {"kernel": (8, 2, 4)},
                                      "params/RMSNorm_0": {"scale": (8,)}})
    assert named == {"params/MultiHeadDotProductAttention_0/query": "DenseGeneral", "params/RMSNorm_0": "RMSNorm"}
    assert inferred == {"params/bn": "BatchNorm", "batch_stats/bn": "BatchNorm", "params/emb": "Embed",
                        "params/up": "Conv2D"}


def test_chunked_arrays_are_joined():
    """flax writes arrays over MAX_CHUNK_SIZE as __msgpack_chunked_array__ maps (the generator set
    it to 256 bytes): the same tensors as the unchunked file, read chunk by chunk."""
    with open_checkpoint(FLAX / "mlp_chunked.msgpack") as a, open_checkpoint(FLAX / "mlp.msgpack") as b:
        assert a.metas() == b.metas()
        assert sorted(a.extras()["chunked"]) == ["params/Dense_0/kernel", "params/Dense_1/kernel",
                                                 "params/Dense_2/kernel"]
        for n in a.metas():
            assert torch.equal(a.read(n), b.read(n)), n
        assert a.locate("params/Dense_0/kernel") is None and a.locate("params/Dense_0/bias") is not None


def test_train_state_optimizer_and_leaves_are_not_weights():
    with open_checkpoint(FLAX / "trainstate.msgpack") as r:
        why = r.extras()["not_weights"]
        assert why["step"] == "bookkeeping" and r.extras()["values"]["step"] == 2
        assert {n for n, w in why.items() if w == "optimizer state"} == {n for n in refs("trainstate")
                                                                         if n.startswith("opt_state/")}
    with open_checkpoint(FLAX / "misc.msgpack") as r:
        ex = r.extras()
        assert ex["values"] == {"meta/step": 3, "meta/lr": 0.1, "meta/name": "run-1", "meta/flag": True,
                                "meta/nothing": None, "lst/1": 5}
        assert ex["not_weights"]["meta/z"] == "complex number" and ex["not_weights"]["meta/blob"] == "bytes value"
        assert ex["not_weights"]["params/c128"].startswith("complex128 array")
        assert r.metas()["params/scalar"] == TensorMeta((), "float32")  # a numpy scalar: ext type 3
        assert r.metas()["params/empty"] == TensorMeta((0, 3), "float32")
        assert r.metas()["lst/0"] == TensorMeta((3,), "int16")  # a list (msgpack_serialize keeps it)
        assert any("complex128" in w for w in r.warnings())


def test_inspect_counts_statistics_as_buffers(cli):
    r = cli("inspect", FLAX / "cnn.msgpack")
    assert r.exit_code == 0, r.stderr
    assert "total params: 3,978" in r.stdout  # the BatchNorm's mean and var are not parameters
    r = cli("inspect", FLAX / "trainstate.msgpack")
    assert "optimizer state 11" in r.stdout and "bookkeeping 1" in r.stdout


# ---------------------------------------------------------------------------------------------
# conversion into the torch twins


@pytest.mark.parametrize("case", list(CASES))
def test_suggest_writes_rules_that_give_jax_outputs(cli, tmp_path, case):
    src = FLAX / f"{case}.msgpack"
    before = sha(src)
    rules, out = tmp_path / "r.yaml", tmp_path / "out.safetensors"
    r = cli("suggest", src, "--target", f"{TWINS}:{CASES[case][0]}", "-o", rules)
    assert r.exit_code == 0, r.stdout[-3000:] + r.stderr
    text = rules.read_text()
    assert "cannot fix" not in text
    r = cli("apply", src, "-r", rules, "-o", out)
    assert r.exit_code == 0, r.stderr
    assert_jax_outputs(case, *twin_output(case, load_file(out)))
    assert sha(src) == before


@pytest.mark.parametrize("case", [c for c in CASES if c != "convt"])
def test_the_preset_gives_jax_outputs(cli, tmp_path, case):
    src = FLAX / f"{case}.msgpack"
    out = tmp_path / "out.safetensors"
    args = ["-r", "flax-to-torch"]
    if case in PRESET_EXTRA:
        (tmp_path / "extra.yaml").write_text(PRESET_EXTRA[case])
        args += ["-r", tmp_path / "extra.yaml"]
    r = cli("apply", src, *args, "--target", f"{TWINS}:{CASES[case][0]}", "-o", out)
    assert r.exit_code == 0, r.stderr
    assert "eps" not in r.stderr
    assert_jax_outputs(case, *twin_output(case, load_file(out)))


def test_the_preset_does_not_convert_conv_transpose(cli, tmp_path):
    """transpose_kernel=False needs a flip per kernel size: the preset leaves ConvTranspose alone
    (the result does not fit: exit 1), suggest writes it."""
    r = cli("apply", FLAX / "convt.msgpack", "-r", "flax-to-torch", "--target", f"{TWINS}:ConvT",
            "-o", tmp_path / "o.safetensors")
    assert r.exit_code == 1
    assert not (tmp_path / "o.safetensors").exists()


def test_conv_transpose_readings_and_the_ambiguous_one(cli, tmp_path):
    rules = tmp_path / "r.yaml"
    assert cli("suggest", FLAX / "convt.msgpack", "--target", f"{TWINS}:ConvT", "-o", rules).exit_code == 0
    text = rules.read_text()
    assert "ConvTranspose_1 <- ConvTranspose_1 (ConvTranspose, transpose_kernel=True)" in text
    assert "review: ConvTranspose_2: a Flax ConvTranspose kernel [2, 2, 4, 4]" in text
    body = yaml.safe_load(text)["rules"]
    flips = [r["reorder_blocks"] for r in body if "reorder_blocks" in r]
    assert {(f["keys"], f["axis"], tuple(f["order"])) for f in flips} == {
        (r"^ConvTranspose_0\.weight$", 2, (2, 1, 0)), (r"^ConvTranspose_0\.weight$", 3, (2, 1, 0)),
        (r"^ConvTranspose_2\.weight$", 2, (1, 0)), (r"^ConvTranspose_2\.weight$", 3, (1, 0))}


def test_without_the_flip_outputs_differ(cli, tmp_path):
    """The flip is what makes ConvTranspose right (not a tolerance artefact)."""
    rules, out = tmp_path / "r.yaml", tmp_path / "o.safetensors"
    cli("suggest", FLAX / "convt.msgpack", "--target", f"{TWINS}:ConvT", "-o", rules)
    doc = yaml.safe_load(rules.read_text())
    doc["rules"] = [r for r in doc["rules"] if "reorder_blocks" not in r]
    rules.write_text(yaml.safe_dump(doc))
    assert cli("apply", FLAX / "convt.msgpack", "-r", rules, "-o", out).exit_code == 0
    y, want = twin_output("convt", load_file(out))
    assert np.abs(y - want).max() > 1e-2


def test_layernorm_eps(cli, tmp_path):
    """Flax LayerNorm's eps is 1e-6; a target built with torch's 1e-5: apply warns, suggest says
    what to set, and the outputs differ by more than rounding."""
    out, rules = tmp_path / "o.safetensors", tmp_path / "r.yaml"
    r = cli("apply", FLAX / "embed.msgpack", "-r", "flax-to-torch", "--target", f"{TWINS}:Embed", "--target-kwargs",
            "{ln_eps: 1.0e-5}", "-o", out)
    assert r.exit_code == 0, r.stderr
    assert "LayerNorm_0: Flax LayerNorm (default; the file does not record it) eps 1e-06" in r.stderr
    assert "Build the layer with eps=1e-06" in r.stderr and "bn_eps" not in r.stderr
    r = cli("suggest", FLAX / "embed.msgpack", "--target", f"{TWINS}:Embed", "--target-kwargs", "{ln_eps: 1.0e-5}",
            "-o", rules)
    assert "# LayerNorm_0: Flax LayerNorm eps 1e-06, target eps 1e-05" in rules.read_text()


def test_batchnorm_eps_is_folded_for_another_eps(cli, tmp_path):
    rules, out = tmp_path / "r.yaml", tmp_path / "o.safetensors"
    r = cli("suggest", FLAX / "cnn.msgpack", "--target", f"{TWINS}:CNN", "--target-kwargs", "{bn_eps: 1.0e-3}",
            "-o", rules)
    assert r.exit_code == 0
    assert "bn_eps: {keys: ^BatchNorm_0\\.running_var$, from: 1.0e-05, to: 0.001}" in rules.read_text()
    assert cli("apply", FLAX / "cnn.msgpack", "-r", rules, "-o", out).exit_code == 0
    io = np.load(FLAX / "cnn_io.npz")
    model = flax_twins.CNN(bn_eps=1e-3)
    model.load_state_dict(load_file(out), strict=True)
    with torch.no_grad():
        y = model.eval()(torch.from_numpy(io["x"]).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(y, io["y"], atol=1e-5 * max(1, np.abs(io["y"]).max()), rtol=0)


def test_the_flax_to_torch_preset_agrees_with_the_table():
    """Each Flax class the preset converts: a one-layer file of it, planned with the preset, gives
    the torch names and shapes of the table's reading (ConvTranspose: not in the preset)."""
    rules = compose_rules(["flax-to-torch"]).rules
    examples = {"Dense": {"kernel": (4, 5), "bias": (5,)}, "Conv1D": {"kernel": (3, 4, 6), "bias": (6,)},
                "Conv2D": {"kernel": (3, 3, 4, 6), "bias": (6,)}, "Conv3D": {"kernel": (1, 3, 3, 4, 6)},
                "BatchNorm": {"scale": (4,), "bias": (4,), "mean": (4,), "var": (4,)},
                "LayerNorm": {"scale": (4,), "bias": (4,)}, "GroupNorm": {"scale": (4,), "bias": (4,)},
                "Embed": {"embedding": (9, 4)}}
    for form in T.FLAX:
        cls = form.classes[0]
        if cls == "ConvTranspose":
            continue
        shapes = examples[cls]
        (units,) = [u for f, _, u in T.keras_readings(shapes, cls) if f is form]
        stats = {"mean", "var"}
        metas = {f"{'batch_stats' if v in stats else 'params'}/M_0/{v}": TensorMeta(s) for v, s in shapes.items()}
        classes = {"params/M_0": cls, "batch_stats/M_0": cls}
        plan = make_plan(metas, rules, classes=classes)
        got = {n: e.meta.shape for n, e in plan.entries.items()}
        want = {f"M_0.{k}": s for k, s in units[0].shapes().items()
                if not isinstance(units[0].tensors.get(k), T.Fill) or k == "num_batches_tracked"}
        assert got == want, cls
        for local, conv in units[0].tensors.items():
            if isinstance(conv, T.Convert) and conv.layout:
                steps = [s for s in plan.steps if s.rule == "transpose" and s.touched]
                assert [s.summary for s in steps] == [f"transpose {conv.layout}"], (cls, local)


# ---------------------------------------------------------------------------------------------
# the skimming parser against hand-built msgpack (a tiny encoder, every width msgpack allows)


class Enc:
    """msgpack, with each length and integer written in a width drawn from ``rnd`` (any that fits)."""

    def __init__(self, rnd: random.Random):
        self.rnd = rnd

    def _len(self, n: int, fix: tuple[int, int] | None, codes: list[tuple[int, int]]) -> bytes:
        opts = []
        if fix is not None and n < fix[1]:
            opts.append(bytes([fix[0] | n]))
        for code, width in codes:
            if n < 1 << (8 * width):
                opts.append(bytes([code]) + n.to_bytes(width, "big"))
        return self.rnd.choice(opts)

    def int(self, v: int) -> bytes:
        opts = []
        if 0 <= v < 128:
            opts.append(bytes([v]))
        if -32 <= v < 0:
            opts.append(struct.pack(">b", v))
        for i, w in enumerate((1, 2, 4, 8)):
            if 0 <= v < 1 << (8 * w):
                opts.append(bytes([0xCC + i]) + v.to_bytes(w, "big"))
            if -(1 << (8 * w - 1)) <= v < 1 << (8 * w - 1):
                opts.append(bytes([0xD0 + i]) + v.to_bytes(w, "big", signed=True))
        return self.rnd.choice(opts)

    def str(self, s: str) -> bytes:
        b = s.encode()
        return self._len(len(b), (0xA0, 32), [(0xD9, 1), (0xDA, 2), (0xDB, 4)]) + b

    def bin(self, b: bytes, as_str: bool = False) -> bytes:
        if as_str:  # old msgpack (use_bin_type=False) wrote bytes as raw str
            return self._len(len(b), (0xA0, 32), [(0xDA, 2), (0xDB, 4)]) + b
        return self._len(len(b), None, [(0xC4, 1), (0xC5, 2), (0xC6, 4)]) + b

    def ext(self, code: int, data: bytes) -> bytes:
        fixed = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}
        opts = [self._len(len(data), None, [(0xC7, 1), (0xC8, 2), (0xC9, 4)]) + struct.pack(">b", code)]
        if len(data) in fixed:
            opts.append(bytes([fixed[len(data)]]) + struct.pack(">b", code))
        return self.rnd.choice(opts) + data

    def array(self, shape, dtype: str, data: bytes, code: int = 1) -> bytes:
        payload = (self._len(3, (0x90, 16), [(0xDC, 2), (0xDD, 4)])
                   + self._len(len(shape), (0x90, 16), [(0xDC, 2), (0xDD, 4)]) + b"".join(self.int(d) for d in shape)
                   + self.str(dtype) + self.bin(data, as_str=self.rnd.random() < 0.2))
        return self.ext(code, payload)

    def value(self, v) -> bytes:
        if isinstance(v, dict):
            return (self._len(len(v), (0x80, 16), [(0xDE, 2), (0xDF, 4)])
                    + b"".join(self.str(k) + self.value(x) for k, x in v.items()))
        if isinstance(v, list):
            return self._len(len(v), (0x90, 16), [(0xDC, 2), (0xDD, 4)]) + b"".join(self.value(x) for x in v)
        if isinstance(v, Arr):
            return self.array(v.shape, v.dtype, v.data, 3 if v.scalar else 1)
        if v is None:
            return b"\xc0"
        if isinstance(v, bool):
            return b"\xc3" if v else b"\xc2"
        if isinstance(v, int):
            return self.int(v)
        if isinstance(v, float):
            try:
                if struct.unpack(">f", struct.pack(">f", v))[0] == v and self.rnd.random() < 0.5:
                    return b"\xca" + struct.pack(">f", v)
            except OverflowError:
                pass
            return b"\xcb" + struct.pack(">d", v)
        if isinstance(v, str):
            return self.str(v)
        if isinstance(v, bytes):
            return self.bin(v)
        raise TypeError(v)


class Arr:
    def __init__(self, shape, dtype, data, scalar=False):
        self.shape, self.dtype, self.data, self.scalar = tuple(shape), dtype, data, scalar


ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int8": 1, "int32": 4, "int64": 8,
            "uint8": 1, "uint16": 2, "bool": 1, "complex64": 8, "float8_e4m3fn": 1}


@st.composite
def arrays(draw):
    dtype = draw(st.sampled_from(sorted(ITEMSIZE)))
    shape = draw(st.lists(st.integers(0, 4), max_size=3))
    n = math.prod(shape) * ITEMSIZE[dtype]
    data = bytes(draw(st.lists(st.integers(0, 1) if dtype == "bool" else st.integers(0, 255), min_size=n,
                               max_size=n)))
    return Arr(shape, dtype, data, scalar=not shape and draw(st.booleans()))


KEYS = st.text(st.characters(codec="utf-8", exclude_characters="/"), min_size=1, max_size=8)
LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(allow_nan=False),
                   st.text(max_size=40), st.binary(max_size=40))
TREES = st.recursive(st.one_of(arrays(), LEAVES),
                     lambda kids: st.one_of(st.dictionaries(KEYS, kids, max_size=4), st.lists(kids, max_size=3)),
                     max_leaves=12)


def expected(tree, path=()) -> tuple[dict, dict]:
    arrs, others = {}, {}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    for k, v in items:
        p = (*path, str(k))
        if isinstance(v, (dict, list)):
            a, o = expected(v, p)
            arrs.update(a)
            others.update(o)
        elif isinstance(v, Arr):
            arrs["/".join(p)] = v
        else:
            others["/".join(p)] = v
    return arrs, others


def chunked(a: Arr, rnd: random.Random) -> dict:
    """Flax's ``_chunk`` form of ``a``: the flattened array in 1-d chunks."""
    size = ITEMSIZE[a.dtype]
    n = math.prod(a.shape)
    cuts = sorted({0, n, *(rnd.randint(0, n) for _ in range(2))})
    cuts = [c for i, c in enumerate(cuts) if i == 0 or c != cuts[i - 1]] if n else [0, 0]
    chunks = [Arr((b - e0,), a.dtype, a.data[e0 * size:b * size]) for e0, b in zip(cuts, cuts[1:])] or \
        [Arr((0,), a.dtype, b"")]
    return {"__msgpack_chunked_array__": True, "shape": {str(i): d for i, d in enumerate(a.shape)},
            "chunks": {str(i): c for i, c in enumerate(chunks)}}


@settings(max_examples=150)
@given(tree=st.dictionaries(KEYS.filter(lambda k: k not in ("opt_state", "step", "w")), TREES, max_size=4),
       seed=st.integers(0, 2**32 - 1), chunk=st.booleans())
def test_parser_reads_hand_built_msgpack(tmp_path_factory, tree, seed, chunk):
    rnd = random.Random(seed)
    tree = {"w": Arr((2,), "float32", bytes(range(8))), **tree}  # (a file under 9 bytes is no checkpoint)
    arrs, others = expected(tree)
    doc = tree
    if chunk and arrs:  # one array (a dict value) written chunked
        for k, v in tree.items():
            if isinstance(v, Arr) and v.shape:
                doc = {**tree, k: chunked(v, rnd)}
                break
    path = tmp_path_factory.mktemp("mp") / "t.msgpack"
    path.write_bytes(Enc(rnd).value(doc))
    with open_checkpoint(path) as r:
        assert r.format == "flax-msgpack"
        metas = r.metas()
        assert list(metas) == list(arrs)
        for name, a in arrs.items():
            assert metas[name] == TensorMeta(a.shape, a.dtype), name
            t = r.read(name)
            assert tuple(t.shape) == a.shape and as_bytes(t) == a.data, name
        assert set(r.extras()["not_weights"]) == set(others)
        for name, v in r.extras()["values"].items():
            o = others[name]
            assert v == (repr(o) if isinstance(o, float) and not math.isfinite(o) else o), name  # (JSON: no inf)


# ---------------------------------------------------------------------------------------------
# hostile and broken files: one line naming the file, exit 2, the file unchanged


def enc(v, seed=0) -> bytes:
    return Enc(random.Random(seed)).value(v)


def ndarray_ext(payload: bytes) -> bytes:
    return b"\xc9" + len(payload).to_bytes(4, "big") + b"\x01" + payload


F4 = Arr((2,), "float32", b"\x00" * 8)
PAD = b"\xa8padding!\xc0"  # a first entry ("padding!": nil): a file under 9 bytes is no checkpoint
GOOD = enc({"params": {"Dense_0": {"kernel": Arr((2, 2), "float32", bytes(range(16))), "bias": F4}}})
HOSTILE = {
    "truncated": (GOOD[:-5], "truncated"),
    "cut in a key": (GOOD[:12], "truncated"),
    "length past EOF": (b"\x81\xa1a\xc6\xff\xff\xff\xf0" + b"\x00" * 8, "past the end of the file"),
    "ext past EOF": (b"\x81\xa1a\xc9\x7f\xff\xff\xff\x01" + b"\x00" * 8, "past the end of the file"),
    "map count past EOF": (b"\x81\xa1a\xdf\xff\xff\xff\xff" + b"\x00" * 8, "declares 4,294,967,295 entries"),
    "huge shape, small buffer": (b"\x81\xa1a" + ndarray_ext(b"\x93\x92\xce\x7f\xff\xff\xff\xce\x7f\xff\xff\xff"
                                                           b"\xa7float32\xc4\x08" + b"\x00" * 8),
                                 "needs 18,446,744,056,529,682,436 bytes but its buffer holds 8"),
    "negative dimension": (b"\x81\xa1a" + ndarray_ext(b"\x93\x91\xff\xa7float32\xc4\x08" + b"\x00" * 8),
                           "dimension -1 is negative"),
    "deep nesting": (b"\x81\xa1a" * 600 + b"\xc0", "nested too deeply"),
    "deep lists": (b"\x81\xa1a" + b"\x91" * 600 + b"\xc0", "nested too deeply"),
    "ext payload not a triple": (b"\x81\xa1a" + ndarray_ext(b"\x92\x90\xa7float32"), "not [shape, dtype, buffer]"),
    "ext payload cut short": (b"\x81\xa1a" + ndarray_ext(b"\x93\x91\x02\xa7float32\xc4\x08\x00"), "truncated"),
    "bytes after the buffer": (b"\x81\xa1a" + ndarray_ext(b"\x93\x91\x02\xa7float32\xc4\x08" + b"\x00" * 9),
                               "1 bytes after the buffer"),
    "dtype not a string": (b"\x81\xa1a" + ndarray_ext(b"\x93\x91\x02\x05\xc4\x08" + b"\x00" * 8), "dtype is not"),
    "int key": (b"\x82" + PAD + b"\x05\xc0", "map key at offset 11 is an int, not a string"),
    "bin key": (b"\x82" + PAD + b"\xc4\x01b\xc0", "is a bin, not a string"),
    "nil key deeper": (b"\x82" + PAD + b"\xa1a\x81\xc0\xc0", "is a nil, not a string"),
    "duplicate key": (b"\x83" + PAD + b"\xa1a\xc0\xa1a\xc3", "has the key 'a' twice"),
    "same name twice": (enc({"a": {"b": F4}, "a/b": F4}), "two entries are both named 'a/b'"),
    "trailing bytes": (GOOD + b"\x00", "1 bytes follow the msgpack value"),
    "empty map, then bytes": (b"\xde\x00\x00\xa1a" + b"\x00" * 6, "8 bytes follow the msgpack value"),
    "not a map inside": (b"\x81\xa1a\xc7\x03\x07abc" + b"\x00", "1 bytes follow"),
    "0xc1": (b"\x82" + PAD + b"\xa1b\xc1", "byte 0xc1"),
    "key not utf-8": (b"\x81\xa2\xff\xfe\xc0" + b"\x00" * 4, "not UTF-8"),
    "chunked, wrong size": (enc({"a": {"__msgpack_chunked_array__": True, "shape": {"0": 3},
                                       "chunks": {"0": F4}}}), "its chunks hold 2 elements, its shape [3] 3"),
    "chunked, mixed dtypes": (enc({"a": {"__msgpack_chunked_array__": True, "shape": {"0": 4},
                                         "chunks": {"0": F4, "1": Arr((2,), "int32", b"\x00" * 8)}}}),
                              "chunk 1 is int32, chunk 0 float32"),
    "chunked, no chunks": (enc({"a": {"__msgpack_chunked_array__": True, "shape": {"0": 4}}}),
                           "needs a 'shape' map and a 'chunks' map"),
    "root chunked": (enc({"__msgpack_chunked_array__": True, "shape": {"0": 2}, "chunks": {"0": F4}}),
                     "is one chunked array"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_files_are_one_line_errors(cli, tmp_path, case):
    data, cause = HOSTILE[case]
    path = tmp_path / "bad.msgpack"
    path.write_bytes(data)
    assert classify(path) == "flax-msgpack"
    r = cli("inspect", path)
    assert r.exit_code == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and cause in lines[0], lines
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    assert path.read_bytes() == data


def test_a_file_cut_anywhere_is_refused(tmp_path):
    data = (FLAX / "cnn.msgpack").read_bytes()
    path = tmp_path / "cut.msgpack"
    for n in sorted({*range(9, 200, 7), *range(200, len(data), 997), len(data) - 1}):
        path.write_bytes(data[:n])
        with pytest.raises(InputError, match="truncated|corrupt") as e:
            open_checkpoint(path)
        assert str(path) in str(e.value)


def test_a_file_that_shrinks_after_opening_is_an_input_error(tmp_path):
    path = tmp_path / "m.msgpack"
    path.write_bytes((FLAX / "mlp.msgpack").read_bytes())
    with open_checkpoint(path) as r:
        with open(path, "r+b") as f:
            f.truncate(100)
        with pytest.raises(InputError, match="truncated"):
            r.read("params/Dense_2/kernel")


def test_mutated_fixtures_read_or_fail_cleanly(tmp_path):
    """Random byte changes to every fixture: a one-line InputError, or tensors that are what the
    metadata says (never another exception)."""
    rnd = random.Random(13)
    path = tmp_path / "m.msgpack"
    for case in list(CASES) + ["misc"]:
        data = (FLAX / f"{case}.msgpack").read_bytes()
        for _ in range(40):
            b = bytearray(data)
            for _ in range(rnd.randint(1, 4)):
                i = rnd.randrange(len(b))
                b[i] = rnd.choice([0x00, 0xFF, 0xC1, 0xDF, 0xC9, b[i] ^ (1 << rnd.randrange(8))])
            path.write_bytes(bytes(b))
            try:
                with open_checkpoint(path) as r:
                    for name, meta in r.metas().items():
                        t = r.read(name)
                        assert tuple(t.shape) == meta.shape and str(t.dtype) == f"torch.{meta.dtype}"
            except InputError as e:
                assert "\n" not in str(e) and str(path) in str(e)


# ---------------------------------------------------------------------------------------------
# Orbax: detected and refused with how to get a msgpack


def orbax_dir(root: Path, case: str) -> Path:
    layout = json.loads((FLAX / "orbax_layout.json").read_text())
    for rel in layout[case]:
        (root / case / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / case / rel).write_bytes(b"{}" if rel.endswith("METADATA") else b"\x28\xb5\x2f\xfd")
    return root / case


@pytest.mark.parametrize("where,what", [("standard", "an Orbax checkpoint directory"),
                                        ("manager", "an Orbax CheckpointManager directory (steps 3)"),
                                        ("manager/3", "an Orbax checkpoint directory"),
                                        ("manager/3/default", "an Orbax checkpoint directory"),
                                        ("standard/_METADATA", "is part of an Orbax checkpoint"),
                                        ("standard/manifest.ocdbt", "is part of an Orbax checkpoint")])
def test_orbax_checkpoints_are_refused_with_the_way_out(cli, tmp_path, where, what):
    orbax_dir(tmp_path, "standard")
    orbax_dir(tmp_path, "manager")
    r = cli("inspect", tmp_path / where)
    assert r.exit_code == 2
    (line,) = r.stderr.strip().splitlines()
    assert what in line and "flax.serialization.to_bytes" in line and str(tmp_path / where) in line


def test_orbax_directories_are_one_batch_input(tmp_path):
    assert directory_checkpoint(orbax_dir(tmp_path, "standard"))
    assert directory_checkpoint(orbax_dir(tmp_path, "manager") / "3")


# ---------------------------------------------------------------------------------------------


def test_no_jax_flax_or_msgpack_is_imported(tmp_path):
    """The reader is ckptfix's own: a process where importing them fails reads every fixture."""
    code = f"""
import sys, importlib.abc
class NoJax(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("jax", "jaxlib", "flax", "msgpack", "orbax", "optax", "tensorstore"):
            raise ImportError("forbidden: " + name)
sys.meta_path.insert(0, NoJax())
from ckptfix.formats.detect import open_checkpoint
n = 0
for case in {sorted(list(CASES) + ['misc'])!r}:
    with open_checkpoint({str(FLAX)!r} + "/" + case + ".msgpack") as r:
        for name in r.metas():
            r.read(name)
            n += 1
print(n)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=Path(__file__).parent.parent)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == 59


def test_report_max_diff():
    """Not a check: the largest |torch - jax| / max(1, |jax|) seen by the tests above (printed with -s)."""
    print({k: f"{v:.2e}" for k, v in sorted(MAX_DIFF.items())})


# ---------------------------------------------------------------------------------------------
# budgets: a small file may not make gigabytes of Python objects or names (found by attack2)


def _many_leaves(rnd: random.Random, n: int) -> dict:
    """A tree of ``n`` tiny leaves (nils, ints, bools, empty strings), in maps and lists of random widths."""
    tiny = [None, 0, 1, True, False, -1, ""]
    leaves = [rnd.choice(tiny) for _ in range(n)]
    tree, i = {}, 0
    while i < n:
        w = rnd.randint(1, 500)
        part = leaves[i:i + w]
        tree[f"m{i}"] = part if rnd.random() < 0.5 else {f"{j:x}": v for j, v in enumerate(part)}
        i += w
    return tree


@pytest.mark.parametrize("seed", range(4))
def test_a_tree_of_too_many_leaves_is_refused(cli, tmp_path, monkeypatch, seed):
    from ckptfix.formats import flax_io

    rnd = random.Random(seed)
    monkeypatch.setattr(flax_io, "MAX_TREE_ENTRIES", 2000)
    path = tmp_path / "many.msgpack"
    for n, ok in ((2000 - 1, True), (rnd.randint(2001, 5000), False)):
        data = enc({"w": F4, **_many_leaves(rnd, n)}, seed)
        path.write_bytes(data)
        r = cli("inspect", path)
        if ok:
            assert r.exit_code == 0, r.stderr
            continue
        lines = r.stderr.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1 and str(path) in lines[0], lines
        assert "more than 2,000 entries" in lines[0]
        assert path.read_bytes() == data


@pytest.mark.parametrize("seed", range(4))
def test_short_keys_under_a_long_one_are_refused_before_the_names_are_made(tmp_path, seed):
    """A 32,000-character key above ~8,400 nils is a 100 KB file whose names would be 268 MB (at 1.4 MB, 13 GB):
    refused while parsing, at the real budget."""
    from ckptfix.formats import flax_io
    from ckptfix.limits import MAX_TREE_NAME_CHARS

    rnd = random.Random(seed)
    long = "".join(rnd.choice("abcdé/") for _ in range(rnd.randint(30_000, 32_000)))  # (<= 64 KB of UTF-8)
    n = MAX_TREE_NAME_CHARS // (len(long) + 2) + 50
    nest = {f"{i:x}": rnd.choice([None, 0, True]) for i in range(n)}
    for _ in range(rnd.randint(0, 3)):  # under a few more short levels, or as a list
        nest = {"x": nest} if rnd.random() < 0.5 else [nest]
    path = tmp_path / "long.msgpack"
    path.write_bytes(enc({"w": F4, long.replace("/", "_"): nest}, seed))
    assert path.stat().st_size < 400_000
    with pytest.raises(InputError, match="names add up to more than") as e:
        open_checkpoint(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    # the same keys under a short key read (and are listed as not weights)
    path.write_bytes(enc({"w": F4, "short": nest}, seed))
    with open_checkpoint(path) as r:
        assert list(r.metas()) == ["w"] and len(r.extras()["not_weights"]) == n
    assert flax_io.MAX_TREE_NAME_CHARS == MAX_TREE_NAME_CHARS


@pytest.mark.parametrize("seed", range(6))
def test_an_empty_shape_no_array_can_have_is_refused(cli, tmp_path, seed):
    """(0, 2**64 - 1): Flax's msgpack_restore raises, and a safetensors file of it cannot be read
    back (found by attack2: it was written). Plain and chunked; every dtype width."""
    rnd = random.Random(seed)
    dtype = rnd.choice(sorted(ITEMSIZE))
    big = [rnd.choice([2**62 // ITEMSIZE[dtype], 2**63, 2**64 - 1, 2**40])]
    shape = [0, *big] + ([2**40] if big[0] == 2**40 else [])
    rnd.shuffle(shape)
    arr = Arr(shape, dtype, b"")
    value = arr if seed % 2 else {"__msgpack_chunked_array__": True,
                                  "shape": {str(i): d for i, d in enumerate(shape)},
                                  "chunks": {"0": Arr((0,), dtype, b"")}}
    path = tmp_path / "big.msgpack"
    path.write_bytes(enc({"params": {"w": F4, "e": value}}, seed))
    r = cli("inspect", path)
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and str(path) in lines[0], (r.stdout, lines)
    assert "too large for any array" in lines[0]
    # an empty array of a reasonable shape still reads
    path.write_bytes(enc({"params": {"w": F4, "e": Arr([0, 2**20], dtype, b"")}}, seed))
    with open_checkpoint(path) as rd:
        assert rd.metas()["params/e"].shape == (0, 2**20)


@pytest.mark.parametrize("seed", range(8))
def test_a_custom_named_attention_is_dense_general_not_a_conv1d(seed):
    """nn.MultiHeadDotProductAttention(name=...) always names its parts query/key/value/out; its out
    kernel (H, hd, D) with bias (D,) also reads as a Conv1D, which the preset transposed WIO->OIW into
    a weight no torch layer holds (found by attack2). Random heads, sizes, names and nesting; the
    same names on 2-D kernels (a BERT-style attention of nn.Dense) stay Dense."""
    rnd = random.Random(seed)
    h, hd, d = rnd.randint(1, 4), rnd.randint(1, 8), rnd.randint(2, 16)
    where = "/".join(rnd.choice(["attn", "self_attention", "Block_0", "layers_3", "mha"])
                     for _ in range(rnd.randint(1, 3)))
    heads = {"query": (d, h, hd), "key": (d, h, hd), "value": (d, h, hd)}
    layers = {f"params/{where}/{p}": {"kernel": k, "bias": k[1:]} for p, k in heads.items()}
    layers[f"params/{where}/out"] = {"kernel": (h, hd, d), "bias": (d,)}
    layers[f"params/{where}/ln"] = {"scale": (d,), "bias": (d,)}
    named, inferred = T.flax_classes(dict(rnd.sample(list(layers.items()), len(layers))))
    for p in ("query", "key", "value", "out"):
        assert named.get(f"params/{where}/{p}") == "DenseGeneral", (p, named, inferred)
    assert inferred.get(f"params/{where}/ln") == "LayerNorm"
    metas = {f"{layer}/{v}": TensorMeta(s) for layer, vs in layers.items() for v, s in vs.items()}
    plan = make_plan(metas, compose_rules(["flax-to-torch"]).rules, classes={**named, **inferred})
    dot = where.replace("/", ".")
    assert plan.entries[f"{dot}.out.kernel"].meta.shape == (h, hd, d)  # left as stored, for the user
    # nn.Dense parts of the same names: Dense, transposed
    dense = {f"params/{where}/{p}": {"kernel": (d, d), "bias": (d,)} for p in ("query", "key", "value", "out")}
    named, inferred = T.flax_classes(dense)
    assert set({**named, **inferred}.values()) == {"Dense"}


class _Sandwich(torch.nn.Module):
    """conv -> segments -> flatten -> Linear; a segment is a channels-last op between permutes
    (``permute(0, 2, 3, 1)``, a LayerNorm / RMSNorm / activation, ``permute(0, 3, 1, 2)``), an
    activation, or (last) a bare permute to channels last."""

    def __init__(self, segments, c=3, hw=(4, 5)):
        super().__init__()
        self.segments = segments
        self.conv = torch.nn.Conv2d(2, c, 3, padding=1)
        self.mods = torch.nn.ModuleList()
        for s in segments:
            self.mods.append({"ln": torch.nn.LayerNorm(c, eps=1e-6), "rms": torch.nn.RMSNorm(c),
                              "gelu": torch.nn.GELU(), "relu": torch.nn.ReLU()}.get(s.split(":")[-1],
                                                                                   torch.nn.Identity()))
        self.head = torch.nn.Linear(c * hw[0] * hw[1], 4)

    def forward(self, x):
        x = self.conv(x)
        for s, m in zip(self.segments, self.mods):
            if s.startswith("nhwc:"):
                x = x.permute(0, 2, 3, 1)
                x = torch.nn.functional.gelu(x) if s == "nhwc:F.gelu" else m(x)
                x = x.permute(0, 3, 1, 2)
            elif s == "last":
                x = x.permute(0, 2, 3, 1)
            else:
                x = m(x)
        return self.head(x.flatten(1))


@pytest.mark.parametrize("seed", range(10))
def test_a_flatten_after_a_channels_last_layernorm_is_chw(seed):
    """A Flax twin normalizes NHWC between two permutes, then flattens NCHW: the flatten order is
    CHW (found by attack2: the walk stopped at the LayerNorm and composed one permute only, WCH,
    and suggest wrote a flatten_order that converted the Dense head wrongly, outputs off by 7.8).
    Random segments; the order checked against where each element of a probe map lands."""
    from ckptfix.trace import trace

    rnd = random.Random(seed)
    kinds = ["nhwc:ln", "nhwc:rms", "nhwc:gelu", "nhwc:F.gelu", "nhwc:relu", "relu"]
    segments = [rnd.choice(kinds) for _ in range(rnd.randint(1, 3))] + (["last"] if rnd.random() < 0.4 else [])
    c, hw = rnd.randint(2, 4), (rnd.randint(2, 5), rnd.randint(2, 5))
    with torch.device("meta"):  # (as suggest builds a target)
        model = _Sandwich(segments, c, hw)
    # the truth: flatten a probe map whose value says its (c, h, w) through the same permutes
    probe = torch.arange(c * hw[0] * hw[1]).reshape(1, c, *hw)
    x = probe
    for s in segments:
        x = x.permute(0, 2, 3, 1) if s == "last" else x
    chw = x.flatten(1)[0].tolist() == list(range(c * hw[0] * hw[1]))
    for shape in (None, (1, 2, *hw)):
        f = trace(model, shape).flattens["head"]
        assert f.order == ("CHW" if chw else "HWC"), (segments, f)
        assert f.channels == c and f.spatial_rank == 2
        if shape is not None:
            assert f.map_shape == (c, *hw), (segments, f)


@pytest.mark.parametrize("seed", range(8))
def test_layers_stacked_by_scan_or_vmap_are_no_layer_and_are_warned(cli, tmp_path, seed):
    """nn.scan / nn.vmap stack a module's variables along a leading axis (``Dense_0/kernel`` (L, I, O),
    ``bias`` (L, O)); a default name said Dense (the preset then failed on a rank-3 kernel) or Conv3D
    for a stacked Conv2D (transposed DHWIO->OIDHW into a wrong weight; found by attack2). Now: no
    class, left as stored, a warning saying why. Random L, sizes, Dense or Conv, default or custom names."""
    rnd = random.Random(seed)
    n, i, o = rnd.randint(2, 4), rnd.randint(1, 5), rnd.randint(1, 5)
    conv = rnd.random() < 0.5
    kernel = (n, 3, 3, i, o) if conv else (n, i, o)
    name = rnd.choice(["Conv_0" if conv else "Dense_0", "ScanBlock_0/Dense_1", "layers", "ens"])
    arr = lambda shape: Arr(shape, "float32", bytes(range(4)) * math.prod(shape))  # noqa: E731
    path = tmp_path / "scan.msgpack"
    data = enc({"params": {**_nest(name, {"kernel": arr(kernel), "bias": arr((n, o))}),
                           "Dense_9": {"kernel": arr((o, 2)), "bias": arr((2,))}}}, seed)
    path.write_bytes(data)
    with open_checkpoint(path) as r:
        classes = r.layer_classes()
        assert f"params/{name}" not in classes, classes
        assert classes["params/Dense_9"] == "Dense"
        (w,) = [w for w in r.warnings() if "stacked by nn.scan/nn.vmap" in w]
        assert f"params/{name}/kernel {list(kernel)}" in w
        plan = make_plan(r.metas(), compose_rules(["flax-to-torch"]).rules, classes=classes)
    dot = name.replace("/", ".")
    assert plan.entries[f"{dot}.kernel"].meta.shape == kernel and plan.entries["Dense_9.weight"].meta.shape == (2, o)
    out = tmp_path / "out.safetensors"
    res = cli("apply", path, "-r", "flax-to-torch", "-o", out)
    assert res.exit_code == 0 and "stacked by nn.scan/nn.vmap" in res.stderr, res.stderr
    assert path.read_bytes() == data


def _nest(name: str, leaf: dict) -> dict:
    for part in reversed(name.split("/")):
        leaf = {part: leaf}
    return leaf
