"""Deployment-side vetting: is this model sound before it ships?

NEAR's per-layer view doubles as an instrument: a layer whose effective rank has
collapsed (dead ReLUs, a zeroed or constant weight tensor after a bad export or
quantisation), whose activations are NaN/Inf, or whose bounded activation sits at its
bounds (a saturated tanh) shows up at that layer.  :func:`vet` scores the model and applies
these checks (:mod:`onnx_near.rules`); against a baseline (:mod:`onnx_near.baseline`: the
model before conversion, or a saved report) it also flags layers whose effective rank
dropped, and, against a baseline model, layers whose values no longer match the baseline's.

Per tap: **rank ratio** = erank / width (the matrix's columns).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from .baseline import baseline_taps, divergences, pair_taps
from .config import ScoreConfig
from .inputs import DataArg
from .model_source import ModelSource, report_name
from .report import ScoreResult, fmt, grid
from .rules import Finding, VetChecks, degenerate_weights, judge
from .score import score

__all__ = ["Finding", "LayerVerdict", "VetChecks", "VetResult", "vet", "vet_table"]


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
    divergence: float | None = None  # ‖A − B‖ ÷ ‖B‖ against the baseline model's paired tap

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
                **{f: getattr(v, f) for f in ("width", "rank_ratio", "baseline_erank", "change", "divergence")},
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


def vet(
    model: ModelSource,
    data: DataArg = None,
    config: ScoreConfig | None = None,
    checks: VetChecks | None = None,
    baseline: ModelSource | None = None,
) -> VetResult:
    """Score ``model`` with each tap's feed measured too, and apply the rules of
    :class:`VetChecks` to every tap; against ``baseline`` also flag the layers whose erank
    dropped, and the total against ``min_score``."""
    base_cfg = config or ScoreConfig()
    # the model as it will be deployed: BatchNorm with its running statistics
    cfg = replace(base_cfg, feeds=True, synthetic=base_cfg.synthetic or "smooth", batchnorm="running")
    chk = checks or VetChecks()
    report = score(model, data=data, config=cfg)
    base_taps = baseline_taps(baseline, data, cfg) if baseline is not None else []
    paired = {i: base_taps[j] for i, j in pair_taps(report.layers, base_taps).items()}
    differ: dict[str, float] = {}
    if baseline is not None and any(t.tensor is not None for t in paired.values()):
        pairs = [(layer.tensor, paired[layer.index].tensor) for layer in report.layers if layer.index in paired]
        pairs += [
            (layer.feed, paired[layer.index].feed)
            for layer in report.layers
            if layer.index in paired and layer.feed is not None and paired[layer.index].feed is not None
        ]
        compared = divergences(model, baseline, data, cfg, [(x, y) for x, y in dict.fromkeys(pairs) if y])
        differ = compared.values
        if compared.unpaired:
            report = replace(report, warnings=(*report.warnings, compared.unpaired))
    degenerate = degenerate_weights(model, chk)
    invalid = {layer.tensor for layer in report.layers if layer.status != "ok"}
    dropped: set[str] = set()  # taps whose erank dropped against the baseline, found in graph order
    verdicts: list[LayerVerdict] = []
    findings: list[str] = []
    for layer in report.layers:
        width = layer.shape[1]
        ratio = layer.erank / width if width and not math.isnan(layer.erank) else math.nan
        pair = paired.get(layer.index)
        b = pair.erank if pair is not None else None
        if b is not None and b > 0 and not math.isnan(layer.erank) and (b - layer.erank) / b > chk.max_drop:
            dropped.add(layer.tensor)
        problems, notes = judge(
            layer,
            ratio,
            width,
            chk,
            b,
            layer.feed in invalid,
            layer.feed is not None and layer.feed in dropped,
            differ.get(layer.tensor),
            differ.get(layer.feed) if layer.feed is not None else None,
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
                b,
                tuple(problems),
                tuple(notes),
                layer.feed,
                layer.feed_erank,
                layer.head,
                differ.get(layer.tensor),
            )
        )
        findings += [f"layer {layer.index} {layer.name!r} ({layer.op}, {layer.role}): {p}" for p in problems]
    if chk.min_score is not None and not (report.score >= chk.min_score):
        findings.append(f"score {report.score:.3f} is below the minimum {chk.min_score}")
    return VetResult(
        not findings, tuple(findings), tuple(verdicts), chk, report, report_name(baseline) if baseline is not None else None
    )


def vet_table(v: VetResult) -> str:
    """Per tap: erank, width, rank ratio, saturation, baseline (and, against a baseline
    model, how far its values differ from the baseline's), and what failed; then the verdict."""
    compared = any(l.divergence is not None for l in v.layers)
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
            *(("" if l.divergence is None else f"{l.divergence:.1%}",) if compared else ()),
            "; ".join([p.rule for p in l.problems] + [f"({n.rule})" for n in l.notes]) or "ok",
        )
        for l in v.layers
    ]
    head = (
        *("#", "layer", "op", "role", "erank", "width", "ratio", "saturated", "baseline", "change"),
        *(("differs",) if compared else ()),
        "check",
    )
    verdict = "PASSED" if v.passed else f"FAILED ({len(v.findings)} finding{'s' if len(v.findings) != 1 else ''})"
    lines = [f"model {v.report.model}", "", grid(head, rows), "", f"NEAR score {fmt(v.report.score)} · {verdict}"]
    notes = [f"  layer {l.index} {l.name!r} ({l.op}, {l.role}): {n}" for l in v.layers for n in l.notes]
    return "\n".join(lines + [f"  {f}" for f in v.findings] + (["notes (not failures):", *notes] if notes else []))
