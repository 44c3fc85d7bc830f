"""The model's inputs as onnx-near feeds them: one :class:`InputSpec` each (SPEC §5).

:func:`input_specs` resolves every dimension of every input — from the model, ``--shape``,
the user's data and the symbols inputs share — around its batch axis
(:func:`~onnx_near.inputs.batch.batch_axes`), and gives each integer input the size of the
embedding table that reads it.  The conventional companions of token ids (an attention mask,
token-type and position ids) and a decoder's past are recognised by name here, and so are
the inputs the data may leave out (:func:`optional_inputs`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

from ..errors import InputDataError
from ..graph import GraphIndex, int_attribute
from .batch import batch_axes, is_dynamic

_PASS_THROUGH = {"Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity", "Clip"}


@dataclass(frozen=True)
class InputSpec:
    """One model input: its dtype, per-sample shape, batch axis, static batch size and token range.

    ``sample_shape`` is the input's shape without its batch axis; for an input without one
    (``batch_axis`` None) it is the whole shape, fed unchanged with every batch."""

    name: str
    dtype: np.dtype
    sample_shape: tuple[int, ...]
    static_batch: int | None
    vocab: int | None  # for integer inputs read by an embedding table
    companion: str | None = None  # "mask", "token_type" or "position": filled by convention (COMPANIONS)
    batch_axis: int | None = 0  # the axis of the samples; None: not a batch
    value: int | float | None = None  # every element set to this (``--input NAME=VALUE``)

    def shape(self, n: int) -> tuple[int, ...]:
        """The shape of a feed of ``n`` samples (the whole shape for an input without a batch axis)."""
        k = self.batch_axis
        return self.sample_shape if k is None else (*self.sample_shape[:k], n, *self.sample_shape[k:])

    def to_axis(self, a: np.ndarray) -> np.ndarray:
        """``a``, laid out samples first, with its samples moved to the batch axis (C-contiguous)."""
        return a if not self.batch_axis else np.ascontiguousarray(np.moveaxis(a, 0, self.batch_axis))


# The conventional companions of token inputs, recognised by the exporters' names, and what
# they are filled with when the data does not give them (SPEC §5): an attention mask of
# ones (every token attends), token-type ids of zeros (one segment), position ids 0…T−1.
COMPANIONS = {
    "mask": ("all ones (every token attends)", ("attention_mask", "input_mask", "padding_mask")),
    "token_type": ("all zeros (one segment)", ("token_type_ids", "segment_ids", "token_type")),
    "position": ("0…T−1 along the sequence", ("position_ids", "positions")),
}


def companion_kind(name: str, dtype: np.dtype) -> str | None:
    """Which conventional companion of token inputs the input ``name`` is, if any."""
    low = name.lower().replace("-", "_").replace(".", "_")
    for kind, (_, names) in COMPANIONS.items():
        if low in names or any(low.endswith("_" + n) or low.endswith("/" + n) for n in names):
            if kind == "mask" and dtype.kind in "biuf":
                return kind
            if dtype.kind in "iu":
                return kind
    return None


def companions(index: GraphIndex) -> dict[str, str]:
    """The model's inputs that are conventional companions of token ids, by kind."""
    out: dict[str, str] = {}
    for name in index.graph_inputs:
        dtype = np_dtype(index.elem_type(name))
        if dtype is None:  # not a tensor, or a type ONNX does not define: input_specs says so
            continue
        kind = companion_kind(name, dtype)
        if kind is not None:
            out[name] = kind
    return out


def fill_companion(spec: InputSpec, n: int) -> np.ndarray:
    """``n`` samples of a companion input, by its convention (no randomness); an input
    without a batch axis gets its whole shape."""
    shape = spec.sample_shape if spec.batch_axis is None else (n, *spec.sample_shape)
    if spec.companion == "mask":
        return np.ones(spec.shape(n), dtype=spec.dtype)
    if spec.companion == "position":
        length = shape[-1] if len(shape) > (0 if spec.batch_axis is None else 1) else 1
        return spec.to_axis(np.broadcast_to(np.arange(length, dtype=spec.dtype), shape).copy())
    return np.zeros(spec.shape(n), dtype=spec.dtype)


def optional_inputs(
    index: GraphIndex,
    given: Mapping[str, int | None] | None = None,
    shapes: Mapping[str, tuple[int | None, ...]] | None = None,
    values: Mapping[str, int | float] | None = None,
) -> list[str]:
    """The inputs the data may leave out: companions of token ids, a decoder's past (empty by
    default), inputs without a batch axis, and inputs given a value (``--input``)."""
    axes = batch_axes(index, given, shapes)
    return [
        n for n in index.graph_inputs if n in companions(index) or is_past(n) or axes[n] is None or n in (values or {})
    ]


def input_specs(
    index: GraphIndex,
    shapes: Mapping[str, tuple[int | None, ...]],
    data: Mapping[str, np.ndarray] | None,
    given_axes: Mapping[str, int | None] | None = None,
    values: Mapping[str, int | float] | None = None,
) -> list[InputSpec]:
    """The model's inputs with their batch axes (:func:`batch_axes`) and every other dimension resolved.

    Dynamic dims come from ``shapes`` (``--shape``), else from the user's data, else from
    another input that shares the symbol; the batch dim stays free unless the model fixes
    it.  ``values`` (``--input``) sets an input to a number.  Raises :class:`InputDataError`
    naming the input when a dimension cannot be resolved or an option names no input.
    """
    names = index.graph_inputs
    given_axes, values = given_axes or {}, values or {}
    for option, named in (("--shape", shapes), ("--batch-axis", given_axes), ("--input", values)):
        unknown = sorted(set(named) - set(names))
        if unknown:
            raise InputDataError(
                f"{option} names input {unknown[0]!r}, but the model's inputs are {name_listing(names)}"
            )
    axes = batch_axes(index, given_axes, shapes)
    symbols = _symbol_sizes(index, data, shapes, axes)
    specs = [_spec(index, n, axes[n], n in given_axes, shapes.get(n), data, symbols, values.get(n)) for n in names]
    if names and all(s.batch_axis is None for s in specs):
        raise InputDataError(
            f"none of the model's inputs {name_listing(names)} has a batch axis; say which axis holds the samples "
            "with --batch-axis NAME=K"
        )
    return specs


def _spec(
    index: GraphIndex,
    name: str,
    k: int | None,
    told: bool,
    given: tuple[int | None, ...] | None,
    data: Mapping[str, np.ndarray] | None,
    symbols: Mapping[str, tuple[int, str]],
    value: int | float | None,
) -> InputSpec:
    """One input's spec: its dims from the model, then ``--shape``, shared symbols and the data."""
    t = index.value_types.get(name)
    elem = t.tensor_type.elem_type if t is not None else 0
    if not elem:
        raise InputDataError(f"input {name!r} is not a tensor input; onnx-near scores tensor inputs only")
    dtype = np_dtype(elem)
    if dtype is None:
        raise InputDataError(f"input {name!r} has element type {elem}, which ONNX does not define")
    dims = index.dims(name)
    arr = data.get(name) if data is not None else None
    if dims is None:
        dims = list(given) if given is not None else ([None] * arr.ndim if arr is not None else None)
        if dims is None:
            raise InputDataError(f"input {name!r} has no declared shape; give it with --shape {name}=Nx...")
    if k is not None:
        if not -len(dims) <= k < len(dims):
            raise InputDataError(
                f"--batch-axis {name}={k} is outside the {len(dims)} dimensions {fmt_dims(dims)} of input {name!r}"
            )
        k %= len(dims)
    if given is not None:
        if len(given) != len(dims):
            raise InputDataError(f"--shape for {name!r} has {len(given)} dims, but the model declares {len(dims)}")
        for j, (g, d) in enumerate(zip(given, dims)):
            if j == k:
                continue
            if g is None:
                raise InputDataError(
                    f"--shape for {name!r} marks axis {j} as the batch, but its batch axis is "
                    f"{'none' if k is None else k} (--batch-axis)"
                )
            if isinstance(d, int) and d > 0 and g != d:
                raise InputDataError(f"--shape for {name!r} sets axis {j} to {g}, but the model fixes it at {d}")
        dims = [d if j == k else g for j, (g, d) in enumerate(zip(given, dims))]
    # a symbol another input's data or --shape gives (a companion's sequence length)
    resolved = [
        symbols[d][0]
        if isinstance(d, str) and j != k and symbols.get(d, ("", name))[1] != name
        else (_evaluate(d, symbols) if isinstance(d, str) and j != k and _expression(d) else None) or d
        for j, d in enumerate(dims)
    ]
    if is_past(name):  # the cache's own length symbol: 0 (recorded by _symbol_sizes under its name)
        resolved = [
            symbols[d][0] if isinstance(d, str) and j != k and d in symbols else d for j, d in enumerate(resolved)
        ]
    if arr is None:
        dims = resolved
    if k is None and not told:  # a dynamic dim of an input that seems not to be a batch: ask, don't guess
        for j, d in enumerate(resolved):
            if is_dynamic(d):
                raise InputDataError(
                    f"input {name!r} has no batch axis the graph shows and a dynamic dimension {d!r} at axis {j}; "
                    f"if that axis holds the samples, say --batch-axis {name}={j}, else give its size with "
                    f"--shape {name}={_example(dims, None)}"
                )
    if arr is not None:
        whole = "" if k is not None else " (it has no batch axis: its array is fed whole with every batch)"
        if arr.ndim != len(dims):
            raise InputDataError(
                f"input {name!r} expects {len(dims)} dimensions {fmt_dims(dims)}, the data has {arr.ndim} "
                f"{tuple(arr.shape)}{whole}"
            )
        for j, d in enumerate(dims):
            if j != k and isinstance(d, int) and d > 0 and arr.shape[j] != d:
                raise InputDataError(
                    f"input {name!r} expects shape {fmt_dims(dims)}, the data has {tuple(arr.shape)} (axis {j} differs){whole}"
                )
        dims = [d if j == k else int(arr.shape[j]) for j, d in enumerate(dims)]
    sample: list[int] = []
    for j, d in enumerate(dims):
        if j == k:
            continue
        if not (isinstance(d, int) and (d > 0 or (d == 0 and is_past(name)))):
            raise InputDataError(
                f"input {name!r} has dynamic dimension {d!r} at axis {j}; give it with --shape {name}={_example(dims, k)}"
            )
        sample.append(d)
    b = dims[k] if k is not None else None
    static_batch = b if isinstance(b, int) and b > 0 else None
    vocab = _vocab(index, name) if dtype.kind in "iu" else None
    kind = companion_kind(name, dtype) if arr is None else None
    if value is not None:
        _check_value(name, dtype, vocab, value, arr is not None)
    return InputSpec(name, dtype, tuple(sample), static_batch, vocab, kind, k, value)


def _check_value(name: str, dtype: np.dtype, vocab: int | None, value: int | float, in_data: bool) -> None:
    """Refuse a ``--input`` value the input cannot hold (or an input the data gives too)."""
    if in_data:
        raise InputDataError(f"input {name!r} is given both by the data and by --input; give it once")
    if dtype.kind not in "biuf":
        raise InputDataError(f"input {name!r} has dtype {dtype}, which --input cannot set")
    if dtype.kind in "biu":
        if float(value) != int(value):
            raise InputDataError(f"--input {name}={value}: input {name!r} holds {dtype} values; give an integer")
        low, high = (0, 1) if dtype.kind == "b" else (np.iinfo(dtype).min, np.iinfo(dtype).max)
        if not low <= int(value) <= high:
            raise InputDataError(f"--input {name}={value}: input {name!r} holds {dtype} values, from {low} to {high}")
        if vocab is not None and not 0 <= int(value) < vocab:
            raise InputDataError(
                f"--input {name}={value} is outside [0, {vocab}), the size of the embedding table that reads {name!r}"
            )


def _symbol_sizes(
    index: GraphIndex,
    data: Mapping[str, np.ndarray] | None,
    shapes: Mapping[str, tuple[int | None, ...]],
    axes: Mapping[str, int | None],
) -> dict[str, tuple[int, str]]:
    """The size the user's data (or ``--shape``) gives each symbolic dimension other than
    a batch (e.g. a sequence length), and the input that gives it."""
    sizes: dict[str, tuple[int, str]] = {}
    batch = {ds[k] for n, k in axes.items() if k is not None and (ds := index.dims(n)) and -len(ds) <= k < len(ds)}
    given = [(n, a.shape) for n, a in (data or {}).items()] + [(n, g) for n, g in shapes.items()]
    for name, shape in given:
        dims = index.dims(name) or []
        for d, size in zip(dims, shape):
            if isinstance(d, str) and d not in batch and isinstance(size, (int, np.integer)) and size > 0:
                sizes.setdefault(d, (int(size), name))
    for name in index.graph_inputs:  # a decoder's cache starts empty: its length 0 unless given
        if is_past(name) and name not in shapes and name not in (data or {}):
            for j, d in enumerate(index.dims(name) or []):
                if isinstance(d, str) and d not in batch and j != axes.get(name) and not _expression(d):
                    sizes.setdefault(d, (0, name))
    return sizes


# Inputs holding a decoder's cache of past keys and values (Hugging Face, optimum and the
# torch exporters' names): synthesised empty, a past of length 0, unless the user gives them.
_PAST = re.compile(r"(^|[._/])(past|past_key_values?|cache|kv_cache)([._/]|$)|^past", re.IGNORECASE)


def is_past(name: str) -> bool:
    """True for an input that holds a decoder's cache of past keys/values (``past_key_values.0.key``)."""
    return bool(_PAST.search(name))


def _expression(d: str) -> bool:
    return any(c in d for c in "+-*")


def _evaluate(d: str, symbols: Mapping[str, tuple[int, str]]) -> int | None:
    """The value of a dimension written as a sum of symbols and integers, as exporters name
    a decoder's mask (``past_sequence_length + sequence_length``); None when any term is unknown."""
    total = 0
    for sign, term in re.findall(r"([+-]?)\s*([^+\-\s]+)", d):
        value = int(term) if term.isdigit() else symbols[term][0] if term in symbols else None
        if value is None:
            return None
        total += -value if sign == "-" else value
    return total if total >= 0 else None


def _vocab(index: GraphIndex, name: str) -> int | None:
    """Size of the smallest embedding table (Gather from a constant) that reads ``name``."""
    sizes: list[int] = []
    frontier, seen = [name], {name}
    for _ in range(4):
        nxt: list[str] = []
        for t in frontier:
            for n in index.users(t):
                if n.op_type == "Gather" and len(n.input) > 1 and n.input[1] == t and index.is_const(n.input[0]):
                    d = index.dims(n.input[0])
                    axis = int_attribute(n, "axis", 0)
                    size = d[axis] if d else None
                    if isinstance(size, int):
                        sizes.append(size)
                elif n.op_type in _PASS_THROUGH and n.input and n.input[0] == t:
                    for o in n.output:
                        if o and o not in seen:
                            seen.add(o)
                            nxt.append(o)
        frontier = nxt
    return min(sizes) if sizes else None


def name_listing(names: list[str]) -> str:
    """The names quoted and comma-separated, for a sentence ("(none)" for none)."""
    return ", ".join(repr(n) for n in names) if names else "(none)"


def fmt_dims(dims: Sequence[object]) -> str:
    """Dims as a tuple, "?" for each that is not a number: ``(?, 3, 32, 32)``."""
    return "(" + ", ".join("?" if not isinstance(d, int) else str(d) for d in dims) + ")"


def _example(dims: Sequence[object], k: int | None = 0) -> str:
    """A ``--shape`` value for ``dims``: N at the batch axis ``k``, D for each dynamic dim."""
    return "x".join("N" if j == k else str(d) if isinstance(d, int) and d > 0 else "D" for j, d in enumerate(dims))


def elem_name(elem_type: int) -> str:
    """Readable name of an ONNX element type (``unknown (97)`` for one ONNX does not define)."""
    if not elem_type:
        return "unknown"
    try:
        return str(onnx.TensorProto.DataType.Name(elem_type)).lower()
    except ValueError:
        return f"unknown ({elem_type})"


def np_dtype(elem_type: int) -> np.dtype | None:
    """The numpy dtype of an ONNX element type; None for 0 (not a tensor) and for a type ONNX
    does not define (a hostile file's 97)."""
    if not elem_type:
        return None
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError, TypeError):
        return None
