"""Deployment-side vetting: is this model sound before it ships?

NEAR's per-layer view doubles as an instrument: a layer whose effective rank has
collapsed (dead ReLUs, a zeroed or constant weight tensor after a bad export or
quantisation), whose activations are NaN/Inf, or whose bounded activation sits at its
bounds (a saturated tanh) shows up at that layer.  :func:`vet` scores the model and applies
these checks; against a baseline (the model before conversion, or a saved report) it also
flags layers whose effective rank dropped.

Per tap: **rank ratio** = erank / width (the matrix's columns).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .config import ScoreConfig
from .errors import InputDataError
from .inputs import DataArg
from .report import LayerScore, ScoreResult, fmt, grid
from .score import score


@dataclass(frozen=True)
class VetChecks:
    """Thresholds of the checks (None disables the check).  The rules, in order (docs/vet.md,
    "Vetting a model before it ships"; calibrated on ``models/vet_calibration/``, see
    ``benchmarks/vet_calibration.py``):

    * **broken**: the tap's activations hold NaN or Inf — unless its feed already did
      (then the note *inherited*: the fault is upstream);
    * **collapsed**: rank ratio (erank ÷ width) below ``min_layer_ratio`` *and* the tap kept
      less than ``min_kept`` of the rank it was given, erank ÷ min(feed's erank, width); a low
      ratio with the rank kept is the note *input-limited* (a gate after global pooling on
      near-identical inputs).  With no feed measured, the ratio alone decides.  An output
      head is collapsed only when its erank is 0 while its feed has more than one direction
      (erank > 1.5): a classifier's logits on synthetic inputs are dominated by their bias, a
      detector's probability map of an empty image is 0.  A matrix one column wide has no
      rank to lose;
    * **exploded**: the tap's root-mean-square value is more than ``max_gain`` times its
      feed's (a BatchNorm with a running variance of 0, a weight scaled up a thousandfold);
      healthy trained layers stay within 6×;
    * **degenerate weight**: a layer's float weight holds at most 3 distinct values and at
      least ``max_zeros`` of them are 0 (a weight quantised with a scale far too large);
    * **saturated**: a smooth bounded activation (tanh, sigmoid, softsign) with more than
      ``max_saturation`` of its values within 1 % of its bounds — a note for an output head
      (class scores of a detector on an image with nothing in it sit at 0) and for a
      hard-clipped one (hard-sigmoid gates sit at 0 or 1 by design);
    * **dropped**: erank fell by more than ``max_drop`` (relative) against the baseline —
      a note (*inherited*) when its feed dropped too;
    * the total below ``min_score``.
    """

    min_score: float | None = None
    min_layer_ratio: float = 0.05
    max_saturation: float = 0.9
    max_drop: float = 0.5  # relative erank drop against the baseline
    min_kept: float = 0.1  # erank ÷ min(feed erank, width) below this: rank lost, not inherited
    max_gain: float = 100.0  # RMS of a tap ÷ RMS of its feed above this: exploded
    max_zeros: float = 0.9  # share of exact zeros in a weight of ≤ 3 distinct values: degenerate


@dataclass(frozen=True)
class Finding:
    """One rule that fired on a tap: its name, the measured value, the threshold, and why."""

    rule: str  # broken, collapsed, saturated, dropped; notes: inherited, input-limited, head-saturated
    value: float | None
    threshold: float | None
    message: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.message}"


@dataclass(frozen=True)
class LayerVerdict:
    """One tap's figures, the checks it failed (``problems``) and what was noted but not failed."""

    index: int
    name: str
    op: str
    role: str
    tensor: str
    erank: float
    width: int
    rank_ratio: float
    saturation: float | None
    baseline_erank: float | None
    problems: tuple[Finding, ...]
    notes: tuple[Finding, ...] = ()
    feed: str | None = None
    feed_erank: float | None = None
    head: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def change(self) -> float | None:
        """The relative change of erank against the baseline (−0.1: quantisation cost 10 %)."""
        if self.baseline_erank is None or not self.baseline_erank or math.isnan(self.erank):
            return None
        return (self.erank - self.baseline_erank) / self.baseline_erank


@dataclass(frozen=True)
class VetResult:
    """The verdict: ``passed`` or the list of findings, with the score report it rests on."""

    passed: bool
    findings: tuple[str, ...]
    layers: tuple[LayerVerdict, ...]
    checks: VetChecks
    report: ScoreResult
    baseline: str | None

    @property
    def exit_code(self) -> int:
        """0 when every check passed, 1 when one failed."""
        return 0 if self.passed else 1

    def to_dict(self) -> dict[str, Any]:
        """The JSON document; it can be passed back later as a baseline."""
        d = self.report.to_dict()
        d["layers"] = [
            {
                **layer,
                **{f: getattr(v, f) for f in ("width", "rank_ratio", "baseline_erank", "change")},
                "problems": [asdict(p) for p in v.problems],
                "notes": [asdict(n) for n in v.notes],
            }
            for layer, v in zip(d["layers"], self.layers)
        ]
        return {
            "vet": {
                "passed": self.passed,
                "findings": list(self.findings),
                "checks": asdict(self.checks),
                "baseline": self.baseline,
            },
            **d,
        }


def _baseline_layers(
    baseline: str | os.PathLike[str], data: DataArg, config: ScoreConfig
) -> list[tuple[str, str, str, float]]:
    """(name, op, role, erank) of the baseline's taps: from a saved JSON report, or by scoring a model."""
    p = Path(baseline)
    if p.suffix.lower() == ".json":
        try:
            doc = json.loads(p.read_text())
            return [
                (
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
    return [(layer.name, layer.op, layer.role, layer.erank) for layer in score(p, data=data, config=config).layers]


def _match(layers: tuple[LayerScore, ...], base: list[tuple[str, str, str, float]]) -> dict[int, float]:
    """Baseline erank per tap index: the two graphs' taps aligned in order.

    A tap pairs with a baseline tap of the same kind (:func:`_tap_kind`: a convolution, a dense
    layer, a normalisation, an activation), and the alignment pairs as many as can be paired
    in order (a longest common subsequence), preferring pairs whose names agree once the
    suffixes a quantiser adds are stripped (:func:`_plain_name`).  A tap one graph has and the
    other lacks (the pre-activation a quantiser folded into a QGemm's output range, a layer
    a converter fused away) is left without a baseline instead of shifting every later pair;
    two graphs with the same kinds of taps in the same order pair by position.
    """
    a = [(_tap_kind(layer.op, layer.role), _plain_name(layer.name)) for layer in layers]
    b = [(_tap_kind(op, role), _plain_name(name)) for name, op, role, _ in base]
    n, m = len(a), len(b)
    if n == m and all(x[0] == y[0] or not x[0] or not y[0] for x, y in zip(a, b)):
        return {layer.index: e for layer, (_, _, _, e) in zip(layers, base)}

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
    matched: dict[int, float] = {}
    i = j = 0
    while i < n and j < m:
        g = gain(i, j)
        if g and best[i][j] == best[i + 1][j + 1] + g:
            matched[layers[i].index] = base[j][3]
            i, j = i + 1, j + 1
        elif best[i][j] == best[i + 1][j]:
            i += 1
        else:
            j += 1
    return matched


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


def vet(
    model: str | os.PathLike[str],
    data: DataArg = None,
    config: ScoreConfig | None = None,
    checks: VetChecks | None = None,
    baseline: str | os.PathLike[str] | None = None,
) -> VetResult:
    """Score ``model`` with each tap's feed measured too, and apply the rules of
    :class:`VetChecks` to every tap; against ``baseline`` also flag the layers whose erank
    dropped, and the total against ``min_score``."""
    base_cfg = config or ScoreConfig()
    # the model as it will be deployed: BatchNorm with its running statistics
    cfg = replace(base_cfg, feeds=True, synthetic=base_cfg.synthetic or "smooth", batchnorm="running")
    chk = checks or VetChecks()
    report = score(model, data=data, config=cfg)
    base = _match(report.layers, _baseline_layers(baseline, data, cfg)) if baseline is not None else {}
    degenerate = degenerate_weights(model, chk)
    invalid = {layer.tensor for layer in report.layers if layer.status != "ok"}
    dropped: set[str] = set()  # taps whose erank dropped against the baseline, found in graph order
    verdicts: list[LayerVerdict] = []
    findings: list[str] = []
    for layer in report.layers:
        width = layer.shape[1]
        ratio = layer.erank / width if width and not math.isnan(layer.erank) else math.nan
        b = base.get(layer.index)
        if b is not None and b > 0 and not math.isnan(layer.erank) and (b - layer.erank) / b > chk.max_drop:
            dropped.add(layer.tensor)
        problems, notes = _judge(
            layer, ratio, width, chk, b, layer.feed in invalid, layer.feed is not None and layer.feed in dropped
        )
        if layer.tensor in degenerate:
            problems.append(degenerate[layer.tensor])
        verdicts.append(
            LayerVerdict(
                layer.index,
                layer.name,
                layer.op,
                layer.role,
                layer.tensor,
                layer.erank,
                width,
                ratio,
                layer.saturation,
                base.get(layer.index),
                tuple(problems),
                tuple(notes),
                layer.feed,
                layer.feed_erank,
                layer.head,
            )
        )
        findings += [f"layer {layer.index} {layer.name!r} ({layer.op}, {layer.role}): {p}" for p in problems]
    if chk.min_score is not None and not (report.score >= chk.min_score):
        findings.append(f"score {report.score:.3f} is below the minimum {chk.min_score}")
    return VetResult(
        not findings, tuple(findings), tuple(verdicts), chk, report, str(baseline) if baseline is not None else None
    )


# Bounded activations that saturate smoothly: sitting at their bounds is a fault there (a
# hard-clipped activation, HardSigmoid, sits at its bounds by design).
_SMOOTH = frozenset({"Tanh", "Sigmoid", "Softsign"})


def _judge(
    layer: LayerScore,
    ratio: float,
    width: int,
    chk: VetChecks,
    b: float | None,
    feed_broken: bool,
    feed_dropped: bool = False,
) -> tuple[list[Finding], list[Finding]]:
    """The problems and notes of one tap under the rules of :class:`VetChecks`."""
    problems: list[Finding] = []
    notes: list[Finding] = []
    feed = f"{layer.feed!r}" if layer.feed else "its input"
    fe = layer.feed_erank
    if layer.status != "ok":
        reason = layer.reason or "no effective rank"
        if feed_broken:
            notes.append(Finding("inherited", None, None, f"{reason}; {feed} that feeds it is already broken"))
        else:
            problems.append(Finding("broken", None, None, reason))
    elif ratio < chk.min_layer_ratio and width > 1:
        limit = min(fe, width) if fe is not None and not math.isnan(fe) else None
        low = f"erank {layer.erank:.3f} of width {width} (ratio {ratio:.3f} < {chk.min_layer_ratio})"
        if limit is None:
            problems.append(Finding("collapsed", ratio, chk.min_layer_ratio, low))
        elif layer.head:
            if layer.erank == 0 and fe is not None and fe > 1.5:
                problems.append(Finding("collapsed", 0.0, 0.0, f"an output head with erank 0, fed erank {fe:.3f}"))
            else:
                notes.append(Finding("input-limited", ratio, chk.min_layer_ratio, f"{low}; an output head"))
        else:
            kept = layer.erank / limit if limit > 0 else math.inf
            given = f"{feed} gives erank {fe:.3f}"
            if kept < chk.min_kept:
                problems.append(
                    Finding("collapsed", kept, chk.min_kept, f"{low}; {given}, it kept {kept:.3f} < {chk.min_kept}")
                )
            else:
                kept_text = "the rank was lost upstream" if limit == 0 else f"it kept {min(kept, 1.0):.0%} of that"
                notes.append(Finding("input-limited", kept, chk.min_kept, f"{low}; {given}: {kept_text}"))
    if (
        layer.status == "ok"
        and layer.rms is not None
        and layer.feed_rms is not None
        and layer.feed_rms > 0
        and layer.rms / layer.feed_rms > chk.max_gain
    ):
        gain = layer.rms / layer.feed_rms
        problems.append(
            Finding(
                "exploded",
                gain,
                chk.max_gain,
                f"its values are {gain:.0f}× the magnitude of its feed {feed} (root mean square {layer.rms:.3g} "
                f"against {layer.feed_rms:.3g}; > {chk.max_gain:g}×)",
            )
        )
    if layer.saturation is not None and layer.saturation > chk.max_saturation:
        text = f"{layer.saturation:.0%} of its values sit at the activation's bounds (> {chk.max_saturation:.0%})"
        kind = layer.op.split(" ")[0]
        if layer.head:
            notes.append(Finding("head-saturated", layer.saturation, chk.max_saturation, f"{text}; an output head"))
        elif kind not in _SMOOTH:
            notes.append(Finding("clipped", layer.saturation, chk.max_saturation, f"{text}; hard-clipped by design"))
        else:
            problems.append(Finding("saturated", layer.saturation, chk.max_saturation, text))
    if b is not None and b > 0 and not math.isnan(layer.erank) and (b - layer.erank) / b > chk.max_drop:
        drop = (b - layer.erank) / b
        text = f"erank {layer.erank:.3f} against {b:.3f} in the baseline (−{drop:.0%})"
        if feed_dropped:
            notes.append(Finding("inherited", drop, chk.max_drop, f"{text}; {feed} that feeds it dropped too"))
        else:
            problems.append(Finding("dropped", drop, chk.max_drop, text))
    return problems, notes


def degenerate_weights(model: str | os.PathLike[str], chk: VetChecks) -> dict[str, Finding]:
    """Per layer-output tensor: a finding when the layer's float weight (initializer or
    Constant, through Cast/Identity) holds at most 3 distinct values, ``max_zeros`` or more of
    them exactly 0 — what a weight quantised with a far too large scale becomes."""
    import numpy as np
    from onnx import numpy_helper

    from .load import load_model
    from .rewrite import analyse

    _, index, plan = analyse(load_model(model))
    out: dict[str, Finding] = {}
    for tap in plan.taps:
        if "pre" not in tap.role or tap.node < 0:
            continue
        n = index.nodes[tap.node]
        if n.op_type == "Add":  # MatMul+Add: the weight is the MatMul's
            n = next((index.node_of(x) for x in n.input if index.node_of(x) is not None), n)  # type: ignore[assignment]
        if n is None or n.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        held = next((index.weight(x) for x in n.input[:2] if index.weight(x) is not None), None)
        if held is None or held[1].data_type not in (1, 10, 11, 16) or held[1].data_location == 1:
            continue
        w = numpy_helper.to_array(held[1]).reshape(-1)
        if w.size < 16:
            continue
        levels = np.unique(w)
        zeros = float(np.mean(w == 0))
        if levels.size <= 3 and zeros >= chk.max_zeros:
            out[tap.tensor] = Finding(
                "degenerate weight",
                zeros,
                chk.max_zeros,
                f"its weight {held[0]!r} is all zeros (a lost or zeroed tensor)"
                if zeros == 1.0
                else f"its weight {held[0]!r} holds {levels.size} distinct values, {zeros:.0%} of its "
                f"{w.size} elements exactly 0 (≥ {chk.max_zeros:.0%}): quantised with a scale far too large?",
            )
    return out


def vet_table(v: VetResult) -> str:
    """Per tap: erank, width, rank ratio, saturation, baseline, and what failed; then the verdict."""
    rows = [
        (
            str(l.index),
            l.name,
            l.op,
            l.role,
            fmt(l.erank),
            str(l.width),
            "nan" if math.isnan(l.rank_ratio) else f"{l.rank_ratio:.3f}",
            "" if l.saturation is None else f"{l.saturation:.0%}",
            "" if l.baseline_erank is None else fmt(l.baseline_erank),
            "" if l.change is None else f"{l.change:+.1%}",
            "; ".join([p.rule for p in l.problems] + [f"({n.rule})" for n in l.notes]) or "ok",
        )
        for l in v.layers
    ]
    head = ("#", "layer", "op", "role", "erank", "width", "ratio", "saturated", "baseline", "change", "check")
    verdict = "PASSED" if v.passed else f"FAILED ({len(v.findings)} finding{'s' if len(v.findings) != 1 else ''})"
    lines = [f"model {v.report.model}", "", grid(head, rows), "", f"NEAR score {fmt(v.report.score)} · {verdict}"]
    notes = [f"  layer {l.index} {l.name!r} ({l.op}, {l.role}): {n}" for l in v.layers for n in l.notes]
    return "\n".join(lines + [f"  {f}" for f in v.findings] + (["notes (not failures):", *notes] if notes else []))
