"""The error bounds of the effective rank (onnx_near/erank_bounds.py): the largest move of a
square root, and the bound on the erank when every singular value moves."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_near.erank import erank_from_singular_values


def test_sqrt_error_is_the_largest_square_root_move() -> None:
    """sqrt_error: the exact largest |√λ − √λ̂| over λ ≥ 0 within τ of λ̂, also for λ̂ ≤ τ and λ̂ < 0."""
    from onnx_near.erank_bounds import sqrt_error

    lam = np.array([4.0, 1e-3, 1e-6, 0.0, -1e-7, 2.5e-7])
    tau = np.array([1e-2, 1e-6, 1e-6, 1e-6, 1e-6, 1e-6])
    got = sqrt_error(lam, tau, np)
    grid = lam[:, None] + tau[:, None] * np.linspace(-1.0, 1.0, 20001)[None, :]
    brute = np.abs(np.sqrt(np.clip(grid, 0.0, None)) - np.sqrt(np.clip(lam, 0.0, None))[:, None]).max(axis=1)
    assert np.all(got >= brute * (1 - 1e-12)) and np.allclose(got, brute, rtol=1e-3)


@pytest.mark.parametrize("spectrum", ["spread", "dominated", "noise_tail"])
def test_erank_error_bound_holds(spectrum: str) -> None:
    """Moving every singular value by up to δ_j never changes the erank by more than the bound,
    including a spectrum whose largest value dominates (where 1 + |ln p_j| is no bound on
    |∂H/∂σ_j|·S = |ln σ_j − Σ p ln σ|)."""
    from onnx_near.erank_bounds import erank_error_bound

    rng = np.random.default_rng(15)
    if spectrum == "spread":
        sigma = rng.uniform(0.1, 10.0, 300)
    elif spectrum == "dominated":
        sigma = np.concatenate([[1e4], rng.uniform(1e-3, 2e-3, 2000)])
    else:
        sigma = np.concatenate([rng.uniform(10.0, 30.0, 100), rng.uniform(0.0, 2e-5, 300)])
    delta = sigma * 1e-7 + 1e-8
    bound = erank_error_bound(sigma, delta, np)
    base = erank_from_singular_values(sigma)
    for _ in range(200):
        moved = np.clip(
            sigma + delta * rng.choice([-1.0, 1.0], sigma.size) * rng.uniform(0.5, 1.0, sigma.size), 0, None
        )
        assert abs(erank_from_singular_values(moved) - base) / base <= bound
    worst = np.clip(
        sigma + delta * np.sign(np.log(sigma.clip(1e-300)) - np.sum(sigma * np.log(sigma.clip(1e-300))) / sigma.sum()),
        0,
        None,
    )
    assert abs(erank_from_singular_values(worst) - base) / base <= bound
