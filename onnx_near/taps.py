"""Find the taps of a graph: the tensors whose effective rank NEAR sums (SPEC §2).

Two kinds of site are recognised in the main graph:

* **weighted layers** — outputs of ops that apply learned weights: Conv, ConvTranspose,
  Gemm, MatMul with a constant operand (or the ``Add`` of a constant bias right after it),
  and the affine normalisations.  Role ``pre``.
* **activations** — elementwise non-linearities, native (Relu, Gelu, …) or spelled out by
  exporters as small patterns (SiLU = x·Sigmoid(x), GELU via Erf or Tanh, Mish,
  HardSwish, Clip as ReLU6).  For a pattern, its input ``x`` is the pre-activation and
  its final output the post-activation.

In mode ``"all"`` (the authors' choice) the taps are every weighted-layer output (``pre``)
and every activation output (``post``).  In mode ``"activations"`` (strict) they are the
input (``pre``) and output (``post``) of every activation site.  A tensor is tapped once,
whatever roles it plays.  What cannot be tapped is listed, with the reason.

Each tap also gets its *feature axis* (SPEC §3): channels (axis 1) for tensors that come
from convolutions and channel-wise ops, the last axis for dense/sequence tensors.

The sites are found by :mod:`onnx_near.activations` and :mod:`onnx_near.layers`, the axes by
:mod:`onnx_near.axes`; this module makes them taps (:func:`plan_taps`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping

import onnx

from .activations import ActivationSite, find_activations, fused_activation
from .axes import feature_axes
from .graph import GraphIndex
from .layers import LayerSite, data_input, find_layers, structural_rank
from .ops import CONTROL_FLOW, MS, QUANTISED, SHAPE_ONLY, scorable_in_body

__all__ = [
    "ActivationSite",
    "LayerSite",
    "Tap",
    "TapPlan",
    "Untappable",
    "data_dependent",
    "feature_axes",
    "find_activations",
    "find_layers",
    "find_untappable",
    "output_heads",
    "plan_taps",
    "scorable_ops",
    "structural_rank",
]


@dataclass(frozen=True)
class Tap:
    """A tensor to score, with the roles it plays and the feature axis of its matrix."""

    name: str  # the layer or activation it belongs to
    op: str  # recognised op or pattern
    role: str  # "pre", "post" or "pre+post"
    tensor: str
    node: int
    axis: int  # feature axis (may be negative: counted from the end)
    axis_reason: str
    declared_shape: tuple[int | str | None, ...] | None
    elem_type: int
    rank_bound: int | None = None  # the matrix's rank can be no higher, from the weights' shapes
    feed: str | None = None  # the tensor its layer or activation reads (role "feed": a tap's feed itself)
    head: bool = False  # an output head: a model output follows it with no other tap between


@dataclass(frozen=True)
class Untappable:
    """Something that looks scorable but cannot be tapped, and why."""

    where: str
    op: str
    reason: str


@dataclass(frozen=True)
class TapPlan:
    """The taps of a graph in topological order, and what could not be tapped."""

    taps: tuple[Tap, ...]
    untappable: tuple[Untappable, ...]


def find_untappable(index: GraphIndex) -> list[Untappable]:
    """What the taps cannot see: control-flow bodies and fused pre-activations."""
    out: list[Untappable] = []
    for i, n in enumerate(index.nodes):
        if n.op_type in CONTROL_FLOW:
            inside = sorted(_scorable_ops_in_subgraphs(n))
            if inside:
                why = (
                    "tensors inside If/Loop/Scan bodies are not visible as outputs"
                    if n.op_type == "If"
                    else f"a {n.op_type} body runs once per iteration, and its tensors are not visible as outputs"
                )
                out.append(
                    Untappable(
                        index.label(i),
                        n.op_type,
                        f"{len(inside)} weighted/activation op(s) inside its body ({', '.join(sorted(set(inside)))}) "
                        f"cannot be tapped: {why}",
                    )
                )
        elif n.op_type in QUANTISED:
            out.append(
                Untappable(
                    index.label(i),
                    n.op_type,
                    "a quantised layer: its integer output is not scored (onnx-near scores float models; "
                    "score the model before quantisation)",
                )
            )
        elif n.domain == "com.microsoft.nchwc" and n.op_type == "Conv":
            out.append(
                Untappable(
                    index.label(i),
                    f"{n.op_type} (com.microsoft.nchwc)",
                    "it works in onnxruntime's blocked NCHWc layout, which ORT_ENABLE_ALL writes for this CPU only; "
                    "save the optimised model with ORT_ENABLE_EXTENDED to score its convolutions",
                )
            )
        elif fused_activation(n):
            act = fused_activation(n)
            out.append(
                Untappable(
                    index.label(i),
                    f"{n.op_type} ({MS})",
                    f"the pre-activation before its fused {act or 'activation'} is not exposed by the fused op; "
                    "only its output is tapped",
                )
            )
    return out


def _scorable_ops_in_subgraphs(n: onnx.NodeProto) -> list[str]:
    """The ops in the bodies of ``n`` that would be taps in the main graph."""
    found: list[str] = []
    for a in n.attribute:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for g in graphs:
            found.extend(scorable_ops(g))
    return found


def scorable_ops(graph: onnx.GraphProto) -> list[str]:
    """The ops of a control-flow body (and of the bodies nested in it) that would be taps in
    the main graph: weighted layers, activations, MatMuls."""
    found = [m.op_type for m in graph.node if scorable_in_body(m.op_type)]
    for m in graph.node:
        if m.op_type in CONTROL_FLOW:
            found.extend(_scorable_ops_in_subgraphs(m))
    return found


def plan_taps(
    index: GraphIndex, mode: str = "all", axes: Mapping[str, int] | None = None, feeds: bool = False
) -> TapPlan:
    """The taps of the graph for ``mode`` ("all" or "activations"), in topological order.

    ``axes`` overrides the inferred feature axis, keyed by tap tensor or tap name.  Every tap
    names its *feed*, the tensor its layer or activation reads; with ``feeds`` the feeds that
    are not taps themselves (a pooled vector, a residual sum, the model's input) are planned
    too, with role ``"feed"``: they are measured, never counted in the score (vet compares
    each tap with what it was given).
    """
    activations = find_activations(index)
    roles: dict[str, list[str]] = {}
    meta: dict[str, tuple[str, str, int]] = {}
    feed_of: dict[str, str] = {}
    data = data_dependent(index)

    def add(tensor: str, role: str, name: str, op: str, node: int, feed: str) -> None:
        if tensor in index.graph_inputs or tensor not in data or not tensor:
            return
        if role not in roles.setdefault(tensor, []):
            roles[tensor].append(role)
        if tensor not in meta or (role == "post"):
            meta[tensor] = (name, op, node)
            feed_of[tensor] = feed

    if mode == "all":
        for s in find_layers(index):
            add(s.tensor, "pre", index.label(s.node), s.op, s.node, s.feed)
    for a in activations:
        if mode == "activations" and a.pre:
            producer = index.producer.get(a.pre)
            add(
                a.pre,
                "pre",
                index.label(producer) if producer is not None else a.pre,
                _op_of(index, a.pre),
                producer if producer is not None else -1,
                data_input(index, index.nodes[producer]) if producer is not None else "",
            )
        add(a.post, "post", index.label(a.node), a.kind, a.node, a.pre)
    if feeds:
        for tensor in list(roles):
            f = feed_of.get(tensor, "")
            if f and f not in roles and (f in data or f in index.graph_inputs) and _floating(index, f):
                roles[f] = ["feed"]
                producer = index.producer.get(f)
                meta[f] = (f, _op_of(index, f), producer if producer is not None else -1)
                feed_of[f] = ""
    inferred = feature_axes(index)
    overrides = dict(axes or {})
    taps: list[Tap] = []
    for tensor, rs in roles.items():
        name, op, _node = meta[tensor]
        if tensor in overrides or name in overrides:
            axis, reason = overrides.get(tensor, overrides.get(name, -1)), "set by the user"
        elif tensor in inferred:
            axis, reason = inferred[tensor]
        elif rs == ["feed"]:  # a layer reads its features on the axis it writes them (Conv: 1)
            reader = next(t for t, f in feed_of.items() if f == tensor)
            axis, reason = _feed_axis(index, reader, inferred, overrides)
        else:
            axis, reason = -1, "no layout known: last axis assumed"
        dims = index.dims(tensor)
        role = "feed" if rs == ["feed"] else "+".join(r for r in ("pre", "post") if r in rs)
        natural = tensor in inferred and reason == inferred[tensor][1]  # the feature axis the graph gives
        taps.append(
            Tap(
                name,
                op,
                role,
                tensor,
                index.producer.get(tensor, -1),
                axis,
                reason,
                tuple(dims) if dims is not None else None,
                index.elem_type(tensor),
                structural_rank(index, tensor) if natural else None,
                feed_of.get(tensor) or None,
            )
        )
    heads = output_heads(index, {t.tensor for t in taps if t.role != "feed"})
    taps = [replace(t, head=True) if t.tensor in heads else t for t in taps]
    taps.sort(key=lambda t: (t.node, t.tensor))
    return TapPlan(tuple(taps), tuple(find_untappable(index)))


def output_heads(index: GraphIndex, taps: set[str]) -> set[str]:
    """The taps from which a model output is reached without passing another tap: the last
    layers (a classifier's logits, a detector's class sigmoids), judged as heads by vet."""
    heads: set[str] = set()
    seen: set[str] = set()
    frontier = list(index.graph_outputs)
    while frontier:
        t = frontier.pop()
        if t in seen:
            continue
        seen.add(t)
        if t in taps:
            heads.add(t)
            continue
        n = index.node_of(t)
        if n is not None:
            frontier.extend(x for x in n.input if x and not index.is_const(x))
    return heads


def _floating(index: GraphIndex, tensor: str) -> bool:
    elem = index.elem_type(tensor)
    return elem in (
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
    )


def _feed_axis(
    index: GraphIndex, reader: str, inferred: Mapping[str, tuple[int, str]], overrides: Mapping[str, int]
) -> tuple[int, str]:
    """The feature axis of a feed with no layout of its own: that of the tap reading it."""
    if reader in overrides:
        return overrides[reader], "the axis set for the tap that reads it"
    axis = inferred.get(reader, (-1, ""))[0]
    return axis, f"the axis of the tap that reads it ({reader})"


def data_dependent(index: GraphIndex) -> set[str]:
    """The tensors computed from the values of the model's inputs (SPEC §2: only those are
    taps).  Constants are not, and neither is what is computed from input *shapes* alone —
    a rotary embedding's table, inverse frequencies × Range(Shape(x)) positions."""
    out = set(index.graph_inputs)
    for n in index.nodes:
        if n.op_type in SHAPE_ONLY or n.op_type in CONTROL_FLOW:
            if n.op_type in CONTROL_FLOW:  # a subgraph may read anything: its outputs may be data
                out.update(o for o in n.output if o)
            continue
        if any(x in out for x in n.input if x):
            out.update(o for o in n.output if o)
    return out


def _op_of(index: GraphIndex, tensor: str) -> str:
    n = index.node_of(tensor)
    return n.op_type if n is not None else "input"
