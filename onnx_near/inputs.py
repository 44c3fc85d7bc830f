"""Input data: the user's arrays, checked against the model, or synthetic samples (SPEC §5).

User data comes as a ``.npy`` file (models with one input), a ``.npz`` file keyed by input
name, an array, or a dict of arrays.  Without data, samples are synthesised from the
declared inputs: standard normal floats, token ids drawn uniformly below the size of the
embedding table that reads them.  All randomness comes from the caller's generator.

Each input has a batch axis, the axis that holds its samples (:func:`batch_axes` says how
it is found), or none: an input without one (a recurrent state, a sample rate, a flag) is
fed unchanged with every batch — the data's array whole, a ``--input NAME=VALUE``, or zeros.
Static dimensions are never changed.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Mapping, Sequence, Union

import numpy as np
import onnx
from onnx import helper

from .budget import array_bytes, check_data_file, gib
from .errors import InputDataError
from .graph import GraphIndex, attribute

log = logging.getLogger(__name__)

DataArg = Union[None, str, "os.PathLike[str]", np.ndarray, Mapping[str, np.ndarray]]
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
        elif d and _dynamic(d[0]):
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


def _dynamic(d: int | str | None) -> bool:
    return not (isinstance(d, int) and d > 0)


def _dynamic_axis(d: list[int | str | None] | None, k: int | None) -> bool:
    """True when axis ``k`` of dims ``d`` is a dynamic batch (an undeclared shape counts as one)."""
    if k is None:
        return False
    return d is None or (-len(d) <= k < len(d) and _dynamic(d[k]))


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
            raise InputDataError(f"{option} names input {unknown[0]!r}, but the model's inputs are {_listing(names)}")
    axes = batch_axes(index, given_axes, shapes)
    symbols = _symbol_sizes(index, data, shapes, axes)
    specs = [_spec(index, n, axes[n], n in given_axes, shapes.get(n), data, symbols, values.get(n)) for n in names]
    if names and all(s.batch_axis is None for s in specs):
        raise InputDataError(
            f"none of the model's inputs {_listing(names)} has a batch axis; say which axis holds the samples "
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
                f"--batch-axis {name}={k} is outside the {len(dims)} dimensions {_fmt_dims(dims)} of input {name!r}"
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
            if _dynamic(d):
                raise InputDataError(
                    f"input {name!r} has no batch axis the graph shows and a dynamic dimension {d!r} at axis {j}; "
                    f"if that axis holds the samples, say --batch-axis {name}={j}, else give its size with "
                    f"--shape {name}={_example(dims, None)}"
                )
    if arr is not None:
        whole = "" if k is not None else " (it has no batch axis: its array is fed whole with every batch)"
        if arr.ndim != len(dims):
            raise InputDataError(
                f"input {name!r} expects {len(dims)} dimensions {_fmt_dims(dims)}, the data has {arr.ndim} "
                f"{tuple(arr.shape)}{whole}"
            )
        for j, d in enumerate(dims):
            if j != k and isinstance(d, int) and d > 0 and arr.shape[j] != d:
                raise InputDataError(
                    f"input {name!r} expects shape {_fmt_dims(dims)}, the data has {tuple(arr.shape)} (axis {j} differs){whole}"
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
                    axis = int(attribute(n, "axis", 0))
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


def read_data(
    data: DataArg, input_names: list[str], optional: Sequence[str] = (), limit: int | None = None
) -> dict[str, np.ndarray] | None:
    """Read the user's data into arrays keyed by input name (no checks against shapes yet).

    The inputs in ``optional`` (companions of token ids, inputs without a batch axis or
    given a value: :func:`optional_inputs`) may be missing.  The samples are counted by
    :func:`check_data`, along each input's batch axis.  A file's arrays are checked against
    ``limit`` bytes (``--max-memory``) before they are read (:func:`_read_file`)."""
    if data is None:
        return None
    if isinstance(data, np.ndarray):
        arrays: dict[str, np.ndarray] = {"": data}
    elif isinstance(data, Mapping):
        arrays = {str(k): np.asarray(v) for k, v in data.items()}
    else:
        arrays = _read_file(Path(data), limit)
    if "" in arrays:
        required = [n for n in input_names if n not in optional]
        if len(input_names) != 1 and len(required) == 1:
            arrays = {required[0]: arrays[""]}
        elif len(input_names) != 1:
            raise InputDataError(
                f"the data is a single array, but the model takes {len(required)} inputs from the data "
                f"({_listing(required)}); give an .npz file keyed by input name, or set the others with --input NAME=VALUE"
            )
        else:
            arrays = {input_names[0]: arrays[""]}
    for k in arrays:
        if k not in input_names:
            raise InputDataError(
                f"the data holds an array named {k!r}, but the model's inputs are {_listing(input_names)}"
            )
    for k in input_names:
        if k not in arrays and k not in optional:
            raise InputDataError(f"the data has no array for input {k!r}; it holds {_listing(sorted(arrays))}")
    return arrays


def _read_file(path: Path, limit: int | None = None) -> dict[str, np.ndarray]:
    """The arrays of a ``.npy`` file (key ``""``) or an ``.npz`` file, each array's header
    read and its declared size checked before any of its data is.

    A ``.npy`` file, and every array an ``.npz`` stores uncompressed (``np.savez``), is
    memory-mapped: read from disk batch by batch, never held whole.  The arrays an ``.npz``
    compresses (``np.savez_compressed``) are inflated into memory, so together they must fit
    within ``limit`` bytes (:func:`~onnx_near.budget.check_data_file`); an archive is never
    inflated beyond it.  A header that declares more data than the file holds is refused as
    truncated, an array of Python objects as needing pickle."""
    if not path.is_file():
        what = "is not a regular file (a directory, FIFO or device)" if path.exists() else "does not exist"
        raise InputDataError(f"data file {str(path)!r} {what}")
    where = f"data file {str(path)!r}"
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
            return _read_npz(path, limit)
        if magic == b"\x93NUMPY":
            return {"": _read_npy(path, where)}
        raise InputDataError(f"{where} is not a readable .npy or .npz file")
    except MemoryError as e:
        raise InputDataError(f"{where} needs more memory to be read than this process may use") from e
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, RuntimeError) as e:
        raise InputDataError(f"{where} is not a readable .npy or .npz file") from e


def _read_npy(path: Path, where: str) -> np.ndarray:
    """A ``.npy`` file, memory-mapped, once its header is found to fit the file."""
    with open(path, "rb") as f:
        shape, _, dtype = _npy_header(f, where)
        start = f.tell()
    _check_fits(where, shape, dtype, path.stat().st_size - start)
    return np.load(path, allow_pickle=False, mmap_mode="r")  # type: ignore[no-any-return]


def _read_npz(path: Path, limit: int | None) -> dict[str, np.ndarray]:
    """An ``.npz`` file's arrays: the uncompressed ones memory-mapped where they lie in the
    archive, the compressed ones inflated once all their declared sizes fit ``limit``."""
    arrays: dict[str, np.ndarray] = {}
    inflate: list[tuple[zipfile.ZipInfo, str]] = []
    sizes: dict[str, float] = {}
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            if info.is_dir():
                continue
            key = info.filename.removesuffix(".npy")
            where = f"array {key!r} of data file {str(path)!r}"
            if info.flag_bits & 0x1:
                raise InputDataError(f"{where} is encrypted; give the data unencrypted")
            if info.compress_type == zipfile.ZIP_STORED:
                arrays[key] = _mapped_member(path, info, where)
                continue
            with z.open(info) as f:
                shape, _, dtype = _npy_header(f, where)
                head = f.tell()
            _check_fits(where, shape, dtype, info.file_size - head)
            sizes[key] = array_bytes(shape, dtype)
            inflate.append((info, key))
        if limit is not None and sizes:
            check_data_file(str(path), sizes, limit)
        for info, key in inflate:
            with z.open(info) as f:
                arrays[key] = np.lib.format.read_array(f, allow_pickle=False)
    return arrays


def _mapped_member(path: Path, info: zipfile.ZipInfo, where: str) -> np.ndarray:
    """An array an ``.npz`` stores uncompressed, memory-mapped where it lies in the archive."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)  # the member's local file header; its name and extra field follow
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            raise InputDataError(f"{where} is not where the archive's directory says it is; the file is damaged")
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_length + extra_length)
        begin = f.tell()
        shape, fortran, dtype = _npy_header(f, where)
        start = f.tell()
    _check_fits(where, shape, dtype, info.file_size - (start - begin))
    if array_bytes(shape, dtype) == 0:
        return np.empty(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=start, shape=shape, order="F" if fortran else "C")


def _npy_header(f: IO[bytes], where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """The shape, Fortran order and dtype a ``.npy`` header declares (numpy's own reader,
    which bounds the header's length); the file is left at the start of the data."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise InputDataError(
                f"{where} is a .npy array of format {version[0]}.{version[1]}; onnx-near reads 1.0 and 2.0"
            )
    except (ValueError, EOFError) as e:
        raise InputDataError(f"{where} is not a readable .npy array") from e
    if dtype.hasobject:
        raise InputDataError(f"{where} holds Python objects, which cannot be read without pickle")
    if any(d < 0 for d in shape):
        raise InputDataError(f"{where} declares a negative dimension {shape}")
    return tuple(int(d) for d in shape), bool(fortran), dtype


def _check_fits(where: str, shape: tuple[int, ...], dtype: np.dtype, available: int) -> None:
    """Refuse an array whose header declares more data than the file holds after it."""
    need = array_bytes(shape, dtype)
    if need > available:
        dims = "×".join(str(d) for d in shape) or "a scalar"
        raise InputDataError(
            f"{where} is truncated: its header declares {dims} {dtype} ({gib(need)}), but the file holds "
            f"{max(available, 0)} bytes of data after it"
        )


def check_data(arrays: Mapping[str, np.ndarray], specs: list[InputSpec]) -> dict[str, np.ndarray]:
    """Check the user's data: as many samples in every input with a batch axis (counted
    along it; inputs without one are taken whole), and dtypes and values the model takes."""
    counts = [
        (s.name, s.batch_axis, int(arrays[s.name].shape[s.batch_axis]))
        for s in specs
        if s.name in arrays and s.batch_axis is not None
    ]
    if len({c for _, _, c in counts}) > 1:
        odd = next(n for n, _, c in counts if c != counts[0][2])
        listing = ", ".join(f"{n!r} {c} (axis {k})" for n, k, c in counts)
        raise InputDataError(
            f"the data's arrays hold different numbers of samples: {listing}; if {odd!r} is not a batch, say "
            f"--batch-axis {odd}=none (its array is then fed whole), else name the axis of its samples with --batch-axis {odd}=K"
        )
    empty = next(((n, k) for n, k, c in counts if c == 0), None)
    if empty is not None:
        raise InputDataError(f"the data holds no samples (input {empty[0]!r} is empty along its batch axis {empty[1]})")
    out: dict[str, np.ndarray] = {}
    for s in specs:
        if s.name not in arrays:  # a companion filled by convention
            continue
        a = arrays[s.name]
        kind, want = a.dtype.kind, s.dtype.kind
        if kind not in "biuf":
            raise InputDataError(f"input {s.name!r} expects {s.dtype} values, the data holds {a.dtype}")
        if want in "iu" and kind == "f":
            raise InputDataError(
                f"input {s.name!r} expects integer ({s.dtype}) values such as token ids, the data holds {a.dtype}"
            )
        if want == "b" and kind != "b":
            raise InputDataError(f"input {s.name!r} expects bool values, the data holds {a.dtype}")
        if kind == "f" and not _all_finite(a):
            raise InputDataError(f"input {s.name!r} holds NaN or Inf values; give finite data")
        if want in "iu" and kind in "iu":
            info = np.iinfo(s.dtype)
            if a.size and (a.min() < info.min or a.max() > info.max):
                raise InputDataError(f"input {s.name!r} holds values outside the range of {s.dtype}")
            if s.vocab is not None and a.size and (a.min() < 0 or a.max() >= s.vocab):
                raise InputDataError(
                    f"input {s.name!r} holds ids outside [0, {s.vocab}), the size of the embedding table that reads it"
                )
        out[s.name] = a
    return out


def _all_finite(a: np.ndarray, chunk: int = 1 << 22) -> bool:
    """True when ``a`` holds no NaN/Inf, checked in chunks (``a`` may be memory-mapped)."""
    flat = a.reshape(-1)
    return all(bool(np.isfinite(flat[i : i + chunk]).all()) for i in range(0, flat.size, chunk))


class Source:
    """Where samples come from: the user's arrays or a synthetic generator, and the one array
    fed with every batch to each input without a batch axis."""

    def __init__(self, specs: list[InputSpec], arrays: Mapping[str, np.ndarray] | None, synthetic: str = "normal"):
        self.specs = specs
        self.arrays = arrays
        self.synthetic = synthetic  # how float inputs are synthesised: "normal" or "smooth" (images)
        self.fixed: dict[str, np.ndarray] = {}  # inputs without a batch axis: fed unchanged with every batch
        for s in specs:
            if s.batch_axis is None:
                self.fixed[s.name] = self._fixed(s)
            elif self.given(s) is None and s.value is None and s.companion is None:
                if s.dtype.kind in "iu" and s.vocab is None:
                    raise InputDataError(
                        f"input {s.name!r} holds integers and no embedding table reads it, so their range is "
                        f"unknown; give data with --data, or one value for every sample with --input {s.name}=VALUE"
                    )
                if s.dtype.kind not in "biuf":
                    raise InputDataError(
                        f"input {s.name!r} has dtype {s.dtype}, which onnx-near cannot synthesise; give data with --data"
                    )
        fixed = {s.static_batch for s in specs if s.static_batch}
        if len(fixed) > 1:
            raise InputDataError(
                "the model's inputs fix different batch sizes: "
                + ", ".join(f"{s.name!r} {s.static_batch} (axis {s.batch_axis})" for s in specs if s.static_batch)
                + "; say which inputs are not a batch with --batch-axis NAME=none"
            )

    def given(self, spec: InputSpec) -> np.ndarray | None:
        """The user's array for ``spec``, if the data holds one."""
        return self.arrays.get(spec.name) if self.arrays is not None else None

    def _fixed(self, s: InputSpec) -> np.ndarray:
        """The array fed with every batch to an input without a batch axis."""
        a = self.given(s)
        if a is not None:
            return np.ascontiguousarray(np.asarray(a).astype(s.dtype, copy=False))
        if s.value is not None:
            return np.full(s.sample_shape, s.value, dtype=s.dtype)
        if s.companion is not None:
            return fill_companion(s, 0)
        if s.dtype.kind == "f" or (s.dtype.kind in "iu" and s.vocab is not None):
            return np.zeros(s.sample_shape, dtype=s.dtype)
        raise InputDataError(
            f"input {s.name!r} ({s.dtype}, shape {_fmt_dims(s.sample_shape)}) has no batch axis and values onnx-near "
            f"cannot guess (a sample rate, a flag); give its value with --input {s.name}=VALUE, e.g. --input {s.name}=16000"
        )

    @property
    def described(self) -> str:
        """What was fed, for the report: "data", or the kind of synthetic inputs."""
        synthesised = [sp for sp in self.specs if sp.batch_axis is not None and self.given(sp) is None]
        if not synthesised:
            return "data"
        images = self.synthetic == "smooth" and any(
            sp.dtype.kind == "f" and image_layout(sp.sample_shape) is not None for sp in synthesised
        )
        kind = "synthetic: smooth random images" if images else "synthetic: N(0, 1) noise"
        return (
            kind
            if len(synthesised) == len([sp for sp in self.specs if sp.batch_axis is not None])
            else (f"data and {kind}")
        )

    @property
    def n_samples(self) -> int | None:
        """Number of samples available (None: unbounded synthetic data)."""
        for s in self.specs:
            a = self.given(s)
            if a is not None and s.batch_axis is not None:
                return int(a.shape[s.batch_axis])
        return None

    @property
    def filled(self) -> list[str]:
        """One sentence per input fed otherwise than with samples of the data or synthetic
        ones (filled by convention, set by ``--input``, fed whole), or batched on an axis
        other than 0, for the report."""
        notes: list[str] = []
        for s in self.specs:
            given = self.given(s) is not None
            if s.batch_axis is None:
                how = (
                    "the data's array"
                    if given
                    else f"{s.value:g} from --input"
                    if s.value is not None
                    else COMPANIONS[s.companion][0]
                    if s.companion is not None
                    else "zeros"
                )
                notes.append(
                    f"input {s.name!r} has no batch axis: fed unchanged with every batch ({how}, "
                    + (f"shape {_fmt_dims(s.sample_shape)})" if s.sample_shape else "a scalar)")
                )
                continue
            if s.value is not None:
                notes.append(f"input {s.name!r} was set to {s.value:g} for every sample (--input)")
            elif s.companion is not None and not given:
                notes.append(f"input {s.name!r} was not given: {COMPANIONS[s.companion][0]}")
            elif is_past(s.name) and not given and 0 in s.sample_shape:
                notes.append(f"input {s.name!r} was not given: an empty past (a decoder's cache of length 0)")
            if s.batch_axis != 0:
                notes.append(f"input {s.name!r} holds its samples along axis {s.batch_axis} (its batch axis)")
        return notes

    @property
    def static_batch(self) -> int | None:
        """The batch size the model fixes, if it fixes one."""
        return next((s.static_batch for s in self.specs if s.static_batch), None)

    def probe(self, batch: int) -> dict[str, np.ndarray]:
        """Feeds of ``batch`` samples used only to learn the tap shapes (no randomness)."""
        feeds: dict[str, np.ndarray] = {}
        for s in self.specs:
            a = self.given(s)
            if s.batch_axis is None:
                feeds[s.name] = self.fixed[s.name]
            elif a is not None:
                feeds[s.name] = _pad(_take(a, s, 0, batch), batch, s.batch_axis)
            elif s.value is not None:
                feeds[s.name] = np.full(s.shape(batch), s.value, dtype=s.dtype)
            elif s.companion is not None:
                feeds[s.name] = fill_companion(s, batch)
            else:
                feeds[s.name] = np.zeros(s.shape(batch), dtype=s.dtype)
        return feeds

    def window(self, start: int, count: int, rng: np.random.Generator) -> Window:
        """Samples ``start .. start+count`` of the data, or ``count`` fresh synthetic ones."""
        return Window(self, start, count, rng)


class Window:
    """A run of consecutive samples, handed out batch by batch, in order."""

    def __init__(self, source: Source, start: int, count: int, rng: np.random.Generator):
        self.source, self.start, self.count, self.rng = source, start, count, rng
        self._next = 0

    def batch(self, lo: int, hi: int, pad_to: int | None = None) -> dict[str, np.ndarray]:
        """Feeds for samples ``lo .. hi`` of the window (padded to ``pad_to`` samples); an
        input without a batch axis gets its one array."""
        if lo != self._next:
            raise ValueError("window batches must be taken in order")
        self._next = hi
        feeds: dict[str, np.ndarray] = {}
        for s in self.source.specs:
            given = self.source.given(s)
            if s.batch_axis is None:
                feeds[s.name] = self.source.fixed[s.name]
                continue
            if given is not None:
                a = _take(given, s, self.start + lo, self.start + hi)
            elif s.value is not None:
                a = np.full(s.shape(hi - lo), s.value, dtype=s.dtype)
            elif s.companion is not None:
                a = fill_companion(s, hi - lo)
            else:
                a = synthesise(s, hi - lo, self.rng, self.source.synthetic)
            feeds[s.name] = _pad(a, pad_to, s.batch_axis) if pad_to else a
        return feeds


def synthesise(spec: InputSpec, n: int, rng: np.random.Generator, kind: str = "normal") -> np.ndarray:
    """``n`` synthetic samples for ``spec``: N(0, 1) floats, uniform token ids, fair booleans;
    with ``kind="smooth"``, image-shaped float inputs (:func:`image_layout`) get smooth random
    images instead: N(0, 1) noise at a quarter of the resolution, interpolated bilinearly to
    full size, each pixel of unit variance (``vet``'s default: on trained image models their
    effective ranks come closest to those of real images).

    They are drawn sample by sample (then moved to the batch axis), so they do not depend on
    how the samples are split into batches."""
    shape = (n, *spec.sample_shape)
    layout = image_layout(spec.sample_shape) if kind == "smooth" and spec.dtype.kind == "f" else None
    if layout is not None:
        a = _smooth_images(shape, layout, rng).astype(spec.dtype, copy=False)
    elif spec.dtype.kind == "f":
        a = rng.standard_normal(shape, dtype=np.float32).astype(spec.dtype, copy=False)
    elif spec.dtype.kind in "iu":
        assert spec.vocab is not None
        a = rng.integers(0, spec.vocab, size=shape).astype(spec.dtype)
    else:
        a = rng.random(shape) < 0.5
    return spec.to_axis(a)


def _take(a: np.ndarray, spec: InputSpec, lo: int, hi: int) -> np.ndarray:
    """Samples ``lo .. hi`` of the user's array ``a`` (sliced along the batch axis; ``a`` may be memory-mapped)."""
    k = spec.batch_axis or 0
    part = np.asarray(a[(slice(None),) * k + (slice(lo, hi),)])
    return np.ascontiguousarray(part.astype(spec.dtype, copy=False)) if k else part.astype(spec.dtype, copy=False)


def _pad(a: np.ndarray, n: int | None, axis: int | None = 0) -> np.ndarray:
    """Repeat the last sample until ``a`` holds ``n`` samples along ``axis`` (for models with a fixed batch)."""
    k = axis or 0
    if n is None or a.shape[k] >= n:
        return a
    last = np.take(a, [a.shape[k] - 1], axis=k)
    return np.concatenate([a, np.repeat(last, n - a.shape[k], axis=k)], axis=k)


def _listing(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names) if names else "(none)"


def _fmt_dims(dims: Sequence[object]) -> str:
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


def image_layout(sample_shape: tuple[int, ...]) -> str | None:
    """ "CHW" or "HWC" when a sample is an image — three axes, two spatial ones of at least 8,
    at most 4 channels first or last — else None."""
    if len(sample_shape) != 3:
        return None
    c0, h, w = sample_shape
    if c0 <= 4 and min(h, w) >= 8:
        return "CHW"
    h, w, c = sample_shape
    if c <= 4 and min(h, w) >= 8:
        return "HWC"
    return None


def _interpolation(size: int, low: int) -> np.ndarray:
    """The (size × low) matrix of bilinear interpolation from ``low`` points to ``size``."""
    m = np.zeros((size, low))
    pos = (np.arange(size) + 0.5) * low / size - 0.5
    left = np.clip(np.floor(pos).astype(int), 0, low - 1)
    right = np.clip(left + 1, 0, low - 1)
    frac = np.clip(pos - left, 0.0, 1.0)
    m[np.arange(size), left] += 1 - frac
    m[np.arange(size), right] += frac
    return m


def _smooth_images(shape: tuple[int, ...], layout: str, rng: np.random.Generator) -> np.ndarray:
    """Smooth random images of ``shape`` (batch first): quarter-resolution noise, upsampled."""
    n = shape[0]
    c, h, w = shape[1:] if layout == "CHW" else (shape[3], shape[1], shape[2])
    low_h, low_w = max(2, -(-h // 4)), max(2, -(-w // 4))
    noise = rng.standard_normal((n, c, low_h, low_w))
    rows, cols = _interpolation(h, low_h), _interpolation(w, low_w)
    up = np.einsum("Hh,nchw,Ww->ncHW", rows, noise, cols, optimize=True)
    # each pixel a weighted sum of independent N(0, 1) draws: divided by its weights' norm, N(0, 1)
    up /= np.sqrt(np.outer((rows**2).sum(1), (cols**2).sum(1)))
    out = up if layout == "CHW" else up.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(out, dtype=np.float32)
