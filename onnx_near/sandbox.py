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
"""

from __future__ import annotations

import atexit
import ctypes
import faulthandler
import logging
import os
import pickle
import re
import resource
import signal
import sys
import time
import traceback
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from multiprocessing import Pipe
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any, TypeVar

from . import clock
from .budget import gib
from .errors import NearError, RunError

if TYPE_CHECKING:
    from .config import ScoreConfig
    from .inputs import DataArg
    from .progress import Progress
    from .report import ScoreResult

log = logging.getLogger(__name__)

T = TypeVar("T")

# The parent kills the child this long after the deadline, so that the child's own stop
# (onnxruntime's terminate flag, the checks between stages) can say where it was first.
GRACE = 0.25
# Room for what a process needs beyond the data it computes: each thread's stack (8 MiB by
# default, reserved writable: counted by RLIMIT_DATA) and its allocator arena.
STACK_ROOM = 16 << 20
BASE_ROOM = 64 << 20
# A long-lived worker retires (the next call forks a fresh one) once its data has grown this
# much past its size at the start: memory the allocator keeps is then given back.
RETIRE_GROWTH = 256 << 20
POLL = 1.0  # seconds between checks that the child still lives, while waiting on it


class CrashError(RunError):
    """The child scoring a model died: killed by a signal (a crash in onnxruntime) or exited."""


class MemoryLimitError(RunError):
    """The model needs more memory than the sandbox's limit (``--max-memory``) allows."""


@dataclass(frozen=True)
class Limits:
    """What a sandboxed computation may use.

    Attributes:
        memory: bytes of data the child may allocate beyond its size at the start (the
            imported libraries); None: no limit.
        timeout: seconds one score may run, counted from the call and again from each
            :func:`restart_clock`; None: no limit.
        threads: the threads onnxruntime will start (0: one per CPU), for the stacks' room.
    """

    memory: int | None = None
    timeout: float | None = None
    threads: int = 0

    @classmethod
    def of(cls, config: ScoreConfig) -> Limits:
        """The limits a :class:`~onnx_near.config.ScoreConfig` asks for: ``max_memory``,
        ``timeout`` and ``threads``."""
        return cls(config.max_memory, config.timeout, config.threads)


def headroom(threads: int) -> int:
    """Bytes the limit allows beyond ``memory``: the stacks of onnxruntime's (and BLAS's)
    threads and a fixed room for the allocator (64 MiB + 16 MiB a thread)."""
    n = threads or len(os.sched_getaffinity(0))
    return BASE_ROOM + STACK_ROOM * n


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
                code = _serve(child_end, self.limits, first, parent)
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
                raise RunError(f"scoring {label} took longer than the time limit (--timeout {timeout:g} s)")
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
    model: str | os.PathLike[str],
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
    label = repr(os.path.basename(os.fspath(model)))
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
        _, payload, _ = _reply(
            partial(score_in_process, path, data, config), repr(os.path.basename(path)), _limits or Limits()
        )
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


_channel: Connection | None = None  # in a worker: the pipe to the parent
_timed = False  # in a worker: whether the parent keeps a deadline
_limits: Limits | None = None  # in a worker: its limits


def restart_clock() -> None:
    """Tell the parent that a new score begins, so that its time limit counts from now.

    Called (through :func:`onnx_near.clock.restart`) by :func:`onnx_near.score.score` as it
    starts; does nothing outside a sandbox."""
    if _channel is not None and _timed:
        _channel.send(("tick",))


def _serve(conn: Connection, limits: Limits, first: tuple[Callable[[], Any], str], parent: int) -> int:
    """The worker: the limits, then each call's reply, until the pipe closes or it has grown."""
    global _channel, _timed, _limits
    _die_with_parent(parent)
    faulthandler.disable()  # a crash is the parent's one sentence, not a dump of Python's stack on fd 2
    start = _limit(limits)
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
        kind, payload, remote = _reply(fn, label, limits)
        retire = _vm_data() - start > min(RETIRE_GROWTH, (limits.memory or RETIRE_GROWTH) // 4)
        try:
            conn.send((kind, payload, remote, retire))
        except Exception as e:  # the result (or error) does not pickle
            conn.send(("raised", _portable(e), traceback.format_exc(), retire))
        if retire:
            return 0
        call = None


def _reply(fn: Callable[[], Any], label: str, limits: Limits) -> tuple[str, Any, str]:
    """``fn()`` as ("ok", result, "") or ("raised", exception, traceback)."""
    try:
        return "ok", fn(), ""
    except MemoryError as e:
        return "raised", _memory_error(label, limits, None), _traceback(e)
    except NearError as e:
        if limits.memory is not None and _ALLOCATION.search(str(e)):
            return "raised", _memory_error(label, limits, str(e)), _traceback(e)
        return "raised", _portable(e), _traceback(e)
    except BaseException as e:
        return "raised", _portable(e), _traceback(e)


# How onnxruntime and the C++ runtime say that an allocation failed.
_ALLOCATION = re.compile(r"Failed to allocate memory|bad_alloc|Cannot allocate memory|out of memory", re.IGNORECASE)


def _memory_error(label: str, limits: Limits, message: str | None) -> MemoryLimitError:
    """The sentence for an allocation the limit refused, naming the node and size when the
    message says them."""
    assert limits.memory is not None
    what = ""
    if message:
        node = re.search(r"running (\w+) node", message)
        size = re.search(r"buffer of size (\d+)", message)
        if size:
            what = f": onnxruntime could not allocate {gib(int(size.group(1)))}"
            what += f" for its {node.group(1)} node" if node else ""
    return MemoryLimitError(
        f"scoring {label} needs more memory than the limit of {gib(limits.memory)} (--max-memory) allows{what}"
    )


def _limit(limits: Limits) -> int:
    """Apply ``limits`` to this process; return its data size now (the base of the limit)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash writes no core file
    start = _vm_data()
    if limits.memory is not None:
        cap = start + limits.memory + headroom(limits.threads)
        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    return start


def _vm_data() -> int:
    """This process's data size (``VmData``: heap and private writable mappings), in bytes."""
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmData:"):
                return int(line.split()[1]) * 1024
    return 0


def _die_with_parent(parent: int) -> None:
    """Have the kernel kill this worker when its parent dies (no orphan keeps computing)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


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


class _RemoteTraceback(Exception):
    """The worker's traceback, attached as the cause of what it raised (``--debug`` shows it)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "\n\nin the sandboxed worker:\n" + self.text


def _traceback(e: BaseException) -> str:
    return "".join(traceback.format_exception(type(e), e, e.__traceback__))


def _portable(e: BaseException) -> BaseException:
    """``e`` if it survives pickling, else a RuntimeError that names it."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}")


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
