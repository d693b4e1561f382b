"""One exception hierarchy; every error knows its exit code.

Library code raises these; the CLI turns them into a message on stderr and an exit code
(``ckptfix.cli._run``), ``api.apply_file`` into a ``Result``. Both ask ``exit_code_for``: the exit
codes, and which exception gets which, are defined here and nowhere else.
"""

from __future__ import annotations

import errno
import re
from pathlib import Path

EXIT_OK = 0
EXIT_DOES_NOT_FIT = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a pipeline writer killed by the reader

# What a string read from a file must never carry onto a terminal: C0 and C1 controls and DEL
# (newlines, ESC sequences, carriage returns), the Unicode line and paragraph separators, the
# bidirectional overrides (text that displays other than it reads), and lone surrogates (a
# filename's undecodable bytes, which cannot even be printed).
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match) -> str:
    c = m.group()
    if c in _NAMED:
        return _NAMED[c]
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}"


def one_line(text: object) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``,
    ``\\u2028``): always one line, never a terminal escape sequence; other Unicode is kept. Every
    message and every name from a file goes through this on its way to a terminal."""
    return _CONTROLS.sub(_escape, str(text))


def printable(text: object) -> str:
    """Multi-line text (a report) whose lines are each ``one_line``: newlines kept, every other
    control escaped. The guard at the stdout boundary; names inside it are escaped already."""
    return "\n".join(one_line(line) for line in str(text).split("\n"))


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
    """A pickle names globals that run code (``ckptfix.formats.pickles.runs_code``): an attack.
    ``names`` lists them. No flag admits them."""

    def __init__(self, path: str | Path, names: list[str]) -> None:
        self.names = names
        listed = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
        super().__init__(path, f"refused to unpickle: it calls {listed}, which can run code",
                         hint="no checkpoint needs that: do not use this file")


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


def broken_pipe(exc: BaseException) -> bool:
    """stdout's reader went away (``ckptfix inspect x | head -1``): BrokenPipeError, or EPIPE raw."""
    return isinstance(exc, OSError) and exc.errno == errno.EPIPE


def exit_code_for(exc: BaseException) -> int:
    """The exit code for ``exc``: the one map from exceptions to exit codes.

    A ``CkptfixError`` carries its own (``DoesNotFit`` 1, the others 2); an interrupt is 130; a
    broken pipe 141 (as a shell reports a writer killed by SIGPIPE); anything else (a bug, a failure
    mode not mapped yet, a command-line usage error) is 2."""
    if isinstance(exc, CkptfixError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if broken_pipe(exc):
        return EXIT_BROKEN_PIPE
    return EXIT_BAD_INPUT


def message_for(exc: BaseException) -> str:
    """The one-line message for ``exc`` (a ``CkptfixError``'s own; anything else is an internal error)."""
    if isinstance(exc, CkptfixError):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return f"internal error: {type(exc).__name__}: {exc}"
