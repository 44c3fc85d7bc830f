"""The sandbox: the untrusted part of a command runs in a child process with operating-system limits.

Parsing a model, rewriting it, building its onnxruntime session and running it are done by a
forked child, never by the process that asked.  The child holds the limits a model cannot
argue with:

* **memory**: ``RLIMIT_DATA`` (heap and private writable mappings) at the child's size when
  it starts plus ``--max-memory`` plus room for the threads' stacks (:func:`headroom`).  A
  tensor the model computes that would pass it (a 0.5 KB model whose ``Expand`` makes 3 GiB)
  fails to allocate, and the score ends with one sentence (:class:`MemoryLimitError`).
  ``RLIMIT_AS`` is not used: onnxruntime's threads and allocator arenas reserve address space
  they never touch (1.35 GiB for a 16-thread session of a 0.5 MB model), and a thread pool
  that cannot start its threads under it hangs instead of failing;
* **time**: the parent kills the child at the ``--timeout`` deadline, whatever it is doing
  (reading the model, building the session, a forward pass); the clock restarts at each
  :func:`onnx_near.score.score` a command makes (:func:`restart_clock`);
* **crashes**: a child killed by a signal (a segmentation fault inside onnxruntime) is
  reported as ``onnxruntime crashed on 'm.onnx' (signal 11, SIGSEGV)`` (:class:`CrashError`),
  and the parent goes on; no core file is written.

The whole computation runs in the child and only its result (a few kilobytes: a
:class:`~onnx_near.report.ScoreResult`, a ranking) comes back, pickled through a pipe: the
matrices never leave the child, so they need no shared memory, and everything a model can
make the process allocate lies under the one limit.

A :class:`Sandbox` is a long-lived worker: the first call forks it (the work it is given
needs no pickling: the child has the parent's memory), later calls are pickled to it, and a
worker that dies, is killed or has grown is replaced by a fresh fork on the next call.
:func:`run` is the one-shot form the CLI uses; :func:`score` is :func:`onnx_near.score`
through this process's own worker, for engines that score many models.

This module is the parent's side and the API; the child's side (what the forked worker
runs) is :mod:`onnx_near.sandbox_child`, and the limits it holds are
:mod:`onnx_near.sandbox_limits`.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from multiprocessing import Pipe
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any, TypeVar

from . import clock
from .errors import NearError, RunError
from .model_source import ModelSource, display_name
from .sandbox_child import own_limits, reply, restart_clock, serve
from .sandbox_limits import Limits, MemoryLimitError, headroom

if TYPE_CHECKING:
    from .config import ScoreConfig
    from .inputs.data import DataArg
    from .progress import Progress
    from .report import ScoreResult

log = logging.getLogger(__name__)

T = TypeVar("T")

# The parent kills the child this long after the deadline, so that the child's own stop
# (onnxruntime's terminate flag, the checks between stages) can say where it was first.
GRACE = 0.25
POLL = 1.0  # seconds between checks that the child still lives, while waiting on it


class CrashError(RunError):
    """The child scoring a model died: killed by a signal (a crash in onnxruntime) or exited."""


_open: weakref.WeakSet[Sandbox] = weakref.WeakSet()  # every Sandbox of this process


class Sandbox:
    """A worker process under :class:`Limits` that runs calls one at a time.

    ``call(fn)`` runs ``fn()`` in the worker and returns its result, or raises what it
    raised: a :class:`~onnx_near.errors.NearError` as it was, any other exception with the
    worker's traceback as its cause.  A worker that crashed, was killed at the deadline, or
    has grown is replaced on the next call.  Use it as a context manager, or :meth:`close` it.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._pid: int | None = None
        self._conn: Connection | None = None
        self._busy = False  # a call is in flight
        _open.add(self)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, fn: Callable[[], T], label: str = "the model") -> T:
        """``fn()`` in the worker; ``label`` names the model in the sentences of its errors.

        The first call forks the worker with ``fn`` in its memory (nothing is pickled); a
        later call pickles ``fn`` to it (a :func:`functools.partial` of a module-level
        function pickles, a lambda does not)."""
        if self._pid is not None:
            try:
                assert self._conn is not None
                self._conn.send((fn, label))
            except (OSError, EOFError):  # the worker is gone: a fresh one
                self._end(kill=True)
        if self._pid is None:
            self._fork((fn, label))
        self._busy = True
        try:
            return self._wait(label)  # type: ignore[no-any-return]
        finally:
            if self._busy:  # interrupted here (Ctrl-C): the worker must not go on alone
                self._end(kill=True)
                self._busy = False

    def close(self) -> None:
        """End the worker: it exits when its pipe closes."""
        if self._pid is not None:
            self._end(kill=self._busy)

    def _fork(self, first: tuple[Callable[[], Any], str]) -> None:
        parent_end, child_end = Pipe()
        parent = os.getpid()
        sys.stdout.flush()  # what is buffered is written once, by the parent
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker: never returns
            code = 1
            try:
                parent_end.close()
                for other in list(_open):  # other workers' pipes: theirs to close, not ours to hold
                    if other._conn is not None:
                        other._conn.close()
                code = serve(child_end, self.limits, first, parent)
            finally:
                os._exit(code)
        child_end.close()
        self._pid, self._conn = pid, parent_end

    def _wait(self, label: str) -> Any:
        """The worker's reply to the call in flight: its result, or its error raised here."""
        assert self._conn is not None and self._pid is not None
        timeout = self.limits.timeout
        deadline = time.monotonic() + timeout + GRACE if timeout is not None else None
        while True:
            left = POLL if deadline is None else min(POLL, deadline - time.monotonic())
            if left <= 0:
                self._busy = False
                self._end(kill=True)
                raise clock.time_limit_error(label, timeout)
            if not wait([self._conn], timeout=left):
                pid, status = os.waitpid(self._pid, os.WNOHANG)
                if pid == 0:
                    continue  # still working
                self._busy = False
                self._end(status=status)
                raise _death(os.waitstatus_to_exitcode(status), label)
            try:
                message = self._conn.recv()
            except (EOFError, OSError):  # it died: the pipe closed with it
                self._busy = False
                raise _death(self._end(), label) from None
            if message[0] == "tick":  # a new score begins: its clock starts now
                if timeout is not None:
                    deadline = time.monotonic() + timeout + GRACE
                continue
            if message[0] == "log":  # a record the worker logged: written here, by this process's handlers
                record = logging.makeLogRecord(message[1])
                logging.getLogger(record.name).handle(record)
                continue
            self._busy = False
            kind, payload, remote, retire = message
            if retire:
                self._end()
            if kind == "ok":
                return payload
            raise payload from _RemoteTraceback(remote)

    def _end(self, kill: bool = False, status: int | None = None) -> int:
        """Close the pipe and wait for the worker to end (killed first if ``kill``; already
        reaped with ``status``); its exit code as :func:`os.waitstatus_to_exitcode` gives
        it (negative: the signal that ended it)."""
        assert self._pid is not None
        pid, self._pid = self._pid, None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if status is not None:
            return os.waitstatus_to_exitcode(status)
        if kill:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        except ChildProcessError:
            return 0


def run(fn: Callable[[], T], limits: Limits, label: str = "the model") -> T:
    """``fn()`` in a fresh sandboxed child under ``limits``; the child ends with the call.

    ``fn`` is any callable, a lambda included (the child is a fork: nothing is pickled but
    the result).  Errors as :meth:`Sandbox.call` raises them."""
    with Sandbox(limits) as box:
        return box.call(fn, label)


_worker: Sandbox | None = None  # this process's worker for score() and score_each()


def score(
    model: ModelSource,
    data: DataArg = None,
    config: ScoreConfig | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> ScoreResult:
    """:func:`onnx_near.score`, run in this process's sandboxed worker under the limits the
    config asks for (``max_memory``, ``timeout``).

    Same arguments, result and errors, plus :class:`CrashError` and
    :class:`MemoryLimitError`.  The worker stays between calls (a call costs a pipe's round
    trip, about 0.6 ms, not a fork) and is replaced when it dies or the limits change.  Safe
    to hand to an engine as its scorer: it pickles by reference and never takes the caller
    down."""
    from .score import score as score_in_process

    cfg = _config(config, options)
    label = repr(display_name(model))
    return _worker_for(cfg).call(partial(score_in_process, model, data, cfg, progress), label)


def score_each(
    models: Sequence[str | os.PathLike[str]], data: DataArg = None, config: ScoreConfig | None = None, **options: Any
) -> list[ScoreResult | BaseException]:
    """Each of ``models`` scored in this process's worker, in one call: per model, in order,
    its :class:`~onnx_near.report.ScoreResult` or the exception that stopped it (a
    :class:`~onnx_near.errors.NearError`, or another exception for a bug).

    One call costs one round trip for all the models, not one each.  When a model takes the
    worker down (a crash, the deadline of ``--timeout``), the models of the call are scored
    again one by one, each in a worker of its own if need be, so that the one that did it
    alone gets the :class:`CrashError` (or the time-limit :class:`~onnx_near.errors.RunError`)."""
    cfg = _config(config, options)
    paths = [os.fspath(m) for m in models]
    try:
        return _worker_for(cfg).call(partial(_score_each, paths, data, cfg), f"one of {len(paths)} models")
    except NearError:  # the worker died on one of them: find it
        out: list[ScoreResult | BaseException] = []
        for path in paths:
            try:
                out.append(score(path, data, cfg))
            except Exception as e:
                out.append(e)
        return out


def _score_each(paths: list[str], data: DataArg, config: ScoreConfig) -> list[ScoreResult | BaseException]:
    """In the worker: each model's result or exception (allocation failures as :class:`MemoryLimitError`)."""
    from .score import score as score_in_process

    out: list[ScoreResult | BaseException] = []
    for path in paths:
        _, payload, _ = reply(partial(score_in_process, path, data, config), repr(os.path.basename(path)), own_limits())
        out.append(payload)
    return out


def _config(config: ScoreConfig | None, options: Mapping[str, Any]) -> ScoreConfig:
    from .score import make_config

    return make_config(config, **options)


def _worker_for(config: ScoreConfig) -> Sandbox:
    """This process's worker, under the limits ``config`` asks for (a new one if they changed)."""
    global _worker
    limits = Limits.of(config)
    if _worker is not None and _worker.limits != limits:
        _worker.close()
        _worker = None
    if _worker is None:
        _worker = Sandbox(limits)
    return _worker


@atexit.register
def _close_worker() -> None:
    """The worker ends with this process, not after it."""
    if _worker is not None:
        _worker.close()


def _death(code: int, label: str) -> CrashError:
    """The sentence for a worker that ended without a reply."""
    if code == -signal.SIGKILL:
        return CrashError(
            f"the process scoring {label} was killed (signal 9, SIGKILL), by the system when memory ran out or by hand"
        )
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown"
        return CrashError(f"onnxruntime crashed on {label} (signal {-code}, {name})")
    return CrashError(f"the process scoring {label} ended without a result (exit status {code})")


class _RemoteTraceback(Exception):
    """The worker's traceback, attached as the cause of what it raised (``--debug`` shows it)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "\n\nin the sandboxed worker:\n" + self.text


__all__ = [
    "CrashError",
    "Limits",
    "MemoryLimitError",
    "Sandbox",
    "headroom",
    "restart_clock",
    "run",
    "score",
    "score_each",
]
