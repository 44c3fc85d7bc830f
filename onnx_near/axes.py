"""Feature axes (SPEC §3): channels (axis 1) for tensors that come from convolutions and
channel-wise ops, the last axis for dense and sequence tensors, followed through elementwise
ops and Transposes (the NHWC layouts of tf2onnx and jax2onnx).
"""

from __future__ import annotations

from typing import Mapping

import onnx

from .graph import GraphIndex, attribute
from .ops import CHANNEL_OPS, LAST_AXIS_OPS


def feature_axes(index: GraphIndex) -> dict[str, tuple[int, str]]:
    """Feature axis of every tensor of the main graph, with the reason it was chosen.

    Propagated in topological order: channel-wise ops (Conv, BatchNorm, pooling…) put the
    features on axis 1; dense ops (Gemm, MatMul, LayerNorm, Flatten…) on the last axis;
    elementwise ops keep the axis of their first non-constant input; Transpose moves it.
    """
    axes: dict[str, tuple[int, str]] = {}
    for i, n in enumerate(index.nodes):
        if not n.output:
            continue
        label = index.label(i)
        n.output[0]
        if n.op_type in CHANNEL_OPS:
            value = (1, f"{n.op_type} output: channels on axis 1")
        elif n.op_type in LAST_AXIS_OPS:
            value = (-1, f"{n.op_type} output: features on the last axis")
        elif n.op_type == "Transpose":
            value = _through_transpose(index, n, axes, label)
        else:
            src = next((axes[x] for x in n.input if x in axes and not index.is_const(x)), None)
            if src is None:
                continue
            value = src
        for o in n.output:
            if o:
                axes[o] = value
    return axes


def _through_transpose(
    index: GraphIndex, n: onnx.NodeProto, axes: Mapping[str, tuple[int, str]], label: str
) -> tuple[int, str]:
    src = axes.get(n.input[0])
    perm = list(attribute(n, "perm") or [])
    rank = index.rank(n.input[0])
    if src is None or not perm:
        return (-1, "after a Transpose of unknown layout: last axis assumed")
    a = src[0] if src[0] >= 0 or rank is None else src[0] + rank
    if a < 0:
        a = len(perm) + a
    if a not in perm:  # a perm that does not fit the tensor: the runtime will say more
        return (-1, f"Transpose {label} has a perm that does not fit: last axis assumed")
    new = perm.index(a)
    return (new, f"Transpose {label} moved the features to axis {new}")
