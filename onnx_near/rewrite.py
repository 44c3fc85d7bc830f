"""Stage 2, rewrite: turn the loaded graph into one whose outputs are the taps.

Small passes, applied in order by :func:`prepare`; each returns a new model and leaves
its input untouched (the file on disk is never modified):

1. :func:`inline_functions` — model-local functions are inlined, so layers that exporters
   wrap in functions (the dynamo exporter does) become visible nodes.
2. :func:`~onnx_near.defuse.defuse_contrib_ops` — onnxruntime's fused ops (FusedConv,
   FusedGemm, BiasGelu, SkipLayerNormalization…) are split back into standard ops, so the
   pre-activations they hid exist again.
3. :func:`infer_shapes` — element types and shapes are attached to intermediate tensors.
4. :func:`expose_taps` — every tap becomes a graph output, after the model's own outputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping

import onnx
import onnx.inliner
import onnx.shape_inference

from .defuse import defuse_contrib_ops
from .errors import GraphError, NoTapsError
from .graph import GraphIndex, without_weights
from .load import LoadedModel
from .taps import Tap, TapPlan, plan_taps

log = logging.getLogger(__name__)


def inline_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Afterwards: no node of the main graph calls a model-local function.

    Before: ``x → [local function Block: Gemm → Relu] → y``; after: ``x → Gemm → Relu → y``.
    """
    if not model.functions:
        return model
    try:
        return onnx.inliner.inline_local_functions(model)
    except Exception as e:  # onnx raises plain RuntimeError/ValueError here
        raise GraphError(f"the model's local functions could not be inlined: {_first_line(e)}") from e


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Afterwards: intermediate tensors carry the types and shapes onnx can infer.

    Inference is best effort: when it fails (unknown ops, exporter quirks), the model is
    returned with whatever value_info it had and scoring goes on — the runtime reports
    the real shapes anyway.
    """
    try:
        inferred = onnx.shape_inference.infer_shapes(without_weights(model), strict_mode=False, data_prop=True)
    except Exception as e:
        log.info("shape inference failed (%s); going on without inferred shapes", _first_line(e))
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.value_info[:]
    out.graph.value_info.extend(inferred.graph.value_info)
    return out


def expose_taps(model: onnx.ModelProto, taps: tuple[Tap, ...], in_place: bool = False) -> onnx.ModelProto:
    """Afterwards: every tap tensor is a graph output; the model's own outputs come first.

    The added outputs declare their element type only (never a shape, which could
    conflict with what the runtime computes).  ``in_place`` adds them to ``model`` itself
    instead of a copy (saving a copy of the weights when the caller owns the model).
    """
    if in_place:
        out = model
    else:
        out = onnx.ModelProto()
        out.CopyFrom(model)
    present = {o.name for o in out.graph.output}
    for tap in taps:
        if tap.tensor in present:
            continue
        vi = out.graph.output.add()
        vi.name = tap.tensor
        if tap.elem_type:
            vi.type.tensor_type.elem_type = tap.elem_type
        present.add(tap.tensor)
    return out


@dataclass(frozen=True)
class PreparedModel:
    """A model ready to run: taps exposed as outputs, and the plan that names them."""

    model: onnx.ModelProto
    plan: TapPlan
    index: GraphIndex  # index of the model before the taps were exposed


def analyse(
    loaded: LoadedModel, mode: str = "all", axes: Mapping[str, int] | None = None
) -> tuple[onnx.ModelProto, GraphIndex, TapPlan]:
    """Inline and infer shapes, then find the taps (no runtime needed)."""
    model = infer_shapes(defuse_contrib_ops(inline_functions(loaded.proto)))
    index = GraphIndex(model)
    return model, index, plan_taps(index, mode, axes)


def prepare(loaded: LoadedModel, mode: str = "all", axes: Mapping[str, int] | None = None) -> PreparedModel:
    """Run the rewrite passes; raise :class:`NoTapsError` when nothing can be scored."""
    model, index, plan = analyse(loaded, mode, axes)
    if not plan.taps:
        what = (
            "activation"
            if mode == "activations"
            else "weighted layer (Conv, Gemm, MatMul with constant weights, normalisation) and no activation"
        )
        raise NoTapsError(f"{loaded.path.name!r} has no {what}: there is nothing to score")
    # The analysed model is a copy the rewrite owns (unless every pass was a no-op): extend it.
    return PreparedModel(expose_taps(model, plan.taps, in_place=model is not loaded.proto), plan, index)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
