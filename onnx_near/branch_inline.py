"""Inlining the branch of an ``If`` that runs into the main graph (for :func:`onnx_near.branches.resolve_ifs`).

:func:`inline_branch` puts the branch's nodes where the If was, its tensors renamed where a
name is taken elsewhere; :func:`prune_condition` then removes the nodes that only computed
the decided condition, and :func:`sort_nodes` puts the graph back in topological order.
"""

from __future__ import annotations

from typing import Mapping

import onnx
from onnx import helper

from .subgraphs import defined_names, fresh_name, names_in, names_of_node, subgraphs_of, tensors_read


def inline_branch(g: onnx.GraphProto, k: int, branch: onnx.GraphProto) -> None:
    """Replace the If at ``g.node[k]`` by the nodes of ``branch`` (see :func:`~onnx_near.branches.resolve_ifs`)."""
    node = g.node[k]
    label = node.name
    outside: set[str] = set()  # every name of the model that the branch's own names could meet
    for i, n in enumerate(g.node):
        if i != k:
            outside.update(names_of_node(n))
    outside.update(x for x in [*node.input, *node.output] if x)
    for v in [*g.input, *g.output, *g.value_info]:
        outside.add(v.name)
    outside.update(t.name for t in g.initializer)
    outside.update(t.values.name for t in g.sparse_initializer)
    inner = {x for n in branch.node for a in n.attribute for s in subgraphs_of(a) for x in names_in(s)}
    own = defined_names(branch)
    taken = outside | inner | own

    mapping: dict[str, str] = {}
    made = {o for n in branch.node for o in n.output if o}
    extra: list[tuple[str, str]] = []  # (branch tensor, If output) handed out through an Identity
    for bo, io in zip(branch.output, node.output):
        if not io:
            continue
        if bo.name in made and bo.name not in mapping:
            mapping[bo.name] = io
        else:
            extra.append((bo.name, io))
    for name in sorted(own):
        if name in mapping:
            continue
        new = name if name not in outside else fresh_name(f"{label}/{name}", taken)
        taken.add(new)
        mapping[name] = new

    node_names = {n.name for n in g.node if n.name}  # the If's own too: a nested If must not take it
    nodes: list[onnx.NodeProto] = []
    for n in branch.node:
        m = onnx.NodeProto()
        m.CopyFrom(n)
        _replace(m.input, mapping)
        _replace(m.output, mapping)
        for a in m.attribute:
            for s in subgraphs_of(a):
                _rename(s, mapping)
        if m.name and m.name in node_names:
            m.name = fresh_name(f"{label}/{m.name}", node_names)
        if m.name:
            node_names.add(m.name)
        nodes.append(m)
    for src, io in extra:
        name = fresh_name(f"{label}/output", node_names)
        node_names.add(name)
        nodes.append(helper.make_node("Identity", [mapping.get(src, src)], [io], name=name))
    for t in branch.initializer:
        moved = g.initializer.add()
        moved.CopyFrom(t)
        moved.name = mapping[t.name]
    for st in branch.sparse_initializer:
        moved_sparse = g.sparse_initializer.add()
        moved_sparse.CopyFrom(st)
        moved_sparse.values.name = mapping[st.values.name]
    known = {v.name for v in [*g.input, *g.output, *g.value_info]}
    for v in branch.value_info:
        if v.name in own and mapping[v.name] not in known:
            vi = g.value_info.add()
            vi.CopyFrom(v)
            vi.name = mapping[v.name]
    rest = list(g.node)
    del g.node[:]
    g.node.extend([*rest[:k], *nodes, *rest[k + 1 :]])


def _rename(graph: onnx.GraphProto, mapping: Mapping[str, str]) -> None:
    """In place: the outer names in ``mapping`` renamed wherever ``graph`` and its subgraphs
    read them, except where a graph defines the name itself (its own tensor shadows the outer one)."""
    local = defined_names(graph)
    m = {k: v for k, v in mapping.items() if k not in local}
    if not m:
        return
    for n in graph.node:
        _replace(n.input, m)
        for a in n.attribute:
            for s in subgraphs_of(a):
                _rename(s, m)
    for o in graph.output:
        if o.name in m:
            o.name = m[o.name]


def _replace(names: object, mapping: Mapping[str, str]) -> None:
    """Rename, in place, the entries of a repeated string field."""
    field = names  # protobuf RepeatedScalarContainer
    new = [mapping.get(x, x) for x in field]  # type: ignore[attr-defined]
    del field[:]  # type: ignore[attr-defined]
    field.extend(new)  # type: ignore[attr-defined]


def prune_condition(g: onnx.GraphProto, condition: str) -> None:
    """Remove the nodes that computed ``condition`` and whose outputs nothing reads any more."""
    frontier = [condition]
    while frontier:
        used = {x for n in g.node for x in tensors_read(n)} | {o.name for o in g.output}
        producer = {o: i for i, n in enumerate(g.node) for o in n.output if o}
        dead: set[int] = set()
        upstream: list[str] = []
        for t in frontier:
            i = producer.get(t)
            if i is None or i in dead or any(o in used for o in g.node[i].output if o):
                continue
            dead.add(i)
            upstream.extend(x for x in tensors_read(g.node[i]) if x)
        keep = [n for i, n in enumerate(g.node) if i not in dead]
        del g.node[:]
        g.node.extend(keep)
        frontier = upstream


def sort_nodes(g: onnx.GraphProto) -> None:
    """Put the nodes in topological order, counting the names their subgraphs read (stable)."""
    available = {v.name for v in g.input} | {t.name for t in g.initializer} | {""}
    available |= {t.values.name for t in g.sparse_initializer}
    nodes = list(g.node)
    made = {o for n in nodes for o in n.output if o}
    order: list[onnx.NodeProto] = []
    placed = [False] * len(nodes)
    progress = True
    while progress and len(order) < len(nodes):
        progress = False
        for i, n in enumerate(nodes):
            if placed[i]:
                continue
            if all(x in available or x not in made for x in tensors_read(n)):
                placed[i] = True
                order.append(n)
                available.update(o for o in n.output if o)
                progress = True
    if len(order) < len(nodes):  # a cycle: not ours to report; keep the order as it was
        return
    del g.node[:]
    g.node.extend(order)
