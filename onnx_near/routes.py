"""Stage 5, effective ranks: each matrix by the route its plan chose.

The exact route (:func:`onnx_near.erank.effective_ranks`, which picks the SVD, Gram or
low-rank decomposition) for every matrix, except those at least ``--approx-above`` in both
dimensions, which get stochastic Lanczos quadrature and an error bound of four standard
errors.  A matrix holding NaN/Inf gives its error instead of a value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import numpy as np

from .erank import effective_ranks
from .errors import NonFiniteMatrixError
from .lanczos import approximate_effective_rank
from .plan import Route


def erank_by_route(
    matrices: Sequence[Any],
    routes: Sequence[Route],
    rng: np.random.Generator,
    xp: Any = np,
    threads: int = 0,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[float | NonFiniteMatrixError, float | None]]:
    """Per matrix, its effective rank (or its NaN/Inf error) and, when approximated, the bound.

    ``progress(done)`` is told how many matrices have been ranked so far."""
    exact = effective_ranks(
        [m if not r.approximate else m[:0, :0] for m, r in zip(matrices, routes)],
        xp,
        workers=threads or None,
        rank_bounds=[r.rank_bound for r in routes],
        progress=progress,
    )
    out: list[tuple[float | NonFiniteMatrixError, float | None]] = []
    for m, r, value in zip(matrices, routes, exact):
        if not r.approximate:
            out.append((value, None))
            continue
        try:  # stochastic Lanczos quadrature; the bound is four standard errors
            estimate, stderr = approximate_effective_rank(m, rng)
            out.append((estimate, 4 * stderr))
        except NonFiniteMatrixError as err:
            out.append((err, None))
    return out
