"""Layer-size estimation for an MLP layer (SPEC §6; the paper's power-law fit).

For candidate widths s_1 < … < s_m of one hidden layer, the layer's own NEAR score (the
mean effective rank of its pre- and post-activation matrices, so that one neuron scores 1)
is divided by the width — the *relative score* — the point (1, 1) is prepended, and

    f(s) = α + β · s^γ

is fitted (``scipy.optimize.curve_fit``).  The estimate is the width where the fitted slope
f'(s) = β·γ·s^(γ−1) has fallen to ``threshold`` of its initial value f'(1) = β·γ:

    s* = threshold^(1/(γ−1))                  (slope="relative", the default)

This is the expression the authors' code returns; read as a relative slope it is exact,
because β·γ cancels.  Read as an absolute slope (f'(s) = threshold), the β·γ factor must
stay: s* = (threshold / (β·γ))^(1/(γ−1)) (slope="absolute").  The default threshold is
0.5 % (the paper's text); the authors' example uses 1 %.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .config import ScoreConfig
from .errors import ConfigError, InputDataError
from .inputs import DataArg
from .reinit import reinitialize
from .report import LayerScore, grid
from .score import score
from .variants import CANDIDATES, swap_activations


@dataclass(frozen=True)
class PowerLaw:
    """f(s) = alpha + beta · s^gamma, and how well it fits (R²)."""

    alpha: float
    beta: float
    gamma: float
    r2: float

    def __call__(self, s: np.ndarray | float) -> np.ndarray | float:
        return self.alpha + self.beta * np.power(s, self.gamma)

    def estimate(self, threshold: float, slope: str = "relative") -> float:
        """The width where the slope falls to ``threshold`` (relative to f'(1), or absolute)."""
        if self.gamma >= 1.0 or self.beta * self.gamma >= 0:
            return math.inf  # the relative score does not decay: no width stands out
        if slope == "relative":
            return float(threshold ** (1.0 / (self.gamma - 1.0)))
        if slope == "absolute":
            return float((threshold / abs(self.beta * self.gamma)) ** (1.0 / (self.gamma - 1.0)))
        raise ConfigError(f"slope must be 'relative' or 'absolute', not {slope!r}")


def fit_power_law(widths: Sequence[float], relative_scores: Sequence[float]) -> PowerLaw:
    """Fit f(s) = α + β·s^γ to the points, with (1, 1) prepended."""
    from scipy.optimize import curve_fit  # imported here, as only this command needs it

    s = np.concatenate([[1.0], np.asarray(widths, dtype=float)])
    y = np.concatenate([[1.0], np.asarray(relative_scores, dtype=float)])
    if len(s) < 4:
        raise ConfigError("the power-law fit needs at least 3 widths")
    try:
        (a, b, g), _ = curve_fit(lambda x, a, b, g: a + b * np.power(x, g), s, y, p0=(0.0, 1.0, -0.5), maxfev=20000)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"the power law could not be fitted to the relative scores: {e}") from e
    resid = y - (a + b * np.power(s, g))
    r2 = 1.0 - float((resid**2).sum()) / max(float(((y - y.mean()) ** 2).sum()), 1e-300)
    return PowerLaw(float(a), float(b), float(g), r2)


@dataclass(frozen=True)
class WidthEstimate:
    """The candidates' scores, the fitted power law and the estimated width."""

    widths: tuple[int, ...]
    layer_scores: tuple[float, ...]  # the layer's own NEAR score at each width
    relative_scores: tuple[float, ...]
    fit: PowerLaw
    threshold: float
    slope: str
    estimate: float  # inf when the relative score does not decay
    other: float  # the estimate under the other slope reading

    def to_dict(self) -> dict[str, object]:
        return {
            "schema_version": 1,
            "widths": list(self.widths),
            "layer_scores": list(self.layer_scores),
            "relative_scores": list(self.relative_scores),
            "fit": {"alpha": self.fit.alpha, "beta": self.fit.beta, "gamma": self.fit.gamma, "r2": self.fit.r2},
            "threshold": self.threshold,
            "slope": self.slope,
            "estimate": None if math.isinf(self.estimate) else self.estimate,
            "estimate_width": None if math.isinf(self.estimate) else math.ceil(self.estimate),
            "estimate_other_slope": None if math.isinf(self.other) else self.other,
        }


def build_mlp(
    inputs: int, hidden: Sequence[int], outputs: int, activation: str = "relu", opset: int = 17
) -> onnx.ModelProto:
    """An MLP ``inputs → hidden… → outputs`` as an ONNX graph (Gemm layers, weights to be drawn)."""
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    x = "input"
    sizes = [inputs, *hidden, outputs]
    for k in range(len(sizes) - 1):
        w, b, z = f"layer{k + 1}.weight", f"layer{k + 1}.bias", f"layer{k + 1}"
        inits += [
            numpy_helper.from_array(np.zeros((sizes[k + 1], sizes[k]), np.float32), w),
            numpy_helper.from_array(np.zeros(sizes[k + 1], np.float32), b),
        ]
        nodes.append(helper.make_node("Gemm", [x, w, b], [z], name=f"layer{k + 1}", transB=1))
        x = z
        if k < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [z], [f"act{k + 1}"], name=f"act{k + 1}"))
            x = f"act{k + 1}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", inputs])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", outputs])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    return swap_activations(model, activation) if activation != "relu" else model


def layer_score(result_layers: Sequence[LayerScore], layer: int) -> float:
    """NEAR of hidden layer ``layer`` (1-based) of :func:`build_mlp`'s MLPs: the mean effective
    rank of its pre-activation (tensor ``layerK``) and post-activation (tensor ``actK``)
    matrices — a mean, not a sum, so that a one-neuron layer scores 1 and the prepended
    point (1, 1) of the fit is consistent with the others."""
    tensors = {f"layer{layer}", f"act{layer}"}
    picked = [l.erank for l in result_layers if l.tensor in tensors]
    if not picked:
        raise ConfigError(f"hidden layer {layer} has no taps")
    return float(np.mean(picked))


def estimate_width(
    data: DataArg,
    inputs: int,
    outputs: int,
    widths: Sequence[int],
    hidden_layer: int = 1,
    fixed: Sequence[int] = (),
    activation: str = "relu",
    threshold: float = 0.005,
    slope: str = "relative",
    init: str = "pytorch-default",
    config: ScoreConfig | None = None,
    workdir: str | os.PathLike[str] | None = None,
) -> WidthEstimate:
    """Score layer ``hidden_layer`` of MLPs whose earlier hidden layers have the ``fixed`` widths
    and whose layer ``hidden_layer`` takes each candidate width; fit and estimate (SPEC §6)."""
    if activation not in CANDIDATES:
        raise ConfigError(f"unknown activation {activation!r}; expected one of {', '.join(CANDIDATES)}")
    if hidden_layer != len(fixed) + 1:
        raise ConfigError(
            f"--hidden-layer {hidden_layer} needs the widths of the {hidden_layer - 1} layer(s) before it (--fixed)"
        )
    ws = sorted(set(int(w) for w in widths))
    if len(ws) < 3 or ws[0] < 1:
        raise ConfigError("give at least 3 distinct positive widths")
    if not 0 < threshold < 1:
        raise ConfigError(f"threshold must lie between 0 and 1, not {threshold}")
    cfg = replace(config or ScoreConfig(batchnorm="batch"), reinit=init)
    import tempfile

    scores: list[float] = []
    with tempfile.TemporaryDirectory(prefix="onnx-near-width-", dir=workdir) as tmp:
        for w in ws:
            model = build_mlp(inputs, [*fixed, w], outputs, activation)
            model = reinitialize(model, init, np.random.default_rng(cfg.seed))
            path = Path(tmp) / f"mlp_{w}.onnx"
            onnx.save(model, str(path))
            try:
                result = score(path, data=data, config=cfg)
            except InputDataError as e:
                raise InputDataError(f"the data does not fit an MLP with {inputs} inputs: {e}") from e
            scores.append(layer_score(result.layers, hidden_layer))
    return _estimate(ws, scores, threshold, slope)


def estimate_from_models(
    models: Sequence[tuple[str, int]],
    data: DataArg,
    layer: int,
    threshold: float = 0.005,
    slope: str = "relative",
    config: ScoreConfig | None = None,
) -> WidthEstimate:
    """The same estimate from the user's own models: (path, width of the layer) pairs.

    The layer score is the mean effective rank of the ``layer``-th weighted layer's output
    (1-based, in graph order) and of the activation right after it.
    """
    cfg = config or ScoreConfig(batchnorm="batch")
    pairs = sorted(models, key=lambda m: m[1])
    scores = []
    for path, _ in pairs:
        result = score(path, data=data, config=cfg)
        pre = [l for l in result.layers if "pre" in l.role]
        if len(pre) < layer:
            raise ConfigError(
                f"{Path(path).name!r} has {len(pre)} weighted layer(s), fewer than --hidden-layer {layer}"
            )
        target = pre[layer - 1]
        after = [l for l in result.layers if l.index == target.index + 1 and l.role == "post"]
        scores.append(float(np.mean([target.erank, *(l.erank for l in after)])))
    return _estimate([w for _, w in pairs], scores, threshold, slope)


def _estimate(widths: Sequence[int], scores: Sequence[float], threshold: float, slope: str) -> WidthEstimate:
    rel = [s / w for s, w in zip(scores, widths)]
    fit = fit_power_law(widths, rel)
    other = "absolute" if slope == "relative" else "relative"
    return WidthEstimate(
        tuple(widths),
        tuple(scores),
        tuple(rel),
        fit,
        threshold,
        slope,
        fit.estimate(threshold, slope),
        fit.estimate(threshold, other),
    )


def width_table(e: WidthEstimate) -> str:
    """The candidates' layer scores, the fit and the estimated width."""
    rows = [
        (str(w), f"{s:.3f}", f"{r:.4f}", f"{float(e.fit(w)):.4f}")
        for w, s, r in zip(e.widths, e.layer_scores, e.relative_scores)
    ]
    f = e.fit
    est = (
        "none (the relative score does not decay)"
        if math.isinf(e.estimate)
        else f"{e.estimate:.1f} → width {math.ceil(e.estimate)}"
    )
    other = "none" if math.isinf(e.other) else f"{e.other:.1f}"
    return "\n".join(
        [
            grid(("width", "layer NEAR", "relative", "fit"), rows),
            "",
            f"fit f(s) = {f.alpha:.4f} + {f.beta:.4f}·s^{f.gamma:.4f}  (R² {f.r2:.4f}, with (1, 1) prepended)",
            f"estimated width ({e.slope} slope threshold {e.threshold:g}): {est}",
            f"with the {'absolute' if e.slope == 'relative' else 'relative'} slope reading: {other}",
        ]
    )
