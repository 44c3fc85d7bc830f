"""The NEAR pipeline: load → rewrite → run → matrices → effective rank → report.

:func:`score` is the public entry point; :func:`describe` is its dry run, which lists
the taps without running the model.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np
import onnx

from . import budget
from .config import ScoreConfig
from .cost import count_macs
from .erank import approximate_effective_rank, effective_ranks
from .errors import InputDataError, NonFiniteMatrixError, NoTapsError, RunError
from .graph import parameter_count
from .inputs import DataArg, InputSpec, Source, check_data, elem_name, input_specs, read_data
from .load import load_model
from .matrices import Collector, Geometry, draw_blocks, geometry, window_samples
from .reinit import reinitialize
from .report import LayerScore, LayersReport, ScoreResult, Skipped, TapInfo
from .rewrite import analyse, prepare
from .run import Runner
from .taps import Tap

log = logging.getLogger(__name__)


def make_config(config: ScoreConfig | None = None, **options: Any) -> ScoreConfig:
    """``config`` with ``options`` (field names of :class:`ScoreConfig`) applied on top."""
    base = config or ScoreConfig()
    return replace(base, **options) if options else base


@dataclass
class _Run:
    """What stays fixed across the repetitions of one score."""

    cfg: ScoreConfig
    name: str
    base_dir: Path
    model: onnx.ModelProto | None  # the rewritten model, taps exposed: kept only to re-draw its weights
    params: int
    macs: int | None
    specs: list[InputSpec]
    source: Source
    runner: Runner
    outputs: list[str]
    taps: list[Tap]
    geoms: dict[str, Geometry]
    groups: list[list[str]]  # taps run together; more than one when a sample's outputs exceed the budget
    skipped: list[Skipped]
    batch: int
    static: int | None
    samples: int
    available: int | None
    deadline: float | None

    @property
    def label(self) -> str:
        return repr(self.name)

    def check_time(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise RunError(f"scoring {self.label} took longer than the time limit (--timeout)")


@dataclass
class _TapStats:
    """What one tap gathers over the repetitions."""

    eranks: list[float] = field(default_factory=list)
    row_starts: list[int] = field(default_factory=list)
    saturation: list[float] = field(default_factory=list)
    bounds: list[float] = field(default_factory=list)  # approximate route: error bound per repetition
    shape: tuple[int, int] = (0, 0)
    invalid: str | None = None


def score(
    model: str | os.PathLike[str], data: DataArg = None, config: ScoreConfig | None = None, **options: Any
) -> ScoreResult:
    """NEAR score of the ONNX model at ``model``.

    Args:
        model: path of an ``.onnx`` file (external data is read from its folder).
        data: ``.npy``/``.npz`` path, an array, or a dict of arrays keyed by input name;
            None synthesises inputs (standard normal floats, token ids within the vocabulary).
        config: a :class:`ScoreConfig`; keyword ``options`` override its fields,
            e.g. ``score("m.onnx", repetitions=8, seed=0, rows="all")``.

    Returns:
        A :class:`ScoreResult`: total (mean over repetitions) with its standard deviation,
        one :class:`LayerScore` per tap, and what could not be scored.  Higher is better.
    """
    cfg = make_config(config, **options)
    timings = {"load_rewrite": 0.0, "session": 0.0, "forward": 0.0, "erank": 0.0}
    run = _set_up(model, data, cfg, timings)
    xp = _array_module(run.runner.provider)
    rng = np.random.default_rng(cfg.seed)
    stats = {t.tensor: _TapStats() for t in run.taps}
    windows = [_repetition(run, rng, xp, stats, timings) for _ in range(cfg.repetitions)]
    return _result(str(model), run, stats, windows, timings)


def _set_up(model: str | os.PathLike[str], data: DataArg, cfg: ScoreConfig, timings: dict[str, float]) -> _Run:
    """Load, check and rewrite the model, read the data, create the session, and learn each
    tap's geometry from a probe pass of one sample; fix the window and the batch size."""
    deadline = time.monotonic() + cfg.timeout if cfg.timeout is not None else None
    t0 = perf_counter()
    loaded = load_model(model)
    budget.check_weights(loaded.proto, loaded.path.name, cfg.max_memory)
    prepared = prepare(loaded, cfg.taps, cfg.axes)
    index, plan = prepared.index, prepared.plan
    base_dir, name = loaded.base_dir, loaded.path.name
    del loaded  # the rewritten model is an independent copy: let the original's weights go
    arrays = read_data(data, index.graph_inputs)
    specs = input_specs(index, cfg.shapes, arrays)
    budget.check_inputs(specs, cfg.max_memory)
    source = Source(specs, check_data(arrays, specs) if arrays is not None else None)
    params = parameter_count(index)
    macs = count_macs(index.model, {s.name: s.sample_shape for s in specs})
    timings["load_rewrite"] += perf_counter() - t0

    t0 = perf_counter()
    outputs = [t.tensor for t in plan.taps]
    runner = Runner(prepared.model, base_dir, cfg.device, outputs, repr(name), cfg.threads, deadline)
    kept = prepared.model if cfg.reinit is not None else None
    del prepared, index  # onnxruntime has its own copy of the weights: let ours go before the runs
    timings["session"] += perf_counter() - t0

    t0 = perf_counter()
    static = source.static_batch
    probe_batch = static or 1
    probe = runner.run(source.probe(probe_batch))
    skipped = [Skipped(u.where, u.op, u.reason) for u in plan.untappable]
    geoms: dict[str, Geometry] = {}
    for tap in plan.taps:
        out = probe[tap.tensor]
        if out.dtype.kind != "f":
            skipped.append(Skipped(tap.name, tap.op, f"its output is {out.dtype}, not floating point", tap.tensor))
            continue
        try:
            geoms[tap.tensor] = geometry(out.shape, tap.axis, probe_batch)
        except ValueError as e:
            skipped.append(Skipped(tap.name, tap.op, f"it cannot be made into a matrix: {e}", tap.tensor))
    if not geoms:
        raise NoTapsError(
            f"none of the {len(plan.taps)} taps of {name!r} can be made into a matrix: {skipped[-1].reason}"
        )
    sizes = {t: probe[t].nbytes / probe_batch for t in geoms}  # bytes of one sample's output, per tap
    groups = budget.tap_groups(sizes, min(cfg.max_batch_bytes, cfg.max_memory // 4))
    if len(groups) > 1:
        log.info(
            "one sample's tap outputs exceed the batch budget: the model runs %d times, a group of taps each",
            len(groups),
        )
    per_sample = max(sum(sizes[t] for t in g) for g in groups)
    available = source.n_samples
    samples = window_samples(geoms, cfg.rows, available, cfg.samples)
    _check_rows(cfg, geoms, samples, available)
    budget.check_matrices(geoms, cfg.rows, samples, {t: probe[t].dtype.itemsize for t in geoms}, cfg.max_memory)
    batch = static or cfg.batch_size or int(max(1, min(4096, cfg.max_batch_bytes // max(per_sample, 1))))
    if not static:
        batch = max(1, min(batch, budget.batch_limit(per_sample, cfg.max_memory)))
    timings["forward"] += perf_counter() - t0
    taps = [t for t in plan.taps if t.tensor in geoms]
    return _Run(
        cfg,
        name,
        base_dir,
        kept,
        params,
        macs,
        specs,
        source,
        runner,
        outputs,
        taps,
        geoms,
        groups,
        skipped,
        batch,
        static,
        samples,
        available,
        deadline,
    )


def _repetition(
    run: _Run, rng: np.random.Generator, xp: Any, stats: dict[str, _TapStats], timings: dict[str, float]
) -> int:
    """One repetition: fresh weights (if asked), a window of samples, each tap's block of
    rows, and their effective ranks.  Returns the window's first sample in the data."""
    cfg = run.cfg
    if cfg.reinit is not None:  # fresh weights for every repetition, as the authors' code draws them
        t0 = perf_counter()
        assert run.model is not None  # kept when re-initialising
        weights = reinitialize(run.model, cfg.reinit, rng)
        run.runner = Runner(weights, run.base_dir, cfg.device, run.outputs, run.label, cfg.threads, run.deadline)
        timings["session"] += perf_counter() - t0
    t0 = perf_counter()
    slack = (run.available - run.samples) if run.available is not None and cfg.rows != "all" else 0
    start = int(rng.integers(0, slack + 1)) if slack > 0 else 0
    blocks = draw_blocks(run.geoms, cfg.rows, run.samples, rng)
    for tensor, b in blocks.items():
        stats[tensor].row_starts.append(b.start)
    kept: dict[str, np.ndarray] = {}
    need = Collector(run.geoms, blocks).samples_needed
    state = rng.bit_generator.state  # every group runs the same samples (the same synthetic draws)
    for group in run.groups:
        rng.bit_generator.state = state
        collector = Collector({t: run.geoms[t] for t in group}, {t: blocks[t] for t in group}, xp)
        window = run.source.window(start, need, rng)
        for lo in range(0, need, run.batch):
            hi = min(lo + run.batch, need)
            batch = window.batch(lo, hi, pad_to=run.static)  # drawn even when no tap needs it
            needed = collector.needed(lo, hi)
            if needed and _bind_outputs(xp):  # the tap tensors stay on the GPU
                collector.add(lo, hi, run.runner.run_bound(batch, needed, xp))
            elif needed:  # only the taps with rows in this batch are copied out of onnxruntime
                collector.add(lo, hi, run.runner.run(batch, needed))
        kept.update(collector.matrices)
    timings["forward"] += perf_counter() - t0

    t0 = perf_counter()
    run.check_time()
    matrices = [kept[t.tensor] for t in run.taps]
    for t, m, (value, bound) in zip(
        run.taps, matrices, _ranks(cfg, matrices, rng, xp, [t.rank_bound for t in run.taps])
    ):
        st = stats[t.tensor]
        st.shape = (int(m.shape[0]), int(m.shape[1]))
        limits = SATURATING.get(t.op)
        if limits is not None:
            st.saturation.append(saturated_fraction(m, *limits))
        if bound is not None:
            st.bounds.append(bound)
        if isinstance(value, NonFiniteMatrixError):
            st.invalid = "its activations hold NaN or Inf, so it has no effective rank"
            st.eranks.append(math.nan)
        else:
            st.eranks.append(value)
    timings["erank"] += perf_counter() - t0
    return start


def _ranks(
    cfg: ScoreConfig,
    matrices: list[np.ndarray],
    rng: np.random.Generator,
    xp: Any,
    bounds: list[int | None] | None = None,
) -> list[tuple[float | NonFiniteMatrixError, float | None]]:
    """Each matrix's effective rank (or its NaN/Inf error) and, when approximated, the bound.

    ``bounds``: each matrix's structural rank bound (from its tap), used to pick the route."""
    exact = effective_ranks(
        [m if not _approximated(cfg, m) else m[:0, :0] for m in matrices],
        xp,
        workers=cfg.threads or None,
        rank_bounds=bounds,
    )
    out: list[tuple[float | NonFiniteMatrixError, float | None]] = []
    for m, value in zip(matrices, exact):
        if not _approximated(cfg, m):
            out.append((value, None))
            continue
        try:  # stochastic Lanczos quadrature; the bound is four standard errors
            estimate, stderr = approximate_effective_rank(m, rng)
            out.append((estimate, 4 * stderr))
        except NonFiniteMatrixError as err:
            out.append((err, None))
    return out


def _result(
    model: str, run: _Run, stats: dict[str, _TapStats], windows: list[int], timings: dict[str, float]
) -> ScoreResult:
    """The report: per-tap means over the repetitions, and the totals."""
    cfg = run.cfg
    shapes = {t: st.shape for t, st in stats.items()}
    warnings = _shape_warnings(cfg, run.taps, shapes, run.available)
    for w in warnings:
        log.warning(w)
    layers = tuple(
        LayerScore(
            index=k,
            name=t.name,
            op=t.op,
            role=t.role,
            tensor=t.tensor,
            shape=st.shape,
            erank=_mean(st.eranks),
            erank_std=_std(st.eranks),
            axis=run.geoms[t.tensor].axis,
            status="invalid" if st.invalid else "ok",
            reason=st.invalid,
            row_starts=tuple(st.row_starts),
            saturation=_mean(st.saturation) if st.saturation else None,
            erank_error=_mean(st.bounds) if st.bounds else None,
        )
        for k, t in enumerate(run.taps)
        for st in [stats[t.tensor]]
    )
    totals = [sum(stats[t.tensor].eranks[r] for t in run.taps) for r in range(cfg.repetitions)]
    timings["total"] = sum(timings.values())
    return ScoreResult(
        model=model,
        score=_mean(totals),
        score_std=_std(totals),
        scores=tuple(totals),
        repetitions=cfg.repetitions,
        provider=run.runner.provider,
        seed=cfg.seed,
        rows=str(cfg.rows),
        taps=cfg.taps,
        params=run.params,
        macs=run.macs,
        window_starts=tuple(windows),
        layers=layers,
        skipped=tuple(run.skipped),
        warnings=tuple(warnings),
        timings=timings,
    )


def describe(model: str | os.PathLike[str], config: ScoreConfig | None = None, **options: Any) -> LayersReport:
    """The taps that :func:`score` would use, found without running the model."""
    cfg = make_config(config, **options)
    loaded = load_model(model)
    _, index, plan = analyse(loaded, cfg.taps, cfg.axes)
    if not plan.taps:
        prepare(loaded, cfg.taps, cfg.axes)  # raises NoTapsError with the standard message
    inputs = tuple(
        (n, elem_name(index.elem_type(n)), tuple(d) if (d := index.dims(n)) is not None else None)
        for n in index.graph_inputs
    )
    layers = tuple(
        TapInfo(k, t.name, t.op, t.role, t.tensor, t.declared_shape, t.axis, t.axis_reason)
        for k, t in enumerate(plan.taps)
    )
    skipped = tuple(Skipped(u.where, u.op, u.reason) for u in plan.untappable)
    return LayersReport(str(model), cfg.taps, parameter_count(index), inputs, layers, skipped)


# Bounded activations and their (low, high) bounds, for the saturation statistic.
SATURATING = {"Tanh": (-1.0, 1.0), "Softsign": (-1.0, 1.0), "Sigmoid": (0.0, 1.0), "HardSigmoid": (0.0, 1.0)}


def saturated_fraction(m: np.ndarray, low: float, high: float, margin: float = 0.01) -> float:
    """Share of the values within ``margin`` of the range's width from either bound."""
    width = (high - low) * margin
    with np.errstate(invalid="ignore"):
        return float(np.mean((m <= low + width) | (m >= high - width)))


def _bind_outputs(xp: Any) -> bool:
    """Whether tap outputs are taken through I/O binding: when the ranks run on the GPU, so
    the tensors never leave it (on the CPU a plain run measured as fast)."""
    return xp is not np


def _array_module(provider: str) -> Any:
    """cupy when the session runs on CUDA and cupy is installed (the ranks then run on the
    GPU), numpy otherwise."""
    if provider != "CUDAExecutionProvider":
        return np
    try:
        import cupy
    except ImportError:
        log.info("CUDA runs the model, but cupy is not installed: effective ranks on the CPU")
        return np
    return cupy


def _approximated(cfg: ScoreConfig, m: np.ndarray) -> bool:
    return cfg.approx_above is not None and min(m.shape) >= cfg.approx_above


def _check_rows(cfg: ScoreConfig, geoms: dict[str, Geometry], samples: int, available: int | None) -> None:
    """An explicit row count the data cannot supply is an error (the square default only warns)."""
    if not isinstance(cfg.rows, int) or available is None:
        return
    for name, g in geoms.items():
        have = samples * g.rows_per_sample
        if have < cfg.rows:
            raise InputDataError(
                f"--rows {cfg.rows} asks for {cfg.rows} rows per matrix, but the data's {available} samples give "
                f"tap {name!r} only {have}; give more samples or fewer rows"
            )


def _shape_warnings(
    cfg: ScoreConfig, taps: list[Any], shapes: dict[str, tuple[int, int]], available: int | None
) -> list[str]:
    if cfg.rows != "square":
        return []
    short = [t.tensor for t in taps if shapes[t.tensor][0] < shapes[t.tensor][1]]
    if not short:
        return []
    return [
        f"the data's {available} samples cannot fill a square matrix for {len(short)} tap(s) "
        f"(first: {short[0]!r}, {shapes[short[0]][0]}×{shapes[short[0]][1]}); their matrices have fewer rows than columns"
    ]


def _mean(xs: list[float]) -> float:
    return float(np.mean(xs)) if xs else math.nan


def _std(xs: list[float]) -> float:
    """Sample standard deviation (ddof=1); 0 for a single repetition."""
    return float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0


__all__ = ["describe", "make_config", "score"]
