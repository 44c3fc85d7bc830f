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

:func:`estimate_width` builds the MLPs a :class:`WidthSearch` describes and scores them as
they are held in memory; :func:`estimate_from_models` scores the user's own models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, overload

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .config import ScoreConfig
from .errors import ConfigError, InputDataError
from .inputs import DataArg
from .model_source import InMemoryModel, ModelSource, display_name
from .reinit import check_scheme, reinitialize
from .report import LayerScore, grid
from .score import make_config, score
from .variants import check_activation, swap_activations

SLOPES = ("relative", "absolute")


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
        _check_fit(threshold, slope)
        if slope == "relative":
            return float(threshold ** (1.0 / (self.gamma - 1.0)))
        return float((threshold / abs(self.beta * self.gamma)) ** (1.0 / (self.gamma - 1.0)))


def _check_fit(threshold: float, slope: str) -> None:
    """The estimate's threshold lies in (0, 1) and its slope is read one of :data:`SLOPES`'s ways."""
    if slope not in SLOPES:
        raise ConfigError(f"slope must be 'relative' or 'absolute', not {slope!r}")
    if not 0 < threshold < 1:
        raise ConfigError(f"threshold must lie between 0 and 1, not {threshold}")


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


@dataclass(frozen=True)
class WidthSearch:
    """What :func:`estimate_width` builds, scores and fits: for each candidate width w, an MLP
    ``inputs → fixed… → w → …`` whose hidden layer ``hidden_layer`` (1-based) has width w,
    its weights drawn by ``init``; the layer's scores are fitted and the width estimated where
    the fitted slope falls to ``threshold`` (read as ``slope``: "relative" or "absolute").

    ``widths`` are kept sorted, each once; every field is checked as the search is made
    (:class:`ConfigError`).  ``fixed``: the widths of the hidden layers before ``hidden_layer``.
    """

    inputs: int
    outputs: int
    widths: tuple[int, ...]
    hidden_layer: int = 1
    fixed: tuple[int, ...] = ()
    activation: str = "relu"
    threshold: float = 0.005
    slope: str = "relative"
    init: str = "pytorch-default"

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(sorted({int(w) for w in self.widths})))
        object.__setattr__(self, "fixed", tuple(int(w) for w in self.fixed))
        check_activation(self.activation)
        if self.hidden_layer != len(self.fixed) + 1:
            raise ConfigError(
                f"--hidden-layer {self.hidden_layer} needs the widths of the {self.hidden_layer - 1} layer(s) "
                "before it (--fixed)"
            )
        if len(self.widths) < 3 or self.widths[0] < 1:
            raise ConfigError("give at least 3 distinct positive widths")
        _check_fit(self.threshold, self.slope)
        check_scheme(self.init)


# The fields of the older call, estimate_width(data, inputs, outputs, widths, …, config), in order.
_OLD_CALL = (
    "inputs",
    "outputs",
    "widths",
    "hidden_layer",
    "fixed",
    "activation",
    "threshold",
    "slope",
    "init",
    "config",
)


@overload
def estimate_width(
    data: DataArg, search: WidthSearch, config: ScoreConfig | None = None, **options: Any
) -> WidthEstimate: ...


@overload
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
) -> WidthEstimate: ...


def estimate_width(data: DataArg, *args: Any, **kwargs: Any) -> WidthEstimate:
    """Score layer ``search.hidden_layer`` of the MLPs of ``search`` (a :class:`WidthSearch`),
    one per candidate width, each scored as it is held in memory; fit and estimate (SPEC §6).

    ``config`` and the keyword ``options`` (fields of :class:`ScoreConfig`, applied on top
    of it: ``device``, ``threads``, ``max_memory``, ``seed``, …) set how every MLP is scored;
    without ``config``, BatchNorms use the batch's statistics.

    The older call, ``estimate_width(data, inputs, outputs, widths, hidden_layer=1, fixed=(),
    activation="relu", threshold=0.005, slope="relative", init="pytorch-default",
    config=None)``, gives the same: its arguments are the search's fields.
    """
    if "search" in kwargs or (args and isinstance(args[0], WidthSearch)):
        search, rest = (kwargs.pop("search"), args) if "search" in kwargs else (args[0], args[1:])
        if not isinstance(search, WidthSearch) or len(rest) > 1:
            raise TypeError("estimate_width takes (data, search: WidthSearch, config=None, **options)")
        config = rest[0] if rest else kwargs.pop("config", None)
        return _estimate_width(data, search, config, kwargs)
    if len(args) > len(_OLD_CALL):
        raise TypeError(f"estimate_width takes at most {len(_OLD_CALL) + 1} positional arguments")
    given = dict(zip(_OLD_CALL, args))
    for name in _OLD_CALL:
        if name in kwargs:
            if name in given:
                raise TypeError(f"estimate_width got multiple values for argument {name!r}")
            given[name] = kwargs.pop(name)
    config = given.pop("config", None)
    for name in ("widths", "fixed"):
        if name in given:
            given[name] = tuple(given[name])
    return _estimate_width(data, WidthSearch(**given), config, kwargs)


def _estimate_width(
    data: DataArg, search: WidthSearch, config: ScoreConfig | None, options: dict[str, Any]
) -> WidthEstimate:
    cfg = replace(make_config(config or ScoreConfig(batchnorm="batch"), **options), reinit=search.init)
    scores: list[float] = []
    for w in search.widths:
        sizes = [search.inputs, *search.fixed, w, search.outputs]
        model = build_mlp(search.inputs, sizes[1:-1], search.outputs, search.activation)
        model = reinitialize(model, search.init, np.random.default_rng(cfg.seed))
        try:
            result = score(InMemoryModel(model, name=f"MLP {'-'.join(map(str, sizes))}"), data=data, config=cfg)
        except InputDataError as e:
            raise InputDataError(f"the data does not fit an MLP with {search.inputs} inputs: {e}") from e
        scores.append(layer_score(result.layers, search.hidden_layer))
    return _estimate(search.widths, scores, search.threshold, search.slope)


def estimate_from_models(
    models: Sequence[tuple[ModelSource, int]],
    data: DataArg,
    layer: int,
    threshold: float = 0.005,
    slope: str = "relative",
    config: ScoreConfig | None = None,
    **options: Any,
) -> WidthEstimate:
    """The same estimate from the user's own models: (model, width of the layer) pairs, each
    model a file or a model held in memory (as for :func:`onnx_near.score`).

    The layer score is the mean effective rank of the ``layer``-th weighted layer's output
    (1-based, in graph order) and of the activation right after it.  ``config`` and
    ``options`` as for :func:`estimate_width`.
    """
    _check_fit(threshold, slope)
    cfg = make_config(config or ScoreConfig(batchnorm="batch"), **options)
    pairs = sorted(models, key=lambda m: m[1])
    scores = []
    for model, _ in pairs:
        result = score(model, data=data, config=cfg)
        pre = [l for l in result.layers if "pre" in l.role]
        if len(pre) < layer:
            raise ConfigError(
                f"{display_name(model)!r} has {len(pre)} weighted layer(s), fewer than --hidden-layer {layer}"
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
