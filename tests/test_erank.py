"""The effective-rank core (onnx_near/erank.py) against closed forms (Roy & Vetterli 2007,
SPEC §1): the Gram, SVD and low-rank routes, dead units, workers.  Its error bounds:
test_erank_bounds.py; the approximate route: test_lanczos.py."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from onnx_near.erank import effective_rank, erank_from_singular_values
from onnx_near.errors import NonFiniteMatrixError


def _array_modules() -> list[Any]:
    """numpy, and cupy where it runs on a CUDA device (the GPU path); skipped elsewhere."""
    modules = [pytest.param(np, id="numpy")]
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
        modules.append(pytest.param(cupy, id="cupy"))
    except Exception:
        modules.append(pytest.param(None, id="cupy", marks=pytest.mark.skip(reason="no cupy with a CUDA device")))
    return modules


ARRAY_MODULES = _array_modules()


def _erank_closed_form(sigmas: list[float]) -> float:
    total = sum(sigmas)
    return math.exp(-sum((s / total) * math.log(s / total) for s in sigmas if s > 0))


@pytest.mark.parametrize("xp", ARRAY_MODULES)
@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_identity_has_erank_n(n: int, xp: Any) -> None:
    """erank(I_n) = n."""
    assert effective_rank(xp.eye(n), xp) == pytest.approx(n, rel=1e-12)


@pytest.mark.parametrize("xp", ARRAY_MODULES)
@pytest.mark.parametrize("rho", [0.0, 0.3, 0.5, 0.9, -0.4])
def test_circulant_closed_form(rho: float, xp: Any) -> None:
    """The 4×4 circulant [1, ρ, ρ², ρ] has singular values (1+|ρ|)², 1−ρ², 1−ρ², (1−|ρ|)²."""
    row = [1.0, rho, rho**2, rho]
    a = np.array([np.roll(row, k) for k in range(4)])
    r = abs(rho)
    expected = _erank_closed_form([(1 + r) ** 2, 1 - rho**2, 1 - rho**2, (1 - r) ** 2])
    assert effective_rank(xp.asarray(a), xp) == pytest.approx(expected, rel=1e-12)


def test_rank_one_matrix_has_erank_one() -> None:
    """An outer product has one non-zero singular value: erank 1."""
    u = np.arange(1.0, 6.0)
    assert effective_rank(np.outer(u, u[:3])) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("xp", ARRAY_MODULES)
def test_zero_matrix_has_erank_zero(xp: Any) -> None:
    """Σσ = 0 gives erank 0 (SPEC §1)."""
    assert effective_rank(xp.zeros((5, 3)), xp) == 0.0
    assert effective_rank(xp.zeros((80, 60)), xp) == 0.0
    assert erank_from_singular_values(xp.zeros(4), xp) == 0.0


@pytest.mark.parametrize("xp", ARRAY_MODULES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_matrix_has_no_erank(bad: float, xp: Any) -> None:
    """A matrix holding NaN or Inf is refused, never scored as 0."""
    a = np.eye(3)
    a[1, 2] = bad
    with pytest.raises(NonFiniteMatrixError):
        effective_rank(xp.asarray(a), xp)


def test_invariant_to_row_and_column_order_and_transpose() -> None:
    """erank depends only on which rows are chosen, not their order or the orientation."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((12, 7)) * np.linspace(0.1, 3.0, 7)
    base = effective_rank(a)
    assert effective_rank(a[rng.permutation(12)]) == pytest.approx(base, rel=1e-12)
    assert effective_rank(a[:, rng.permutation(7)]) == pytest.approx(base, rel=1e-12)
    assert effective_rank(a.T) == pytest.approx(base, rel=1e-12)


def test_float32_input_is_computed_in_float64() -> None:
    """A float32 matrix gives the float64 value of the same numbers."""
    rng = np.random.default_rng(1)
    a32 = rng.standard_normal((50, 20)).astype(np.float32)
    assert effective_rank(a32) == effective_rank(a32.astype(np.float64))


def test_not_centred_or_scaled() -> None:
    """The matrix is used as is: scaling leaves erank unchanged, a shift changes it."""
    rng = np.random.default_rng(2)
    a = rng.standard_normal((30, 10))
    assert effective_rank(7.5 * a) == pytest.approx(effective_rank(a), rel=1e-12)
    assert effective_rank(a + 5.0) < effective_rank(a)


def test_rejects_non_matrices() -> None:
    """Only 2-D input is a matrix."""
    with pytest.raises(ValueError):
        effective_rank(np.ones(3))


def _svd_erank(a: np.ndarray) -> float:
    return erank_from_singular_values(np.linalg.svd(a.astype(np.float64), compute_uv=False))


@pytest.mark.parametrize("xp", ARRAY_MODULES)
@pytest.mark.parametrize(
    "kind",
    ["relu_square", "relu_tall", "relu_wide", "rank_deficient", "rank_one", "log_spectrum", "saturated_tanh"],
)
def test_fast_route_matches_the_svd(kind: str, xp: Any) -> None:
    """Whatever route is taken (Gram when provably exact, else SVD), erank agrees with the SVD's to 1e-7."""
    rng = np.random.default_rng(3)

    def relu(n: int, m: int) -> np.ndarray:
        return np.asarray(np.maximum(rng.standard_normal((n, m)) @ rng.standard_normal((m, m)) / np.sqrt(m), 0), np.float32)

    if kind == "relu_square":
        a = relu(300, 300)
    elif kind == "relu_tall":
        a = relu(900, 120)
    elif kind == "relu_wide":
        a = relu(120, 400)
    elif kind == "rank_deficient":
        a = (rng.standard_normal((400, 7)) @ rng.standard_normal((7, 400))).astype(np.float32)
    elif kind == "rank_one":
        a = np.outer(rng.standard_normal(300), rng.standard_normal(300)).astype(np.float32)
    elif kind == "log_spectrum":
        u, _ = np.linalg.qr(rng.standard_normal((200, 200)))
        v, _ = np.linalg.qr(rng.standard_normal((200, 200)))
        a = (u * np.logspace(0, -12, 200)) @ v.T
    else:
        a = np.tanh(100 * relu(256, 256) - 50)
    assert effective_rank(xp.asarray(a), xp) == pytest.approx(_svd_erank(a), rel=1e-7)


def test_gram_route_is_taken_for_well_conditioned_matrices() -> None:
    """For a well-conditioned matrix the singular values come from the Gram eigenvalues."""
    from onnx_near import erank as core

    a = np.random.default_rng(4).standard_normal((200, 100))
    calls: list[str] = []
    original = np.linalg.svd  # the numpy erank.py uses

    class Spy:
        def __getattr__(self, name: str) -> object:
            if name == "svd":
                calls.append("svd")
                return original
            return getattr(np.linalg, name)

    class FakeNp:
        linalg = Spy()

        def __getattr__(self, name: str) -> object:
            return getattr(np, name)

    s = core.singular_values(a, FakeNp())  # type: ignore[arg-type]
    assert calls == [] and np.allclose(np.sort(s), np.sort(np.linalg.svd(a, compute_uv=False)), rtol=1e-10)


@pytest.mark.parametrize("xp", ARRAY_MODULES)
def test_zero_rows_and_columns_are_dropped_exactly(xp: Any) -> None:
    """Dead units (all-zero columns) and all-zero rows leave the effective rank unchanged."""
    from onnx_near import erank as core

    rng = np.random.default_rng(6)
    a = np.maximum(rng.standard_normal((300, 200)), 0)
    a[:, ::3] = 0.0  # dead units
    a[::7] = 0.0  # rows without any activity
    s = core.singular_values(xp.asarray(a), xp)
    assert len(s) == min(300 - 43, 200 - 67)
    assert effective_rank(xp.asarray(a), xp) == pytest.approx(_svd_erank(a), rel=1e-12)
    assert effective_rank(np.zeros((50, 60))) == 0.0


@pytest.mark.parametrize(("rank", "route"), [(230, ["eigvalsh"]), (60, ["eigvalsh", "svd"])])
def test_rank_deficient_matrices_take_the_route_their_bound_allows(
    rank: int, route: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A layer a little wider than its input keeps the Gram route; far wider, the SVD. Both exact."""
    from onnx_near import erank as core

    rng = np.random.default_rng(7)
    a = (rng.standard_normal((256, rank)) @ rng.standard_normal((rank, 256))).astype(np.float32)
    calls = _spy(monkeypatch, "eigvalsh", "svd")
    s = core.singular_values(a.astype(np.float64))
    assert calls == route
    assert erank_from_singular_values(s) == pytest.approx(_svd_erank(a), rel=1e-7)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_effective_ranks_do_not_depend_on_the_workers(workers: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Large and small matrices, one with NaN: same values in the same order for any pool size."""
    from onnx_near import erank as core
    from onnx_near.erank import effective_ranks
    from onnx_near.errors import NonFiniteMatrixError

    monkeypatch.setattr(core, "POOL_MIN", 100)  # pooled and lone matrices, without the cost
    monkeypatch.setattr(core, "LARGE_MATRIX", 140)
    rng = np.random.default_rng(8)
    mats = [np.maximum(rng.standard_normal((n, n)), 0) for n in (20, 150, 64, 120, 90)]
    mats.insert(2, np.full((5, 5), np.nan))
    got = effective_ranks(mats, workers=workers)
    assert isinstance(got[2], NonFiniteMatrixError)
    want = [_svd_erank(m) for k, m in enumerate(mats) if k != 2]
    assert [g for k, g in enumerate(got) if k != 2] == pytest.approx(want, rel=1e-10)


def test_structural_rank_bound_sends_half_empty_matrices_to_the_svd(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a bound of at most half the size no eigenvalues are computed; above it the Gram route is tried."""

    rng = np.random.default_rng(9)
    a = rng.standard_normal((256, 100)) @ rng.standard_normal((100, 256))
    want = _svd_erank(a)
    calls = _spy(monkeypatch, "eigvalsh", "svd")
    assert effective_rank(a, np, rank_bound=100) == pytest.approx(want, rel=1e-12)
    assert calls == ["svd"]
    calls.clear()
    effective_rank(np.maximum(a, 0), np, rank_bound=200)
    assert calls[0] == "eigvalsh"


def _structurally_low_rank(rows: int, cols: int, inputs: int, seed: int) -> np.ndarray:
    """A Linear layer's output as a model computes it: float32 X·W + b (rank ≤ inputs + 1 by
    construction, plus float32 rounding noise), scored in float64."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, inputs), dtype=np.float32)
    w = (0.02 * rng.standard_normal((inputs, cols))).astype(np.float32)
    b = (0.02 * rng.standard_normal(cols)).astype(np.float32)
    return np.asarray(x @ w + b, dtype=np.float64)


@pytest.fixture
def one_blas_thread() -> Any:
    """The low-rank tests' matrices are large for a test: one BLAS thread keeps them fast on a
    busy machine, where two threads on two shared cores spin (measured: 36 s against 6 s for
    this file)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def _spy(monkeypatch: pytest.MonkeyPatch, *names: str) -> list[str]:
    """Record the calls of numpy.linalg functions ``names``."""
    calls: list[str] = []
    for name in names:
        original = getattr(np.linalg, name)

        def spy(*a: Any, _f: Any = original, _n: str = name, **kw: Any) -> Any:
            calls.append(_n)
            return _f(*a, **kw)

        monkeypatch.setattr(np.linalg, name, spy)
    return calls


@pytest.mark.usefixtures("one_blas_thread")
@pytest.mark.parametrize(
    ("rows", "cols", "inputs"), [(640, 640, 160), (1000, 600, 150), (520, 900, 128), (2400, 520, 130)]
)
def test_low_rank_route_matches_the_svd(rows: int, cols: int, inputs: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rank-bounded layer takes the low-rank route (square, tall, wide, and tall enough to be
    reduced to its R factor first), and its erank is the float64 SVD's.

    The rounding-noise tail counts: the rank-bound largest singular values alone are off by
    more than 1e-6, so a route that dropped the tail would fail here."""
    from onnx_near import erank as core

    a = _structurally_low_rank(rows, cols, inputs, seed=10)
    svd = np.linalg.svd(a, compute_uv=False)
    want = erank_from_singular_values(svd)
    assert abs(erank_from_singular_values(svd[: inputs + 1]) - want) / want > 1e-6
    calls = _spy(monkeypatch, "svd")
    route, sigma = core._routed(a, np, inputs + 1)
    assert route == "low-rank" and calls == [] and len(sigma) == min(rows, cols)
    assert erank_from_singular_values(sigma) == pytest.approx(want, rel=1e-10)
    _, bound, info = core._low_rank_route(a, inputs + 1)
    assert bound < 1e-8 and info["rank"] == inputs + 1


@pytest.mark.usefixtures("one_blas_thread")
def test_low_rank_route_is_deterministic() -> None:
    """Same matrix, same values bit for bit; neither numpy's global generator nor any other is drawn from."""
    from onnx_near import erank as core

    a = _structurally_low_rank(600, 600, 150, seed=11)
    state: Any = np.random.get_state()  # a tuple (legacy=True, the default), whatever numpy's stubs say
    first = core.singular_values(a, np, 151)
    second = core.singular_values(a.copy(), np, 151)
    assert np.array_equal(first, second)
    after: Any = np.random.get_state()
    assert state[0] == after[0] and np.array_equal(state[1], after[1]) and state[2:] == after[2:]


@pytest.mark.usefixtures("one_blas_thread")
def test_low_rank_route_leaves_the_matrix_alone() -> None:
    """The route works on copies: the caller's matrix is unchanged."""
    from onnx_near import erank as core

    a = _structurally_low_rank(560, 560, 140, seed=12)
    before = a.copy()
    core.singular_values(a, np, 141)
    assert np.array_equal(a, before)


@pytest.mark.usefixtures("one_blas_thread")
@pytest.mark.parametrize("case", ["no_drop", "bound_too_large"])
def test_low_rank_route_falls_back_to_the_svd(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the route cannot vouch for its values — no drop in the spectrum within the bound
    (a wrong rank bound), or an error bound over the limit — the SVD gives them."""
    from onnx_near import erank as core

    rng = np.random.default_rng(13)
    if case == "no_drop":
        a = rng.standard_normal((600, 600))  # full rank, whatever the bound claims
    else:
        a = _structurally_low_rank(600, 600, 150, seed=13)
        monkeypatch.setattr(core, "MAX_RELATIVE_ERROR", 1e-30)
    sigma, bound, _ = core._low_rank_route(a, 151)
    assert sigma is None if case == "no_drop" else bound >= 1e-30
    calls = _spy(monkeypatch, "svd")
    route, values = core._routed(a, np, 151)
    assert route == "svd" and calls == ["svd"]
    assert erank_from_singular_values(values) == _svd_erank(a)


@pytest.mark.usefixtures("one_blas_thread")
def test_low_rank_route_keeps_exact_zeros_and_nan_handling() -> None:
    """An exactly rank-deficient float64 matrix (its tail is zero but for rounding) and a
    dead unit: exact; a NaN is still refused, with or without a rank bound."""
    rng = np.random.default_rng(14)
    a = rng.standard_normal((700, 100)) @ rng.standard_normal((100, 700))
    a[:, 5] = 0.0
    assert effective_rank(a, np, rank_bound=100) == pytest.approx(_svd_erank(a), rel=1e-10)
    a[3, 4] = np.nan
    with pytest.raises(NonFiniteMatrixError):
        effective_rank(a, np, rank_bound=100)
    from onnx_near.erank import effective_ranks

    got = effective_ranks([a, np.eye(600)], rank_bounds=[100, 300])
    assert isinstance(got[0], NonFiniteMatrixError) and got[1] == pytest.approx(600.0, rel=1e-12)
