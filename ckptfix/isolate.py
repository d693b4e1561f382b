"""Reading files whose reader is a C library in a child process first, with a deadline.

libhdf5 (behind h5py) can crash or hang on a crafted file (h5py issues #1183 and #2569, HDF5
issue #1707; ckptfix's own fuzzing found both). Batch workers isolate every input already. For the
single-file commands (``inspect``, ``diff``, ``apply``, ``check``, ``suggest``) the formats in
``formats.detect.C_LIBRARY_FORMATS`` are first read whole in a child process
(``python -m ckptfix.isolate FILE``: open, list, read every tensor, never torch), under a memory
cap and a deadline. If the child crashes, hangs or runs out of memory, the command fails with one
line naming the file; if it reports an error, that error is the command's; if it succeeds, the
command reads the file in-process (the same bytes, which libhdf5 has just read without harm).
safetensors, PyTorch, TF and numpy inputs are read by Python code and torch's own checked paths,
and skip this step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from .errors import CkptfixError, InputError

ENV = "CKPTFIX_ISOLATED"  # set in a process that is already isolated (a child, a batch worker)
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


def preflight(path: str | Path, *, timeout: float | None = None, allow_outside: bool = False) -> None:
    """Read ``path`` in a child first if its format's reader is a C library (see module doc)."""
    from .formats.detect import C_LIBRARY_FORMATS, classify

    if os.environ.get(ENV) or classify(path) not in C_LIBRARY_FORMATS:
        return
    if timeout is None:
        env = os.environ.get("CKPTFIX_READ_TIMEOUT")  # seconds: an override, for pipelines and tests
        timeout = float(env) if env else deadline_for(Path(path))
    cap = _memory_cap()

    def child_setup() -> None:
        die_with_parent()
        limit_memory(cap)

    cmd = [sys.executable, "-m", "ckptfix.isolate", str(path)] + (["--allow-outside-files"] if allow_outside else [])
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, **{ENV: "1"}),
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
    if proc.returncode == 0:
        return
    if proc.returncode < 0:
        sig = -proc.returncode
        name = signal.Signals(sig).name if sig in signal.valid_signals() else f"signal {sig}"
        why = "ran out of memory" if sig == signal.SIGKILL else f"crashed ({name})"
        raise InputError(path, f"the HDF5 library {why} reading it (a corrupt or crafted file)")
    try:
        report = json.loads(out.decode("utf-8", "replace").strip().splitlines()[-1])
    except (ValueError, IndexError):
        report = None
    if not isinstance(report, dict):
        last = (err.decode("utf-8", "replace").strip().splitlines() or [""])[-1][:200]
        if "MemoryError" in last:
            raise InputError(path, f"reading it needs more than {cap / 2**30:.1f} GiB of memory "
                             "(a corrupt size field, or a file too large for this machine)")
        raise InputError(path, f"the reader exited with status {proc.returncode} reading it: {last}")
    if report.get("internal"):
        return  # a bug of ours, not the file's: the in-process run reports it (with --debug)
    if report.get("cause") is not None:  # the same error, naming the same file (a shard, maybe)
        raise InputError(report.get("path") or path, report["cause"], hint=report.get("hint"))
    err_ = CkptfixError(report.get("message", "unreadable"))
    err_.exit_code = report.get("exit_code", 2)
    raise err_


def _read_all(path: str, allow_outside: bool) -> None:
    from .formats.base import NumpyReader
    from .formats.detect import open_checkpoint

    with open_checkpoint(path, allow_outside=allow_outside) as r:
        for name in r.metas():
            r.read_array(name) if isinstance(r, NumpyReader) else r.read(name)


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
    try:
        _fault(sys.argv[1])
        _read_all(sys.argv[1], "--allow-outside-files" in sys.argv[2:])
    except CkptfixError as e:
        print(json.dumps({"message": str(e), "exit_code": e.exit_code, "cause": getattr(e, "cause", None),
                          "path": getattr(e, "path", None), "hint": e.hint}))
        sys.exit(1)
    except MemoryError:
        print(json.dumps({"message": "out of memory", "exit_code": 2,
                          "cause": "reading it needs more memory than this machine allows "
                                   "(a corrupt size field, or a file too large)"}))
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 - reported as ours, not the file's
        print(json.dumps({"internal": f"{type(e).__name__}: {e}"}))
        sys.exit(1)


if __name__ == "__main__":
    main()
