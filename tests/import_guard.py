"""An import hook that makes "ckptfix never imports TensorFlow, Keras or JAX" a test that can fail.

Looking at ``sys.modules`` after a run proves nothing on a machine without TensorFlow: there an
attempted ``import tensorflow`` raises ImportError, and code that catches it leaves no trace. The
guard sits first on ``sys.meta_path``, so it sees every attempt whether or not the package is
installed; it appends the attempt to a log file at once (a worker that dies or calls ``os._exit``
still leaves the record) and raises ``ForbiddenImport``, an ImportError, so the program goes on as
it would on a machine without these packages. An ``except ImportError`` cannot hide the record.

Every Python process started with the environment of ``guarded_env`` installs the guard at start-up
(a ``sitecustomize`` on PYTHONPATH), batch workers included.

As a script, ``python tests/import_guard.py RUNS_JSON`` imports every ckptfix module, then runs
each ckptfix command line of the JSON list in this process and prints one JSON list of exit codes.
"""

from __future__ import annotations

import importlib.abc
import json
import os
import sys
import traceback
from pathlib import Path

FORBIDDEN = ("tensorflow", "keras", "tf_keras", "jax", "jaxlib")
LOG_VAR = "CKPTFIX_IMPORT_GUARD_LOG"
HERE = Path(__file__).resolve().parent


class ForbiddenImport(ImportError):
    pass


class Guard(importlib.abc.MetaPathFinder):
    def __init__(self, log: str):
        self.log = log

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] not in FORBIDDEN:
            return None  # not ours: the other finders decide
        frames = [f for f in traceback.extract_stack()
                  if "importlib" not in f.filename and f.filename != __file__][-3:]
        where = " <- ".join(f"{f.filename}:{f.lineno}" for f in reversed(frames))
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"module": name, "pid": os.getpid(), "where": where}) + "\n")
        raise ForbiddenImport(f"import of {name!r} is forbidden (tests/import_guard.py)", name=name)


def install(log: str) -> None:
    already = [m for m in sys.modules if m.partition(".")[0] in FORBIDDEN]
    if already:  # imported before the guard: it could not see them
        raise RuntimeError(f"imported before the guard was installed: {already}")
    if not any(isinstance(f, Guard) for f in sys.meta_path):
        sys.meta_path.insert(0, Guard(log))


def install_from_env() -> None:
    if os.environ.get(LOG_VAR):
        install(os.environ[LOG_VAR])


def guarded_env(tmp: Path, log: Path, pythonpath: str = "") -> dict:
    """The environment for a guarded subprocess: a sitecustomize in ``tmp`` installs the guard."""
    site = tmp / "import-guard-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        f"import sys\nsys.path.insert(0, {str(HERE)!r})\nimport import_guard\nimport_guard.install_from_env()\n"
        f"sys.path.remove({str(HERE)!r})\n")
    paths = [str(site)] + [p for p in (pythonpath or os.environ.get("PYTHONPATH", "")).split(os.pathsep) if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths), **{LOG_VAR: str(log)})


def attempts(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _import_every_ckptfix_module() -> None:
    import importlib
    import pkgutil

    import ckptfix

    for m in pkgutil.walk_packages(ckptfix.__path__, "ckptfix."):
        importlib.import_module(m.name)


def _run(argvs: list[list[str]]) -> list[int]:
    from ckptfix.cli import app

    codes = []
    for argv in argvs:
        try:
            app(args=argv, prog_name="ckptfix")
            codes.append(0)
        except SystemExit as e:
            codes.append(e.code if isinstance(e.code, int) else (0 if e.code is None else 1))
    return codes


if __name__ == "__main__":
    import import_guard  # the copy sitecustomize installed (this file, run as __main__, is another)

    if not any(isinstance(f, import_guard.Guard) for f in sys.meta_path):
        sys.exit("import_guard.py: run with guarded_env() (the guard is not installed)")
    _import_every_ckptfix_module()
    print(json.dumps(_run(json.loads(sys.argv[1]))))
