"""PyTorch checkpoints (.pt/.pth/.bin/.ckpt): a lazy, weights_only reader and a writer.

Reading never runs code from the file: ``torch.load(..., weights_only=True)`` always, and the only
way to admit more globals is ``allow_globals`` (the CLI's ``--allow-global``), scoped with
``torch.serialization.safe_globals``.

Metadata comes from loading the pickle onto the ``meta`` device: torch then allocates nothing and
reads no storage, but records each storage's byte offset in the zip. Before any data is read, every
storage is checked against the zip's own records (stored uncompressed, exactly the declared size,
inside the file), because torch would otherwise read a short or compressed record silently.
Each tensor is then read with one ``pread`` of its storage.
"""

from __future__ import annotations

import collections
import os
import re
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

from .. import dtypes
from ..errors import InputError, UnsafePickleError, UsageError
from ..tensors import TensorMeta
from . import pickles
from .base import Reader
from .fileio import read_range

MAX_INERT_GLOBALS = 256  # distinct unknown globals one pickle may name (omegaconf configs need ~10)
MAX_PATTERN_GLOBALS = 4096  # GLOBAL-shaped byte patterns pre-registered in one load (see pickles.global_candidates)
MIN_TORCH = (2, 10)  # earlier versions have known weights_only bypasses (CVE-2025-32434, CVE-2026-24747)
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network",
                   "weights", "params", "ema_state_dict")


def _torch():
    import torch

    ver = tuple(int(x) for x in re.findall(r"\d+", torch.__version__)[:2])
    if ver < MIN_TORCH:
        raise UsageError(f"reading pickle checkpoints needs torch >= 2.10 (have {torch.__version__}): "
                         "earlier versions have known weights_only bypasses")
    return torch


def resolve_global(name: str, path: Path | None = None):
    """The real object for ``--allow-global name``: only a vetted data constructor
    (``pickles.VETTED``); any other name is refused, so no flag makes a file run code. The
    refusal names ``path``, the file being read, when given."""
    try:
        return pickles.admit(name)
    except ValueError as e:
        msg = f"--allow-global {name} refused: {e}"
        return_err = InputError(path, msg) if path else UsageError(msg)
        raise return_err from None


def is_state_dict(obj) -> bool:
    import torch

    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def find_state_dict(obj, state_key: str | None, path: Path) -> tuple[str, ...]:
    """Where the state dict sits inside a loaded container, as a key path (``()`` = top level)."""
    if state_key:
        if isinstance(obj, dict) and state_key in obj and is_state_dict(obj[state_key]):
            return (state_key,)
        node, keys = obj, []
        for k in state_key.split("."):
            if not isinstance(node, dict) or k not in node:
                raise InputError(path, f"--state-key {state_key!r} not found "
                                 f"(top-level keys: {_keys(obj)})")
            node = node[k]
            keys.append(k)
        if not is_state_dict(node):
            raise InputError(path, f"--state-key {state_key!r} is not a dict of tensors")
        return tuple(keys)
    if is_state_dict(obj):
        return ()
    if isinstance(obj, dict):
        for k in STATE_DICT_KEYS:
            if is_state_dict(obj.get(k)):
                return (k,)
        found = [k for k, v in obj.items() if is_state_dict(v)]
        if len(found) == 1:
            return (found[0],)
        if found:
            raise InputError(path, f"several state dicts in this checkpoint ({', '.join(map(str, found))})",
                             hint="choose one with --state-key")
        if any(_is_tensor(v) for v in obj.values()):
            return ()  # tensors at the top level beside other entries ({'weight': t, 'epoch': 5})
    raise InputError(path, f"no state dict (a dict of tensors) found (top-level: {_keys(obj)})",
                     hint="choose one with --state-key")


def _keys(obj) -> str:
    if isinstance(obj, dict):
        ks = [str(k) for k in obj]
        return ", ".join(ks[:8]) + (", ..." if len(ks) > 8 else "") or "empty dict"
    return type(obj).__name__


def _is_tensor(v) -> bool:
    import torch

    return isinstance(v, torch.Tensor)


def get_path(obj, keys: tuple[str, ...]):
    for k in keys:
        obj = obj[k]
    if not keys and isinstance(obj, dict) and not all(_is_tensor(v) for v in obj.values()):
        return {k: v for k, v in obj.items() if _is_tensor(v)}
    return obj


def _unsafe_globals(path: Path) -> list[tuple[str, str]]:
    """The globals of the checkpoint's pickle(s) that torch's weights_only unpickler does not
    allow, found by parsing opcodes (nothing is run)."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        safe = set(_get_allowed_globals())
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                pkls = [n for n in z.namelist() if n.endswith("data.pkl")]
                names = []
                for n in pkls[:1]:
                    with z.open(n) as fp:
                        names = pickles.scan_globals(fp)
        else:
            from .detect import _looks_like_old_pickle

            with open(path, "rb") as fp:
                head = fp.read(512)
                fp.seek(0)
                # only a pickle (a broken zip's bytes could parse as one by chance)
                ok = head[:1] == b"\x80" or _looks_like_old_pickle(head)
                names = pickles.scan_globals(fp, max_pickles=5) if ok else []
    except Exception:  # noqa: BLE001 - a hint only: the load loop finds the rest
        return []
    return [(m, n) for m, n in names if f"{m}.{n}" not in safe]


def _global_in_error(msg: str) -> str | None:
    """The global torch's unpickler refused, from its message (it drops ``builtins.``)."""
    m = re.search(r"GLOBAL ([^\s]+)", msg)
    if not m:
        return None
    name = m.group(1)
    return name if "." in name else f"builtins.{name}"


def _describe_load_error(path: Path, e: Exception) -> InputError:
    msg = str(e)
    # whatever torch tripped on, a pickle naming a code-running global is an attack: say so
    hostile = [f"{m}.{n}" for m, n in _unsafe_globals(path) if pickles.runs_code(f"{m}.{n}")]
    if hostile:
        return UnsafePickleError(path, [pickles.printable(n) for n in hostile])
    if "Can only" in msg and ("inert" in msg.lower() or "Inert[" in msg):
        m = re.search(r"Inert\[([^\]]+)\]", msg)
        return InputError(path, f"a pickled {m.group(1) if m else 'object'} is built in a way ckptfix "
                          "cannot keep as inert data (dict or list items on an unknown type)")
    if "encryption" in msg:
        m = re.search(r"for ([\w./-]+): unsupported encryption", msg)
        return InputError(path, f"zip entry {m.group(1) if m else ''} is encrypted (a PyTorch checkpoint "
                          "never is): corrupt or hostile file")
    m = re.search(r"failed locating file ([\w./-]+): file not found", msg)
    if m:
        return InputError(path, f"storage record {m.group(1)} is missing (truncated or corrupt archive)")
    if "WeightsUnpickler error:" in msg:
        detail = msg.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0]
        return InputError(path, f"refused to unpickle: {detail[:200]}")
    if "central directory" in msg or "zip archive" in msg:
        return InputError(path, "truncated or corrupt zip archive (no central directory)")
    if "record size" in msg or "does not match expected size" in msg:
        return InputError(path, "a storage record is shorter than declared (truncated or corrupt)")
    if "Cannot use weights_only" in msg or "Cannot use ``weights_only" in msg:
        first = msg.splitlines()[0]
        return InputError(path, f"unsupported PyTorch format: {first[:160]}")
    if "Unsupported operand" in msg:
        op = re.search(r"Unsupported operand (\d+)", msg)
        return InputError(path, f"not a PyTorch checkpoint, or a pickle using an unsupported opcode "
                          f"({op.group(0) if op else 'bad pickle'})")
    if isinstance(e, EOFError):
        return InputError(path, "truncated pickle (unexpected end of file)")
    if isinstance(e, NotImplementedError) and "Quantized" in msg and "_quantized" in msg:
        return InputError(path, "holds quantized tensors (a torch.ao quantized model's state dict): ckptfix "
                          "reads dense float, int and bool tensors only (a TorchScript archive of the model, "
                          "torch.jit.save, reads with its quantized weights listed as not weights)")
    first = (msg.strip().splitlines() or [type(e).__name__])[0]
    return InputError(path, f"cannot load PyTorch checkpoint (corrupt or unsupported): "
                      f"{type(e).__name__}: {first[:200]}")


def _zip_records(src, infos: list[zipfile.ZipInfo]) -> dict[int, zipfile.ZipInfo]:
    """Data offset -> record, for every entry of the zip (local headers read through ``src``,
    the checkpoint's fileset.Handle)."""
    records: dict[int, zipfile.ZipInfo] = {}
    for info in infos:
        local = os.pread(src.fd, 30, info.header_offset)
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            raise InputError(src.path, f"corrupt zip: bad local header for {info.filename}")
        n, m = struct.unpack("<HH", local[26:30])
        records[info.header_offset + 30 + n + m] = info
    return records


def check_zip_members(path: Path, infos: list[zipfile.ZipInfo]) -> None:
    """Bound what reading this zip can decompress, from the sizes it declares, before torch (or
    zipfile) decompresses anything: torch allocates a record's declared size and reads data.pkl and
    the small records whole (a deflated data.pkl of 1 MiB can declare 1 GiB). Storage records are
    read only when the checkpoint is loaded whole, one declared storage size at a time."""
    from . import zipmember
    from ..limits import MAX_PICKLE_MEMBER, MAX_SMALL_RECORD

    for info in infos:
        if info.compress_type == zipfile.ZIP_STORED:
            continue  # read as it is in the file: torch checks it against the file's size
        last = info.filename.rsplit("/", 1)[-1]
        limit = MAX_PICKLE_MEMBER if last.endswith(".pkl") else \
            MAX_SMALL_RECORD if last in _SMALL_RECORDS or info.filename.startswith(".data/") else None
        zipmember.check_declared(path, info, limit)


def check_built(container, path: Path, *, from_meta: bool) -> None:
    """Refuse what a pickle built that ckptfix must not keep or pass on, in one walk over every
    node (``pickles.walk``: keys, sets, attributes and placeholders included):

    - nesting over ``MAX_DEPTH`` levels (a list 2,000 deep is a few KB of pickle: walking,
      materializing or saving it would exhaust Python's recursion);
    - an attribute set on an object by the file (through ``_rebuild_from_type_v2``'s state or
      ``BUILD``) that is a dunder or shadows what its type defines (``__reduce_ex__``,
      ``__getstate__``, ``_typed_storage``, an OrderedDict's ``items``): a reader or writer would
      call it, or be shown other contents than a writer saves;
    - a tensor with no data in the file (a meta tensor built by the pickle);
    - with ``from_meta`` (a zip loaded on the meta device), a tensor not on it: built by the
      pickle (``torch.FloatTensor(2**28)``), not stored in the file;
    - a bare storage outside any tensor (nothing ckptfix can read or write back).
    """
    import torch

    from ..limits import MAX_DEPTH

    for where, node, depth in pickles.walk(container):
        if depth > MAX_DEPTH:
            raise InputError(path, f"its pickle is nested too deeply (more than {MAX_DEPTH} levels): "
                             "corrupt or hostile file")
        attrs = getattr(node, "__dict__", None) if not isinstance(node, type) else None
        if isinstance(attrs, dict):
            bad = [k for k in attrs if not isinstance(k, str) or k.startswith("__") or hasattr(type(node), k)]
            if bad:
                raise InputError(path, f"{pickles.printable(where)}: the pickle sets the attribute "
                                 f"{pickles.printable(str(bad[0]))} on its {type(node).__name__}, shadowing "
                                 "what its type defines (a reader or writer would call it): hostile file")
        if isinstance(node, torch.Tensor):
            if from_meta and node.device.type != "meta" and getattr(
                    node.untyped_storage(), "_checkpoint_offset", None) is None:  # not one of the file's storages
                raise InputError(path, f"tensor {pickles.printable(where)} is built by the pickle "
                                 "(a tensor constructor), not stored in the file: refused")
            if node.device.type == "meta" and node.layout is torch.strided and node.numel() and (
                    not from_meta or getattr(node.untyped_storage(), "_checkpoint_offset", None) is None):
                raise InputError(path, f"tensor {pickles.printable(where)} has no data in the file "
                                 "(a meta tensor): refused")
        elif isinstance(node, (torch.UntypedStorage, torch.storage.TypedStorage)):
            raise InputError(path, f"{pickles.printable(where)}: a bare storage outside any tensor; "
                             "ckptfix reads tensors only")


# the records of a torch zip besides the pickle and the storages (all read whole)
_SMALL_RECORDS = ("byteorder", "version", ".format_version", ".storage_alignment", "serialization_id")


def check_storage_record(path, info: zipfile.ZipInfo, off: int, nbytes: int, size: int, what: str,
                         if_compressed: str) -> None:
    """A tensor's storage record must be stored (torch reads its bytes in place) and hold exactly
    the storage's ``nbytes`` at ``off``, inside the archive's ``size`` bytes."""
    if info.compress_type != zipfile.ZIP_STORED:
        raise InputError(path, f"{what} is compressed ({if_compressed})")
    if info.file_size != nbytes or info.compress_size != nbytes or off + nbytes > size:
        raise InputError(path, f"{what} holds {info.file_size} bytes, expected {nbytes} (truncated or corrupt)")


class TorchReader(Reader):
    format = "pt"

    def __init__(self, path: str | Path, *, state_key: str | None = None,
                 allow_globals: tuple[str, ...] = (), legacy: bool = False, fileset=None) -> None:
        super().__init__(path, fileset)
        self._file = self.fileset.open(self.path)  # tensors are read through it (see fileset)
        torch = _torch()
        self.legacy = legacy
        self.eager = legacy  # eager: tensors already hold their data (read whole by torch.load)
        if legacy:
            self.format = "pt-legacy"
        self._init_registry([(resolve_global(n, self.path), n if "." in n else f"builtins.{n}")
                             for n in allow_globals])
        if not legacy:
            self._check_zip()  # before torch (or zipfile) decompresses or trusts any record
        # legacy (non-zip) files cannot be loaded lazily: they are read whole.
        self.container = self._load("cpu" if legacy else "meta")
        check_built(self.container, self.path, from_meta=not legacy)  # before anything walks it
        if legacy:
            self._check_legacy_storages()
        self._modules = self._unwrap_modules()
        self.state_path = find_state_dict(self.container, state_key, self.path)
        for name, t in get_path(self.container, self.state_path).items():  # before any second load
            if t.layout is not torch.strided:
                raise InputError(self.path, f"tensor {name!r} is {str(t.layout).removeprefix('torch.')}; "
                                 "ckptfix handles dense (strided) tensors only")
        if not legacy and not self._check_storages():
            # A zip not laid out by torch's writer (re-packed by another tool): torch's computed
            # storage offsets match no record, so read it whole instead, as torch.load does.
            self.eager = True
            self.container = self._load("cpu")
            self._unwrap_modules()
        self.state = get_path(self.container, self.state_path)
        self._metas: dict[str, TensorMeta] = {}
        for name, t in self.state.items():
            try:
                self._metas[name] = TensorMeta(tuple(t.shape), dtypes.from_torch(t.dtype))
            except KeyError:
                raise InputError(self.path, f"tensor {name!r} has dtype {t.dtype}, which ckptfix does not handle") from None
            self._check_size(name, t)

    def _init_registry(self, allowed: list[tuple[object, str]]) -> None:
        """The state the pickle loading and the storage reading below keep (also set up by the
        TorchScript reader, which reuses them): ``allowed``, the real objects admitted by name."""
        self._allowed = allowed
        self._allowed_names = {name for _obj, name in self._allowed}
        self._inert: dict[str, type] = {}  # global name -> its placeholder class (pickles.Inert)
        self._candidates: set[tuple[str, str]] = set()
        self._asked = 0  # distinct globals the pickle was seen to use
        self._used: dict[str, type] | None = None
        self._records: dict[int, zipfile.ZipInfo] = {}
        self._zipinfos: list[zipfile.ZipInfo] | None = None

    def _unwrap_modules(self) -> list[str]:
        """A whole pickled nn.Module (``torch.save(model)``), at the top or under a top-level key
        (``{"model": model, "epoch": 3}``), is replaced by its state dict (``pickles.module_state``):
        what ckptfix reads and a .pt output holds. Returns the classes replaced."""
        found = []
        top = pickles.module_state(self.container)
        if top is not None:
            found.append(type(self.container).global_name)
            self.container = top
        elif isinstance(self.container, dict):
            for k, v in list(dict.items(self.container)):
                sd = pickles.module_state(v)
                if sd is not None:
                    found.append(f"{type(v).global_name} (under {k!r})")
                    self.container[k] = sd
        return found

    def _check_size(self, name: str, t) -> None:
        """A tensor's size against what backs it: a view whose strides repeat a few stored bytes
        (stride 0) becomes its full size when read, so it is held to the same limits as a tensor
        a rule computes (``limits``): 1 TiB, and this process's memory."""
        from ..limits import MAX_TENSOR_BYTES, fmt_bytes, memory_limit

        nbytes = t.numel() * t.element_size()
        span = (1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride()))) * t.element_size() if t.numel() else 0
        if nbytes > MAX_TENSOR_BYTES or (span < nbytes and nbytes > memory_limit()):
            raise InputError(self.path, f"tensor {pickles.printable(str(name))} is {fmt_bytes(nbytes)} "
                             f"when read, from {fmt_bytes(span)} stored: over what ckptfix can hold "
                             f"({fmt_bytes(min(MAX_TENSOR_BYTES, memory_limit()))})")

    def _load(self, map_location: str):
        """``torch.load(weights_only=True)``, with every global torch does not allow registered
        as an inert placeholder (``pickles.Inert``): found by scanning the pickle's opcodes and,
        for what a scan cannot see, from torch's own refusals, one load at a time."""
        torch = _torch()
        scanned = False
        while True:
            try:
                with torch.serialization.safe_globals(self._allowed + self._inert_entries()), \
                        warnings.catch_warnings():
                    # torch warns (on stderr) about odd pickle protocols in broken files; we report errors ourselves
                    warnings.simplefilter("ignore")
                    # a file object, not the path: torch.load dispatches on the file name (.safetensors),
                    # and the format was already decided from the bytes
                    with self._file.file() as f:
                        return torch.load(f, weights_only=True, map_location=map_location)
            except InputError:
                raise
            except KeyboardInterrupt:
                raise
            except MemoryError:  # e.g. a string length of 2**32 in a 1 KB pickle (found by fuzzing)
                raise InputError(self.path, "torch ran out of memory loading it: a corrupt length or "
                                 "size field, or a checkpoint larger than this machine's memory") from None
            except Exception as e:  # torch raises a zoo of types on bad files (see notes)
                name = _global_in_error(str(e)) if "GLOBAL" in str(e) else None
                if name is None or name in self._inert or name in self._allowed_names:
                    raise _describe_load_error(self.path, e) from None
                if not scanned:  # once: every global the pickle can name, with its exact split
                    scanned = True
                    named = _unsafe_globals(self.path)
                    self._add_inert(named)  # parsed opcodes: a code-running name refuses the file
                    patterns = [c for c in pickles.global_candidates(self._pickle_bytes())
                                if not pickles.runs_code(f"{c[0]}.{c[1]}")]
                    self._candidates = set(named) | set(patterns)
                    if len(patterns) <= MAX_PATTERN_GLOBALS:  # unused ones stay unused
                        fulls = collections.Counter(f"{m}.{n}" for m, n in self._candidates)
                        self._add_inert([c for c in patterns if fulls[f"{c[0]}.{c[1]}"] == 1], counted=False)
                        self._add_inert([c for c in patterns if fulls[f"{c[0]}.{c[1]}"] > 1], exact=False,
                                        counted=False)
                    if name in self._inert:
                        continue
                splits = {c for c in self._candidates if f"{c[0]}.{c[1]}" == name}
                if len(splits) == 1:
                    self._add_inert(list(splits))
                else:  # not found in the bytes, or two splits with one name: readable, not writable
                    self._add_inert([pickles.split_global(name)], exact=False)

    def _pickle_bytes(self) -> bytes | None:
        """The pickle's bytes (a zip's data.pkl, or the head of a legacy file), if at most
        ``MAX_PICKLE_MEMBER``: what the global scan searches."""
        from ..limits import MAX_PICKLE_MEMBER
        from . import zipmember

        try:
            with self._file.file() as f:
                if not zipfile.is_zipfile(f):
                    f.seek(0)
                    return f.read(MAX_PICKLE_MEMBER)
                f.seek(0)
                with zipfile.ZipFile(f) as z:
                    pkls = [n for n in z.namelist() if n.endswith("data.pkl")]
                    if not pkls or z.getinfo(pkls[0]).file_size > MAX_PICKLE_MEMBER:
                        return None
                    return zipmember.read_member(self._file, z, pkls[0], MAX_PICKLE_MEMBER)
        except (OSError, zipfile.BadZipFile, InputError, ValueError):
            return None

    def inert_write_problem(self) -> str | None:
        """Why the inert objects cannot be written back exactly into a .pt output, if so."""
        loose = sorted(n for n, c in self._used_inert().items() if not c.exact)
        if loose:
            return (f"cannot write its pickled object {pickles.printable(loose[0])} back into a .pt output "
                    "exactly (where its module name ends is ambiguous in the file): write safetensors")
        return None

    def _inert_entries(self) -> list:
        return [(cls, name) for name, cls in self._inert.items()]

    def _add_inert(self, names: list[tuple[str, str]], exact: bool = True, counted: bool = True) -> None:
        """Placeholders for these globals; a file naming one that runs code is refused.
        ``counted``: names the pickle was seen to use (bounded by ``MAX_INERT_GLOBALS``), not
        mere pattern matches."""
        full: dict[str, tuple[str, str]] = {}
        loose: set[str] = set()  # one name, two splits ("a.b"/"c" and "a"/"b.c"): torch cannot tell them apart
        for m, n in names:
            if n == "<computed global>":
                continue
            name = f"{m}.{n}"
            known = self._inert.get(name)
            if full.get(name, (m, n)) != (m, n) or (known is not None and (known.module, known.qualname) != (m, n)):
                loose.add(name)
            full[name] = (m, n)
        hostile = [pickles.printable(n) for n in full if pickles.runs_code(n)]
        if hostile:
            raise UnsafePickleError(self.path, hostile)
        for name, (m, n) in full.items():
            if name in loose:
                self._inert[name] = pickles.inert_class(m, n, exact=False)
                continue
            if name not in self._allowed_names and (name not in self._inert or not self._inert[name].exact):
                if counted:
                    self._asked += 1
                    if self._asked > MAX_INERT_GLOBALS:
                        raise InputError(self.path, f"its pickle names over {MAX_INERT_GLOBALS} distinct "
                                         "globals: not a checkpoint ckptfix reads")
                self._inert[name] = pickles.inert_class(m, n, exact=exact)

    def _used_inert(self) -> dict[str, type]:
        """The placeholders the loaded container really holds (instances or the classes)."""
        if self._used is None:
            used = set()
            for _p, node, _d in pickles.walk(self.container):
                if isinstance(node, pickles.Inert):
                    used.add(type(node).global_name)
                elif isinstance(node, type) and issubclass(node, pickles.Inert):
                    used.add(node.global_name)
            self._used = {n: c for n, c in self._inert.items() if n in used}
        return self._used

    def _check_legacy_storages(self) -> None:
        """torch's legacy loader fills only the storages its key list names; one the pickle uses
        but the list leaves out is returned as uninitialized memory, without an error (found by
        fuzzing: one flipped bit in a storage key). Refuse unless every storage is listed."""
        import pickletools

        from torch import _weights_only_unpickler

        try:
            with open(self.path, "rb") as f:
                for _ in range(4):  # magic number, protocol, sys info, the objects
                    for _op in pickletools.genops(f):
                        pass
                keys = _weights_only_unpickler.load(f, encoding="utf-8")
            listed = len(set(keys))
        except Exception:  # noqa: BLE001 - torch.load read it, so this does not happen
            return
        used = {t.untyped_storage()._cdata for _, t in self._walk_tensors(self.container)}
        if len(used) > listed:
            raise InputError(self.path, f"{len(used) - listed} storage(s) used by its tensors are "
                             "missing from its storage list (corrupt file: their data would be "
                             "uninitialized memory)")

    def _check_zip(self) -> None:
        """One parse of the zip's directory, through the kept handle; kept for ``_check_storages``.
        Compressed members are bounded (``check_zip_members``); then what torch's reader would
        mishandle is refused before it sees the file: a big-endian byte order (a meta load
        segfaults), a storage alignment of 0 (SIGFPE), entries marked as directories (miniz
        returns an unfilled buffer: uninitialized memory as data)."""
        try:
            with self._file.file() as f, zipfile.ZipFile(f) as z:
                self._zipinfos = z.infolist()
                check_zip_members(self.path, self._zipinfos)
                names = z.namelist()
                order = [n for n in names if n.endswith("/byteorder") or n == "byteorder"]
                order = z.read(order[0]).decode("ascii", "replace").strip() if order else None
                align = [n for n in names if n.endswith("/.storage_alignment")]
                align = z.read(align[0]) if align else None
        except InputError:
            raise
        except Exception:  # noqa: BLE001 - a broken zip: torch.load reports it
            self._zipinfos = None
            return
        dirs = [i.filename for i in self._zipinfos if i.external_attr & 0x10 or i.filename.endswith("/")]
        if dirs:
            raise InputError(self.path, f"zip entry {dirs[0]!r} is marked as a directory (corrupt "
                             "file: torch would read uninitialized memory for it)")
        if order not in (None, "little"):
            raise InputError(self.path, f"byte order {order[:20]!r} is not supported")
        try:
            bad = align is not None and int(align) <= 0
        except ValueError:
            bad = False  # torch.load reports it
        if bad:
            raise InputError(self.path, f"storage alignment {align[:20]!r} is invalid (corrupt file)")

    def _check_storages(self) -> bool:
        """Check every storage against its zip record before any is read. False if torch's
        offsets match no record at all (a zip written by another tool)."""
        if self._zipinfos is None:
            raise InputError(self.path, "corrupt zip archive (its directory does not parse)")
        try:
            records = _zip_records(self._file, self._zipinfos)
        except OSError as e:
            raise InputError(self.path, f"corrupt zip archive ({e})") from None
        size = self._file.size
        strided = _torch().strided
        for name, t in self._walk_tensors(self.container):
            if t.layout is not strided:
                return False  # sparse/quantized: no plain storage to check; read it whole
            st = t.untyped_storage()
            nbytes = st.nbytes()
            if nbytes == 0:
                continue
            off = getattr(st, "_checkpoint_offset", None)
            info = records.get(off)
            if off is None or info is None:
                return False
            check_storage_record(self.path, info, off, nbytes, size, f"tensor {name}: storage record {info.filename}",
                                 "torch would read it as raw bytes: wrong values")
        self._records = records
        return True

    @staticmethod
    def _walk_tensors(obj):
        """``(path, tensor)`` for every tensor in a loaded container, each once."""
        import torch

        return ((path, node) for path, node, _d in pickles.walk(obj) if isinstance(node, torch.Tensor))

    def metas(self) -> dict[str, TensorMeta]:
        return dict(self._metas)

    def materialize(self, t):
        """Read the data behind one meta tensor of this file."""
        import torch

        if self.eager or t.device.type != "meta":
            # contiguous, as read() promises (a plain clone keeps a transposed view's strides)
            return t.detach().clone(memory_format=torch.contiguous_format) if self.eager else t
        if t.numel() == 0:
            return torch.empty(t.shape, dtype=t.dtype)
        # read only the bytes this view spans, not its whole (possibly shared) storage
        span = 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
        start = self._start(t)
        buf = read_range(self._file, start, start + span * t.element_size())
        crc = self.crc_of(start, start + len(buf))
        if crc is not None and zlib.crc32(buf) != crc[0]:
            raise InputError(self.path, crc[1])
        flat = torch.frombuffer(buf, dtype=t.dtype)
        out = flat.as_strided(t.shape, t.stride(), 0)
        return out if out.is_contiguous() and span == t.numel() else out.contiguous()

    def read(self, name: str):
        return self.materialize(self.state[name])

    def locate(self, name: str) -> tuple[Path, int, int] | None:
        """Where a contiguous tensor's bytes sit in the file (its storage record), if they do."""
        t = self.state[name]
        if self.eager or t.device.type != "meta" or t.numel() == 0 or not t.is_contiguous():
            return None
        start = self._start(t)
        return self._file, start, start + t.numel() * t.element_size()

    @staticmethod
    def _start(t) -> int:
        """File offset of a (meta) tensor's first element."""
        return t.untyped_storage()._checkpoint_offset + t.storage_offset() * t.element_size()

    def crc_of(self, begin: int, end: int) -> tuple[int, str] | None:
        """The CRC-32 a copy of ``[begin, end)`` must have, if that range is a whole storage record
        (copies are then checked on the way through, as ``materialize`` checks what it reads)."""
        info = self._records.get(begin)
        if info is None or info.file_size != end - begin:
            return None
        return info.CRC, f"storage record {info.filename} fails its CRC check (data corrupt)"

    def materialize_all(self, obj):
        """A copy of ``obj`` with every meta tensor replaced by its data (for the extras)."""
        import torch

        return pickles.transform(obj, lambda v: self.materialize(v) if isinstance(v, torch.Tensor) else v)

    def extras(self):
        out = {}
        if self.state_path:
            others = [k for k in self.container if k != self.state_path[0]]
            out = {"state_key": ".".join(self.state_path), "container_keys": others}
        if self._used_inert():
            out["inert_globals"] = sorted(pickles.printable(n) for n in self._used_inert())
        return out

    @property
    def has_inert(self) -> bool:
        """Whether the container holds objects kept as inert data (see ``pickles``)."""
        return bool(self._used_inert())

    def warnings(self) -> list[str]:
        out = [f"the file holds a whole pickled module {pickles.printable(m)}: its state dict is read "
               "(named as model.state_dict() names it; its code was never run), and a .pt output "
               "holds that state dict" for m in self._modules]
        if self._used_inert():
            names = sorted(pickles.printable(n) for n in self._used_inert())
            shown = ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")
            out.append(f"kept {len(names)} pickled type(s) as inert data, never imported or run: {shown}")
        return out


OPTIMIZER_KEY = re.compile(r"optim|lr_scheduler", re.I)


class _WriteErrors:
    """A file wrapper remembering the first write error: torch.save reports a failed write (full
    disk, file-size limit) only as ``RuntimeError: ... unexpected pos``, losing the cause."""

    def __init__(self, f) -> None:
        self.f = f
        self.error: OSError | None = None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self):
        return self.f.flush()


def save_pt(f, obj, *, inert: bool = False) -> None:
    """``torch.save``; with ``inert``, placeholders (``pickles.Inert``) are written back as the
    globals they stand for, with the arguments and state they were read with."""
    import torch

    w = _WriteErrors(f)
    try:
        if inert:  # the pure-Python pickler takes ~3 frames a level; nesting is bounded by MAX_DEPTH
            import sys

            from ..limits import MAX_DEPTH

            old = sys.getrecursionlimit()
            sys.setrecursionlimit(max(old, 8 * MAX_DEPTH + 1000))
            try:
                torch.save(obj, w, pickle_module=pickles.INERT_PICKLE)
            finally:
                sys.setrecursionlimit(old)
        else:
            torch.save(obj, w)
    except RuntimeError:
        if w.error is not None:
            raise w.error from None
        raise
