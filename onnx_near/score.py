"""The NEAR pipeline: load → rewrite → run → matrices → effective rank → report.

:func:`score` is the public entry point; :func:`describe` is its dry run, which lists
the taps without running the model.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import replace
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
from .inputs import DataArg, Source, check_data, elem_name, input_specs, read_data
from .load import load_model
from .matrices import Collector, Geometry, draw_blocks, geometry, window_samples
from .reinit import reinitialize
from .report import LayerScore, LayersReport, ScoreResult, Skipped, TapInfo
from .rewrite import analyse, prepare
from .run import Runner

log = logging.getLogger(__name__)

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


def make_config(config: ScoreConfig | None = None, **options: Any) -> ScoreConfig:
    """``config`` with ``options`` (field names of :class:`ScoreConfig`) applied on top."""
    base = config or ScoreConfig()
    return replace(base, **options) if options else base


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
    deadline = time.monotonic() + cfg.timeout if cfg.timeout is not None else None
    timings: dict[str, float] = {}
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
    timings["load_rewrite"] = perf_counter() - t0

    t0 = perf_counter()
    outputs = [t.tensor for t in plan.taps]
    label = repr(name)
    runner = Runner(prepared.model, base_dir, cfg.device, outputs, label, cfg.threads, deadline)
    timings["session"] = perf_counter() - t0

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
    taps = [t for t in plan.taps if t.tensor in geoms]
    per_sample = sum(probe[t].nbytes for t in geoms) / probe_batch
    batch = static or cfg.batch_size or int(max(1, min(4096, cfg.max_batch_bytes // max(per_sample, 1))))
    available = source.n_samples
    samples = window_samples(geoms, cfg.rows, available, cfg.samples)
    _check_rows(cfg, geoms, samples, available)
    budget.check_matrices(geoms, cfg.rows, samples, {t: probe[t].dtype.itemsize for t in geoms}, cfg.max_memory)
    batch = max(1, min(batch, budget.batch_limit(per_sample, cfg.max_memory))) if not static else batch
    timings["forward"] = perf_counter() - t0
    timings["erank"] = 0.0

    xp = _array_module(runner.provider)
    rng = np.random.default_rng(cfg.seed)
    eranks: dict[str, list[float]] = {t.tensor: [] for t in taps}
    shapes: dict[str, tuple[int, int]] = {}
    invalid: dict[str, str] = {}
    bounds_kept: dict[str, list[float]] = {}  # approximate taps: error bound per repetition
    saturation: dict[str, list[float]] = {}  # bounded activations: share of values at their bounds
    windows: list[int] = []  # first sample of each repetition's window, in the data
    row_starts: dict[str, list[int]] = {}  # first row of each tap's block, per repetition
    for _ in range(cfg.repetitions):
        if cfg.reinit is not None:  # fresh weights for every repetition, as the authors' code draws them
            t0 = perf_counter()
            model = reinitialize(prepared.model, cfg.reinit, rng)
            runner = Runner(model, base_dir, cfg.device, outputs, label, cfg.threads, deadline)
            timings["session"] += perf_counter() - t0
        t0 = perf_counter()
        slack = (available - samples) if available is not None and cfg.rows != "all" else 0
        start = int(rng.integers(0, slack + 1)) if slack > 0 else 0
        blocks = draw_blocks(geoms, cfg.rows, samples, rng)
        windows.append(start)
        for name, b in blocks.items():
            row_starts.setdefault(name, []).append(b.start)
        collector = Collector(geoms, blocks)
        need = collector.samples_needed
        window = source.window(start, need, rng)
        lo = 0
        while lo < need:
            hi = min(lo + batch, need)
            collector.add(lo, hi, runner.run(window.batch(lo, hi, pad_to=static)))
            lo = hi
        timings["forward"] += perf_counter() - t0
        t0 = perf_counter()
        if deadline is not None and time.monotonic() > deadline:
            raise RunError(f"scoring {label} took longer than the time limit (--timeout)")
        matrices = [collector.matrices[t.tensor] for t in taps]
        values = effective_ranks([m if not _approximated(cfg, m) else m[:0, :0] for m in matrices], xp)
        for k, m in enumerate(matrices):
            if _approximated(cfg, m):  # stochastic Lanczos quadrature, its error bound kept
                try:
                    estimate, stderr = approximate_effective_rank(m, rng)
                    values[k] = estimate
                    bounds_kept.setdefault(taps[k].tensor, []).append(4 * stderr)
                except NonFiniteMatrixError as err:
                    values[k] = err
        for t, m, value in zip(taps, matrices, values):
            shapes[t.tensor] = (int(m.shape[0]), int(m.shape[1]))
            bounds = SATURATING.get(t.op)
            if bounds is not None:
                saturation.setdefault(t.tensor, []).append(saturated_fraction(m, *bounds))
            if isinstance(value, NonFiniteMatrixError):
                invalid[t.tensor] = "its activations hold NaN or Inf, so it has no effective rank"
                eranks[t.tensor].append(math.nan)
            else:
                eranks[t.tensor].append(value)
        timings["erank"] += perf_counter() - t0

    warnings = _shape_warnings(cfg, taps, shapes, available)
    for w in warnings:
        log.warning(w)
    layers = tuple(
        LayerScore(
            index=k,
            name=t.name,
            op=t.op,
            role=t.role,
            tensor=t.tensor,
            shape=shapes[t.tensor],
            erank=_mean(eranks[t.tensor]),
            erank_std=_std(eranks[t.tensor]),
            axis=geoms[t.tensor].axis,
            status="invalid" if t.tensor in invalid else "ok",
            reason=invalid.get(t.tensor),
            row_starts=tuple(row_starts[t.tensor]),
            saturation=_mean(saturation[t.tensor]) if t.tensor in saturation else None,
            erank_error=_mean(bounds_kept[t.tensor]) if t.tensor in bounds_kept else None,
        )
        for k, t in enumerate(taps)
    )
    totals = [sum(eranks[t.tensor][r] for t in taps) for r in range(cfg.repetitions)]
    timings["total"] = sum(timings.values())
    return ScoreResult(
        model=str(model),
        score=_mean(totals),
        score_std=_std(totals),
        scores=tuple(totals),
        repetitions=cfg.repetitions,
        provider=runner.provider,
        seed=cfg.seed,
        rows=str(cfg.rows),
        taps=cfg.taps,
        params=parameter_count(index),
        macs=count_macs(index.model, {s.name: s.sample_shape for s in specs}),
        window_starts=tuple(windows),
        layers=layers,
        skipped=tuple(skipped),
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
