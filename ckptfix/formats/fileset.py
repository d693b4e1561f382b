"""The files a checkpoint consists of: where they may live, each opened once, and whether they
changed while they were read.

Every reader opens its files through its ``FileSet``; that is the one place that enforces:

* **Containment.** Every file must resolve (symlinks followed) inside the checkpoint's own
  directory: the directory the user named, or the one holding the file / index / prefix named.
  The file the user named is taken as named (it may be a symlink to anywhere). One layout is
  recognised beyond that: huggingface_hub's cache, whose ``snapshots/<rev>/`` entries are
  symlinks to ``../../blobs/`` (only when ``blobs`` is a real directory beside ``snapshots``:
  ``hf_cache_blobs``). Anything else is refused unless ``allow_outside``.
* **One handle per file.** A file is opened once; every later read goes through that descriptor
  (``fileio`` accepts a ``Handle`` wherever it takes a path), so a path replaced mid-run cannot
  feed the reader a second file.
* **Stability.** ``fstat`` (device, inode, size, mtime, ctime) is recorded at open.
  ``check_unchanged`` compares it, and that each path still names the file that was opened,
  before an output is published: an in-place rewrite or a replaced file is an InputError
  ("changed while being read") and nothing is written. No data is re-read: it costs two stats
  per file.
* **Outputs.** ``refuse_as_output`` refuses an output that is one of these files (same real
  path or same inode: a hard link), or a directory holding one.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import InputError, UsageError

HF_SNAPSHOTS, HF_BLOBS = "snapshots", "blobs"


def _real(p: str | Path) -> Path:
    if "\0" in str(p):  # a name read from a file (an ONNX location, a DCP relative_path, ...)
        raise InputError(str(p).replace("\0", "\\0"), "file name contains a NUL byte: corrupt or crafted reference")
    return Path(os.path.realpath(p))  # not Path.resolve(): it raises on a symlink loop


def _inside(p: Path, root: Path) -> bool:
    return p == root or root in p.parents


def _signature(st: os.stat_result) -> tuple:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def hf_cache_blobs(root: Path) -> Path | None:
    """The ``blobs`` directory of huggingface_hub's cache if ``root`` (a real path) is one of its
    revisions, ``<repo>/snapshots/<rev>``: ``<repo>/blobs`` must be a directory itself, not a
    symlink, beside ``snapshots``. The path returned is that lexical ``<repo>/blobs``, never a
    symlink's target, so nothing in a checkpoint's own tree can widen where it may read."""
    if root.parent.name != HF_SNAPSHOTS:
        return None
    blobs = root.parent.parent / HF_BLOBS  # root has no symlink in it: nor has this, bar blobs
    try:
        st = os.lstat(blobs)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return None  # a symlink (``blobs -> /``) or anything else: no exception to containment
    return blobs  # lexical: were blobs swapped for a symlink later, what it reaches is outside


class Handle:
    """One open constituent file: ``fd`` (read with ``os.pread``), ``path`` as the checkpoint
    names it (for messages), ``real`` (its resolved path) and its ``fstat`` at open."""

    def __init__(self, path: Path, real: Path, fd: int, st: os.stat_result) -> None:
        self.path, self.real, self.fd, self.stat = path, real, fd, st
        self.size = st.st_size

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"Handle({str(self.path)!r})"

    def file(self):
        """A new binary file object on this file (its own descriptor, so its own offset, but the
        same open file: the inode recorded here) for libraries that want one (zipfile, torch)."""
        try:  # Linux: a new open file description of the same inode, so offsets are not shared
            fd = os.open(f"/proc/self/fd/{self.fd}", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            if not self.same_file(fd):
                os.close(fd)
                raise OSError
        except OSError:
            fd = os.dup(self.fd)
        return os.fdopen(fd, "rb")

    def read_all(self) -> bytes:
        """The whole file (for small metadata files: an index, a state file)."""
        with self.file() as f:
            return f.read()

    def same_file(self, fd: int) -> bool:
        """Whether another descriptor (e.g. one h5py opened by name) is this very file."""
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (self.stat.st_dev, self.stat.st_ino)


class FileSet:
    def __init__(self, named: str | Path, *, allow_outside: bool = False) -> None:
        self.named = Path(named)
        self.allow_outside = allow_outside
        self.root = _real(self.named if self.named.is_dir() else (self.named.parent or Path(".")))
        self._named_real = _real(self.named)
        self._handles: dict[Path, Handle] = {}

    # -- where files may live

    def _roots(self) -> list[Path]:
        blobs = hf_cache_blobs(self.root)
        return [self.root] + ([blobs] if blobs is not None else [])

    def resolves_inside(self, path: Path) -> bool:
        real = _real(path)
        return any(_inside(real, r) for r in self._roots())

    def check_inside(self, path: Path, real: Path | None = None) -> None:
        """Refuse ``path`` if it resolves outside the checkpoint's directory."""
        real = real or _real(path)
        if self.allow_outside or (real == self._named_real and not self.named.is_dir()):
            return
        if not self.resolves_inside(real):
            raise InputError(path, f"resolves to {real}, outside the checkpoint's directory {self.root}: "
                             "refused (a checkpoint reads only its own files; --allow-outside-files "
                             "to read it anyway)")

    # -- opening

    def open(self, path: str | Path) -> Handle:
        """Open a constituent file once (later calls return the same handle). Raises InputError
        for a missing, unreadable, escaping or non-regular file."""
        path = Path(path)
        real = _real(path)
        if real in self._handles:
            return self._handles[real]
        self.check_inside(path, real)
        try:
            # O_NONBLOCK: opening a FIFO must not block; it is refused just below
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            raise InputError(path, "no such file or directory") from None
        except IsADirectoryError:
            raise InputError(path, "is a directory, expected a file") from None
        except OSError as e:
            raise InputError(path, f"cannot read: {e.strerror or e}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise InputError(path, "is not a regular file")
            try:  # a symlink swapped between the realpath and the open: what we opened is not `real`
                again = os.stat(real)
            except OSError:
                again = None
            if again is None or (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):
                raise InputError(path, "changed while being opened (a path component was replaced)")
        except BaseException:
            os.close(fd)
            raise
        h = Handle(path, real, fd, st)
        self._handles[real] = h
        return h

    def files(self) -> list[Path]:
        """The resolved paths of every file opened so far, in opening order."""
        return [h.real for h in self._handles.values()]

    # -- stability

    def check_unchanged(self) -> None:
        """Raise InputError if any file changed since it was opened: rewritten in place (size,
        mtime or ctime differ) or replaced (its path now names another file)."""
        for h in self._handles.values():
            now = os.fstat(h.fd)
            if _signature(now) != _signature(h.stat):
                raise InputError(h.path, "changed while being read (rewritten in place): nothing was "
                                 "written; run again once it is complete")
            try:
                cur = os.stat(h.path)
            except OSError:
                cur = None
            if cur is None or (cur.st_dev, cur.st_ino) != (h.stat.st_dev, h.stat.st_ino):
                raise InputError(h.path, "changed while being read (replaced by another file"
                                 f"{'' if cur else ' or removed'}): nothing was written; run again "
                                 "once it is complete")

    # -- outputs

    def refuse_as_output(self, out: Path) -> None:
        """Refuse an output path that is one of these files (same real path, or same inode: a
        hard link), a directory holding one, or a directory whose entries are one."""
        out = Path(out)
        candidates = [out]
        if out.is_dir():
            try:
                candidates += list(out.iterdir())
            except OSError:
                pass
        for c in candidates:
            real = _real(c)
            try:
                st = os.stat(c)
            except OSError:
                st = None
            for h in self._handles.values():
                same_inode = st is not None and (st.st_dev, st.st_ino) == (h.stat.st_dev, h.stat.st_ino)
                if real == h.real or same_inode or (c == out and _inside(h.real, real)):
                    raise UsageError(f"{out}: output would overwrite {h.path}, a file of the input "
                                     "checkpoint; choose another path")

    def close(self) -> None:
        for h in self._handles.values():
            try:
                os.close(h.fd)
            except OSError:
                pass
        self._handles.clear()
