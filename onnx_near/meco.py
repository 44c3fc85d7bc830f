"""MeCo: the minimum eigenvalue of each layer's channel correlation matrix.

Pure numerics: this module imports neither onnx nor onnxruntime.

T. Jiang, H. Wang, R. Bie, "MeCo: Zero-Shot NAS with One Data and Single Forward Pass via
Minimum Eigenvalue of Correlation", NeurIPS 2023 (code: github.com/HamsterMimi/MeCo).  For
one sample's feature map of a layer — C channels over P positions (H·W for a 2-D map) — the
Pearson correlation matrix of the channels is the C×C matrix

    R_ij = cov(x_i, x_j) / (σ_i σ_j)      (over the P positions of channels i and j)

and the layer's MeCo is its smallest eigenvalue λ_min(R).  The network's MeCo is the sum over
its layers.  As in the authors' code (``torch.corrcoef``, then NaN and ±Inf entries set to 0,
the minimum real eigenvalue): a channel constant over the positions (a dead ReLU channel,
or a map of one position) has no correlation, its row and column of R are 0, and so
λ_min = 0; a map of one channel has R = [1] (0 when that channel is constant).  Higher is
taken to be better.

Which sample and which layers: the authors hook the output of every module and take the
first sample of the batch (``data_output[0]``), its first axis as the channels and the rest
flattened (``reshape(C, -1)``); a dense output (one value per channel) gives λ_min = 0 there.
onnx-near's pipeline (:mod:`onnx_near.proxies`) feeds each tap tensor in convolution layout
(channels on axis 1, positions after it) of the first sample of a forward pass; that the
taps are tensors, not modules, is said there.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


def correlation_matrix(fmap: Any) -> np.ndarray:
    """The channels' Pearson correlation matrix of one feature map, ``(positions × channels)``
    (channels as columns, as onnx-near's matrices hold them), in float64; entries that are
    NaN or ±Inf (a constant channel) set to 0."""
    x = np.asarray(fmap, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"a feature map must be a (positions × channels) matrix, not of shape {x.shape}")
    x = x - x.mean(axis=0)
    norms = np.sqrt(np.einsum("pc,pc->c", x, x))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (x.T @ x) / np.outer(norms, norms)
    return np.where(np.isfinite(r), r, 0.0)


def layer_meco(fmap: Any) -> float:
    """λ_min of the channel correlation matrix of one feature map ``(positions × channels)``.

    An empty map (no channel) gives 0."""
    r = correlation_matrix(fmap)
    if r.size == 0:
        return 0.0
    return float(np.linalg.eigvalsh((r + r.T) / 2).min())


def meco(fmaps: Iterable[Any]) -> float:
    """MeCo of a network: the sum of :func:`layer_meco` over its layers' feature maps (each
    one sample's, ``positions × channels``)."""
    return float(sum(layer_meco(f) for f in fmaps))


__all__ = ["correlation_matrix", "layer_meco", "meco"]
