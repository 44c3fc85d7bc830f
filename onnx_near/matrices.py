"""Stage 4, matrices: from tap tensors to the matrices whose effective rank is taken (SPEC §3).

A tap tensor has one feature axis (its columns); every other axis becomes rows, in
C order with the feature axis removed: an N×C×H×W tensor gives N·H·W rows of C values,
image by image, then line by line of the feature map.

By default a matrix is square: as many rows as it has columns, taken as one contiguous
block whose start is drawn at random among the starts of feature-map lines (for dense
taps, a line is one sample), within a window of consecutive samples.  Only the rows a
tap needs are kept, as the batches stream past.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .config import Rows


@dataclass(frozen=True)
class Geometry:
    """How one tap tensor folds into rows: its feature axis, columns, and rows per sample."""

    axis: int  # feature axis, counted from 0
    cols: int
    rows_per_sample: int
    line: int  # rows in one line of the feature map (1 for dense taps)
    batch_major: bool  # axis 0 of the tensor is the sample axis


def geometry(shape: tuple[int, ...], axis: int, batch: int) -> Geometry:
    """Geometry of a tap whose output for ``batch`` samples has ``shape``.

    Raises ValueError with a reason when the tensor cannot be made into a matrix.
    """
    rank = len(shape)
    if rank < 2:
        raise ValueError(f"a tensor of rank {rank} has no feature axis besides the batch axis")
    a = axis + rank if axis < 0 else axis
    if not 0 < a < rank:
        raise ValueError(f"feature axis {axis} is not a non-batch axis of a rank-{rank} tensor")
    cols = int(shape[a])
    other = math.prod(shape) // cols if cols else 0
    if cols == 0 or other == 0:
        raise ValueError(f"the tensor is empty (shape {tuple(shape)})")
    if other % batch:
        raise ValueError(f"its {other} rows are not a whole number per sample for a batch of {batch}")
    rest = [d for k, d in enumerate(shape) if k not in (0, a)]
    return Geometry(a, cols, other // batch, int(rest[-1]) if rest else 1, int(shape[0]) == batch)


def to_rows(tensor: Any, axis: int) -> Any:
    """The tensor as a matrix: ``axis`` becomes the columns, all other axes the rows (C order).

    ``tensor`` may be a numpy or a cupy array: the result is of the same kind."""
    return _moveaxis(tensor, axis).reshape(-1, tensor.shape[axis])


def _moveaxis(tensor: Any, axis: int) -> Any:
    """``axis`` moved last, the others in order (a view; works for numpy and cupy arrays)."""
    axis = axis % tensor.ndim
    return tensor.transpose([*(a for a in range(tensor.ndim) if a != axis), axis])


@dataclass(frozen=True)
class RowBlock:
    """Rows ``start .. start+count`` of a tap's row sequence over the window."""

    start: int
    count: int

    def last_sample(self, rows_per_sample: int) -> int:
        """Index (in the window) of the last sample this block reads."""
        return (self.start + self.count - 1) // rows_per_sample


def window_samples(geoms: Mapping[str, Geometry], rows: Rows, available: int | None, samples: int | None) -> int:
    """How many consecutive samples one repetition runs through the model.

    Enough for every tap to fill its matrix: ``ceil(rows / rows_per_sample)`` for the
    most demanding tap, capped by the data available; for ``rows="all"`` every sample.
    """
    if rows == "all":
        need = available if available is not None else (samples or _square_need(geoms))
    elif rows == "square":
        need = _square_need(geoms)
    else:
        need = max(math.ceil(rows / g.rows_per_sample) for g in geoms.values())
    return min(need, available) if available is not None else need


def _square_need(geoms: Mapping[str, Geometry]) -> int:
    return max(math.ceil(g.cols / g.rows_per_sample) for g in geoms.values())


def block_rows(g: Geometry, rows: Rows, samples: int) -> int:
    """How many rows a tap's matrix keeps from a window of ``samples`` samples: every row
    for ``rows="all"``, else as many as asked (its columns when square), at most all."""
    total = samples * g.rows_per_sample
    return total if rows == "all" else min(total, g.cols if rows == "square" else int(rows))


def draw_blocks(
    geoms: Mapping[str, Geometry], rows: Rows, samples: int, rng: np.random.Generator
) -> dict[str, RowBlock]:
    """Choose each tap's rows within a window of ``samples`` samples.

    The block's start is drawn uniformly among line starts that leave room for the block;
    ``rows="all"`` takes every row (nothing random).  When the window holds fewer rows than
    asked, the block is every row it has (the matrix is then not square).
    """
    blocks: dict[str, RowBlock] = {}
    for name, g in geoms.items():
        total = samples * g.rows_per_sample
        count = block_rows(g, rows, samples)
        slack = (total - count) // g.line
        start = int(rng.integers(0, slack + 1)) * g.line if slack > 0 and rows != "all" else 0
        blocks[name] = RowBlock(start, count)
    return blocks


# An end past every tensor's length: Slice clamps it (the whole axis).
_TO_THE_END = np.iinfo(np.int64).max


@dataclass(frozen=True)
class Span:
    """Where one tap's block meets one batch: the samples of the batch to take, and the
    block's rows among them (``row_start .. row_end`` counted over the window)."""

    sample_start: int  # in the batch
    sample_end: int
    offset: int  # window row of the first row of those samples
    row_start: int  # window rows
    row_end: int


class Collector:
    """Keeps, per tap, only the rows of its block as batches of outputs stream past.

    A tap is either *cut* in the graph (``cut_taps``: onnxruntime writes the block's rows of
    each batch straight into the matrix — :meth:`targets` gives the rows to write, :meth:`feeds`
    the bounds that select them) or returned whole (:meth:`add` cuts its rows out here).
    Either way each matrix gets the same rows, bit for bit.  With ``dtypes`` every matrix is
    allocated at once; otherwise on its first rows.
    """

    def __init__(
        self,
        geoms: Mapping[str, Geometry],
        blocks: Mapping[str, RowBlock],
        xp: Any = np,
        cut_taps: Mapping[str, tuple[str, str, str, str]] | None = None,
        dtypes: Mapping[str, Any] | None = None,
    ):
        self.geoms = geoms
        self.blocks = blocks
        self.xp = xp  # the array module of the outputs and of the matrices (numpy or cupy)
        self.cut_taps = {t: b for t, b in (cut_taps or {}).items() if t in geoms}  # tap → its bound inputs
        self._unused = {t: b for t, b in (cut_taps or {}).items() if t not in geoms}  # fed, never read
        self.matrices: dict[str, Any] = {}
        if dtypes is not None:
            for name, g in geoms.items():
                self.matrices[name] = xp.empty((blocks[name].count, g.cols), dtype=dtypes[name])
        self._filled = {name: 0 for name in geoms}
        self._spans: tuple[tuple[int, int, int], dict[str, Span | None]] | None = None  # the last batch's

    @property
    def samples_needed(self) -> int:
        """Samples that must run before every block is complete."""
        return max(b.last_sample(self.geoms[n].rows_per_sample) for n, b in self.blocks.items()) + 1

    def span(self, name: str, lo: int, hi: int, ran: int) -> Span | None:
        """Where tap ``name``'s block meets the batch of window samples ``lo .. hi`` (``ran``
        samples went through the model, padding included); None when it holds none of its rows.
        Computed once per batch for every tap (needed, feeds, targets and add all ask)."""
        if self._spans is None or self._spans[0] != (lo, hi, ran):
            self._spans = ((lo, hi, ran), {n: self._span(n, lo, hi, ran) for n in self.geoms})
        return self._spans[1][name]

    def _span(self, name: str, lo: int, hi: int, ran: int) -> Span | None:
        g, b = self.geoms[name], self.blocks[name]
        first = max(lo, b.start // g.rows_per_sample)
        last = min(hi, b.last_sample(g.rows_per_sample) + 1)
        if first >= last:
            return None
        if g.batch_major:
            s0, s1, offset, available = first - lo, last - lo, first * g.rows_per_sample, (last - first)
        else:  # the sample axis is elsewhere: every row of the batch, in the tensor's order
            s0, s1, offset, available = 0, _TO_THE_END, lo * g.rows_per_sample, ran
        r0 = max(b.start, offset)
        r1 = min(b.start + b.count, offset + available * g.rows_per_sample)
        return Span(s0, s1, offset, r0, r1) if r0 < r1 else None

    def needed(self, lo: int, hi: int, ran: int | None = None) -> list[str]:
        """The taps with rows among samples ``lo .. hi``: the outputs that batch must return."""
        ran = hi - lo if ran is None else ran
        return [name for name in self.geoms if self.span(name, lo, hi, ran) is not None]

    def feeds(self, lo: int, hi: int, ran: int) -> dict[str, np.ndarray]:
        """The bound inputs of every cut tap for this batch (empty ranges for taps it does not need)."""
        out: dict[str, np.ndarray] = {}
        for name, names in {**self.cut_taps, **self._unused}.items():
            sp = self.span(name, lo, hi, ran) if name in self.cut_taps else None
            values = (
                (0, 0, 0, 0)
                if sp is None
                else (sp.sample_start, sp.sample_end, sp.row_start - sp.offset, sp.row_end - sp.offset)
            )
            for n, v in zip(names, values):
                out[n] = np.array([v], dtype=np.int64)
        return out

    def targets(self, lo: int, hi: int, ran: int) -> dict[str, Any]:
        """For each cut tap with rows in this batch, the rows of its matrix they go to (a
        contiguous view, for onnxruntime to write into); counted as filled."""
        out: dict[str, Any] = {}
        for name in self.cut_taps:
            sp = self.span(name, lo, hi, ran)
            if sp is None:
                continue
            b = self.blocks[name]
            out[name] = self.matrices[name][sp.row_start - b.start : sp.row_end - b.start]
            self._filled[name] += sp.row_end - sp.row_start
        return out

    def add(self, lo: int, hi: int, outputs: Mapping[str, Any], ran: int | None = None) -> None:
        """Take the rows of samples ``lo .. hi`` (window indices) from one batch of outputs:
        the whole tensor of a tap that is not cut, the block's rows of one that is."""
        ran = hi - lo if ran is None else ran
        for name, out in outputs.items():
            sp = self.span(name, lo, hi, ran)
            if sp is None:
                continue
            if name in self.cut_taps:
                rows = out
            else:
                rows = to_rows(out[sp.sample_start : sp.sample_end], self.geoms[name].axis)
                rows = rows[sp.row_start - sp.offset : sp.row_end - sp.offset]
            b = self.blocks[name]
            if name not in self.matrices:
                self.matrices[name] = self.xp.empty((b.count, self.geoms[name].cols), dtype=out.dtype)
            self.matrices[name][sp.row_start - b.start : sp.row_end - b.start] = rows
            self._filled[name] += sp.row_end - sp.row_start

    def complete(self) -> bool:
        """True once every block holds all its rows."""
        return all(self._filled[n] >= b.count for n, b in self.blocks.items())
