"""Memory is a parameter: what a computation will hold, checked before it is attempted.

``ScoreConfig.max_memory`` bounds the model's weights, the arrays a data file inflates, one
batch of inputs and of tap outputs, and the matrices kept.  A model or a request that would
need more is refused with one sentence saying what it needs and what to change — before
anything is allocated.  What these declared sizes cannot foresee (a tensor the model itself
computes) the sandbox bounds (:mod:`onnx_near.sandbox`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import onnx

from .config import Rows
from .errors import ConfigError, InputDataError, ModelLoadError
from .matrices import Geometry, block_rows


class _Input(Protocol):
    """What the budget reads of an input (an :class:`~onnx_near.inputs.InputSpec`; inputs
    itself reads the data files with :func:`array_bytes` and :func:`check_data_file`)."""

    @property
    def name(self) -> str: ...
    @property
    def dtype(self) -> np.dtype: ...
    @property
    def sample_shape(self) -> tuple[int, ...]: ...
    @property
    def static_batch(self) -> int | None: ...


def gib(n: float) -> str:
    """``n`` bytes, readable."""
    if n >= 2**40:
        return f"{n / 2**40:.1f} TiB"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def array_bytes(shape: Sequence[int], dtype: np.dtype) -> float:
    """Bytes an array of ``shape`` and ``dtype`` takes (a float: a declared shape may be absurd)."""
    return float(np.prod(shape, dtype=np.float64)) * dtype.itemsize


def check_data_file(name: str, arrays: Mapping[str, float], limit: int) -> None:
    """Refuse a data file whose arrays (bytes each, as their headers declare them) would
    need more than the budget once read into memory."""
    need = sum(arrays.values())
    if need > limit:
        largest = max(arrays, key=lambda k: arrays[k])
        raise InputDataError(
            f"data file {name!r} would take {gib(need)} once decompressed (array {largest!r}: "
            f"{gib(arrays[largest])}), more than the memory limit of {gib(limit)} (--max-memory); give fewer "
            "samples, or save it uncompressed (np.savez or .npy), which is read from disk batch by batch"
        )


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of every initializer of the main graph, inline or external, from the declared shapes."""
    total = 0
    for t in model.graph.initializer:
        size = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize if t.data_type else 1
        total += int(np.prod(t.dims, dtype=np.float64)) * size
    return total


def check_weights(model: onnx.ModelProto, name: str, limit: int) -> None:
    """Refuse a model whose declared weights alone exceed the budget."""
    need = weight_bytes(model)
    if need > limit:
        raise ModelLoadError(
            f"{name!r} declares {gib(need)} of weights, more than the memory limit of {gib(limit)} (--max-memory)"
        )


def check_inputs(specs: Sequence[_Input], limit: int) -> None:
    """Refuse inputs whose single sample already exceeds the budget (absurd declared dims)."""
    for s in specs:
        need = float(np.prod(s.sample_shape, dtype=np.float64)) * s.dtype.itemsize * (s.static_batch or 1)
        if need > limit:
            dims = "x".join(str(d) for d in s.sample_shape)
            raise InputDataError(
                f"input {s.name!r} of shape {dims} needs {gib(need)} per batch, more than the memory limit of {gib(limit)} (--max-memory)"
            )


def check_matrices(
    geoms: Mapping[str, Geometry], rows: Rows, samples: int, itemsize: Mapping[str, int], limit: int
) -> None:
    """Refuse a request whose matrices (the rows kept for every tap) exceed the budget."""
    need = 0.0
    for name, g in geoms.items():
        count = block_rows(g, rows, samples)
        need += float(count) * g.cols * itemsize[name]
    if need > limit:
        raise ConfigError(
            f"the matrices asked for (--rows {rows}) would take {gib(need)}, more than the memory limit of {gib(limit)} "
            "(--max-memory); ask for fewer rows"
        )


def batch_limit(per_sample_bytes: float, limit: int) -> int:
    """The most samples one batch of tap outputs may hold within a quarter of the budget."""
    allowed = int(limit // 4 // max(per_sample_bytes, 1.0))
    if allowed < 1:
        raise ConfigError(
            f"one sample's tap outputs take {gib(per_sample_bytes)}, more than a quarter of the memory limit of {gib(limit)} (--max-memory)"
        )
    return allowed
