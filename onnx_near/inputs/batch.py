"""Each input's batch axis: the axis that holds its samples, or none (SPEC §5).

An input without one (a recurrent state, a sample rate, a flag) is fed unchanged with every
batch; :func:`batch_axes` says how the axis is found from the graph and the options.
"""

from __future__ import annotations

from typing import Mapping

from ..graph import GraphIndex


def batch_axes(
    index: GraphIndex,
    given: Mapping[str, int | None] | None = None,
    shapes: Mapping[str, tuple[int | None, ...]] | None = None,
) -> dict[str, int | None]:
    """Each input's batch axis (None: the input is not a batch), by these rules, in order:

    1. the axis ``given`` names (``--batch-axis NAME=K``; ``NAME=none``: no batch axis);
    2. the axis its ``--shape`` marks with ``N`` (``--shape state=2xNx128``);
    3. the axis of the *batch symbol*, when the input carries it: a symbolic dimension
       (``dim_param``) shared by several inputs and leading at least one of them (of
       several such: the one on most inputs, then the one leading most, then the first);
    4. axis 0, when it is dynamic (a symbol no other input shares, or unknown), and for an
       input without a declared shape;
    5. when no input has a dynamic batch axis (a fully static model): axis 0 of the first
       input of rank 2 or more (the data; of rank 1 when there is none), whose leading size
       is the batch the model fixes, and of every other input of rank 2 or more that leads
       with the same size;
    6. otherwise none: a static state ``[2, 1, 128]`` next to a data input ``[1, 512]``, a
       scalar sample rate ``[]`` or ``[1]``, a flag.

    The axes found here are not checked against the inputs' ranks (:func:`input_specs` does).
    """
    given, shapes = given or {}, shapes or {}
    names = index.graph_inputs
    dims = {n: _declared(index, n, shapes) for n in names}
    out: dict[str, int | None] = {}
    for n in names:
        hint = shapes.get(n)
        if n in given:
            out[n] = given[n]
        elif hint is not None and None in hint:
            out[n] = hint.index(None)
    symbol = _batch_symbol(dims)
    rest = [n for n in names if n not in out]
    for n in rest:
        d = dims[n]
        if d is None:
            out[n] = 0
        elif symbol is not None and symbol in d:
            out[n] = d.index(symbol)
        elif d and is_dynamic(d[0]):
            out[n] = 0
    if not any(_dynamic_axis(dims[n], k) for n, k in out.items()):
        _static_batch_axes(dims, [n for n in rest if n not in out], out)
    return {n: out.get(n) for n in names}


def _static_batch_axes(
    dims: Mapping[str, list[int | str | None] | None], rest: list[str], out: dict[str, int | None]
) -> None:
    """Rule 5 of :func:`batch_axes`, for a model without a dynamic batch: axis 0 of the data
    input (the first of rank ≥ 2, else ≥ 1) and of the other inputs of rank ≥ 2 of the same leading size."""
    fixed = [d[k] for n, k in out.items() if k is not None and (d := dims[n]) is not None and -len(d) <= k < len(d)]
    if fixed:
        size = fixed[0]
    else:
        ranked = [n for n in rest if len(dims[n] or ()) >= 2] or [n for n in rest if len(dims[n] or ()) >= 1]
        if not ranked:
            return
        out[ranked[0]] = 0
        size = (dims[ranked[0]] or [None])[0]
    for n in rest:
        d = dims[n]
        if n not in out and d is not None and len(d) >= 2 and d[0] == size:
            out[n] = 0


def _declared(
    index: GraphIndex, name: str, shapes: Mapping[str, tuple[int | None, ...]]
) -> list[int | str | None] | None:
    """The dims the model declares for input ``name``, else those ``--shape`` gives, else None."""
    d = index.dims(name)
    if d is None and name in shapes:
        return list(shapes[name])
    return d


def _batch_symbol(dims: Mapping[str, list[int | str | None] | None]) -> str | None:
    """The symbolic dim shared by several inputs and leading one of them (rule 3 of :func:`batch_axes`)."""
    carriers: dict[str, int] = {}
    leading: dict[str, int] = {}
    for d in dims.values():
        for sym in dict.fromkeys(x for x in d or () if isinstance(x, str) and x):
            carriers[sym] = carriers.get(sym, 0) + 1
        if d and isinstance(d[0], str) and d[0]:
            leading[d[0]] = leading.get(d[0], 0) + 1
    shared = [sym for sym, c in carriers.items() if c >= 2 and sym in leading]
    return max(shared, key=lambda sym: (carriers[sym], leading[sym]), default=None)


def is_dynamic(d: int | str | None) -> bool:
    return not (isinstance(d, int) and d > 0)


def _dynamic_axis(d: list[int | str | None] | None, k: int | None) -> bool:
    """True when axis ``k`` of dims ``d`` is a dynamic batch (an undeclared shape counts as one)."""
    if k is None:
        return False
    return d is None or (-len(d) <= k < len(d) and is_dynamic(d[k]))
