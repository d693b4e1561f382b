"""The executor: reads each input tensor once, runs its planned op chain, checks the result
against the plan, hands it to the writer and lets it go. Outputs are written atomically.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import sys
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

from . import dtypes
from .errors import CkptfixError, InputError
from .formats.atomic import atomic_dir, atomic_file, clean_stale
from .formats.base import Reader
from .formats.detect import PT_SUFFIXES, SHARD_INDEX
from .formats.fileio import sha256_range
from .formats.safetensors_io import SafetensorsReader, SafetensorsWriter, shard_groups, shard_name, tensor_bytes
from .plan import Plan
from .rules.channels import selections
from .progress import Progress
from .tensors import TensorMeta

OUTPUT_FORMATS = ("safetensors", "safetensors-sharded", "pt")
SWITCH_INTERVAL = 0.0005  # seconds; see execute()


@dataclass
class Written:
    path: Path
    format: str
    tensors: int
    bytes: int
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_output_name(out: str | Path, requested: str | None, shard_size: int | None) -> None:
    """Refuse an output name that says nothing ckptfix can write, before any work: ``-`` (stdout:
    outputs are written atomically, verified and sometimes sharded, so never streamed) and a
    suffix that names another format (``x.onnx``), unless ``--format`` (or ``--shard-size``) says
    what to write. A name with no suffix is written like the input."""
    from .errors import UsageError

    if str(out) == "-":
        raise UsageError("-o -: writing to stdout is not supported (outputs are written atomically and "
                         "verifiable); give a file name")
    if requested or shard_size or str(out).endswith("/") or Path(out).is_dir():
        return
    suffix = Path(out).suffix
    if suffix and suffix.lower() not in KNOWN_SUFFIXES:
        raise UsageError(f"{out}: unknown output suffix {suffix!r}: name a .safetensors or "
                         f"{'/'.join(PT_SUFFIXES)} file, or a directory for shards (--shard-size), "
                         "or say what to write with --format")


KNOWN_SUFFIXES = (".safetensors",) + PT_SUFFIXES


def output_format(out: str | Path, requested: str | None, input_format: str, shard_size: int | None) -> str:
    """Pick the output format: --format, else --shard-size, else the suffix, else like the input
    (a name with no suffix). An unknown suffix is refused (``check_output_name``)."""
    check_output_name(out, requested, shard_size)
    if requested:
        if requested == "safetensors" and shard_size:
            return "safetensors-sharded"
        return requested
    if shard_size or str(out).endswith("/") or (Path(out) / SHARD_INDEX).is_file():
        return "safetensors-sharded"
    out = Path(out)
    if out.is_dir():
        from .errors import UsageError

        raise UsageError(f"{out}: is a directory; for sharded output into it give --shard-size "
                         "(or name a file)")
    if out.suffix.lower() == ".safetensors":
        return "safetensors"
    if out.suffix.lower() in PT_SUFFIXES:
        return "pt"
    if input_format in ("pt", "pt-legacy"):
        return "pt"
    return "safetensors"


class _Producer:
    """Makes each output tensor: copied as bytes where the plan allows, computed otherwise."""

    def __init__(self, plan: Plan, reader: Reader, progress: Progress, verify: bool = False) -> None:
        self.plan = plan
        self.reader = reader
        self.progress = progress
        # --verify: name -> sha256 of the bytes produced, checked against the file read back
        self.digests: dict[str, str] | None = {} if verify else None
        for sel in selections(plan.entries.values()):  # indices chosen from the data (channels by: l1)
            sel.resolve(reader.read)

    def tensor(self, name: str):
        e = self.plan.entries[name]
        ops = e.ops
        if e.source is None:
            t, ops = ops[0].data(None), ops[1:]
        else:
            t = self.reader.read(e.source)
        for op in ops:
            t = op.data(t)
        self._check(name, t, e.meta)
        if not t.is_contiguous() or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.contiguous().clone()  # a view (e.g. a slice) must not drag its whole base along
        return t

    def span(self, name: str) -> tuple[Path, int, int] | None:
        """``(file, offset, length)`` when the output tensor is a run of the input file's bytes:
        renamed only, reshaped, or a run of rows sliced off. The bytes are then copied, not read."""
        e = self.plan.entries[name]
        if e.source is None:
            return None
        where = self.reader.locate(e.source)
        if where is None:
            return None
        path, begin, end = where
        meta = self.plan.inputs[e.source]
        offset, length = 0, end - begin
        for op in e.ops:
            sub = op.byte_span(meta)
            if sub is None:
                return None
            offset, length = offset + sub[0], sub[1]
            meta = op.shape(meta)
        return path, begin + offset, length

    def write_into(self, w: SafetensorsWriter, name: str, writer: _WriterThread) -> None:
        """Queue the writing of one output tensor (computing it here first, if it must be)."""
        span = self.span(name)
        if span is not None:
            path, begin, length = span
            crc = self.reader.crc_of(begin, begin + length)

            def job():
                if self.digests is not None:
                    self.digests[name] = sha256_range(*span)
                w.copy(name, *span, on_chunk=self.progress.advance, crc=crc)
                self.progress.advance(0, tensors=1)
            nbytes = 0
        else:
            nbytes = self.plan.entries[name].meta.nbytes
            writer.wait_room(nbytes)
            t = self.tensor(name)

            def job():
                if self.digests is not None:
                    self.digests[name] = hashlib.sha256(tensor_bytes(t)).hexdigest()
                w.write(name, t)
                self.progress.advance(nbytes, tensors=1)
        writer.put(nbytes, job)

    @staticmethod
    def _check(name: str, t, meta: TensorMeta) -> None:
        if tuple(t.shape) != meta.shape or dtypes.from_torch(t.dtype) != meta.dtype:
            raise CkptfixError(f"internal error: {name} came out {tuple(t.shape)} {t.dtype}, "
                               f"the plan said {meta.shape} {meta.dtype}")


class _WriterThread:
    """Runs the writes, in order, on a second thread, so that computing (reading, transposing)
    the next tensor overlaps writing this one: on a 2 GiB HWIO->OIHW run here, 4.9-6.9 s became
    3.2 s.

    Memory stays bounded: before computing a tensor of L bytes the producer waits until the
    computed tensors still queued hold at most ``BUDGET - L`` bytes, or none. A tensor costs 2L
    while it is computed (the bytes read and the result), so the peak is at most
    ``max(2L, BUDGET + L)`` for the largest tensor L.
    """

    BUDGET = 64 << 20

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._jobs: collections.deque = collections.deque()
        self._held = 0
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="ckptfix-writer", daemon=True)
        self._thread.start()

    def wait_room(self, nbytes: int) -> None:
        with self._cv:
            while self._error is None and self._held and self._held + nbytes > self.BUDGET:
                self._cv.wait()
            self._raise()

    def put(self, nbytes: int, job) -> None:
        with self._cv:
            self._raise()
            self._held += nbytes
            self._jobs.append((nbytes, job))
            self._cv.notify_all()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._jobs and not self._closed:
                    self._cv.wait()
                if not self._jobs:
                    return
                nbytes, job = self._jobs[0]
                failed = self._error is not None
            try:
                if not failed:
                    job()
            except BaseException as e:  # handed to the producer, which raises it
                with self._cv:
                    self._error = e
            with self._cv:
                self._jobs.popleft()
                self._held -= nbytes
                self._cv.notify_all()

    def close(self, *, abort: bool = False) -> None:
        """Wait for the queued writes (or, with ``abort``, drop them), then stop the thread."""
        with self._cv:
            if abort and self._error is None:
                self._error = CkptfixError("write aborted")
            self._closed = True
            self._cv.notify_all()
        self._thread.join()
        if not abort:
            self._raise()


def _write_safetensors(path: Path, prod: _Producer, metas: dict[str, TensorMeta], metadata, shown: Path) -> int:
    """Write one safetensors file at ``path`` (a temporary name for ``shown``)."""
    with open(path, "wb") as f:
        w = SafetensorsWriter(f, metas, metadata)
        writer = _WriterThread()
        try:
            for name in w.order:
                prod.write_into(w, name, writer)
        except BaseException:
            writer.close(abort=True)
            raise
        writer.close()
        w.finish()
        size = f.tell()
    if prod.digests is not None:
        with SafetensorsReader(path) as r:
            back = {}
            for n in r.metas():
                where, begin, end = r.locate(n)
                back[n] = sha256_range(where, begin, end - begin)
        _verify(shown, back, {n: prod.digests[n] for n in metas})
    return size


def _verify(path: Path, read_back: dict[str, str], produced: dict[str, str]) -> None:
    """--verify: every tensor read back from the written file hashes as it did when produced."""
    bad = sorted(set(read_back) ^ set(produced)) or [n for n in produced if read_back[n] != produced[n]]
    if bad:
        raise CkptfixError(f"{path}: verification failed: {bad[0]} reads back different from what was "
                           f"written ({len(bad)} tensor(s)); nothing was kept")


def execute(plan: Plan, reader: Reader, out: str | Path, fmt: str, *, force: bool = False,
            shard_size: int | None = None, progress: Progress | None = None, verify: bool = False) -> Written:
    """Write ``plan``'s output atomically. ``verify``: re-read the written file(s) before they
    are put in place and compare every tensor's sha256 with what was produced."""
    out = Path(str(out).rstrip("/") or "/")
    if fmt not in OUTPUT_FORMATS:
        raise CkptfixError(f"unknown output format {fmt!r} (choose {', '.join(OUTPUT_FORMATS)})")
    stale = clean_stale(out.parent)
    progress = progress or Progress()
    prod = _Producer(plan, reader, progress, verify)
    progress.start(out.name, sum(m.nbytes for m in plan.metas.values()), len(plan.entries))
    # The writer thread needs the GIL back after each write; with the default 5 ms switch
    # interval it queues behind the transpose loop. Measured on 2 GiB of kernels: transpose and
    # writes overlapped took 8.1 s at 5 ms, 3.7 s at 0.5 ms (each alone: 3.1 s and 3.5 s).
    interval = sys.getswitchinterval()
    sys.setswitchinterval(min(interval, SWITCH_INTERVAL))
    try:
        written = _write(fmt, plan, reader, prod, out, force, shard_size)
    except CkptfixError:
        reader.fileset.check_unchanged()  # a change mid-run is the cause of what it broke (a CRC ...)
        raise
    except OSError as e:
        reader.fileset.check_unchanged()
        raise CkptfixError(f"{out}: cannot write: {e.strerror or e}") from None
    finally:
        sys.setswitchinterval(interval)
        progress.finish()
    if stale:
        written.warnings.append(f"removed {len(stale)} temporary file(s) left in {out.parent} by killed runs")
    return written


def _write(fmt: str, plan: Plan, reader: Reader, prod: _Producer, out: Path, force: bool,
           shard_size: int | None) -> Written:
    metas = plan.metas
    metadata = dict(getattr(reader, "metadata", None) or {}) or {"format": "pt"}
    if fmt == "safetensors":
        with atomic_file(out) as tmp:
            size = _write_safetensors(tmp, prod, metas, metadata, out)
            reader.fileset.check_unchanged()  # before the output is published
        return Written(out, fmt, len(metas), size, [out])
    if fmt == "safetensors-sharded":
        groups = shard_groups(metas, shard_size or 5 * 10**9)
        files, total = [], 0
        with atomic_dir(out, replace=force) as tmp:
            for i, names in enumerate(groups):
                fname = shard_name(i, len(groups))
                total += _write_safetensors(tmp / fname, prod, {n: metas[n] for n in names}, metadata, out / fname)
                files.append(out / fname)
            index = {"metadata": {"total_size": sum(m.nbytes for m in metas.values())},
                     "weight_map": {n: shard_name(i, len(groups)) for i, names in enumerate(groups)
                                    for n in sorted(names)}}
            index["weight_map"] = dict(sorted(index["weight_map"].items()))
            (tmp / SHARD_INDEX).write_text(json.dumps(index, indent=2) + "\n")
            reader.fileset.check_unchanged()
        return Written(out, fmt, len(metas), total, files)
    return _write_pt(plan, reader, prod, out)


def _write_pt(plan: Plan, reader: Reader, prod: _Producer, out: Path) -> Written:
    import torch

    from .formats import pickles
    from .formats.torch_io import OPTIMIZER_KEY, TorchReader, save_pt

    state = {}
    for name in plan.entries:
        state[name] = prod.tensor(name)
        prod.progress.advance(state[name].numel() * state[name].element_size(), tensors=1)
    obj = state
    warnings = []
    if isinstance(reader, TorchReader) and not reader.state_path and isinstance(reader.container, dict) \
            and len(reader.state) != len(reader.container):
        extras = {k: v for k, v in reader.container.items() if k not in reader.state}
        obj = {**reader.materialize_all(extras), **state}
    if isinstance(reader, TorchReader) and reader.state_path:
        container = reader.container
        path = reader.state_path
        # copy the container without its (meta) state dict, read the extras' data, then put ours in
        def rebuild(node, keys):
            if not keys:
                return state
            copy = dict(dict.items(node))  # never a method the file may have shadowed
            copy[keys[0]] = None
            copy = reader.materialize_all(copy)
            copy[keys[0]] = rebuild(node[keys[0]], keys[1:])
            return copy

        obj = rebuild(container, path)
        if plan.shapes_changed:
            dropped = [k for k in obj if isinstance(k, str) and OPTIMIZER_KEY.search(k)]
            for k in dropped:
                del obj[k]
            if dropped:
                warnings.append(f"tensor shapes changed, so the optimizer state no longer matches: "
                                f"dropped {', '.join(dropped)}")
    left = next((where for where, node, _d in pickles.walk(obj)
                 if isinstance(node, torch.Tensor) and node.device.type == "meta"), None)
    if left is not None:  # a safety net: every tensor of the container was read
        raise InputError(reader.path, f"cannot write a .pt output: the tensor at {pickles.printable(left)} "
                         "sits where ckptfix does not copy data from; write safetensors")
    inert = isinstance(reader, TorchReader) and reader.has_inert
    if inert and reader.inert_write_problem():
        raise InputError(reader.path, reader.inert_write_problem())
    if inert:
        warnings.append("the output keeps the input's inert objects as the same pickled globals: "
                        "loading it with weights_only=False builds them, as loading the input would")
    with atomic_file(out) as tmp:
        with open(tmp, "wb") as f:
            save_pt(f, obj, inert=inert)
        if prod.digests is not None:
            produced = {n: hashlib.sha256(tensor_bytes(t)).hexdigest() for n, t in state.items()}
            back = TorchReader(tmp, state_key=".".join(reader.state_path) if isinstance(reader, TorchReader)
                               and reader.state_path else None)
            with back:
                _verify(out, {n: hashlib.sha256(tensor_bytes(back.read(n))).hexdigest() for n in back.metas()},
                        produced)
        reader.fileset.check_unchanged()
    size = out.stat().st_size
    return Written(out, "pt", len(state), size, [out], warnings)


def inputs_of(path, rules=None, target_files=()) -> list[tuple[str, Path]]:
    """Every file a command reads, each with what it is for messages: the input checkpoint
    (``path``), the rules files and all they include (``RulesFile.files``), the file the target
    names (``Target.files``). An output may be none of them."""
    found = [("the input", Path(path))] if path is not None else []
    found += [("the rules file", Path(p)) for p in (rules.files if rules is not None else [])]
    return found + [("the target", Path(p)) for p in target_files]


class InputSet:
    """Files a command reads (``Path``s, or ``(what, path)`` from ``inputs_of``), indexed once so
    that ``refuse`` costs a few lookups per output however many inputs a batch has."""

    def __init__(self, inputs) -> None:
        self._real: dict[Path, tuple[str, Path]] = {}
        self._inode: dict[tuple[int, int], tuple[str, Path]] = {}
        self._dirs: dict[Path, tuple[str, Path]] = {}
        for item in inputs:
            what, i = item if isinstance(item, tuple) else ("the input", Path(item))
            real = Path(os.path.realpath(i))  # not Path.resolve(): it raises on a symlink loop
            self._real.setdefault(real, (what, i))
            try:
                st = os.stat(i)
            except OSError:
                continue
            self._inode.setdefault((st.st_dev, st.st_ino), (what, i))
            if stat.S_ISDIR(st.st_mode):
                self._dirs.setdefault(real, (what, i))

    def refuse(self, out: Path) -> None:
        """Refuse ``out`` if it is one of the inputs: the same real path, the same inode (a hard
        link), a path inside an input directory, or a directory holding an input."""
        from .errors import UsageError

        out = Path(out)
        o = Path(os.path.realpath(out))
        try:
            st = os.stat(out)
        except OSError:
            st = None
        hit = self._real.get(o) or (st is not None and self._inode.get((st.st_dev, st.st_ino)))
        hit = hit or next((self._dirs[d] for d in o.parents if d in self._dirs), None)
        if not hit and st is not None and stat.S_ISDIR(st.st_mode):
            hit = next((v for r, v in self._real.items() if o in r.parents), None)
        if hit:
            what, i = hit
            raise UsageError(f"{out}: output would overwrite {what} {i}; choose another path")


def refuse_inputs(inputs, out: Path) -> None:
    """``InputSet(inputs).refuse(out)``: one output, one command's inputs."""
    InputSet(inputs).refuse(out)


def check_output(inputs, out: Path, force: bool, reader: Reader | None = None) -> None:
    """Refuse an output that is any input of the command (``refuse_inputs``), or any file the
    input checkpoint consists of (``reader``'s file set: shards, index, a TF .index/.data, hard
    links to them), or that exists (unless force). Refused with or without force."""
    from .errors import UsageError

    refuse_inputs(inputs, out)
    if reader is not None:
        reader.fileset.refuse_as_output(out)
    if out.exists() and not force:
        raise UsageError(f"{out}: already exists (use --force to replace it)")
    if out.is_dir() and force and not _is_sharded_output(out):
        raise UsageError(f"{out}: is a directory that is not a sharded checkpoint; refusing to replace it")


def _is_sharded_output(d: Path) -> bool:
    """Only a directory ckptfix could have written may be replaced by --force."""
    names = [p.name for p in d.iterdir()]
    return SHARD_INDEX in names and all(
        n == SHARD_INDEX or (n.startswith("model-") and n.endswith(".safetensors")) for n in names)


__all__ = ["execute", "output_format", "check_output_name", "check_output", "inputs_of", "InputSet", "refuse_inputs", "Written"]
