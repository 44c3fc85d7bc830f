"""Names and scopes in an ONNX graph and its subgraphs (the branches of an If, a Loop's body).

What a graph defines itself, what it reads from the scopes around it, every name it and its
subgraphs use, and a fresh name that none of them takes.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import onnx


def subgraphs_of(a: onnx.AttributeProto) -> list[onnx.GraphProto]:
    """The graphs an attribute holds (a GRAPH or GRAPHS attribute; none for the others)."""
    if a.type == onnx.AttributeProto.GRAPH:
        return [a.g]
    if a.type == onnx.AttributeProto.GRAPHS:
        return list(a.graphs)
    return []


def defined_names(graph: onnx.GraphProto) -> set[str]:
    """Names ``graph`` defines itself: inputs, initializers and node outputs."""
    names = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    names |= {t.values.name for t in graph.sparse_initializer}
    return names | {o for n in graph.node for o in n.output if o}


def outer_names(graph: onnx.GraphProto) -> set[str]:
    """Names ``graph`` (or a subgraph of it) reads from the scopes around it."""
    local = defined_names(graph)
    reads = {x for n in graph.node for x in tensors_read(n) if x}
    reads |= {o.name for o in graph.output}
    return reads - local


def tensors_read(n: onnx.NodeProto) -> Iterator[str]:
    """The tensors ``n`` reads: its inputs and the outer names its subgraphs read."""
    yield from n.input
    for a in n.attribute:
        for s in subgraphs_of(a):
            yield from outer_names(s)


def names_of_node(n: onnx.NodeProto) -> Iterable[str]:
    """Every tensor name ``n`` reads or writes, its subgraphs' included."""
    yield from (x for x in [*n.input, *n.output] if x)
    for a in n.attribute:
        for s in subgraphs_of(a):
            yield from names_in(s)


def names_in(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name ``graph`` and its subgraphs define or read."""
    names = defined_names(graph) | {o.name for o in graph.output} | {v.name for v in graph.value_info}
    for n in graph.node:
        names.update(names_of_node(n))
    return names


def fresh_name(stem: str, taken: set[str]) -> str:
    """``stem``, or ``stem_1``, ``stem_2``… : the first that is not in ``taken``."""
    if stem not in taken:
        return stem
    k = 1
    while f"{stem}_{k}" in taken:
        k += 1
    return f"{stem}_{k}"
