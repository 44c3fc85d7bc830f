"""MeCo (onnx_near/meco.py): the smallest eigenvalue of each layer's channel correlations,
against closed forms and the edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onnx_near.meco import correlation_matrix, layer_meco, meco


def _orthonormal_centred(positions: int, k: int, seed: int = 0) -> np.ndarray:
    """k zero-mean columns, orthogonal to each other, of equal norm."""
    a = np.random.default_rng(seed).standard_normal((positions, k))
    a -= a.mean(axis=0)
    q, _ = np.linalg.qr(a)
    centred: np.ndarray = q - q.mean(axis=0)  # the QR of centred columns keeps them centred (up to rounding)
    return centred


@pytest.mark.parametrize("rho", [0.0, 0.3, 0.8])
def test_meco_of_equicorrelated_channels_is_one_minus_rho(rho: float) -> None:
    """C channels with pairwise correlation ρ ≥ 0: R = (1−ρ)I + ρ11ᵀ, whose smallest eigenvalue is 1 − ρ."""
    c = 5
    z = _orthonormal_centred(50, c + 1)
    fmap = np.sqrt(rho) * z[:, [0]] + np.sqrt(1 - rho) * z[:, 1:]
    np.testing.assert_allclose(correlation_matrix(fmap), (1 - rho) * np.eye(c) + rho, atol=1e-12)
    assert layer_meco(fmap) == pytest.approx(1 - rho, abs=1e-12)
    assert layer_meco(fmap * [1, 2, 3, 4, 5] + 7) == pytest.approx(1 - rho, abs=1e-12)  # per-channel affine


def test_meco_of_two_channels_and_the_edge_cases() -> None:
    """Two channels of correlation r: eigenvalues 1 ± r; a constant channel, a map of one
    position, one channel (R = [1]), no channel; a network sums its layers."""
    z = _orthonormal_centred(40, 2)
    r = -0.6
    fmap = np.column_stack([z[:, 0], r * z[:, 0] + math.sqrt(1 - r * r) * z[:, 1]])
    assert layer_meco(fmap) == pytest.approx(1 - abs(r), abs=1e-12)
    dead = np.column_stack([fmap, np.zeros(40)])
    assert layer_meco(dead) == pytest.approx(0.0, abs=1e-12)  # its row and column of R are 0
    assert layer_meco(np.ones((1, 6))) == 0.0
    assert layer_meco(z[:, :1]) == pytest.approx(1.0)
    assert layer_meco(np.zeros((10, 0))) == 0.0
    assert meco([fmap, fmap, dead]) == pytest.approx(2 * (1 - abs(r)), abs=1e-12)
