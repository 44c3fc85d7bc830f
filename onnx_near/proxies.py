"""Stage 3b, proxies: MeCo and SWAP from the taps of one forward pass (``ScoreConfig.proxies``).

Beside NEAR, a score can measure two other forward-only proxies from the same taps
(:mod:`onnx_near.meco`, :mod:`onnx_near.swap`).  Both are functions of one batch, so each
repetition runs its window's first batch once more — the same samples, the same batch (with
``--batchnorm batch``: the same statistics), so the same tap values as the NEAR pass that
just ran — this time with the tap outputs the proxies read:

* MeCo: each tap in convolution layout (channels on axis 1, more than one position per
  sample), the feature map of the batch's first sample as a (positions × channels) matrix.
  The authors hook every ``nn.Module`` and read the first sample of its output; ONNX has no
  modules, so the layers are onnx-near's taps, each tensor once (a container module's output
  is the same tensor as its last layer's, which their hooks count twice; pooling outputs,
  which they count, are not taps).  Dense taps are left out: there the authors' code gives 0.
* SWAP: the outputs of the ``Relu`` taps, every unit of every sample of the batch.  The
  authors hook ``nn.ReLU`` modules whose input is 4-D (their search spaces have no other);
  ReLUs of dense layers count here too.  A model without a ReLU has no SWAP (NaN, and a note).

The batch holds ``--bn-batch`` samples (the model's own batch when its graph fixes one; at
most the samples of the data).  The tap outputs of that batch are fetched in groups of at
most ``max_batch_bytes`` (each group one more forward pass of the same batch), each reduced
as it arrives.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .inputs.source import Source
from .matrices import to_rows
from .meco import layer_meco
from .plan import Plan
from .run import Runner
from .swap import distinct_patterns, unit_patterns

SWAP_OPS = frozenset({"Relu"})


@dataclass(frozen=True)
class ProxyTaps:
    """The tap tensors each proxy reads."""

    meco: tuple[str, ...]  # convolution layout: channels on axis 1, more than one position
    swap: tuple[str, ...]  # ReLU outputs


@dataclass(frozen=True)
class ProxyValues:
    """One repetition's proxies (NaN where a proxy has nothing to measure) and the batch."""

    values: Mapping[str, float]
    batch: int
    notes: tuple[str, ...] = field(default_factory=tuple)


def proxy_taps(plan: Plan) -> ProxyTaps:
    """Which of the plan's taps (not its feeds) each proxy reads; only taps whose first axis
    is the samples' (a sequence-first tensor interleaves them)."""
    taps = [t for t in plan.taps if t.tensor not in plan.feeds and plan.geoms[t.tensor].batch_major]
    meco = [t.tensor for t in taps if plan.geoms[t.tensor].axis == 1 and plan.geoms[t.tensor].rows_per_sample > 1]
    swap = [t.tensor for t in taps if t.op in SWAP_OPS and "post" in t.role]
    return ProxyTaps(tuple(dict.fromkeys(meco)), tuple(dict.fromkeys(swap)))


def proxy_batch(plan: Plan, bn_batch: int) -> int:
    """The proxies' batch: the plan's own with batch statistics, the model's fixed batch,
    else ``bn_batch`` — at most the samples of the data."""
    b = plan.batch if plan.full_batches else (plan.static or bn_batch)
    return min(b, plan.available) if plan.available is not None else b


def measure_proxies(
    names: Sequence[str],
    plan: Plan,
    runner: Runner,
    source: Source,
    start: int,
    rng: np.random.Generator,
    bn_batch: int,
    max_bytes: int,
) -> ProxyValues:
    """The proxies ``names`` ("meco", "swap") of the batch of samples ``start …`` of the data
    (synthetic samples: drawn from ``rng``, a copy of the generator the repetition's window
    was drawn from, so they are its first samples)."""
    batch = proxy_batch(plan, bn_batch)
    if plan.available is not None:
        start = max(0, min(start, plan.available - batch))
    feeds = source.window(start, batch, rng).batch(0, batch, pad_to=plan.static)
    taps = proxy_taps(plan)
    want_meco, want_swap = "meco" in names, "swap" in names
    needed = {t: "all" for t in (taps.swap if want_swap else ())}
    for t in taps.meco if want_meco else ():
        needed.setdefault(t, "first")
    meco_sum, patterns, notes = 0.0, [], []
    for group in _groups(plan, needed, batch, max_bytes):
        got = _fetch(plan, runner, feeds, {t: needed[t] for t in group}, batch)
        for t in group:
            m, g = got[t], plan.geoms[t]
            if want_meco and t in taps.meco:
                meco_sum += layer_meco(m[: g.rows_per_sample])
            if want_swap and t in taps.swap:
                patterns.append(unit_patterns(m.reshape(batch, -1)))
        del got
    values: dict[str, float] = {}
    if want_meco:
        values["meco"] = meco_sum if taps.meco else math.nan
        if not taps.meco:
            notes.append("MeCo: no tap has a feature map in convolution layout (channels on axis 1, positions after)")
    if want_swap:
        values["swap"] = float(distinct_patterns(patterns)) if taps.swap else math.nan
        if not taps.swap:
            notes.append("SWAP: the model has no ReLU (SWAP counts the activation patterns of ReLU units)")
    return ProxyValues(values, batch, tuple(notes))


def _groups(plan: Plan, needed: Mapping[str, str], batch: int, max_bytes: int) -> list[list[str]]:
    """The needed taps in groups whose outputs hold at most ``max_bytes`` (a tap larger than
    that alone), in graph order."""
    groups: list[list[str]] = []
    size = 0
    for t, what in needed.items():
        g = plan.geoms[t]
        b = (batch if what == "all" else 1) * g.rows_per_sample * g.cols * plan.dtypes[t].itemsize
        if not groups or size + b > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += b
    return groups


def _fetch(
    plan: Plan, runner: Runner, feeds: Mapping[str, np.ndarray], taps: Mapping[str, str], batch: int
) -> dict[str, Any]:
    """One forward pass of the batch: per tap, its rows as a (rows × features) matrix —
    every sample's (``"all"``) or the first sample's (``"first"``)."""
    run_feeds = dict(feeds)
    for t, names in plan.cut_taps.items():
        if t in taps:
            samples = batch if taps[t] == "all" else 1
            bounds = (0, samples, 0, samples * plan.geoms[t].rows_per_sample)
        else:
            bounds = (0, 0, 0, 0)
        for n, v in zip(names, bounds):
            run_feeds[n] = np.array([v], dtype=np.int64)
    outputs = [plan.output_of(t) for t in taps]
    got = runner.run(run_feeds, outputs)
    out: dict[str, Any] = {}
    for t, what in taps.items():
        m = got[plan.output_of(t)]
        if t not in plan.cut_taps:  # returned whole: the samples wanted, as rows
            m = to_rows(m[: batch if what == "all" else 1], plan.geoms[t].axis)
        out[t] = m
    return out


def mean_proxies(per_repetition: Sequence[ProxyValues]) -> dict[str, float]:
    """Each proxy's mean over the repetitions."""
    if not per_repetition:
        return {}
    names = list(per_repetition[0].values)
    return {n: float(np.mean([p.values[n] for p in per_repetition])) for n in names}


__all__ = ["ProxyTaps", "ProxyValues", "mean_proxies", "measure_proxies", "proxy_batch", "proxy_taps"]
