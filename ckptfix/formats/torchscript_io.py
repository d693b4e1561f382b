"""TorchScript archives (``torch.jit.save``, .pt/.jit): parameters and buffers, read without
running the module.

A TorchScript archive is a zip whose entries sit under one top directory, the archive's name
(``model/``; torch takes it from the first entry):

* ``data.pkl``: the module tree, a pickle (protocol 2). Each module is an object of a
  ``__torch__.*`` class (``GLOBAL``, ``NEWOBJ``, then ``BUILD`` with a dict of its attributes);
  a tensor is ``torch._utils._rebuild_tensor_v2`` over the persistent id ``('storage',
  torch.FloatStorage, key, 'cpu', numel)``; typed lists and dicts are wrapped in
  ``torch.jit._pickle.build_intlist``, ``build_tensorlist``, ..., ``restore_type_tag``.
* ``data/<key>``: one record per storage, stored uncompressed, 64-byte aligned.
* ``constants.pkl`` (a tuple, the code's ``CONSTANTS.c0``, ``c1``, ...) with its storages in
  ``constants/<key>``: where a frozen module (``torch.jit.freeze``) keeps its weights.
* ``code/__torch__/<module path>.py``: each class's source as TorchScript prints it. A module's
  class body declares ``__parameters__ = ["weight", "bias", ]``, ``__buffers__ = [...]`` and every
  attribute with its type (``weight : Tensor``, or ``__annotations__["0"] = <type>`` for a name
  that is not an identifier), in slot order. The class of ``__torch__.a.b.C`` is ``C`` in
  ``code/__torch__/a/b.py`` (a mangled ``__torch__.a.___torch_mangle_3.C`` in
  ``code/__torch__/a/___torch_mangle_3.py``).
* ``*.debug_pkl``, ``extra/``, ``traced_inputs.pkl``, ``version``, ``byteorder``: not read (the
  byte order is checked).

Reading: the pickles go through torch's ``weights_only`` unpickler with ckptfix's placeholders
(``pickles``): ``__torch__`` classes, like any global torch does not allow, become inert
``pickles.Inert`` objects that are never imported or called; the ``torch.jit._pickle`` builders
are mapped to functions that return their argument, as torch's own do; a global that runs code
(``os.system``) refuses the file. Storages are made on the ``meta`` device at their records'
offsets, checked (present, stored, exactly the declared size) as the pickle names them; each tensor
is then read with one ``pread`` (``TorchReader.materialize``, reused, as are its zip checks). The
code files' class declarations (``declarations``: the class bodies' own lines, not the methods)
are parsed with ``ast.parse``: never compiled or run.

Naming, as ``torch.jit.load(f).state_dict()`` names them: each module's parameters (attributes in
``__parameters__`` holding a tensor), then its buffers (in ``__buffers__``, declared ``Tensor``),
in declaration order, then each submodule (an attribute holding an object whose class derives
from ``Module``), depth-first, as ``attr.``-prefixed names. A module or tensor reachable twice is
listed under each name, as ``state_dict`` does. Non-persistent buffers are included: TorchScript
does not record persistence, and the loaded module's state dict holds them. Tensor attributes
that are neither parameters nor buffers, and the tensors of ``constants.pkl``, are not in the
state dict: ``extras()`` lists them, and a module with constants but no state looks frozen
(``warnings()``).

Refused (one-line ``InputError``): a zip that does not parse, a missing or short storage record,
a compressed one (torch writes them stored), a pickle that is truncated or names a code-running
global, a code file that is missing, whose declarations do not parse or that lacks the class, a
module attribute its class does not declare (torch.jit.load fails on it too), and a module whose
state goes through ``__setstate__`` (custom ``__getstate__``) and that declares parameters,
buffers or submodules: its tensors are named by code ckptfix does not run.

Quantized modules (``torch.ao.nn.quantized``): their weights are quantized tensors inside packed
params (``torch.classes.quantized.*``) or a ``__getstate__`` tuple, which are not in
``torch.jit.load(f).state_dict()`` either; they are listed as ``not_weights`` ("quantized") with a
warning, never read. torch cannot build a quantized tensor (or its per-channel scales) on the meta
device, so a pickle naming ``torch._utils._rebuild_qtensor`` has its storages read when it is
unpickled (each checked against its record and CRC: no more than the file holds).
"""

from __future__ import annotations

import ast
import io
import re
import struct
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from .. import dtypes
from ..errors import InputError, UnsafePickleError
from ..tensors import TensorMeta, fmt_shape
from . import pickles, zipmember
from .fileio import read_range
from .torch_io import MAX_PATTERN_GLOBALS, TorchReader, _torch, _zip_records, check_built, check_storage_record

MAX_MODULE_VISITS = 1 << 18
#: names of torch's quantized dtypes (torch.ao quantized modules keep their weights in them)
QUANTIZED = ("qint8", "quint8", "qint32", "quint4x2", "quint2x4")  # modules a state dict walk visits (a shared submodule counts each time)


def _same(data):
    """``torch.jit._pickle.build_intlist`` and friends: the list itself."""
    return data


def _tensor_id(data):
    return data if isinstance(data, int) else None


def _untagged(value, type_str):
    """``restore_type_tag``: the static type matters only to TorchScript; the value as it is."""
    return value


#: the globals of torch.jit._pickle a TorchScript pickle uses, mapped to plain builders (the real
#: module's names stay code-running: pickles.CODE_RUNNING lists torch.jit.)
JIT_BUILDERS = {
    "torch.jit._pickle.build_intlist": _same,
    "torch.jit._pickle.build_tensorlist": _same,
    "torch.jit._pickle.build_doublelist": _same,
    "torch.jit._pickle.build_boollist": _same,
    "torch.jit._pickle.build_tensor_from_id": _tensor_id,
    "torch.jit._pickle.restore_type_tag": _untagged,
}


@dataclass(frozen=True)
class ClassDecl:
    """What a class body in ``code/`` declares (``ast``, never run)."""

    name: str                                 # __torch__.a.b.C
    is_module: bool                           # derives from Module
    attributes: tuple[tuple[str, str], ...]   # (name, type as written), in slot order
    parameters: frozenset[str]
    buffers: frozenset[str]
    restores_state: bool                      # defines __setstate__


def _names_list(node: ast.expr) -> list[str] | None:
    if isinstance(node, ast.List) and all(isinstance(e, ast.Constant) and isinstance(e.value, str)
                                          for e in node.elts):
        return [e.value for e in node.elts]
    return None


_METHOD = re.compile(r"  def\s+(\w+)")


def declarations(source: str) -> tuple[str, list[int]]:
    """The part of a code file that declares its classes, as Python source, and the file's line
    number of each of its lines: each class header (with a ``pass``, so a class of methods only
    stays valid), the lines of its body at the body's own indentation (two spaces, as TorchScript
    prints it), and each method as ``def name(): pass``. The methods' signatures and bodies, and
    module-level functions, are left out unparsed: code ckptfix neither needs nor runs, and the
    ``ast`` of a big traced forward would take ~130 times its size in memory."""
    out: list[str] = []
    where: list[int] = []
    in_class = False
    for i, line in enumerate(source.splitlines(), 1):
        if line[:1] not in ("", " ", "\t"):  # a module-level statement: a class, or a function
            in_class = line.startswith("class ")
            if in_class:
                out += [line, "  pass"]
                where += [i, i]
        elif in_class and line.startswith("  ") and line[2:3] not in ("", " ", "\t"):
            m = _METHOD.match(line)
            if m:
                out.append(f"  def {m.group(1)}(): pass")
            elif line.startswith("  @"):  # a method's decorator
                continue
            else:
                out.append(line)
            where.append(i)
    return "\n".join(out) + "\n", where


def parse_classes(source: str, module: str) -> dict[str, ClassDecl]:
    """The classes a code file defines, by qualified name, from its ``declarations`` (raises
    SyntaxError/ValueError)."""
    text, where = declarations(source)
    try:
        tree = ast.parse(text, mode="exec")
    except SyntaxError as e:  # its line number in the file, not in the declarations
        e.lineno = where[e.lineno - 1] if e.lineno and 0 < e.lineno <= len(where) else None
        raise
    out = {}
    for cls in tree.body:
        if not isinstance(cls, ast.ClassDef):
            continue
        attrs: list[tuple[str, str]] = []
        params: list[str] = []
        buffers: list[str] = []
        setstate = False
        for st in cls.body:
            if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name):
                ann = st.annotation
                if isinstance(ann, ast.Subscript) and isinstance(ann.value, ast.Name) and ann.value.id == "Final":
                    continue  # a constant of the class, not an attribute
                attrs.append((st.target.id, ast.unparse(ann)))
            elif isinstance(st, ast.Assign) and len(st.targets) == 1:
                t = st.targets[0]
                if isinstance(t, ast.Name) and t.id in ("__parameters__", "__buffers__"):
                    names = _names_list(st.value)
                    if names is None:
                        raise ValueError(f"class {cls.name}: {t.id} is not a list of names")
                    (params if t.id == "__parameters__" else buffers).extend(names)
                elif (isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name)
                      and t.value.id == "__annotations__" and isinstance(t.slice, ast.Constant)
                      and isinstance(t.slice.value, str)):
                    attrs.append((t.slice.value, ast.unparse(st.value)))
            elif isinstance(st, ast.FunctionDef) and st.name == "__setstate__":
                setstate = True
        name = f"{module}.{cls.name}"
        is_module = any(isinstance(b, ast.Name) and b.id == "Module" for b in cls.bases)
        out[name] = ClassDecl(name, is_module, tuple(attrs), frozenset(params), frozenset(buffers), setstate)
    return out


class TorchScriptReader(TorchReader):
    """Reads a TorchScript archive's state dict; reuses ``TorchReader``'s zip checks, placeholder
    registry and lazy storage reads (``materialize``, ``locate``, ``crc_of``)."""

    format = "torchscript"

    def __init__(self, path: str | Path, fileset=None) -> None:
        from ..limits import MAX_PICKLE_MEMBER

        super(TorchReader, self).__init__(path, fileset)  # Reader's: TorchReader's loads with torch.load
        self._file = self.fileset.open(self.path)
        _torch()  # the version check
        self.legacy = False
        self.eager = False
        self.state_path: tuple[str, ...] = ()
        self._init_registry([(f, name) for name, f in JIT_BUILDERS.items()])
        self._check_zip()  # compressed members bounded; directories, byte order, alignment
        if self._zipinfos is None:
            raise InputError(self.path, "truncated or corrupt zip archive (its directory does not parse)")
        infos = self._zipinfos
        self.archive = infos[0].filename.split("/", 1)[0] if infos and "/" in infos[0].filename else ""
        outside = [i.filename for i in infos if not self.archive or not i.filename.startswith(self.archive + "/")]
        if outside:
            raise InputError(self.path, f"zip entry {pickles.printable(outside[0])!r} is not in the archive's "
                             "directory (torch keeps every entry under one; corrupt archive)")
        try:
            records = _zip_records(self._file, infos)
        except OSError as e:
            raise InputError(self.path, f"corrupt zip archive ({e})") from None
        self._records = records
        self._offsets = {info.filename: off for off, info in records.items()}
        self._infos = {info.filename: info for info in infos}
        self._decls: dict[str, dict[str, ClassDecl]] = {}  # code file -> its classes
        with self._file.file() as f, zipfile.ZipFile(f) as z:
            self._zip = z
            root = self._unpickle(self._member(z, "data.pkl", MAX_PICKLE_MEMBER), "data.pkl", "data/")
            consts = ()
            if self._entry("constants.pkl") in self._infos:
                consts = self._unpickle(self._member(z, "constants.pkl", MAX_PICKLE_MEMBER),
                                        "constants.pkl", "constants/")
            check_built(root, self.path, from_meta=True)
            check_built(consts, self.path, from_meta=True)
            self.root_class = type(root).global_name if isinstance(root, pickles.Inert) else type(root).__name__
            if not self._is_module(root):
                raise InputError(self.path, f"data.pkl holds a {pickles.printable(self.root_class)}, not a "
                                 "TorchScript module")
            self.state, self._plain = self._state_dict(root)
            self._pickled = (root, consts)
            self._zip = None
        torch = _torch()
        self._constants = {f"CONSTANTS.c{i}": t for i, t in enumerate(consts if isinstance(consts, tuple) else ())
                           if isinstance(t, torch.Tensor)}
        self.container = self.state  # what execute writes into a .pt output: the state dict
        self._metas: dict[str, TensorMeta] = {}
        for name, t in self.state.items():
            if t.layout is not torch.strided:
                raise InputError(self.path, f"tensor {pickles.printable(name)} is {str(t.layout).removeprefix('torch.')}; "
                                 "ckptfix handles dense (strided) tensors only")
            try:
                self._metas[name] = TensorMeta(tuple(t.shape), dtypes.from_torch(t.dtype))
            except KeyError:
                raise InputError(self.path, f"tensor {pickles.printable(name)} has dtype {t.dtype}, which "
                                 "ckptfix does not handle") from None
            self._check_size(name, t)

    # -- the archive's members

    def _entry(self, name: str) -> str:
        return f"{self.archive}/{name}"

    def _member(self, z: zipfile.ZipFile, name: str, limit: int) -> bytes:
        entry = self._entry(name)
        if entry not in self._infos:
            raise InputError(self.path, f"{name} is missing from the TorchScript archive (truncated or corrupt)")
        try:
            return zipmember.read_member(self._file, z, entry, limit)
        except InputError:
            raise
        except (*zipmember.ERRORS, OSError) as e:  # OSError: a bzip2 stream that does not decode
            raise InputError(self.path, f"{name}: cannot read it from the zip archive ({e})") from None

    def _unpickle(self, data: bytes, member: str, storage_dir: str):
        """One pickle of the archive through torch's weights_only unpickler: the globals it names
        registered first (``JIT_BUILDERS``, else placeholders; a code-running one refuses the file),
        storages made on the meta device at their records' offsets."""
        from torch import _weights_only_unpickler as wo

        torch = _torch()
        safe = set(wo._get_allowed_globals()) | set(JIT_BUILDERS)
        named = set(pickles.scan_globals(io.BytesIO(data)))
        # a quantized tensor (torch.ao modules' packed weights) cannot be built on the meta device,
        # nor its per-channel scales, which are tensors of the same pickle: a pickle that builds one
        # gets its storages' bytes (each checked against its record, so no more than the file holds)
        quantized = ("torch._utils", "_rebuild_qtensor") in named
        self.eager = self.eager or quantized
        # the globals its opcodes name (a code-running one refuses the file), then what a GLOBAL
        # opcode could name anywhere in it (a pickle cut short parses to nothing: torch's
        # unpickler then reports where it ends, not an unknown class)
        self._add_inert([(m, n) for m, n in named if f"{m}.{n}" not in safe])
        patterns = [(m, n) for m, n in pickles.global_candidates(data)
                    if f"{m}.{n}" not in safe and not pickles.runs_code(f"{m}.{n}")]
        if len(patterns) <= MAX_PATTERN_GLOBALS:
            self._add_inert(patterns, counted=False)
        storages: dict[str, object] = {}
        size = self._file.size

        def persistent_load(pid):
            if not (isinstance(pid, tuple) and len(pid) == 5 and isinstance(pid[2], str)
                    and isinstance(pid[4], int) and pid[4] >= 0 and hasattr(pid[1], "dtype")):
                raise InputError(self.path, f"{member}: a storage reference is malformed (corrupt pickle)")
            _tag, kind, key, _location, numel = pid
            if key in storages:
                return storages[key]
            dtype = torch.uint8 if kind is torch.UntypedStorage else kind.dtype
            nbytes = numel * torch._utils._element_size(dtype)
            record = self._entry(storage_dir + key)
            info, off = self._infos.get(record), self._offsets.get(record)
            shown = pickles.printable(storage_dir + key)
            if info is None or off is None:
                raise InputError(self.path, f"storage record {shown} is missing (truncated or corrupt archive)")
            check_storage_record(self.path, info, off, nbytes, size, f"storage record {shown}",
                                 "torch.jit.save stores them uncompressed and ckptfix reads them in place: "
                                 "re-packed or corrupt archive")
            if quantized:  # read now (see above), CRC-checked as materialize would
                buf = read_range(self._file, off, off + nbytes)
                if zlib.crc32(buf) != info.CRC:
                    raise InputError(self.path, f"storage record {shown} fails its CRC check (data corrupt)")
                st = torch.frombuffer(bytearray(buf), dtype=torch.uint8).untyped_storage() if nbytes else \
                    torch.UntypedStorage(0)
            else:
                st = torch.UntypedStorage(nbytes, device="meta")
            st._checkpoint_offset = off
            storages[key] = torch.storage.TypedStorage(wrap_storage=st, dtype=dtype, _internal=True)
            return storages[key]

        try:
            with torch.serialization.safe_globals(self._allowed + self._inert_entries()), \
                    warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch warns about odd protocols; errors are reported below
                up = wo.Unpickler(io.BytesIO(data), encoding="utf-8")
                up.persistent_load = persistent_load
                return up.load()
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 - torch raises many types on a broken pickle
            raise self._unpickle_error(member, data, e) from None

    def _unpickle_error(self, member: str, data: bytes, e: Exception) -> InputError:
        """What a failed unpickling says: whatever torch tripped on, a pickle that could name a
        code-running global is an attack, and is called one."""
        import pickle

        hostile = [pickles.printable(f"{m}.{n}") for m, n in pickles.global_candidates(data)
                   if pickles.runs_code(f"{m}.{n}") and f"{m}.{n}" not in JIT_BUILDERS]
        if hostile:
            return UnsafePickleError(self.path, list(dict.fromkeys(hostile)))
        if isinstance(e, MemoryError):
            return InputError(self.path, f"{member}: out of memory unpickling it (a corrupt length or size field)")
        if isinstance(e, (EOFError, struct.error)):  # struct: a length field cut off at the end
            return InputError(self.path, f"{member} is truncated (the pickle ends early)")
        first = pickles.printable((str(e).strip().splitlines() or [""])[0])
        if isinstance(e, pickle.UnpicklingError):
            return InputError(self.path, f"{member}: refused to unpickle: {first}")
        return InputError(self.path, f"{member}: corrupt pickle ({type(e).__name__}: {first})")

    # -- the code's class declarations

    def _decl(self, obj) -> ClassDecl | None:
        """The class declaration of a TorchScript object (None for other placeholders, and for
        torch's C++ classes ``__torch__.torch.classes.*``, which have no code)."""
        from ..limits import MAX_CODE_MEMBER

        kind = type(obj)
        scripted = isinstance(obj, pickles.Inert) and (kind.module + ".").startswith("__torch__.")
        if not scripted or kind.module.startswith("__torch__.torch.classes"):
            return None
        code = "code/" + kind.module.replace(".", "/") + ".py"
        if code not in self._decls:
            shown = pickles.printable(code)
            if self._entry(code) not in self._infos:
                raise InputError(self.path, f"code file {shown} for class {pickles.printable(kind.global_name)} "
                                 "is missing (truncated or corrupt archive)")
            raw = self._member(self._zip, code, MAX_CODE_MEMBER)
            try:
                self._decls[code] = parse_classes(raw.decode("utf-8"), kind.module)
            except SyntaxError as e:
                at = f", line {e.lineno}" if e.lineno else ""
                raise InputError(self.path, f"code file {shown} does not parse "
                                 f"({pickles.printable(e.msg)}{at})") from None
            except (ValueError, UnicodeDecodeError, RecursionError, MemoryError) as e:
                raise InputError(self.path, f"code file {shown} does not parse ({type(e).__name__}: "
                                 f"{pickles.printable(str(e))[:120]})") from None
        decl = self._decls[code].get(kind.global_name)
        if decl is None:
            raise InputError(self.path, f"code file {pickles.printable(code)} defines no class "
                             f"{pickles.printable(kind.qualname)} (corrupt archive)")
        return decl

    def _is_module(self, obj) -> bool:
        decl = self._decl(obj)
        return decl is not None and decl.is_module

    # -- naming

    def _state_dict(self, root) -> tuple[dict, dict]:
        """``(state dict, other tensor attributes)``, named as torch.jit.load(f).state_dict() and
        ``module.attribute[.path]``; iterative, pre-order like ``nn.Module.state_dict``."""
        from ..limits import MAX_DEPTH

        torch = _torch()
        state: dict = {}
        plain: dict = {}
        stack = [("", root, 1)]
        visits = 0
        while stack:
            prefix, obj, depth = stack.pop()
            visits += 1
            if depth > MAX_DEPTH or visits > MAX_MODULE_VISITS:
                raise InputError(self.path, "its module tree is nested too deeply or expands without end "
                                 "(a module inside itself): corrupt or hostile file")
            decl = self._decl(obj)
            where = pickles.printable(prefix.rstrip(".") or "the top module")
            if decl.restores_state:
                if decl.parameters or decl.buffers or any(
                        "__torch__." in t.replace("__torch__.torch.classes.", "") for _n, t in decl.attributes):
                    raise InputError(self.path, f"module {where} ({pickles.printable(decl.name)}) restores its "
                                     "state with __setstate__ (custom modules): its tensors are named by code "
                                     "ckptfix does not run")
                # it declares no parameter, buffer or submodule (a torch.ao quantized layer): nothing
                # of its in the state dict; the tensors of the state its __getstate__ gave are listed
                for path, node, _d in pickles.walk(obj.state):
                    if isinstance(node, torch.Tensor):
                        plain.setdefault(prefix + "__getstate__" + ("" if path == "<root>" else _tidy(path)), node)
                continue
            attrs = obj.state
            if not isinstance(attrs, dict):
                raise InputError(self.path, f"module {where}: data.pkl holds no attribute dict for it (corrupt)")
            declared = dict(decl.attributes)
            extra = [k for k in attrs if k not in declared]
            if extra:
                raise InputError(self.path, f"module {where}: attribute {pickles.printable(str(extra[0]))} is "
                                 f"not declared by its class {pickles.printable(decl.name)} (corrupt archive)")
            tensor = {n for n in declared if isinstance(attrs.get(n), torch.Tensor)}
            params = [n for n in declared if n in decl.parameters and n in tensor]
            buffers = [n for n in declared if n in decl.buffers and declared[n] == "Tensor" and n in tensor
                       and n not in params]
            subs = [n for n in declared if n in attrs and self._is_module(attrs[n])]
            for n in params + buffers:
                state[prefix + n] = attrs[n]
            for n in declared:
                if n in attrs and n not in params and n not in buffers and n not in subs:
                    for path, node, _d in pickles.walk(attrs[n]):
                        if isinstance(node, torch.Tensor):
                            plain.setdefault(prefix + n + ("" if path == "<root>" else _tidy(path)), node)
            stack.extend(reversed([(f"{prefix}{n}.", attrs[n], depth + 1) for n in subs]))
        ids = {id(t) for t in state.values()}
        plain = {k: t for k, t in plain.items() if id(t) not in ids}  # LSTM's _flat_weights: its parameters
        return state, plain

    # -- what inspect shows

    @staticmethod
    def _describe(tensors: dict) -> dict[str, str]:
        def name(t) -> str:
            try:
                return dtypes.from_torch(t.dtype)
            except KeyError:
                return str(t.dtype).removeprefix("torch.")

        return {n: f"{name(t)}{fmt_shape(t.shape)}" for n, t in tensors.items()}

    def extras(self):
        out = {"format_description": "TorchScript archive", "archive": self.archive,
               "module": pickles.printable(self.root_class)}
        if self._plain:
            out["tensor_attributes"] = self._describe(self._plain)
        if self._constants:
            out["constants"] = self._describe(self._constants)
        others = sorted({pickles.printable(type(node).global_name) for _p, node, _d in pickles.walk(self._pickled)
                         if isinstance(node, pickles.Inert) and not node.global_name.startswith("__torch__")})
        if others:
            out["inert_globals"] = others
        not_weights = {**{n: "quantized" if self._plain[n].is_quantized else "tensor attribute" for n in self._plain},
                       **{n: "constant" for n in self._constants}}
        if not_weights:
            out["not_weights"] = not_weights
        return out

    def warnings(self) -> list[str]:
        out = []
        if not self.state and self._constants:
            out.append(f"no parameters or buffers: the module looks frozen (torch.jit.freeze), its weights "
                       f"are {len(self._constants)} constants of its code (constants.pkl), not a state dict")
        quantized = [n for n, t in self._plain.items() if t.is_quantized]
        if quantized:
            out.append(f"{len(quantized)} quantized tensor(s) (a torch.ao quantized module's packed weights: "
                       f"{', '.join(map(pickles.printable, quantized[:3]))}{', ...' if len(quantized) > 3 else ''}) "
                       "are not in the state dict, as in torch.jit.load(...).state_dict(); ckptfix does not read "
                       "quantized tensors")
        if self._plain:
            names = list(self._plain)
            shown = ", ".join(map(pickles.printable, names[:6]))
            shown += f", ... ({len(names)} in all)" if len(names) > 6 else ""
            out.append(f"{len(names)} tensor attribute(s) are neither parameters nor buffers, so not in the "
                       f"state dict (as in torch.jit.load(...).state_dict()): {shown}")
        return out


def _tidy(path: str) -> str:
    """A ``pickles.walk`` path inside an attribute as ``.key`` / ``[i]`` (a placeholder's state
    dict shown as its attributes)."""
    path = re.sub(r"<[^<>]*>\[\d+\]", "", path)
    return path if path.startswith(("[", ".")) else "." + path
