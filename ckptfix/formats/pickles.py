"""What a pickle may make: the one place that decides.

A PyTorch checkpoint is a pickle, and a pickle is a program: ``GLOBAL`` names any importable
callable and ``REDUCE`` calls it. ckptfix reads pickles with torch's ``weights_only`` unpickler,
which builds tensors, plain containers and a fixed set of torch types. Every *other* global a
pickle names is handled here, by construction rather than by a block-list:

- It is **never imported and never called.** It becomes an :class:`Inert` placeholder: a class
  that records the global's name, and instances that record what the pickle gave them (the
  arguments of ``REDUCE``/``NEWOBJ``, the ``BUILD`` state, ``SETITEMS`` items). A Lightning
  ``hyper_parameters`` holding an omegaconf config, an ``argparse.Namespace`` or a numpy scalar
  survives as data, is shown by ``inspect``, and is written back into a ``.pt`` output as the
  same pickle opcodes (:func:`save_with_inert`), so the output still loads where the input did.
- A file naming a global that is a known way to run code (``os.system``, ``builtins.eval``,
  ``subprocess.*``, ``timeit.timeit`` ...: :func:`runs_code`) is refused as hostile, exit 2. That
  list only decides *how loudly* ckptfix refuses: a name it misses is still inert.
- ``--allow-global NAME`` admits the *real* object only for the vetted data constructors in
  :data:`VETTED` (``argparse.Namespace``, ``datetime.datetime``, numpy arrays and scalars, ...):
  classes whose construction from pickled arguments runs no user code and touches no file.
  Any other name is refused (:func:`admit`), so no flag can make a file execute code, import a
  module, or read or write a file.
- A pickle that is not a torch checkpoint (DCP's ``.metadata``, the ``data.pkl`` of one of its
  items) is read by :func:`load_inert`: the standard library's unpickler whose one gate to code,
  ``find_class``, admits only the names its caller lists, each as a placeholder; any other global
  refuses the file.
"""

from __future__ import annotations

import copyreg
import pickle
import re
import types
from typing import Callable, Iterable

# --------------------------------------------------------------------------------------------
# the names


#: Globals a hostile pickle uses to run code or touch files (module prefixes end in "."). A
#: file naming one is refused outright. Not the security boundary (unknown names are inert).
CODE_RUNNING = (
    "os.", "posix.", "nt.", "sys.", "subprocess.", "_posixsubprocess.", "runpy.", "importlib.",
    "builtins.eval", "builtins.exec", "builtins.compile", "builtins.open", "builtins.__import__",
    "builtins.getattr", "builtins.setattr", "builtins.delattr", "builtins.globals", "builtins.vars",
    "builtins.breakpoint", "builtins.input", "builtins.help", "builtins.exit", "builtins.quit",
    "pty.", "shutil.", "socket.", "ctypes.", "_ctypes.", "pickle.", "_pickle.", "marshal.", "code.",
    "codeop.", "multiprocessing.", "asyncio.", "signal.", "pydoc.", "webbrowser.", "timeit.",
    "cProfile.", "profile.", "pdb.", "bdb.", "trace.", "logging.config.", "io.", "_io.", "codecs.",
    "tempfile.", "glob.", "pathlib.Path.", "pathlib.PosixPath.", "zipfile.",
    "tarfile.", "urllib.", "http.", "ftplib.", "smtplib.", "telnetlib.", "xmlrpc.", "sqlite3.",
    "dbm.", "shelve.", "fileinput.", "linecache.", "imp.", "zipimport.", "functools.", "operator.",
    "inspect.", "types.CodeType", "types.FunctionType", "types.LambdaType", "types.MethodType",
    "types.ModuleType", "numpy.load", "numpy.save", "numpy.fromfile",
    "numpy.loadtxt", "numpy.genfromtxt", "numpy.memmap", "numpy.lib.", "numpy.testing.",
    "numpy.f2py.", "numpy.distutils.", "numpy.ctypeslib.", "torch.load", "torch.save", "torch.hub.",
    "torch.ops.", "torch.jit.", "torch.fx.", "torch.package.", "torch.utils.cpp_extension.",
    "torch.serialization.", "torch._dynamo.", "torch._inductor.", "torch.compile", "torch.from_file",
    "torch.classes.",
)

#: The data constructors ``--allow-global`` can admit as the real object. Each builds a value from
#: the pickled arguments (strings, numbers, bytes, tuples) and nothing else, in time and memory
#: linear in them (not ``fractions.Fraction("1e200000000")``, ``range``/``deque`` of 2**62).
VETTED = frozenset({
    "argparse.Namespace", "types.SimpleNamespace", "collections.OrderedDict", "collections.Counter",
    "builtins.set", "builtins.frozenset", "builtins.complex", "builtins.slice",
    "datetime.datetime", "datetime.date", "datetime.time", "datetime.timedelta", "datetime.timezone",
    "uuid.UUID",
    "pathlib.PurePosixPath", "pathlib.PureWindowsPath", "pathlib.PosixPath",
    "numpy.dtype", "numpy.ndarray", "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct", "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
})
_VETTED_DTYPE = re.compile(r"numpy\.dtypes\.\w+DType")  # numpy 2 pickles dtypes by their class


def runs_code(name: str) -> bool:
    """Whether the pickle global ``name`` (``module.qualname``) is a known way to run code: a
    name in :data:`CODE_RUNNING`, or any builtin function (builtin classes, ``int``, ``slice``,
    are data)."""
    if name.startswith(CODE_RUNNING) or name in CODE_RUNNING:
        return True
    if name.startswith("builtins."):
        import builtins

        return not isinstance(getattr(builtins, name[len("builtins."):], None), type)
    return False


def vetted(name: str) -> bool:
    return name in VETTED or bool(_VETTED_DTYPE.fullmatch(name))


def admit(name: str) -> object:
    """The real object for ``--allow-global name``; ValueError (with the reason) for any name
    that is not a vetted data constructor. Imports only the vetted (stdlib or numpy) module."""
    import importlib

    full = name if "." in name else f"builtins.{name}"
    if runs_code(full):
        raise ValueError("it can run code, which no checkpoint needs")
    if not vetted(full):
        raise ValueError("only vetted data types can be admitted (e.g. argparse.Namespace, "
                         "datetime.datetime, numpy.dtype); ckptfix reads any other global as "
                         "inert data without running it, so no flag is needed")
    module, _, attr = full.rpartition(".")
    for i in range(module.count(".") + 1, 0, -1):  # numpy.core.multiarray._reconstruct
        head = ".".join(full.split(".")[:i])
        try:
            obj = importlib.import_module(head)
        except ImportError:
            continue
        try:
            for part in full.split(".")[i:]:
                obj = getattr(obj, part)
        except AttributeError:
            break
        return obj
    raise ValueError("cannot import it here")


# --------------------------------------------------------------------------------------------
# the placeholders


class Inert:
    """A pickled object that was not built: the global it names and what the pickle gave it.

    Subclasses are made per global name (:func:`inert_class`); ``type(obj).global_name`` is
    ``module.qualname``. ``args`` are the ``REDUCE`` (``how == "call"``) or ``NEWOBJ``
    (``how == "new"``) arguments, ``state`` the ``BUILD`` state (``None`` if none), ``items``
    the ``SETITEMS`` pairs. Nothing in here is ever called.
    """

    module: str = ""
    qualname: str = ""
    global_name: str = ""
    exact: bool = True

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        object.__setattr__(self, "_inert", {"how": "new", "args": args, "kwargs": kwargs,
                                            "state": None, "items": []})
        return self

    def __init__(self, *args, **kwargs) -> None:  # only REDUCE calls the class
        self._inert.update(how="call", args=args, kwargs=kwargs)

    def __setstate__(self, state) -> None:
        self._inert["state"] = state

    def __setitem__(self, key, value) -> None:  # SETITEM(S) on a dict subclass
        self._inert["items"].append((key, value))

    @property
    def args(self) -> tuple:
        return self._inert["args"]

    @property
    def state(self):
        return self._inert["state"]

    @property
    def items(self) -> list:
        return self._inert["items"]

    def __repr__(self) -> str:
        d = self._inert
        inner = ", ".join([repr(a) for a in d["args"]] + ([f"state={d['state']!r}"] if d["state"] is not None else []))
        return f"<inert {self.global_name}({inner[:200]})>"

    def __reduce_ex__(self, protocol):
        d = self._inert
        items = iter(d["items"]) if d["items"] else None
        if d["how"] == "call":
            return (type(self), d["args"], d["state"], None, items)
        return (copyreg.__newobj__, (type(self), *d["args"]), d["state"], None, items)

    def children(self) -> Iterable:
        d = self._inert
        yield from d["args"]
        if d["state"] is not None:
            yield d["state"]
        for _k, v in d["items"]:
            yield v


def children(node) -> list[tuple[str, object]]:
    """``(label, child)`` of one node of a loaded pickle: dict keys and values, list, tuple and set
    items, what a placeholder holds, and the instance attributes of anything else that has them
    (a tensor's, a vetted object's): every place a pickle can put an object."""
    if isinstance(node, dict):
        out = []
        for k, v in dict.items(node):  # the type's own method: an instance attribute may shadow it
            if not isinstance(k, (str, int, float, bool, type(None))):
                out.append((f"<key {type(k).__name__}>", k))
            out.append((str(k), v))
        return out
    if isinstance(node, (list, tuple)):
        return [(f"[{i}]", v) for i, v in enumerate(node)]
    if isinstance(node, (set, frozenset)):
        return [(f"{{{i}}}", v) for i, v in enumerate(node)]
    if isinstance(node, Inert):
        return [(f"<{type(node).global_name}>[{i}]", v) for i, v in enumerate(node.children())]
    attrs = getattr(node, "__dict__", None) if not isinstance(node, type) else None
    if isinstance(attrs, dict) and attrs:
        return [(f"@{k}", v) for k, v in attrs.items()]
    return []


def walk(obj) -> Iterable[tuple[str, object, int]]:
    """Every node of a loaded pickle with its path and depth (the root is 1), each once: pickles
    can share and even cycle (omegaconf nodes point at their parents). Iterative, so nesting
    depth costs no stack."""
    seen: set[int] = set()
    stack: list[tuple[str, object, int]] = [("", obj, 1)]
    while stack:
        path, node, depth = stack.pop()
        if id(node) in seen:
            continue
        kids = children(node)
        if kids or isinstance(node, (dict, list, tuple, set, frozenset, Inert)):
            seen.add(id(node))
        yield path or "<root>", node, depth
        for label, v in reversed(kids):
            sep = "" if label.startswith(("[", "<", "{", "@")) or not path else "."
            stack.append((f"{path}{sep}{label}", v, depth + 1))


def transform(obj, leaf: Callable, memo: dict | None = None):
    """A copy of ``obj``'s containers (dict and its subclasses, keys included, list, tuple,
    ``torch.Size``, set, placeholders) with ``leaf(x)`` for every other value; shared and cyclic
    references stay shared and cyclic. One frame per level: nesting is bounded by the reader."""
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, dict):
        out = type(obj)() if type(obj) is not dict else {}
        memo[id(obj)] = out
        for k, v in dict.items(obj):
            out[transform(k, leaf, memo)] = transform(v, leaf, memo)
        return out
    if isinstance(obj, list):
        out = []
        memo[id(obj)] = out
        for v in obj:
            out.append(transform(v, leaf, memo))
        return out
    if isinstance(obj, (tuple, set, frozenset)):
        items = []
        for v in obj:
            items.append(transform(v, leaf, memo))
        kind = type(obj)
        out = kind(items) if kind in (tuple, set, frozenset) or kind.__name__ == "Size" else tuple(items)
        memo[id(obj)] = out
        return out
    attrs = getattr(obj, "__dict__", None) if not isinstance(obj, type) else None
    if isinstance(attrs, dict) and attrs and vetted(f"{type(obj).__module__}.{type(obj).__qualname__}"):
        import copy

        new = copy.copy(obj)  # a vetted data object (argparse.Namespace): its attributes copied too
        memo[id(obj)] = new
        for k, v in attrs.items():
            new.__dict__[k] = transform(v, leaf, memo)
        return new
    if isinstance(obj, Inert):
        new = object.__new__(type(obj))
        memo[id(obj)] = new
        d = obj._inert
        object.__setattr__(new, "_inert", {"how": d["how"], "kwargs": d["kwargs"],
                                           "args": transform(d["args"], leaf, memo),
                                           "state": transform(d["state"], leaf, memo),
                                           "items": [(k, transform(v, leaf, memo)) for k, v in d["items"]]})
        return new
    return leaf(obj)


def module_state(obj) -> dict | None:
    """The state dict of a whole pickled ``torch.nn.Module`` kept as a placeholder
    (``torch.save(model)``), named and ordered as ``model.state_dict()`` names them: each module's
    parameters, then its persistent buffers, then its children depth-first. None if ``obj`` is
    not such a placeholder. Read from the recorded state only: nothing of the class is run."""
    def parts(m):
        st = m.state if isinstance(m, Inert) else None
        if not isinstance(st, dict) or not isinstance(st.get("_parameters"), dict) \
                or not isinstance(st.get("_modules"), dict):
            return None
        return st

    if parts(obj) is None:
        return None
    import torch

    out: dict = {}
    seen: set[int] = set()
    stack = [("", obj)]
    while stack:
        prefix, m = stack.pop()
        st = parts(m)
        if st is None or id(m) in seen:
            continue
        seen.add(id(m))
        skip = st.get("_non_persistent_buffers_set") or set()
        for group in (st["_parameters"], st.get("_buffers") or {}):
            for name, t in dict.items(group):
                if isinstance(name, str) and isinstance(t, torch.Tensor) and (group is st["_parameters"] or name not in skip):
                    out[prefix + name] = t
        stack.extend(reversed([(f"{prefix}{n}.", sub) for n, sub in dict.items(st["_modules"])
                               if isinstance(n, str) and sub is not None]))
    return out


def inert_class(module: str, qualname: str, *, exact: bool = True) -> type:
    """A fresh placeholder class for the global ``module.qualname``; ``exact``: whether that
    split is known from the file (else it can be read, but not written back)."""
    full = f"{module}.{qualname}"
    return type(f"Inert[{printable(full)}]", (Inert,), {"module": module, "qualname": qualname, "global_name": full,
                                            "exact": exact, "__module__": __name__})


_GLOBAL_OP = re.compile(rb"(?=c([^\x00-\x1f]{1,300})\n([^\x00-\x1f]{1,300})\n)")


def global_candidates(data: bytes | None) -> list[tuple[str, str]]:
    """Every ``(module, name)`` a ``GLOBAL`` opcode could stand for anywhere in ``data``, found
    by pattern, not by parsing (so one odd opcode cannot hide the rest; some may be false
    positives, which only ever become unused placeholders). Decoded as torch's unpickler does."""
    if not data:
        return []
    found = []
    for m in _GLOBAL_OP.finditer(data):
        try:
            found.append(py3_global(m.group(1).decode("utf-8"), m.group(2).decode("utf-8")))
        except UnicodeDecodeError:
            continue
    return list(dict.fromkeys(found))


def split_global(full: str) -> tuple[str, str]:
    """``'a.b.C'`` -> ``('a.b', 'C')`` for a name known only as one string."""
    module, _, name = full.rpartition(".")
    return module or "builtins", name


# --------------------------------------------------------------------------------------------
# writing placeholders back


class _InertPickler(pickle._Pickler):  # the pure-Python pickler: save_global can be overridden
    def save_global(self, obj, name=None):
        if isinstance(obj, type) and issubclass(obj, Inert) and obj is not Inert:
            if "\n" in obj.module or "\n" in obj.qualname:  # cannot come from GLOBAL; never inject opcodes
                raise pickle.PicklingError(f"bad global name {obj.global_name!r}")
            if self.proto >= 4:
                self.save(obj.module)
                self.save(obj.qualname)
                self.write(pickle.STACK_GLOBAL)
            else:
                self.write(pickle.GLOBAL + obj.module.encode("utf-8") + b"\n"
                           + obj.qualname.encode("utf-8") + b"\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


#: A ``pickle_module`` for ``torch.save`` that writes placeholders as the globals they stand for.
INERT_PICKLE = types.ModuleType("ckptfix_inert_pickle")
INERT_PICKLE.Pickler = _InertPickler
INERT_PICKLE.dump = pickle.dump
INERT_PICKLE.__version__ = "1"


# --------------------------------------------------------------------------------------------
# reading a pickle's globals without running it


_STRING_OPS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
               "BINUNICODE8"}
_NO_PUSH_OPS = {"PROTO", "FRAME", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "STOP"}


def py3_global(module: str, name: str) -> tuple[str, str]:
    """``(module, name)`` as Python 3 unpicklers (and torch's) resolve it: protocols < 3 write
    Python 2 names (``__builtin__.eval``, ``commands.Popen`` for ``subprocess.Popen``)."""
    import _compat_pickle

    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return module, name


def scan_globals(fp, max_pickles: int = 1) -> list[tuple[str, str]]:
    """The globals the pickle(s) read from ``fp`` name, as ``(module, name)``, found by parsing
    opcodes only: nothing is imported or run. Every protocol, ``GLOBAL``/``INST`` and
    ``STACK_GLOBAL`` (whose strings are tracked through the memo; ``('', '<computed global>')``
    where they cannot be). Up to ``max_pickles`` consecutive pickles (torch's legacy format is
    five); only complete ones count, so bytes that merely parse for a while prove nothing."""
    import pickletools

    found: list[tuple[str, str]] = []
    for _ in range(max_pickles):
        names: list[tuple[str, str]] = []
        pushed: list = []  # the values pushed so far, strings kept (enough for STACK_GLOBAL)
        memo: dict = {}
        try:
            for op, arg, _pos in pickletools.genops(fp):
                if op.name in ("GLOBAL", "INST"):
                    mod, _, nm = str(arg).partition(" ")
                    names.append(py3_global(mod, nm))
                elif op.name == "STACK_GLOBAL":
                    mod, nm = (pushed[-2:] if len(pushed) >= 2 else [None, None])
                    names.append(py3_global(mod, nm) if isinstance(mod, str) and isinstance(nm, str)
                                 else ("", "<computed global>"))
                if op.name == "MEMOIZE":
                    memo[len(memo)] = pushed[-1] if pushed else None
                elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[arg] = pushed[-1] if pushed else None
                elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                    pushed.append(memo.get(arg))
                elif op.name in _STRING_OPS:
                    pushed.append(arg if isinstance(arg, str) else None)
                elif op.name not in _NO_PUSH_OPS:
                    pushed.append(None)
                del pushed[:-2]
        except Exception:  # noqa: BLE001 - not (or no longer) a pickle: keep what was complete
            break
        found.extend(names)
    return list(dict.fromkeys(found))


def printable(name: str) -> str:
    """A name from a file, for a one-line message: controls escaped (``errors.one_line``), at
    most 120 characters."""
    from ..errors import one_line

    return one_line(name)[:120]


def pickle_globals(fp, max_pickles: int = 1) -> list[str]:
    """:func:`scan_globals` as printable ``module.name`` strings."""
    return list(dict.fromkeys(printable(f"{m}.{n}" if m else n) for m, n in scan_globals(fp, max_pickles)))


# --------------------------------------------------------------------------------------------
# pickles that are not torch checkpoints (DCP's .metadata, the data.pkl of one of its records)


class _OnlyThese(pickle.Unpickler):
    """The C unpickler with its one gate to code, ``find_class`` (every ``GLOBAL``,
    ``STACK_GLOBAL``, ``INST`` and ``EXT`` opcode goes through it), narrowed to an allow-list:
    each allowed name resolves to a placeholder class, never to the real object."""

    def __init__(self, file, allowed: Callable[[str], bool], refuse: Callable[[str], None]) -> None:
        super().__init__(file)
        self._allowed, self._refuse = allowed, refuse
        self._classes: dict[str, type] = {}

    def find_class(self, module, name):
        module, name = py3_global(str(module), str(name))
        full = f"{module}.{name}"
        if not self._allowed(full):
            self._refuse(full)
            raise pickle.UnpicklingError(f"global {full} refused")  # refuse() raises; never reached
        if full not in self._classes:  # one class per name: a dtype named twice is the same object
            self._classes[full] = inert_class(module, name)
        return self._classes[full]


def load_inert(data: bytes, allowed: Callable[[str], bool], path, what: str, *,
               persistent_load: Callable | None = None):
    """Unpickle ``data``, a pickle that is not a torch checkpoint, where only the globals
    ``allowed(name)`` admits may appear, each as an :class:`Inert` placeholder class (so a
    dataclass comes back as a placeholder holding its fields, a ``torch.Size`` as one holding
    its tuple, a dtype as the placeholder class ``torch.float32``): nothing is imported or
    called. Any other global refuses the file: one that runs code (:func:`runs_code`) as hostile
    (``UnsafePickleError``), any other as something ``what`` never holds. ``persistent_load``
    handles persistent ids (none allowed without it). A corrupt pickle is an InputError naming
    ``path``. The opcodes are parsed first (``pickletools``, which allocates nothing): every
    declared length must fit in ``data``, because the C unpickler allocates a ``BYTEARRAY8``'s
    length before reading it (and CPython 3.11 prints a stray SystemError when that fails)."""
    import io
    import pickletools

    from ..errors import CkptfixError, InputError, UnsafePickleError

    try:
        for _op in pickletools.genops(io.BytesIO(data)):
            pass
    except Exception as e:  # noqa: BLE001 - ValueError for a length past the end, others for garbage
        first = (str(e).strip().splitlines() or [""])[0]
        raise InputError(path, f"{what} is not a valid pickle ({printable(first)})") from None

    def refuse(full: str) -> None:
        if runs_code(full):
            raise UnsafePickleError(path, [printable(full)])
        raise InputError(path, f"{what} names the global {printable(full)}, which it never holds: "
                         "refused (ckptfix builds only the types it expects there, as inert data)")

    u = _OnlyThese(io.BytesIO(data), allowed, refuse)
    if persistent_load is not None:
        u.persistent_load = persistent_load
    try:
        return u.load()
    except CkptfixError:
        raise
    except MemoryError:
        raise InputError(path, f"{what}: a length in the pickle is larger than this machine's memory "
                         "(corrupt or hostile)") from None
    except RecursionError:
        raise InputError(path, f"{what}: the pickle is nested too deeply (corrupt or hostile)") from None
    except Exception as e:  # noqa: BLE001 - the unpickler raises many types on bad input
        first = (str(e).strip().splitlines() or [""])[0]
        raise InputError(path, f"{what} is not a valid pickle ({type(e).__name__}: {printable(first)})") from None
