"""The rewrite's passes: each one establishes one invariant of the graph, in order.

A :class:`Pass` has a name and a function from the :class:`State` the passes before it left
(the model, and what they found: the notes on Ifs, the taps) to a :class:`Step`: the state
afterwards and whether the model changed.  The first paragraph of that function's
docstring is the invariant (:attr:`Pass.invariant`).  The tuple of passes and the order
they run in is :data:`onnx_near.rewrite.PASSES`; :func:`run` applies a tuple of them.

Every pass leaves its input untouched: a pass that changes the model returns a copy (the
file on disk is never modified), one that does not returns the model it was given.  That
one fact is what :attr:`State.owned` keeps (the model is a copy the passes made, which the
last pass may extend in place) — it is read from the passes' ``changed``, never from object
identity.  A :class:`~onnx_near.errors.NearError` that a pass raises is raised again, of the
same class, naming the pass; any other exception is a bug, re-raised as a ``RuntimeError``
naming the pass (a ``MemoryError`` goes on as it is: the sandbox reports the memory limit).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Sequence

import numpy as np
import onnx
import onnx.inliner
import onnx.shape_inference

from .batchnorm import batch_statistics
from .branches import resolve_ifs
from .defuse import defuse_contrib_ops
from .dequantise import dequantise_taps
from .errors import GraphError, NearError
from .float_view import float_view
from .graph import GraphIndex, without_weights
from .load import topological_nodes
from .taps import TapPlan, Untappable, plan_taps

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    """What the caller asked of the rewrite (see :func:`onnx_near.rewrite.analyse`)."""

    mode: str = "all"
    axes: Mapping[str, int] | None = None
    feeds: bool = False
    fixed: Mapping[str, np.ndarray] | None = None  # the inputs fed unchanged with every batch
    batchnorm: str = "running"


@dataclass(frozen=True)
class Cut:
    """How one tap's rows leave the graph (made by :func:`~onnx_near.rewrite.cut_windows`).

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


@dataclass(frozen=True)
class State:
    """The model as the passes so far left it, and what they found."""

    model: onnx.ModelProto
    owned: bool = False  # ``model`` is a copy the passes made (not the caller's)
    notes: tuple[Untappable, ...] = ()  # decide_ifs: the branches not taken, the Ifs left and why
    index: GraphIndex | None = None  # find_taps: the index of the graph the taps are in
    plan: TapPlan | None = None  # find_taps: the taps, and what cannot be tapped
    cuts: Mapping[str, Cut] = field(default_factory=dict)  # cut_windows: per tap tensor
    changes: tuple[tuple[str, bool], ...] = ()  # each pass run, in order: (name, changed the model)


@dataclass(frozen=True)
class Step:
    """What one pass did: the state afterwards, and whether it changed the model."""

    state: State
    changed: bool


@dataclass(frozen=True)
class Pass:
    """One pass of the rewrite: its name, and the function that applies it."""

    name: str
    apply: Callable[[State, Options], Step]

    @property
    def invariant(self) -> str:
        """What holds after the pass: the first paragraph of its function's docstring."""
        return " ".join((inspect.getdoc(self.apply) or "").split("\n\n")[0].split())

    def __call__(self, state: State, options: Options) -> Step:
        """Apply the pass; the step's state records it in :attr:`State.changes`."""
        try:
            step = self.apply(state, options)
        except NearError as e:  # the same class, naming the pass
            raise type(e)(f"the rewrite failed in pass {self.name}: {e}") from e
        except MemoryError:
            raise
        except Exception as e:
            raise RuntimeError(f"the rewrite failed in pass {self.name}: {type(e).__name__}: {e}") from e
        changed = step.changed
        log.debug("rewrite pass %s: %s", self.name, "changed the model" if changed else "nothing to do")
        after = replace(
            step.state,
            model=step.state.model if changed else state.model,  # unchanged: the very model it was given
            owned=state.owned or changed,
            changes=(*state.changes, (self.name, changed)),
        )
        return Step(after, changed)


def rewrite_pass(name: str) -> Callable[[Callable[[State, Options], Step]], Pass]:
    """Make the decorated function the pass ``name``."""
    return lambda fn: Pass(name, fn)


def run(passes: Sequence[Pass], state: State, options: Options) -> State:
    """Apply ``passes`` in order, starting from ``state``."""
    for p in passes:
        state = p(state, options).state
    return state


# --- the passes that analyse the graph (the last one, cut_windows, is in rewrite.py) ------------


def sort_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (a copy) with its main graph's nodes in topological order, or ``model`` itself
    when they already are (see :func:`topological_order`)."""
    order = topological_order(model)
    return model if order is None else _with_nodes(model, order)


def topological_order(model: onnx.ModelProto) -> list[onnx.NodeProto] | None:
    """The main graph's nodes in an order where each comes after the producers of its inputs
    (ties keep the file's order; linear in nodes and edges), None when they already are in one.

    Nodes on a cycle or reading a tensor nothing makes — which :func:`~onnx_near.load.load_model`
    refuses — keep their place after all the others."""
    g = model.graph
    available = {v.name for v in g.input} | {t.name for t in g.initializer} | {""}
    order = topological_nodes(g, available)
    placed = {id(n) for n in order}
    order += [n for n in g.node if id(n) not in placed]
    return None if all(a is b for a, b in zip(order, g.node)) else order


@rewrite_pass("sort_nodes")
def SORT_NODES(state: State, options: Options) -> Step:
    """Afterwards: every node of the main graph comes after the nodes that make its inputs.

    Before: ``[Relu(h) → y, Gemm(x) → h]``; after: ``[Gemm(x) → h, Relu(h) → y]``.  The load
    stage only checks that such an order exists (no cycle); every later pass relies on it.
    See :func:`topological_order`."""
    order = topological_order(state.model)
    if order is None:
        return Step(state, False)
    return Step(replace(state, model=_with_nodes(state.model, order)), True)


def inline_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Afterwards: no node of the main graph calls a model-local function.

    Before: ``x → [local function Block: Gemm → Relu] → y``; after: ``x → Gemm → Relu → y``.
    """
    if not model.functions:
        return model
    try:
        return onnx.inliner.inline_local_functions(model)
    except Exception as e:  # onnx raises plain RuntimeError/ValueError here
        raise GraphError(f"the model's local functions could not be inlined: {first_line(e)}") from e


@rewrite_pass("inline_functions")
def INLINE_FUNCTIONS(state: State, options: Options) -> Step:
    """Afterwards: the model has no local functions; the nodes that called them are the
    functions' nodes, so layers that exporters wrap in functions (the dynamo exporter does)
    are main-graph nodes.

    See :func:`inline_functions`."""
    if not state.model.functions:
        return Step(state, False)
    return Step(replace(state, model=inline_functions(state.model)), True)


@rewrite_pass("decide_ifs")
def DECIDE_IFS(state: State, options: Options) -> Step:
    """Afterwards: no If of the main graph has a condition that constants, or the inputs in
    ``fixed`` (fed unchanged with every batch, such as a sample rate), decide; each such If is
    the branch that runs, so that branch's layers are main-graph nodes.

    See :func:`~onnx_near.branches.resolve_ifs`; :attr:`State.notes` says which branches are not
    taken, and why the Ifs left in place are not decided."""
    out, notes = resolve_ifs(state.model, options.fixed)
    return Step(replace(state, model=out, notes=notes), _nodes(out) != _nodes(state.model))


@rewrite_pass("defuse")
def DEFUSE(state: State, options: Options) -> Step:
    """Afterwards: no onnxruntime fused op that hides a pre-activation (FusedConv, FusedGemm
    with an activation, BiasGelu, FastGelu with a bias, SkipLayerNormalization) is left in the
    main graph, except those it cannot split; each is the standard ops it fuses.

    See :func:`~onnx_near.defuse.defuse_contrib_ops`."""
    out = defuse_contrib_ops(state.model)
    return Step(replace(state, model=out), _nodes(out) != _nodes(state.model))


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Afterwards: intermediate tensors carry the types and shapes onnx can infer.

    Inference is best effort: when it fails (unknown ops, exporter quirks), the model is
    returned with whatever value_info it had and scoring goes on — the runtime reports
    the real shapes anyway.
    """
    inferred = _inferred_value_info(model)
    return model if inferred is None else _with_value_info(model, inferred)


@rewrite_pass("infer_shapes")
def INFER_SHAPES(state: State, options: Options) -> Step:
    """Afterwards: the intermediate tensors of the main graph carry the element types and
    shapes onnx can infer (best effort: where inference fails, the value_info stays as it was).

    See :func:`infer_shapes`."""
    inferred = _inferred_value_info(state.model)
    if inferred is None or inferred == list(state.model.graph.value_info):
        return Step(state, False)
    return Step(replace(state, model=_with_value_info(state.model, inferred)), True)


@rewrite_pass("find_taps")
def FIND_TAPS(state: State, options: Options) -> Step:
    """Afterwards: :attr:`State.plan` holds the taps for the mode, each a tensor of the main
    graph, in its order, and what cannot be tapped (with :attr:`State.notes`); :attr:`State.index`
    indexes that graph.

    See :func:`~onnx_near.taps.plan_taps`.  A quantised graph's taps are found on the float
    network it stands for (:func:`~onnx_near.float_view.float_view`), and each is the float
    value a quantised layer's output stands for: the model changes only then, a
    DequantizeLinear being added after each such tap (:func:`~onnx_near.dequantise.dequantise_taps`)."""
    model, mode, axes, feeds = state.model, options.mode, options.axes, options.feeds
    index = GraphIndex(model)
    view = float_view(index)
    if view is None:
        plan = plan_taps(index, mode, axes, feeds)
    else:
        floats = GraphIndex(infer_shapes(view.model))
        model, plan = dequantise_taps(model, view, floats, plan_taps(floats, mode, axes, feeds))
        index = GraphIndex(model)
    changed = len(model.graph.node) != len(state.model.graph.node)
    return Step(replace(state, model=model, index=index, plan=with_notes(plan, state.notes)), changed)


@rewrite_pass("batch_statistics")
def BATCH_STATISTICS(state: State, options: Options) -> Step:
    """Afterwards, with ``batchnorm="batch"`` (``--batchnorm batch``): every inference-form
    BatchNormalization normalises with the statistics of the batch being fed, as PyTorch's
    training mode does; with ``"running"`` the model is left as it is.

    See :func:`~onnx_near.batchnorm.batch_statistics`.  It runs after the taps are found, so a
    BatchNorm is still a tap (its output keeps its name), and :attr:`State.index` stays that of
    the graph before it (parameters, MACs and BatchNorms as the file has them)."""
    if options.batchnorm != "batch":
        return Step(state, False)
    done = batch_statistics(state.model)
    return Step(replace(state, model=done.model), done.modified)


def with_notes(plan: TapPlan, notes: Sequence[Untappable]) -> TapPlan:
    """``plan`` whose entries for the Ifs left in place say why (from ``notes``), followed by
    the notes on the branches not taken."""
    if not notes:
        return plan
    said = {u.where: u for u in notes}
    kept = [said.pop(u.where) if u.op == "If" and u.where in said else u for u in plan.untappable]
    return replace(plan, untappable=(*kept, *said.values()))


def _nodes(model: onnx.ModelProto) -> list[tuple[str, str, str]]:
    """What a pass that replaces or renames nodes changes: each node's domain, op and name."""
    return [(n.domain, n.op_type, n.name) for n in model.graph.node]


def _with_nodes(model: onnx.ModelProto, nodes: Sequence[onnx.NodeProto]) -> onnx.ModelProto:
    """A copy of ``model`` whose main graph has ``nodes`` (copied) in that order."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def _inferred_value_info(model: onnx.ModelProto) -> list[onnx.ValueInfoProto] | None:
    """The value_info onnx infers for ``model`` (its weights left out), None when it fails."""
    try:
        inferred = onnx.shape_inference.infer_shapes(without_weights(model), strict_mode=False, data_prop=True)
    except Exception as e:
        log.info("shape inference failed (%s); going on without inferred shapes", first_line(e))
        return None
    return list(inferred.graph.value_info)


def _with_value_info(model: onnx.ModelProto, value_info: Sequence[onnx.ValueInfoProto]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.value_info[:]
    out.graph.value_info.extend(value_info)
    return out


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
