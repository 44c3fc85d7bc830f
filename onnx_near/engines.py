"""Where many models are scored: this process, a local process pool, or a Ray cluster.

An engine takes the models to score (:class:`Job`) and yields one
:class:`~onnx_near.results.ResultRow` per model as each finishes, in completion order.
Every model is scored by :func:`score_job`, which never raises: a model that fails, with a
:class:`~onnx_near.errors.NearError` or with any other exception, gives a row whose
``error`` says why.  A worker that dies (a crash inside onnxruntime) costs the models it
held a second try each, alone; only a model that kills its worker alone gets an error row.
Both engines keep a bounded number of models in flight, so memory does not grow with the
number of models.

* :class:`LocalEngine` (``--engine local``, the default): ``jobs`` spawned processes, one
  model per task, each onnxruntime session on one thread (``jobs=1``: in this process).
* :class:`RayEngine` (``--engine ray``): one Ray task per chunk of models, each task
  reserving ``cpus_per_model`` CPUs and ``gpus_per_model`` GPUs (fractions allowed), results
  gathered with ``ray.wait`` as they complete.  Ray is optional: ``pip install 'onnx-near[ray]'``.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from typing import Any, Protocol

from .config import ScoreConfig
from .errors import ConfigError, NearError, RunError
from .inputs.data import DataArg
from .model_source import ModelSource
from .report import ScoreResult
from .results import INTERNAL_ERROR, ResultRow
from .version import __version__

log = logging.getLogger(__name__)

# Called as scorer(model, data=..., config=...), like onnx_near.score: model is a path, or an
# in-memory model as an InMemoryModel holding bytes.
Scorer = Callable[..., ScoreResult]

# Ray: the work one task should hold once the per-model time is known (the first tasks hold
# one model each).  Measured on 2 local CPUs, a Ray task costs about 1–2 ms on top of its
# work: half a second of models per task keeps that under 1 %, and a killed run loses at most
# half a second of work per worker.
TASK_SECONDS = 0.5
MAX_CHUNK = 256


@dataclass(frozen=True)
class Job:
    """One model to score: as named, its absolute path, and its file's SHA-256.

    An in-memory model's job has its name as both ``model`` and ``path``, the SHA-256 of its
    bytes, and the model itself as ``source`` (an InMemoryModel holding bytes: they pickle
    as they are, to a worker process or a Ray task); the scorer is given ``source`` when
    there is one, ``path`` otherwise."""

    model: str
    path: str
    sha256: str | None
    source: ModelSource | None = None

    @property
    def scored(self) -> ModelSource:
        """What the scorer is given."""
        return self.source if self.source is not None else self.path


def score_job(
    job: Job, data: DataArg, config: ScoreConfig, options: Mapping[str, Any], scorer: Scorer | None = None
) -> ResultRow:
    """Score one model into its row; never raises for a model that fails.

    A :class:`NearError` gives its one sentence as ``error``; any other exception (a bug)
    ``"internal error: <ExceptionName>: <message>"``."""
    fn = scorer if scorer is not None else _default_scorer()
    t0 = time.perf_counter()
    try:
        r = fn(job.scored, data=data, config=config)
        score, std = _finite(r.score), _finite(r.score_std)
        row = ResultRow(
            job.model, job.path, job.sha256, options, __version__, score, std, r.params, r.macs, None, _since(t0)
        )
        proxies = {k: _finite(v) for k, v in getattr(r, "proxies", {}).items()}  # MeCo, SWAP
        return replace(row, proxies=proxies) if proxies else row
    except NearError as e:
        return error_row(job, options, str(e), _since(t0))
    except Exception as e:
        return error_row(job, options, internal_error(e), _since(t0))


def error_row(job: Job, options: Mapping[str, Any], error: str, seconds: float = 0.0) -> ResultRow:
    """The row of a model that could not be scored."""
    return ResultRow(job.model, job.path, job.sha256, options, __version__, None, None, None, None, error, seconds)


def internal_error(e: BaseException) -> str:
    """``internal error: <ExceptionName>: <message>`` on one line (at most 300 characters of message)."""
    msg = " ".join(str(e).split())[:300]
    return f"{INTERNAL_ERROR}{type(e).__name__}: {msg}" if msg else f"{INTERNAL_ERROR}{type(e).__name__}"


def _default_scorer() -> Scorer:
    from .score import score

    return score


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _since(t0: float) -> float:
    return time.perf_counter() - t0


def _score_chunk(
    jobs: list[Job], data: DataArg, config: ScoreConfig, options: Mapping[str, Any], scorer: Scorer | None
) -> list[ResultRow]:
    """The body of one Ray task: its models, one after the other."""
    return [score_job(j, data, config, options, scorer) for j in jobs]


class Engine(Protocol):
    """Scores jobs and yields their rows as they finish."""

    def run(
        self,
        jobs: Iterable[Job],
        data: DataArg,
        config: ScoreConfig,
        options: Mapping[str, Any],
        scorer: Scorer | None = None,
        expected: int | None = None,
    ) -> Iterator[ResultRow]: ...


@dataclass(frozen=True)
class LocalEngine:
    """``jobs`` spawned processes on this machine (``jobs=1``: in this process)."""

    jobs: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.jobs, int) or self.jobs < 1:
            raise ConfigError(f"--jobs must be a positive integer, not {self.jobs}")

    def run(
        self,
        jobs: Iterable[Job],
        data: DataArg,
        config: ScoreConfig,
        options: Mapping[str, Any],
        scorer: Scorer | None = None,
        expected: int | None = None,
    ) -> Iterator[ResultRow]:
        """The rows of ``jobs``, in the order they finish."""
        if self.jobs == 1:
            for job in jobs:
                yield score_job(job, data, config, options, scorer)
            return
        cfg = replace(config, threads=config.threads or 1)
        yield from _pool_rows(iter(jobs), self.jobs, data, cfg, options, scorer)


def _pool_rows(
    queue: Iterator[Job],
    workers: int,
    data: DataArg,
    config: ScoreConfig,
    options: Mapping[str, Any],
    scorer: Scorer | None,
) -> Iterator[ResultRow]:
    """A process pool with 2·workers models in flight.  When a worker dies, the pool is
    replaced and the models it held are tried again one at a time (nothing else in flight),
    so that only the model that kills a worker on its own gets an error row."""
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    pending: dict[Future[ResultRow], tuple[Job, bool]] = {}  # future → (job, ran alone)
    suspects: deque[Job] = deque()
    exhausted, scored, deaths = False, 0, 0
    try:
        while True:
            if suspects:
                if not pending:
                    job = suspects.popleft()
                    pending[pool.submit(score_job, job, data, config, options, scorer)] = (job, True)
            else:
                while not exhausted and len(pending) < 2 * workers:
                    nxt = next(queue, None)
                    if nxt is None:
                        exhausted = True
                        break
                    pending[pool.submit(score_job, nxt, data, config, options, scorer)] = (nxt, False)
            if not pending:
                return
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            broken = False
            for f in done:
                job, alone = pending.pop(f)
                try:
                    row = f.result()
                except BrokenProcessPool as e:
                    broken = True
                    if not alone:
                        suspects.append(job)
                        continue
                    deaths += 1
                    if not scored and deaths >= 3:  # no process ever scored a model: not the models' fault
                        raise RunError(f"the worker processes of the pool die before scoring any model ({e})") from e
                    yield error_row(job, options, f"{INTERNAL_ERROR}the worker process died scoring it ({e})")
                    continue
                except Exception as e:  # the job could not be sent (a scorer that does not pickle)
                    yield error_row(job, options, internal_error(e))
                    continue
                scored += 1
                yield row
            if broken:
                for f in wait(pending).done:  # the other models in flight: done just before, or lost with the pool
                    job, _ = pending.pop(f)
                    if f.exception() is None:
                        scored += 1
                        yield f.result()
                    else:
                        suspects.append(job)
                pool.shutdown(wait=True)
                if suspects:
                    log.warning("a worker process died; trying the %d models it held one at a time", len(suspects))
                pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class RayEngine:
    """Ray tasks on a cluster (or on a local Ray started for the run and stopped after it).

    Attributes:
        address: Ray's address: ``auto`` (a cluster started with ``ray start`` on this
            machine), ``HOST:PORT`` (its GCS) or ``ray://HOST:PORT`` (Ray Client).  None:
            ``RAY_ADDRESS`` when set, else the latest local cluster, else a new local Ray
            (Ray's own order, :func:`ray.init`).  A Ray already initialised in this process
            is used as it is and left running.
        cpus_per_model, gpus_per_model: what each task reserves (fractions allowed: 0.25 GPU
            lets four models share one); each onnxruntime session gets that many threads
            (at least 1) unless ``config.threads`` is set.
        chunk: models per task; None picks it from the measured time per model (tasks of
            about :data:`TASK_SECONDS`), starting with one model per task.
        num_cpus: the CPUs of a local Ray started here (None: all of them).
    """

    address: str | None = None
    cpus_per_model: float = 1.0
    gpus_per_model: float = 0.0
    chunk: int | None = None
    num_cpus: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.cpus_per_model, (int, float)) and self.cpus_per_model > 0):
            raise ConfigError(f"--cpus-per-model must be a positive number, not {self.cpus_per_model}")
        if not (isinstance(self.gpus_per_model, (int, float)) and self.gpus_per_model >= 0):
            raise ConfigError(f"--gpus-per-model must be zero or a positive number, not {self.gpus_per_model}")
        if self.chunk is not None and (not isinstance(self.chunk, int) or self.chunk < 1):
            raise ConfigError(f"--chunk must be a positive integer, not {self.chunk}")

    def run(
        self,
        jobs: Iterable[Job],
        data: DataArg,
        config: ScoreConfig,
        options: Mapping[str, Any],
        scorer: Scorer | None = None,
        expected: int | None = None,
    ) -> Iterator[ResultRow]:
        """The rows of ``jobs``, in the order their tasks finish (``expected``: about how many
        jobs there are, which keeps the automatic chunks small enough to balance the end)."""
        ray = import_ray()
        started = not ray.is_initialized()
        if started:
            kwargs: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "logging_level": logging.WARNING,
            }
            if self.num_cpus is not None:
                kwargs["num_cpus"] = self.num_cpus
            check_reachable(self.address or os.environ.get("RAY_ADDRESS"))
            try:
                ray.init(address=self.address, **kwargs)
            except (ConnectionError, ValueError, RuntimeError) as e:
                where = self.address or "RAY_ADDRESS or a new local Ray"
                raise ConfigError(f"cannot connect to Ray at {where}: {' '.join(str(e).split())[:200]}") from e
        try:
            cfg = replace(config, threads=config.threads or max(1, math.floor(self.cpus_per_model)))
            yield from self._rows(ray, iter(jobs), data, cfg, options, scorer, expected)
        finally:
            if started:
                ray.shutdown()

    def _slots(self, ray: Any) -> int:
        """Tasks the cluster can run at once with these reservations."""
        res = ray.cluster_resources()
        slots = res.get("CPU", 1.0) / self.cpus_per_model
        if self.gpus_per_model > 0:
            slots = min(slots, res.get("GPU", 0.0) / self.gpus_per_model)
            if slots < 1:
                raise ConfigError(
                    f"--gpus-per-model {self.gpus_per_model:g}: the Ray cluster has {res.get('GPU', 0):g} GPUs"
                )
        return max(1, int(slots))

    def _rows(
        self,
        ray: Any,
        queue: Iterator[Job],
        data: DataArg,
        config: ScoreConfig,
        options: Mapping[str, Any],
        scorer: Scorer | None,
        expected: int | None,
    ) -> Iterator[ResultRow]:
        task = ray.remote(_score_chunk).options(
            num_cpus=self.cpus_per_model, num_gpus=self.gpus_per_model, max_retries=0
        )
        shared = [ray.put(data), ray.put(config), ray.put(dict(options)), ray.put(scorer)]
        slots = self._slots(ray)
        pending: dict[Any, list[Job]] = {}
        suspects: deque[Job] = deque()
        exhausted, finished, seconds, refreshed, sent = False, 0, 0.0, 0, 0
        while True:
            chunk = self.chunk or _auto_chunk(finished, seconds, slots, None if expected is None else expected - sent)
            while len(pending) < 2 * slots:
                if suspects:
                    batch = [suspects.popleft()]
                else:
                    batch = [] if exhausted else [j for _, j in zip(range(chunk), queue)]
                    exhausted = exhausted or len(batch) < chunk
                    if not batch:
                        break
                pending[task.remote(batch, *shared)] = batch
                sent += len(batch)
            if not pending:
                return
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                batch = pending.pop(ref)
                try:
                    rows: list[ResultRow] = ray.get(ref)
                except Exception as e:  # the task failed: its worker died, its node was lost
                    if len(batch) == 1:
                        yield error_row(batch[0], options, internal_error(e))
                    else:
                        log.warning(
                            "a Ray task failed (%s); trying its %d models one per task", type(e).__name__, len(batch)
                        )
                        suspects.extend(batch)
                    continue
                for row in rows:
                    finished += 1
                    seconds += row.seconds
                    yield row
            if finished // 64 > refreshed:  # a cluster that grows gets more in flight
                refreshed, slots = finished // 64, self._slots(ray)


def _auto_chunk(finished: int, seconds: float, slots: int, remaining: int | None) -> int:
    """Models per task: one until some have finished, then about TASK_SECONDS of them, but
    never so many that fewer than four tasks per slot are left to share out at the end."""
    if finished < 4:
        return 1
    chunk = max(1, min(MAX_CHUNK, int(TASK_SECONDS / max(seconds / finished, 1e-6))))
    if remaining is not None:
        chunk = min(chunk, max(1, remaining // (4 * slots)))
    return chunk


def check_reachable(address: str | None, timeout: float = 10.0) -> None:
    """A ``HOST:PORT`` or ``ray://HOST:PORT`` address must accept a connection: Ray itself
    retries an unreachable cluster for ever, deaf to SIGTERM.  ``auto``, ``local`` and None
    are left to Ray."""
    if not address or address in ("auto", "local"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--address expects auto, HOST:PORT or ray://HOST:PORT, not {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {e.strerror or e}") from e


def import_ray() -> Any:
    """The ``ray`` module, or a :class:`ConfigError` saying how to install it."""
    try:
        import ray
    except ImportError as e:
        raise ConfigError("--engine ray needs Ray, which is not installed: pip install 'onnx-near[ray]'") from e
    return ray
