"""The time limit's clock: where a command's ``--timeout`` starts counting.

:func:`onnx_near.score.score` calls :func:`restart` as it starts; inside a sandbox
(:mod:`onnx_near.sandbox`) that tells the parent, whose deadline then counts from there
(``init`` and ``activations`` get the limit per candidate).  Outside one it does nothing.
The deadline itself and the sentence that says it was reached live here too.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .errors import RunError

_hook: Callable[[], None] | None = None


def restart() -> None:
    """A new score begins: its time limit counts from now."""
    if _hook is not None:
        _hook()


def on_restart(hook: Callable[[], None] | None) -> None:
    """Call ``hook`` at every :func:`restart` (the sandbox's child sets it; None clears it)."""
    global _hook
    _hook = hook


def deadline(timeout: float | None) -> float | None:
    """The :func:`time.monotonic` value at which a run given ``timeout`` seconds from now must
    stop; None without a limit."""
    return time.monotonic() + timeout if timeout is not None else None


def expired(at: float | None) -> bool:
    """Whether the deadline ``at`` (from :func:`deadline`) has passed."""
    return at is not None and time.monotonic() > at


def time_limit_error(label: str, timeout: float | None = None) -> RunError:
    """The one sentence for a run stopped by ``--timeout``."""
    limit = f"--timeout {timeout:g} s" if timeout is not None else "--timeout"
    return RunError(f"scoring {label} took longer than the time limit ({limit})")
