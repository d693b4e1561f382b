"""ONNX models (``.onnx``): the weights of a ``ModelProto``, read without running the graph and
without the ``onnx`` package.

Byte layout
-----------
A protobuf ``ModelProto`` with no magic (``detect._looks_like_onnx``), decoded by hand with
``protowire.walk`` over the file (``FileBytes``: read through one small window, never held whole):
``ModelProto.graph`` (field 7) is a ``GraphProto`` whose ``node`` (1) and ``initializer`` (5)
fields are walked; a ``TensorProto`` has ``dims`` (1), ``data_type`` (2), ``name`` (8) and its
values in one of three places:

* ``raw_data`` (9): little-endian, C order, inside the model file (what torch.onnx and
  ``numpy_helper.from_array`` write). Its offset is recorded; the bytes are read by ``read``.
* ``external_data`` (13) with ``data_location`` (14) = EXTERNAL: ``location``, ``offset``,
  ``length`` name a range of another file, relative to the model's directory (``onnx``'s
  ``save_as_external_data``). The file is opened through the checkpoint's ``FileSet`` when the
  model is opened: it must resolve inside the model's directory (an absolute location is refused
  as the ONNX spec does; ``../x`` by the file set unless ``--allow-outside-files``).
* typed fields: ``float_data`` (4, fixed32), ``int32_data`` (5, varints; also int8/16, uint8/16,
  bool and the bit patterns of float16/bfloat16/float8), ``int64_data`` (7), ``double_data``
  (10), ``uint64_data`` (11), packed or not; decoded by ``read``.

``Constant`` nodes whose ``value`` attribute is a tensor hold tensors too; so may the subgraphs
of ``If``/``Loop``/``Scan`` nodes (walked, nested at most ``limits.MAX_GRAPH_DEPTH`` deep).

Every size is checked when the model is opened, before anything is allocated: each length
against its enclosing message and the file, each tensor's byte count against ``dims`` x its
dtype (raw and external exactly; packed varints within their possible counts, exactly on
``read``), external ranges against the external file's size. Negative dims, a rank over 64,
names that are not UTF-8, duplicate tensor names and segmented tensors are refused.

Names
-----
Initializers keep their names (torch.onnx names parameters by their state-dict keys:
``layer1.0.conv1.weight``). Anonymous ones -- ``onnx::Conv_123`` / ``onnx::MatMul_45`` (torch's
TorchScript exporter), ``val_12`` (its dynamo exporter), ``const_fold_opt__12``/``const_axes__3`` (tf2onnx), names
starting with ``/`` or all digits -- that are a layer's input are renamed ``<layer>.<role>`` from
the consuming node: its scope path (``/layer1/layer1.0/conv1/MatMul`` -> ``layer1.0.conv1``, the
TorchScript exporter's unqualified module names joined back), its ``pkg.torch.onnx.name_scopes``
metadata (dynamo), a TensorFlow scope (tf2onnx: ``model/dense/MatMul`` -> ``model.dense``), else
its name. ``extras()["original_keys"]``
maps every name back to the file's. A tensor its own layer and another read is listed under both layers' names
(``_alias``). Anonymous tensors that are no layer's input are graph
constants (shapes, axes, scalars): left out, listed in ``extras()["skipped"]``. Tensors are listed
in the order the graph first uses them (execution order), unused ones last.

Layers
------
Each node the layer table reads (``layer_table.ONNX_INPUTS``: Conv, ConvTranspose, Gemm,
MatMul with a constant B and its bias ``Add``, BatchNormalization, LayerNormalization,
InstanceNormalization, Gather of an embedding table) gives its layer's class (the op type:
``layer_classes``) and the attributes its layout depends on (``layer_configs``: Gemm's
``transB``, Conv's ``group``, BatchNormalization's ``epsilon``, ...); ``suggest`` reads the layer
through ``layer_table.ONNX``. A MatMul (or Gemm ``transB=0``) weight is stored (in, out): a torch
Linear weight is its transpose, which the rules must do (a warning says so).

``LSTM``/``GRU``/``RNN`` nodes (``RECURRENT_INPUTS``): their constant ``W``, ``R``, ``B`` (and LSTM's ``P``)
are listed as ``<layer>.W`` ... (``_l<k>`` when one layer has several nodes), in ONNX's layout, with a
warning; no layer class is given (the table has no torch form for them). An anonymous tensor no
layer reads that holds more than ``MAX_GRAPH_CONSTANT`` elements is still left out, with a warning.

A quantized graph (``QUANTIZED_OPS``, ``QLinear*``) has its integer weights listed as stored, beside
their scale and zero-point tensors, with a warning: nothing is dequantized.

Refused (left out, with a warning): string, complex and 2/4-bit or fnuz float8 tensors, which
ckptfix has no dtype for; sparse initializers. Nothing of the graph is executed.
"""

from __future__ import annotations

import os
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .. import layer_table as T
from ..errors import InputError
from ..limits import MAX_GRAPH_DEPTH, MAX_GRAPH_NAMES
from ..tensors import TensorMeta
from .base import Reader
from .protowire import Corrupt, FileBytes, int64, varints, walk

# TensorProto.DataType -> ckptfix dtype; the typed field holding it when there is no raw_data
ONNX_DTYPES: dict[int, str] = {
    1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
    10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16", 17: "float8_e4m3fn",
    19: "float8_e5m2",
}
UNREAD_DTYPES = {0: "undefined", 8: "string", 14: "complex64", 15: "complex128", 18: "float8e4m3fnuz",
                 20: "float8e5m2fnuz", 21: "uint4", 22: "int4", 23: "float4e2m1", 24: "float8e8m0",
                 25: "uint2", 26: "int2"}
FLOAT_DATA, INT32_DATA, STRING_DATA, INT64_DATA, DOUBLE_DATA, UINT64_DATA = 4, 5, 6, 7, 10, 11
TYPED_FIELDS = {FLOAT_DATA: 5, INT32_DATA: 0, INT64_DATA: 0, DOUBLE_DATA: 1, UINT64_DATA: 0}  # -> wire type
_FIELD_OF = {"float32": FLOAT_DATA, "float64": DOUBLE_DATA, "int64": INT64_DATA, "uint32": UINT64_DATA,
             "uint64": UINT64_DATA}  # every other dtype: int32_data
EXTERNAL = 1
MAX_RANK = 64
MAX_STRING = 1 << 16  # a name, an attribute's string, a metadata key or value we read
#: the inputs of ONNX's recurrent ops that are weights, by position (X, W, R, B, sequence_lens,
#: initial_h, initial_c, P): listed under ONNX's own names, ``<layer>.W`` ...
RECURRENT_INPUTS: dict[str, tuple[str | None, ...]] = {
    "LSTM": (None, "W", "R", "B", None, None, None, "P"), "GRU": (None, "W", "R", "B"), "RNN": (None, "W", "R", "B")}
#: ops of a quantized graph (QDQ, QOperator and dynamic quantization; also every QLinear*)
QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
                           "ConvInteger", "QGemm", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"})
MAX_GRAPH_CONSTANT = 64  # elements: an anonymous tensor no layer reads and larger than this gets a warning
_ANONYMOUS = re.compile(r"^(onnx::.*|/.*|_?val_\d+|const(_\w+?)?__\d+|\d+)$")


@dataclass
class _Tensor:
    key: str                    # its name in the file
    dims: tuple[int, ...]
    code: int                   # TensorProto.DataType
    where: str                  # "raw" | "external" | "typed" | "none"
    file: Any                   # the fileset Handle holding its bytes (the model, or the external file)
    offset: int = 0             # raw/external: the bytes; typed: the TensorProto message
    length: int = 0
    typed: int | None = None    # the typed field holding the values
    origin: str = "initializer"
    ext: dict[str, str] = field(default_factory=dict)  # external_data entries, until resolved

    @property
    def dtype(self) -> str | None:
        return ONNX_DTYPES.get(self.code)


@dataclass
class _Node:
    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    scopes: list[str] | None = None   # pkg.torch.onnx.name_scopes (dynamo exporter)
    domain: str = ""


# --------------------------------------------------------------------------------- decoding

def _text(fb, f, what: str) -> str:
    if f.wire != 2:
        raise Corrupt(f"{what} has wire type {f.wire}, expected a string")
    if f.length > MAX_STRING:
        raise Corrupt(f"{what} is {f.length} bytes long (more than {MAX_STRING}): corrupt or hostile")
    try:
        return bytes(fb[f.offset:f.end]).decode("utf-8")
    except UnicodeDecodeError:
        raise Corrupt(f"{what} is not UTF-8") from None


def _ints(fb, f, what: str) -> list[int]:
    """A repeated int64 field occurrence: one varint, or a packed run."""
    if f.wire == 0:
        return [int64(f.value)]
    if f.wire == 2:
        if f.length > 10 * MAX_STRING:
            raise Corrupt(f"{what}: a packed run of {f.length} bytes: corrupt or hostile")
        return [int64(int(v)) for v in varints(bytes(fb[f.offset:f.end]), what)]
    raise Corrupt(f"{what} has wire type {f.wire}, expected varints")


def _tensor(fb, begin: int, end: int, what: str, model) -> _Tensor:
    dims: list[int] = []
    code, name, raw, location = 0, "", None, 0  # proto2 defaults: data_type UNDEFINED
    ext: dict[str, str] = {}
    typed: dict[int, list[int]] = {}       # field -> [fewest values, most values]
    for f in walk(fb, begin, end, what):
        n = f.number
        if n == 1:
            dims += _ints(fb, f, f"{what} dims")
            if len(dims) > MAX_RANK:
                raise Corrupt(f"{what} has more than {MAX_RANK} dims")
        elif n == 2 and f.wire == 0:
            code = f.value
        elif n == 3:
            raise Corrupt(f"{what} is a segment of a tensor (TensorProto.segment): not supported")
        elif n == 8:
            name = _text(fb, f, f"{what} name")
        elif n == 9 and f.wire == 2:
            raw = (f.offset, f.length)
        elif n == 13 and f.wire == 2:
            key = value = ""
            for g in walk(fb, f.offset, f.end, f"{what} external_data"):
                if g.number == 1:
                    key = _text(fb, g, f"{what} external_data key")
                elif g.number == 2:
                    value = _text(fb, g, f"{what} external_data value")
            ext[key] = value
        elif n == 14 and f.wire == 0:
            location = f.value
        elif n in TYPED_FIELDS or n == STRING_DATA:
            lo_hi = typed.setdefault(n, [0, 0])
            if n == STRING_DATA or f.wire == TYPED_FIELDS[n]:  # one unpacked value (a string)
                lo_hi[0] += 1
                lo_hi[1] += 1
            elif f.wire == 2:
                if n in (FLOAT_DATA, DOUBLE_DATA):
                    size = 4 if n == FLOAT_DATA else 8
                    if f.length % size:
                        raise Corrupt(f"{what}: packed {'float' if size == 4 else 'double'}_data of {f.length} "
                                      f"bytes, not a multiple of {size}")
                    lo_hi[0] += f.length // size
                    lo_hi[1] += f.length // size
                else:
                    lo_hi[0] += -(-f.length // 10)
                    lo_hi[1] += f.length
            else:
                raise Corrupt(f"{what}: typed data field {n} has wire type {f.wire}")
    label = f"{what} {name!r}" if name else what
    if any(d < 0 for d in dims):
        raise Corrupt(f"{label} has negative dims {dims}")
    t = _Tensor(name, tuple(dims), code, "none", model)
    numel = 1
    for d in dims:
        numel *= d
    dtype = t.dtype
    if location == EXTERNAL or ext:
        if raw is not None or typed:
            raise Corrupt(f"{label} is marked external but also holds data in the model file")
        t.where, t.ext = "external", ext  # resolved by the reader (it opens the file)
        return t
    if raw is not None and typed:
        raise Corrupt(f"{label} has both raw_data and typed data fields: ambiguous")
    if dtype is None:  # unread dtype: no size check (it is left out)
        t.where = "raw" if raw is not None else "typed"
        return t
    from .. import dtypes

    itemsize = dtypes.get(dtype).itemsize
    if raw is not None:
        if numel * itemsize != raw[1]:
            raise Corrupt(f"{label}: dims {list(dims)} of {dtype} need {numel * itemsize} bytes but its "
                          f"raw_data holds {raw[1]}")
        t.where, t.offset, t.length = "raw", raw[0], raw[1]
        return t
    want = _FIELD_OF.get(dtype, INT32_DATA)
    other = sorted(set(typed) - {want})
    if other:
        raise Corrupt(f"{label} is {dtype} but holds its values in field {other[0]} (expected field {want})")
    lo, hi = typed.get(want, [0, 0])
    if not lo <= numel <= hi:
        held = f"{lo}" if lo == hi else f"{lo} to {hi}"
        raise Corrupt(f"{label}: dims {list(dims)} need {numel} values but it holds {held}")
    t.where, t.offset, t.length, t.typed = "typed", begin, end - begin, want
    return t


def _attribute(fb, begin: int, end: int, what: str, depth: int, sink) -> tuple[str, Any]:
    name, value = "", None
    for f in walk(fb, begin, end, what):
        n = f.number
        if n == 1:
            name = _text(fb, f, f"{what} name")
        elif n == 2 and f.wire == 5:
            value = struct.unpack("<f", f.value.to_bytes(4, "little"))[0]
        elif n == 3 and f.wire == 0:
            value = int64(f.value)
        elif n == 5 and f.wire == 2:
            value = ("tensor", f.offset, f.end)
        elif n in (6, 11) and f.wire == 2:  # a subgraph (If/Loop/Scan bodies): walked for its tensors
            sink.graph(f.offset, f.end, depth + 1)
        elif n == 8:
            value = (value if isinstance(value, list) else []) + _ints(fb, f, f"{what} ints")
    return name, value


def _node(fb, begin: int, end: int, depth: int, sink) -> _Node:
    node = _Node("", "", [], [])
    tensors = []
    for f in walk(fb, begin, end, "node"):
        n = f.number
        if n == 1:
            node.inputs.append(_text(fb, f, "node input"))
        elif n == 2:
            node.outputs.append(_text(fb, f, "node output"))
        elif n == 3:
            node.name = _text(fb, f, "node name")
        elif n == 4:
            node.op = _text(fb, f, "node op_type")
        elif n == 7:
            node.domain = _text(fb, f, "node domain")
        elif n == 5 and f.wire == 2:
            key, value = _attribute(fb, f.offset, f.end, "node attribute", depth, sink)
            if isinstance(value, tuple) and value[0] == "tensor":
                tensors.append((key, value))
            else:
                node.attrs[key] = value
        elif n == 9 and f.wire == 2:
            key = value = None
            for g in walk(fb, f.offset, f.end, "node metadata"):
                if g.number == 1:
                    key = _text(fb, g, "node metadata key")
                elif g.number == 2 and key == "pkg.torch.onnx.name_scopes":
                    value = _text(fb, g, "node metadata value")
            if key == "pkg.torch.onnx.name_scopes" and value is not None:
                node.scopes = re.findall(r"'((?:[^'\\]|\\.)*)'", value)
    for key, (_, b, e) in tensors:
        if node.op == "Constant" and key == "value" and node.outputs and node.domain in ("", "ai.onnx"):
            t = _tensor(fb, b, e, f"Constant node {node.name or node.outputs[0]!r}", sink.model)
            t.key, t.origin = node.outputs[0], f"Constant node {node.name!r}" if node.name else "Constant node"
            sink.tensor(t)
    return node


class _Sink:
    """What the walk collects: tensors and nodes, subgraphs' included."""

    def __init__(self, fb, model) -> None:
        self.fb, self.model = fb, model
        self.tensors: list[_Tensor] = []
        self.nodes: list[_Node] = []
        self.sparse = 0
        self.names = 0
        self.producer = ""
        self.ir_version = None
        self.opsets: dict[str, int] = {}

    def tensor(self, t: _Tensor) -> None:
        self.tensors.append(t)

    def graph(self, begin: int, end: int, depth: int) -> None:
        if depth > MAX_GRAPH_DEPTH:
            raise Corrupt(f"subgraphs nested more than {MAX_GRAPH_DEPTH} deep: corrupt or hostile")
        for f in walk(self.fb, begin, end, "graph"):
            if f.wire != 2:
                continue
            if f.number == 1:
                node = _node(self.fb, f.offset, f.end, depth, self)
                self.names += len(node.inputs) + len(node.outputs) + 1
                if self.names > MAX_GRAPH_NAMES:
                    raise Corrupt(f"the graph names more than {MAX_GRAPH_NAMES:,} node inputs and outputs: "
                                  "corrupt or hostile")
                self.nodes.append(node)
            elif f.number == 5:
                self.tensor(_tensor(self.fb, f.offset, f.end, "initializer", self.model))
            elif f.number == 15:
                self.sparse += 1

    def model_proto(self) -> None:
        graphs = []
        for f in walk(self.fb, 0, len(self.fb), "model"):
            if f.number == 1 and f.wire == 0:
                self.ir_version = f.value
            elif f.number == 2 and f.wire == 2:
                self.producer = _text(self.fb, f, "producer_name") + self.producer
            elif f.number == 3 and f.wire == 2:
                self.producer += " " + _text(self.fb, f, "producer_version")
            elif f.number == 7 and f.wire == 2:
                graphs.append(f)  # repeated occurrences of a message field merge: walk them all
            elif f.number == 8 and f.wire == 2:
                domain, version = "", 0
                for g in walk(self.fb, f.offset, f.end, "opset_import"):
                    if g.number == 1:
                        domain = _text(self.fb, g, "opset domain")
                    elif g.number == 2 and g.wire == 0:
                        version = int64(g.value)
                self.opsets[domain or "ai.onnx"] = version
        if not graphs:
            raise Corrupt("has no graph (ModelProto.graph): not an ONNX model, or an empty one")
        for f in graphs:
            self.graph(f.offset, f.end, 0)


# ------------------------------------------------------------------------------------- names

def is_anonymous(name: str) -> bool:
    """An exporter's made-up tensor name (``onnx::MatMul_45``, ``val_12``, ``const_fold_opt__3``)."""
    return bool(_ANONYMOUS.match(name))


def _join_scopes(parts: list[str]) -> str:
    """Scope names -> a module path. Each of torch's is a module's unqualified name (its last
    non-numeric atom and the numbers after it: ``layer1.0``, ``conv1``) or its full name; a part
    that starts with the end of the path so far continues it (``layer1`` + ``layer1.0`` ->
    ``layer1.0``), any other is an attribute below it."""
    path: list[str] = []
    for part in parts:
        atoms = [a for a in part.split(".") if a]
        if not atoms:
            continue
        overlap = 0
        for k in range(min(len(path), len(atoms) - 1), 0, -1):
            if path[-k:] == atoms[:k]:
                overlap = k
                break
        path += atoms[overlap:]
    return ".".join(path)


def layer_of(node: _Node) -> str:
    """The module path a node belongs to (``""``: none known)."""
    if node.scopes:
        return _join_scopes(node.scopes[:-1])
    if node.name.startswith("/"):
        return _join_scopes(node.name.split("/")[1:-1])
    if "/" in node.name:  # TensorFlow scopes (tf2onnx): model/dense/MatMul -> model.dense
        return ".".join(p for p in node.name.split("/")[:-1] if p)
    if node.name and re.fullmatch(r"[A-Za-z_][\w.]*", node.name):
        return node.name
    return ""


# ------------------------------------------------------------------------------------ reader


class OnnxReader(Reader):
    format = "onnx"

    def __init__(self, path: str | Path, fileset=None) -> None:
        super().__init__(path, fileset)
        self._file = self.fileset.open(self.path)
        self._warnings: list[str] = []
        self._skipped: list[str] = []
        try:
            sink = _Sink(FileBytes(self._file), self._file)
            sink.model_proto()
        except Corrupt as e:
            raise InputError(self.path, f"truncated or corrupt ONNX model: {e}") from None
        except OSError as e:
            raise InputError(self.path, f"cannot read: {e.strerror or e}") from None
        self.producer, self.ir_version, self.opsets = sink.producer.strip(), sink.ir_version, sink.opsets
        if sink.sparse:
            self._warnings.append(f"{sink.sparse} sparse initializer(s) are not read (left out)")
        self._nodes = sink.nodes
        self._tensors: dict[str, _Tensor] = {}
        for t in sink.tensors:
            if not t.key:
                raise InputError(self.path, f"an {t.origin} has no name")
            if t.key in self._tensors:
                raise InputError(self.path, f"two tensors are named {t.key!r} ({self._tensors[t.key].origin}, "
                                 f"{t.origin}): ambiguous, corrupt or hostile file")
            self._tensors[t.key] = t
        for t in self._tensors.values():
            if t.where == "external":
                self._resolve_external(t)
        self._analyse()

    # -- external data

    def _resolve_external(self, t: _Tensor) -> None:
        ext = t.ext
        label = f"tensor {t.key!r}"
        loc = ext.get("location")
        if not loc:
            raise InputError(self.path, f"{label} is external but names no location")
        if os.path.isabs(loc) or PurePosixPath(loc).is_absolute() or re.match(r"^[A-Za-z]:[\\/]", loc):
            raise InputError(self.path, f"{label}: external data location {loc!r} is an absolute path: refused "
                             "(ONNX locations are relative to the model's directory)")
        try:
            offset = int(ext.get("offset", "0"))
            length = int(ext["length"]) if "length" in ext else None
        except ValueError:
            raise InputError(self.path, f"{label}: external data offset/length {ext.get('offset')!r}/"
                             f"{ext.get('length')!r} are not integers") from None
        if offset < 0 or (length is not None and length < 0):
            raise InputError(self.path, f"{label}: negative external data offset or length")
        try:
            h = self.fileset.open(self.path.parent / loc)  # containment, regular file, one handle
        except InputError as e:
            raise InputError(self.path, f"{label}: external data {loc!r}: {e.cause}", hint=e.hint) from None
        if length is None:
            length = max(h.size - offset, 0)
        if offset + length > h.size:
            raise InputError(self.path, f"{label}: external data {loc!r} at [{offset}, {offset + length}) runs past "
                             f"the end of that file ({h.size} bytes): truncated")
        if t.dtype is not None:
            from .. import dtypes

            need = TensorMeta(t.dims, t.dtype).numel * dtypes.get(t.dtype).itemsize
            if need != length:
                raise InputError(self.path, f"{label}: dims {list(t.dims)} of {t.dtype} need {need} bytes but its "
                                 f"external data holds {length}")
        t.file, t.offset, t.length = h, offset, length

    # -- names and layers

    def _analyse(self) -> None:
        consts = self._tensors
        consumers: dict[str, list[tuple[_Node, int]]] = {}
        for node in self._nodes:
            for i, name in enumerate(node.inputs):
                if name:
                    consumers.setdefault(name, []).append((node, i))
        first_use: dict[str, int] = {}
        for i, node in enumerate(self._nodes):
            for name in node.inputs:
                if name in consts:
                    first_use.setdefault(name, i)
        producer = {o: n for n in self._nodes for o in n.outputs}

        def const(name: str) -> str | None:
            return name if name in consts and consts[name].dtype is not None else None

        def transposed_const(name: str) -> str | None:
            """W of ``Transpose(W)`` (perm [1, 0] or none) for a constant 2-D W."""
            p = producer.get(name)
            if p is None or p.op != "Transpose" or not p.inputs or const(p.inputs[0]) is None:
                return None
            w = consts[p.inputs[0]]
            return p.inputs[0] if len(w.dims) == 2 and p.attrs.get("perm") in (None, [1, 0]) else None

        roles: list[tuple[_Node, str, dict[str, str], dict]] = []  # node, layer, {tensor: role}, config
        for node in self._nodes:
            spec = T.ONNX_INPUTS.get(node.op)
            if spec is None or node.domain not in ("", "ai.onnx"):
                continue
            cfg = {**T.ONNX_ATTRS[node.op], **{k: v for k, v in node.attrs.items() if k in T.ONNX_ATTRS[node.op]}}
            got: dict[str, str] = {}
            for i, role in enumerate(spec):
                name = node.inputs[i] if i < len(node.inputs) else ""
                if role is None:
                    if name and const(name) is not None:
                        got = {}
                        break  # the data input is a constant: not a layer applied to the graph's data
                    continue
                if name and const(name) is not None:
                    got[name] = role
            if node.op in ("Gemm", "MatMul"):
                b = node.inputs[1] if len(node.inputs) > 1 else ""
                w = transposed_const(b)
                if w is not None and b not in got:
                    got[w] = "weight"
                    cfg["transB"] = 1 - cfg.get("transB", 0)
            weight = next((k for k, r in got.items() if r == "weight"), None)
            if weight is None:
                continue
            if node.op == "MatMul":
                bias = self._matmul_bias(node, weight, consumers, const)
                if bias is not None:
                    got[bias] = "bias"
            roles.append((node, layer_of(node), got, cfg))

        # recurrent layers: their constant W, R, B (and LSTM's P) are weights, named ONNX's way
        recurrent: list[tuple[_Node, str, dict[str, str]]] = []
        for node in self._nodes:
            spec = RECURRENT_INPUTS.get(node.op)
            if spec is None or node.domain not in ("", "ai.onnx"):
                continue
            got = {node.inputs[i]: role for i, role in enumerate(spec)
                   if role and i < len(node.inputs) and node.inputs[i] and const(node.inputs[i]) is not None}
            if got:
                recurrent.append((node, layer_of(node), got))
        per_layer = Counter(layer for _, layer, _ in recurrent)
        seen_in_layer: Counter = Counter()
        recurrent_names: list[str] = []
        for node, layer, got in recurrent:
            k = seen_in_layer[layer]
            seen_in_layer[layer] += 1
            suffix = f"_l{k}" if per_layer[layer] > 1 else ""  # several nodes of one torch module (num_layers)
            renamed = {key: f"{role}{suffix}" for key, role in got.items()}
            roles.append((node, layer, renamed, {}))

        # rename anonymous layer inputs
        new_name: dict[str, str] = {}
        for node, layer, got, _ in roles:
            for key, role in got.items():
                if is_anonymous(key) and layer and key not in new_name:
                    new_name[key] = f"{layer}.{role}"
        taken = {k for k in consts if k not in new_name}
        clashes = []
        counts: dict[str, int] = {}
        for v in new_name.values():
            counts[v] = counts.get(v, 0) + 1
        for key, v in list(new_name.items()):
            if v in taken or counts[v] > 1:
                clashes.append(key)
                del new_name[key]
        if clashes:
            self._warnings.append(f"kept the file's names of {len(clashes)} tensor(s) whose layer names would "
                                  f"collide: {', '.join(clashes[:4])}")

        # which tensors are listed
        self.key_of: dict[str, str] = {}
        used_by_layers = {k for _, _, got, _ in roles for k in got}
        unread: list[str] = []
        order = sorted(consts, key=lambda k: (first_use.get(k, len(self._nodes)),))
        for key in order:
            t = consts[key]
            if t.dtype is None:
                unread.append(f"{key} ({UNREAD_DTYPES.get(t.code, f'data type {t.code}')})")
                self._skipped.append(key)
                continue
            if is_anonymous(key) and key not in used_by_layers:
                self._skipped.append(key)  # a graph constant: a shape, axes, a scalar
                continue
            self.key_of[new_name.get(key, key)] = key
        def factor(node: _Node, key: str) -> str | None:  # alpha/beta when not 1 (a file may give any type)
            v = node.attrs.get(key, 1.0)
            return None if v == 1.0 else f"{key}={v:g}" if isinstance(v, (int, float)) else f"{key}={v!r}"[:40]

        scaled = [f"{layer or node.name or node.op} ({', '.join(x for x in (alpha, beta) if x)})"
                  for node, layer, got, _ in roles if node.op == "Gemm"
                  for alpha, beta in [(factor(node, "alpha"), factor(node, "beta") if "bias" in got.values() else None)]
                  if alpha or beta]
        if scaled:
            self._warnings.append(
                f"{len(scaled)} Gemm node(s) scale their product or bias: {', '.join(scaled[:4])}"
                f"{', ...' if len(scaled) > 4 else ''}; they compute alpha * x @ W + beta * b, so their weights as "
                "stored are not a torch Linear's (multiply the weight by alpha and the bias by beta by hand)")
        qops = Counter(n.op for n in self._nodes if n.op in QUANTIZED_OPS or n.op.startswith("QLinear"))
        if qops:
            ints = [k for k in self.key_of if self._tensors[self.key_of[k]].dtype in ("int8", "uint8", "int32")]
            self._warnings.append(
                f"the graph is quantized ({', '.join(f'{c} {op}' for op, c in qops.most_common(3))}"
                f"{', ...' if len(qops) > 3 else ''}): its {len(ints)} integer tensor(s) are listed as stored, "
                "with their scale and zero-point tensors, not dequantized; a float model's weight is "
                "(q - zero_point) * scale, which ckptfix does not compute")
        if unread:
            self._warnings.append(f"left out {len(unread)} tensor(s) of a type ckptfix does not read: "
                                  f"{', '.join(unread[:4])}{', ...' if len(unread) > 4 else ''}")

        # layer classes and configs: a layer whose tensors are exactly one op's roles
        name_of = {key: name for name, key in self.key_of.items()}
        groups: dict[str, set[str]] = {}
        from ..layers import split_key

        for name in self.key_of:
            lay, var = split_key(name)
            groups.setdefault(lay, set()).add(var)
        self._classes: dict[str, str] = {}
        self._configs: dict[str, dict] = {}
        conflicted: set[str] = set()
        stored_io: list[str] = []
        for node, _, got, cfg in roles:
            if node.op in RECURRENT_INPUTS:
                recurrent_names += [name_of[k] for k in got if k in name_of]
                continue  # no torch layer of the table holds ONNX's recurrent layout
            named = {name_of[k]: r for k, r in got.items() if k in name_of}
            split = {n: split_key(n) for n in named}
            layers = {lay for lay, _ in split.values()}
            if len(named) != len(got) or len(layers) != 1 or any(var != named[n] for n, (_, var) in split.items()):
                continue  # its tensors are not named <layer>.<role>: read from their shapes instead
            lay = layers.pop()
            if groups.get(lay) != set(named.values()) or lay in conflicted:
                continue
            if lay in self._classes and (self._classes[lay], self._configs[lay]) != (node.op, cfg):
                conflicted.add(lay)
                del self._classes[lay], self._configs[lay]
                continue
            self._classes[lay], self._configs[lay] = node.op, cfg
            if node.op in ("Gemm", "MatMul") and not cfg.get("transB"):
                stored_io.append(lay)
        if recurrent_names:
            shown = ", ".join(recurrent_names[:4]) + (", ..." if len(recurrent_names) > 4 else "")
            self._warnings.append(
                f"{len(recurrent_names)} tensor(s) of ONNX LSTM/GRU/RNN nodes are listed as ONNX stores them "
                f"({shown}): W/R are [directions, gates x hidden, in], B the input and recurrent biases in one, "
                "gates in ONNX's order (LSTM i,o,f,c; GRU z,r,h); a torch LSTM/GRU/RNN orders and splits them "
                "differently, which ckptfix does not convert: `suggest` leaves them to you")
        big = [k for k in self._skipped if consts[k].dtype is not None
               and TensorMeta(consts[k].dims, consts[k].dtype).numel > MAX_GRAPH_CONSTANT]
        if big:
            def used_by(k: str) -> str:
                ops = sorted({n.op for n, _ in consumers.get(k, [])})
                return f" (input of {'/'.join(ops)})" if ops else " (unused)"
            self._warnings.append(
                f"left out {len(big)} anonymous tensor(s) no layer ckptfix knows reads, as graph constants, though "
                f"they are not small: {', '.join(f'{k} {list(consts[k].dims)}{used_by(k)}' for k in big[:4])}"
                f"{', ...' if len(big) > 4 else ''}; if they are weights, name them in the model or convert by hand")
        stored_io = list(dict.fromkeys(x for x in stored_io if x in self._classes))
        if stored_io:
            self._warnings.append(
                f"{len(stored_io)} MatMul/Gemm(transB=0) weight(s) are stored (in, out): a torch Linear weight is "
                f"the transpose ({', '.join(s + '.weight' for s in stored_io[:4])}"
                f"{', ...' if len(stored_io) > 4 else ''}); `ckptfix suggest --target` writes it")
        self._alias(roles, name_of, split_key)

    def _alias(self, roles, name_of: dict[str, str], split_key) -> None:
        """A tensor its own layer and another read (tied weights; the dynamo exporter merges
        initializers of equal values, so ``norm2`` reads ``norm1.weight``) is listed under the other
        layer's name as well, as ``state_dict`` lists a shared tensor under each name: only for ops that store it as
        torch does (not MatMul / ``Gemm(transB=0)``, not recurrent ones), never over a name the
        file has."""
        readers: dict[str, set[str]] = {}  # tensor -> the layers reading it
        for _node, layer, got, _cfg in roles:
            for key in got:
                readers.setdefault(key, set()).add(layer)
        wanted: dict[str, set[str]] = {}
        for node, layer, got, cfg in roles:
            if not layer or node.op in RECURRENT_INPUTS or (node.op in ("Gemm", "MatMul") and not cfg.get("transB")):
                continue
            for key, role in got.items():
                name = name_of.get(key)
                own = split_key(name)[0] if name is not None else None
                # only a tensor its own layer reads too (the dynamo exporter's folded Conv+BatchNorm
                # reads c1.weight in scope b1: a scope that disagrees with the name, not a second
                # reader); a module called twice is scoped /fc/ then /fc_1/ (TorchScript exporter)
                if own is not None and own != layer and own in readers[key] \
                        and not re.fullmatch(re.escape(own) + r"_\d+", layer):
                    wanted.setdefault(f"{layer}.{role}", set()).add(key)
        aliases = {a: next(iter(keys)) for a, keys in wanted.items()
                   if len(keys) == 1 and a not in self.key_of and a not in self._tensors}
        if aliases:
            self.key_of.update(aliases)
            shown = ", ".join(f"{a} = {name_of[k]}" for a, k in list(aliases.items())[:4])
            self._warnings.append(f"{len(aliases)} tensor(s) read by another layer too are listed under that layer's "
                                  f"name as well (tied weights, or equal initializers the exporter merged): {shown}"
                                  f"{', ...' if len(aliases) > 4 else ''}")

    def _matmul_bias(self, node: _Node, weight: str, consumers, const) -> str | None:
        """The constant (N,) added to a MatMul's output (its only use): the torch exporter's Linear
        bias. (Whether N is the Linear's out_features the layer table checks.)"""
        users = consumers.get(node.outputs[0], []) if node.outputs else []
        if len(users) != 1 or users[0][0].op != "Add" or len(users[0][0].inputs) != 2:
            return None
        other = users[0][0].inputs[1 - users[0][1]]
        if const(other) is None or len(self._tensors[other].dims) != 1 or len(self._tensors[weight].dims) != 2:
            return None
        return other

    # -- the interface

    def metas(self) -> dict[str, TensorMeta]:
        return {name: TensorMeta(self._tensors[key].dims, self._tensors[key].dtype)
                for name, key in self.key_of.items()}

    def _entry(self, name: str) -> _Tensor:
        key = self.key_of.get(name)
        if key is None:
            raise KeyError(name)
        return self._tensors[key]

    def locate(self, name: str):
        t = self._entry(name)
        if t.where in ("raw", "external") and t.dtype != "bool":
            return t.file, t.offset, t.offset + t.length
        return None

    def read(self, name: str):
        import torch

        from .safetensors_io import read_tensor

        t = self._entry(name)
        meta = TensorMeta(t.dims, t.dtype)
        if t.where in ("raw", "external"):
            out = read_tensor(t.file, t.offset, t.offset + t.length, TensorMeta(t.dims, "uint8" if t.dtype == "bool"
                                                                                else t.dtype))
            return out != 0 if t.dtype == "bool" else out
        if t.where == "typed":
            try:
                return self._read_typed(t, meta)
            except Corrupt as e:
                raise InputError(self.path, f"tensor {t.key!r}: {e}") from None
        return torch.empty(meta.shape, dtype=getattr(torch, t.dtype))

    def _read_typed(self, t: _Tensor, meta: TensorMeta):
        import numpy as np
        import torch

        from .fileio import read_range

        buf = bytes(read_range(t.file, t.offset, t.offset + t.length))
        parts = []
        wire = TYPED_FIELDS[t.typed]
        for f in walk(buf, 0, len(buf), f"tensor {t.key!r}"):
            if f.number != t.typed:
                continue
            if f.wire == 2:
                payload = buf[f.offset:f.end]
                if wire == 5:
                    parts.append(np.frombuffer(payload, "<u4"))
                elif wire == 1:
                    parts.append(np.frombuffer(payload, "<u8"))
                else:
                    parts.append(varints(payload, f"tensor {t.key!r} data"))
            else:
                parts.append(np.array([f.value], dtype="<u4" if wire == 5 else np.uint64))
        bits = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
        if bits.size != meta.numel:
            raise Corrupt(f"dims {list(t.dims)} need {meta.numel} values but it holds {bits.size}")
        dt = t.dtype
        if t.typed == FLOAT_DATA:
            arr = bits.astype("<u4").view("<f4")
        elif t.typed == DOUBLE_DATA:
            arr = bits.astype("<u8").view("<f8")
        elif dt == "bool":
            arr = bits != 0
        elif dt in ("float16", "bfloat16"):
            arr = bits.astype(np.uint16)
        elif dt.startswith("float8"):
            arr = bits.astype(np.uint8)
        else:
            arr = bits.view(np.int64).astype(dt) if dt.startswith("int") else bits.astype(dt)
        out = torch.from_numpy(np.ascontiguousarray(arr).reshape(t.dims).copy())
        if dt in ("float16", "bfloat16") or dt.startswith("float8"):
            out = out.view(getattr(torch, dt))
        return out

    def layer_classes(self) -> dict[str, str]:
        return dict(self._classes)

    def layer_configs(self) -> dict[str, dict]:
        return {k: dict(v) for k, v in self._configs.items()}

    def extras(self) -> dict[str, Any]:
        from ..layers import split_key

        listed = set(self.key_of.values())
        return {"producer": self.producer, "ir_version": self.ir_version, "opsets": dict(self.opsets),
                "original_keys": dict(self.key_of), "skipped": list(self._skipped),
                "execution_order": list(dict.fromkeys(split_key(n)[0] for n in self.key_of)),
                "external_files": sorted({str(t.file.path) for t in self._tensors.values()
                                          if t.where == "external" and t.key in listed})}

    def warnings(self) -> list[str]:
        return list(self._warnings)
