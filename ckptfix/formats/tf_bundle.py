"""TensorFlow checkpoints (tensor bundles: ``PREFIX.index`` + ``PREFIX.data-SSSSS-of-NNNNN``).

A pure-Python reader: no TensorFlow, no protobuf. The byte layout is documented in
``/work/shared/notes/tf-formats.md``; in short, ``.index`` is a LevelDB-style sorted table whose
key ``""`` holds a ``BundleHeaderProto`` and every other key a ``BundleEntryProto`` (dtype,
shape, shard, offset, size, masked crc32c of the tensor bytes).

Every block CRC of the index is verified when the file is opened; every tensor's CRC when it is
read. Any malformation becomes ``InputError(path, cause)``.

Names
-----
* TF1 ``Saver`` checkpoints keep their names (``conv1/weights``, ``bn1/moving_mean``).
* TF2 object-graph checkpoints (keys ending in ``/.ATTRIBUTES/VARIABLE_VALUE``) are renamed to
  ``<layer>/<variable>`` using the ``_CHECKPOINTABLE_OBJECT_GRAPH`` tensor, per variable: the
  attribute's ``full_name`` (the ``tf.Variable`` name, which Keras sets to ``<layer>/<variable>``)
  when it has that form and no other variable has it; otherwise that variable's object path with
  the ``/.ATTRIBUTES/VARIABLE_VALUE`` suffix removed (a warning names them). Variables saved twice
  under one full name with the same dtype, shape and CRC (Keras 3 ``model.export`` tracks
  ``variables`` and ``_all_variables``) are one variable: the first copy in model order is kept.
  ``extras()["original_keys"]`` maps the new names back to the checkpoint keys.
* A SavedModel root (``saved_model.pb`` + ``variables/variables.{index,data-*}``) is read as its
  ``variables/variables`` bundle; ``saved_model.pb`` itself (the graph) is not read.

Entries that are not model weights are left out of ``metas()`` (listed in ``extras()["skipped"]``,
and with the reason in ``extras()["not_weights"]``): the object graph, string tensors,
``save_counter``, ``global_step``, optimizer state (TF2 ``optimizer/...`` and ``.OPTIMIZER_SLOT``
keys; TF1 slots such as ``conv1/weights/Adam`` — any tensor whose name is another tensor's name
plus ``/suffix`` — and ``beta1_power``/``beta2_power``), metric state (``keras_api/metrics/<i>/total``,
Keras 3 ``_metrics``/``_loss_tracker``) and export copies. TF1 partitioned variables (entries
with ``slices``) are skipped with a warning.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..tensors import TensorMeta
from ._crc32c import crc32c, unmask
from .base import NumpyReader
from .fileio import read_range
from .protowire import Corrupt as _Corrupt, int64 as _int64, parse_proto, read_varint  # noqa: F401

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_LEN = 48
BLOCK_TRAILER_LEN = 5
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"

# TF DataType enum -> (ckptfix canonical name, numpy dtype string); None = known but unreadable
TF_DTYPES: dict[int, tuple[str, str] | None] = {
    1: ("float32", "<f4"), 2: ("float64", "<f8"), 3: ("int32", "<i4"), 4: ("uint8", "|u1"),
    5: ("int16", "<i2"), 6: ("int8", "|i1"), 7: None,  # string
    8: ("complex64", "<c8"), 9: ("int64", "<i8"), 10: ("bool", "|b1"),
    11: None, 12: None, 13: None,  # qint8, quint8, qint32
    14: ("bfloat16", "V2"), 15: None, 16: None,  # qint16, quint16
    17: ("uint16", "<u2"), 18: None,  # complex128
    19: ("float16", "<f2"), 20: None, 21: None,  # resource, variant
    22: ("uint32", "<u4"), 23: ("uint64", "<u8"),
    24: ("float8_e5m2", "|u1"), 25: ("float8_e4m3fn", "|u1"),
}
TF_DTYPE_NAMES = {7: "string", 11: "qint8", 12: "quint8", 13: "qint32", 15: "qint16",
                  16: "quint16", 18: "complex128", 20: "resource", 21: "variant"}
DT_STRING = 7

_TF1_NON_WEIGHTS = {"global_step", "beta1_power", "beta2_power"}
# object paths of metric state (tf.keras ``keras_api/metrics/<i>/total``; Keras 3 ``_metrics``,
# ``_compile_metrics``, ``_loss_tracker``): running totals, not weights
METRIC_PATH = re.compile(r"(^|/)(keras_api/metrics|_metrics|_compile_metrics|_loss_tracker)/|^metrics/")


# --------------------------------------------------------------------------- low-level decoding

def _decode_entry(value: bytes, key: str) -> dict:
    what = f"entry {key!r}"
    entry = {"dtype": 0, "shape": (), "unknown_rank": False, "shard_id": 0, "offset": 0,
             "size": 0, "crc32c": None, "slices": 0}
    for field, wire, val in parse_proto(value, what):
        if field == 1 and wire == 0:
            entry["dtype"] = val
        elif field == 2 and wire == 2:
            dims = []
            for f2, w2, v2 in parse_proto(val, f"{what} shape"):
                if f2 == 2 and w2 == 2:
                    size = 0
                    for f3, w3, v3 in parse_proto(v2, f"{what} shape dim"):
                        if f3 == 1 and w3 == 0:
                            size = _int64(v3)
                    dims.append(size)
                elif f2 == 3 and w2 == 0:
                    entry["unknown_rank"] = bool(v2)
            entry["shape"] = tuple(dims)
        elif field == 3 and wire == 0:
            entry["shard_id"] = _int64(val)
        elif field == 4 and wire == 0:
            entry["offset"] = _int64(val)
        elif field == 5 and wire == 0:
            entry["size"] = _int64(val)
        elif field == 6 and wire == 5:
            entry["crc32c"] = val
        elif field == 7 and wire == 2:
            entry["slices"] += 1
    return entry


def _decode_header(value: bytes) -> dict:
    header = {"num_shards": 0, "endianness": 0, "producer": None}
    for field, wire, val in parse_proto(value, "bundle header"):
        if field == 1 and wire == 0:
            header["num_shards"] = _int64(val)
        elif field == 2 and wire == 0:
            header["endianness"] = val
        elif field == 3 and wire == 2:
            for f2, w2, v2 in parse_proto(val, "bundle header version"):
                if f2 == 1 and w2 == 0:
                    header["producer"] = v2
    return header


def read_block(data: bytes, offset: int, size: int, what: str) -> bytes:
    """Contents of the table block at ``offset`` (``size`` excludes the 5-byte trailer)."""
    limit = len(data) - FOOTER_LEN
    if offset < 0 or size < 0 or offset + size + BLOCK_TRAILER_LEN > limit:
        raise _Corrupt(f"{what} (offset {offset}, size {size}) runs past the end of the table "
                       f"({limit} bytes before the footer): truncated or corrupt")
    contents = data[offset:offset + size]
    btype = data[offset + size]
    stored = int.from_bytes(data[offset + size + 1:offset + size + 5], "little")
    actual = crc32c(data[offset:offset + size + 1])
    if unmask(stored) != actual:
        raise _Corrupt(f"{what} at offset {offset} fails its CRC check "
                       f"(stored {stored:#010x}, computed {actual:#010x} unmasked): corrupt file")
    if btype == 1:
        raise _Corrupt(f"{what} is snappy-compressed; ckptfix reads only uncompressed TF "
                       "checkpoints (TensorFlow never writes compressed bundles)")
    if btype != 0:
        raise _Corrupt(f"{what} has unknown compression type {btype}")
    return contents


def parse_block(block: bytes, what: str) -> list[tuple[bytes, bytes]]:
    """Entries of one block as (key, value), checking the restart array."""
    n = len(block)
    if n < 4:
        raise _Corrupt(f"{what} is {n} bytes, too short for its restart count")
    num_restarts = int.from_bytes(block[n - 4:], "little")
    restart_base = n - 4 - 4 * num_restarts
    if num_restarts == 0 and n > 4:
        raise _Corrupt(f"{what} has entries but no restart points")
    if restart_base < 0:
        raise _Corrupt(f"{what}: restart count {num_restarts} does not fit in {n} bytes")
    restarts = [int.from_bytes(block[restart_base + 4 * i:restart_base + 4 * i + 4], "little")
                for i in range(num_restarts)]
    restart_set = set(restarts)
    if restarts and (restarts[0] != 0 or any(b <= a for a, b in zip(restarts, restarts[1:]))
                     or restarts[-1] >= max(restart_base, 1)):
        raise _Corrupt(f"{what}: invalid restart points {restarts[:8]}")
    entries = []
    pos = 0
    prev = b""
    starts = set()
    while pos < restart_base:
        starts.add(pos)
        at_restart = pos in restart_set
        shared, pos = read_varint(block, pos, restart_base, what=f"{what} entry header")
        unshared, pos = read_varint(block, pos, restart_base, what=f"{what} entry header")
        vlen, pos = read_varint(block, pos, restart_base, what=f"{what} entry header")
        if at_restart and shared:
            raise _Corrupt(f"{what}: entry at restart point {pos} shares {shared} key bytes")
        if shared > len(prev):
            raise _Corrupt(f"{what}: entry shares {shared} bytes of a {len(prev)}-byte key")
        if pos + unshared + vlen > restart_base:
            raise _Corrupt(f"{what}: entry runs past the end of the block")
        key = prev[:shared] + block[pos:pos + unshared]
        pos += unshared
        value = block[pos:pos + vlen]
        pos += vlen
        entries.append((key, value))
        prev = key
    if not restart_set <= starts:
        raise _Corrupt(f"{what}: restart points {sorted(restart_set - starts)[:4]} are not "
                       "entry boundaries")
    return entries


def read_table(data: bytes) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs of a LevelDB-style table held in ``data``."""
    if len(data) < FOOTER_LEN:
        raise _Corrupt(f"truncated: {len(data)} bytes, shorter than the {FOOTER_LEN}-byte "
                       "table footer")
    footer = data[-FOOTER_LEN:]
    magic = int.from_bytes(footer[40:48], "little")
    if magic != TABLE_MAGIC:
        raise _Corrupt(f"bad table magic {footer[40:48].hex()} (expected 57fb808b247547db): "
                       "not a TF checkpoint index, or truncated")
    pos = 0
    _meta_off, pos = read_varint(footer, pos, 40, what="footer metaindex handle")
    _meta_size, pos = read_varint(footer, pos, 40, what="footer metaindex handle")
    index_off, pos = read_varint(footer, pos, 40, what="footer index handle")
    index_size, pos = read_varint(footer, pos, 40, what="footer index handle")
    index_block = read_block(data, index_off, index_size, "index block")
    out: list[tuple[bytes, bytes]] = []
    prev_key = None
    for i, (sep, handle) in enumerate(parse_block(index_block, "index block")):
        off, p = read_varint(handle, 0, what="block handle")
        size, p = read_varint(handle, p, what="block handle")
        block = read_block(data, off, size, f"data block {i}")
        for key, value in parse_block(block, f"data block {i}"):
            if prev_key is not None and key <= prev_key:
                raise _Corrupt(f"keys out of order in data block {i} ({prev_key!r} then {key!r})")
            if key > sep:
                raise _Corrupt(f"data block {i}: key {key!r} is past its index separator")
            out.append((key, value))
            prev_key = key
    return out


# ------------------------------------------------------------------------------ object graph

def parse_object_graph(buf: bytes) -> list[dict]:
    """TrackableObjectGraph -> [{children: [(node_id, local_name)], attributes: [...]}]."""
    nodes = []
    for field, wire, val in parse_proto(buf, "object graph"):
        if field != 1 or wire != 2:
            continue
        node = {"children": [], "attributes": [], "slots": []}
        for f2, w2, v2 in parse_proto(val, "object graph node"):
            if f2 == 1 and w2 == 2:
                ref = {"node_id": 0, "local_name": ""}
                for f3, w3, v3 in parse_proto(v2, "object graph reference"):
                    if f3 == 1 and w3 == 0:
                        ref["node_id"] = v3
                    elif f3 == 2 and w3 == 2:
                        ref["local_name"] = v3.decode("utf-8", "replace")
                node["children"].append((ref["node_id"], ref["local_name"]))
            elif f2 == 2 and w2 == 2:
                attr = {"name": "", "full_name": "", "checkpoint_key": ""}
                for f3, w3, v3 in parse_proto(v2, "object graph attribute"):
                    if w3 == 2 and f3 in (1, 2, 3):
                        attr[("name", "full_name", "checkpoint_key")[f3 - 1]] = \
                            v3.decode("utf-8", "replace")
                node["attributes"].append(attr)
            elif f2 == 3 and w2 == 2:
                slot = {}
                for f3, w3, v3 in parse_proto(v2, "object graph slot"):
                    if f3 == 1 and w3 == 0:
                        slot["original"] = v3
                    elif f3 == 3 and w3 == 0:
                        slot["slot"] = v3
                node["slots"].append(slot)
        nodes.append(node)
    return nodes


def decode_string_tensor(raw: bytes, n: int, entry_crc: int | None) -> list[bytes]:
    """Elements of a string tensor: ``varint64 len × n``, u32 masked crc of the lengths, bytes.

    TF's checksums here are unusual: each length is checksummed as a little-endian u32 (u64 if it
    does not fit), not as the varint on disk, and the entry's crc32c covers those lengths, the
    stored u32, then the string bytes (checked against the real fixtures).
    """
    pos = 0
    lengths = []
    for _ in range(n):
        ln, pos = read_varint(raw, pos, what="string tensor length")
        lengths.append(ln)
    if pos + 4 > len(raw):
        raise _Corrupt("truncated string tensor")
    len_bytes = b"".join(ln.to_bytes(4 if ln <= 0xFFFFFFFF else 8, "little") for ln in lengths)
    crc = crc32c(len_bytes)
    stored = raw[pos:pos + 4]
    if unmask(int.from_bytes(stored, "little")) != crc:
        raise _Corrupt("string tensor lengths fail their CRC check")
    crc = crc32c(stored, crc)
    pos += 4
    out = []
    for ln in lengths:
        if pos + ln > len(raw):
            raise _Corrupt("string tensor element runs past its data")
        out.append(raw[pos:pos + ln])
        crc = crc32c(raw[pos:pos + ln], crc)
        pos += ln
    if entry_crc is not None and unmask(entry_crc) != crc:
        raise _Corrupt("string tensor fails its CRC check")
    return out


def _graph_key_order(nodes: list[dict]) -> list[str]:
    order: list[str] = []
    seen = set()
    stack = [0]
    while stack:
        nid = stack.pop()
        if nid in seen or nid >= len(nodes):
            continue
        seen.add(nid)
        node = nodes[nid]
        order.extend(a["checkpoint_key"] for a in node["attributes"] if a["checkpoint_key"])
        stack.extend(child for child, _ in reversed(node["children"]))
    return order


def _natural_key(s: str):
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", s)]


# --------------------------------------------------------------------------------- the reader

def resolve_prefix(path: str | Path, fileset=None) -> Path:
    """Prefix of a bundle given the prefix, the ``.index`` file, a data shard or a directory.
    A ``checkpoint`` state file naming a prefix outside the directory is followed only where
    ``fileset`` allows it (its own check then refuses the files)."""
    p = Path(path)
    if p.is_dir() and not (p / "checkpoint").is_file() and not any(p.glob("*.index")):
        saved = p / "variables" / "variables"  # a SavedModel root: saved_model.pb + variables/
        if Path(str(saved) + ".index").is_file():
            return saved
        if (p / "saved_model.pb").is_file():
            raise InputError(p, "is a SavedModel with no variables/variables.index: it holds no "
                             "variables (a graph with constants folded in, or an incomplete copy)")
    if p.is_dir():
        ckpt = p / "checkpoint"
        if ckpt.is_file():
            try:
                if fileset is not None:
                    text = fileset.open(ckpt).read_all().decode("utf-8", "replace")
                else:
                    text = ckpt.read_text("utf-8", "replace")
            except OSError as e:
                raise InputError(ckpt, f"cannot read: {e.strerror or e}") from None
            m = re.search(r'^\s*model_checkpoint_path:\s*"((?:[^"\\]|\\.)*)"', text, re.M)
            if not m:
                raise InputError(ckpt, "has no model_checkpoint_path line")
            name = m.group(1).encode("latin-1", "backslashreplace").decode("unicode_escape")
            prefix = Path(name)
            if not prefix.is_absolute():
                prefix = p / prefix
            here = Path(str(prefix) + ".index").is_file() and (
                fileset is None or fileset.allow_outside or fileset.resolves_inside(Path(str(prefix) + ".index")))
            if not here:
                # moved directories (TF1 recorded absolute paths): the basename next to the
                # checkpoint file; a prefix elsewhere is read only if the file set allows it
                alt = p / prefix.name
                if Path(str(alt) + ".index").is_file():
                    return alt
                if not Path(str(prefix) + ".index").is_file():
                    raise InputError(p, f"checkpoint file names {name!r} but "
                                     f"{prefix.name}.index does not exist")
            return prefix
        indexes = sorted(p.glob("*.index"))
        if len(indexes) == 1:
            return Path(str(indexes[0])[: -len(".index")])
        if not indexes:
            raise InputError(p, "directory has no 'checkpoint' file and no *.index file")
        raise InputError(p, "directory has several *.index files and no 'checkpoint' file: "
                         "pass one prefix")
    s = str(p)
    if s.endswith(".index"):
        return Path(s[: -len(".index")])
    m = re.match(r"(.*)\.data-\d{5}-of-\d{5}$", s)
    if m:
        return Path(m.group(1))
    return p


class TFCheckpointReader(NumpyReader):
    format = "tf-checkpoint"

    def __init__(self, path: str | Path, fileset=None) -> None:
        super().__init__(path, fileset)
        self.prefix = resolve_prefix(path, self.fileset)
        self.index_path = Path(str(self.prefix) + ".index")
        self._warnings: list[str] = []
        self._skipped: list[str] = []
        self._why: dict[str, str] = {}  # skipped key -> why it is not a weight
        if not self.index_path.exists():
            raise InputError(self.index_path, "no such file (TF checkpoint index)")
        try:
            h = self.fileset.open(self.index_path)
            data = h.read_all()
        except OSError as e:
            raise InputError(self.index_path, f"cannot read: {e.strerror or e}") from None
        try:
            self._load(data)
        except _Corrupt as e:
            raise InputError(self.index_path, str(e)) from None
        except (ValueError, IndexError, UnicodeDecodeError, struct.error) as e:
            raise InputError(self.index_path, f"corrupt index ({type(e).__name__}: {e})") from None

    # -- opening

    def _load(self, data: bytes) -> None:
        pairs = read_table(data)
        if not pairs or pairs[0][0] != b"":
            raise _Corrupt("no bundle header (key \"\") in the index")
        self.header = _decode_header(pairs[0][1])
        if self.header["num_shards"] < 1:
            raise _Corrupt(f"bundle header has num_shards={self.header['num_shards']}")
        if self.header["endianness"] not in (0, 1):
            raise _Corrupt(f"bundle header has unknown endianness {self.header['endianness']}")
        self.entries: dict[str, dict] = {}
        for key, value in pairs[1:]:
            if key.startswith(b"\x00"):
                continue  # TF1 partitioned-variable slice keys (encoded); see 'slices' below
            try:
                name = key.decode("utf-8")
            except UnicodeDecodeError:
                raise _Corrupt(f"tensor name {key!r} is not UTF-8") from None
            entry = _decode_entry(value, name)
            code = entry["dtype"]
            if code not in TF_DTYPES:
                raise _Corrupt(f"tensor {name!r} has unknown dtype code {code}")
            if entry["unknown_rank"] or any(d < 0 for d in entry["shape"]):
                raise _Corrupt(f"tensor {name!r} has an invalid shape {entry['shape']}")
            if entry["shard_id"] < 0 or entry["shard_id"] >= self.header["num_shards"]:
                raise _Corrupt(f"tensor {name!r} is in shard {entry['shard_id']} but the bundle "
                               f"has {self.header['num_shards']} shard(s)")
            if entry["offset"] < 0 or entry["size"] < 0:
                raise _Corrupt(f"tensor {name!r} has a negative offset or size")
            spec = TF_DTYPES[code]
            if spec is not None and not entry["slices"]:
                nbytes = TensorMeta(entry["shape"], spec[0]).nbytes
                if nbytes != entry["size"]:
                    raise _Corrupt(f"tensor {name!r}: shape {list(entry['shape'])} of {spec[0]} "
                                   f"needs {nbytes} bytes but the entry says {entry['size']}")
            self.entries[name] = entry
        self._open_shards()
        self._resolve_names()

    def _is_non_weight(self, name: str, entry: dict) -> str | None:
        """Reason to leave ``name`` out of metas(), or None if it is a weight."""
        if name == OBJECT_GRAPH_KEY:
            return "object graph"
        code = entry["dtype"]
        if TF_DTYPES[code] is None:
            return f"{TF_DTYPE_NAMES.get(code, code)} tensor"
        if entry["slices"]:
            return "partitioned variable"
        base = name[: -len(VALUE_SUFFIX)] if name.endswith(VALUE_SUFFIX) else None
        if base is not None:
            if base in ("save_counter", "global_step"):
                return "bookkeeping"
            if base.startswith("optimizer/") or "/optimizer/" in base:
                return "optimizer"
            if "/.OPTIMIZER_SLOT/" in name:
                return "optimizer slot"
            if METRIC_PATH.search(base):
                return "metric"
            return None
        if name in _TF1_NON_WEIGHTS or name.rsplit("/", 1)[-1] == "global_step":
            return "bookkeeping"
        if "/" in name and name.rsplit("/", 1)[0] in self.entries:
            return "optimizer slot"  # TF1: conv1/weights/Adam, .../Momentum, ...
        return None

    def _resolve_names(self) -> None:
        weights = []
        for name, entry in self.entries.items():
            reason = self._is_non_weight(name, entry)
            if reason is None:
                weights.append(name)
            else:
                self._skip(name, reason)
                if reason == "partitioned variable":
                    self._warnings.append(
                        f"TF1 partitioned variable {name!r} ({entry['slices']} slices) is not "
                        "supported and was skipped")
        self.object_graph: list[dict] | None = None
        names: dict[str, str] = {}  # key -> display name
        tf2 = [w for w in weights if w.endswith(VALUE_SUFFIX)]
        if tf2:
            tf2.sort(key=_natural_key)
            if OBJECT_GRAPH_KEY in self.entries:
                try:
                    raw = self._read_raw(OBJECT_GRAPH_KEY, verify=False)
                    entry = self.entries[OBJECT_GRAPH_KEY]
                    n = 1
                    for d in entry["shape"]:
                        n *= d
                    strings = decode_string_tensor(raw, n, entry["crc32c"])
                    if strings:
                        self.object_graph = parse_object_graph(strings[0])
                except InputError as e:
                    self._warnings.append(f"object graph unreadable ({e.cause}); "
                                          "kept the checkpoint keys")
                except _Corrupt as e:
                    self._warnings.append(f"object graph unreadable ({e}); "
                                          "kept the checkpoint keys")
            if self.object_graph:
                # model order: depth-first through the object graph, children in stored order
                rank = {k: i for i, k in enumerate(_graph_key_order(self.object_graph))}
                tf2.sort(key=lambda k: (0, rank[k], []) if k in rank
                         else (1, 0, _natural_key(k)))
            names.update(self._tf2_names(tf2))
            tf2 = [k for k in tf2 if k in names]
            weights = [w for w in weights if not w.endswith(VALUE_SUFFIX)] + tf2
        self.key_of: dict[str, str] = {}
        for key in weights:
            self.key_of[names.get(key, key)] = key

    def _skip(self, key: str, reason: str) -> None:
        self._skipped.append(key)
        self._why[key] = reason

    def _tf2_names(self, keys: list[str]) -> dict[str, str]:
        """Object-graph keys (in model order) -> names, decided per variable: the variable's
        ``full_name`` (``<layer>/<variable>``) where it has that form and no other variable has it,
        else its object path. Variables saved twice under one name with the same dtype, shape and
        CRC (Keras' ``export`` tracks ``variables`` and ``_all_variables``) are one variable: the
        first copy is kept, the others are skipped as copies. Returns names for kept keys only."""
        full: dict[str, str] = {}
        if self.object_graph:
            for node in self.object_graph:
                for attr in node["attributes"]:
                    if attr["checkpoint_key"] and attr["name"] == "VARIABLE_VALUE":
                        full[attr["checkpoint_key"]] = attr["full_name"]
        path = {k: k[: -len(VALUE_SUFFIX)] for k in keys}
        by_name: dict[str, list[str]] = {}
        for key in keys:
            fn = re.sub(r":\d+$", "", full.get(key, ""))
            if "/" in fn:
                by_name.setdefault(fn, []).append(key)
        names: dict[str, str] = {}
        ambiguous: list[str] = []
        for fn, group in by_name.items():
            first = self.entries[group[0]]
            same = all((e["dtype"], tuple(e["shape"]), e["crc32c"]) == (first["dtype"], tuple(first["shape"]),
                                                                        first["crc32c"])
                       for e in (self.entries[k] for k in group[1:])) and first["crc32c"] is not None
            if len(group) == 1 or same:
                names[group[0]] = fn
                for k in group[1:]:
                    self._skip(k, f"copy of {fn}")
            else:
                ambiguous += group
        copies = {k for k in keys if self._why.get(k, "").startswith("copy of ")}
        for key in keys:
            if key not in names and key not in copies:
                names[key] = path[key]
        # a full name that is also another variable's object path: both keep their object paths
        while True:
            seen: dict[str, list[str]] = {}
            for k, n in names.items():
                seen.setdefault(n, []).append(k)
            clash = [k for ks in seen.values() if len(ks) > 1 for k in ks if names[k] != path[k]]
            if not clash:
                break
            for k in clash:
                names[k] = path[k]
                ambiguous.append(k)
        # (a variable whose object path is its full name, a tf.Module's ``scale``, loses nothing)
        unnamed = [path[k] for k in keys if k in names and names[k] == path[k]
                   and re.sub(r":\d+$", "", full.get(k, "")) != path[k]]
        if self.object_graph and unnamed:
            shown = ", ".join(unnamed[:3]) + (f" and {len(unnamed) - 3} more" if len(unnamed) > 3 else "")
            why = "share a <layer>/<variable> name" if ambiguous else "have no <layer>/<variable> name"
            self._warnings.append(f"{len(unnamed)} variable(s) {why} in the object graph and keep their "
                                  f"object paths: {shown}")
        return names

    # -- reading

    def _shard_path(self, shard: int) -> Path:
        return Path(f"{self.prefix}.data-{shard:05d}-of-{self.header['num_shards']:05d}")

    def _open_shards(self) -> None:
        """Open every data shard now, beside the index (a shard opened only when first needed
        could come from a later save); a missing one is reported when a tensor needs it."""
        self._shards = {}
        for i in range(min(self.header["num_shards"], 1 + max((e["shard_id"] for e in self.entries.values()),
                                                              default=0))):
            shard = self._shard_path(i)
            if shard.exists() or shard.is_symlink():
                self._shards[i] = self.fileset.open(shard)

    def _read_raw(self, key: str, verify: bool = True) -> bytes:
        entry = self.entries[key]
        shard = self._shard_path(entry["shard_id"])
        off, size = entry["offset"], entry["size"]
        h = getattr(self, "_shards", {}).get(entry["shard_id"])
        if h is None:
            if shard.is_dir():
                raise InputError(shard, "is a directory, expected a data shard")
            raise InputError(shard, f"data shard missing (needed for tensor {key!r})")
        if off + size > h.size:
            raise InputError(shard, f"tensor {key!r} at [{off}, {off + size}) runs past "
                             f"the end of the data file ({h.size} bytes): truncated")
        try:
            raw = read_range(h, off, off + size)
        except OSError as e:
            raise InputError(shard, f"cannot read: {e.strerror or e}") from None
        if verify and entry["crc32c"] is not None:
            actual = crc32c(raw)
            if unmask(entry["crc32c"]) != actual:
                raise InputError(shard, f"tensor {key!r} fails its CRC check (data corrupt)")
        return raw

    def metas(self) -> dict[str, TensorMeta]:
        out = {}
        for name, key in self.key_of.items():
            e = self.entries[key]
            out[name] = TensorMeta(shape=tuple(e["shape"]), dtype=TF_DTYPES[e["dtype"]][0])
        return out

    def read_array(self, name: str):
        import numpy as np

        key = self.key_of.get(name)
        if key is None:
            if name in self.entries and name not in self._skipped:
                key = name
            else:
                raise KeyError(name)
        entry = self.entries[key]
        canonical, npdt = TF_DTYPES[entry["dtype"]]
        raw = self._read_raw(key)
        dt = np.dtype(npdt)
        if self.header["endianness"] == 1 and dt.itemsize > 1 and dt.kind != "V":
            dt = dt.newbyteorder(">")
        arr = np.frombuffer(raw, dtype=dt).reshape(entry["shape"])
        if dt.byteorder == ">":
            arr = arr.astype(dt.newbyteorder("<"))
        elif npdt == "V2" and self.header["endianness"] == 1:
            arr = np.frombuffer(raw, dtype=">u2").astype("<u2").view("V2").reshape(entry["shape"])
        return arr

    def layer_classes(self) -> dict[str, str]:
        return {}

    def extras(self) -> dict[str, Any]:
        return {
            "prefix": str(self.prefix),
            "num_shards": self.header["num_shards"],
            "original_keys": dict(self.key_of),
            "skipped": list(self._skipped),
            "not_weights": dict(self._why),
            "layer_order": _layer_order(self.key_of),
        }

    def warnings(self) -> list[str]:
        return list(self._warnings)


def _layer_order(key_of: dict[str, str]) -> list[str]:
    seen = []
    for name in key_of:
        layer = name.rsplit("/", 1)[0] if "/" in name else name
        if layer not in seen:
            seen.append(layer)
    return seen
