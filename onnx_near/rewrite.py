"""Stage 2, rewrite: turn the loaded graph into one whose outputs are the taps.

The rewrite is :data:`PASSES`, a tuple of passes applied in order (see :mod:`onnx_near.passes`);
each establishes one invariant and says whether it changed the model, and each leaves its
input untouched (the file on disk is never modified):

1. ``sort_nodes`` — every node comes after the nodes that make its inputs.
2. ``inline_functions`` — no model-local functions: the layers exporters wrap in them (the
   dynamo exporter does) are main-graph nodes.
3. ``decide_ifs`` — an If whose condition constants (or the inputs fed unchanged with every
   batch, such as a sample rate) decide is the branch that runs, so its layers are main-graph
   nodes (:func:`~onnx_near.branches.resolve_ifs`).
4. ``defuse`` — onnxruntime's fused ops (FusedConv, FusedGemm, BiasGelu,
   SkipLayerNormalization…) are the standard ops they fuse, so the pre-activations they hid
   exist again (:func:`~onnx_near.defuse.defuse_contrib_ops`).
5. ``infer_shapes`` — intermediate tensors carry the types and shapes onnx infers.
6. ``find_taps`` — the plan names the taps, each a tensor of the graph; a quantised graph's
   taps are found on the float network it stands for, each the float value a quantised
   layer's output stands for (a DequantizeLinear of it is added; :mod:`onnx_near.dequantise`).
7. ``batch_statistics`` (``--batchnorm batch`` only) — every BatchNormalization normalises
   with the statistics of the batch being fed, as PyTorch's training mode does; after the
   taps are found, so each BatchNorm is still one (:func:`~onnx_near.batchnorm.batch_statistics`).
8. ``cut_windows`` — after every tap, the few standard nodes that cut out the rows its
   matrix keeps (Slice over samples, Transpose of the feature axis last, Flatten, Slice over
   rows), the window's bounds fed as runtime inputs: onnxruntime hands back blocks of rows,
   not whole feature maps, and one session serves every batch and repetition.  Each tap's
   shape is an output too (for the probe pass); a tap that cannot be cut is an output whole.

:func:`analyse` runs the passes but the last (no runtime needed); :func:`prepare` all of
them, refusing a model with no tap (:class:`~onnx_near.errors.NoTapsError`) before the last.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import NoTapsError
from .graph import GraphIndex
from .load import LoadedModel
from .ops import CONTROL_FLOW
from .passes import (
    BATCH_STATISTICS,
    DECIDE_IFS,
    DEFUSE,
    FIND_TAPS,
    INFER_SHAPES,
    INLINE_FUNCTIONS,
    SORT_NODES,
    Cut,
    Options,
    Pass,
    State,
    Step,
    infer_shapes,
    inline_functions,
    rewrite_pass,
    run,
    sort_nodes,
)
from .taps import Tap, TapPlan, Untappable

log = logging.getLogger(__name__)

# Slice with runtime starts/ends (opset 10) and Flatten with a negative axis (opset 11).
CUT_MIN_OPSET = 11
_PREFIX = "onnx_near::"  # every name the cut adds starts with it


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


@rewrite_pass("cut_windows")
def CUT_WINDOWS(state: State, options: Options) -> Step:
    """Afterwards: every tap of :attr:`State.plan` has an output — its rows' cut-out and its
    Shape, or the tap itself when it is not cut (see :class:`Cut`) — and :attr:`State.cuts`
    says which, per tap tensor; the model's own outputs come first.

    See :func:`cut_windows`; a model the passes already copied is extended in place."""
    if state.plan is None or not state.plan.taps:
        return Step(state, False)
    model, cuts = cut_windows(state.model, state.plan.taps, in_place=state.owned)
    return Step(replace(state, model=model, cuts=cuts), True)


# The rewrite, in the order its passes run (docs/design.md lists them too).
PASSES: tuple[Pass, ...] = (
    SORT_NODES,
    INLINE_FUNCTIONS,
    DECIDE_IFS,
    DEFUSE,
    INFER_SHAPES,
    FIND_TAPS,
    BATCH_STATISTICS,
    CUT_WINDOWS,
)
ANALYSIS = PASSES[:-1]  # what analyse runs: everything but the cut
_DECIDE = PASSES.index(DECIDE_IFS)


@dataclass(frozen=True)
class PreparedModel:
    """A model ready to run: taps exposed as outputs, and the plan that names them."""

    model: onnx.ModelProto
    plan: TapPlan
    index: GraphIndex  # index of the model before the taps were exposed
    cuts: Mapping[str, Cut]  # per tap tensor: how its rows leave the graph
    changes: tuple[tuple[str, bool], ...] = ()  # each pass run, in order: (name, changed the model)


class Analysed(tuple[onnx.ModelProto, GraphIndex, TapPlan]):
    """What :func:`analyse` gives: ``(model, index, plan)``, and the passes' state behind it.

    ``state`` is the state after the analysis; ``resumable`` the state before ``decide_ifs``,
    kept only when Ifs are left in place (inputs given a value may decide them:
    :func:`reanalyse` starts there instead of running the whole rewrite again)."""

    state: State
    resumable: State | None
    options: Options

    def __new__(cls, state: State, resumable: State | None, options: Options) -> Analysed:
        assert state.index is not None and state.plan is not None  # find_taps ran
        self = super().__new__(cls, (state.model, state.index, state.plan))
        self.state, self.resumable, self.options = state, resumable, options
        return self

    @property
    def changes(self) -> tuple[tuple[str, bool], ...]:
        """Each pass run, in order: (name, whether it changed the model)."""
        return self.state.changes


def analyse(
    loaded: LoadedModel,
    mode: str = "all",
    axes: Mapping[str, int] | None = None,
    feeds: bool = False,
    fixed: Mapping[str, np.ndarray] | None = None,
    batchnorm: str = "running",
) -> Analysed:
    """The passes of :data:`ANALYSIS` (every pass but ``cut_windows``; no runtime needed):
    sort, inline, decide the Ifs that constants or the inputs in ``fixed`` decide (their
    values: the inputs fed unchanged with every batch), de-fuse and infer shapes, then find
    the taps; ``feeds`` plans the tensors the taps read as well (see
    :func:`~onnx_near.taps.plan_taps`).  The plan's ``untappable`` also lists the branches not
    taken, and says why the Ifs left in place were not decided.

    With ``batchnorm="batch"``, last, :func:`~onnx_near.batchnorm.batch_statistics`: every
    BatchNorm normalises with the statistics of the batch being fed.  It runs after the taps
    are found, so a BatchNorm is still a tap (its output keeps its name), and the index
    returned is of the graph before it (parameters, MACs and BatchNorms as the file has them)."""
    options = Options(mode, axes, feeds, fixed, batchnorm)
    return _analysed(run(ANALYSIS[:_DECIDE], State(loaded.proto), options), options)


def _analysed(before: State, options: Options) -> Analysed:
    """The analysis from ``before``, the state ``decide_ifs`` starts from."""
    after = run(ANALYSIS[_DECIDE:], before, options)
    ifs_left = any(n.op_type == "If" for n in after.model.graph.node)
    return Analysed(after, before if ifs_left else None, options)


def reanalyse(analysed: Analysed, fixed: Mapping[str, np.ndarray] | None) -> Analysed:
    """What :func:`analyse` gives with the inputs in ``fixed`` for what ``analysed`` was made
    with: ``analysed`` itself when ``fixed`` is empty or ``analysed`` left no If in place;
    otherwise the passes from ``decide_ifs`` on, from the state ``analysed`` kept before it
    (the passes before it do not depend on ``fixed``, and are not run again)."""
    if not fixed or analysed.resumable is None:
        return analysed
    options = replace(analysed.options, fixed=fixed)
    return _analysed(analysed.resumable, options)


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
    ``fixed`` decide an If it left in place (then the passes from ``decide_ifs`` on run again,
    with ``fixed``; a tuple :func:`analyse` did not make is analysed again from the start).
    ``batchnorm`` as for :func:`analyse` (and the same as ``analysed`` was made with).  The
    analysed model, a copy the rewrite owns, is extended in place: ``analysed`` is spent.
    """
    options = Options(mode, axes, feeds, fixed, batchnorm)
    if not isinstance(analysed, Analysed):
        analysed = analyse(loaded, mode, axes, feeds, fixed, batchnorm)
    elif fixed and analysed.resumable is not None and DECIDE_IFS(State(analysed[0]), options).changed:
        analysed = _analysed(analysed.resumable, options)
    if not analysed[2].taps:
        raise NoTapsError(nothing_to_score(loaded.name, mode, analysed[2].untappable))
    state = run(PASSES[len(ANALYSIS) :], analysed.state, options)
    assert state.index is not None and state.plan is not None
    return PreparedModel(state.model, state.plan, state.index, state.cuts, state.changes)


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


__all__ = [
    "ANALYSIS",
    "CUT_MIN_OPSET",
    "PASSES",
    "Analysed",
    "Cut",
    "PreparedModel",
    "analyse",
    "cut_windows",
    "infer_shapes",
    "inline_functions",
    "nothing_to_score",
    "prepare",
    "reanalyse",
    "sort_nodes",
]
