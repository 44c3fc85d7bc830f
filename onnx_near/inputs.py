"""Input data: the user's arrays, checked against the model, or synthetic samples (SPEC §5).

User data comes as a ``.npy`` file (models with one input), a ``.npz`` file keyed by input
name, an array, or a dict of arrays.  Without data, samples are synthesised from the
declared inputs: standard normal floats, token ids drawn uniformly below the size of the
embedding table that reads them.  All randomness comes from the caller's generator.

Axis 0 of every input is the batch (sample) axis.
"""

from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence, Union

import numpy as np
import onnx
from onnx import helper

from .errors import InputDataError
from .graph import GraphIndex, attribute

log = logging.getLogger(__name__)

DataArg = Union[None, str, "os.PathLike[str]", np.ndarray, Mapping[str, np.ndarray]]
_PASS_THROUGH = {"Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity", "Clip"}


@dataclass(frozen=True)
class InputSpec:
    """One model input: its dtype, per-sample shape, static batch size and token range."""

    name: str
    dtype: np.dtype
    sample_shape: tuple[int, ...]
    static_batch: int | None
    vocab: int | None  # for integer inputs read by an embedding table
    companion: str | None = None  # "mask", "token_type" or "position": filled by convention (COMPANIONS)


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
        elem = index.elem_type(name)
        if not elem:
            continue
        kind = companion_kind(name, np.dtype(helper.tensor_dtype_to_np_dtype(elem)))
        if kind is not None:
            out[name] = kind
    return out


def fill_companion(spec: InputSpec, n: int) -> np.ndarray:
    """``n`` samples of a companion input, by its convention (no randomness)."""
    shape = (n, *spec.sample_shape)
    if spec.companion == "mask":
        return np.ones(shape, dtype=spec.dtype)
    if spec.companion == "position":
        length = shape[-1] if len(shape) > 1 else 1
        return np.broadcast_to(np.arange(length, dtype=spec.dtype), shape).copy()
    return np.zeros(shape, dtype=spec.dtype)


def input_specs(
    index: GraphIndex, shapes: Mapping[str, tuple[int | None, ...]], data: Mapping[str, np.ndarray] | None
) -> list[InputSpec]:
    """The model's inputs with every dimension resolved.

    Dynamic dims come from ``shapes`` (``--shape``), else from the user's data; the batch
    dim (axis 0) stays free unless the model fixes it.  Raises :class:`InputDataError`
    naming the input when a dimension cannot be resolved.
    """
    names = index.graph_inputs
    symbols = _symbol_sizes(index, data)
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise InputDataError(f"--shape names input {unknown[0]!r}, but the model's inputs are {_listing(names)}")
    specs: list[InputSpec] = []
    for name in names:
        t = index.value_types.get(name)
        elem = t.tensor_type.elem_type if t is not None else 0
        if not elem:
            raise InputDataError(f"input {name!r} is not a tensor input; onnx-near scores tensor inputs only")
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem))
        dims = index.dims(name)
        given = shapes.get(name)
        arr = data.get(name) if data is not None else None
        kind = companion_kind(name, dtype)
        if arr is None and kind is not None and dims is not None and data is not None:
            dims = [symbols.get(d, d) if isinstance(d, str) else d for d in dims]
        if dims is None:
            dims = list(given) if given is not None else ([None] * arr.ndim if arr is not None else None)
            if dims is None:
                raise InputDataError(f"input {name!r} has no declared shape; give it with --shape {name}=Nx...")
        if len(dims) == 0:
            raise InputDataError(f"input {name!r} is a scalar; onnx-near needs a batch axis (axis 0) on every input")
        if given is not None:
            if len(given) != len(dims):
                raise InputDataError(f"--shape for {name!r} has {len(given)} dims, but the model declares {len(dims)}")
            for k, (g, d) in enumerate(zip(given, dims)):
                if k > 0 and isinstance(d, int) and d > 0 and g != d:
                    raise InputDataError(f"--shape for {name!r} sets axis {k} to {g}, but the model fixes it at {d}")
            dims = [dims[0], *list(given[1:])]
        if arr is not None:
            if arr.ndim != len(dims):
                raise InputDataError(
                    f"input {name!r} expects {len(dims)} dimensions {_fmt_dims(dims)}, the data has {arr.ndim} {tuple(arr.shape)}"
                )
            for k in range(1, len(dims)):
                d = dims[k]
                if isinstance(d, int) and d > 0 and arr.shape[k] != d:
                    raise InputDataError(
                        f"input {name!r} expects shape {_fmt_dims(dims)}, the data has {tuple(arr.shape)} (axis {k} differs)"
                    )
            dims = [dims[0], *list(arr.shape[1:])]
        sample: list[int] = []
        for k, d in enumerate(dims[1:], start=1):
            if not (isinstance(d, int) and d > 0):
                raise InputDataError(
                    f"input {name!r} has dynamic dimension {d!r} at axis {k}; give it with --shape {name}={_example(dims)}"
                )
            sample.append(d)
        b = dims[0]
        static_batch = b if isinstance(b, int) and b > 0 else None
        vocab = _vocab(index, name) if dtype.kind in "iu" else None
        filled = kind if (data is None or arr is None) else None
        specs.append(InputSpec(name, dtype, tuple(sample), static_batch, vocab, filled))
    return specs


def _symbol_sizes(index: GraphIndex, data: Mapping[str, np.ndarray] | None) -> dict[str, int]:
    """The size the user's data gives each symbolic dimension (e.g. a sequence length)."""
    sizes: dict[str, int] = {}
    for name, arr in (data or {}).items():
        dims = index.dims(name) or []
        for d, n in zip(dims, arr.shape):
            if isinstance(d, str):
                sizes.setdefault(d, int(n))
    return sizes


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


def read_data(data: DataArg, input_names: list[str], optional: Sequence[str] = ()) -> dict[str, np.ndarray] | None:
    """Read the user's data into arrays keyed by input name (no checks against shapes yet).

    The inputs in ``optional`` (companions of token ids) may be missing: they are filled by
    convention."""
    if data is None:
        return None
    if isinstance(data, np.ndarray):
        arrays: dict[str, np.ndarray] = {"": data}
    elif isinstance(data, Mapping):
        arrays = {str(k): np.asarray(v) for k, v in data.items()}
    else:
        arrays = _read_file(Path(data))
    if "" in arrays:
        required = [n for n in input_names if n not in optional]
        if len(input_names) != 1 and len(required) == 1:
            arrays = {required[0]: arrays[""]}
        elif len(input_names) != 1:
            raise InputDataError(
                f"the data is a single array, but the model has {len(input_names)} inputs {_listing(input_names)}; "
                "give an .npz file keyed by input name"
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
    counts = {k: (a.shape[0] if a.ndim else 0) for k, a in arrays.items()}
    if len(set(counts.values())) > 1:
        raise InputDataError(f"the data's arrays hold different numbers of samples (axis 0): {counts}")
    if 0 in counts.values():
        raise InputDataError("the data holds no samples (axis 0 is empty)")
    return arrays


def _read_file(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise InputDataError(f"data file {str(path)!r} does not exist")
    try:
        loaded = np.load(path, allow_pickle=False, mmap_mode="r")  # .npy: read lazily, batch by batch
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise InputDataError(f"data file {str(path)!r} is not a readable .npy or .npz file") from e
    if isinstance(loaded, np.ndarray):
        return {"": loaded}
    with loaded:
        try:
            return {k: loaded[k] for k in loaded.files}
        except (ValueError, OSError, zipfile.BadZipFile) as e:
            raise InputDataError(f"data file {str(path)!r} holds an array that cannot be read without pickle") from e


def check_data(arrays: Mapping[str, np.ndarray], specs: list[InputSpec]) -> dict[str, np.ndarray]:
    """Check dtypes and values of the user's data and cast it to what the model declares."""
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
    """Where samples come from: the user's arrays or a synthetic generator."""

    def __init__(self, specs: list[InputSpec], arrays: Mapping[str, np.ndarray] | None):
        self.specs = specs
        self.arrays = arrays
        if arrays is None:
            for s in specs:
                if s.companion is not None:
                    continue
                if s.dtype.kind in "iu" and s.vocab is None:
                    raise InputDataError(
                        f"input {s.name!r} holds integers and no embedding table reads it, so their range is "
                        "unknown; give data with --data"
                    )
                if s.dtype.kind not in "biuf":
                    raise InputDataError(
                        f"input {s.name!r} has dtype {s.dtype}, which onnx-near cannot synthesise; give data with --data"
                    )

    @property
    def n_samples(self) -> int | None:
        """Number of samples available (None: unbounded synthetic data)."""
        if self.arrays is None:
            return None
        return int(next(iter(self.arrays.values())).shape[0])

    @property
    def filled(self) -> list[str]:
        """One sentence per input filled by convention, for the report."""
        return [
            f"input {s.name!r} was not given: {COMPANIONS[s.companion][0]}"
            for s in self.specs
            if s.companion is not None and (self.arrays is None or s.name not in self.arrays)
        ]

    @property
    def static_batch(self) -> int | None:
        """The batch size the model fixes, if it fixes one."""
        return next((s.static_batch for s in self.specs if s.static_batch), None)

    def probe(self, batch: int) -> dict[str, np.ndarray]:
        """Feeds of ``batch`` samples used only to learn the tap shapes (no randomness)."""
        if self.arrays is not None:
            return {
                s.name: _pad(np.asarray(self.arrays[s.name][:batch]), batch).astype(s.dtype, copy=False)
                if s.name in self.arrays
                else fill_companion(s, batch)
                for s in self.specs
            }
        return {
            s.name: fill_companion(s, batch) if s.companion else np.zeros((batch, *s.sample_shape), dtype=s.dtype)
            for s in self.specs
        }

    def window(self, start: int, count: int, rng: np.random.Generator) -> Window:
        """Samples ``start .. start+count`` of the data, or ``count`` fresh synthetic ones."""
        return Window(self, start, count, rng)


class Window:
    """A run of consecutive samples, handed out batch by batch, in order."""

    def __init__(self, source: Source, start: int, count: int, rng: np.random.Generator):
        self.source, self.start, self.count, self.rng = source, start, count, rng
        self._next = 0

    def batch(self, lo: int, hi: int, pad_to: int | None = None) -> dict[str, np.ndarray]:
        """Feeds for samples ``lo .. hi`` of the window (padded to ``pad_to`` samples)."""
        if lo != self._next:
            raise ValueError("window batches must be taken in order")
        self._next = hi
        feeds: dict[str, np.ndarray] = {}
        for s in self.source.specs:
            if s.companion is not None and (self.source.arrays is None or s.name not in self.source.arrays):
                a = fill_companion(s, hi - lo)
            elif self.source.arrays is not None:
                a = np.asarray(self.source.arrays[s.name][self.start + lo : self.start + hi]).astype(
                    s.dtype, copy=False
                )
            else:
                a = synthesise(s, hi - lo, self.rng)
            feeds[s.name] = _pad(a, pad_to) if pad_to else a
        return feeds


def synthesise(spec: InputSpec, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` synthetic samples for ``spec``: N(0, 1) floats, uniform token ids, fair booleans."""
    shape = (n, *spec.sample_shape)
    if spec.dtype.kind == "f":
        return rng.standard_normal(shape, dtype=np.float32).astype(spec.dtype, copy=False)
    if spec.dtype.kind in "iu":
        assert spec.vocab is not None
        return rng.integers(0, spec.vocab, size=shape).astype(spec.dtype)
    return rng.random(shape) < 0.5


def _pad(a: np.ndarray, n: int | None) -> np.ndarray:
    """Repeat the last sample until ``a`` holds ``n`` samples (for models with a fixed batch)."""
    if n is None or a.shape[0] >= n:
        return a
    return np.concatenate([a, np.repeat(a[-1:], n - a.shape[0], axis=0)], axis=0)


def _listing(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names) if names else "(none)"


def _fmt_dims(dims: Sequence[object]) -> str:
    return "(" + ", ".join("?" if not isinstance(d, int) else str(d) for d in dims) + ")"


def _example(dims: Sequence[object]) -> str:
    return "x".join(["N"] + [str(d) if isinstance(d, int) and d > 0 else "D" for d in dims[1:]])


def elem_name(elem_type: int) -> str:
    """Readable name of an ONNX element type."""
    return onnx.TensorProto.DataType.Name(elem_type).lower() if elem_type else "unknown"
