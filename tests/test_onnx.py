"""ONNX models: names and values equal onnx's own reading (numpy_helper, the reference), every
fixture converts into its PyTorch model and reproduces onnxruntime's outputs, hostile files are
one-line errors, and random models built with onnx.helper read back equal."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

import onnx_nets
from ckptfix import layer_table as T
from ckptfix.errors import InputError
from ckptfix.formats import open_checkpoint
from ckptfix.formats.onnx_io import OnnxReader, _join_scopes, is_anonymous
from numerics import assert_outputs_close

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

DATA = Path(__file__).parent / "data" / "onnx"
NETS = "tests/onnx_nets.py"
# fixture -> the PyTorch model it converts into
FIXTURES = {
    "cnn_ts.onnx": "OnnxCNN", "cnn_dyn.onnx": "OnnxCNN",
    "mlp_ts.onnx": "OnnxMLP", "mlp_dyn.onnx": "OnnxMLP", "mlp_ext/model.onnx": "OnnxMLP",
    "emb_ts.onnx": "OnnxEmbLN", "emb_dyn.onnx": "OnnxEmbLN",
    "convt_ts.onnx": "OnnxConvT", "convt_dyn.onnx": "OnnxConvT",
    "helper_anon.onnx": "HelperTwin",
}


def ref_name(fixture: str) -> str:
    return fixture.split("/")[0].removesuffix(".onnx")


def reference_tensors(path: Path) -> dict[str, np.ndarray]:
    """Every initializer and Constant-node tensor as onnx reads it (external data loaded)."""
    m = onnx.load(str(path))
    out = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    for node in m.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = numpy_helper.to_array(a.t)
    return out


def same_values(got: torch.Tensor, want: np.ndarray) -> bool:
    if got.dtype == torch.bfloat16 or str(got.dtype).startswith("torch.float8"):
        bits, np_bits = (torch.int16, np.int16) if got.dtype == torch.bfloat16 else (torch.int8, np.int8)
        return np.array_equal(got.view(bits).numpy(), np.asarray(want).view(np_bits))
    return tuple(got.shape) == want.shape and np.array_equal(got.numpy(), want, equal_nan=want.dtype.kind == "f")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------ names and values

@pytest.mark.parametrize("fixture", list(FIXTURES))
def test_every_tensor_equals_onnx_numpy_helper(fixture):
    path = DATA / fixture
    want = reference_tensors(path)
    with open_checkpoint(path) as r:
        assert r.format == "onnx"
        metas, ex = r.metas(), r.extras()
        original = ex["original_keys"]
        assert set(original.values()) | set(ex["skipped"]) == set(want)  # every tensor listed or skipped
        for name, meta in metas.items():
            ref = want[original[name]]
            t = r.read(name)
            assert tuple(t.shape) == meta.shape == ref.shape, name
            assert same_values(t, ref), name
        for key in ex["skipped"]:
            assert is_anonymous(key), key  # only graph constants are left out


def test_names_come_from_the_consuming_node():
    with OnnxReader(DATA / "mlp_ts.onnx") as r:  # TorchScript exporter: onnx::MatMul_12 of /b/MatMul
        assert r.extras()["original_keys"]["b.weight"].startswith("onnx::MatMul_")
        assert r.layer_classes() == {"a": "Gemm", "b": "MatMul", "c": "Gemm"}
        assert r.layer_configs()["a"]["transB"] == 1 and r.layer_configs()["b"]["transB"] == 0
        assert any("stored (in, out)" in w and "b.weight" in w for w in r.warnings())
    with OnnxReader(DATA / "emb_dyn.onnx") as r:  # dynamo: val_N, named from the name_scopes metadata
        assert re.fullmatch(r"val_\d+", r.extras()["original_keys"]["head.weight"])
        assert r.layer_classes() == {"emb": "Gather", "ln": "LayerNormalization", "head": "MatMul"}
    with OnnxReader(DATA / "helper_anon.onnx") as r:  # tf2onnx-style scopes; a Constant node's weight
        assert r.extras()["original_keys"] == {
            "model.conv2d.weight": "const_fold_opt__3", "model.conv2d.bias": "const_fold_opt__4",
            "model.dense.weight": "const_fold_opt__5", "model.dense.bias": "const_fold_opt__6",
            "model.dense_1.weight": "const_fold_opt__8", "model.dense_1.bias": "const_fold_opt__9"}
        assert r.extras()["skipped"] == ["const_axes__7"]
        assert r.layer_configs()["model.dense"]["transB"] == 0
    with OnnxReader(DATA / "cnn_ts.onnx") as r:
        assert r.layer_classes()["layer1.1"] == "BatchNormalization"
        assert abs(r.layer_configs()["bn1"]["epsilon"] - 1e-5) < 1e-9
        assert r.extras()["execution_order"] == ["conv1", "bn1", "layer1.0", "layer1.1", "fc"]


@pytest.mark.parametrize("parts,path", [
    (["layer1", "layer1.0", "conv1"], "layer1.0.conv1"),
    (["features", "features.0"], "features.0"),
    (["net", "net.0", "net.0.1"], "net.0.1"),
    (["conv", "conv"], "conv.conv"),               # an attribute named like its parent
    (["blocks", "blocks.3", "attn", "qkv"], "blocks.3.attn.qkv"),
    (["", "layer1", "layer1.0", "layer1.0.conv1"], "layer1.0.conv1"),  # full names
    ([], ""),
])
def test_scope_paths_join_into_module_names(parts, path):
    assert _join_scopes(parts) == path


def test_external_data_is_read_from_its_own_file():
    with OnnxReader(DATA / "mlp_ext" / "model.onnx") as ext, OnnxReader(DATA / "mlp_ts.onnx") as inline:
        assert ext.metas() == inline.metas()
        for n in ext.metas():
            assert torch.equal(ext.read(n), inline.read(n))
            f, b, e = ext.locate(n)
            assert Path(f.path).name == "weights.bin" and e - b == ext.metas()[n].nbytes
        assert [Path(p).name for p in ext.files()] == ["model.onnx", "weights.bin"]


def test_the_reader_never_imports_onnx():
    code = ("import sys; from ckptfix.formats import open_checkpoint\n"
            f"r = open_checkpoint({str(DATA / 'helper_anon.onnx')!r}); [r.read(n) for n in r.metas()]\n"
            "assert not any(m == 'onnx' or m.startswith('onnx.') for m in sys.modules), 'onnx imported'")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_metadata_first_tensor_bytes_on_demand(tmp_path, monkeypatch):
    """Opening a 16 MiB model reads its structure, not its raw_data; read() reads one tensor."""
    big = np.arange(4 << 20, dtype=np.float32).reshape(1024, 4096)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="/proj/MatMul")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1024])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4096])],
                          [numpy_helper.from_array(big, "w"), numpy_helper.from_array(big[:2], "other")])
    p = tmp_path / "big.onnx"
    p.write_bytes(helper.make_model(g).SerializeToString())
    read = []
    real_pread, real_preadv = os.pread, os.preadv
    monkeypatch.setattr(os, "pread", lambda fd, n, off: read.append(n) or real_pread(fd, n, off))
    monkeypatch.setattr(os, "preadv",
                        lambda fd, bufs, off: read.append(sum(map(len, bufs))) or real_preadv(fd, bufs, off))
    r = OnnxReader(p)
    assert p.stat().st_size > 16 << 20 and sum(read) < 256 << 10, sum(read)
    read.clear()
    assert torch.equal(r.read("other"), torch.from_numpy(big[:2]))
    assert sum(read) == big[:2].nbytes
    monkeypatch.undo()
    assert set(r.metas()) == {"w", "other"}
    r.close()


# ------------------------------------------------------------------------------ into PyTorch

@pytest.mark.parametrize("fixture,twin", list(FIXTURES.items()))
def test_converts_into_the_pytorch_model(cli, tmp_path, fixture, twin):
    src = DATA / fixture
    before = sha(src)
    rules = tmp_path / "rules.yaml"
    r = cli("suggest", src, "--target", f"{NETS}:{twin}", "-o", rules)
    assert r.exit_code == 0, r.stdout + r.stderr
    text = rules.read_text()
    assert "cannot fix" not in text and "review:" not in text.split("\n", 2)[2], text
    out = tmp_path / "out.safetensors"
    r = cli("apply", src, "-r", rules, "-o", out)
    assert r.exit_code == 0, r.stderr
    model = getattr(onnx_nets, twin)()
    model.load_state_dict(load_file(out), strict=True)
    model.eval()
    ref = np.load(DATA / f"{ref_name(fixture)}.npz")
    with torch.no_grad():
        y = model(torch.from_numpy(ref["x"]))
    assert_outputs_close(y, torch.from_numpy(ref["y"]))
    assert sha(src) == before
    stored_io = {"mlp_ts.onnx": ["b"], "mlp_ext/model.onnx": ["b"], "emb_ts.onnx": ["head"], "emb_dyn.onnx": ["head"],
                 "helper_anon.onnx": ["hidden", "out"]}.get(fixture, [])
    for layer in stored_io:  # the (in, out) weights, square ones too, are transposed
        assert re.search(rf"transpose: \{{keys: .*{layer}\\\\?\.weight.*IO->OI", text), text


def test_a_square_matmul_weight_is_not_taken_under_its_own_name(tmp_path):
    """b.weight (7 x 7) is the Linear's name and shape, but stored (in, out): same names must not win."""
    from ckptfix import api
    from ckptfix.suggest import suggest

    tgt = api.resolve_target(f"{NETS}:OnnxMLP")
    with OnnxReader(DATA / "mlp_ts.onnx") as r:
        s = suggest(r.metas(), tgt, classes=r.layer_classes(), configs=r.layer_configs(), source_format="onnx",
                    layer_order=r.extras()["execution_order"])
    assert s.fits and "transpose: {keys: ^b\\.weight$, layout: IO->OI}" in s.text


def test_inspect_reads_the_layers(cli):
    r = cli("inspect", DATA / "helper_anon.onnx")
    assert r.exit_code == 0, r.stderr
    assert "Gemm(in=4, out=8)" in r.stdout and "MatMul(in=8, out=8)" in r.stdout
    assert "Conv(in=3, out=4, kernel=3x3)" in r.stdout


def test_layer_table_instancenorm_and_onnx_forms():
    m = torch.nn.InstanceNorm2d(5, affine=True)
    attrs = T.torch_attrs(m)
    assert T.TORCH["InstanceNorm2d"].shapes(attrs) == {k: tuple(v.shape) for k, v in m.state_dict().items()}
    m = torch.nn.InstanceNorm1d(3, track_running_stats=True)
    assert T.TORCH["InstanceNorm1d"].shapes(T.torch_attrs(m)) == {k: tuple(v.shape) for k, v in m.state_dict().items()}
    def read(shapes, cls, cfg):
        return [(u.kind, u.attrs, {k: getattr(c, "layout", None) for k, c in u.tensors.items()})
                for _, _, us in T.keras_readings(shapes, cls, cfg) for u in us]
    s = {"weight": (6, 4), "bias": (4,)}
    assert read(s, "Gemm", {"transB": 0}) == [("Linear", {"in_features": 6, "out_features": 4, "bias": True},
                                                {"weight": "IO->OI", "bias": None})]
    assert read({"weight": (4, 6), "bias": (4,)}, "Gemm", {"transB": 1})[0][2] == {"weight": None, "bias": None}
    assert read(s, "Gemm", {"transB": 0, "transA": 1}) == []
    assert read(s, "Gemm", {"transB": 0, "alpha": 2.0}) == []
    assert read({"weight": (6, 2, 3, 3)}, "ConvTranspose", {"group": 2})[0][:2] == (
        "ConvTranspose2d", {"in_channels": 6, "out_channels": 4, "kernel_size": (3, 3), "groups": 2, "bias": False})
    # Keras' BatchNormalization and ONNX's share a class name; their variables tell them apart
    bn = {v: (3,) for v in ("weight", "bias", "running_mean", "running_var")}
    assert [f.framework for f, _, _ in T.keras_readings(bn, "BatchNormalization", {})] == ["ONNX"]
    kb = {v: (3,) for v in ("gamma", "beta", "moving_mean", "moving_variance")}
    assert [f.framework for f, _, _ in T.keras_readings(kb, "BatchNormalization", {})] == ["Keras"]


# ------------------------------------------------------------------------------ hostile files


def one_line_error(cli, path: Path, pattern: str) -> str:
    before = sha(path) if path.is_file() else None
    r = cli("inspect", path)
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert len(lines) == 1 and "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    assert lines[0].startswith(f"ckptfix: error: {path}: "), r.stderr
    assert re.search(pattern, lines[0]), lines[0]
    if before is not None:
        assert sha(path) == before
    return lines[0]


def model_bytes(inits=(), nodes=(), ir_version=8) -> bytes:
    g = helper.make_graph(list(nodes), "g", [], [], list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = ir_version
    return m.SerializeToString()


def write(tmp_path: Path, data: bytes, name: str = "m.onnx") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_truncated_model(cli, tmp_path):
    data = (DATA / "cnn_ts.onnx").read_bytes()
    one_line_error(cli, write(tmp_path, data[: len(data) // 2]), r"truncated or corrupt ONNX model: .*runs past")


def test_a_length_past_the_end(cli, tmp_path):
    t = numpy_helper.from_array(np.ones(4, np.float32), "w")
    data = bytearray(model_bytes([t]))
    i = data.index(bytes(t.raw_data))      # raw_data's length is the byte before its payload
    assert data[i - 1] == 16
    data[i - 1] = 0x7F                      # 127 bytes declared, 16 there
    one_line_error(cli, write(tmp_path, bytes(data)), r"length 127 runs past the message")


def external_tensor(location: str, offset: int | None = None, length: int | None = None) -> TensorProto:
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4], data_location=TensorProto.EXTERNAL)
    for k, v in (("location", location), ("offset", offset), ("length", length)):
        if v is not None:
            t.external_data.add(key=k, value=str(v))
    return t


@pytest.mark.parametrize("location,pattern", [
    ("../outside.bin", r"external data '\.\./outside\.bin': resolves to .*outside the checkpoint's directory"),
    ("/etc/hostname", r"external data location '/etc/hostname' is an absolute path: refused"),
    ("sub/../../outside.bin", r"outside the checkpoint's directory"),
    ("missing.bin", r"external data 'missing\.bin': no such file"),
    ("w\0.bin", r"NUL byte"),   # found by tests/fuzz.py (onnx seed 5): was a ValueError from realpath
])
def test_external_data_must_stay_inside_the_model_directory(cli, tmp_path, location, pattern):
    d = tmp_path / "model"
    (d / "sub").mkdir(parents=True)
    (tmp_path / "outside.bin").write_bytes(b"\0" * 16)
    one_line_error(cli, write(d, model_bytes([external_tensor(location, 0, 16)])), pattern)


@pytest.mark.parametrize("offset,length,pattern", [
    (8, 16, r"at \[8, 24\) runs past the end of that file \(16 bytes\)"),
    (0, 12, r"need 16 bytes but its external data holds 12"),
    (-4, 16, r"negative external data offset"),
    ("x", 16, r"are not integers"),
])
def test_external_ranges_are_checked(cli, tmp_path, offset, length, pattern):
    (tmp_path / "w.bin").write_bytes(b"\0" * 16)
    one_line_error(cli, write(tmp_path, model_bytes([external_tensor("w.bin", offset, length)])), pattern)


def test_raw_data_must_match_dims_and_dtype(cli, tmp_path):
    t = numpy_helper.from_array(np.ones((2, 3), np.float32), "w")
    t.dims[:] = [2, 4]
    one_line_error(cli, write(tmp_path, model_bytes([t])), r"'w': dims \[2, 4\] of float32 need 32 bytes but its "
                                                           r"raw_data holds 24")


def test_negative_dims(cli, tmp_path):
    t = numpy_helper.from_array(np.ones(4, np.float32), "w")
    t.dims[:] = [-1, -4]
    one_line_error(cli, write(tmp_path, model_bytes([t])), r"'w' has negative dims \[-1, -4\]")


@pytest.mark.parametrize("raw", [True, False])
def test_a_dims_product_past_any_memory(cli, tmp_path, raw):
    t = numpy_helper.from_array(np.ones(4, np.float32), "w") if raw else \
        helper.make_tensor("w", TensorProto.FLOAT, [4], [1.0] * 4)
    t.dims[:] = [2 ** 62, 2 ** 62, 16]
    one_line_error(cli, write(tmp_path, model_bytes([t])), r"need \d{30,} (bytes|values) but it")


def test_typed_varints_are_counted_exactly_on_read(tmp_path):
    t = helper.make_tensor("w", TensorProto.INT64, [3], [1, 2, 3])
    t.dims[:] = [2]  # 3 bytes of packed varints hold 1 to 3 values: only decoding them tells
    p = write(tmp_path, model_bytes([t]))
    with OnnxReader(p) as r:
        with pytest.raises(InputError, match=r"'w': dims \[2\] need 2 values but it holds 3"):
            r.read("w")


def nested_if_model(depth: int) -> bytes:
    """Hand-encoded: a graph holding an If node whose then_branch is a graph holding ... ``depth`` deep."""
    def varint(n: int) -> bytes:
        out = b""
        while True:
            b, n = n & 0x7F, n >> 7
            out += bytes([b | (0x80 if n else 0)])
            if not n:
                return out

    def ld(field: int, payload: bytes) -> bytes:
        return varint(field << 3 | 2) + varint(len(payload)) + payload

    graph = ld(2, b"leaf")
    for _ in range(depth):
        attr = ld(1, b"then_branch") + varint(20 << 3) + varint(5) + ld(6, graph)
        graph = ld(1, ld(4, b"If") + ld(5, attr))
    return varint(1 << 3) + varint(8) + ld(7, graph)


def test_deeply_nested_subgraphs(cli, tmp_path):
    ok = write(tmp_path, nested_if_model(10), "ok.onnx")
    with OnnxReader(ok) as r:
        assert r.metas() == {}
    one_line_error(cli, write(tmp_path, nested_if_model(5000)), r"subgraphs nested more than 64 deep")


def test_other_malformations(cli, tmp_path):
    a = numpy_helper.from_array(np.ones(2, np.float32), "w")
    one_line_error(cli, write(tmp_path, model_bytes([a, a]), "dup.onnx"), r"two tensors are named 'w'")
    bad = numpy_helper.from_array(np.ones(2, np.float32), "w")
    bad.name = "x"
    data = model_bytes([bad]).replace(b"\x42\x01x", b"\x42\x01\xff")  # name "x" -> an invalid UTF-8 byte
    one_line_error(cli, write(tmp_path, data, "utf8.onnx"), r"name is not UTF-8")
    both = numpy_helper.from_array(np.ones(2, np.float32), "w")
    both.float_data[:] = [1.0, 2.0]
    one_line_error(cli, write(tmp_path, model_bytes([both]), "both.onnx"), r"both raw_data and typed data")
    one_line_error(cli, write(tmp_path, model_bytes(ir_version=7)[:-1] + b"\xff", "cut.onnx"),
                   r"truncated or corrupt ONNX model")


def test_strings_and_complex_are_left_out_with_a_warning(cli, tmp_path):
    inits = [helper.make_tensor("vocab", TensorProto.STRING, [2], [b"a", b"b"]),
             numpy_helper.from_array(np.ones(2, np.complex64), "z"),
             numpy_helper.from_array(np.ones(2, np.float32), "w")]
    p = write(tmp_path, model_bytes(inits))
    with OnnxReader(p) as r:
        assert list(r.metas()) == ["w"]
        assert any("vocab (string)" in w and "z (complex64)" in w for w in r.warnings()), r.warnings()


# ------------------------------------------------------------------------------ property test

DTYPES = [TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.INT8,
          TensorProto.INT16, TensorProto.INT32, TensorProto.INT64, TensorProto.UINT8, TensorProto.UINT16,
          TensorProto.UINT32, TensorProto.UINT64, TensorProto.BOOL]


@st.composite
def tensors(draw, i: int):
    code = draw(st.sampled_from(DTYPES))
    dims = draw(st.lists(st.integers(0, 3), max_size=3))
    np_dtype = helper.tensor_dtype_to_np_dtype(code)
    n = int(np.prod(dims)) if dims else 1
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    if code in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16):
        vals = (rng.standard_normal(n) * 100).astype(np.float32)
    elif code == TensorProto.BOOL:
        vals = rng.integers(0, 2, n).astype(bool)
    else:
        info = np.iinfo(np_dtype)
        vals = rng.integers(info.min, info.max, n, dtype=np.int64 if info.min < 0 else np.uint64, endpoint=True)
    raw = draw(st.booleans())
    name = f"t{i}"
    t = helper.make_tensor(name, code, dims, vals.tolist())  # typed: float_data, int32_data, ...
    if raw:  # the same values as raw_data (bfloat16's bit patterns via numpy_helper)
        t = helper.make_tensor(name, code, dims, numpy_helper.to_array(t).tobytes(), raw=True)
    as_constant = draw(st.booleans())
    return t, as_constant


@settings(max_examples=60)
@given(st.integers(1, 5).flatmap(lambda k: st.tuples(*[tensors(i) for i in range(k)])))
def test_random_models_read_back_equal_to_numpy_helper(tmp_path_factory, drawn):
    inits = [t for t, c in drawn if not c]
    nodes = [helper.make_node("Constant", [], [t.name], value=t) for t, c in drawn if c]
    p = tmp_path_factory.mktemp("prop") / "m.onnx"
    p.write_bytes(model_bytes(inits, nodes))
    with OnnxReader(p) as r:
        metas = r.metas()
        assert set(metas) == {t.name for t, _ in drawn}
        for t, _ in drawn:
            want = numpy_helper.to_array(t)
            got = r.read(t.name)
            assert metas[t.name].shape == want.shape
            assert r._tensors[t.name].where == ("raw" if t.HasField("raw_data") else "typed")
            assert same_values(got, want), (t.name, got, want)


def test_a_graph_naming_too_many_values_is_refused(monkeypatch):
    import ckptfix.formats.onnx_io as O

    monkeypatch.setattr(O, "MAX_GRAPH_NAMES", 10)
    with pytest.raises(InputError, match=r"names more than 10 node inputs and outputs"):
        OnnxReader(DATA / "mlp_ts.onnx")


def test_mutated_models_read_or_fail_with_one_input_error(tmp_path):
    """Seeded byte mutations of every fixture (a small version of the search run while writing the
    reader: 19,000 mutations, none escaped as another exception)."""
    import random

    rng = random.Random(13)
    seeds = sorted(DATA.glob("*.onnx"))
    for i in range(300):
        data = bytearray(rng.choice(seeds).read_bytes())
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(data))
            if rng.random() < 0.6:
                data[pos] = rng.randrange(256)
            else:
                del data[pos:pos + rng.randint(1, 16)]
        p = tmp_path / f"m{i}.onnx"
        p.write_bytes(bytes(data))
        try:
            with open_checkpoint(p) as r:
                for n in r.metas():
                    r.read(n)
        except InputError as e:
            assert "\n" not in str(e)


# ------------------------------------------------------------- tensors no layer of the table reads

def _recurrent_node(op: str, scope: str, k: int, rng, hidden=3, inp=2, directions=2):
    """An ONNX ``op`` node named as torch's TorchScript exporter names it (``/rnn/LSTM``), its
    weights anonymous initializers (``onnx::LSTM_<n>``), as ``torch.onnx.export`` writes a torch
    LSTM/GRU/RNN."""
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    shapes = {"W": (directions, gates * hidden, inp), "R": (directions, gates * hidden, hidden),
              "B": (directions, 2 * gates * hidden)}
    if op == "LSTM":
        shapes["P"] = (directions, 3 * hidden)
    inits = {role: numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), f"onnx::{op}_{10 * k + i}")
             for i, (role, s) in enumerate(shapes.items())}
    ins = [f"x{k}", inits["W"].name, inits["R"].name, inits["B"].name]
    if op == "LSTM":
        ins += ["", "", "", inits["P"].name]
    node = helper.make_node(op, ins, [f"y{k}"], name=f"/{scope}/{op}" + (f"_{k}" if k else ""),
                            hidden_size=hidden, direction="bidirectional")
    return node, inits


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("layers", [1, 2])
def test_recurrent_weights_are_listed_not_left_out(tmp_path, op, layers):
    """Found by attacking: an exported torch LSTM/GRU (anonymous ``onnx::LSTM_N`` weights, no
    layer of the table reading them) had its weights left out as "graph constants", silently:
    ``apply`` wrote the model without them. They are listed under ONNX's names, per node
    (``_l<k>`` when one module has several, torch's num_layers), equal to numpy_helper, with a
    warning that their layout is ONNX's."""
    rng = np.random.default_rng(7)
    nodes, inits = [], {}
    for k in range(layers):
        node, ins = _recurrent_node(op, "rnn", k, rng)
        nodes.append(node)
        inits.update({(k, role): t for role, t in ins.items()})
    p = write(tmp_path, model_bytes(list(inits.values()), nodes))
    with OnnxReader(p) as r:
        want = {f"rnn.{role}" + (f"_l{k}" if layers > 1 else ""): t for (k, role), t in inits.items()}
        assert list(r.metas()) == list(want)
        for name, t in want.items():
            assert same_values(r.read(name), numpy_helper.to_array(t)), name
            assert r.extras()["original_keys"][name] == t.name
        assert r.extras()["skipped"] == []
        assert any("LSTM/GRU/RNN" in w and "rnn.W" in w for w in r.warnings()), r.warnings()
        assert r.layer_classes() == {}  # no torch layer of the table holds ONNX's layout


@pytest.mark.parametrize("dims", [(65,), (9, 8), (2, 3, 4, 5)])
def test_an_anonymous_tensor_too_big_for_a_graph_constant_is_left_out_with_a_warning(tmp_path, dims):
    """Whatever op reads it: an anonymous tensor no layer of the table reads is left out as a
    graph constant; if it holds more than a few shape/axes values, a warning names it."""
    big = numpy_helper.from_array(np.ones(dims, np.float32), "onnx::Mul_5")
    axes = numpy_helper.from_array(np.array([0, 1], np.int64), "onnx::Unsqueeze_6")
    nodes = [helper.make_node("Mul", ["x", "onnx::Mul_5"], ["y"], name="/scale/Mul"),
             helper.make_node("Unsqueeze", ["y", "onnx::Unsqueeze_6"], ["z"], name="/Unsqueeze")]
    with OnnxReader(write(tmp_path, model_bytes([big, axes], nodes))) as r:
        assert r.metas() == {} and r.extras()["skipped"] == ["onnx::Mul_5", "onnx::Unsqueeze_6"]
        ws = [w for w in r.warnings() if "anonymous tensor(s)" in w]
        assert len(ws) == 1 and f"onnx::Mul_5 {list(dims)} (input of Mul)" in ws[0], r.warnings()
        assert "Unsqueeze_6" not in ws[0]


def _q(name: str, values, dtype=np.int8):
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


QUANTIZED_GRAPHS = {  # what onnxruntime.quantization writes: QDQ, QOperator, dynamic
    "qdq": lambda: ([_q("fc.weight_quantized", np.arange(12).reshape(3, 4)), _q("fc.weight_scale", 0.1, np.float32),
                     _q("fc.weight_zero_point", 0)],
                    [helper.make_node("DequantizeLinear", ["fc.weight_quantized", "fc.weight_scale",
                                                           "fc.weight_zero_point"], ["w"], name="/fc/DQ"),
                     helper.make_node("Gemm", ["x", "w"], ["y"], name="/fc/Gemm", transB=1)]),
    "qoperator": lambda: ([_q("c.weight_quantized", np.ones((2, 1, 3, 3))), _q("c.weight_scale", 0.5, np.float32),
                           _q("c.weight_zero_point", 0), _q("x_scale", 0.5, np.float32), _q("x_zp", 0, np.uint8)],
                          [helper.make_node("QLinearConv", ["x", "x_scale", "x_zp", "c.weight_quantized",
                                                            "c.weight_scale", "c.weight_zero_point", "x_scale",
                                                            "x_zp"], ["y"], name="/c/QLinearConv")]),
    "dynamic": lambda: ([_q("fc.weight_quantized", np.ones((4, 3))), _q("fc.weight_zero_point", 0)],
                        [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"], name="/fc/DQL"),
                         helper.make_node("MatMulInteger", ["xq", "fc.weight_quantized", "xz", "fc.weight_zero_point"],
                                          ["y"], name="/fc/MatMulInteger")]),
}


@pytest.mark.parametrize("kind", list(QUANTIZED_GRAPHS))
def test_a_quantized_graph_says_its_weights_are_not_dequantized(tmp_path, kind):
    """Found by attacking with onnxruntime.quantization outputs: the int8 weights were listed
    with no word that they are quantized (and a float model needs them dequantized). They still
    read as stored, equal to numpy_helper; a warning says the graph is quantized."""
    inits, nodes = QUANTIZED_GRAPHS[kind]()
    with OnnxReader(write(tmp_path, model_bytes(inits, nodes))) as r:
        for name, key in r.extras()["original_keys"].items():
            ref = next(numpy_helper.to_array(t) for t in inits if t.name == key)
            assert same_values(r.read(name), ref), name
        assert any(name.endswith("weight_quantized") for name in r.metas())
        ws = [w for w in r.warnings() if "the graph is quantized" in w]
        assert len(ws) == 1 and "not dequantized" in ws[0], r.warnings()


def test_a_float_graph_does_not_say_it_is_quantized():
    for fixture in FIXTURES:
        with open_checkpoint(DATA / fixture) as r:
            assert not any("quantized" in w for w in r.warnings()), (fixture, r.warnings())


@pytest.mark.parametrize("alpha,beta,bias,warned", [
    (0.5, 1.0, True, True), (1.0, 2.0, True, True), (-1.0, 1.0, False, True),
    (1.0, 2.0, False, False),   # beta scales a bias there is none of
    (1.0, 1.0, True, False)])
@pytest.mark.parametrize("named", [True, False])
def test_a_gemm_that_scales_says_its_weights_are_not_a_linears(cli, tmp_path, alpha, beta, bias, warned, named):
    """Found by attacking: a Gemm with alpha=0.5 converted into a torch Linear silently (`suggest`:
    "fits", no rules; the outputs half what onnxruntime gives). The reader warns, and suggest
    prints the reader's warnings as apply does."""
    rng = np.random.default_rng(1)
    w_name, b_name = ("fc.weight", "fc.bias") if named else ("onnx::Gemm_1", "onnx::Gemm_2")
    inits = [numpy_helper.from_array(rng.standard_normal((2, 3)).astype(np.float32), w_name)]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(2).astype(np.float32), b_name))
    node = helper.make_node("Gemm", ["x", w_name] + ([b_name] if bias else []), ["y"], name="/fc/Gemm",
                            transB=1, alpha=alpha, beta=beta)
    p = write(tmp_path, model_bytes(inits, [node]))
    with OnnxReader(p) as r:
        assert set(r.metas()) == ({"fc.weight", "fc.bias"} if bias else {"fc.weight"})
        assert any("Gemm node(s) scale" in w for w in r.warnings()) == warned, r.warnings()
    spec = tmp_path / "fc.yaml"
    spec.write_text(f"fc: Linear(3, 2, bias={bias})\n")
    s = cli("suggest", p, "--target", spec)
    assert ("Gemm node(s) scale their product or bias: fc (" in s.stderr) == warned, s.stderr


def _ln(scope: str, i: int, w: str, b: str):
    return helper.make_node("LayerNormalization", [f"x{i}", w, b], [f"x{i + 1}"], name=f"/{scope}/LayerNormalization")


@pytest.mark.parametrize("case", ["merged", "folded", "called-twice"])
def test_a_tensor_two_layers_read_is_listed_under_both(cli, tmp_path, case):
    """Found by attacking with the dynamo exporter: it merges initializers of equal values (a
    TransformerEncoderLayer's norm2 reads norm1.weight/bias), so norm2 was missing and `suggest`
    could not fit the model. A tensor its own layer and another read is listed under both names
    (same bytes); a scope that disagrees with the name (a folded Conv+BatchNorm in scope b1 reading
    c1.weight) or a module called twice (/fc/, /fc_1/) adds no name."""
    rng = np.random.default_rng(2)
    w = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "norm1.weight")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "norm1.bias")
    if case == "merged":
        nodes, want = [_ln("norm1", 0, w.name, b.name), _ln("norm2", 1, w.name, b.name)], {
            "norm1.weight": w, "norm1.bias": b, "norm2.weight": w, "norm2.bias": b}
    elif case == "folded":
        nodes, want = [_ln("other", 0, w.name, b.name)], {"norm1.weight": w, "norm1.bias": b}
    else:
        nodes, want = [_ln("norm1", 0, w.name, b.name), _ln("norm1_1", 1, w.name, b.name)], {
            "norm1.weight": w, "norm1.bias": b}
    p = write(tmp_path, model_bytes([w, b], nodes))
    with OnnxReader(p) as r:
        assert sorted(r.metas()) == sorted(want)
        for name, t in want.items():
            assert same_values(r.read(name), numpy_helper.to_array(t)), name
            assert r.extras()["original_keys"][name] == t.name
        assert any("read by another layer too" in x for x in r.warnings()) == (case == "merged")
    if case == "merged":
        spec = tmp_path / "t.yaml"
        spec.write_text("norm1: LayerNorm(4)\nnorm2: LayerNorm(4)\n")
        s = cli("suggest", p, "--target", spec)
        assert s.exit_code == 0 and "result fits" in s.stdout, s.stdout + s.stderr


def test_a_gemm_alpha_of_another_type_is_no_crash(tmp_path):
    """A file may give alpha as ints or a string (the checker would refuse it; the reader must not
    crash on it)."""
    w = numpy_helper.from_array(np.ones((2, 3), np.float32), "fc.weight")
    for attr in (helper.make_attribute("alpha", [1, 2]), helper.make_attribute("alpha", "x")):
        node = helper.make_node("Gemm", ["x", "fc.weight"], ["y"], name="/fc/Gemm", transB=1)
        node.attribute.append(attr)
        with OnnxReader(write(tmp_path, model_bytes([w], [node]))) as r:
            assert list(r.metas()) == ["fc.weight"]
            assert any("Gemm node(s) scale" in x for x in r.warnings())
