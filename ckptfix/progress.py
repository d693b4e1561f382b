"""Progress reporting for the executor.

The executor reports bytes and tensors to a ``Progress``; the default one does nothing. The CLI
uses ``Bar``: a rich progress bar on stderr (bytes, tensors, rate, ETA) that appears only once the
work has run for ``DELAY`` seconds, so quick jobs print nothing extra. ``Bar.wanted`` decides when a
bar is allowed at all: never with ``--quiet`` or ``--json``, and never when stderr is not a terminal
(logs and pipelines get no control sequences). rich is imported only when a bar is shown.
"""

from __future__ import annotations

import sys
import threading

DELAY = 1.0


class Progress:
    """Does nothing; the interface the executor talks to."""

    def start(self, label: str, total_bytes: int, total_tensors: int) -> None:
        pass

    def advance(self, nbytes: int, tensors: int = 0) -> None:
        pass

    def finish(self) -> None:
        pass


class Bar(Progress):
    def __init__(self, stream=None, delay: float = DELAY) -> None:
        self.stream = stream or sys.stderr
        self.delay = delay
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
        from rich.console import Console
        from rich.markup import escape

        from .errors import one_line
        from rich.progress import (BarColumn, DownloadColumn, Progress as RichProgress, TextColumn,
                                   TimeRemainingColumn, TransferSpeedColumn)

        with self._lock:
            if self._timer is None:
                return
            bar = RichProgress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                               TextColumn("{task.fields[tensors]}"), TransferSpeedColumn(), TimeRemainingColumn(),
                               console=Console(file=self.stream), transient=True)
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
