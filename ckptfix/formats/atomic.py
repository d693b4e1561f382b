"""Atomic output: write beside the destination, fsync, ``os.replace``, fsync the directory.

An interrupted or failed write leaves nothing at the destination. Temporary names start with
``TMP_PREFIX`` so a later run can recognise (and clean) what a killed process left behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from pathlib import Path

TMP_PREFIX = ".ckptfix-tmp-"


def temp_path_for(dest: Path) -> Path:
    return dest.parent / f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{dest.name}"


_TMP_NAME = re.compile(re.escape(TMP_PREFIX) + r"(\d+)-[0-9a-f]{8}-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def clean_stale(directory: Path) -> list[Path]:
    """Remove what killed ckptfix runs left in ``directory``: temporary outputs whose writing
    process no longer exists (the pid is in the name). Live runs' files are left alone."""
    removed = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TMP_NAME.match(p.name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            remove(p)
            removed.append(p)
    return removed


def fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove(p: Path) -> None:
    """Remove a file or a directory tree (ours: a temporary output); gone already is fine."""
    with contextlib.suppress(FileNotFoundError):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


@contextlib.contextmanager
def atomic_file(dest: str | Path):
    """Yield a temporary path; on clean exit the file there replaces ``dest`` atomically."""
    dest = Path(dest)
    tmp = temp_path_for(dest)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except BaseException:
        remove(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(dest: str | Path, *, replace: bool = False):
    """Yield a temporary directory; on clean exit it is renamed to ``dest``.

    With ``replace``, an existing ``dest`` is moved aside first and removed only after the new
    directory is in place.
    """
    dest = Path(dest)
    tmp = temp_path_for(dest)
    tmp.mkdir()
    old = None
    try:
        yield tmp
        for child in tmp.iterdir():
            with open(child, "rb+") as f:
                os.fsync(f.fileno())
        fsync_dir(tmp)
        if dest.exists():
            if not replace:
                raise FileExistsError(dest)
            old = temp_path_for(dest)
            os.replace(dest, old)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except BaseException:
        remove(tmp)
        if old is not None and not dest.exists():
            os.replace(old, dest)
            old = None
        raise
    finally:
        if old is not None:
            remove(old)
