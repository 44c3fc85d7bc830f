"""Synthetic samples, for the inputs the data does not give: all randomness from the caller's generator.

Standard normal floats, token ids drawn uniformly below the size of the embedding table
that reads them, fair booleans; or, for image-shaped inputs, smooth random images.
"""

from __future__ import annotations

import numpy as np

from .specs import InputSpec


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
