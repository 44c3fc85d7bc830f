"""Progress of a long score, on stderr, for a person watching a terminal.

Nothing is shown when stderr is not a terminal (a pipeline, a log file) or with
``--quiet``, nor for a score that ends within ``DELAY`` seconds: a short run stays silent.
Past that, one line is redrawn in place (at most ``REDRAW`` times a second): the
repetition, the samples run through the model and the matrices ranked, with counts.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

DELAY = 2.0  # seconds before the first line
REDRAW = 0.1  # seconds between two redraws


class Progress:
    """One score's progress line; :meth:`silent` shows nothing."""

    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None, delay: float = DELAY):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = _is_terminal(self.stream) if enabled is None else enabled
        self.delay = delay
        self._t0 = 0.0
        self._last = 0.0
        self._shown = False
        self._name = ""
        self._reps = self._samples = self._matrices = 0

    @classmethod
    def silent(cls) -> Progress:
        return cls(enabled=False)

    def start(self, name: str, repetitions: int, samples: int, matrices: int) -> None:
        self._name, self._reps, self._samples, self._matrices = name, repetitions, samples, matrices
        self._t0 = time.monotonic()

    def samples(self, repetition: int, done: int) -> None:
        """``done`` samples of the repetition's window have been run."""
        self._show(repetition, f"samples {done:,}/{self._samples:,}", done >= self._samples)

    def ranked(self, repetition: int, done: int) -> None:
        """``done`` of the repetition's matrices have been ranked."""
        what = f"samples {self._samples:,}/{self._samples:,} · matrices {done:,}/{self._matrices:,}"
        self._show(repetition, what, done >= self._matrices)

    def finish(self) -> None:
        """End the line (only if one was shown)."""
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False

    def _show(self, repetition: int, what: str, force: bool) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._t0 < self.delay or (not force and now - self._last < REDRAW):
            return
        self._last = now
        reps = f"repetition {repetition + 1}/{self._reps} · " if self._reps > 1 else ""
        line = f"{self._name}: {reps}{what} · {now - self._t0:.0f} s"
        self.stream.write("\r\x1b[K" + line)
        self.stream.flush()
        self._shown = True


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
