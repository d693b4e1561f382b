#!/usr/bin/env python
"""Mutation fuzzing of ckptfix's readers (issue 6).

Every mutated checkpoint must give either a result or a ckptfix error (a ``CkptfixError``,
exit 2 from the CLI): never another exception, a crash (SIGSEGV, SIGBUS, abort) or a hang; and
what is read must match what the reader declared (shapes, dtypes), what ``apply`` writes must
match what ``read`` returns, and formats that checksum their data (TF bundles, .npz) must never
return values that differ from the original file's.

Long runs (each case in a worker subprocess with a timeout, so crashes and hangs are caught; a
finding is saved with the mutated file(s) and a command that replays it)::

    .venv/bin/python tests/fuzz.py --format safetensors --seconds 600 --seed 1
    .venv/bin/python tests/fuzz.py --format all --seconds 3600 --findings fuzz-findings
    .venv/bin/python tests/fuzz.py --format npz --seed 1 --case 17   # replay one case in-process

As a module (tests/test_fuzz.py): ``build_corpus``, ``make_case``, ``run_case_inprocess`` and
``Worker`` (the subprocess harness).

A case is determined by (format, seed, case number): the seed corpus is built from small real
tensors with the real libraries (safetensors, torch.save, h5py, numpy) and the fixtures in
tests/data, and normalised to be byte-identical between runs.
"""

from __future__ import annotations

import argparse
import ast
import collections
import hashlib
import io
import json
import os
import pickletools
import random
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
DATA = TESTS / "data"
for _p in (str(ROOT), str(TESTS)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

FORMATS = ("safetensors", "pt", "pt-legacy", "keras-h5", "keras-weights", "keras-archive",
           "tf-bundle", "npy", "npz", "dcp", "onnx", "torchscript", "flax")


# =============================================================================================
# the seed corpus


def write_files(files: dict[str, bytes], entry: str, d: Path) -> Path:
    """Lay a seed's or a case's files out under ``d``; return the path given to the reader."""
    for n, b in files.items():
        (d / n).parent.mkdir(parents=True, exist_ok=True)
        (d / n).write_bytes(b)
    return d / entry


@dataclass
class Seed:
    name: str                        # "<format>/<what>"
    fmt: str
    files: dict[str, bytes]          # relative path -> content
    entry: str                       # what is given to open_checkpoint (relative)
    mutable: tuple[str, ...]         # files mutators may change, most interesting first
    kind: dict[str, str]             # file -> structure ("safetensors", "zip-pt", "pickle", ...)
    integrity: bool = False          # data is checksummed: accepted values must equal the seed's
    hints: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # file -> int fields

    def write(self, d: Path) -> Path:
        return write_files(self.files, self.entry, d)


def _st_bytes(tensors, metadata=None) -> bytes:
    from safetensors.torch import save

    return save(tensors, metadata=metadata)


def _small_tensors():
    import torch

    g = torch.Generator().manual_seed(0)
    return {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=g),
        "conv.bias": torch.randn(4, generator=g),
        "bn.running_var": torch.rand(4, generator=g) + 0.5,
        "bn.num_batches_tracked": torch.tensor(7),
        "emb.weight": torch.randn(5, 2, generator=g).to(torch.float16),
        "norm.weight": torch.ones(3, dtype=torch.bfloat16),
        "fc.weight": torch.randn(2, 6, generator=g).double(),
        "mask": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 3),
    }


def _torch_zip(records: list[tuple[str, bytes]], archive: str, *, align: int = 64,
               compress: set[str] = frozenset()) -> bytes:
    """A zip laid out like torch's writer (member data aligned to ``align``), deterministic."""
    import warnings

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are a mutation
        for name, data in records:
            full = f"{archive}/{name}"
            info = zipfile.ZipInfo(full, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if name in compress else zipfile.ZIP_STORED
            start = out.tell() + 30 + len(full.encode())
            pad = align - (start + 4) % align if align else 0  # torch's rule: 1..align bytes
            info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad if align else b""
            z.writestr(info, data)
    return out.getvalue()


def _torch_records(blob: bytes) -> tuple[str, list[tuple[str, bytes]]]:
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        names = z.namelist()
        archive = names[0].split("/", 1)[0]
        return archive, [(n.split("/", 1)[1], z.read(n)) for n in names]


def _pt_zip_bytes(obj) -> bytes:
    """torch.save, then rewritten with a fixed serialization id (torch's varies between runs)."""
    import torch

    bio = io.BytesIO()
    torch.save(obj, bio)
    archive, recs = _torch_records(bio.getvalue())
    recs = [(n, b"0" * len(d) if n == ".data/serialization_id" else d) for n, d in recs]
    return _torch_zip(recs, "archive")


def _pickle_ends(blob: bytes, start: int = 0, count: int = 99) -> list[int]:
    """End offsets (after STOP) of consecutive pickles in ``blob``."""
    ends = []
    pos = start
    while len(ends) < count and pos < len(blob):
        try:
            for op, _arg, p in pickletools.genops(io.BytesIO(blob[pos:])):
                if op.name == "STOP":
                    pos += p + 1
                    ends.append(pos)
                    break
            else:
                break
        except Exception:  # noqa: BLE001 - data after the pickles
            break
    return ends


ELEM_SIZE = {"FloatStorage": 4, "DoubleStorage": 8, "HalfStorage": 2, "BFloat16Storage": 2,
             "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1,
             "ByteStorage": 1, "BoolStorage": 1}


LEGACY_KEY_WIDTH = 14  # digits of a renumbered legacy storage key (torch's: a memory address)


def _pt_legacy_bytes(obj) -> tuple[bytes, list[tuple[int, int]]]:
    """torch's legacy format, made deterministic: its storage keys are memory addresses (and the
    storages are written in the keys' sorted order), so they are renumbered in order of first
    use and the storages reordered to match. Also returns the offsets of each storage's 8-byte
    element count."""
    import pickle

    import torch

    bio = io.BytesIO()
    torch.save(obj, bio, _use_new_zipfile_serialization=False)
    blob = bio.getvalue()
    ends = _pickle_ends(blob, count=5)
    keys = pickle.loads(blob[ends[3]:ends[4]])
    order: list[tuple[str, str]] = []  # (key, storage class) in order of first use
    last_global = ""
    last = None
    memo: dict = {}
    for op, arg, _ in pickletools.genops(io.BytesIO(blob[ends[2]:ends[3]])):
        if op.name == "GLOBAL":
            last = last_global = ("global", arg.split(" ")[-1])
        elif op.name in ("BINPUT", "LONG_BINPUT"):
            memo[arg] = last
        elif op.name in ("BINGET", "LONG_BINGET"):
            last = memo.get(arg)
            if isinstance(last, tuple):
                last_global = last
        else:
            last = arg
        if isinstance(last, str) and last in keys and last not in [k for k, _ in order]:
            order.append((last, last_global[1]))
    sizes = dict(order)
    records = {}
    pos = ends[4]
    for k in keys:  # the file's order
        n = int.from_bytes(blob[pos:pos + 8], "little")
        end = pos + 8 + n * ELEM_SIZE[sizes[k]]
        records[k] = blob[pos:end]
        pos = end
    assert pos == len(blob), "legacy storage layout not as expected"
    # a fixed width: the addresses have 14 decimal digits in the main heap (0x55...) but 15 in an
    # mmapped arena (0x7f...), which depends on what the process did before -- the bytes (and a
    # test that looks for b"X\x0e\x00\x00\x00" + key) changed with the order the tests ran in
    new_name = {k: str(i).zfill(LEGACY_KEY_WIDTH) for i, (k, _) in enumerate(order)}
    main = blob[ends[2]:ends[3]]
    for k, new in new_name.items():
        main = main.replace(b"X" + len(k).to_bytes(4, "little") + k.encode(),
                            b"X" + len(new).to_bytes(4, "little") + new.encode())
    out = blob[:ends[2]] + main + pickle.dumps([new_name[k] for k, _ in order], protocol=2)
    hints = []
    for k, _ in order:
        hints.append((len(out), 8))
        out += records[k]
    return out, hints


def _h5_bytes(build: Callable, **kw) -> bytes:
    import h5py

    bio = io.BytesIO()
    with h5py.File(bio, "w", **kw) as f:
        build(f)
    return bio.getvalue()


def _legacy_h5(f) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    layers = {"conv": {"conv/kernel:0": rng.standard_normal((3, 3, 2, 4)).astype("f4"),
                       "conv/bias:0": np.arange(4, dtype="f4")},
              "bn": {"bn/gamma:0": np.ones(4, "f4"), "bn/beta:0": np.zeros(4, "f4"),
                     "bn/moving_mean:0": np.full(4, 0.5, "f4"),
                     "bn/moving_variance:0": np.full(4, 2.0, "f4")},
              "flatten": {},
              "fc": {"fc/kernel:0": rng.standard_normal((4, 3)).astype("f4"),
                     "fc/bias:0": np.arange(3, dtype="f8")}}
    f.attrs["layer_names"] = [n.encode() for n in layers]
    f.attrs["backend"] = b"tensorflow"
    f.attrs["keras_version"] = b"2.15.0"
    for lname, ws in layers.items():
        g = f.create_group(lname)
        g.attrs["weight_names"] = [w.encode() for w in ws]
        for wname, arr in ws.items():
            g.create_dataset(wname, data=arr)
    cfg = {"class_name": "Sequential", "config": {"name": "m", "layers": [
        {"class_name": "Conv2D", "config": {"name": "conv", "strides": [2, 2], "padding": "same"}},
        {"class_name": "BatchNormalization", "config": {"name": "bn"}},
        {"class_name": "Flatten", "config": {"name": "flatten"}},
        {"class_name": "Dense", "config": {"name": "fc"}}]}}
    f.attrs["model_config"] = json.dumps(cfg).encode()


def _keras3_h5(f) -> None:
    import numpy as np

    rng = np.random.default_rng(1)
    specs = [("dense", "fc1", [rng.standard_normal((6, 4)).astype("f4"), np.arange(4, dtype="f4")]),
             ("batch_normalization", "bn", [np.ones(4, "f4"), np.zeros(4, "f4"),
                                             np.zeros(4, "f4"), np.ones(4, "f4")]),
             ("dense_1", "head", [rng.standard_normal((4, 2)).astype("f2"), np.zeros(2, "f2")])]
    layers = f.create_group("layers")
    for group, user, arrays in specs:
        v = layers.create_group(group).create_group("vars")
        v.attrs["name"] = user
        for i, a in enumerate(arrays):
            v.create_dataset(str(i), data=a)
    f.create_group("optimizer").create_group("vars")
    f.create_group("vars")


KERAS3_CONFIG = {"module": "keras", "class_name": "Sequential", "config": {"name": "m", "layers": [
    {"module": "keras.layers", "class_name": "Dense", "config": {"name": "fc1", "units": 4}},
    {"module": "keras.layers", "class_name": "BatchNormalization", "config": {"name": "bn"}},
    {"module": "keras.layers", "class_name": "Dense", "config": {"name": "head", "units": 2}}]}}


def _zip_bytes(members: list[tuple[str, bytes]], compress: set[str] = frozenset()) -> bytes:
    import warnings

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are a mutation
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if name in compress else zipfile.ZIP_STORED
            z.writestr(info, data)
    return out.getvalue()


def _npy_bytes(arr, version=None) -> bytes:
    import numpy as np

    bio = io.BytesIO()
    np.lib.format.write_array(bio, np.asanyarray(arr), version=version, allow_pickle=False)
    return bio.getvalue()


def _npz_bytes(arrays: dict, compressed: bool = False) -> bytes:
    # like np.savez: members "<name>.npy"; built here with a fixed date for reproducibility
    return _zip_bytes([(f"{k}.npy", _npy_bytes(v)) for k, v in arrays.items()],
                      compress={f"{k}.npy" for k in arrays} if compressed else set())


def _tf_files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())
            if p.name.endswith(".index") or ".data-" in p.name}


def build_corpus() -> dict[str, list[Seed]]:
    """format -> seeds. Deterministic bytes."""
    import numpy as np
    import torch

    from tf_bundle_writer import write_bundle

    corpus: dict[str, list[Seed]] = {f: [] for f in FORMATS}
    small = _small_tensors()

    def add(fmt, what, files, entry=None, mutable=None, kind="raw", integrity=False, hints=None):
        entry = entry or next(iter(files))
        mutable = tuple(mutable or files)
        kinds = kind if isinstance(kind, dict) else {f: kind for f in files}
        corpus[fmt].append(Seed(f"{fmt}/{what}", fmt, files, entry, mutable, kinds, integrity,
                                hints or {}))

    # safetensors: written by the safetensors library
    st_small = {k: v for k, v in small.items()}
    add("safetensors", "mixed", {"m.safetensors": _st_bytes(st_small, {"format": "pt"})},
        kind="safetensors")
    seed_sd = torch.load(DATA / "torch" / "seed_conv10.pt", weights_only=True)
    add("safetensors", "seed_conv10", {"m.safetensors": _st_bytes(seed_sd)}, kind="safetensors")

    # PyTorch zip: the real seed file, and a container with views sharing one storage
    add("pt", "seed_conv10", {"m.pt": (DATA / "torch" / "seed_conv10.pt").read_bytes()},
        kind="zip-pt")
    base = torch.arange(24, dtype=torch.float32)
    container = {"state_dict": collections.OrderedDict(
        [("w", base.view(4, 6)), ("w_t", base.view(4, 6).t()), ("row", base[6:12]),
         ("b", small["conv.bias"]), ("h", small["emb.weight"]),
         ("n", small["bn.num_batches_tracked"])]),
        "epoch": 3, "hyper_parameters": {"lr": 0.1, "name": "x"}}
    add("pt", "container-views", {"m.pt": _pt_zip_bytes(container)}, kind="zip-pt")

    # TorchScript archives (torch.jit.save): tools/make_torchscript_fixtures.py's
    for what in ("convbn_scripted", "seq_traced"):
        add("torchscript", what, {"m.pt": (DATA / "torchscript" / f"{what}.pt").read_bytes()}, kind="zip-pt")

    # PyTorch legacy (non-zip)
    legacy_sd = collections.OrderedDict([("weight", seed_sd["weight"][:2].clone()),
                                         ("bias", seed_sd["bias"].clone()),
                                         ("steps", torch.tensor([1, 2], dtype=torch.int64))])
    blob, hints = _pt_legacy_bytes(legacy_sd)
    add("pt-legacy", "state_dict", {"m.pt": blob}, kind="pickle", hints={"m.pt": hints})
    legacy_views = {"model": {"a": base.view(4, 6), "a_row": base[6:12], "h": small["emb.weight"]},
                    "epoch": 1}
    blob, hints = _pt_legacy_bytes(legacy_views)
    add("pt-legacy", "container-views", {"m.pt": blob}, kind="pickle", hints={"m.pt": hints})

    # Keras legacy .h5: the real fixture (whole model, tf.keras) and a small weights-only file
    add("keras-h5", "conv1d_legacy", {"m.h5": (DATA / "keras" / "conv1d_legacy.h5").read_bytes()},
        kind="h5")
    add("keras-h5", "weights-only", {"m.h5": _h5_bytes(_legacy_h5, libver="latest")}, kind="h5")

    # Keras 3 .weights.h5
    add("keras-weights", "conv1d", {"m.weights.h5": (DATA / "keras" / "conv1d.weights.h5").read_bytes()},
        kind="h5")
    k3 = _h5_bytes(_keras3_h5)
    add("keras-weights", "small", {"m.weights.h5": k3}, kind="h5")

    # .keras archives
    add("keras-archive", "conv1d", {"m.keras": (DATA / "keras" / "conv1d.keras").read_bytes()},
        kind="zip-keras")
    add("keras-archive", "small", {"m.keras": _zip_bytes([
        ("metadata.json", json.dumps({"keras_version": "3.6.0"}).encode()),
        ("config.json", json.dumps(KERAS3_CONFIG).encode()),
        ("model.weights.h5", k3)])}, kind="zip-keras")

    # TF bundles: real TF1 and TF2 checkpoints, and one from the test writer with tiny blocks,
    # two shards and a string tensor
    tf2 = _tf_files(DATA / "keras" / "conv1d_tf2")
    add("tf-bundle", "conv1d_tf2", tf2, entry="ckpt", mutable=["ckpt.index", *sorted(tf2)[:1]],
        kind={n: "tf-index" if n.endswith(".index") else "raw" for n in tf2}, integrity=True)
    tf1 = _tf_files(DATA / "keras" / "conv1d_tf1")
    add("tf-bundle", "conv1d_tf1", tf1, entry="model.ckpt",
        mutable=["model.ckpt.index", "model.ckpt.data-00000-of-00001"],
        kind={n: "tf-index" if n.endswith(".index") else "raw" for n in tf1}, integrity=True)
    with tempfile.TemporaryDirectory() as td:
        rng = np.random.default_rng(2)
        write_bundle(Path(td) / "b", {
            "dense/kernel": rng.standard_normal((3, 2)).astype("f4"),
            "dense/bias": np.arange(2, dtype="f8"),
            "dense/kernel/Adam": np.zeros((3, 2), "f4"),
            "emb": np.arange(6, dtype=np.uint16).reshape(2, 3),
            "global_step": np.array(5, dtype=np.int64),
            "scalar": np.array(1.5, dtype="f2"),
            "names": [b"alpha", b"beta"],
        }, block_size=64, restart_interval=2, num_shards=2, dtype_overrides={"emb": 14})
        built = _tf_files(Path(td))
    # a SavedModel's variables (tf_keras: metrics, optimizer slots; per-variable names)
    sm = _tf_files(DATA / "savedmodel" / "tfkeras" / "variables")
    add("tf-bundle", "savedmodel_tfkeras", sm, entry="variables", mutable=sorted(sm),
        kind={n: "tf-index" if n.endswith(".index") else "raw" for n in sm}, integrity=True)
    add("tf-bundle", "small-blocks", built, entry="b", mutable=sorted(built, key=lambda n: not n.endswith(".index")),
        kind={n: "tf-index" if n.endswith(".index") else "raw" for n in built}, integrity=True)

    # torch.distributed.checkpoint: written by torch (tools/make_dcp_fixtures.py); the directory is
    # named by its .metadata pickle, each .distcp holds one torch.save archive per chunk
    for case in ("single", "fsdp2"):
        d = DATA / "dcp" / case
        files = {p.name: p.read_bytes() for p in sorted(d.iterdir())}
        add("dcp", case, files, entry=".metadata", mutable=sorted(files), kind="raw")

    # ONNX: exported by torch (both exporters), external data, onnx.helper's typed fields
    for case in ("cnn_ts", "emb_dyn", "helper_anon"):
        add("onnx", case, {"m.onnx": (DATA / "onnx" / f"{case}.onnx").read_bytes()}, kind="raw")
    ext = DATA / "onnx" / "mlp_ext"
    files = {p.name: p.read_bytes() for p in sorted(ext.iterdir())}
    add("onnx", "external", files, entry=next(n for n in files if n.endswith(".onnx")), mutable=sorted(files),
        kind="raw")

    # Flax msgpack: flax.serialization.to_bytes (tools/make_flax_fixtures.py), one with chunked arrays
    for case in ("cnn", "mlp_chunked", "trainstate"):
        add("flax", case, {"m.msgpack": (DATA / "flax" / f"{case}.msgpack").read_bytes()}, kind="raw")

    # .npy
    add("npy", "f32", {"a.npy": _npy_bytes(np.arange(12, dtype="f4").reshape(3, 4))}, kind="npy")
    add("npy", "fortran-f64", {"a.npy": _npy_bytes(np.asfortranarray(np.arange(6.0).reshape(2, 3)))},
        kind="npy")
    add("npy", "bigendian-v2", {"a.npy": _npy_bytes(np.arange(5, dtype=">i4"), version=(2, 0))},
        kind="npy")
    add("npy", "scalar-f16", {"a.npy": _npy_bytes(np.array(2.5, dtype="f2"))}, kind="npy")

    # .npz: stored and deflated archives of small arrays, and the real fixture
    arrays = {"w": np.arange(12, dtype="f4").reshape(3, 4), "b": np.array([1, 2], dtype="i8"),
              "nested/m": np.array([True, False]), "f": np.asfortranarray(np.ones((2, 2), "f2"))}
    add("npz", "stored", {"a.npz": _npz_bytes(arrays)}, kind="zip-npz", integrity=True)
    add("npz", "deflated", {"a.npz": _npz_bytes(arrays, compressed=True)}, kind="zip-npz",
        integrity=True)
    add("npz", "conv1d", {"a.npz": (DATA / "keras" / "conv1d.npz").read_bytes()}, kind="zip-npz",
        integrity=True)
    return corpus


def corpus_digest(corpus: dict[str, list[Seed]]) -> str:
    h = hashlib.sha256()
    for fmt in sorted(corpus):
        for s in corpus[fmt]:
            for n in sorted(s.files):
                h.update(s.name.encode() + n.encode() + s.files[n])
    return h.hexdigest()[:16]


# =============================================================================================
# mutators
#
# A mutator takes (rng, files, target, seed) and returns (new files, description); it may raise
# Skip when its structure is not there. ``CHECKSUMS`` mutators recompute checksums (the result is
# a valid file with different content), so the value oracle does not apply to them.


class Skip(Exception):
    pass


INTERESTING_8 = (0, 1, 0x7F, 0x80, 0xFF, 0x20, 0x40, 0xFE)
INTERESTING = (0, 1, 2, 3, 7, 8, 16, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
               0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32, 1 << 53, 1 << 62, (1 << 63) - 1,
               1 << 63, (1 << 64) - 1)
SIGNATURES = (b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07",
              b"PK\x07\x08", b"\x89HDF", b"OHDR", b"OCHK", b"TREE", b"HEAP", b"SNOD", b"GCOL",
              b"FRHP", b"FHDB", b"FSHD", b"FSSE", b"BTHD", b"BTLF", b"BTIN", b"\x93NUMPY",
              b"\x80\x02", b"\x80\x04", b"{", b"q\x00", b"X\x0e\x00")


def _hotspots(data: bytes) -> list[int]:
    out = []
    for sig in SIGNATURES:
        i = data.find(sig)
        while i != -1 and len(out) < 400:
            out.append(i)
            i = data.find(sig, i + 1)
    return out


def _pos(rng: random.Random, data: bytes, end_ok: bool = False) -> int:
    n = len(data) + (1 if end_ok else 0)
    if n <= 0:
        raise Skip
    r = rng.random()
    if r < 0.45:
        return rng.randrange(n)
    if r < 0.65:
        return rng.randrange(min(n, 256))
    if r < 0.75:
        return max(0, n - 1 - rng.randrange(min(n, 64)))
    spots = _hotspots(data)
    if not spots:
        return rng.randrange(n)
    return min(n - 1, rng.choice(spots) + rng.randrange(64))


def _int_value(rng: random.Random, old: int, width: int, size: int) -> int:
    r = rng.random()
    mask = (1 << (8 * width)) - 1
    if r < 0.45:
        v = rng.choice(INTERESTING + (size, size - 1, size + 1, size // 2))
    elif r < 0.85:
        v = old + rng.choice((-1, 1, -2, 2, -4, 4, -8, 8, -16, 16, -64, 64, -1000, 1000))
    else:
        v = rng.getrandbits(8 * width)
    return v & mask


def m_bitflip(rng, data):
    b = bytearray(data)
    k = rng.choice((1, 1, 1, 2, 3, 8))
    where = []
    for _ in range(k):
        p = _pos(rng, b)
        bit = rng.randrange(8)
        b[p] ^= 1 << bit
        where.append(f"{p}.{bit}")
    return bytes(b), f"bitflip {','.join(where)}"


def m_set_byte(rng, data):
    b = bytearray(data)
    p = _pos(rng, b)
    v = rng.choice(INTERESTING_8)
    b[p] = v
    return bytes(b), f"byte[{p}]={v:#x}"


def m_set_int(rng, data):
    width = rng.choice((2, 4, 4, 8))
    if len(data) < width:
        raise Skip
    p = min(_pos(rng, data), len(data) - width)
    order = "big" if rng.random() < 0.15 else "little"
    old = int.from_bytes(data[p:p + width], order)
    v = _int_value(rng, old, width, len(data))
    return data[:p] + v.to_bytes(width, order) + data[p + width:], f"u{8 * width}{order[0]}e[{p}]={v:#x}"


def m_truncate(rng, data):
    if not data:
        raise Skip
    r = rng.random()
    n = rng.randrange(len(data)) if r < 0.6 else (
        rng.randrange(min(len(data), 64)) if r < 0.8 else len(data) - 1 - rng.randrange(min(len(data), 32)))
    return data[:n], f"truncate at {n}"


def _chunk(rng, data):
    p = _pos(rng, data)
    n = rng.choice((1, 2, 4, 8, 16, 64, 256, 1024))
    return p, min(n, len(data) - p)


def m_delete(rng, data):
    if len(data) < 2:
        raise Skip
    p, n = _chunk(rng, data)
    return data[:p] + data[p + n:], f"delete [{p}:{p + n}]"


def m_duplicate(rng, data):
    if not data:
        raise Skip
    p, n = _chunk(rng, data)
    q = _pos(rng, data, end_ok=True)
    return data[:q] + data[p:p + n] + data[q:], f"copy [{p}:{p + n}] to {q}"


def m_insert(rng, data):
    q = _pos(rng, data, end_ok=True)
    n = rng.choice((1, 4, 8, 64, 512))
    fill = rng.choice((b"\x00", b"\xff", b"A", None))
    chunk = fill * n if fill else rng.randbytes(n)
    return data[:q] + chunk + data[q:], f"insert {n}x{fill!r} at {q}"


def m_overwrite(rng, data):
    if len(data) < 2:
        raise Skip
    p, n = _chunk(rng, data)
    q = rng.randrange(len(data))
    n = min(n, len(data) - q)
    return data[:q] + data[p:p + n] + data[q + n:], f"overwrite [{q}:{q + n}] with [{p}:{p + n}]"


RAW = (m_bitflip, m_bitflip, m_set_byte, m_set_int, m_set_int, m_truncate, m_delete,
       m_duplicate, m_insert, m_overwrite)


# -- JSON (safetensors header fields, Keras configs)

WEIRD_VALUES = (None, True, False, 0, -1, 1.5, 2 ** 64, -(2 ** 63), "", "x", "é\x00", "\ud800x",
                [], {}, [1, 2], {"a": 1}, [[[[[[]]]]]], "NaN")


def _json_paths(obj, path=()):
    yield path
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _json_paths(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _json_paths(v, path + (i,))


def _json_get(obj, path):
    for k in path:
        obj = obj[k]
    return obj


def mutate_json(rng: random.Random, obj):
    """One structural change anywhere in a JSON value. Returns (new value, description)."""
    import copy

    obj = copy.deepcopy(obj)
    paths = list(_json_paths(obj))
    path = rng.choice(paths[1:] or paths)
    if not path:
        return rng.choice(WEIRD_VALUES), "replace the whole document"
    parent = _json_get(obj, path[:-1])
    key = path[-1]
    old = parent[key]
    r = rng.random()
    if r < 0.15:
        del parent[key]
        return obj, f"delete {list(path)}"
    if r < 0.25 and isinstance(parent, dict):
        new_key = rng.choice(("", "name", "class_name", "config", "layers", key + "_", "__metadata__"))
        parent[new_key] = parent.pop(key)
        return obj, f"rename key {list(path)} -> {new_key!r}"
    if r < 0.35 and isinstance(parent, list):
        parent.insert(rng.randrange(len(parent) + 1), copy.deepcopy(old))
        return obj, f"duplicate {list(path)}"
    if isinstance(old, bool):
        new = not old
    elif isinstance(old, int) and r < 0.7:
        new = rng.choice((0, -1, old + 1, old - 1, 2 ** 31, 2 ** 63, 2 ** 64, old * 1000))
    elif isinstance(old, str) and r < 0.7:
        new = rng.choice(("", old + "_1", old.upper(), "Conv2D", "Dense", "BatchNormalization",
                          "Functional", "layers", "vars", "a/b", "../x", old[: len(old) // 2]))
    elif isinstance(old, list) and old and r < 0.7:
        new = list(old)
        rng.shuffle(new)
        new = new[: rng.randrange(len(new) + 1)]
    else:
        new = rng.choice(WEIRD_VALUES)
    parent[key] = new
    return obj, f"set {list(path)} = {new!r}"[:200]


# -- safetensors header


def _st_split(data: bytes):
    if len(data) < 8:
        raise Skip
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise Skip
    try:
        header = json.loads(data[8:8 + n])
    except ValueError:
        raise Skip from None
    if not isinstance(header, dict):
        raise Skip
    return header, data[8 + n:]


ST_DTYPES = ("F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3",
             "F8_E5M2", "U16", "U32", "U64", "C64", "F4", "f32", "", 5, None)
ST_ITEMSIZE = {"F64": 8, "I64": 8, "U64": 8, "C64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2,
               "BF16": 2, "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1,
               "F8_E5M2": 1}


def m_st_header(rng, data):
    header, body = _st_split(data)
    names = [k for k in header if k != "__metadata__"]
    if not names:
        raise Skip
    name = rng.choice(names)
    info = header[name]
    if not isinstance(info, dict):
        raise Skip
    r = rng.random()
    desc = ""
    raw_json = None
    if r < 0.15:
        info["dtype"] = rng.choice(ST_DTYPES)
        desc = f"{name}.dtype={info['dtype']!r}"
    elif r < 0.35:
        shape = list(info.get("shape") or [])
        choice = rng.randrange(9)
        if choice == 0 and shape:
            i = rng.randrange(len(shape))
            shape[i] = shape[i] + rng.choice((-1, 1))
        elif choice == 1 and shape:
            shape[rng.randrange(len(shape))] = rng.choice((0, 2 ** 31, 2 ** 62, 2 ** 63, 2 ** 64, -1))
        elif choice == 2:
            shape.insert(rng.randrange(len(shape) + 1), rng.choice((1, 0, 2)))
        elif choice == 3 and shape:
            shape.pop(rng.randrange(len(shape)))
        elif choice == 4:
            shape = shape[::-1]
        elif choice == 5 and shape:
            shape[rng.randrange(len(shape))] = rng.choice((2.0, "3", True, None, [1]))
        elif choice == 6:
            shape = rng.choice(([], None, "4", {"0": 4}, [0, 2 ** 63], [2 ** 32, 2 ** 32]))
        else:
            shape = [int(d) for d in shape if isinstance(d, int)]
            if shape:
                n = 1
                for d in shape:
                    n *= d
                shape = [n] if rng.random() < 0.5 else [1, *shape]  # same element count
        info["shape"] = shape
        desc = f"{name}.shape={shape!r}"
    elif r < 0.55:
        offs = info.get("data_offsets")
        if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs)):
            raise Skip
        b, e = offs
        choice = rng.randrange(8)
        if choice == 0:
            offs = [b + rng.choice((-1, 1, 8)), e]
        elif choice == 1:
            offs = [b, e + rng.choice((-1, 1, 8))]
        elif choice == 2:
            offs = [e, b]
        elif choice == 3:
            d = rng.choice((-1, 1, 4, -4))
            offs = [b + d, e + d]
        elif choice == 4:
            offs = [b, rng.choice((2 ** 63, 2 ** 64, -1, len(body) + 1))]
        elif choice == 5:
            other = header[rng.choice(names)]
            offs = list(other.get("data_offsets", offs)) if isinstance(other, dict) else offs
        elif choice == 6:
            offs = rng.choice(([b], [b, e, e], [str(b), e], [float(b), e], None, {}))
        else:
            offs = [0, 0]
        info["data_offsets"] = offs
        desc = f"{name}.data_offsets={offs!r}"
    elif r < 0.65:
        choice = rng.randrange(5)
        if choice == 0:
            del header[name]
            desc = f"delete {name}"
        elif choice == 1:
            new = rng.choice(("", "__metadata__", name + ".copy", "a" * 300, "é/..\\x", "x\x00y", "\udcff"))
            header[new] = dict(info)
            desc = f"add {new!r} with {name}'s entry"
        elif choice == 2:
            info[rng.choice(("extra", "dtype2", "offsets"))] = [1]
            desc = f"{name}: extra field"
        elif choice == 3:
            header[name] = rng.choice((None, [], "F32", 1))
            desc = f"{name} = {header[name]!r}"
        else:  # a duplicate key, which json.dumps cannot write
            other = rng.choice(names)
            raw_json = json.dumps(header)[:-1] + f", {json.dumps(other)}: {json.dumps(header[other])}}}"
            desc = f"duplicate key {other!r}"
    elif r < 0.75:
        meta = header.get("__metadata__")
        header["__metadata__"] = rng.choice(({"format": 1}, [], "pt", {"a": {"b": "c"}},
                                             {"format": "pt", "x" * 10: "y" * 10000}, None,
                                             {"format": "\ud800"}, {"\udcff": "pt"}))
        desc = f"__metadata__ {meta!r} -> {header['__metadata__']!r}"[:200]
    elif r < 0.9:
        # a consistent change: the file stays valid, with another layout
        dt = info.get("dtype")
        shape = info.get("shape")
        if dt not in ST_ITEMSIZE or not isinstance(shape, list):
            raise Skip
        same = [d for d in ST_ITEMSIZE if ST_ITEMSIZE[d] == ST_ITEMSIZE[dt] and d != dt]
        if same and rng.random() < 0.5:
            info["dtype"] = rng.choice(same)
            desc = f"{name}: reinterpret as {info['dtype']}"
        else:
            info["shape"] = shape[::-1] if len(shape) > 1 else [1, *shape]
            desc = f"{name}: reshape to {info['shape']}"
    else:
        header, desc = mutate_json(rng, header)
        desc = "header json: " + desc
    text = raw_json if raw_json is not None else json.dumps(
        header, separators=rng.choice(((",", ":"), (", ", ": "))))
    raw = text.encode("utf-8", "surrogatepass")
    if rng.random() < 0.7:
        raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + body, "st header: " + desc


# -- zip records

ZIP_RECORDS = {
    b"PK\x03\x04": ("local", [(4, 2, "version"), (6, 2, "flags"), (8, 2, "method"), (10, 2, "time"),
                              (14, 4, "crc"), (18, 4, "csize"), (22, 4, "usize"),
                              (26, 2, "name_len"), (28, 2, "extra_len")]),
    b"PK\x01\x02": ("central", [(4, 2, "made_by"), (6, 2, "version"), (8, 2, "flags"),
                                (10, 2, "method"), (16, 4, "crc"), (20, 4, "csize"), (24, 4, "usize"),
                                (28, 2, "name_len"), (30, 2, "extra_len"), (32, 2, "comment_len"),
                                (34, 2, "disk"), (38, 4, "ext_attr"), (42, 4, "offset")]),
    b"PK\x05\x06": ("eocd", [(4, 2, "disk"), (6, 2, "cd_disk"), (8, 2, "entries_disk"),
                             (10, 2, "entries"), (12, 4, "cd_size"), (16, 4, "cd_offset"),
                             (20, 2, "comment_len")]),
    b"PK\x06\x06": ("zip64-eocd", [(4, 8, "record_size"), (16, 4, "disk"), (20, 4, "cd_disk"),
                                   (24, 8, "entries_disk"), (32, 8, "entries"), (40, 8, "cd_size"),
                                   (48, 8, "cd_offset")]),
    b"PK\x06\x07": ("zip64-locator", [(4, 4, "disk"), (8, 8, "eocd64_offset"), (16, 4, "disks")]),
    b"PK\x07\x08": ("descriptor", [(4, 4, "crc"), (8, 4, "csize"), (12, 4, "usize")]),
}


def m_zip_field(rng, data):
    found = []
    for sig, (kind, fields) in ZIP_RECORDS.items():
        i = data.find(sig)
        while i != -1:
            found.append((i, kind, fields))
            i = data.find(sig, i + 1)
    if not found:
        raise Skip
    pos, kind, fields = rng.choice(found)
    off, width, fname = rng.choice(fields)
    if pos + off + width > len(data):
        raise Skip
    old = int.from_bytes(data[pos + off:pos + off + width], "little")
    if fname == "method":
        v = rng.choice((0, 8, 12, 14, 93, 98, 99, 1, 0xFFFF))
    elif fname == "flags":
        v = rng.choice((0, 1, 8, 0x800, 0x808, 0x41, 0x2000, 0xFFFF, old ^ (1 << rng.randrange(16))))
    elif fname in ("name_len", "extra_len", "comment_len") and rng.random() < 0.5:
        v = old + rng.choice((-1, 1, -4, 4, 200))
    else:
        v = _int_value(rng, old, width, len(data))
    v &= (1 << (8 * width)) - 1
    new = data[:pos + off] + v.to_bytes(width, "little") + data[pos + off + width:]
    return new, f"zip {kind}@{pos}.{fname}: {old:#x} -> {v:#x}"


def m_zip_name(rng, data):
    """Change a byte of a member name in a local or central header (same length)."""
    found = []
    for sig, name_at, len_at in ((b"PK\x03\x04", 30, 26), (b"PK\x01\x02", 46, 28)):
        i = data.find(sig)
        while i != -1:
            if i + len_at + 2 <= len(data):
                n = int.from_bytes(data[i + len_at:i + len_at + 2], "little")
                if n and i + name_at + n <= len(data):
                    found.append((i + name_at, n))
            i = data.find(sig, i + 1)
    if not found:
        raise Skip
    start, n = rng.choice(found)
    p = start + rng.randrange(n)
    c = rng.choice(b"/.\x00\xff\\0a1_")
    return data[:p] + bytes([c]) + data[p + 1:], f"zip name byte [{p}]={bytes([c])!r}"


def _zip_members(data: bytes) -> list[tuple[zipfile.ZipInfo, bytes]]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return [(i, z.read(i)) for i in z.infolist()]
    except Exception:  # noqa: BLE001 - already broken by an earlier mutation
        raise Skip from None


def _rezip(members: list[tuple[str, bytes, int]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # duplicate names are a mutation
            for name, data, method in members:
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = method
                z.writestr(info, data)
    return out.getvalue()


def _patch_crc(data: bytes, member: str) -> bytes:
    """Recompute a stored member's CRC-32 in its central and local headers (and descriptor)."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        info = z.getinfo(member)
    b = bytearray(data)
    n, m = struct.unpack("<HH", b[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + n + m
    crc = zlib.crc32(b[start:start + info.compress_size]).to_bytes(4, "little")
    if b[info.header_offset + 14:info.header_offset + 18] != b"\0\0\0\0":
        b[info.header_offset + 14:info.header_offset + 18] = crc
    end = start + info.compress_size
    if b[end:end + 4] == b"PK\x07\x08":
        b[end + 4:end + 8] = crc
    i = b.find(b"PK\x01\x02")
    while i != -1:
        nlen = int.from_bytes(b[i + 28:i + 30], "little")
        if bytes(b[i + 46:i + 46 + nlen]) == member.encode():
            b[i + 16:i + 20] = crc
        i = b.find(b"PK\x01\x02", i + 1)
    return bytes(b)


# -- pickles (PyTorch)

PICKLE_INTS = {"BININT1": 1, "BININT2": 2, "BININT": 4}
GLOBAL_SWAPS = (
    (b"FloatStorage", b"DoubleStorage"), (b"FloatStorage", b"HalfStorage"),
    (b"FloatStorage", b"LongStorage"), (b"FloatStorage", b"BoolStorage"),
    (b"FloatStorage", b"ByteStorage"), (b"FloatStorage", b"ComplexFloatStorage"),
    (b"FloatStorage", b"QInt8Storage"), (b"FloatStorage", b"UntypedStorage"),
    (b"HalfStorage", b"BFloat16Storage"), (b"LongStorage", b"FloatStorage"),
    (b"_rebuild_tensor_v2", b"_rebuild_parameter"), (b"_rebuild_tensor_v2", b"_rebuild_tensor"),
    (b"_rebuild_tensor_v2", b"_rebuild_sparse_tensor"), (b"collections\nOrderedDict", b"builtins\nset"),
    (b"collections\nOrderedDict", b"builtins\nlist"), (b"cpu", b"cuda"), (b"cpu", b"meta"),
    (b"torch._utils", b"torch.nn.modules"), (b"storage", b"STORAGE"),
)


def _pickle_int_fields(blob: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    """(offset of the argument, width, value) of the integer opcodes of one pickle."""
    out = []
    try:
        for op, arg, p in pickletools.genops(io.BytesIO(blob[start:end])):
            if op.name in PICKLE_INTS:
                out.append((start + p + 1, PICKLE_INTS[op.name], arg))
            elif op.name == "LONG1" and isinstance(arg, int):
                n = blob[start + p + 1]
                out.append((start + p + 2, n, arg))
    except Exception:  # noqa: BLE001 - broken by an earlier mutation: use what was found
        pass
    return out


def _mutate_pickle_int(rng, blob: bytes, start: int = 0, end: int | None = None) -> tuple[bytes, str]:
    end = len(blob) if end is None else end
    fields = _pickle_int_fields(blob, start, end)
    if not fields:
        raise Skip
    pos, width, old = rng.choice(fields)
    if width == 1:
        v = rng.choice((0, 1, 2, 3, old + 1, old - 1, 0x7F, 0x80, 0xFF, old * 2)) & 0xFF
    elif width == 2:
        v = rng.choice((0, 1, old + 1, old - 1, 0xFFFF, 0x7FFF)) & 0xFFFF
    else:
        v = rng.choice((0, 1, -1, old + 1, old - 1, old * 2, 2 ** 31 - 1, -(2 ** 31), 2 ** 30))
        v &= (1 << (8 * width)) - 1
    return blob[:pos] + v.to_bytes(width, "little") + blob[pos + width:], \
        f"pickle int @{pos} (width {width}): {old} -> {v}"


def _swap_global(rng, blob: bytes) -> tuple[bytes, str]:
    options = [(a, b) for a, b in GLOBAL_SWAPS if a in blob]
    if not options:
        raise Skip
    a, b = rng.choice(options)
    if a in (b"cpu", b"storage"):
        # a length-prefixed string: keep the length byte right (BINUNICODE has a 4-byte length)
        i = blob.find(b"X" + len(a).to_bytes(4, "little") + a)
        if i == -1:
            raise Skip
        return blob[:i] + b"X" + len(b).to_bytes(4, "little") + b + blob[i + 5 + len(a):], \
            f"pickle string {a!r} -> {b!r}"
    return blob.replace(a, b, 1), f"pickle global {a!r} -> {b!r}"


def m_pt_pickle(rng, data):
    """Mutate data.pkl of a torch zip: an integer in place (CRC patched), or a global/string
    swap with the archive rewritten in torch's layout."""
    members = _zip_members(data)
    pkl = [i.filename for i, _ in members if i.filename.endswith("data.pkl")]
    if not pkl:
        raise Skip
    name = pkl[0]
    blob = dict((i.filename, d) for i, d in members)[name]
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        info = z.getinfo(name)
    if rng.random() < 0.6 and info.compress_type == zipfile.ZIP_STORED:
        n, m = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
        start = info.header_offset + 30 + n + m
        new, desc = _mutate_pickle_int(rng, data, start, start + info.compress_size)
        return _patch_crc(new, name), "data.pkl " + desc
    new_blob, desc = _swap_global(rng, blob) if rng.random() < 0.7 else _mutate_pickle_int(rng, blob)
    archive = name.split("/", 1)[0]
    recs = [(i.filename.split("/", 1)[1], new_blob if i.filename == name else d) for i, d in members]
    return _torch_zip(recs, archive), "data.pkl " + desc


def m_pt_rezip(rng, data):
    """Rewrite a torch zip: records dropped, duplicated, reordered, compressed or unaligned."""
    members = _zip_members(data)
    if not members:
        raise Skip
    archive = members[0][0].filename.split("/", 1)[0]
    recs = [(i.filename.split("/", 1)[1] if "/" in i.filename else i.filename, d) for i, d in members]
    choice = rng.randrange(7)
    compress: set[str] = set()
    align = 64
    if choice == 0:
        k = rng.randrange(len(recs))
        desc = f"drop record {recs[k][0]}"
        del recs[k]
    elif choice == 1:
        k = rng.randrange(len(recs))
        recs.append(recs[k])
        desc = f"duplicate record {recs[k][0]}"
    elif choice == 2:
        rng.shuffle(recs)
        desc = "reorder records"
    elif choice == 3:
        name = rng.choice([n for n, _ in recs])
        compress = {name}
        desc = f"deflate record {name}"
    elif choice == 4:
        align = 0
        desc = "records not aligned"
    elif choice == 5:
        k = rng.randrange(len(recs))
        n, d = recs[k]
        recs[k] = (n, d + b"\0" * rng.choice((1, 4, 64)) if rng.random() < 0.5 else d[: len(d) // 2])
        desc = f"resize record {n} to {len(recs[k][1])}"
    else:
        archive = rng.choice(("", "a/b", "..", "archive"))
        desc = f"archive name {archive!r}"
    if archive == "":
        out = _zip_bytes([(n, d) for n, d in recs], compress)
    else:
        out = _torch_zip(recs, archive, align=align, compress=compress)
    return out, "pt rezip: " + desc


def m_legacy_pickle(rng, data):
    ends = _pickle_ends(data, count=5)
    if len(ends) < 4:
        raise Skip
    if rng.random() < 0.5:
        new, desc = _swap_global(rng, data)
        return new, desc
    k = rng.randrange(len(ends))
    start = ends[k - 1] if k else 0
    new, desc = _mutate_pickle_int(rng, data, start, ends[k])
    return new, f"pickle {k}: {desc}"


# -- .npy headers


NPY_DESCRS = ("<f4", ">f4", "<f8", "<f2", "|b1", "<i8", ">i2", "|u1", "<c8", "<c16", "|O", "<U3",
              "|S4", "|V2", "|V4", "<M8[s]", "<m8[D]", "<f16", "<u8", "i4", "f", "zz", "<f4 ",
              [("a", "<f4")], [("a", "<f4", (2,))], ("<f4", (2,)), 5, None)


def _npy_parse(data: bytes):
    if data[:6] != b"\x93NUMPY" or len(data) < 10:
        raise Skip
    major = data[6]
    if major == 1:
        hlen, at = int.from_bytes(data[8:10], "little"), 10
    else:
        if len(data) < 12:
            raise Skip
        hlen, at = int.from_bytes(data[8:12], "little"), 12
    text = data[at:at + hlen]
    try:
        d = ast.literal_eval(text.decode("latin-1"))
    except Exception:  # noqa: BLE001
        raise Skip from None
    if not isinstance(d, dict):
        raise Skip
    return d, data[at + hlen:], major


def _npy_render(d, body: bytes, major: int, raw: str | None = None) -> bytes:
    text = raw if raw is not None else "{" + "".join(f"{k!r}: {v!r}, " for k, v in d.items()) + "}"
    enc = text.encode("utf-8" if major >= 3 else "latin-1", "replace")
    at = 10 if major == 1 else 12
    pad = -(at + len(enc) + 1) % 64
    enc += b" " * pad + b"\n"
    if major == 1 and len(enc) > 0xFFFF:
        major, at = 2, 12
    head = b"\x93NUMPY" + bytes([major, 0])
    head += len(enc).to_bytes(2 if major == 1 else 4, "little")
    return head + enc + body


def mutate_npy(rng, data: bytes) -> tuple[bytes, str]:
    d, body, major = _npy_parse(data)
    r = rng.random()
    raw = None
    if r < 0.3:
        d["descr"] = rng.choice(NPY_DESCRS)
        desc = f"descr={d['descr']!r}"
    elif r < 0.6:
        shape = list(d["shape"]) if isinstance(d.get("shape"), (tuple, list)) else []
        c = rng.randrange(7)
        if c == 0 and shape:
            i = rng.randrange(len(shape))
            shape[i] += rng.choice((-1, 1))
        elif c == 1 and shape:
            shape[rng.randrange(len(shape))] = rng.choice((0, -1, 2 ** 31, 2 ** 62, 2 ** 63, 2 ** 64))
        elif c == 2:
            shape.insert(rng.randrange(len(shape) + 1), rng.choice((1, 0, 2)))
        elif c == 3 and shape:
            shape.pop()
        elif c == 4:
            shape = shape[::-1]
        elif c == 5:
            d["shape"] = rng.choice(([3, 4], (3.0,), ("a",), None, (2 ** 40, 2 ** 40), ((1,),), 5))
            return _npy_render(d, body, major), f"npy shape={d['shape']!r}"
        else:
            n = 1
            for s in shape:
                n *= s
            shape = [n]
        d["shape"] = tuple(shape)
        desc = f"shape={d['shape']!r}"
    elif r < 0.7:
        d["fortran_order"] = rng.choice((True, False, 1, "True", None))
        desc = f"fortran_order={d['fortran_order']!r}"
    elif r < 0.8:
        c = rng.randrange(3)
        if c == 0:
            d["extra"] = 1
            desc = "extra key"
        elif c == 1:
            k = rng.choice(list(d) or ["descr"])
            d.pop(k, None)
            desc = f"drop {k}"
        else:
            raw = rng.choice(("[1, 2]", "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), 'shape': (1,)}",
                              "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4)", "__import__('os')",
                              "{'descr': '<f4', 'fortran_order': False, 'shape': (" + "(" * 200 + ")" * 200 + ")}",
                              "{'descr': 'é', 'fortran_order': False, 'shape': ()}", " " * 70000))
            desc = f"header text {raw[:40]!r}"
    else:
        major = rng.choice((1, 2, 3, 4, 0))
        desc = f"version {major}.0"
    return _npy_render(d, body, major, raw), "npy " + desc


def m_npy(rng, data):
    for _ in range(8):  # some choices restate what is there (descr '<f4' on a '<f4' array)
        new, desc = mutate_npy(rng, data)
        if new != data:
            break
    return new, desc


def m_npz_member(rng, data):
    """Rewrite an npz with one member changed (valid CRCs): its header, bytes or name."""
    members = _zip_members(data)
    if not members:
        raise Skip
    k = rng.randrange(len(members))
    info, blob = members[k]
    items = [(i.filename, d, i.compress_type) for i, d in members]
    r = rng.random()
    if r < 0.55:
        blob, desc = mutate_npy(rng, blob)
    elif r < 0.8:
        blob, desc = rng.choice(RAW)(rng, blob)
    else:
        c = rng.randrange(5)
        name = info.filename
        if c == 0:
            new = rng.choice((name[:-4], name + "/", "", "../" + name, name.upper(), "a/b/" + name))
            desc = f"rename {name!r} -> {new!r}"
            items[k] = (new, blob, info.compress_type)
        elif c == 1:
            items.append(items[k])
            desc = f"duplicate {name}"
        elif c == 2:
            del items[k]
            desc = f"drop {name}"
        elif c == 3:
            items[k] = (name, blob, zipfile.ZIP_DEFLATED if info.compress_type == zipfile.ZIP_STORED
                        else zipfile.ZIP_STORED)
            desc = f"switch compression of {name}"
        else:
            items.append(("notes.txt", b"hello", zipfile.ZIP_STORED))
            desc = "add a non-.npy member"
        return _rezip(items), "npz " + desc
    items[k] = (info.filename, blob, info.compress_type)
    return _rezip(items), f"npz member {info.filename}: {desc}"


# -- HDF5 (through h5py: the file stays a valid HDF5 file with other contents)


# h5py itself can hang (an HDF5 infinite loop, found by this fuzzer) on a file whose bytes a
# raw mutation changed, so h5py edits are only made to files that h5py wrote: make_case tracks
# which files are "dirty" and sets _H5_EDITABLE; mutators set _DIRTIED when they change bytes
# inside an HDF5 file without h5py.
_H5_EDITABLE = True
_DIRTIED = False


def mutate_h5(rng, data: bytes) -> tuple[bytes, str]:
    """One change through h5py (attributes, datasets, groups, links); the file stays HDF5."""
    if not _H5_EDITABLE:
        raise Skip
    try:
        return _mutate_h5(rng, data)
    except Skip:
        raise
    except Exception:  # noqa: BLE001 - h5py cannot edit a file an earlier mutation broke
        raise Skip from None


def _mutate_h5(rng, data: bytes) -> tuple[bytes, str]:
    import h5py
    import numpy as np

    bio = io.BytesIO(data)
    try:
        f = h5py.File(bio, "r+")
    except Exception:  # noqa: BLE001
        raise Skip from None
    try:
        objs: list[str] = []
        f.visit(objs.append)
        objs.sort()
        dsets = [p for p in objs if isinstance(f.get(p), h5py.Dataset)]
        groups = [""] + [p for p in objs if isinstance(f.get(p), h5py.Group)]
        attrs = [(p, a) for p in groups + dsets for a in sorted((f[p] if p else f).attrs)]
        r = rng.random()
        if r < 0.3 and attrs:
            p, a = rng.choice(attrs)
            obj = f[p] if p else f
            old = obj.attrs[a]
            if a == "model_config" and rng.random() < 0.7:
                try:
                    cfg = json.loads(old.decode() if isinstance(old, bytes) else str(old))
                except ValueError:
                    raise Skip from None
                cfg, d = mutate_json(rng, cfg)
                obj.attrs[a] = json.dumps(cfg).encode()
                desc = f"attr {p}@{a}: json {d}"
            elif a.startswith(("layer_names", "weight_names")) and rng.random() < 0.7:
                vals = [v for v in np.atleast_1d(old).tolist()]
                c = rng.randrange(6)
                if c == 0 and vals:
                    vals.pop(rng.randrange(len(vals)))
                elif c == 1:
                    vals.append(rng.choice((b"missing", b"", b"a/../b", b"/", b".")))
                elif c == 2 and vals:
                    vals.append(vals[0])
                elif c == 3 and dsets:
                    vals.append(rng.choice(dsets).encode())
                elif c == 4:
                    rng.shuffle(vals)
                else:
                    del obj.attrs[a]
                    obj.attrs[a + "0"] = vals[: len(vals) // 2]
                    obj.attrs[a + "1"] = vals[len(vals) // 2:]
                    return _h5_close(f, bio), f"attr {p}@{a}: split in two"
                obj.attrs[a] = vals
                desc = f"attr {p}@{a} = {vals!r}"[:200]
            else:
                new = rng.choice(("delete", np.int64(3), np.array([1.0, 2.0]), b"\xff\xfe",
                                  "unicode é", np.array([], dtype="f8"), np.array([[b"a", b"b"]]),
                                  b"{not json", b"bfloat16"))
                if isinstance(new, str) and new == "delete":
                    del obj.attrs[a]
                else:
                    obj.attrs[a] = new
                desc = f"attr {p}@{a} = {new!r}"[:200]
        elif r < 0.55 and dsets:
            p = rng.choice(dsets)
            old = f[p]
            shape, dtype = old.shape, old.dtype
            if shape and int(np.prod(shape, dtype=np.float64)) > 1 << 20:
                raise Skip  # a dataset an earlier step made huge: do not build it here
            c = rng.randrange(12)
            del f[p]
            if c == 0:
                desc = "deleted"
            elif c == 1:
                f.create_group(p)
                desc = "replaced by a group"
            elif c == 2:
                f.create_dataset(p, data=np.array([b"abc", b"de"]))
                desc = "bytes strings"
            elif c == 3:
                f.create_dataset(p, data=np.zeros(3, dtype=[("a", "<f4"), ("b", "<i4")]))
                desc = "compound dtype"
            elif c == 4:
                f.create_dataset(p, data=h5py.Empty("f4"))
                desc = "empty dataspace"
            elif c == 5:
                f.create_dataset(p, shape=shape, dtype=">f8")
                desc = "big-endian f8, never written (fill value)"
            elif c == 6:
                f.create_dataset(p, data=np.ones(shape, dtype), compression="gzip",
                                 fletcher32=True, chunks=True if shape else None) if shape else \
                    f.create_dataset(p, data=np.ones(shape, dtype))
                desc = "chunked, gzip, fletcher32"
            elif c == 7:
                big = rng.choice(((1 << 20, 1 << 20), (1 << 31,), (1 << 14, 1 << 14)))
                f.create_dataset(p, shape=big, dtype="f4", chunks=(1,) * len(big))
                desc = f"nominal shape {big}, unallocated"
            elif c == 8:
                target = rng.choice(("/nonexistent/ckptfix-fuzz-data.bin", "sibling.bin"))
                n = max(1, int(np.prod(shape)) if shape else 1)
                f.create_dataset(p, shape=(n,), dtype="u1", external=[(target, 0, n)])
                desc = f"external storage in {target}"
            elif c == 9:
                f[p] = h5py.SoftLink("/" + p)
                desc = "soft link to itself"
            elif c == 10:
                f[p] = h5py.ExternalLink(rng.choice(("sibling.h5", "/nonexistent.h5")), "/x")
                desc = "external link"
            else:
                f.create_dataset(p, data=np.arange(int(np.prod(shape)) + 1 if shape else 2,
                                                   dtype=rng.choice(("f2", "i1", "?", "c8", "u8"))))
                desc = "other shape and dtype"
            desc = f"dataset {p}: {desc}"
        elif r < 0.75 and len(groups) > 1:
            p = rng.choice(groups[1:])
            c = rng.randrange(5)
            if c == 0:
                del f[p]
                desc = "deleted"
            elif c == 1:
                parent = p.rsplit("/", 1)[0] if "/" in p else ""
                new = (parent + "/" if parent else "") + rng.choice(("dense_7", "conv2d", "vars", "x y",
                                                                     "batch_normalization_1", "0"))
                if new in f:
                    raise Skip
                f.move(p, new)
                desc = f"moved to {new}"
            elif c == 2:
                f[p + "/loop"] = f[p]
                desc = "hard link cycle"
            elif c == 3:
                f.create_group(p + "/vars").create_dataset("0", data=np.ones(2, "f4"))
                desc = "nested vars group"
            else:
                f[p].attrs["name"] = rng.choice((b"\xff", 7, "", "x/y", "dup"))
                desc = "name attribute"
            desc = f"group {p}: {desc}"
        else:
            raise Skip
        return _h5_close(f, bio), "h5 " + desc
    finally:
        try:
            f.close()
        except Exception:  # noqa: BLE001
            pass


def _h5_close(f, bio) -> bytes:
    f.close()
    return bio.getvalue()


def m_h5(rng, data):
    return mutate_h5(rng, data)


def m_keras_member(rng, data):
    """Rewrite a .keras archive with config.json, metadata.json or the weights changed."""
    members = _zip_members(data)
    items = [(i.filename, d, i.compress_type) for i, d in members]
    names = [n for n, _, _ in items]
    r = rng.random()
    if r < 0.35 and "config.json" in names:
        k = names.index("config.json")
        try:
            cfg = json.loads(items[k][1])
        except ValueError:
            raise Skip from None
        cfg, desc = mutate_json(rng, cfg)
        items[k] = ("config.json", json.dumps(cfg).encode(), items[k][2])
        desc = "config.json " + desc
    elif r < 0.7:
        ks = [i for i, n in enumerate(names) if n.endswith(".h5")]
        if not ks:
            raise Skip
        k = ks[0]
        if _H5_EDITABLE and rng.random() < 0.6:
            blob, desc = mutate_h5(rng, items[k][1])
        else:
            global _DIRTIED
            _DIRTIED = True
            blob, desc = rng.choice(RAW)(rng, items[k][1])
        items[k] = (items[k][0], blob, items[k][2])
        desc = f"{items[k][0]}: {desc}"
    else:
        c = rng.randrange(5)
        k = rng.randrange(len(items))
        if c == 0:
            del items[k]
            desc = f"drop {names[k]}"
        elif c == 1:
            items[k] = (rng.choice(("other.weights.h5", "model.weights.h5", "config.json", "x/config.json")),
                        items[k][1], items[k][2])
            desc = f"rename {names[k]} -> {items[k][0]}"
        elif c == 2:
            items[k] = (items[k][0], items[k][1], zipfile.ZIP_DEFLATED)
            desc = f"deflate {names[k]}"
        elif c == 3:
            items.append(items[k])
            desc = f"duplicate {names[k]}"
        else:
            deep = b'{"class_name": "Functional", "config": {"layers": [' * 400 + b"]}}" * 400
            items[k] = (items[k][0], rng.choice((b"", b"null", b"[]", b"\xff\xfe", b"{}", b"[" * 100000,
                                                  deep, b'{"config": {"layers": [{"class_name": '
                                                  b'"Dense", "config": {"name": "\\ud800"}}]}}')),
                        items[k][2])
            desc = f"{names[k]} = junk"
    return _rezip(items), "keras archive " + desc


# -- TF tensor bundles (tables rebuilt with valid CRCs, so the parser gets past the checksums)


def _tf_encode_entry(e: dict) -> bytes:
    from tf_bundle_writer import field_bytes, field_fixed32, field_varint, varint

    shape = b"".join(field_bytes(2, field_varint(1, d), keep_empty=True) for d in e["shape"])
    if e.get("unknown_rank"):
        shape += varint(3 << 3) + varint(1)
    out = field_varint(1, e["dtype"]) + field_bytes(2, shape, keep_empty=True)
    out += field_varint(3, e["shard_id"]) + field_varint(4, e["offset"]) + field_varint(5, e["size"])
    if e.get("crc32c") is not None:
        out += varint(6 << 3 | 5) + e["crc32c"].to_bytes(4, "little")
    out += field_bytes(7, b"", keep_empty=True) * e.get("slices", 0)
    return out


def _tf_pairs(index: bytes):
    from ckptfix.formats import tf_bundle

    try:
        return tf_bundle.read_table(index)
    except Exception:  # noqa: BLE001 - broken by an earlier mutation
        raise Skip from None


def _tf_table(rng, pairs) -> bytes:
    from tf_bundle_writer import build_table

    return build_table(pairs, block_size=rng.choice((32, 64, 256, 4096, 256 * 1024)),
                       restart_interval=rng.choice((1, 2, 3, 16)))


def _tf_index_name(files) -> str:
    names = [n for n in files if n.endswith(".index")]
    if not names:
        raise Skip
    return names[0]


def m_tf_entry(rng, files, target):
    from ckptfix.formats import tf_bundle

    iname = _tf_index_name(files)
    pairs = _tf_pairs(files[iname])
    k = rng.randrange(len(pairs))
    key, value = pairs[k]
    if key == b"":
        try:
            h = tf_bundle._decode_header(value)
        except Exception:  # noqa: BLE001
            raise Skip from None
        fld = rng.choice(("num_shards", "endianness"))
        h[fld] = rng.choice((0, -1, 1, 2, 3, 99999, 2 ** 62))
        from tf_bundle_writer import field_bytes, field_varint

        value = field_varint(1, h["num_shards"]) + field_varint(2, h["endianness"]) + \
            field_bytes(3, field_varint(1, h["producer"] or 1))
        desc = f"header {fld}={h[fld]}"
    else:
        try:
            e = tf_bundle._decode_entry(value, "x")
        except Exception:  # noqa: BLE001
            raise Skip from None
        fld = rng.choice(("dtype", "shape", "shape", "shard_id", "offset", "offset", "size", "crc32c",
                          "slices", "unknown_rank"))
        if fld == "dtype":
            e["dtype"] = rng.choice((0, 1, 2, 3, 7, 8, 10, 14, 18, 19, 20, 24, 25, 99, 2 ** 31))
        elif fld == "shape":
            shape = list(e["shape"])
            c = rng.randrange(6)
            if c == 0 and shape:
                i = rng.randrange(len(shape))
                shape[i] += rng.choice((-1, 1))
            elif c == 1 and shape:
                shape[rng.randrange(len(shape))] = rng.choice((0, -1, 2 ** 31, 2 ** 62, -(2 ** 63)))
            elif c == 2:
                shape.append(rng.choice((1, 2)))
            elif c == 3 and shape:
                shape.pop()
            elif c == 4:
                shape = shape[::-1]
            else:
                n = 1
                for d in shape:
                    n *= d
                shape = [n]
            e["shape"] = tuple(shape)
        elif fld in ("shard_id", "offset", "size"):
            old = e[fld]
            e[fld] = rng.choice((0, -1, old + 1, old - 1, old + 4, 2 ** 31, 2 ** 62, -(2 ** 63), 1))
        elif fld == "crc32c":
            e["crc32c"] = None if rng.random() < 0.3 else (e["crc32c"] or 0) ^ 1
        elif fld == "slices":
            e["slices"] = 1
        else:
            e["unknown_rank"] = True
        value = _tf_encode_entry(e)
        desc = f"entry {key!r}: {fld}={e[fld]!r}"
    pairs = list(pairs)
    pairs[k] = (key, value)
    new = dict(files)
    new[iname] = _tf_table(rng, pairs)
    return new, "tf " + desc


def m_tf_table(rng, files, target):
    iname = _tf_index_name(files)
    pairs = list(_tf_pairs(files[iname]))
    c = rng.randrange(7)
    k = rng.randrange(len(pairs))
    if c == 0:
        desc = f"drop key {pairs[k][0]!r}"
        del pairs[k]
    elif c == 1:
        pairs.insert(k, pairs[k])
        desc = f"duplicate key {pairs[k][0]!r}"
    elif c == 2 and len(pairs) > 1:
        j = rng.randrange(len(pairs))
        pairs[k], pairs[j] = pairs[j], pairs[k]
        desc = f"swap keys {k} and {j}"
    elif c == 3:
        key = pairs[k][0]
        new = rng.choice((key + b"/Adam", b"\x00" + key, key + b"\xff", key[:-1], b"optimizer/" + key,
                          key + b"/.ATTRIBUTES/VARIABLE_VALUE", b"\xc3("))
        pairs[k] = (new, pairs[k][1])
        pairs.sort()
        desc = f"rename key {key!r} -> {new!r}"
    elif c == 4:
        alias = pairs[k][0] + b"_alias"
        pairs.append((alias, pairs[k][1]))
        pairs.sort()
        desc = f"alias {alias!r} shares {pairs[k][0]!r}'s data"
    elif c == 5:
        pairs[k] = (pairs[k][0], pairs[k][1] + rng.choice((b"\x08", b"\xff" * 11, b"\x3a\x05abc", b"\x0f")))
        desc = f"trailing junk in the value of {pairs[k][0]!r}"
    else:
        pairs = [(b"", pairs[0][1])] if rng.random() < 0.5 else pairs[1:]
        desc = "only the header" if len(pairs) == 1 else "no header"
    new = dict(files)
    new[iname] = _tf_table(rng, pairs)
    return new, "tf table: " + desc


def m_tf_block(rng, files, target):
    """Change bytes inside one block of the index and fix that block's CRC."""
    from ckptfix.formats import tf_bundle
    from ckptfix.formats._crc32c import crc32c, mask

    iname = _tf_index_name(files)
    data = files[iname]
    try:
        footer = data[-48:]
        pos = 0
        for _ in range(2):
            _, pos = tf_bundle.read_varint(footer, pos, 40)
        ioff, pos = tf_bundle.read_varint(footer, pos, 40)
        isize, pos = tf_bundle.read_varint(footer, pos, 40)
        blocks = [(ioff, isize)]
        for _, handle in tf_bundle.parse_block(data[ioff:ioff + isize], "index"):
            off, p = tf_bundle.read_varint(handle, 0)
            size, p = tf_bundle.read_varint(handle, p)
            blocks.append((off, size))
    except Exception:  # noqa: BLE001
        raise Skip from None
    off, size = rng.choice(blocks)
    if size <= 0 or off + size + 5 > len(data):
        raise Skip
    block = data[off:off + size + 1]  # contents and the type byte
    if rng.random() < 0.1:
        new_block = block[:-1] + bytes([rng.choice((1, 2, 0xFF))])
        desc = f"block @{off} type {new_block[-1]}"
    else:
        new_block, desc = rng.choice((m_bitflip, m_set_byte, m_set_int, m_set_byte))(rng, block[:-1])
        new_block += block[-1:]
        desc = f"block @{off}: {desc}"
    crc = mask(crc32c(new_block)).to_bytes(4, "little")
    new = dict(files)
    new[iname] = data[:off] + new_block + crc + data[off + size + 5:]
    return new, "tf " + desc


def m_tf_objgraph(rng, files, target):
    """Change the TF2 object graph (names, ids, cycles), rewritten with valid CRCs."""
    from ckptfix.formats import tf_bundle
    from tf_bundle_writer import encode_object_graph, string_tensor_bytes

    iname = _tf_index_name(files)
    pairs = list(_tf_pairs(files[iname]))
    keys = [k for k, _ in pairs]
    key = tf_bundle.OBJECT_GRAPH_KEY.encode()
    if key not in keys:
        raise Skip
    k = keys.index(key)
    try:
        e = tf_bundle._decode_entry(pairs[k][1], "g")
        prefix = iname[: -len(".index")]
        shard = f"{prefix}.data-{e['shard_id']:05d}-of-{sum(1 for n in files if '.data-' in n):05d}"
        raw = files[shard][e["offset"]:e["offset"] + e["size"]]
        nodes = tf_bundle.parse_object_graph(tf_bundle.decode_string_tensor(raw, 1, None)[0])
    except Exception:  # noqa: BLE001
        raise Skip from None
    attrs = [(i, j) for i, n in enumerate(nodes) for j in range(len(n["attributes"]))]
    c = rng.randrange(7)
    if c == 0 and len(attrs) > 1:
        (a, b), (x, y) = rng.sample(attrs, 2)
        fa, fb = nodes[a]["attributes"][b], nodes[x]["attributes"][y]
        fa["full_name"], fb["full_name"] = fb["full_name"], fa["full_name"]
        desc = "swap two full_names"
    elif c == 1 and attrs:
        a, b = rng.choice(attrs)
        nodes[a]["attributes"][b]["full_name"] = rng.choice(("", "noslash", "x/y", "dense/kernel:0", "a//b"))
        desc = f"full_name = {nodes[a]['attributes'][b]['full_name']!r}"
    elif c == 2 and attrs:
        a, b = rng.choice(attrs)
        nodes[a]["attributes"][b]["checkpoint_key"] = rng.choice(("", "missing/.ATTRIBUTES/VARIABLE_VALUE",
                                                                  tf_bundle.OBJECT_GRAPH_KEY))
        desc = "checkpoint_key changed"
    elif c == 3:
        n = rng.randrange(len(nodes))
        nodes[n]["children"].append((rng.choice((0, n, len(nodes), 2 ** 62)), "loop"))
        desc = f"node {n}: extra child"
    elif c == 4 and len(nodes) > 1:
        n = rng.randrange(1, len(nodes))
        del nodes[n]
        desc = f"delete node {n}"
    elif c == 5:
        rng.shuffle(nodes)
        desc = "shuffle nodes"
    else:
        nodes = []
        desc = "empty graph"
    graph = encode_object_graph([{"children": n["children"],
                                  "attributes": [(a["name"], a["full_name"], a["checkpoint_key"])
                                                 for a in n["attributes"]]} for n in nodes])
    blob, crc = string_tensor_bytes([graph])
    new = dict(files)
    e.update(offset=len(files[shard]), size=len(blob), crc32c=crc)
    new[shard] = files[shard] + blob
    pairs[k] = (key, _tf_encode_entry(e))
    new[iname] = _tf_table(rng, pairs)
    return new, "tf object graph: " + desc


# -- dispatch

# kind -> [(weight, mutator, recomputes checksums)]
STRUCTURED: dict[str, list[tuple[float, Callable, bool]]] = {
    "safetensors": [(1.0, m_st_header, True)],
    "zip-pt": [(0.35, m_zip_field, False), (0.1, m_zip_name, False), (0.4, m_pt_pickle, True),
               (0.15, m_pt_rezip, True)],
    "pickle": [(1.0, m_legacy_pickle, False)],
    "h5": [(1.0, m_h5, True)],
    "zip-keras": [(0.3, m_zip_field, False), (0.1, m_zip_name, False), (0.6, m_keras_member, True)],
    "npy": [(1.0, m_npy, True)],
    "zip-npz": [(0.35, m_zip_field, False), (0.1, m_zip_name, False), (0.55, m_npz_member, True)],
}
# multi-file mutators (files, target) for TF bundles
TF_STRUCTURED = [(0.45, m_tf_entry), (0.2, m_tf_table), (0.2, m_tf_block), (0.15, m_tf_objgraph)]
STRUCTURED_SHARE = 0.55


def m_hinted_int(rng, data, hints):
    off, width = rng.choice(hints)
    old = int.from_bytes(data[off:off + width], "little")
    v = _int_value(rng, old, width, len(data))
    return data[:off] + v.to_bytes(width, "little") + data[off + width:], f"field @{off}: {old} -> {v}"


@dataclass
class Case:
    fmt: str
    seed: int
    index: int
    seed_name: str
    files: dict[str, bytes]
    entry: str
    steps: list[str]
    check_values: bool
    changed: bool

    def describe(self) -> str:
        return f"{self.fmt} --seed {self.seed} --case {self.index} (from {self.seed_name}): " + \
            "; ".join(self.steps)

    def reproduce(self) -> str:
        return f"python tests/fuzz.py --format {self.fmt} --seed {self.seed} --case {self.index}"

    def write(self, d: Path) -> Path:
        d.mkdir(parents=True, exist_ok=True)
        return write_files(self.files, self.entry, d)


def _one_mutation(rng, seed: Seed, files: dict[str, bytes], dirty: set[str]
                  ) -> tuple[dict[str, bytes], str, bool]:
    """One mutation of one file of ``files``; adds the file to ``dirty`` unless h5py wrote it."""
    global _H5_EDITABLE, _DIRTIED
    target = seed.mutable[0] if rng.random() < 0.7 else rng.choice(seed.mutable)
    _H5_EDITABLE, _DIRTIED = target not in dirty, False
    try:
        new, desc, fixes, clean = _mutate_file(rng, seed, files, target)
    finally:
        _H5_EDITABLE = True
    if not clean or _DIRTIED:
        dirty.add(target)
    return new, desc, fixes


def _mutate_file(rng, seed: Seed, files: dict[str, bytes], target: str):
    kind = seed.kind.get(target, "raw")
    data = files[target]
    if rng.random() < STRUCTURED_SHARE:
        if kind == "tf-index":
            weights = [w for w, _ in TF_STRUCTURED]
            fn = rng.choices([m for _, m in TF_STRUCTURED], weights)[0]
            new, desc = fn(rng, files, target)
            return new, f"bundle: {desc}", True, False
        if seed.hints.get(target) and rng.random() < 0.4:
            new_data, desc = m_hinted_int(rng, data, seed.hints[target])
            out = dict(files)
            out[target] = new_data
            return out, f"{target}: {desc}", False, False
        if kind in STRUCTURED:
            options = STRUCTURED[kind]
            w, fn, fixes = rng.choices(options, [o[0] for o in options])[0]
            new_data, desc = fn(rng, data)
            out = dict(files)
            out[target] = new_data
            return out, f"{target}: {desc}", fixes, fn in (m_h5, m_keras_member)
    fn = rng.choice(RAW)
    new_data, desc = fn(rng, data)
    out = dict(files)
    out[target] = new_data
    return out, f"{target}: {desc}", False, False


def make_case(corpus: dict[str, list[Seed]], fmt: str, seed: int, index: int) -> Case:
    """The ``index``-th case of ``fmt`` for ``seed``: 1-3 stacked mutations of a seed file."""
    rng = random.Random(f"ckptfix-fuzz:{fmt}:{seed}:{index}")
    s = rng.choice(corpus[fmt])
    files = dict(s.files)
    steps: list[str] = []
    fixes_checksums = False
    dirty: set[str] = set()
    n = rng.choice((1, 1, 1, 1, 2, 2, 3))
    attempts = 0
    while (len(steps) < n or files == s.files) and attempts < 50:  # (two steps can cancel out)
        attempts += 1
        try:
            new, desc, fixes = _one_mutation(rng, s, files, dirty)
        except Exception:  # noqa: BLE001 - Skip, or a structure an earlier mutation broke
            continue
        if new == files:
            continue
        files, fixes_checksums = new, fixes_checksums or fixes
        steps.append(desc)
    return Case(fmt, seed, index, s.name, files, s.entry, steps,
                check_values=s.integrity and not fixes_checksums, changed=files != s.files)


# =============================================================================================
# the harness: the full library path on one file


class Finding(AssertionError):
    """A bug: an exception that is not a ckptfix error, or an oracle that failed."""


# Findings that are understood and tracked by a strict xfail test in test_fuzz.py: reported as
# the outcome "known", not as failures. Remove an entry when its xfail test starts passing.
KNOWN_ISSUES: list[tuple[re.Pattern, str]] = []  # (pattern on the finding's message, why)


def known_issue(message: str) -> str | None:
    for pattern, why in KNOWN_ISSUES:
        if pattern.search(message):
            return why
    return None


class CaseTimeout(BaseException):
    """Raised by the per-case timer (a BaseException, so no ``except Exception`` swallows it)."""


def tensor_bytes(t) -> bytes:
    import torch

    if t.numel() == 0:
        return b""
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def read_all(path: Path) -> tuple[str, dict | None, str]:
    """('ok', {name: (shape, dtype, bytes)}, '') or ('error', None, message). Raises Finding."""
    import torch

    from ckptfix import api, dtypes
    from ckptfix.errors import CkptfixError
    from ckptfix.formats.detect import open_checkpoint
    from ckptfix.tensors import TensorMeta

    values = {}
    try:
        with open_checkpoint(path) as r:
            metas = r.metas()
            if not isinstance(metas, dict):
                raise Finding(f"metas() returned {type(metas).__name__}")
            r.layer_classes()
            r.layer_configs()
            r.extras()
            r.warnings()
            for name, meta in metas.items():
                if not isinstance(name, str) or not isinstance(meta, TensorMeta):
                    raise Finding(f"metas() has {name!r}: {meta!r}")
                if not all(isinstance(d, int) and d >= 0 for d in meta.shape):
                    raise Finding(f"tensor {name!r}: declared shape {meta.shape} is not a shape")
                dtypes.get(meta.dtype)
                t = r.read(name)
                if not isinstance(t, torch.Tensor):
                    raise Finding(f"read({name!r}) returned {type(t).__name__}")
                got = (tuple(t.shape), dtypes.from_torch(t.dtype))
                if got != (meta.shape, meta.dtype):
                    raise Finding(f"read({name!r}) gave {got}, metas() declared {(meta.shape, meta.dtype)}")
                if t.device.type != "cpu" or not t.is_contiguous():
                    raise Finding(f"read({name!r}) is on {t.device} / contiguous={t.is_contiguous()}")
                values[name] = (meta.shape, meta.dtype, tensor_bytes(t))
        info = api.inspect(path)
        try:  # what `ckptfix inspect [--json]` prints must be printable (as the CLI prints it)
            from ckptfix.render import inspect_text

            json.dumps(info, default=str)
            inspect_text(info).encode("utf-8")
        except (UnicodeEncodeError, ValueError, TypeError) as e:
            raise Finding(f"inspect's result cannot be printed: {type(e).__name__}: {e}") from None
    except CkptfixError as e:
        try:
            str(e).encode("utf-8")
        except UnicodeEncodeError as u:
            raise Finding(f"the error message cannot be printed ({u}): {e!r}") from None
        return "error", None, str(e)
    return "ok", values, ""


def exercise(path: Path, out_dir: Path, *, reference: dict | None = None,
             out_suffix: str = ".safetensors") -> str:
    """The full path for one file: open, metas, read every tensor, inspect, apply to a temp
    output and read that back. Returns 'ok' or 'error'; raises Finding for a bug."""
    from ckptfix import api
    from ckptfix.formats.detect import open_checkpoint

    try:
        status, values, message = read_all(path)
    except (Finding, CaseTimeout):
        raise
    except Exception as e:  # noqa: BLE001 - the point of the exercise
        raise Finding(f"reading raised {type(e).__name__}: {e}\n{traceback.format_exc()}") from None
    if reference is not None and values is not None:
        for name, (shape, dtype, data) in values.items():
            ref = reference.get(name)
            if ref is not None and ref[:2] == (shape, dtype) and ref[2] != data:
                raise Finding(f"wrong values accepted: tensor {name!r} {list(shape)} {dtype} reads "
                              "differently from the original, but the format checksums its data")
    out = out_dir / f"out{out_suffix}"
    try:
        res = api.apply_file(path, [], out)
    except CaseTimeout:
        raise
    except Exception as e:  # noqa: BLE001 - apply_file lets MemoryError through
        raise Finding(f"apply raised {type(e).__name__}: {e}\n{traceback.format_exc()}") from None
    if res.error and "internal error" in res.error:
        raise Finding(f"apply: {res.error}")
    if res.error:
        try:
            res.error.encode("utf-8")
        except UnicodeEncodeError as u:
            raise Finding(f"apply's error message cannot be printed ({u}): {res.error!r}") from None
    if not res.ok and res.exit_code != 2:
        raise Finding(f"apply failed with exit code {res.exit_code} (a bad input must be 2): {res.error}")
    if res.ok:
        if status == "error":
            raise Finding(f"apply wrote {out.name}, but reading the input failed: {message}")
        try:
            with open_checkpoint(out) as w:
                written = {n: (m.shape, m.dtype, tensor_bytes(w.read(n))) for n, m in w.metas().items()}
        except Exception as e:  # noqa: BLE001
            raise Finding(f"apply wrote an unreadable {out.name}: {type(e).__name__}: {e}") from None
        if written != values:
            diff = sorted(set(written) ^ set(values)) or [n for n in written if written[n] != values.get(n)]
            raise Finding(f"apply wrote different tensors than read() returns: {diff[:5]}")
    return status


def reference_values(seed_dir: Path, entry: str) -> dict:
    status, values, message = read_all(seed_dir / entry)
    if status != "ok":
        raise RuntimeError(f"seed {seed_dir} does not read: {message}")
    return values


def _vm_data() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


@dataclass
class Budget:
    """A time budget (SIGALRM, main thread) and a memory budget (RLIMIT_DATA above what the
    process already uses) for one in-process case: a hang or a runaway allocation becomes an
    exception instead of a stuck or OOM-killed test run."""

    seconds: float
    memory: int = 3 << 30

    def __enter__(self):
        import resource

        def fire(signum, frame):
            raise CaseTimeout(f"case took longer than {self.seconds} s")

        self._old = signal.signal(signal.SIGALRM, fire)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)
        self._limit = None
        used = _vm_data()
        if used is not None and self.memory:
            self._limit = resource.getrlimit(resource.RLIMIT_DATA)
            soft = used + self.memory
            hard = self._limit[1]
            if hard == resource.RLIM_INFINITY or soft <= hard:
                resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
            else:
                self._limit = None
        return self

    def __exit__(self, *exc):
        import resource

        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._old)
        if self._limit is not None:
            resource.setrlimit(resource.RLIMIT_DATA, self._limit)


def run_case_inprocess(case: Case, workdir: Path, *, reference: dict | None = None,
                       budget: float = 10.0) -> str:
    """Run one case in this process; raises Finding (with the case and how to replay it)."""
    d = workdir / f"case-{case.fmt}-{case.index}"
    if d.exists():
        shutil.rmtree(d)
    path = case.write(d / "in")
    out = d / "out"
    out.mkdir()
    suffix = ".pt" if case.fmt.startswith("pt") and case.index % 2 else ".safetensors"
    try:
        with Budget(budget):
            return exercise(path, out, reference=reference if case.check_values else None,
                            out_suffix=suffix)
    except Finding as e:
        if known_issue(str(e)):
            return "known"
        raise Finding(f"{case.describe()}\n  {e}\n  replay: {case.reproduce()}") from None
    except CaseTimeout as e:
        raise Finding(f"{case.describe()}\n  hang: {e}\n  replay: {case.reproduce()}") from None
    finally:
        shutil.rmtree(d, ignore_errors=True)


# =============================================================================================
# the subprocess harness (long runs): crashes and hangs of a worker are findings


def exercise_request(req: dict) -> dict:
    """Worker target: run ``exercise`` on the request's file."""
    global _REFS
    ref = None
    if req.get("seed_dir"):
        key = (req["seed_dir"], req["seed_entry"])
        if key not in _REFS:
            _REFS[key] = reference_values(Path(req["seed_dir"]), req["seed_entry"])
        ref = _REFS[key]
    out = Path(req["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    if req.get("inject"):  # fault injection, for the harness's own test
        {"segfault": selftest_segfault, "abort": selftest_abort, "hang": selftest_hang}[req["inject"]](req)
    try:
        status = exercise(Path(req["path"]), out, reference=ref, out_suffix=req.get("suffix", ".safetensors"))
    except Finding as e:
        if known_issue(str(e)):
            return {"status": "known", "detail": str(e)}
        return {"status": "bug", "detail": str(e)}
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {"status": status}


_REFS: dict = {}


# self-test targets: prove the harness sees each failure mode
def selftest_abort(req):
    os.abort()


def selftest_segfault(req):
    import ctypes

    ctypes.string_at(0)


def selftest_hang(req):
    while True:
        time.sleep(1)


def selftest_raise(req):
    raise ValueError("not a ckptfix error")


def selftest_exit(req):
    os._exit(3)


def selftest_ok(req):
    return {"status": "ok"}


def _resolve(target: str) -> Callable:
    mod, _, fn = target.partition(":")
    import importlib

    return getattr(sys.modules[__name__] if mod in ("fuzz", "__main__") else importlib.import_module(mod), fn)


def _worker_main(target: str, memory_mb: int) -> None:
    import faulthandler
    import resource

    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything the library prints goes to stderr, not into the protocol
    faulthandler.enable()
    if memory_mb:
        lim = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_DATA, (lim, lim))
    fn = _resolve(target)
    if fn is exercise_request:  # import costs before "ready", not in the first case's time
        import ckptfix.api  # noqa: F401
        import ckptfix.formats.keras_h5  # noqa: F401
        import h5py  # noqa: F401
        import torch  # noqa: F401

    proto.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("_dump_after"):  # where a hang is stuck, for the finding (stderr)
            faulthandler.dump_traceback_later(req["_dump_after"])
        try:
            res = fn(req)
        except MemoryError as e:
            res = {"status": "bug", "detail": f"MemoryError: {e}\n{traceback.format_exc()}"}
        except Exception as e:  # noqa: BLE001
            res = {"status": "bug", "detail": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"}
        faulthandler.cancel_dump_traceback_later()
        proto.write(json.dumps(res) + "\n")


class Worker:
    """A long-lived subprocess that runs requests one at a time; a request that kills it or
    does not answer within ``timeout`` is reported as 'crash' or 'hang' (and the worker is
    restarted on the next request)."""

    def __init__(self, target: str = "fuzz:exercise_request", *, timeout: float = 30.0,
                 memory_mb: int = 4096, stderr_path: Path | None = None) -> None:
        self.target = target
        self.timeout = timeout
        self.memory_mb = memory_mb
        self._own_log = stderr_path is None
        if stderr_path is None:
            fd, name = tempfile.mkstemp(prefix="ckptfix-fuzz-worker-", suffix=".log")
            os.close(fd)
            stderr_path = Path(name)
        self.stderr_path = stderr_path
        self.proc: subprocess.Popen | None = None
        self._buf = b""

    def _start(self) -> None:
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", self.target,
             "--memory-mb", str(self.memory_mb)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, cwd=str(ROOT))
        self._buf = b""
        ready = self._read_line(120.0)
        if ready is None or not json.loads(ready).get("ready"):
            err = self.stderr_path.read_text(errors="replace")[-2000:]
            self.close()
            raise RuntimeError(f"fuzz worker did not start: {err}")

    def _read_line(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                self._eof = True  # the worker died (or is dying)
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def stderr_tail(self, n: int = 4000) -> str:
        try:
            self._stderr.flush()
            return self.stderr_path.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def run(self, req: dict) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        mark = self.stderr_path.stat().st_size
        req = {**req, "_dump_after": self.timeout * 0.8}
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        self.proc.stdin.flush()
        self._eof = False
        line = self._read_line(self.timeout)
        if line is not None:
            return json.loads(line)
        if self._eof:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            # no answer in time: a hang (the worker is killed and restarted next time)
            self._kill()
            tail = self.stderr_path.read_bytes()[mark:][-4000:].decode("utf-8", "replace")
            return {"status": "hang", "detail": f"no result within {self.timeout} s\n{tail}"}
        code = self.proc.wait()
        tail = self.stderr_path.read_bytes()[mark:][-4000:].decode("utf-8", "replace")
        sig = -code if code < 0 else None
        what = f"killed by {signal.Signals(sig).name}" if sig else f"exited with status {code}"
        self.proc = None
        return {"status": "crash", "detail": f"worker {what}\n{tail}"}

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._kill()
        self.proc = None
        try:
            self._stderr.close()
        except AttributeError:
            pass
        if self._own_log:
            self.stderr_path.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def self_test(timeout: float = 5.0) -> None:
    """Fail loudly if the subprocess harness would not see a crash, a hang or a bug."""
    expect = {"selftest_abort": "crash", "selftest_segfault": "crash", "selftest_exit": "crash",
              "selftest_hang": "hang", "selftest_raise": "bug", "selftest_ok": "ok"}
    for target, status in expect.items():
        with Worker(f"fuzz:{target}", timeout=timeout, memory_mb=0) as w:
            got = w.run({})
            if got["status"] != status:
                raise SystemExit(f"harness self-test: {target} gave {got}, expected {status}")
            if status == "crash":
                again = w.run({})  # restarted after the crash
                if again["status"] != "crash":
                    raise SystemExit(f"harness self-test: {target} not restarted: {again}")


# =============================================================================================
# the long-run script


def _signature(status: str, detail: str) -> str:
    """Group findings: the status, the exception type and the innermost ckptfix frame."""
    frames = re.findall(r'File "([^"]*ckptfix[^"]*)", line (\d+),? in (\w+)', detail)
    if "most recent call first" in detail:  # faulthandler's order (crashes, hangs)
        frames = frames[::-1]
    where = f"{Path(frames[-1][0]).name}:{frames[-1][2]}" if frames else ""
    exc = re.findall(r"^(\w+(?:Error|Exception|Finding)?): ", detail, re.M)
    first = detail.splitlines()[0] if detail else ""
    first = re.sub(r"\d+", "N", first)[:80]
    return f"{status}|{exc[-1] if exc else ''}|{where}|{first if not where else ''}"


def save_finding(findings: Path, case: Case, result: dict) -> Path:
    d = findings / f"{case.fmt}-seed{case.seed}-case{case.index}-{result['status']}"
    if d.exists():
        shutil.rmtree(d)
    case.write(d / "files")
    info = {"format": case.fmt, "seed": case.seed, "case": case.index, "from": case.seed_name,
            "mutations": case.steps, "status": result["status"], "detail": result.get("detail", ""),
            "entry": f"files/{case.entry}", "replay": case.reproduce()}
    (d / "finding.json").write_text(json.dumps(info, indent=2))
    return d


def fuzz(formats: list[str], seconds: float, seed: int, findings: Path, *, timeout: float,
         max_cases: int | None = None, start: int = 0, memory_mb: int = 4096,
         keep_per_signature: int = 3, log=print) -> int:
    corpus = build_corpus()
    log(f"corpus {corpus_digest(corpus)}: " + ", ".join(f"{f} {len(corpus[f])}" for f in formats))
    work = Path(tempfile.mkdtemp(prefix="ckptfix-fuzz-"))
    seeds_dir = work / "seeds"
    seed_dirs = {}
    for fmt in formats:
        for s in corpus[fmt]:
            d = seeds_dir / s.name.replace("/", "__")
            s.write(d)
            seed_dirs[s.name] = d
    counts: dict[str, collections.Counter] = {f: collections.Counter() for f in formats}
    signatures: collections.Counter = collections.Counter()
    saved = 0
    t0 = time.monotonic()
    last = t0
    index = start
    n = 0
    try:
        with Worker(timeout=timeout, memory_mb=memory_mb, stderr_path=work / "worker.log") as w:
            while time.monotonic() - t0 < seconds and (max_cases is None or n < max_cases):
                for fmt in formats:
                    case = make_case(corpus, fmt, seed, index)
                    cdir = work / "case"
                    if cdir.exists():
                        shutil.rmtree(cdir)
                    path = case.write(cdir / "in")
                    s = next(x for x in corpus[fmt] if x.name == case.seed_name)
                    req = {"path": str(path), "out_dir": str(cdir / "out"),
                           "suffix": ".pt" if fmt.startswith("pt") and index % 2 else ".safetensors"}
                    if case.check_values:
                        req.update(seed_dir=str(seed_dirs[s.name]), seed_entry=s.entry)
                    res = w.run(req)
                    counts[fmt][res["status"]] += 1
                    n += 1
                    if res["status"] not in ("ok", "error", "known"):
                        sig = _signature(res["status"], res.get("detail", ""))
                        signatures[sig] += 1
                        if signatures[sig] <= keep_per_signature:
                            d = save_finding(findings, case, res)
                            saved += 1
                            if signatures[sig] == 1:
                                log(f"FINDING {res['status']}: {case.describe()}\n  "
                                    f"{res.get('detail', '').splitlines()[0] if res.get('detail') else ''}\n"
                                    f"  saved to {d}")
                index += 1
                if time.monotonic() - last > 30:
                    last = time.monotonic()
                    log(f"[{last - t0:.0f}s] {n} cases: " + "; ".join(
                        f"{f} {dict(counts[f])}" for f in formats))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"done: {n} cases in {time.monotonic() - t0:.0f}s (case numbers {start}..{index - 1})")
    for f in formats:
        log(f"  {f}: {dict(counts[f])}")
    if signatures:
        log(f"{sum(signatures.values())} findings, {len(signatures)} distinct, {saved} saved in {findings}:")
        for sig, k in signatures.most_common():
            log(f"  {k:5d}  {sig}")
    if n == 0:
        log("no case ran")
        return 1
    return 1 if signatures else 0


def replay(fmt: str, seed: int, index: int, keep: Path | None) -> int:
    corpus = build_corpus()
    case = make_case(corpus, fmt, seed, index)
    print(case.describe())
    with tempfile.TemporaryDirectory() as td:
        ref = None
        if case.check_values:
            s = next(x for x in corpus[fmt] if x.name == case.seed_name)
            sd = Path(td) / "seed"
            s.write(sd)
            ref = reference_values(sd, s.entry)
        if keep:
            print(f"mutated file(s) written to {case.write(keep)}")
        try:
            status = run_case_inprocess(case, Path(td), reference=ref, budget=600)
        except Finding as e:
            print(f"FINDING: {e}")
            return 1
    print(f"outcome: {status}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("As a module")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--format", default="all", help=f"one of {', '.join(FORMATS)}, a comma list, or all")
    ap.add_argument("--seconds", type=float, default=600, help="how long to run (default 600)")
    ap.add_argument("--seed", type=int, default=1, help="with the case number, decides each case")
    ap.add_argument("--max-cases", type=int, help="stop after this many cases")
    ap.add_argument("--start", type=int, default=0, help="first case number")
    ap.add_argument("--timeout", type=float, default=30, help="per case, seconds (a hang)")
    ap.add_argument("--memory-mb", type=int, default=4096, help="worker data limit (0: none)")
    ap.add_argument("--findings", type=Path, default=ROOT / "fuzz-findings",
                    help="where crashes, hangs and bugs are saved with their files (default ./fuzz-findings)")
    ap.add_argument("--case", type=int, help="replay one case in-process (with --format, --seed)")
    ap.add_argument("--keep", type=Path, help="with --case: write the mutated file(s) here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--skip-self-test", action="store_true",
                    help="do not first check that the harness detects crashes and hangs")
    args = ap.parse_args(argv)
    if args.worker:
        _worker_main(args.worker, args.memory_mb)
        return 0
    formats = list(FORMATS) if args.format == "all" else args.format.split(",")
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        ap.error(f"unknown format(s) {bad}; choose from {', '.join(FORMATS)}")
    if args.case is not None:
        if len(formats) != 1:
            ap.error("--case needs one --format")
        return replay(formats[0], args.seed, args.case, args.keep)
    if not args.skip_self_test:
        self_test()
        print("harness self-test passed (abort, segfault, exit, hang and a stray exception are detected)")
    return fuzz(formats, args.seconds, args.seed, args.findings, timeout=args.timeout,
                max_cases=args.max_cases, start=args.start, memory_mb=args.memory_mb)


if __name__ == "__main__":
    sys.exit(main())
