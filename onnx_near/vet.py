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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .config import ScoreConfig
from .errors import InputDataError
from .inputs import DataArg
from .report import LayerScore, ScoreResult
from .score import score


@dataclass(frozen=True)
class VetChecks:
    """Thresholds of the checks (None disables the check)."""

    min_score: float | None = None
    min_layer_ratio: float = 0.05
    max_saturation: float = 0.9
    max_drop: float = 0.5  # relative erank drop against the baseline


@dataclass(frozen=True)
class LayerVerdict:
    """One tap's figures and the checks it failed."""

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
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


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
                **{f: getattr(v, f) for f in ("width", "rank_ratio", "baseline_erank")},
                "problems": list(v.problems),
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


def _baseline_layers(baseline: str | os.PathLike[str], data: DataArg, config: ScoreConfig) -> list[tuple[str, float]]:
    """(name, erank) of the baseline's taps: from a saved JSON report, or by scoring a model."""
    p = Path(baseline)
    if p.suffix.lower() == ".json":
        try:
            doc = json.loads(p.read_text())
            return [
                (str(layer["name"]), float(layer["erank"]) if layer["erank"] is not None else math.nan)
                for layer in doc["layers"]
            ]
        except FileNotFoundError as e:
            raise InputDataError(f"baseline report {str(p)!r} does not exist") from e
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputDataError(
                f"baseline report {str(p)!r} is not an onnx-near JSON report with layers (name, erank)"
            ) from e
    return [(layer.name, layer.erank) for layer in score(p, data=data, config=config).layers]


def _match(layers: tuple[LayerScore, ...], base: list[tuple[str, float]]) -> dict[int, float]:
    """Baseline erank per tap index: matched by name first, then by position among the rest."""
    by_name: dict[str, float] = {}
    for name, e in base:
        by_name.setdefault(name, e)
    matched: dict[int, float] = {}
    used = set()
    for layer in layers:
        if layer.name in by_name:
            matched[layer.index] = by_name[layer.name]
            used.add(layer.name)
    rest_layers = [layer for layer in layers if layer.index not in matched]
    rest_base = [e for name, e in base if name not in used]
    for layer, e in zip(rest_layers, rest_base):
        matched[layer.index] = e
    return matched


def vet(
    model: str | os.PathLike[str],
    data: DataArg = None,
    config: ScoreConfig | None = None,
    checks: VetChecks | None = None,
    baseline: str | os.PathLike[str] | None = None,
) -> VetResult:
    """Score ``model`` and check every tap: broken (NaN/Inf), collapsed (rank ratio below
    ``min_layer_ratio``), saturated (a bounded activation mostly at its bounds), dropped
    (erank fell by more than ``max_drop`` against ``baseline``), and the total against
    ``min_score``."""
    cfg = config or ScoreConfig()
    chk = checks or VetChecks()
    report = score(model, data=data, config=cfg)
    base = _match(report.layers, _baseline_layers(baseline, data, cfg)) if baseline is not None else {}
    verdicts: list[LayerVerdict] = []
    findings: list[str] = []
    for layer in report.layers:
        width = layer.shape[1]
        ratio = layer.erank / width if width and not math.isnan(layer.erank) else math.nan
        problems: list[str] = []
        if layer.status != "ok":
            problems.append("broken: " + (layer.reason or "no effective rank"))
        elif ratio < chk.min_layer_ratio:
            problems.append(
                f"collapsed: erank {layer.erank:.3f} of width {width} (ratio {ratio:.3f} < {chk.min_layer_ratio})"
            )
        if layer.saturation is not None and layer.saturation > chk.max_saturation:
            problems.append(f"saturated: {layer.saturation:.0%} of its values sit at the activation's bounds")
        b = base.get(layer.index)
        if b is not None and b > 0 and not math.isnan(layer.erank) and (b - layer.erank) / b > chk.max_drop:
            problems.append(
                f"dropped: erank {layer.erank:.3f} against {b:.3f} in the baseline (−{(b - layer.erank) / b:.0%})"
            )
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
            )
        )
        findings += [f"layer {layer.index} {layer.name!r} ({layer.op}, {layer.role}): {p}" for p in problems]
    if chk.min_score is not None and not (report.score >= chk.min_score):
        findings.append(f"score {report.score:.3f} is below the minimum {chk.min_score}")
    return VetResult(
        not findings, tuple(findings), tuple(verdicts), chk, report, str(baseline) if baseline is not None else None
    )
