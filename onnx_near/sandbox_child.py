"""The sandbox's child: a forked worker that holds the limits and answers its parent's calls.

:func:`serve` is the worker's whole life: the limits (:func:`~onnx_near.sandbox_limits.apply_limits`),
then each call's reply (:func:`reply`) sent back through the pipe, with the records it logs
and a "tick" at every :func:`restart_clock`, until the pipe closes or the worker has grown
past ``RETIRE_GROWTH``.  The parent's side is :class:`onnx_near.sandbox.Sandbox`.
"""

from __future__ import annotations

import ctypes
import faulthandler
import logging
import os
import pickle
import signal
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from . import clock
from .errors import NearError
from .sandbox_limits import ALLOCATION, Limits, apply_limits, memory_error, vm_data

# A long-lived worker retires (the next call forks a fresh one) once its data has grown this
# much past its size at the start: memory the allocator keeps is then given back.
RETIRE_GROWTH = 256 << 20

_channel: Connection | None = None  # in a worker: the pipe to the parent
_timed = False  # in a worker: whether the parent keeps a deadline
_limits: Limits | None = None  # in a worker: its limits


def restart_clock() -> None:
    """Tell the parent that a new score begins, so that its time limit counts from now.

    Called (through :func:`onnx_near.clock.restart`) by :func:`onnx_near.score.score` as it
    starts; does nothing outside a sandbox."""
    if _channel is not None and _timed:
        _channel.send(("tick",))


def serve(conn: Connection, limits: Limits, first: tuple[Callable[[], Any], str], parent: int) -> int:
    """The worker: the limits, then each call's reply, until the pipe closes or it has grown."""
    global _channel, _timed, _limits
    _die_with_parent(parent)
    faulthandler.disable()  # a crash is the parent's one sentence, not a dump of Python's stack on fd 2
    start = apply_limits(limits)
    _channel, _timed, _limits = conn, limits.timeout is not None, limits
    clock.on_restart(restart_clock)  # score() starts its clock through onnx_near.clock
    package = logging.getLogger("onnx_near")  # its records are the parent's to write, where it writes
    package.handlers[:] = [_Forward(conn)]
    package.propagate = False
    call: tuple[Callable[[], Any], str] | None = first
    while True:
        if call is None:
            try:
                message = conn.recv_bytes()
            except (EOFError, OSError):
                return 0
            try:
                call = pickle.loads(message)
            except Exception as e:  # a function this worker, forked earlier, does not have
                conn.send(("raised", _portable(e), _traceback(e), False))
                continue
        assert call is not None
        fn, label = call
        kind, payload, remote = reply(fn, label, limits)
        retire = vm_data() - start > min(RETIRE_GROWTH, (limits.memory or RETIRE_GROWTH) // 4)
        try:
            conn.send((kind, payload, remote, retire))
        except Exception as e:  # the result (or error) does not pickle
            conn.send(("raised", _portable(e), traceback.format_exc(), retire))
        if retire:
            return 0
        call = None


def reply(fn: Callable[[], Any], label: str, limits: Limits) -> tuple[str, Any, str]:
    """``fn()`` as ("ok", result, "") or ("raised", exception, traceback)."""
    try:
        return "ok", fn(), ""
    except MemoryError as e:
        return "raised", memory_error(label, limits, None), _traceback(e)
    except NearError as e:
        if limits.memory is not None and ALLOCATION.search(str(e)):
            return "raised", memory_error(label, limits, str(e)), _traceback(e)
        return "raised", _portable(e), _traceback(e)
    except BaseException as e:
        return "raised", _portable(e), _traceback(e)


def _die_with_parent(parent: int) -> None:
    """Have the kernel kill this worker when its parent dies (no orphan keeps computing)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


class _Forward(logging.Handler):
    """In the worker: each record of onnx-near's loggers goes to the parent, which writes it
    with its own handlers (a terminal, a test's captured stream, a Ray worker's log)."""

    def __init__(self, conn: Connection) -> None:
        super().__init__()
        self.conn = conn

    def emit(self, record: logging.LogRecord) -> None:
        fields = dict(record.__dict__, msg=record.getMessage(), args=None, exc_info=None, exc_text=None)
        if record.exc_info:
            fields["msg"] += "\n" + "".join(traceback.format_exception(*record.exc_info))
        try:
            self.conn.send(("log", fields))  # handle() holds the handler's lock: one record at a time
        except Exception:  # a record that does not pickle, a closed pipe: never the score's failure
            self.handleError(record)


def _traceback(e: BaseException) -> str:
    return "".join(traceback.format_exception(type(e), e, e.__traceback__))


def _portable(e: BaseException) -> BaseException:
    """``e`` if it survives pickling, else a RuntimeError that names it."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}")


def own_limits() -> Limits:
    """In a worker: the limits it holds (no limits outside one)."""
    return _limits or Limits()
