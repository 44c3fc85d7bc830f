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
        want = total if rows == "all" else (g.cols if rows == "square" else int(rows))
        count = min(want, total)
        slack = (total - count) // g.line
        start = int(rng.integers(0, slack + 1)) * g.line if slack > 0 and rows != "all" else 0
        blocks[name] = RowBlock(start, count)
    return blocks


class Collector:
    """Keeps, per tap, only the rows of its block as batches of outputs stream past."""

    def __init__(self, geoms: Mapping[str, Geometry], blocks: Mapping[str, RowBlock], xp: Any = np):
        self.geoms = geoms
        self.blocks = blocks
        self.xp = xp  # the array module of the outputs and of the matrices (numpy or cupy)
        self.matrices: dict[str, Any] = {}
        self._filled = {name: 0 for name in geoms}

    @property
    def samples_needed(self) -> int:
        """Samples that must run before every block is complete."""
        return max(b.last_sample(self.geoms[n].rows_per_sample) for n, b in self.blocks.items()) + 1

    def needed(self, lo: int, hi: int) -> list[str]:
        """The taps with rows among samples ``lo .. hi``: the outputs that batch must return."""
        return [
            name
            for name, g in self.geoms.items()
            if max(lo, self.blocks[name].start // g.rows_per_sample)
            < min(hi, self.blocks[name].last_sample(g.rows_per_sample) + 1)
        ]

    def add(self, lo: int, hi: int, outputs: Mapping[str, Any]) -> None:
        """Take the rows of samples ``lo .. hi`` (window indices) from one batch of outputs."""
        for name, g in self.geoms.items():
            b = self.blocks[name]
            first = max(lo, b.start // g.rows_per_sample)
            last = min(hi, b.last_sample(g.rows_per_sample) + 1)
            if first >= last:
                continue
            out = outputs[name]
            if g.batch_major:
                rows = to_rows(out[first - lo : last - lo], g.axis)
                offset = first * g.rows_per_sample
            else:
                rows = to_rows(out, g.axis)
                offset = lo * g.rows_per_sample
            r0 = max(b.start, offset)
            r1 = min(b.start + b.count, offset + rows.shape[0])
            if r0 >= r1:
                continue
            if name not in self.matrices:
                self.matrices[name] = self.xp.empty((b.count, g.cols), dtype=out.dtype)
            self.matrices[name][r0 - b.start : r1 - b.start] = rows[r0 - offset : r1 - offset]
            self._filled[name] += r1 - r0

    def complete(self) -> bool:
        """True once every block holds all its rows."""
        return all(self._filled[n] >= b.count for n, b in self.blocks.items())
