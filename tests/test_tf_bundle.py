"""TF tensor bundles: the real fixtures, and tables built by tests/tf_bundle_writer.py."""

from __future__ import annotations

import random
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptfix.errors import InputError
from ckptfix.formats import _crc32c
from ckptfix.formats.tf_bundle import (TFCheckpointReader, _decode_entry, parse_block,
                                       read_block, read_table)

sys.path.insert(0, str(Path(__file__).parent))
import tf_bundle_writer as tw  # noqa: E402

DATA = Path(__file__).parent / "data" / "keras"

TF1_RENAME = {"weights": "kernel", "biases": "bias"}
from conftest import KERAS_EXPECTED as EXPECTED  # noqa: E402
TF1_EXPECTED = {
    "tiny_cnn": ["bn1/beta", "bn1/gamma", "bn1/moving_mean", "bn1/moving_variance",
                 "conv1/biases", "conv1/weights", "conv2/biases", "conv2/weights",
                 "fc/biases", "fc/weights"],
    "conv1d": ["conv1d/biases", "conv1d/weights", "conv1d_1/biases", "conv1d_1/weights",
               "dense/biases", "dense/weights"],
}


def tf1_to_keras(name: str) -> str:
    layer, var = name.rsplit("/", 1)
    return f"{layer}/{TF1_RENAME.get(var, var)}"


# ----------------------------------------------------------------------------- crc32c

def test_crc32c_known_values():
    assert _crc32c.crc32c(b"") == 0
    assert _crc32c.crc32c(b"123456789") == 0xE3069283
    assert _crc32c.crc32c(b"\x00" * 32) == 0x8A9136AA  # RFC 3720 test vectors
    assert _crc32c.crc32c(b"\xff" * 32) == 0x62A8AB43
    assert _crc32c.crc32c(bytes(range(32))) == 0x46DD794E
    assert _crc32c.unmask(_crc32c.mask(0x12345678)) == 0x12345678


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=0, max_size=300), st.integers(0, 70000), st.integers(0, 2**32 - 1))
def test_crc32c_vectorised_matches_bytewise(head, extra, seed):
    data = head + random.Random(seed).randbytes(extra)
    expected = _crc32c._raw(data, 0xFFFFFFFF) ^ 0xFFFFFFFF
    assert _crc32c.crc32c(data) == expected
    cut = len(data) // 3
    assert _crc32c.crc32c(data[cut:], _crc32c.crc32c(data[:cut])) == expected


# ----------------------------------------------------------------------------- real fixtures

@pytest.mark.parametrize("model", ["tiny_cnn", "conv1d"])
def test_tf2_fixture(model):
    ref = np.load(DATA / f"{model}.npz")
    with TFCheckpointReader(DATA / f"{model}_tf2") as r:
        metas = r.metas()
        assert list(metas) == EXPECTED[model]
        for name, meta in metas.items():
            arr = r.read_array(name)
            assert meta.shape == ref[name].shape == arr.shape
            assert meta.dtype == "float32"
            np.testing.assert_array_equal(arr, ref[name])
        ex = r.extras()
        assert ex["skipped"] == ["_CHECKPOINTABLE_OBJECT_GRAPH"]
        assert ex["original_keys"][EXPECTED[model][0]].endswith(
            "/_kernel/.ATTRIBUTES/VARIABLE_VALUE")
        assert r.layer_classes() == {}
        assert r.warnings() == []


@pytest.mark.parametrize("model", ["tiny_cnn", "conv1d"])
def test_tf1_fixture(model):
    ref = np.load(DATA / f"{model}.npz")
    with TFCheckpointReader(DATA / f"{model}_tf1") as r:
        metas = r.metas()
        assert list(metas) == TF1_EXPECTED[model]
        for name, meta in metas.items():
            arr = r.read_array(name)
            want = ref[tf1_to_keras(name)]
            assert meta.shape == want.shape
            np.testing.assert_array_equal(arr, want)
        # torch path through NumpyReader.read
        t = r.read(TF1_EXPECTED[model][-1])
        assert tuple(t.shape) == metas[TF1_EXPECTED[model][-1]].shape


@pytest.mark.parametrize("form", ["dir", "prefix", "index", "data"])
def test_path_forms(form):
    d = DATA / "tiny_cnn_tf1"
    path = {"dir": d, "prefix": d / "model.ckpt", "index": d / "model.ckpt.index",
            "data": d / "model.ckpt.data-00000-of-00001"}[form]
    with TFCheckpointReader(path) as r:
        assert len(r.metas()) == 10


def test_checkpoint_file_with_absolute_stale_path(tmp_path):
    shutil.copytree(DATA / "conv1d_tf1", tmp_path / "moved")
    ck = tmp_path / "moved" / "checkpoint"
    ck.chmod(0o644)
    ck.write_text('model_checkpoint_path: "/somewhere/else/model.ckpt"\n')
    with TFCheckpointReader(tmp_path / "moved") as r:
        assert "conv1d/weights" in r.metas()


def test_directory_without_checkpoint_or_index(tmp_path):
    with pytest.raises(InputError, match="no 'checkpoint' file"):
        TFCheckpointReader(tmp_path)


def test_checkpoint_file_names_missing_prefix(tmp_path):
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "nope"\n')
    with pytest.raises(InputError, match="nope"):
        TFCheckpointReader(tmp_path)


def test_missing_index(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        TFCheckpointReader(tmp_path / "absent")


# ----------------------------------------------------------------------------- writer validation

@pytest.mark.parametrize("sub", ["tiny_cnn_tf1", "tiny_cnn_tf2", "conv1d_tf1", "conv1d_tf2"])
def test_writer_reproduces_fixture_index_byte_for_byte(sub):
    index = next((DATA / sub).glob("*.index"))
    data = index.read_bytes()
    pairs = read_table(data)
    assert tw.build_table(pairs) == data
    assert pairs[0] == (b"", tw.encode_header())
    for key, value in pairs[1:]:
        e = _decode_entry(value, key.decode())
        assert tw.encode_entry(e["dtype"], e["shape"], e["shard_id"], e["offset"], e["size"],
                               e["crc32c"]) == value


def test_writer_string_tensor_matches_tensorflow():
    r = TFCheckpointReader(DATA / "tiny_cnn_tf2")
    entry = r.entries["_CHECKPOINTABLE_OBJECT_GRAPH"]
    raw = r._read_raw("_CHECKPOINTABLE_OBJECT_GRAPH", verify=False)
    graph = raw[2 + 4:]  # varint length (2 bytes here) + u32 length checksum
    encoded, crc = tw.string_tensor_bytes([graph])
    assert encoded == raw
    assert crc == entry["crc32c"]


@pytest.mark.parametrize("model", ["tiny_cnn", "conv1d"])
def test_fixture_rewritten_into_many_blocks(tmp_path, model):
    """Every entry of the real TF2 checkpoint rewritten with tiny blocks reads back the same."""
    src = TFCheckpointReader(DATA / f"{model}_tf2")
    tensors = {}
    for name, key in src.extras()["original_keys"].items():
        tensors[key] = src.read_array(name)
    raw = src._read_raw("_CHECKPOINTABLE_OBJECT_GRAPH", verify=False)
    tensors["_CHECKPOINTABLE_OBJECT_GRAPH"] = [raw[6:]]
    prefix = tw.write_bundle(tmp_path / "ckpt", tensors, block_size=64, restart_interval=2)
    data = Path(str(prefix) + ".index").read_bytes()
    assert _count_data_blocks(data) >= len(tensors) // 2
    with TFCheckpointReader(prefix) as r:
        assert list(r.metas()) == list(src.metas())
        for name in r.metas():
            np.testing.assert_array_equal(r.read_array(name), src.read_array(name))


# ----------------------------------------------------------------------------- table structure

def _count_data_blocks(index_bytes: bytes) -> int:
    footer = index_bytes[-48:]
    from ckptfix.formats.tf_bundle import read_varint
    pos = 0
    for _ in range(2):
        _, pos = read_varint(footer, pos)
    off, pos = read_varint(footer, pos)
    size, pos = read_varint(footer, pos)
    return len(parse_block(read_block(index_bytes, off, size, "index"), "index"))


def _tensors(n: int = 40, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        # long shared prefixes exercise the key prefix compression
        out[f"model/block_{i // 7}/layer_{i:03d}/kernel"] = rng.standard_normal(
            (i % 4 + 1, 3)).astype(np.float32)
    return out


@pytest.mark.parametrize("block_size,restart", [(1, 1), (64, 1), (64, 3), (200, 4),
                                                (256 * 1024, 16), (256 * 1024, 1)])
def test_many_blocks_and_restart_points(tmp_path, block_size, restart):
    tensors = _tensors()
    prefix = tw.write_bundle(tmp_path / "m", tensors, block_size=block_size,
                             restart_interval=restart)
    data = Path(str(prefix) + ".index").read_bytes()
    nblocks = _count_data_blocks(data)
    if block_size <= 64:
        assert nblocks > 5
    with TFCheckpointReader(prefix) as r:
        assert list(r.metas()) == sorted(tensors)
        for name, arr in tensors.items():
            np.testing.assert_array_equal(r.read_array(name), arr)


def test_block_with_many_restart_points_parses():
    bb = tw.BlockBuilder(restart_interval=3)
    keys = [f"k/{i:04d}".encode() for i in range(20)]
    for k in keys:
        bb.add(k, k[::-1])
    block = bb.finish()
    assert int.from_bytes(block[-4:], "little") == 7
    assert parse_block(block, "b") == [(k, k[::-1]) for k in keys]


def test_restart_point_not_at_entry_boundary_is_rejected():
    bb = tw.BlockBuilder(restart_interval=2)
    for i in range(6):
        bb.add(f"key{i}".encode(), b"v")
    block = bytearray(bb.finish())
    n = int.from_bytes(block[-4:], "little")
    base = len(block) - 4 - 4 * n
    block[base + 4:base + 8] = (int.from_bytes(block[base + 4:base + 8], "little") + 1) \
        .to_bytes(4, "little")
    from ckptfix.formats.tf_bundle import _Corrupt
    with pytest.raises(_Corrupt):
        parse_block(bytes(block), "b")


def test_multiple_shards_and_dtypes(tmp_path):
    tensors = {
        "a/f16": np.arange(6, dtype=np.float16).reshape(2, 3),
        "a/f64": np.linspace(0, 1, 5),
        "a/i64": np.arange(4, dtype=np.int64),
        "a/i8": np.arange(-3, 3, dtype=np.int8),
        "a/u8": np.arange(7, dtype=np.uint8),
        "a/bool": np.array([True, False, True]),
        "a/scalar": np.float32(3.5).reshape(()),
        "a/empty": np.zeros((0, 4), np.float32),
        "b/bf16": np.array([0x3F80, 0x4000, 0xBF80], dtype=np.uint16),
    }
    prefix = tw.write_bundle(tmp_path / "s", tensors, num_shards=3, block_size=50,
                             dtype_overrides={"b/bf16": tw.DT_BFLOAT16})
    assert len(list(tmp_path.glob("s.data-*-of-00003"))) == 3
    with TFCheckpointReader(tmp_path / "s.index") as r:
        m = r.metas()
        assert m["b/bf16"].dtype == "bfloat16"
        assert m["a/f16"].dtype == "float16" and m["a/bool"].dtype == "bool"
        assert m["a/scalar"].shape == ()
        for name, arr in tensors.items():
            if name == "b/bf16":
                import torch
                t = r.read(name)
                assert t.dtype == torch.bfloat16
                assert t.float().tolist() == [1.0, 2.0, -1.0]
            else:
                np.testing.assert_array_equal(r.read_array(name), arr)
        assert r.extras()["num_shards"] == 3


def test_big_endian_bundle(tmp_path):
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    prefix = tw.write_bundle(tmp_path / "be", {"w": arr}, endianness=1)
    with TFCheckpointReader(prefix) as r:
        out = r.read_array("w")
        np.testing.assert_array_equal(out, arr)
        assert out.dtype == np.dtype("<f4")


def test_tf1_slots_and_bookkeeping_are_skipped(tmp_path):
    w = np.ones((2, 2), np.float32)
    tensors = {"conv1/weights": w, "conv1/weights/Adam": w, "conv1/weights/Adam_1": w,
               "global_step": np.array(5, np.int64), "beta1_power": np.float32(0.9).reshape(()),
               "conv1/biases": np.zeros(2, np.float32)}
    prefix = tw.write_bundle(tmp_path / "t1", tensors)
    with TFCheckpointReader(prefix) as r:
        assert list(r.metas()) == ["conv1/biases", "conv1/weights"]
        assert set(r.extras()["skipped"]) == {"conv1/weights/Adam", "conv1/weights/Adam_1",
                                              "global_step", "beta1_power"}


def test_tf2_without_graph_names_keeps_object_paths(tmp_path):
    v = "/.ATTRIBUTES/VARIABLE_VALUE"
    tensors = {f"layer_with_weights-{i}/kernel{v}": np.full((2,), i, np.float32)
               for i in range(12)}
    tensors[f"save_counter{v}"] = np.array(1, np.int64)
    tensors[f"optimizer/iter{v}"] = np.array(1, np.int64)
    tensors[f"layer_with_weights-0/kernel/.OPTIMIZER_SLOT/optimizer/m{v}"] = np.zeros(2, np.float32)
    prefix = tw.write_bundle(tmp_path / "k2", tensors)
    with TFCheckpointReader(prefix) as r:
        names = list(r.metas())
        # natural order: 0, 1, ..., 11 (not 0, 1, 10, 11, 2, ...)
        assert names == [f"layer_with_weights-{i}/kernel" for i in range(12)]
        assert len(r.extras()["skipped"]) == 3


def test_tf2_object_graph_full_names(tmp_path):
    """Keras 2 style keys resolved to layer/var through the graph's full_name attributes."""
    v = "/.ATTRIBUTES/VARIABLE_VALUE"
    keys = ["layer_with_weights-0/kernel", "layer_with_weights-0/bias",
            "layer_with_weights-1/kernel"]
    full = ["dense/kernel:0", "dense/bias", "dense_1/kernel"]
    nodes = [{"children": [(1, "layer_with_weights-0"), (2, "layer_with_weights-1")]},
             {"children": [(3, "kernel"), (4, "bias")]},
             {"children": [(5, "kernel")]}]
    for k, f in zip(keys, full):
        nodes.append({"attributes": [("VARIABLE_VALUE", f, k + v)]})
    tensors = {k + v: np.full((2,), i, np.float32) for i, k in enumerate(keys)}
    tensors["_CHECKPOINTABLE_OBJECT_GRAPH"] = [tw.encode_object_graph(nodes)]
    prefix = tw.write_bundle(tmp_path / "g", tensors, block_size=30)
    with TFCheckpointReader(prefix) as r:
        assert list(r.metas()) == ["dense/kernel", "dense/bias", "dense_1/kernel"]
        np.testing.assert_array_equal(r.read_array("dense/bias"), np.full(2, 1, np.float32))


def test_partitioned_variable_is_skipped_with_warning(tmp_path):
    pairs = [(b"", tw.encode_header()),
             (b"part", tw.encode_entry(1, (4, 2), slices=2)),
             (b"w", tw.encode_entry(1, (1,), 0, 0, 4, _crc32c.mask(_crc32c.crc32c(b"\0" * 4))))]
    (tmp_path / "p.index").write_bytes(tw.build_table(pairs))
    (tmp_path / "p.data-00000-of-00001").write_bytes(b"\0" * 4)
    with TFCheckpointReader(tmp_path / "p") as r:
        assert list(r.metas()) == ["w"]
        assert "partitioned" in r.warnings()[0]


# ----------------------------------------------------------------------------- corruption

@pytest.fixture
def small(tmp_path):
    prefix = tw.write_bundle(tmp_path / "c", _tensors(12), block_size=80, restart_interval=2)
    return prefix


def _index(prefix) -> Path:
    return Path(str(prefix) + ".index")


def _data(prefix) -> Path:
    return Path(f"{prefix}.data-00000-of-00001")


def test_corrupt_block_crc(small):
    p = _index(small)
    data = bytearray(p.read_bytes())
    data[10] ^= 0x01  # inside the first data block
    p.write_bytes(bytes(data))
    with pytest.raises(InputError, match="CRC") as e:
        TFCheckpointReader(small)
    assert str(p) in str(e.value)


def test_corrupt_index_block_crc(small):
    p = _index(small)
    data = bytearray(p.read_bytes())
    data[-48 - 6] ^= 0x40  # last content byte of the index block (before its trailer)
    p.write_bytes(bytes(data))
    with pytest.raises(InputError, match="index block.*CRC"):
        TFCheckpointReader(small)


def test_corrupt_tensor_data(small):
    d = _data(small)
    data = bytearray(d.read_bytes())
    data[5] ^= 0xFF
    d.write_bytes(bytes(data))
    r = TFCheckpointReader(small)
    names = list(r.metas())  # metadata does not touch data
    bad = [n for n in names if r.entries[n]["offset"] <= 5 < r.entries[n]["offset"]
           + r.entries[n]["size"]]
    with pytest.raises(InputError, match="CRC") as e:
        r.read_array(bad[0])
    assert str(d) in str(e.value)
    ok = [n for n in names if n not in bad]
    r.read_array(ok[0])


@pytest.mark.parametrize("keep", [0, 1, 20, 47, 48, 100, -1, -30])
def test_truncated_index(small, keep):
    p = _index(small)
    data = p.read_bytes()
    p.write_bytes(data[:keep] if keep >= 0 else data[:len(data) + keep])
    with pytest.raises(InputError) as e:
        TFCheckpointReader(small)
    assert str(p) in str(e.value)


def test_index_cut_at_block_boundary_names_truncation(small):
    p = _index(small)
    data = p.read_bytes()
    # keep the footer but drop the middle: offsets now point past the end
    p.write_bytes(data[:40] + data[-48:])
    with pytest.raises(InputError, match="past the end|CRC"):
        TFCheckpointReader(small)


def test_truncated_data_file(small):
    d = _data(small)
    data = d.read_bytes()
    d.write_bytes(data[: len(data) // 2])
    r = TFCheckpointReader(small)
    last = max(r.metas(), key=lambda n: r.entries[n]["offset"])
    with pytest.raises(InputError, match="truncated"):
        r.read_array(last)


def test_missing_data_file(small):
    _data(small).unlink()
    r = TFCheckpointReader(small)
    with pytest.raises(InputError, match="missing"):
        r.read_array(next(iter(r.metas())))


def test_bad_magic(small):
    p = _index(small)
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(InputError, match="magic"):
        TFCheckpointReader(small)


def test_snappy_block_type(tmp_path):
    # build a table whose only data block claims snappy compression (with a valid CRC)
    block = tw.BlockBuilder(16)
    block.add(b"", tw.encode_header())
    out = bytearray()
    data_handle = tw._write_block(out, block.finish(), block_type=1)
    meta = tw._write_block(out, tw.BlockBuilder(16).finish())
    idx = tw.BlockBuilder(1)
    idx.add(b"\x01", data_handle)
    index_handle = tw._write_block(out, idx.finish())
    footer = meta + index_handle
    out += footer + b"\0" * (40 - len(footer)) + bytes.fromhex("57fb808b247547db")
    (tmp_path / "z.index").write_bytes(bytes(out))
    (tmp_path / "z.data-00000-of-00001").write_bytes(b"")
    with pytest.raises(InputError, match="snappy"):
        TFCheckpointReader(tmp_path / "z")


def _one_entry_bundle(tmp_path, entry: bytes, data: bytes = b"\0" * 16, header=None):
    pairs = [(b"", header or tw.encode_header()), (b"w", entry)]
    (tmp_path / "e.index").write_bytes(tw.build_table(pairs))
    (tmp_path / "e.data-00000-of-00001").write_bytes(data)
    return tmp_path / "e"


def test_unknown_dtype(tmp_path):
    p = _one_entry_bundle(tmp_path, tw.encode_entry(99, (4,), 0, 0, 16, 1))
    with pytest.raises(InputError, match="unknown dtype code 99"):
        TFCheckpointReader(p)


def test_size_disagrees_with_shape(tmp_path):
    p = _one_entry_bundle(tmp_path, tw.encode_entry(1, (5,), 0, 0, 16, 1))
    with pytest.raises(InputError, match="needs 20 bytes"):
        TFCheckpointReader(p)


def test_offset_past_eof(tmp_path):
    p = _one_entry_bundle(tmp_path, tw.encode_entry(1, (4,), 0, 1000, 16, 1))
    r = TFCheckpointReader(p)
    with pytest.raises(InputError, match="past the end of the data file"):
        r.read_array("w")


def test_shard_id_out_of_range(tmp_path):
    p = _one_entry_bundle(tmp_path, tw.encode_entry(1, (4,), 3, 0, 16, 1))
    with pytest.raises(InputError, match="shard 3"):
        TFCheckpointReader(p)


def test_garbage_entry_proto(tmp_path):
    p = _one_entry_bundle(tmp_path, b"\x12\xff\xff\xff\x0f")
    with pytest.raises(InputError, match="entry 'w'"):
        TFCheckpointReader(p)


def test_missing_header(tmp_path):
    (tmp_path / "h.index").write_bytes(tw.build_table([(b"w", tw.encode_entry(1, (1,)))]))
    with pytest.raises(InputError, match="header"):
        TFCheckpointReader(tmp_path / "h")


def test_random_mutations_only_raise_input_error(tmp_path):
    prefix = tw.write_bundle(tmp_path / "f", _tensors(10), block_size=70, restart_interval=2)
    good = _index(prefix).read_bytes()
    rng = random.Random(1234)
    outcomes = {"ok": 0, "error": 0}
    for i in range(300):
        data = bytearray(good)
        kind = rng.randrange(3)
        if kind == 0:
            for _ in range(rng.randint(1, 3)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == 1:
            data = data[: rng.randrange(len(data))]
        else:
            pos = rng.randrange(len(data))
            data[pos:pos] = rng.randbytes(rng.randint(1, 8))  # seeded: a failing case replays
        _index(prefix).write_bytes(bytes(data))
        try:
            r = TFCheckpointReader(prefix)
            for name in r.metas():
                r.read_array(name)
            outcomes["ok"] += 1
        except InputError:
            outcomes["error"] += 1
    assert outcomes["error"] > 200


@settings(max_examples=30, deadline=None)
@given(names=st.sets(st.text(alphabet=st.characters(blacklist_characters="/\x00",
                                                     blacklist_categories=("Cs",)),
                             min_size=1, max_size=12), min_size=1, max_size=25),
       block_size=st.integers(1, 300), restart=st.integers(1, 20), shards=st.integers(1, 3))
def test_roundtrip_property(tmp_path_factory, names, block_size, restart, shards):
    tmp = tmp_path_factory.mktemp("prop")
    rng = np.random.default_rng(len(names))
    tensors = {f"t_{n}": rng.standard_normal(rng.integers(0, 4, size=rng.integers(0, 3)))
               .astype(np.float32) for n in names}
    prefix = tw.write_bundle(tmp / "p", tensors, block_size=block_size,
                             restart_interval=restart, num_shards=shards)
    with TFCheckpointReader(prefix) as r:
        assert list(r.metas()) == sorted(tensors, key=lambda k: k.encode())
        for name, arr in tensors.items():
            assert r.metas()[name].shape == arr.shape
            np.testing.assert_array_equal(r.read_array(name), arr)
