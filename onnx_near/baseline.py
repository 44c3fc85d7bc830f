"""Vetting against a baseline: pair the taps of two graphs, and compare what they compute.

A baseline is the model before a conversion (the float original of a quantised file, the
previous release of a model) or a saved JSON report of one.  Two comparisons rest on it:

* **effective rank**, tap by tap: from a report or from scoring the baseline model with the
  same inputs and settings (:func:`baseline_taps`) — a layer that lost half its rank;
* **activations**, tap by tap, only against a baseline *model* (:func:`divergences`): both
  graphs run the same samples, and each pair of taps gives the relative difference of their
  values, ‖A − B‖ / ‖B‖ over every row of those samples.  A fault that keeps a layer's rank —
  a square weight stored transposed, a weight's rows permuted — changes what the layer
  computes (on the calibration corpus by 100–130 %), while a sound int8 quantisation changes
  each layer by a few per cent.

The taps of the two graphs are paired in order by kind (:func:`pair_taps`), so a quantiser's
renamed and re-fused nodes still meet their float originals.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .config import ScoreConfig
from .errors import InputDataError
from .inputs import DataArg
from .matrices import to_rows
from .model_source import ModelSource, file_path
from .report import LayerScore
from .score import set_up

COMPARED_SAMPLES = 32  # samples both graphs run to compare their activations


@dataclass(frozen=True)
class BaselineTap:
    """One tap of the baseline: what it is, its erank, and (from a model) its tensors."""

    name: str
    op: str
    role: str
    erank: float
    tensor: str | None = None  # None from a saved report: its activations cannot be compared
    feed: str | None = None


def baseline_taps(baseline: ModelSource, data: DataArg, config: ScoreConfig) -> list[BaselineTap]:
    """The baseline's taps: from a saved JSON report (a path ending in ``.json``), or by
    scoring a model with ``config``."""
    path = file_path(baseline)
    if path is not None and Path(path).suffix.lower() == ".json":
        p = Path(path)
        try:
            doc = json.loads(p.read_text())
            return [
                BaselineTap(
                    str(layer["name"]),
                    str(layer.get("op") or ""),
                    str(layer.get("role") or ""),
                    float(layer["erank"]) if layer["erank"] is not None else math.nan,
                )
                for layer in doc["layers"]
            ]
        except FileNotFoundError as e:
            raise InputDataError(f"baseline report {str(p)!r} does not exist") from e
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise InputDataError(
                f"baseline report {str(p)!r} is not an onnx-near JSON report with layers (name, erank)"
            ) from e
    from .score import score  # the one scoring entry point

    return [
        BaselineTap(layer.name, layer.op, layer.role, layer.erank, layer.tensor, layer.feed)
        for layer in score(baseline, data=data, config=config).layers
    ]


def pair_taps(layers: Sequence[LayerScore], base: Sequence[BaselineTap]) -> dict[int, int]:
    """Per tap index of ``layers``: the position of its baseline tap in ``base``.

    A tap pairs with a baseline tap of the same kind (:func:`_tap_kind`: a convolution, a dense
    layer, a normalisation, an activation), and the alignment pairs as many as can be paired
    in order (a longest common subsequence), preferring pairs whose names agree once the
    suffixes a quantiser adds are stripped (:func:`_plain_name`).  A tap one graph has and the
    other lacks (the pre-activation a quantiser folded into a QGemm's output range, a layer
    a converter fused away) is left without a baseline instead of shifting every later pair;
    two graphs with the same kinds of taps in the same order pair by position.
    """
    a = [(_tap_kind(layer.op, layer.role), _plain_name(layer.name)) for layer in layers]
    b = [(_tap_kind(t.op, t.role), _plain_name(t.name)) for t in base]
    n, m = len(a), len(b)
    if n == m and all(x[0] == y[0] or not x[0] or not y[0] for x, y in zip(a, b)):
        return {layer.index: j for j, layer in enumerate(layers)}

    def gain(i: int, j: int) -> int:  # a pair counts 10, an agreeing name breaks ties
        (ka, na), (kb, nb) = a[i], b[j]
        if ka and kb and ka != kb:
            return 0
        return 10 + (na == nb)

    best = [[0] * (m + 1) for _ in range(n + 1)]  # best[i][j]: the best alignment of a[i:] with b[j:]
    for i in range(n - 1, -1, -1):
        row, below = best[i], best[i + 1]
        for j in range(m - 1, -1, -1):
            g = gain(i, j)
            row[j] = max(below[j], row[j + 1], below[j + 1] + g if g else 0)
    paired: dict[int, int] = {}
    i = j = 0
    while i < n and j < m:
        g = gain(i, j)
        if g and best[i][j] == best[i + 1][j + 1] + g:
            paired[layers[i].index] = j
            i, j = i + 1, j + 1
        elif best[i][j] == best[i + 1][j]:
            i += 1
        else:
            j += 1
    return paired


# What onnxruntime's quantiser appends to the names of the nodes it rewrites (QLinearConv
# "/conv/Conv_quant", QDQ "…_output_0_QuantizeLinear", dynamic "/fc/Gemm_MatMul_quant", "/fc/Gemm_Add").
_QUANTISER_SUFFIX = re.compile(
    r"(_quant|_quantized|_QuantizeLinear|_DequantizeLinear|_MatMul|_Add|_bias_add|_output_\d+)$"
)


def _plain_name(name: str) -> str:
    """``name`` without the suffixes a quantiser appends (:data:`_QUANTISER_SUFFIX`)."""
    while True:
        plain = _QUANTISER_SUFFIX.sub("", name)
        if plain == name or not plain:
            return name
        name = plain


def _tap_kind(op: str, role: str) -> str:
    """What a tap is, for pairing taps of two graphs: an activation (role ``post``), or the
    family of its weighted layer whatever the op's quantised or fused form ("QLinearConv
    (dequantised)" and "Conv" are both a convolution); "" when the report does not say."""
    if not role:
        return ""
    if "pre" not in role:
        return role if role == "feed" else "activation"
    o = op.lower()
    for family, words in (
        ("convolution", ("conv",)),
        ("normalisation", ("norm", "affine")),
        ("dense", ("gemm", "matmul")),
    ):
        if any(w in o for w in words):
            return family
    return o.split(" ")[0]


@dataclass(frozen=True)
class Divergences:
    """Per tensor of the model: ‖A − B‖ / ‖B‖ against its paired baseline tensor, over the
    same ``samples``; ``unpaired`` says, when nothing could be compared, why."""

    values: dict[str, float]
    samples: int
    unpaired: str | None = None


def divergences(
    model: ModelSource,
    baseline: ModelSource,
    data: DataArg,
    config: ScoreConfig,
    pairs: Sequence[tuple[str, str]],
    samples: int = COMPARED_SAMPLES,
) -> Divergences:
    """Run ``model`` and ``baseline`` on the same ``samples`` (the data's first, or synthetic
    ones drawn once and fed to both) and measure, per (model tensor, baseline tensor) pair,
    the relative difference ‖A − B‖_F / ‖B‖_F of their values over every row of those samples.

    The samples run one forward pass each (the model's fixed batch, when it fixes one), so
    only one sample's taps are held at a time.  A pair whose matrices differ in shape is left
    out; a baseline tensor that is all zeros compares as 0 when the model's is too, and is
    left out otherwise (a relative difference to nothing is not defined)."""
    timings = {"load_rewrite": 0.0, "session": 0.0, "forward": 0.0, "erank": 0.0}
    a, b = set_up(model, data, config, timings), set_up(baseline, data, config, timings)
    ka = {s.name: (s.dtype, s.sample_shape, s.batch_axis) for s in a.source.specs}
    kb = {s.name: (s.dtype, s.sample_shape, s.batch_axis) for s in b.source.specs}
    if ka != kb:
        return Divergences(
            {}, 0, "the baseline's inputs differ from the model's, so their activations were not compared"
        )
    pairs = [(x, y) for x, y in pairs if x in a.plan.geoms and y in b.plan.geoms]
    if a.source.n_samples is not None:
        samples = min(samples, a.source.n_samples)
    step = a.plan.static or 1
    samples = -(-samples // step) * step
    if a.source.n_samples is not None and samples > a.source.n_samples:
        samples -= step
    diff2 = {x: 0.0 for x, _ in pairs}
    ref2 = {x: 0.0 for x, _ in pairs}
    shapes_differ: set[str] = set()
    window = a.source.window(0, samples, np.random.default_rng([config.seed, 2]))
    for lo in range(0, samples, step):
        feeds = window.batch(lo, lo + step, pad_to=a.plan.static)
        got = [_rows(run, feeds, [x for x, _ in pairs] if run is a else [y for _, y in pairs], step) for run in (a, b)]
        for (x, _), ma, mb in zip(pairs, got[0], got[1]):
            if ma.shape != mb.shape:
                shapes_differ.add(x)
                continue
            with np.errstate(all="ignore"):
                d = ma.astype(np.float64) - mb.astype(np.float64)
                diff2[x] += float(np.sum(d * d))
                ref2[x] += float(np.sum(np.square(mb.astype(np.float64))))
    values: dict[str, float] = {}
    for x, _ in pairs:
        if x in shapes_differ:
            continue
        if ref2[x] > 0:
            values[x] = math.sqrt(diff2[x] / ref2[x]) if math.isfinite(diff2[x]) else math.inf
        elif diff2[x] == 0:
            values[x] = 0.0
    return Divergences(values, samples)


def _rows(run: Any, feeds: dict[str, np.ndarray], tensors: list[str], ran: int) -> list[np.ndarray]:
    """The rows of ``tensors`` for one forward pass of ``ran`` samples of ``run`` (a score's
    set-up): every row of those samples for the cut taps asked for, none for the others."""
    plan = run.plan
    feeds = dict(feeds)
    wanted = set(tensors)
    for t, c in plan.cuts.items():
        if c.bounds is not None:
            rows = plan.geoms[t].rows_per_sample * ran if t in wanted else 0
            for name, v in zip(c.bounds, (0, ran if t in wanted else 0, 0, rows)):
                feeds[name] = np.array([v], dtype=np.int64)
    outs = run.runner.run(feeds, list(dict.fromkeys(plan.output_of(t) for t in tensors)))
    got = []
    for t in tensors:
        v = outs[plan.output_of(t)]
        got.append(v if plan.cuts[t].bounds is not None else to_rows(v, plan.geoms[t].axis))
    return got
