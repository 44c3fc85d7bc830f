"""The rules of ``vet``: what each tap's figures must satisfy, with their thresholds.

Each rule is a pure function of one tap's measured figures (:class:`~onnx_near.report.LayerScore`,
its feed's, and against a baseline the paired figures): :func:`judge` gives its problems
(findings: the gate fails) and notes (said, not failed); :func:`degenerate_weights` reads the
weights themselves.  The thresholds are :class:`VetChecks`; the rules are stated with them in
docs/vet.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import ConfigError
from .model_source import ModelSource
from .report import LayerScore


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
    * **diverged** (against a baseline *model*): the tap's values differ from the paired
      baseline tap's on the same inputs, ‖A − B‖ ÷ ‖B‖, by more than ``max_divergence`` beyond
      what its feed already differed (a square weight stored transposed keeps its rank but not
      its function) — a note (*inherited*) when the feed's difference accounts for it;
    * the total below ``min_score``.
    """

    min_score: float | None = None
    min_layer_ratio: float = 0.05
    max_saturation: float = 0.9
    max_drop: float = 0.5  # relative erank drop against the baseline
    max_divergence: float = 0.5  # ‖A − B‖ ÷ ‖B‖ against the baseline model, beyond the feed's: diverged
    min_kept: float = 0.1  # erank ÷ min(feed erank, width) below this: rank lost, not inherited
    max_gain: float = 100.0  # RMS of a tap ÷ RMS of its feed above this: exploded
    max_zeros: float = 0.9  # share of exact zeros in a weight of ≤ 3 distinct values: degenerate

    def __post_init__(self) -> None:
        for name in (
            "min_layer_ratio",
            "max_saturation",
            "max_drop",
            "max_divergence",
            "min_kept",
            "max_gain",
            "max_zeros",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                option = "--" + name.replace("_", "-")
                raise ConfigError(f"{option} must be a finite number of at least 0, not {v!r}")


@dataclass(frozen=True)
class Finding:
    """One rule that fired on a tap: its name, the measured value, the threshold, and why."""

    rule: str  # broken, collapsed, exploded, degenerate weight, saturated, dropped, diverged; notes: inherited, …
    value: float | None
    threshold: float | None
    message: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.message}"


# Bounded activations that saturate smoothly: sitting at their bounds is a fault there (a
# hard-clipped activation, HardSigmoid, sits at its bounds by design).
_SMOOTH = frozenset({"Tanh", "Sigmoid", "Softsign"})


def judge(
    layer: LayerScore,
    ratio: float,
    width: int,
    chk: VetChecks,
    b: float | None,
    feed_broken: bool,
    feed_dropped: bool = False,
    divergence: float | None = None,
    feed_divergence: float | None = None,
) -> tuple[list[Finding], list[Finding]]:
    """The problems and notes of one tap under the rules of :class:`VetChecks`: ``b`` is the
    paired baseline tap's erank, ``divergence`` the relative difference of its values from
    the baseline tap's (``feed_divergence`` its feed's), None where there is no baseline."""
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
    if divergence is not None and divergence > chk.max_divergence:
        inherited = feed_divergence or 0.0
        text = f"its values differ from the baseline's by {divergence:.0%} (‖A − B‖ ÷ ‖B‖ on the same inputs)"
        added = divergence - inherited
        if added > chk.max_divergence:
            text += f", {feed} by {inherited:.0%}: {added:.0%} more" if feed_divergence is not None else ""
            problems.append(Finding("diverged", added, chk.max_divergence, f"{text} (> {chk.max_divergence:.0%})"))
        else:
            text += f"; {feed} that feeds it already differs by {inherited:.0%}"
            notes.append(Finding("inherited", divergence, chk.max_divergence, text))
    return problems, notes


def degenerate_weights(model: ModelSource, chk: VetChecks) -> dict[str, Finding]:
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
