"""One exception hierarchy; every error knows its exit code.

Library code raises these; only the CLI turns them into a message on stderr and an exit code
(see ``ckptfix.cli``). The exit codes are defined here and nowhere else.
"""

from __future__ import annotations

from pathlib import Path

EXIT_OK = 0
EXIT_DOES_NOT_FIT = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class CkptfixError(Exception):
    """Base class. ``str(err)`` is the one-line message shown to the user."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class InputError(CkptfixError):
    """A checkpoint (or other input file) is missing, unreadable, corrupt or unsafe."""

    def __init__(self, path: str | Path, cause: str, *, hint: str | None = None) -> None:
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{path}: {cause}", hint=hint)


class UnsafePickleError(InputError):
    """A pickle needs globals that are not allow-listed; ``names`` lists them."""

    # globals that can run code: never allowed, not even with --allow-global (torch itself only
    # blocks os/posix/nt/sys; ckptfix refuses the rest in torch_io.resolve_global)
    BLOCKED = ("os.", "posix.", "nt.", "subprocess.", "sys.", "builtins.eval", "builtins.exec", "runpy.",
               "_posixsubprocess.", "webbrowser.", "importlib.", "pty.", "shutil.", "socket.", "ctypes.",
               "_ctypes.", "pickle.", "_pickle.", "marshal.", "code.", "codeop.", "multiprocessing.",
               "asyncio.", "signal.", "pydoc.", "torch.hub.", "torch.ops.", "torch.jit.")

    def __init__(self, path: str | Path, names: list[str]) -> None:
        self.names = names
        # a hostile file may name thousands: cap before combining (the lists are searched)
        blocked = [n for n in names if runs_code(n)][:8]
        shown = (blocked + [n for n in names[:16] if n not in blocked])[:8]
        listed = (", ".join(shown) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")) \
            if names else "unknown"
        super().__init__(
            path,
            f"refused to unpickle: needs non-allowlisted global(s) {listed}",
            hint=f"{', '.join(blocked)} can run code and {'is' if len(blocked) == 1 else 'are'} never "
            "allowed: do not use this file" if blocked
            else "if you trust this file, pass --allow-global NAME for each",
        )


def runs_code(name: str, obj: object = None) -> bool:
    """Whether the pickle global ``name`` (``module.qualname``; ``obj`` if imported) can run code:
    a blocked module, or a builtin function (eval, exec, getattr, __import__, open, ...); builtin
    classes (int, dict, slice, ...) are data."""
    if name.startswith(UnsafePickleError.BLOCKED):
        return True
    if name.startswith("builtins."):
        import builtins

        obj = obj if obj is not None else getattr(builtins, name[len("builtins."):], None)
        return not isinstance(obj, type)
    return False


class RulesError(CkptfixError):
    """The rules file is invalid (syntax, schema, a regex, an op that cannot apply)."""

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None,
                 hint: str | None = None) -> None:
        self.source = source
        self.line = line
        where = ""
        if source:
            where = f"{source}:{line}: " if line else f"{source}: "
        super().__init__(f"{where}{message}", hint=hint)


class TargetError(CkptfixError):
    """The target (model factory, layer spec or checkpoint) cannot be resolved."""


class UsageError(CkptfixError):
    """The command line asks for something impossible (output equals input, exists, ...)."""


class DoesNotFit(CkptfixError):
    """The plan ran, but the result does not fit the target (or an ``expect:`` failed)."""

    exit_code = EXIT_DOES_NOT_FIT
