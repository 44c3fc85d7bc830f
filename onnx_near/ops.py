"""The op families, in one place: every stage that asks "what kind of op is this?" reads here.

* **weighted layers** apply learned weights: their outputs are NEAR's ``pre`` taps (taps),
  their weights are re-drawn by ``--reinit`` (reinit), their multiply-accumulates are the
  MAC baseline (cost), their weights' shapes bound the rank of their outputs (taps);
* **activations** are elementwise non-linearities: their outputs are ``post`` taps; the
  **bounded** ones among them are where vet measures saturation;
* **layouts**: which ops put the features on axis 1 (channels) or on the last axis;
* what cannot be tapped: control flow (tensors inside bodies are not graph tensors) and
  quantised layers (integer outputs).

Op types are of the default ONNX domain unless a set's name says ``CONTRIB`` (onnxruntime's
``com.microsoft`` domain, :data:`MS`).
"""

from __future__ import annotations

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

# --- what is not tapped ----------------------------------------------------------------------
CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})
# Quantised weighted ops: their integer outputs are not scored.
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
