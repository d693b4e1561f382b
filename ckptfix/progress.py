"""Progress reporting for the executor.

The executor reports bytes and tensors to a ``Progress``; the default one does nothing. The CLI
uses ``Bar``: a rich progress bar on stderr (bytes, tensors, rate, ETA) that appears only once the
work has run for ``DELAY`` seconds, so quick jobs print nothing extra. ``Bar.wanted`` decides when a
bar is allowed at all: never with ``--quiet`` or ``--json``, and never when stderr is not a terminal
(logs and pipelines get no control sequences). rich is imported only when a bar is shown.

Sizes and speed are in one binary unit system, speed in the total's unit (1.5/3.0 GiB, 0.5 GiB/s);
the ETA appears after ``ETA_AFTER`` seconds and ``ETA_SAMPLES`` samples (a first estimate is noise);
without colour (``NO_COLOR``, or a terminal with none) the bar is drawn in characters
(``[####------]``), as rich's own bar then shows nothing of the part not yet done. ``BatchBar`` is
the overall bar of ``apply --out-dir`` on a terminal: inputs done of all, and their bytes.
"""

from __future__ import annotations

import sys
import threading

DELAY = 1.0
ETA_AFTER = 1.0     # seconds of work before an ETA is shown (a first estimate is noise)
ETA_SAMPLES = 3     # ... and this many progress samples
UNITS = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB")


def binary_unit(n: float) -> tuple[int, str]:
    """(divisor, unit) for ``n`` bytes in binary units: 1536 -> (1024, 'KiB')."""
    k = 0
    while k < len(UNITS) - 1 and n >= 1024 ** (k + 1):
        k += 1
    return 1024 ** k, UNITS[k]


def fmt_bytes(n: float, unit: tuple[int, str] | None = None) -> str:
    div, name = unit or binary_unit(n)
    return f"{n / div:.1f} {name}" if div > 1 else f"{int(n)} {name}"


def _rich_progress(stream, clock, extra: list, *, transient: bool = True):
    """A rich Progress on ``stream``: label, bar, done/total and speed in one binary unit system
    (GiB with GiB/s), the ETA once it means something; a bar drawn in characters when there is no
    colour (``NO_COLOR``), as rich's own bar is then invisible where it is not yet done."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress as RichProgress, TextColumn

    console = Console(file=stream)
    plain = console.no_color or console.color_system is None
    columns = [TextColumn("{task.description}"), _TextBar() if plain else BarColumn(), _Size(), *extra,
               _Speed(), _Eta()]
    kw = {"get_time": clock} if clock is not None else {}
    # stdout's lines (a batch's "done ..." lines) are drawn above the bar only when stdout is this
    # terminal too: redirected to a file, they must stay there
    same = _isatty(sys.stdout) and _isatty(stream)
    return RichProgress(*columns, console=console, transient=transient, redirect_stdout=same, **kw)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _columns():
    """rich column classes, built on first use (rich is imported only when a bar is shown)."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Size(ProgressColumn):
        def render(self, task):
            unit = binary_unit(task.total or task.completed)
            total = fmt_bytes(task.total, unit) if task.total else "?"
            done = fmt_bytes(task.completed, unit).rsplit(" ", 1)[0]
            return Text(f"{done}/{total}")

    class Speed(ProgressColumn):
        def render(self, task):
            speed = task.finished_speed or task.speed
            unit = binary_unit(task.total) if task.total else None  # the total's unit: GiB with GiB/s
            return Text("" if speed is None else f"{fmt_bytes(speed, unit)}/s")

    class Eta(ProgressColumn):
        max_refresh = 0.5

        def render(self, task):
            elapsed = task.elapsed or 0.0
            if (task.total is None or task.speed is None or elapsed < ETA_AFTER
                    or len(task._progress) < ETA_SAMPLES):
                return Text("")
            left = task.time_remaining
            if left is None:
                return Text("")
            m, sec = divmod(int(left + 0.5), 60)
            h, m = divmod(m, 60)
            return Text(f"eta {h}:{m:02d}:{sec:02d}" if h else f"eta {m}:{sec:02d}")

    class TextBar(ProgressColumn):
        width = 16

        def render(self, task):
            frac = min(1.0, task.completed / task.total) if task.total else 0.0
            n = int(frac * self.width)
            return Text("[" + "#" * n + "-" * (self.width - n) + "]")

    class Plain(ProgressColumn):  # a text column whose value is never read as rich markup
        def __init__(self, fmt):
            super().__init__()
            self.fmt = fmt

        def render(self, task):
            return Text(self.fmt.format(task=task))

    return Size, Speed, Eta, TextBar, Plain


def _Size():
    return _columns()[0]()


def _Speed():
    return _columns()[1]()


def _Eta():
    return _columns()[2]()


def _TextBar():
    return _columns()[3]()


def _Text(fmt):
    return _columns()[4](fmt)


class Progress:
    """Does nothing; the interface the executor talks to."""

    def start(self, label: str, total_bytes: int, total_tensors: int) -> None:
        pass

    def advance(self, nbytes: int, tensors: int = 0) -> None:
        pass

    def finish(self) -> None:
        pass


class Bar(Progress):
    def __init__(self, stream=None, delay: float = DELAY, clock=None) -> None:
        self.stream = stream or sys.stderr
        self.delay = delay
        self._clock = clock  # rich's get_time (tests: a fake clock)
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._shown = None  # (rich Progress, task id) once visible
        self._label, self._total, self._tensors = "", 0, 0
        self._done, self._count = 0, 0

    @staticmethod
    def wanted(*, quiet: bool, json: bool, stream=None) -> bool:
        stream = stream or sys.stderr
        return not quiet and not json and hasattr(stream, "isatty") and stream.isatty()

    def start(self, label, total_bytes, total_tensors):
        self.finish()
        with self._lock:
            self._label, self._total, self._tensors = label, total_bytes, total_tensors
            self._done, self._count = 0, 0
        self._timer = threading.Timer(self.delay, self._show)
        self._timer.daemon = True
        if self.delay <= 0:
            self._show()
        else:
            self._timer.start()

    def _show(self) -> None:
        from rich.markup import escape

        from .errors import one_line

        with self._lock:
            if self._timer is None:
                return
            bar = _rich_progress(self.stream, self._clock, [_Text("{task.fields[tensors]}")])
            # the label is a path: shown as text (no rich markup, no control characters)
            task = bar.add_task(escape(one_line(self._label)), total=self._total or None, completed=self._done,
                                tensors=self._tensor_text())
            bar.start()
            self._shown = (bar, task)

    def _tensor_text(self) -> str:
        return f"{self._count}/{self._tensors} tensors"

    def advance(self, nbytes, tensors=0):
        with self._lock:
            self._done += nbytes
            self._count += tensors
            if self._shown:
                bar, task = self._shown
                bar.update(task, completed=self._done, tensors=self._tensor_text())

    def finish(self):
        timer = self._timer
        if timer is not None:
            timer.cancel()
        with self._lock:
            self._timer = None
            shown, self._shown = self._shown, None
        if shown:
            shown[0].stop()


class BatchBar:
    """The overall bar of a batch (``apply --out-dir`` on a terminal): inputs done of all, and
    their bytes, below the per-input lines; shown at once (a batch is never a quick job)."""

    def __init__(self, total_files: int, total_bytes: int, stream=None, clock=None) -> None:
        from rich.progress import ProgressColumn  # noqa: F401  (rich present: fail here, not later)

        self.stream = stream or sys.stderr
        self.files, self.total_files = 0, total_files
        self._bar = _rich_progress(self.stream, clock, [_Text("{task.fields[files]}")])
        self._task = self._bar.add_task("batch", total=total_bytes or None, files=self._files_text())
        self._bar.start()

    def _files_text(self) -> str:
        return f"{self.files}/{self.total_files} files"

    def record(self, nbytes: int) -> None:
        """One input finished (done, skipped or failed): its bytes count as dealt with."""
        self.files += 1
        self._bar.update(self._task, advance=nbytes, files=self._files_text())
        self._bar.refresh()

    def finish(self) -> None:
        self._bar.stop()


def input_bytes(path) -> int:
    """The bytes of an input on disk (a directory: its files'), for the batch bar."""
    import os

    try:
        if os.path.isdir(path):
            return sum(e.stat().st_size for e in os.scandir(path) if e.is_file())
        return os.stat(path).st_size
    except OSError:
        return 0
