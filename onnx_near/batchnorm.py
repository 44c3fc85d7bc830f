"""Rewrite pass: every BatchNormalization normalises with the statistics of the batch it is fed.

An exported graph holds BatchNorm's inference form, ``y = (x − running_mean) /
√(running_var + ε) · scale + bias``.  An untrained network's running statistics are mean 0
and variance 1, so each BatchNorm is almost the identity; the NEAR authors' code never calls
``model.eval()``, so their BatchNorms normalise every channel with the mean and variance of
the batch being fed, as PyTorch's training-mode BatchNorm does.  :func:`batch_statistics`
gives the graph that form (``--batchnorm batch``)::

    before:  x ─ BatchNormalization(scale, bias, mean, var, ε) ─ y
    after:   x ─ Reshape(N, C, −1) ─ x3 ─ ReduceMean(axes 0, 2) ─ μ
             d = x3 − μ;  σ² = ReduceMean(d·d, axes 0, 2)          (the biased variance)
             y = Reshape(d / √(σ² + ε) · scale + bias, Shape(x))   (scale, bias per channel)

so that, afterwards, the graph has no inference-form BatchNormalization left: each one's
output tensor (same name, same shape) holds, per channel, ``(x − mean) / √(var + ε) ·
scale + bias`` with the mean and the biased variance taken over the batch and every spatial
position — axis 0 and axes 2… of an (N, C, …) tensor, axis 0 of an (N, C) one — and ε the
node's own.  That is the output of ``torch.nn.BatchNorm*d`` in training mode (whose running
statistics it would update; here they are simply not read).  The statistics being the
batch's, the output of one sample depends on the others in its forward pass: the batch is
part of the score's definition (``--bn-batch``, :mod:`onnx_near.plan`).

Left as they are: nodes already in training mode (``training_mode=1``), the per-activation
form of the first opsets (``spatial=0``) and nodes outside the default domain.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graph import GraphIndex, attribute

log = logging.getLogger(__name__)

_PREFIX = "onnx_near::bn::"  # every name the pass adds starts with it
DEFAULT_EPSILON = 1e-5  # BatchNormalization's default


@dataclass(frozen=True)
class BatchStatistics:
    """What :func:`batch_statistics` did: the rewritten model and the nodes it rewrote."""

    model: onnx.ModelProto
    rewritten: tuple[str, ...]  # the BatchNormalization nodes' output tensors, in graph order
    kept: tuple[str, ...] = ()  # those left in their own form (training mode, spatial=0), with why

    @property
    def modified(self) -> bool:
        return bool(self.rewritten)


def inference_batchnorms(index: GraphIndex) -> list[int]:
    """Indices of the nodes :func:`batch_statistics` rewrites: inference-form BatchNormalization."""
    return [i for i, n in enumerate(index.nodes) if _rewritable(n, index) is None]


_FLOATS = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
)


def _rewritable(n: onnx.NodeProto, index: GraphIndex) -> str | None:
    """None when ``n`` is an inference-form BatchNormalization this pass rewrites, else why not
    (an empty string for a node that is not a BatchNormalization at all)."""
    if n.op_type != "BatchNormalization" or n.domain not in ("", "ai.onnx"):
        return ""
    if attribute(n, "training_mode", 0):
        return "it is already in training mode"
    if not attribute(n, "spatial", 1):
        return "it normalises per activation (spatial=0), not per channel"
    if len(n.input) < 5 or not n.output or not n.output[0]:
        return "it does not have the five inputs and the output of BatchNormalization"
    if _elem_type(index, n.input[0], n.input[1]) not in _FLOATS:  # a broken file: onnxruntime refuses it
        return "its input is not a floating-point tensor"
    return None


def batch_statistics(model: onnx.ModelProto) -> BatchStatistics:
    """``model`` (a copy; the input is left untouched) with every inference-form
    BatchNormalization normalising with the statistics of the batch being fed (see the
    module docstring for what holds afterwards).  A model without one is returned as it is."""
    index = GraphIndex(model)
    targets = set(inference_batchnorms(index))
    kept = []
    for n in index.nodes:
        why = _rewritable(n, index)
        if why:
            kept.append(f"{n.name or n.output[0]!r}: {why}")
            log.info("BatchNormalization %r keeps its own statistics: %s", n.name or n.output[0], why)
    if not targets:
        return BatchStatistics(model, (), tuple(kept))
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    opset = next((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), 1)
    nodes = list(g.node)
    del g.node[:]
    shape3 = _PREFIX + "shape_n_c_rest"
    shape_c = _PREFIX + "shape_1_c_1"
    g.initializer.append(numpy_helper.from_array(np.array([0, 0, -1], dtype=np.int64), shape3))
    g.initializer.append(numpy_helper.from_array(np.array([1, -1, 1], dtype=np.int64), shape_c))
    axes = _PREFIX + "axes_0_2"
    if opset >= 18:  # ReduceMean takes its axes as an input from opset 18 on
        g.initializer.append(numpy_helper.from_array(np.array([0, 2], dtype=np.int64), axes))
    rewritten = []
    for i, n in enumerate(nodes):
        if i not in targets:
            g.node.append(n)
            continue
        p = f"{_PREFIX}{i}::"
        x, scale, bias = n.input[0], n.input[1], n.input[2]
        y = n.output[0]
        elem = _elem_type(index, x, scale)
        eps = p + "epsilon"
        g.initializer.append(
            numpy_helper.from_array(
                np.array(attribute(n, "epsilon", DEFAULT_EPSILON), dtype=helper.tensor_dtype_to_np_dtype(elem)), eps
            )
        )

        def reduce_mean(src: str, dst: str, name: str) -> onnx.NodeProto:
            if opset >= 18:
                return helper.make_node("ReduceMean", [src, axes], [dst], keepdims=1, name=name)
            return helper.make_node("ReduceMean", [src], [dst], axes=[0, 2], keepdims=1, name=name)

        added = [
            helper.make_node("Shape", [x], [p + "shape"], name=p + "Shape"),
            helper.make_node("Reshape", [x, shape3], [p + "x3"], name=p + "Reshape"),
            reduce_mean(p + "x3", p + "mean", p + "Mean"),
            helper.make_node("Sub", [p + "x3", p + "mean"], [p + "centred"], name=p + "Centre"),
            helper.make_node("Mul", [p + "centred", p + "centred"], [p + "squared"], name=p + "Square"),
            reduce_mean(p + "squared", p + "var", p + "Variance"),
            helper.make_node("Add", [p + "var", eps], [p + "var_eps"], name=p + "AddEpsilon"),
            helper.make_node("Sqrt", [p + "var_eps"], [p + "std"], name=p + "Sqrt"),
            helper.make_node("Div", [p + "centred", p + "std"], [p + "normalised"], name=p + "Normalise"),
        ]
        for role, src in (("scale", scale), ("bias", bias)):
            src3 = p + role + "3"
            if _elem_type(index, src, src) != elem:  # opset 15 lets scale and bias have their own type
                added.append(helper.make_node("Cast", [src], [p + role + "_cast"], to=elem, name=p + "Cast" + role))
                src = p + role + "_cast"
            added.append(helper.make_node("Reshape", [src, shape_c], [src3], name=p + "Reshape" + role))
        added += [
            helper.make_node("Mul", [p + "normalised", p + "scale3"], [p + "scaled"], name=p + "Scale"),
            helper.make_node("Add", [p + "scaled", p + "bias3"], [p + "y3"], name=p + "Bias"),
            helper.make_node("Reshape", [p + "y3", p + "shape"], [y], name=n.name or p + "Reshape_back"),
        ]
        g.node.extend(added)
        rewritten.append(y)
    return BatchStatistics(out, tuple(rewritten), tuple(kept))


def _elem_type(index: GraphIndex, name: str, fallback: str) -> int:
    """The element type of ``name`` (else of ``fallback``, an initializer such as the scale);
    float when neither is known."""
    for n in (name, fallback):
        t = index.elem_type(n)
        if t:
            return t
        if n in index.initializers:
            return index.initializers[n].data_type
    return onnx.TensorProto.FLOAT


def folded_batchnorm_hint(index: GraphIndex) -> str | None:
    """The warning for a model scored with batch statistics that has no BatchNormalization
    left, though it has convolutions — as an exporter leaves a network whose BatchNorms it
    folded into the convolutions (``torch.onnx.export`` in eval mode, constant folding on).
    "Likely" when a convolution has an all-zero constant bias: what folding an untrained
    BatchNorm (mean 0, variance 1, bias 0) into a convolution without bias leaves.
    None when the model has a BatchNormalization, or no convolution."""
    if any(n.op_type == "BatchNormalization" for n in index.nodes):
        return None
    convs = [n for n in index.nodes if n.op_type in ("Conv", "ConvTranspose")]
    if not convs:
        return None
    zero_bias = False
    for n in convs:
        if len(n.input) > 2 and n.input[2]:
            held = index.weight(n.input[2])
            b = numpy_helper.to_array(held[1]) if held is not None else None
            zero_bias = zero_bias or (b is not None and b.size > 0 and not np.any(b))
    how = (
        "export it with BatchNorm kept — torch.onnx.export(model.eval(), ..., "
        "training=torch.onnx.TrainingMode.PRESERVE) or do_constant_folding=False"
    )
    if zero_bias:
        return (
            "--batchnorm batch: the model has no BatchNormalization left, and a convolution with an all-zero bias "
            "looks like one an untrained BatchNorm was folded into, so batch statistics change nothing; "
            f"if it had BatchNorms, {how}"
        )
    return (
        "--batchnorm batch: the model has convolutions and no BatchNormalization, so batch statistics change "
        f"nothing; if its BatchNorms were folded into the convolutions at export, {how}"
    )


__all__ = ["BatchStatistics", "batch_statistics", "folded_batchnorm_hint", "inference_batchnorms"]
