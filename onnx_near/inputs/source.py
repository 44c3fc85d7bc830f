"""Where the samples of a run come from: the user's arrays or synthetic ones, handed out window by window.

A :class:`Source` holds the inputs' specs and the user's arrays (if any) and the one array
fed with every batch to each input without a batch axis; a :class:`Window` is a run of
consecutive samples, handed out batch by batch.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ..errors import InputDataError
from .specs import COMPANIONS, InputSpec, fill_companion, fmt_dims, is_past
from .synthetic import image_layout, synthesise


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
            f"input {s.name!r} ({s.dtype}, shape {fmt_dims(s.sample_shape)}) has no batch axis and values onnx-near "
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
                    + (f"shape {fmt_dims(s.sample_shape)})" if s.sample_shape else "a scalar)")
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
