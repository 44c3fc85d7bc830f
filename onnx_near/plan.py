"""The plan: everything a score decides before its first repetition runs (SPEC §3).

From the probe pass (one batch through the rewritten model, every window empty) the plan
learns each tap's shape and dtype and fixes, once: which taps become matrices and how they
fold into rows (:class:`~onnx_near.matrices.Geometry`), how each tap's rows leave the graph
(:class:`~onnx_near.rewrite.Cut`), the window of consecutive samples a repetition runs, the
batch size of a forward pass, and each matrix's route (exact or approximate, with its
structural rank bound).  A repetition then only draws its window's start and its blocks
(:meth:`Plan.draw`).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from . import budget
from .config import ScoreConfig
from .errors import ConfigError, InputDataError, NoTapsError
from .matrices import Geometry, RowBlock, block_rows, draw_blocks, geometry, window_samples
from .report import Skipped
from .rewrite import Cut
from .taps import Tap

# A forward pass holds, besides the outputs asked for, the activations still to be read: taken
# as this many of the largest tap tensors of one sample (a layer's input, its output and a
# residual branch).  Measured on ResNet-50 at 224²: onnxruntime's resident memory grew by
# 13 MiB a sample from a batch of 1 to 32; its four largest taps take 12.3 MiB a sample.
LIVE_TENSORS = 4


@dataclass(frozen=True)
class Route:
    """How one matrix's effective rank is computed."""

    approximate: bool  # stochastic Lanczos quadrature (``--approx-above``) instead of exact
    rank_bound: int | None  # structural rank bound from the graph (see taps.structural_rank)


@dataclass(frozen=True)
class Draw:
    """What one repetition draws: the window's first sample in the data and each tap's rows."""

    start: int
    blocks: Mapping[str, RowBlock]


@dataclass(frozen=True)
class Plan:
    """The frozen plan of one score."""

    taps: tuple[Tap, ...]  # the taps that become matrices, in graph order
    geoms: Mapping[str, Geometry]
    dtypes: Mapping[str, np.dtype]  # each tap's element type (of its matrix)
    cuts: Mapping[str, Cut]
    routes: Mapping[str, Route]
    skipped: tuple[Skipped, ...]
    rows: object  # ScoreConfig.rows
    samples: int  # consecutive samples one repetition runs
    available: int | None  # samples in the user's data (None: synthetic)
    batch: int  # samples per forward pass
    static: int | None  # the batch size the model fixes, if any
    feeds: frozenset[str] = frozenset()  # taps of role "feed": measured, not counted in the score
    full_batches: bool = False  # every forward pass holds exactly `batch` samples (BatchNorm on batch statistics)

    @property
    def cut_taps(self) -> dict[str, tuple[str, str, str, str]]:
        """Per cut tap, the names of its four bound inputs."""
        return {t: c.bounds for t, c in self.cuts.items() if c.bounds is not None}

    def output_of(self, tap: str) -> str:
        """The graph output that carries ``tap``'s rows (its cut-out, or the tap itself)."""
        return self.cuts[tap].output

    def draw(self, rng: np.random.Generator, feed_rng: np.random.Generator | None = None) -> Draw:
        """A repetition's window start (when the data holds more samples than it needs) and
        blocks.  The feeds' blocks come from ``feed_rng``, so that measuring them leaves the
        score's own draws (and so the score) as they are without them."""
        slack = (self.available - self.samples) if self.available is not None and self.rows != "all" else 0
        start = int(rng.integers(0, slack + 1)) if slack > 0 else 0
        counted = {t: g for t, g in self.geoms.items() if t not in self.feeds}
        blocks = draw_blocks(counted, self.rows, self.samples, rng)  # type: ignore[arg-type]
        if self.feeds:
            feeds = {t: g for t, g in self.geoms.items() if t in self.feeds}
            blocks.update(draw_blocks(feeds, self.rows, self.samples, feed_rng or rng))  # type: ignore[arg-type]
        return Draw(start, blocks)


def make_plan(
    cfg: ScoreConfig,
    taps: tuple[Tap, ...],
    cuts: Mapping[str, Cut],
    probe: Mapping[str, np.ndarray],
    probe_batch: int,
    skipped: list[Skipped],
    available: int | None,
    static: int | None,
    label: str,
    bn_batch: int | None = None,
    unbatched: frozenset[str] = frozenset(),
) -> Plan:
    """The plan from the probe pass's outputs (each tap's shape output and its empty or whole rows).

    ``bn_batch``: the model's BatchNorms normalise with the statistics of the batch being fed
    (``--batchnorm batch``), over batches of this many samples.  The batch is then part of
    what is measured, so every forward pass holds exactly ``bn_batch`` samples
    (:func:`bn_window`): the window is a whole number of batches, and the last one is never
    partial (nor padded, which would change its statistics)."""
    geoms: dict[str, Geometry] = {}
    itemsize: dict[str, int] = {}
    dtypes: dict[str, np.dtype] = {}
    skipped = list(skipped)
    for tap in taps:
        c = cuts[tap.tensor]
        out = probe[c.output]
        if out.dtype.kind != "f":
            skipped.append(Skipped(tap.name, tap.op, f"its output is {out.dtype}, not floating point", tap.tensor))
            continue
        shape = tuple(int(d) for d in probe[c.shape]) if c.shape is not None else tuple(out.shape)
        try:
            geoms[tap.tensor] = geometry(shape, tap.axis, probe_batch)
            if tap.tensor in unbatched:  # its first axis does not grow with the batch (a state)
                geoms[tap.tensor] = replace(geoms[tap.tensor], batch_major=False)
        except ValueError as e:
            skipped.append(Skipped(tap.name, tap.op, f"it cannot be made into a matrix: {e}", tap.tensor))
            continue
        itemsize[tap.tensor] = out.dtype.itemsize
        dtypes[tap.tensor] = out.dtype
    feeds = frozenset(t.tensor for t in taps if t.role == "feed" and t.tensor in geoms)
    counted = {t: g for t, g in geoms.items() if t not in feeds}
    if not counted:
        scored = [t for t in taps if t.role != "feed"]
        raise NoTapsError(
            f"none of the {len(scored)} taps of {label} can be made into a matrix: "
            f"{next(s.reason for s in reversed(skipped) if s.tensor in {t.tensor for t in scored})}"
        )
    samples = window_samples(counted, cfg.rows, available, cfg.samples)  # the feeds follow the taps
    if bn_batch is not None:
        samples = bn_window(samples, bn_batch, cfg.rows, available)
    _check_rows(cfg, counted, samples, available)
    budget.check_matrices(geoms, cfg.rows, samples, itemsize, cfg.max_memory)
    per_sample = _forward_bytes(geoms, itemsize, cuts)
    batch = static or cfg.batch_size or int(max(1, min(4096, cfg.max_batch_bytes // max(per_sample, 1))))
    if bn_batch is not None:
        batch = _bn_forward(cfg, bn_batch, per_sample, geoms, static)
    elif not static:
        batch = max(1, min(batch, budget.batch_limit(per_sample, cfg.max_memory), samples))
        if any(not g.batch_major for g in geoms.values()):
            # A tensor whose first axis is not the samples' (sequence-first attention: (T, N, D),
            # or (T·N, D) after a Reshape) interleaves the samples of a batch: only one sample
            # at a time gives its rows in sample order, as every other tap's — and a score that
            # does not depend on the batch size.  (ViT-B/16's attention taps were 14 % off.)
            batch = 1
    kept = tuple(t for t in taps if t.tensor in geoms)
    routes = {t.tensor: _route(cfg, geoms[t.tensor], samples, t.rank_bound) for t in kept}
    skipped = [s for s in skipped if s.tensor is None or s.tensor not in {t.tensor for t in taps if t.role == "feed"}]
    return Plan(
        kept,
        geoms,
        dtypes,
        dict(cuts),
        routes,
        tuple(skipped),
        cfg.rows,
        samples,
        available,
        batch,
        static,
        feeds,
        full_batches=bn_batch is not None,
    )


def bn_window(samples: int, bn_batch: int, rows: object, available: int | None) -> int:
    """The window of a score whose BatchNorms use batch statistics: ``samples`` (what the
    matrices need) rounded up to a whole number of ``bn_batch``-sample forward passes, within
    the data.  Rounding up, not padding the last batch: a padded batch's statistics would be
    those of the padding too, and a short last batch's those of fewer samples — either would
    change the rows it gives.  The window's samples are the data's own (the rows are drawn
    among all of them); where the data cannot hold the rounded window, it is the whole batches
    the data holds (``rows="all"``: every whole batch, the rest of the data left out), and the
    matrices that then lack rows are rectangular, with the usual warning."""
    if available is not None and available < bn_batch:
        raise InputDataError(
            f"the data's {available} samples cannot fill one forward pass of --bn-batch {bn_batch}: with "
            "--batchnorm batch (the default but for vet) every forward pass holds that many samples, whose "
            f"statistics the BatchNorms use; give at least {bn_batch} samples, a smaller --bn-batch (e.g. "
            f"--bn-batch {available}), or --batchnorm running"
        )
    whole = math.ceil(samples / bn_batch) * bn_batch
    if available is None:
        return whole
    fits = available // bn_batch * bn_batch
    return fits if rows == "all" else min(whole, fits)


def _bn_forward(
    cfg: ScoreConfig, bn_batch: int, per_sample: float, geoms: Mapping[str, Geometry], static: int | None
) -> int:
    """The forward batch with BatchNorm on batch statistics: exactly ``bn_batch`` samples
    (the model's own batch when its graph fixes one), or a one-sentence refusal."""
    if static:
        return static
    if cfg.batch_size is not None and cfg.batch_size != bn_batch:
        raise ConfigError(
            f"--batch-size {cfg.batch_size} and --bn-batch {bn_batch} differ: with --batchnorm batch every forward "
            "pass holds exactly --bn-batch samples (the batch whose statistics each BatchNorm uses); drop --batch-size"
        )
    if bn_batch > 1 and any(not g.batch_major for g in geoms.values()):
        raise ConfigError(
            "a tap of this model interleaves the samples of a batch (its first axis is not the samples'), so it can only "
            f"run one sample per forward pass, not --bn-batch {bn_batch}; use --batchnorm running or --bn-batch 1"
        )
    limit = budget.batch_limit(per_sample, cfg.max_memory)  # refuses when not even one sample fits
    if bn_batch > limit:
        raise ConfigError(
            f"a forward pass of --bn-batch {bn_batch} samples would hold {budget.gib(bn_batch * per_sample)} of "
            f"activations, more than a quarter of the memory limit of {budget.gib(cfg.max_memory)} (--max-memory); "
            f"give --bn-batch {limit} or less, or a larger --max-memory"
        )
    return bn_batch


def _forward_bytes(geoms: Mapping[str, Geometry], itemsize: Mapping[str, int], cuts: Mapping[str, Cut]) -> float:
    """Bytes one sample costs a forward pass: the live activations (``LIVE_TENSORS`` of the
    largest taps) and every tap onnxruntime returns whole; cut taps return matrix rows only,
    which the matrices' own budget already counts."""
    size = {t: g.rows_per_sample * g.cols * itemsize[t] for t, g in geoms.items()}
    live = sum(heapq.nlargest(LIVE_TENSORS, size.values()))
    whole = sum(v for t, v in size.items() if not cuts[t].cut)
    return float(live + whole)


def _route(cfg: ScoreConfig, g: Geometry, samples: int, bound: int | None) -> Route:
    rows = block_rows(g, cfg.rows, samples)
    approximate = cfg.approx_above is not None and min(rows, g.cols) >= cfg.approx_above
    return Route(approximate, bound)


def _check_rows(cfg: ScoreConfig, geoms: Mapping[str, Geometry], samples: int, available: int | None) -> None:
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


__all__ = ["LIVE_TENSORS", "Draw", "Plan", "Route", "bn_window", "make_plan"]
