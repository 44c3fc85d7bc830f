"""The op families, in one place: every stage that asks "what kind of op is this?" reads here.

* **weighted layers** apply learned weights: their outputs are NEAR's ``pre`` taps (taps),
  their weights are re-drawn by ``--reinit`` (reinit), their multiply-accumulates are the
  MAC baseline (cost), their weights' shapes bound the rank of their outputs (taps);
* **activations** are elementwise non-linearities: their outputs are ``post`` taps; the
  **bounded** ones among them are where vet measures saturation;
* **layouts**: which ops put the features on axis 1 (channels) or on the last axis;
* **quantised graphs**: the QOperator ops and the float ops they stand for, the ops run on
  integers as they are, where a quantiser folds a ReLU into a range (dequantise);
* what cannot be tapped: control flow (tensors inside bodies are not graph tensors) and
  quantised layers whose integer output has no float value to stand for it.

Op types are of the default ONNX domain unless a set's name says ``CONTRIB`` (onnxruntime's
``com.microsoft`` domain, :data:`MS`).
"""

from __future__ import annotations

from typing import NamedTuple

MS = "com.microsoft"

# --- weighted layers -------------------------------------------------------------------------
CONVOLUTIONS = frozenset({"Conv", "ConvTranspose"})
# Dense products: MatMul is a layer only when one operand is a weight (a constant).
MATMULS = frozenset({("", "MatMul"), (MS, "FusedMatMul")})
NORMALISATIONS = frozenset(
    {
        "BatchNormalization",
        "LayerNormalization",
        "GroupNormalization",
        "InstanceNormalization",
        "RMSNormalization",
    }
)
# Ops whose output is a weighted layer's output (MatMul aside: it needs a constant operand).
WEIGHTED = CONVOLUTIONS | {"Gemm"} | NORMALISATIONS | {"SimplifiedLayerNormalization"}
# onnxruntime's normalisations, when the de-fuse pass leaves them whole.
CONTRIB_WEIGHTED = frozenset(
    {"SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization"}
)
# Ops whose multiply-accumulates are counted (per sample) as the MAC baseline.
MAC_OPS = CONVOLUTIONS | {"Gemm", "MatMul", "FusedMatMul"}

# --- activations -----------------------------------------------------------------------------
NATIVE_ACTIVATIONS = frozenset(
    {
        "Relu",
        "LeakyRelu",
        "PRelu",
        "Elu",
        "Selu",
        "Celu",
        "Sigmoid",
        "HardSigmoid",
        "Tanh",
        "Softplus",
        "Softsign",
        "HardSwish",
        "Mish",
        "Gelu",
        "ThresholdedRelu",
    }
)
CONTRIB_ACTIVATIONS = frozenset({"Gelu", "FastGelu", "BiasGelu", "QuickGelu"})
# onnxruntime's layers with an activation fused in (its ``activation`` attribute).
FUSED_WITH_ACTIVATION = frozenset({"FusedConv", "FusedGemm"})
# Bounded activations by tap kind, with their (low, high) range: vet's saturation statistic.
BOUNDED = {"Tanh": (-1.0, 1.0), "Softsign": (-1.0, 1.0), "Sigmoid": (0.0, 1.0), "HardSigmoid": (0.0, 1.0)}

# --- layouts ---------------------------------------------------------------------------------
# Ops whose output has its features on axis 1 (N × C × spatial…).
CHANNEL_OPS = frozenset(
    {
        "Conv",
        "ConvTranspose",
        "BatchNormalization",
        "InstanceNormalization",
        "GroupNormalization",
        "MaxPool",
        "AveragePool",
        "LpPool",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "GlobalLpPool",
        "LRN",
        "FusedConv",
        "QLinearConv",
        "ConvInteger",
        "DepthToSpace",
        "SpaceToDepth",
        "Resize",
        "Upsample",
        "MaxUnpool",
        "RoiAlign",
    }
)
# Ops whose output has its features on the last axis.
LAST_AXIS_OPS = frozenset(
    {
        "Gemm",
        "MatMul",
        "FusedGemm",
        "FusedMatMul",
        "LayerNormalization",
        "Flatten",
        "Reshape",
        "Gather",
        "Einsum",
        "SkipLayerNormalization",
        "SkipSimplifiedLayerNormalization",
        "SimplifiedLayerNormalization",
        "RMSNormalization",
        "Attention",
        "MultiHeadAttention",
    }
)


# --- quantised graphs ------------------------------------------------------------------------
class QLinear(NamedTuple):
    """A QOperator op read as the float op it stands for: dequantise its operands, run
    ``float_op``, quantise the result with the output's scale and zero point."""

    float_op: str
    operands: tuple[int, ...]  # input positions of the operands (data, weight), in the float op's order
    bias: int | None  # input position of the int32 bias (scale x_scale·w_scale), the float op's third input
    output: tuple[int, int]  # input positions of the output's scale and zero point
    attributes: frozenset[str] = frozenset()  # attributes the float op takes as they are


_CONV_ATTRIBUTES = frozenset({"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"})
_POOL_ATTRIBUTES = frozenset({"auto_pad", "ceil_mode", "count_include_pad", "kernel_shape", "pads", "strides"})
# onnxruntime's quantiser (QuantFormat.QOperator) writes these, keyed by (domain, op type); the
# input positions are those of the ONNX and com.microsoft schemas.  QGemm without a y_scale has a
# float output.  The com.microsoft ops with channels_last=1 (NHWC) are not read this way.
QOPERATOR: dict[tuple[str, str], QLinear] = {
    ("", "QLinearConv"): QLinear("Conv", (0, 3), 8, (6, 7), _CONV_ATTRIBUTES),
    (MS, "QLinearConv"): QLinear("Conv", (0, 3), 8, (6, 7), _CONV_ATTRIBUTES),
    ("", "QLinearMatMul"): QLinear("MatMul", (0, 3), None, (6, 7)),
    (MS, "QGemm"): QLinear("Gemm", (0, 3), 6, (7, 8), frozenset({"alpha", "transA", "transB"})),
    (MS, "QLinearAdd"): QLinear("Add", (0, 3), None, (6, 7)),
    (MS, "QLinearMul"): QLinear("Mul", (0, 3), None, (6, 7)),
    (MS, "QLinearSigmoid"): QLinear("Sigmoid", (0,), None, (3, 4)),
    (MS, "QLinearLeakyRelu"): QLinear("LeakyRelu", (0,), None, (3, 4), frozenset({"alpha"})),
    (MS, "QLinearSoftmax"): QLinear("Softmax", (0,), None, (3, 4), frozenset({"axis"})),
    (MS, "QLinearGlobalAveragePool"): QLinear("GlobalAveragePool", (0,), None, (3, 4)),
    (MS, "QLinearAveragePool"): QLinear("AveragePool", (0,), None, (3, 4), _POOL_ATTRIBUTES),
    (MS, "QLinearReduceMean"): QLinear("ReduceMean", (0,), None, (3, 4), frozenset({"axes", "keepdims"})),
}
# Dynamic quantisation: an integer product, then Cast to float and a Mul by x_scale·w_scale
# (the float value of the product); the float op each stands for.
INTEGER_PRODUCTS = {"ConvInteger": "Conv", "MatMulInteger": "MatMul"}
# onnxruntime's integer products with a float output (the scales applied inside), com.microsoft
# domain, with the input position of their bias.
FLOAT_PRODUCTS = {"MatMulIntegerToFloat": 6, "DynamicQuantizeMatMul": 4}
# Ops the quantiser runs on the integers as they are: the output has its input's scale and
# zero point (input 0).
QUANTISED_PASSTHROUGH = frozenset(
    {
        "MaxPool",
        "Reshape",
        "Transpose",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Slice",
        "Gather",
        "Split",
        "Resize",
        "Pad",
        "DepthToSpace",
        "SpaceToDepth",
        "Identity",
        "Expand",
        "Tile",
    }
)
# Ops after which onnxruntime's quantiser drops a ReLU (or a Clip(0, max)) and quantises the
# layer's output with the activation's range instead: a zero point at the integer type's
# minimum (the QDQ quantiser's QuantizeLinear; QOperator's QLinearConv, QGemm, QLinearAdd…).
# An Add only when it adds a bias vector or a residual: 1 + erf(x/√2) of a GELU is ≥ 0 as it is.
FOLDS_RELU = CONVOLUTIONS | {"Gemm", "MatMul", "Add"} | NORMALISATIONS

# --- what is not tapped ----------------------------------------------------------------------
CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})
# Quantised layers: their integer outputs are not scored where no float value stands for them
# (float_view.py gives one to every QOperator op, and to a dynamic product scaled back to float).
QUANTISED = frozenset(
    {
        "QLinearConv",
        "QLinearMatMul",
        "ConvInteger",
        "MatMulInteger",
        "QGemm",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
    }
)
# Ops whose output depends on their input's shape only, never on its values.
SHAPE_ONLY = frozenset({"Shape", "Size", "EyeLike"})
# Ops that pass a weight on unchanged in value (a weight seen through them is still a weight).
WEIGHT_PASSTHROUGH = frozenset({"Cast", "Identity", "DequantizeLinear"})


def is_default(domain: str) -> bool:
    """True for the default ONNX domain ("" or "ai.onnx")."""
    return domain in ("", "ai.onnx")


def scorable_in_body(op_type: str) -> bool:
    """True for an op inside a control-flow body that would be a tap in the main graph."""
    return op_type in WEIGHTED or op_type in NATIVE_ACTIVATIONS or op_type == "MatMul"
