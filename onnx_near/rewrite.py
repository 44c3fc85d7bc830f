"""Stage 2, rewrite: turn the loaded graph into one whose outputs are the taps.

Small passes, applied in order by :func:`prepare`; each returns a new model and leaves
its input untouched (the file on disk is never modified):

1. :func:`inline_functions` — model-local functions are inlined, so layers that exporters
   wrap in functions (the dynamo exporter does) become visible nodes.
1b. :func:`~onnx_near.branches.resolve_ifs` — an If whose condition constants (or the inputs
   fed unchanged with every batch, such as a sample rate) decide is replaced by the branch
   that runs, so the layers of that branch become main-graph nodes.
2. :func:`~onnx_near.defuse.defuse_contrib_ops` — onnxruntime's fused ops (FusedConv,
   FusedGemm, BiasGelu, SkipLayerNormalization…) are split back into standard ops, so the
   pre-activations they hid exist again.
2b. :func:`~onnx_near.dequantise.float_view` and :func:`~onnx_near.dequantise.dequantise_taps`
   — a quantised graph's taps are found on the float network it stands for, and each is the
   float value a quantised layer's output stands for (a DequantizeLinear of it is added).
3. :func:`infer_shapes` — element types and shapes are attached to intermediate tensors.
3b. :func:`~onnx_near.batchnorm.batch_statistics` (``--batchnorm batch`` only) — every
   BatchNormalization normalises with the statistics of the batch being fed, as PyTorch's
   training mode does; run after the taps are found, so each BatchNorm is still one.
4. :func:`cut_windows` — after every tap, the few standard nodes that cut out the rows its
   matrix keeps (Slice over samples, Transpose of the feature axis last, Flatten, Slice over
   rows), the window's bounds fed as runtime inputs: onnxruntime hands back blocks of rows,
   not whole feature maps, and one session serves every batch and repetition.  Each tap's
   shape is an output too (for the probe pass); a tap that cannot be cut is an output whole.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np
import onnx
import onnx.inliner
import onnx.shape_inference
from onnx import helper, numpy_helper

from .batchnorm import batch_statistics
from .branches import resolve_ifs
from .defuse import defuse_contrib_ops
from .dequantise import dequantise_taps, float_view
from .errors import GraphError, NoTapsError
from .graph import GraphIndex, without_weights
from .load import LoadedModel
from .ops import CONTROL_FLOW
from .taps import Tap, TapPlan, Untappable, plan_taps

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


# Slice with runtime starts/ends (opset 10) and Flatten with a negative axis (opset 11).
CUT_MIN_OPSET = 11
_PREFIX = "onnx_near::"  # every name the cut adds starts with it


@dataclass(frozen=True)
class Cut:
    """How one tap's rows leave the graph.

    ``output`` is what onnxruntime returns: the tap's rows ``[row_start, row_end)`` among the
    samples ``[sample_start, sample_end)`` of the batch, as a (rows × features) matrix, when
    ``bounds`` names those four int64 inputs (each of shape [1]); the whole tap tensor when
    ``bounds`` is None.  ``shape`` is an int64 output holding the tap's full shape, for a cut
    tap (a whole one shows its shape itself).
    """

    tap: str
    output: str
    shape: str | None
    bounds: tuple[str, str, str, str] | None

    @property
    def cut(self) -> bool:
        return self.bounds is not None


def cut_windows(
    model: onnx.ModelProto, taps: Sequence[Tap], in_place: bool = False
) -> tuple[onnx.ModelProto, dict[str, Cut]]:
    """Afterwards: every tap has an output — its rows' cut-out and its Shape (see :class:`Cut`),
    or the tap itself when it is not cut; the model's own outputs come first.

    A tap is cut when the model's opset has the runtime-bounded Slice and Flatten with a
    negative axis (≥ 11), its feature axis is the last one or its rank is declared (the
    Transpose needs the permutation), and it is not a plain (samples × features) matrix.  The added nodes only move and copy values: the rows are
    those of the whole tensor, bit for bit.
    """
    out = model if in_place else _copy(model)
    g = out.graph
    opset = next((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), 1)
    present = {o.name for o in g.output}
    axis0 = _PREFIX + "axis0"
    g.initializer.append(numpy_helper.from_array(np.array([0], dtype=np.int64), axis0))
    cuts: dict[str, Cut] = {}
    after: dict[str, list[onnx.NodeProto]] = {}  # nodes to insert right after each tap's producer
    for k, tap in enumerate(taps):
        if tap.tensor in cuts:
            continue
        p = f"{_PREFIX}{k}::"
        perm = _feature_last(tap) if opset >= CUT_MIN_OPSET else None
        if perm is None or _dense(tap):
            if tap.tensor not in present:
                vi = g.output.add()
                vi.name = tap.tensor
                if tap.elem_type:
                    vi.type.tensor_type.elem_type = tap.elem_type
                present.add(tap.tensor)
            cuts[tap.tensor] = Cut(tap.tensor, tap.tensor, None, None)
            continue
        shape = p + "shape"
        added = after.setdefault(tap.tensor, [])
        added.append(helper.make_node("Shape", [tap.tensor], [shape], name=p + "Shape"))
        g.output.append(helper.make_tensor_value_info(shape, onnx.TensorProto.INT64, None))
        bounds = (p + "sample_start", p + "sample_end", p + "row_start", p + "row_end")
        for b in bounds:
            g.input.append(helper.make_tensor_value_info(b, onnx.TensorProto.INT64, [1]))
        samples, moved, flat, rows = p + "samples", p + "feature_last", p + "matrix", p + "rows"
        added.append(helper.make_node("Slice", [tap.tensor, bounds[0], bounds[1], axis0], [samples], name=p + "Slice"))
        if perm:
            added.append(helper.make_node("Transpose", [samples], [moved], perm=perm, name=p + "Transpose"))
        else:
            moved = samples
        added.append(helper.make_node("Flatten", [moved], [flat], axis=-1, name=p + "Flatten"))
        added.append(helper.make_node("Slice", [flat, bounds[2], bounds[3], axis0], [rows], name=p + "Rows"))
        g.output.append(helper.make_tensor_value_info(rows, tap.elem_type or onnx.TensorProto.FLOAT, None))
        cuts[tap.tensor] = Cut(tap.tensor, rows, shape, bounds)
    # Each cut right after the node that makes its tap, so that a runtime following the node
    # order frees the tap as soon as its consumers ran (appended at the end, every tap of a
    # ResNet-50 stayed alive until the last layer: 4.5 GB at a batch of 16).
    nodes = list(g.node)
    del g.node[:]
    for n in nodes:
        g.node.append(n)
        for o in n.output:
            g.node.extend(after.pop(o, []))
    for rest in after.values():  # taps that no node makes (none in a valid plan)
        g.node.extend(rest)
    return out, cuts


def _dense(tap: Tap) -> bool:
    """A (samples × features) tap: every row of a batch is a sample's, so the whole output is
    no larger than the rows it holds, and cutting would only add nodes (small models measured
    ~2 ms slower per score with them)."""
    return tap.declared_shape is not None and len(tap.declared_shape) == 2


def _feature_last(tap: Tap) -> list[int] | None:
    """The Transpose that moves the tap's feature axis last: [] when it is already last,
    None when that cannot be known before the run (a rank the graph does not declare)."""
    rank = len(tap.declared_shape) if tap.declared_shape is not None else None
    if tap.axis == -1 or (rank is not None and tap.axis == rank - 1):
        return []
    if rank is None or not -rank <= tap.axis < rank or tap.axis % rank == 0:
        return None
    a = tap.axis % rank
    return [*(d for d in range(rank) if d != a), a]


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


@dataclass(frozen=True)
class PreparedModel:
    """A model ready to run: taps exposed as outputs, and the plan that names them."""

    model: onnx.ModelProto
    plan: TapPlan
    index: GraphIndex  # index of the model before the taps were exposed
    cuts: Mapping[str, Cut]  # per tap tensor: how its rows leave the graph


def analyse(
    loaded: LoadedModel,
    mode: str = "all",
    axes: Mapping[str, int] | None = None,
    feeds: bool = False,
    fixed: Mapping[str, np.ndarray] | None = None,
    batchnorm: str = "running",
) -> tuple[onnx.ModelProto, GraphIndex, TapPlan]:
    """Inline, decide the Ifs that constants or the inputs in ``fixed`` decide (their values:
    the inputs fed unchanged with every batch), de-fuse and infer shapes, then find the taps
    (no runtime needed); ``feeds`` plans the tensors the taps read as well (see
    :func:`~onnx_near.taps.plan_taps`).  The plan's ``untappable`` also lists the branches not
    taken, and says why the Ifs left in place were not decided.

    With ``batchnorm="batch"``, last, :func:`~onnx_near.batchnorm.batch_statistics`: every
    BatchNorm normalises with the statistics of the batch being fed.  It runs after the taps
    are found, so a BatchNorm is still a tap (its output keeps its name), and the index
    returned is of the graph before it (parameters, MACs and BatchNorms as the file has them)."""
    resolved, notes = resolve_ifs(inline_functions(loaded.proto), fixed)
    model = infer_shapes(defuse_contrib_ops(resolved))
    index = GraphIndex(model)
    view = float_view(index)
    if view is None:
        plan = _with_notes(plan_taps(index, mode, axes, feeds), notes)
    else:
        # A quantised graph: the taps are found on the float network it stands for, then dequantised.
        floats = GraphIndex(infer_shapes(view.model))
        model, plan = dequantise_taps(model, view, floats, plan_taps(floats, mode, axes, feeds))
        index, plan = GraphIndex(model), _with_notes(plan, notes)
    if batchnorm == "batch":
        model = batch_statistics(model).model
    return model, index, plan


def _with_notes(plan: TapPlan, notes: Sequence[Untappable]) -> TapPlan:
    """``plan`` whose entries for the Ifs left in place say why (from ``notes``), followed by
    the notes on the branches not taken."""
    if not notes:
        return plan
    said = {u.where: u for u in notes}
    kept = [said.pop(u.where) if u.op == "If" and u.where in said else u for u in plan.untappable]
    return replace(plan, untappable=(*kept, *said.values()))


def prepare(
    loaded: LoadedModel,
    mode: str = "all",
    axes: Mapping[str, int] | None = None,
    feeds: bool = False,
    fixed: Mapping[str, np.ndarray] | None = None,
    analysed: tuple[onnx.ModelProto, GraphIndex, TapPlan] | None = None,
    batchnorm: str = "running",
) -> PreparedModel:
    """Run the rewrite passes; raise :class:`NoTapsError` when nothing can be scored.

    ``analysed`` is what :func:`analyse` gave for the same model, mode, axes and feeds without
    ``fixed`` (the caller read the inputs with it); it is used as it is unless the inputs in
    ``fixed`` decide an If it left in place (then every pass runs again, with ``fixed``).
    ``batchnorm`` as for :func:`analyse` (and the same as ``analysed`` was made with).
    """
    if analysed is None or (fixed and resolve_ifs(analysed[0], fixed)[0] is not analysed[0]):
        analysed = analyse(loaded, mode, axes, feeds, fixed, batchnorm)
    model, index, plan = analysed
    if not plan.taps:
        raise NoTapsError(nothing_to_score(loaded.path.name, mode, plan.untappable))
    # The analysed model is a copy the rewrite owns (unless every pass was a no-op): extend it.
    cut, cuts = cut_windows(model, plan.taps, in_place=model is not loaded.proto)
    return PreparedModel(cut, plan, index, cuts)


def nothing_to_score(name: str, mode: str, untappable: Sequence[Untappable]) -> str:
    """The sentence of :class:`NoTapsError` for a model whose main graph has no tap: true also
    when its layers lie inside control-flow bodies (it names them, and why they stay there)."""
    what = (
        "activation"
        if mode == "activations"
        else "weighted layer (Conv, Gemm, MatMul with constant weights, normalisation) and no activation"
    )
    hidden = [u for u in untappable if u.op in CONTROL_FLOW]
    if not hidden:
        return f"{name!r} has no {what}: there is nothing to score"
    listed = "; ".join(f"{u.op} {u.where!r}: {u.reason}" for u in hidden[:3])
    more = f"; and {len(hidden) - 3} more" if len(hidden) > 3 else ""
    return (
        f"nothing in {name!r} can be scored: its {'activations' if mode == 'activations' else 'layers'} "
        f"all lie inside control-flow bodies, which cannot be tapped — {listed}{more}"
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
