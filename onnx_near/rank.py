"""Rank many models by NEAR, next to the trivial baselines (SPEC §6, the NAS use).

:func:`rank_models` scores every model (in parallel processes when asked), orders them
best first, and — when accuracies after training are known — reports how well NEAR,
parameter count and MACs each predict them: Kendall's τ, Spearman's ρ and top-k precision.
"""

from __future__ import annotations

import csv
import math
import multiprocessing
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .config import ScoreConfig
from .errors import InputDataError, NearError
from .inputs import DataArg
from .score import score


@dataclass(frozen=True)
class ModelRank:
    """One model's NEAR score and baselines; ``error`` says why it could not be scored."""

    model: str
    score: float
    score_std: float
    params: int | None
    macs: int | None
    accuracy: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class Correlation:
    """How well one predictor orders the models like their accuracies."""

    kendall_tau: float
    spearman_rho: float
    top_k_precision: float


@dataclass(frozen=True)
class RankResult:
    """Models best first (failed ones last) and, with accuracies, each predictor's correlation."""

    models: tuple[ModelRank, ...]
    correlation: dict[str, Correlation] = field(default_factory=dict)
    top_k: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of ``onnx-near rank``."""
        d: dict[str, Any] = {
            "schema_version": 1,
            "direction": "higher is better: a higher NEAR score predicts higher accuracy after training",
            "models": [{k: _clean(v) for k, v in asdict(m).items()} for m in self.models],
        }
        if self.correlation:
            d["top_k"] = self.top_k
            d["correlation"] = {k: {f: _clean(v) for f, v in asdict(c).items()} for k, c in self.correlation.items()}
        return d


def _clean(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


def find_models(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The ``.onnx`` files named, or found (recursively, sorted) in the folders named."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(p.rglob("*.onnx")))
        else:
            out.append(p)
    if not out:
        raise InputDataError("no .onnx model was given or found in the folders given")
    return out


def read_accuracies(path: str | os.PathLike[str]) -> dict[str, float]:
    """``model,accuracy`` rows (a header row is optional); model paths relative to the CSV's folder."""
    p = Path(path)
    if not p.is_file():
        raise InputDataError(f"accuracy file {str(p)!r} does not exist")
    out: dict[str, float] = {}
    with p.open(newline="") as f:
        for k, row in enumerate(csv.reader(f)):
            if not row or row[0].startswith("#"):
                continue
            if len(row) < 2:
                raise InputDataError(f"{p.name}, line {k + 1}: expected 'model,accuracy', got {','.join(row)!r}")
            try:
                acc = float(row[1])
            except ValueError as e:
                if k == 0:
                    continue  # a header row
                raise InputDataError(f"{p.name}, line {k + 1}: accuracy {row[1]!r} is not a number") from e
            out[str((p.parent / row[0]).resolve())] = acc
    if not out:
        raise InputDataError(f"accuracy file {str(p)!r} holds no 'model,accuracy' row")
    return out


def _score_one(model: str, data: DataArg, config: ScoreConfig) -> ModelRank:
    """Score one model and count its baselines; a bad model gives a row with ``error``."""
    try:
        r = score(model, data=data, config=config)
        return ModelRank(model, r.score, r.score_std, r.params, r.macs)
    except NearError as e:
        return ModelRank(model, math.nan, math.nan, None, None, error=str(e))


def rank_models(
    models: Sequence[str | os.PathLike[str]],
    data: DataArg = None,
    config: ScoreConfig | None = None,
    accuracies: Mapping[str, float] | None = None,
    jobs: int = 1,
    top_k: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RankResult:
    """Score ``models`` (files or folders), best first, with params and MACs.

    With ``accuracies`` (resolved model path → accuracy), also Kendall's τ, Spearman's ρ
    and the precision of the top k (default: the best 10 %, at least 1) of NEAR, parameter
    count and MACs against the accuracies.  ``jobs`` > 1 scores in that many processes,
    each onnxruntime session on one thread.  A model that fails is reported, the rest go on.
    """
    cfg = config or ScoreConfig()
    paths = [str(p) for p in find_models(models)]
    if jobs > 1:
        cfg = replace(cfg, threads=cfg.threads or 1)
    rows: list[ModelRank] = []
    if jobs > 1 and len(paths) > 1:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            for k, row in enumerate(pool.map(_score_one, paths, [data] * len(paths), [cfg] * len(paths))):
                rows.append(row)
                if progress:
                    progress(k + 1, len(paths))
    else:
        for k, p in enumerate(paths):
            rows.append(_score_one(p, data, cfg))
            if progress:
                progress(k + 1, len(paths))
    if accuracies is not None:
        acc = {str(Path(k).resolve()): v for k, v in accuracies.items()}
        rows = [replace(r, accuracy=acc.get(str(Path(r.model).resolve()))) for r in rows]
    rows.sort(key=lambda r: (r.error is not None, -r.score if not math.isnan(r.score) else math.inf))
    if accuracies is None:
        return RankResult(tuple(rows))
    return _with_correlations(tuple(rows), top_k)


def _with_correlations(rows: tuple[ModelRank, ...], top_k: int | None) -> RankResult:
    known = [r for r in rows if r.error is None and r.accuracy is not None]
    if len(known) < 3:
        raise InputDataError(f"only {len(known)} scored model(s) have an accuracy; correlations need at least 3")
    k = top_k or max(1, round(0.1 * len(known)))
    acc = np.array([r.accuracy for r in known], dtype=float)
    predictors = {
        "near": np.array([r.score for r in known], dtype=float),
        "params": np.array([r.params if r.params is not None else math.nan for r in known], dtype=float),
        "macs": np.array([r.macs if r.macs is not None else math.nan for r in known], dtype=float),
    }
    return RankResult(rows, {name: correlate(v, acc, k) for name, v in predictors.items()}, k)


def correlate(predictor: np.ndarray, accuracy: np.ndarray, k: int) -> Correlation:
    """Kendall's τ (τ-b), Spearman's ρ and top-k precision of ``predictor`` against ``accuracy``.

    Top-k precision: the share of the k most accurate models among the k best-scored ones.
    NaN where the predictor is unknown for some model or constant.
    """
    from scipy import stats  # imported here: scipy.stats alone takes most of a second to import

    if np.isnan(predictor).any() or np.ptp(predictor) == 0:
        return Correlation(math.nan, math.nan, math.nan)
    tau = float(stats.kendalltau(predictor, accuracy).statistic)
    rho = float(stats.spearmanr(predictor, accuracy).statistic)
    best_pred = set(np.argsort(-predictor, kind="stable")[:k].tolist())
    best_acc = set(np.argsort(-accuracy, kind="stable")[:k].tolist())
    return Correlation(tau, rho, len(best_pred & best_acc) / k)
