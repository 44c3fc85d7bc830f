"""The time limit's clock: where a command's ``--timeout`` starts counting.

:func:`onnx_near.score.score` calls :func:`restart` as it starts; inside a sandbox
(:mod:`onnx_near.sandbox`) that tells the parent, whose deadline then counts from there
(``init`` and ``activations`` get the limit per candidate).  Outside one it does nothing.
"""

from __future__ import annotations

from collections.abc import Callable

_hook: Callable[[], None] | None = None


def restart() -> None:
    """A new score begins: its time limit counts from now."""
    if _hook is not None:
        _hook()


def on_restart(hook: Callable[[], None] | None) -> None:
    """Call ``hook`` at every :func:`restart` (the sandbox's child sets it; None clears it)."""
    global _hook
    _hook = hook
