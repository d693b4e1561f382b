"""Reading files whose reader is a C library in a child process first, with a deadline.

libhdf5 (behind h5py) can crash or hang on a crafted file (h5py issues #1183 and #2569, HDF5
issue #1707; ckptfix's own fuzzing found both). Batch workers isolate every input already. For the
single-file commands (``inspect``, ``diff``, ``apply``, ``check``, ``suggest``) the formats in
``formats.detect.C_LIBRARY_FORMATS`` are first read whole in a child process
(``python -P -m ckptfix.isolate FILE``: open, list, read every tensor, never torch), under a memory
cap and a deadline. If the child crashes, hangs or runs out of memory, the command fails with one
line naming the file; if it reports an error, that error is the command's; if it succeeds, the
command reads the file in-process (the same bytes, which libhdf5 has just read without harm).
safetensors, PyTorch, TF and numpy inputs are read by Python code and torch's own checked paths,
and skip this step. Target checkpoints are read the same way (``api.Options.open_target``).

What ties the child's check to the parent's read:

* **The child is ckptfix.** Every child ckptfix starts (this one, batch workers) is built by
  ``module_command``: ``python -m`` puts the working directory first on ``sys.path``, so a
  ``ckptfix/``, ``h5py.py`` or ``json.py`` there (a downloaded model repository) would run instead;
  ``-P`` (a ``-c`` stub before Python 3.11) leaves it off. PYTHONPATH still applies.
* **A report, not an exit status.** The parent gives the child a fresh token (``TOKEN_ENV``); only
  a last stdout line carrying it counts as the child's report. No report: the command fails.
* **The same files.** The child reports the identity (device, inode, size, mtime, ctime: the
  ``fstat`` its FileSet recorded) of every file it read, and checks at the end that none changed
  while it read. The parent opens through a FileSet that compares each file it opens with that,
  before libhdf5 sees it: a file replaced or rewritten since, or one the child did not read, is an
  InputError ("changed between the isolated check and the read"). The format the parent
  classifies must be the one the child read (``open_checkpoint(expect_format=)``).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import CkptfixError, InputError
from .formats.fileset import FileSet, _signature

ENV = "CKPTFIX_ISOLATED"  # set in a process that is already isolated (a child, a batch worker)
TOKEN_ENV = "CKPTFIX_ISOLATE_TOKEN"  # the token the child's report must carry
SAFE_PATH = sys.version_info >= (3, 11)  # python -P
CHANGED = ("changed between the isolated check and the read ({why}): nothing was read from it; "
           "run again once it is complete")


def module_command(module: str, *, safe_path: bool = SAFE_PATH) -> list[str]:
    """The argv that runs ``python -m module`` in a fresh interpreter importing nothing from the
    working directory (see the module doc). The one way ckptfix starts a Python child."""
    if safe_path:
        return [sys.executable, "-P", "-m", module]
    stub = ("import sys\nif sys.path and sys.path[0] == '': del sys.path[0]\n"
            f"import runpy; runpy.run_module({module!r}, run_name='__main__', alter_sys=True)")
    return [sys.executable, "-c", stub]
MIN_TIMEOUT = 60.0  # seconds; plus the time to read the file at a slow 50 MB/s
MIN_MEMORY = 4 << 30  # bytes; the child's cap is half the machine's memory, at least this


def limit_memory(cap: int | None) -> None:
    """Cap this process's address space (RLIMIT_AS) at ``cap`` bytes (never above a hard limit)."""
    if not cap:
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its parent dies (no orphaned readers)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _memory_cap() -> int:
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return MIN_MEMORY
    return max(MIN_MEMORY, ram // 2)


def _size(path: Path) -> int:
    p = Path(path)
    try:
        if p.is_dir():
            return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        return p.stat().st_size
    except OSError:
        return 0


def deadline_for(path: Path) -> float:
    return MIN_TIMEOUT + _size(path) / 50e6


@dataclass(frozen=True)
class Checked:
    """What ``preflight`` established: the format the file was read as and, when a child read it,
    resolved path -> identity (``fileset._signature``) of every file the child read."""

    format: str
    files: dict[str, tuple] | None = None  # None: not a C-library format, no child


class TiedFileSet(FileSet):
    """A FileSet that records the identity of every file it opens (``seen``) and, given the
    identities the child recorded (``expected``), refuses any file that is not one of those."""

    def __init__(self, named, *, expected: dict[str, tuple] | None = None, **kwargs) -> None:
        super().__init__(named, **kwargs)
        self.expected = expected
        self.seen: dict[str, tuple] = {}

    def open(self, path):
        h = super().open(path)
        key, sig = os.fspath(h.real), _signature(h.stat)
        if self.expected is not None and self.expected.get(key) != sig:
            why = "replaced or rewritten since" if key in self.expected else \
                "the isolated reader did not read this file"
            raise InputError(h.path, CHANGED.format(why=why))
        self.seen[key] = sig
        return h


def open_isolated(path: str | Path, *, allow_outside: bool = False, **open_kwargs):
    """``open_checkpoint``, with a C-library format read in a child first (``preflight``) and every
    file the parent opens tied to the ones the child read (see the module doc)."""
    from .formats.detect import C_LIBRARY_FORMATS, open_checkpoint

    checked = preflight(path, allow_outside=allow_outside)
    if checked is None:  # already isolated
        return open_checkpoint(path, allow_outside=allow_outside, **open_kwargs)
    files = TiedFileSet(path, allow_outside=allow_outside, expected=checked.files)
    r = open_checkpoint(path, allow_outside=allow_outside, fileset=files, expect_format=checked.format,
                        **open_kwargs)
    if checked.format in C_LIBRARY_FORMATS:
        try:
            r.fileset.check_unchanged()  # not rewritten while the parent opened it, either
        except BaseException:
            r.close()
            raise
    return r


def preflight(path: str | Path, *, timeout: float | None = None, allow_outside: bool = False) -> Checked | None:
    """Read ``path`` in a child first if its format's reader is a C library (see module doc).
    None when this process is isolated already; else what was checked."""
    from .formats.detect import C_LIBRARY_FORMATS, classify

    if os.environ.get(ENV):
        return None
    fmt = classify(path)
    if fmt not in C_LIBRARY_FORMATS:
        return Checked(fmt)
    if timeout is None:
        env = os.environ.get("CKPTFIX_READ_TIMEOUT")  # seconds: an override, for pipelines and tests
        timeout = float(env) if env else deadline_for(Path(path))
    cap = _memory_cap()
    token = secrets.token_hex(16)

    def child_setup() -> None:
        die_with_parent()
        limit_memory(cap)

    cmd = module_command("ckptfix.isolate") + [str(path)] + (["--allow-outside-files"] if allow_outside else [])
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, **{ENV: "1", TOKEN_ENV: token}),
                            preexec_fn=child_setup)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise InputError(path, f"reading it did not finish in {timeout:g} s: the HDF5 library hung on it "
                         "(a corrupt or crafted file)") from None
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if proc.returncode < 0:
        sig = -proc.returncode
        name = signal.Signals(sig).name if sig in signal.valid_signals() else f"signal {sig}"
        why = "ran out of memory" if sig == signal.SIGKILL else f"crashed ({name})"
        raise InputError(path, f"the HDF5 library {why} reading it (a corrupt or crafted file)")
    report = _report(out, token)
    if report is None:
        last = (err.decode("utf-8", "replace").strip().splitlines() or [""])[-1][:200]
        if "MemoryError" in last:
            raise InputError(path, f"reading it needs more than {cap / 2**30:.1f} GiB of memory "
                             "(a corrupt size field, or a file too large for this machine)")
        raise InputError(path, f"the isolated reader exited with status {proc.returncode} without its "
                         f"report{': ' + last if last else ''}")
    if proc.returncode == 0 or report.get("internal"):
        # internal: a bug of ours, not the file's: the in-process run reports it (with --debug)
        return Checked(report.get("format") or fmt, {str(k): tuple(v) for k, v in report.get("files", {}).items()})
    if report.get("cause") is not None:  # the same error, naming the same file (a shard, maybe)
        raise InputError(report.get("path") or path, report["cause"], hint=report.get("hint"))
    err_ = CkptfixError(report.get("message", "unreadable"))
    err_.exit_code = report.get("exit_code", 2)
    raise err_


def _report(out: bytes, token: str) -> dict | None:
    """The child's report: its last stdout line, a JSON object carrying ``token``; else None."""
    lines = out.decode("utf-8", "replace").strip().splitlines()
    try:
        report = json.loads(lines[-1])
    except (ValueError, IndexError):
        return None
    if not isinstance(report, dict) or report.get("token") != token:
        return None
    files = report.get("files", {})
    if not isinstance(files, dict) or not all(isinstance(v, list) and len(v) == 5 for v in files.values()):
        return None
    return report


def _read_all(path: str, allow_outside: bool, files: TiedFileSet) -> str:
    """Read every tensor of ``path`` (through ``files``, which records what was opened); its format."""
    from .formats.base import NumpyReader
    from .formats.detect import open_checkpoint

    with open_checkpoint(path, allow_outside=allow_outside, fileset=files) as r:
        for name in r.metas():
            r.read_array(name) if isinstance(r, NumpyReader) else r.read(name)
        r.fileset.check_unchanged()  # the identities reported are those of what was read
        return r.format


def _fault(path: str) -> None:
    """``CKPTFIX_READER_FAULT=substring:segv|hang`` makes the child fail that way on a path
    containing ``substring``: fault injection for the isolation tests (as in ``worker``)."""
    needle, _, kind = os.environ.get("CKPTFIX_READER_FAULT", "").rpartition(":")
    if not needle or needle not in path:
        return
    if kind == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif kind == "hang":
        import time

        while True:
            time.sleep(60)


def main() -> None:
    path, allow_outside = sys.argv[1], "--allow-outside-files" in sys.argv[2:]
    files = TiedFileSet(path, allow_outside=allow_outside)

    def report(**fields) -> None:
        print(json.dumps({"token": os.environ.get(TOKEN_ENV), "files": files.seen, **fields}))

    try:
        _fault(path)
        fmt = _read_all(path, allow_outside, files)
    except CkptfixError as e:
        report(message=str(e), exit_code=e.exit_code, cause=getattr(e, "cause", None),
               path=getattr(e, "path", None), hint=e.hint)
        sys.exit(1)
    except MemoryError:
        report(message="out of memory", exit_code=2,
               cause="reading it needs more memory than this machine allows (a corrupt size field, or a file too large)")
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 - reported as ours, not the file's
        report(internal=f"{type(e).__name__}: {e}")
        sys.exit(1)
    report(format=fmt)


if __name__ == "__main__":
    main()
