"""The NEAR pipeline: load → rewrite → run → matrices → effective rank → report.

:func:`score` is the public entry point; :func:`describe` is its dry run, which lists
the taps without running the model.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np
import onnx

from . import budget, clock
from .batchnorm import folded_batchnorm_hint, inference_batchnorms
from .collect import collect
from .config import ScoreConfig
from .cost import count_macs
from .errors import NonFiniteMatrixError, NoTapsError
from .graph import GraphIndex, parameter_count
from .inputs import DataArg, Source, batch_axes, check_data, elem_name, input_specs, optional_inputs, read_data
from .load import load_model
from .model_source import ModelSource, report_name
from .ops import BOUNDED
from .plan import Plan, make_plan
from .probe import probe_feeds, rows_not_per_sample, tap_outputs
from .progress import Progress
from .proxies import ProxyValues, mean_proxies, measure_proxies
from .reinit import reinitialize
from .report import LayerScore, LayersReport, ScoreResult, Skipped, TapInfo
from .rewrite import analyse, nothing_to_score, prepare, reanalyse
from .routes import erank_by_route
from .run import Runner

log = logging.getLogger(__name__)


def make_config(config: ScoreConfig | None = None, **options: Any) -> ScoreConfig:
    """``config`` with ``options`` (field names of :class:`ScoreConfig`) applied on top."""
    base = config or ScoreConfig()
    return replace(base, **options) if options else base


@dataclass
class ScoreRun:
    """What stays fixed across the repetitions of one score (what :func:`set_up` makes)."""

    cfg: ScoreConfig
    name: str
    base_dir: Path
    model: onnx.ModelProto | None  # the rewritten model: kept only to re-draw its weights
    params: int
    macs: int | None
    source: Source
    runner: Runner
    plan: Plan
    deadline: float | None
    feed_rng: np.random.Generator = field(default_factory=np.random.default_rng)  # draws for the feeds
    batchnorms: int = 0  # inference-form BatchNormalization nodes of the model
    notes: list[str] = field(default_factory=list)  # warnings for the report, found while setting up
    proxies: list[ProxyValues] = field(default_factory=list)  # per repetition (ScoreConfig.proxies)

    @property
    def label(self) -> str:
        return repr(self.name)

    def check_time(self) -> None:
        if clock.expired(self.deadline):
            raise clock.time_limit_error(self.label)


@dataclass
class _TapStats:
    """What one tap gathers over the repetitions."""

    eranks: list[float] = field(default_factory=list)
    rms: list[float] = field(default_factory=list)  # root mean square of its values (measured for vet)
    row_starts: list[int] = field(default_factory=list)
    saturation: list[float] = field(default_factory=list)
    bounds: list[float] = field(default_factory=list)  # approximate route: error bound per repetition
    shape: tuple[int, int] = (0, 0)
    invalid: str | None = None


def score(
    model: ModelSource,
    data: DataArg = None,
    config: ScoreConfig | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> ScoreResult:
    """NEAR score of the ONNX model ``model``: a file, or a model held in memory.

    The stages, in order: load and rewrite (taps exposed, their rows cut inside the graph),
    the session and its probe pass, the frozen :class:`~onnx_near.plan.Plan`, then per
    repetition: draw the rows, :func:`~onnx_near.collect.collect` them (one forward pass per
    batch), :func:`~onnx_near.routes.erank_by_route`; finally the report.

    Args:
        model: path of an ``.onnx`` file (external data is read from its folder), an
            :class:`onnx.ModelProto` or its serialised bytes, or either of these as an
            :class:`~onnx_near.load.InMemoryModel` with the folder its external data lies in
            (and a name for the report; a bare one is called ``<in-memory model>``).
        data: ``.npy``/``.npz`` path, an array, or a dict of arrays keyed by input name;
            None synthesises inputs (standard normal floats, token ids within the vocabulary).
        config: a :class:`ScoreConfig`; keyword ``options`` override its fields,
            e.g. ``score("m.onnx", repetitions=8, seed=0, rows="all")``.
        progress: where to show progress (see :class:`onnx_near.progress.Progress`); None: nowhere.

    Returns:
        A :class:`ScoreResult`: total (mean over repetitions) with its standard deviation,
        one :class:`LayerScore` per tap, and what could not be scored.  Higher is better.
    """
    cfg = make_config(config, **options)
    timings = {"load_rewrite": 0.0, "session": 0.0, "forward": 0.0, "erank": 0.0}
    clock.restart()  # in a sandbox, the parent's --timeout clock counts from here
    run = set_up(model, data, cfg, timings)
    xp = _array_module(run.runner.provider)
    rng = np.random.default_rng(cfg.seed)
    run.feed_rng = np.random.default_rng([cfg.seed, 1])  # apart from rng: feeds leave the score as it is
    stats = {t.tensor: _TapStats() for t in run.plan.taps}
    bar = progress or Progress.silent()
    bar.start(run.name, cfg.repetitions, run.plan.samples, len(run.plan.taps))
    try:
        windows = [_repetition(run, rng, xp, stats, timings, bar, r) for r in range(cfg.repetitions)]
    finally:
        bar.finish()
    return _result(report_name(model), run, stats, windows, timings)


def set_up(model: ModelSource, data: DataArg, cfg: ScoreConfig, timings: dict[str, float]) -> ScoreRun:
    """Load, check and rewrite the model, read the data, create the session, and make the
    plan from a probe pass of one batch (every window empty: only the taps' shapes come back).

    What :func:`score` runs before its repetitions, public for the commands that run a model
    their own way; ``timings`` (keys ``load_rewrite``, ``session``, ``forward``) is added to."""
    deadline = clock.deadline(cfg.timeout)
    t0 = perf_counter()
    loaded = load_model(model)
    budget.check_weights(loaded.proto, loaded.name, cfg.max_memory)
    # For the inputs: nothing raised yet.
    analysed = analyse(loaded, cfg.taps, cfg.axes, cfg.feeds, batchnorm=cfg.batchnorm)
    index = analysed[1]
    # An in-memory model given without a base folder keeps every weight inline (load checked).
    base_dir, name = loaded.base_dir or Path.cwd(), loaded.name
    optional = optional_inputs(index, cfg.batch_axes, cfg.shapes, cfg.input_values)
    arrays = read_data(data, index.graph_inputs, optional, cfg.max_memory)
    specs = input_specs(index, cfg.shapes, arrays, cfg.batch_axes, cfg.input_values)
    budget.check_inputs(specs, cfg.max_memory)
    source = Source(specs, check_data(arrays, specs) if arrays is not None else None, cfg.synthetic or "normal")
    # The inputs fed unchanged with every batch (a sample rate) decide the Ifs that read them.
    prepared = prepare(loaded, cfg.taps, cfg.axes, cfg.feeds, source.fixed, analysed, cfg.batchnorm)
    index, taps = prepared.index, prepared.plan
    del loaded, analysed  # the rewritten model is an independent copy: let the original's weights go
    params = parameter_count(index)
    macs = count_macs(index.model, {s.name: s.sample_shape for s in specs if s.batch_axis == 0})
    batchnorms = len(inference_batchnorms(index))
    hint = folded_batchnorm_hint(index) if cfg.batchnorm == "batch" else None
    notes = [hint] if hint else []
    timings["load_rewrite"] += perf_counter() - t0

    t0 = perf_counter()
    cuts = prepared.cuts
    runner = Runner(prepared.model, base_dir, cfg.device, tap_outputs(cuts), repr(name), cfg.threads, deadline)
    kept = prepared.model if cfg.reinit is not None else None
    del prepared, index  # onnxruntime has its own copy of the weights: let ours go before the runs
    timings["session"] += perf_counter() - t0

    t0 = perf_counter()
    static = source.static_batch
    probe_batch = static or 1
    probe = runner.run(probe_feeds(source, cuts, probe_batch))
    unbatched = rows_not_per_sample(runner, source, cuts, probe) if not static else frozenset()
    skipped = [Skipped(u.where, u.op, u.reason) for u in taps.untappable]
    bn_batch = (static or cfg.bn_batch) if cfg.batchnorm == "batch" and batchnorms else None
    if bn_batch is not None and static and static != cfg.bn_batch:
        notes.append(
            f"the model's graph fixes its batch at {static} samples: its BatchNorms use the statistics of "
            f"{static} samples per forward pass, not --bn-batch {cfg.bn_batch}"
        )
    plan = make_plan(
        cfg,
        taps.taps,
        cuts,
        probe,
        probe_batch,
        skipped,
        source.n_samples,
        static,
        repr(name),
        bn_batch=bn_batch,
        unbatched=unbatched,
    )
    if plan.full_batches and plan.rows == "all" and plan.available and plan.samples < plan.available:
        notes.append(
            f"--rows all with --batchnorm batch: the last {plan.available - plan.samples} samples of the data do not "
            f"fill a forward pass of --bn-batch {plan.batch} and are left out"
        )
    del probe
    timings["forward"] += perf_counter() - t0
    run = ScoreRun(cfg, name, base_dir, kept, params, macs, source, runner, plan, deadline)
    run.batchnorms, run.notes = batchnorms, notes
    return run


def _repetition(
    run: ScoreRun,
    rng: np.random.Generator,
    xp: Any,
    stats: dict[str, _TapStats],
    timings: dict[str, float],
    bar: Progress,
    repetition: int,
) -> int:
    """One repetition: fresh weights (if asked), a window of samples, each tap's block of
    rows, and their effective ranks.  Returns the window's first sample in the data."""
    cfg, plan = run.cfg, run.plan
    if cfg.reinit is not None:  # fresh weights for every repetition, as the authors' code draws them
        t0 = perf_counter()
        assert run.model is not None  # kept when re-initialising
        weights = reinitialize(run.model, cfg.reinit, rng)
        run.runner = Runner(
            weights, run.base_dir, cfg.device, tap_outputs(plan.cuts), run.label, cfg.threads, run.deadline
        )
        timings["session"] += perf_counter() - t0
    t0 = perf_counter()
    draw = plan.draw(rng, run.feed_rng)
    for tensor, b in draw.blocks.items():
        stats[tensor].row_starts.append(b.start)
    window_rng = copy.deepcopy(rng) if cfg.proxies else None  # the window's synthetic samples, again
    kept = collect(plan, run.runner, run.source, draw, rng, xp, lambda done, total: bar.samples(repetition, done))
    if window_rng is not None:  # MeCo, SWAP: the window's first batch once more, its taps as they need them
        run.proxies.append(
            measure_proxies(
                cfg.proxies, plan, run.runner, run.source, draw.start, window_rng, cfg.bn_batch, cfg.max_batch_bytes
            )
        )
    timings["forward"] += perf_counter() - t0

    t0 = perf_counter()
    run.check_time()
    taps = [t for t in plan.taps if t.tensor not in plan.feeds]
    feeds = [t for t in plan.taps if t.tensor in plan.feeds]
    ranked = []
    for group, generator, before in ((taps, rng, 0), (feeds, run.feed_rng, len(taps))):
        if group:

            def ranked_so_far(done: int, before: int = before) -> None:
                bar.ranked(repetition, before + done)

            ranked += erank_by_route(
                [kept[t.tensor] for t in group],
                [plan.routes[t.tensor] for t in group],
                generator,
                xp,
                cfg.threads,
                ranked_so_far,
            )
    matrices = [kept[t.tensor] for t in taps + feeds]
    for t, m, (value, bound) in zip(taps + feeds, matrices, ranked):
        st = stats[t.tensor]
        st.shape = (int(m.shape[0]), int(m.shape[1]))
        limits = BOUNDED.get(t.op)
        if limits is not None:
            st.saturation.append(saturated_fraction(m, *limits))
        if bound is not None:
            st.bounds.append(bound)
        if cfg.feeds:  # vet compares a tap's magnitude with its feed's: an exploding layer
            with np.errstate(all="ignore"):
                st.rms.append(float(xp.sqrt(xp.mean(xp.square(m.astype(xp.float64))))))
        if isinstance(value, NonFiniteMatrixError):
            st.invalid = "its activations hold NaN or Inf, so it has no effective rank"
            st.eranks.append(math.nan)
        else:
            st.eranks.append(value)
    timings["erank"] += perf_counter() - t0
    return draw.start


def _result(
    model: str, run: ScoreRun, stats: dict[str, _TapStats], windows: list[int], timings: dict[str, float]
) -> ScoreResult:
    """The report: per-tap means over the repetitions, and the totals."""
    cfg = run.cfg
    shapes = {t: st.shape for t, st in stats.items()}
    plan = run.plan
    counted = [t for t in plan.taps if t.tensor not in plan.feeds]
    warnings = _shape_warnings(cfg, counted, shapes, plan.available)
    for w in warnings:
        log.warning(w)
    for note in run.source.filled:  # said in the report, not a warning on stderr
        log.info(note)
    proxy_notes = list(dict.fromkeys(n for p in run.proxies for n in p.notes))
    for note in run.notes + proxy_notes:  # said once, in the report
        log.info(note)
    warnings = [*run.source.filled, *warnings, *run.notes, *proxy_notes]
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
            axis=plan.geoms[t.tensor].axis,
            status="invalid" if st.invalid else "ok",
            reason=st.invalid,
            row_starts=tuple(st.row_starts),
            saturation=_mean(st.saturation) if st.saturation else None,
            erank_error=_mean(st.bounds) if st.bounds else None,
            feed=t.feed if t.feed in stats else None,
            feed_erank=_mean(stats[t.feed].eranks) if t.feed in stats else None,
            rms=_mean(st.rms) if st.rms else None,
            feed_rms=_mean(stats[t.feed].rms) if t.feed in stats and stats[t.feed].rms else None,
            head=t.head,
        )
        for k, t in enumerate(counted)
        for st in [stats[t.tensor]]
    )
    totals = [sum(stats[t.tensor].eranks[r] for t in counted) for r in range(cfg.repetitions)]
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
        tap_mode=cfg.taps,
        params=run.params,
        macs=run.macs,
        window_starts=tuple(windows),
        layers=layers,
        skipped=plan.skipped,
        warnings=tuple(warnings),
        timings=timings,
        batchnorm=cfg.batchnorm,
        inputs=run.source.described,
        bn_batch=plan.batch if plan.full_batches else None,
        batchnorms=run.batchnorms,
        proxies=mean_proxies(run.proxies),
        proxy_batch=run.proxies[0].batch if run.proxies else None,
    )


def describe(model: ModelSource, config: ScoreConfig | None = None, **options: Any) -> LayersReport:
    """The taps that :func:`score` would use, found without running the model (``model``
    as for :func:`score`: a file or a model held in memory)."""
    cfg = make_config(config, **options)
    loaded = load_model(model)
    analysed = analyse(loaded, cfg.taps, cfg.axes)
    # The Ifs left in place that inputs given a value decide: the passes from decide_ifs on again.
    _, index, plan = reanalyse(analysed, _given_values(analysed[1], cfg))
    if not plan.taps:
        raise NoTapsError(nothing_to_score(loaded.name, cfg.taps, plan.untappable))
    inputs = tuple(
        (n, elem_name(index.elem_type(n)), tuple(d) if (d := index.dims(n)) is not None else None)
        for n in index.graph_inputs
    )
    layers = tuple(
        TapInfo(k, t.name, t.op, t.role, t.tensor, t.declared_shape, t.axis, t.axis_reason)
        for k, t in enumerate(plan.taps)
    )
    skipped = tuple(Skipped(u.where, u.op, u.reason) for u in plan.untappable)
    return LayersReport(report_name(model), cfg.taps, parameter_count(index), inputs, layers, skipped)


def _given_values(index: GraphIndex, cfg: ScoreConfig) -> dict[str, np.ndarray]:
    """What the dry run knows of the inputs fed unchanged with every batch: the value each
    one that ``input_values`` names is given (``--input sr=16000``), where the graph fixes its
    shape.  Others, a state filled with zeros by the score, stay unknown here: the Ifs they
    decide are listed, with the input they wait for."""
    if not cfg.input_values:
        return {}
    axes = batch_axes(index, cfg.batch_axes, cfg.shapes)
    out: dict[str, np.ndarray] = {}
    for name, value in cfg.input_values.items():
        dims, elem = index.dims(name), index.elem_type(name)
        shape = [d for d in dims or () if isinstance(d, int)]
        if axes.get(name, 0) is None and elem and dims is not None and len(shape) == len(dims):
            out[name] = np.full(shape, value, dtype=onnx.helper.tensor_dtype_to_np_dtype(elem))
    return out


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


__all__ = ["ScoreRun", "describe", "make_config", "score", "set_up"]
