"""Rank many models by NEAR, next to the trivial baselines (SPEC §6, the NAS use).

:func:`rank_models` scores every model on an engine (this process, a process pool or a
Ray cluster: :mod:`onnx_near.engines`), optionally streaming one row per model to a
results file that a later run resumes (:mod:`onnx_near.results`), orders them best first,
and — when accuracies after training are known — reports how well NEAR, parameter count
and MACs each predict them: Kendall's τ, Spearman's ρ and top-k precision
(:mod:`onnx_near.correlation`).  :func:`rank_from_results` does the same from a results
file, without scoring.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .config import PROXIES, ScoreConfig, computed_proxies
from .correlation import Correlation, correlate, rank_average
from .engines import Engine, Job, LocalEngine, Scorer
from .errors import InputDataError
from .inputs import DataArg
from .model_source import IN_MEMORY, InMemoryModel, ModelSource, file_path, in_memory
from .report import grid
from .results import (
    ResultRow,
    RowKey,
    bytes_sha256,
    file_sha256,
    latest_rows,
    open_for_append,
    options_key,
    read_rows,
    score_options,
)
from .version import __version__

log = logging.getLogger(__name__)


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
    proxies: Mapping[str, float] = field(default_factory=dict)  # MeCo, SWAP and rank-average combinations


@dataclass(frozen=True)
class RankResult:
    """Models best first (failed ones last) and, with accuracies, each predictor's correlation."""

    models: tuple[ModelRank, ...]
    correlation: dict[str, Correlation] = field(default_factory=dict)
    top_k: int = 0
    proxies: tuple[str, ...] = ("near",)  # the proxies shown (``--proxies``); the first orders the models

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of ``onnx-near rank``."""
        d: dict[str, Any] = {
            "schema_version": 1,
            "direction": "higher is better: a higher NEAR score predicts higher accuracy after training",
            "models": [{k: _clean(v) for k, v in asdict(m).items()} for m in self.models],
        }
        if self.proxies != ("near",):
            d["proxies"] = list(self.proxies)
        if self.correlation:
            d["top_k"] = self.top_k
            d["correlation"] = {
                k: {f: _clean(v) for f, v in asdict(c).items() if not (f in ("models", "k") and v is None)}
                for k, c in self.correlation.items()
            }
        return d


def _clean(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {k: _clean(x) for k, x in v.items()}
    return None if isinstance(v, float) and math.isnan(v) else v


def find_models(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The ``.onnx`` files named, or found (recursively, sorted) in the folders named."""
    out = [f for p in paths for f in _found(Path(p))]
    if not out:
        raise InputDataError("no .onnx model was given or found in the folders given")
    return out


def _found(p: Path) -> list[Path]:
    return sorted(p.rglob("*.onnx")) if p.is_dir() else [p]


def _listed(models: Sequence[ModelSource]) -> list[Path | InMemoryModel]:
    """The models to rank, in order: the files named or found in the folders named, and the
    models held in memory, each by its name (``<in-memory model K>`` for the K-th one given
    without a name), as bytes."""
    out: list[Path | InMemoryModel] = []
    unnamed = 0
    for m in models:
        held, path = in_memory(m), file_path(m)
        if path is not None:
            out.extend(_found(Path(path)))
            continue
        assert held is not None
        if held.name is None:
            unnamed += 1
            held = InMemoryModel(held.model, held.base_dir, f"{IN_MEMORY[:-1]} {unnamed}>")
        out.append(held.as_bytes())
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


def rank_models(
    models: Sequence[ModelSource],
    data: DataArg = None,
    config: ScoreConfig | None = None,
    accuracies: Mapping[str, float] | None = None,
    jobs: int = 1,
    top_k: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    engine: Engine | None = None,
    results: str | os.PathLike[str] | None = None,
    resume: bool = False,
    scorer: Scorer | None = None,
    proxies: Sequence[str] = ("near",),
) -> RankResult:
    """Score ``models`` (files, folders, or models held in memory), best first, with params and MACs.

    ``proxies`` (:func:`~onnx_near.config.parse_proxies`): the proxies shown, each with its
    column and correlations — ``near``, ``meco``, ``swap`` and rank averages such as
    ``near+swap`` (see :func:`rank_average`); the first orders the models.  MeCo and SWAP are
    measured by the same scores (``ScoreConfig.proxies``).  Without ``config``, BatchNorms use
    the batch's statistics (``ScoreConfig(batchnorm="batch")``), as the NEAR authors ran them.

    A model held in memory (as for :func:`onnx_near.score`) is ranked by its name
    (``<in-memory model K>`` for the K-th one without a name), keyed in a results file by
    that name and the SHA-256 of its bytes.

    With ``accuracies`` (resolved model path, or an in-memory model's name → accuracy), also
    Kendall's τ, Spearman's ρ and the precision of the top k (default: the best 10 %, at
    least 1) of NEAR, parameter count and MACs against the accuracies.  ``engine`` scores them (default:
    ``LocalEngine(jobs)``: ``jobs`` > 1 scores in that many processes, each onnxruntime
    session on one thread; :class:`~onnx_near.engines.RayEngine` on a Ray cluster).  A model
    that fails is a row with its error, the rest go on.

    With ``results`` (a ``.jsonl`` path) each model's row is appended to that file as it
    finishes (see :mod:`onnx_near.results`), and the ranking is read back from the file;
    ``resume`` goes on with an existing file, skipping the models it already holds for
    these options.  ``scorer`` replaces :func:`onnx_near.score` (it must pickle for the
    process pool or Ray).  ``progress(done, total)`` counts skipped models as done.
    """
    cfg = config or ScoreConfig(batchnorm="batch")
    needed = computed_proxies(tuple(proxies))
    if not set(needed) <= set(cfg.proxies):
        cfg = replace(cfg, proxies=tuple(p for p in PROXIES if p in set(needed) | set(cfg.proxies)))
    entries = _listed(models)
    run_engine: Engine = engine if engine is not None else LocalEngine(jobs)
    options = score_options(cfg, data)
    okey = options_key(options)
    done: set[RowKey] = set()
    if results is not None and resume and Path(results).exists():
        done = {k for k, r in latest_rows(read_rows(results)).items() if not r.retry}
    if done:
        log.info("resuming %s: %d rows already there", results, len(done))
    wanted: set[RowKey] = set()  # this run's models: one key per model
    total = len(entries)
    count = 0

    def todo() -> Iterator[Job]:
        nonlocal count
        seen: set[tuple[str, str | None]] = set()
        for p in entries:
            if isinstance(p, InMemoryModel):
                assert isinstance(p.model, bytes) and p.name is not None
                job = Job(p.name, p.name, bytes_sha256(p.model), p)
            else:
                job = Job(str(p), str(p.resolve()), None)
            if (job.path, job.sha256) in seen:  # a model given twice is scored once
                continue
            seen.add((job.path, job.sha256))
            if isinstance(p, Path):
                job = replace(job, sha256=file_sha256(p))
            key = (job.path, job.sha256, okey, __version__)
            wanted.add(key)
            if key in done:
                count += 1
                if progress:
                    progress(count, total)
                continue
            yield job

    kept: list[ResultRow] = []
    sink = open_for_append(results, resume) if results is not None else None
    try:
        for row in run_engine.run(todo(), data, cfg, options, scorer, expected=total):
            if sink is not None:
                sink.write(row.to_json() + "\n")
                sink.flush()  # a killed run keeps every finished model
            else:
                kept.append(row)
            count += 1
            if progress:
                progress(count, total)
    finally:
        if sink is not None:
            sink.close()
    if results is not None:
        kept = [r for k, r in latest_rows(read_rows(results)).items() if k in wanted]
    return summarise(kept, accuracies, top_k, proxies)


def rank_from_results(
    results: str | os.PathLike[str],
    accuracies: Mapping[str, float] | None = None,
    top_k: int | None = None,
    proxies: Sequence[str] = ("near",),
) -> RankResult:
    """The ranking of a results file, without scoring anything (``rank --from FILE.jsonl``).

    Per model path, its last row counts.  The rows must all have been scored with the same
    options and onnx-near version: a ranking across seeds or row counts would mix scores
    that are not comparable."""
    latest: dict[str, ResultRow] = {}
    for r in read_rows(results):
        latest.pop(r.path, None)
        latest[r.path] = r
    if not latest:
        raise InputDataError(f"results file {str(results)!r} holds no row")
    kinds = {(options_key(r.options), r.onnx_near) for r in latest.values()}
    if len(kinds) > 1:
        first, second = sorted(kinds)[:2]
        diff = _differences(json.loads(first[0]), json.loads(second[0])) or f"onnx-near {first[1]} and {second[1]}"
        raise InputDataError(
            f"results file {str(results)!r} mixes rows scored with different options ({diff}); "
            "rank each set of options from a file of its own"
        )
    return summarise(list(latest.values()), accuracies, top_k, proxies)


def _differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {a.get(k)!r} and {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))


def summarise(
    rows: Iterable[ResultRow],
    accuracies: Mapping[str, float] | None = None,
    top_k: int | None = None,
    proxies: Sequence[str] = ("near",),
) -> RankResult:
    """Rows best first (by the first of ``proxies``; failed ones last, ties by model path)
    and, with accuracies, the correlations of each proxy, parameter count and MACs with them."""
    acc = {**accuracies, **{str(Path(k).resolve()): v for k, v in accuracies.items()}} if accuracies is not None else {}
    ranked = [
        ModelRank(
            r.model,
            math.nan if r.score is None else r.score,
            math.nan if r.score_std is None else r.score_std,
            r.params,
            r.macs,
            acc.get(r.path),
            r.error,
            {k: math.nan if v is None else float(v) for k, v in r.proxies.items()},
        )
        for r in rows
    ]
    shown = tuple(proxies)
    ranked = _with_combinations(ranked, shown)
    first = shown[0] if shown else "near"

    def order(r: ModelRank) -> tuple[bool, float, str]:
        v = _value(r, first)
        return (r.error is not None, -v if not math.isnan(v) else math.inf, r.model)

    ranked.sort(key=order)
    if accuracies is None:
        return RankResult(tuple(ranked), proxies=shown)
    return replace(_with_correlations(tuple(ranked), top_k, shown), proxies=shown)


def _value(m: ModelRank, name: str) -> float:
    """A model's value of one proxy (NEAR: its score)."""
    return m.score if name == "near" else m.proxies.get(name, math.nan)


def _with_combinations(rows: list[ModelRank], shown: Sequence[str]) -> list[ModelRank]:
    """``rows`` whose proxies also hold the rank-average combinations in ``shown``, computed
    over the models scored without error."""
    combos = [c for c in shown if "+" in c]
    if not combos:
        return rows
    scored = [k for k, r in enumerate(rows) if r.error is None]
    extra: dict[int, dict[str, float]] = {k: {} for k in scored}
    for c in combos:
        avg = rank_average([[_value(rows[k], p) for k in scored] for p in c.split("+")])
        for k, v in zip(scored, avg):
            extra[k][c] = float(v)
    return [replace(r, proxies={**r.proxies, **extra.get(k, {})}) for k, r in enumerate(rows)]


def _with_correlations(rows: tuple[ModelRank, ...], top_k: int | None, shown: Sequence[str] = ("near",)) -> RankResult:
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
    correlation = {name: correlate(v, acc, k) for name, v in predictors.items()}
    others = {p: np.array([_value(r, p) for r in known], dtype=float) for p in shown if p != "near"}
    if others:  # each proxy over the models that have it (SWAP: the ReLU networks)
        correlation = {"near": correlation["near"]}
        for p, v in others.items():
            ok = ~np.isnan(v)
            n = int(ok.sum())
            if ok.all():
                correlation[p] = correlate(v, acc, k)
                continue
            kp = top_k or max(1, round(0.1 * n))
            c = correlate(v[ok], acc[ok], kp) if n >= 3 else Correlation(math.nan, math.nan, math.nan)
            correlation[p] = replace(c, models=n, k=kp)
        correlation["params"] = correlate(predictors["params"], acc, k)
        correlation["macs"] = correlate(predictors["macs"], acc, k)
    return RankResult(rows, correlation, k)


def rank_table(r: RankResult) -> str:
    """Models best first with NEAR (and the other proxies asked for), parameters, MACs (and
    accuracy), then the correlations."""
    others = [p for p in r.proxies if p != "near"]
    rows = [
        (
            str(k + 1) if m.error is None else "-",
            m.model,
            f"{m.score:.3f} ± {m.score_std:.3f}" if m.error is None else f"failed: {m.error}",
            *(_proxy_cell(m.proxies.get(p, math.nan)) if m.error is None else "" for p in others),
            f"{m.params:,}" if m.params is not None else "?",
            f"{m.macs:,}" if m.macs is not None else "?",
            f"{m.accuracy:.4f}" if m.accuracy is not None else "",
        )
        for k, m in enumerate(r.models)
    ]
    head = ("#", "model", "NEAR", *(PROXY_NAMES.get(p, p) for p in others), "params", "MACs", "accuracy")
    better = "higher NEAR is better" if not others else "higher is better for every proxy"
    lines = [grid(head, rows), "", better]
    if r.correlation:
        corr = [
            (
                name + (f" ({c.models} models, top-{c.k})" if c.models is not None else ""),
                f"{c.kendall_tau:.3f}",
                f"{c.spearman_rho:.3f}",
                f"{c.top_k_precision:.3f}",
            )
            for name, c in r.correlation.items()
        ]
        lines += ["", grid(("predictor", "Kendall τ", "Spearman ρ", f"top-{r.top_k} precision"), corr)]
    return "\n".join(lines)


PROXY_NAMES = {"meco": "MeCo", "swap": "SWAP"}


def _proxy_cell(v: float) -> str:
    return "" if math.isnan(v) else (f"{v:.0f}" if float(v).is_integer() else f"{v:.3f}")


def rank_csv(r: RankResult) -> str:
    """One CSV row per model, best first."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    others = [p for p in r.proxies if p != "near"]
    w.writerow(["rank", "model", "score", "score_std", *others, "params", "macs", "accuracy", "error"])
    for k, m in enumerate(r.models):
        values = [m.proxies.get(p, math.nan) for p in others]
        w.writerow(
            [
                k + 1 if m.error is None else "",
                m.model,
                "" if math.isnan(m.score) else repr(m.score),
                "" if math.isnan(m.score_std) else repr(m.score_std),
                *("" if math.isnan(v) else repr(v) for v in values),
                m.params if m.params is not None else "",
                m.macs if m.macs is not None else "",
                m.accuracy if m.accuracy is not None else "",
                m.error or "",
            ]
        )
    return buf.getvalue().rstrip("\n")


__all__ = [
    "Correlation",
    "ModelRank",
    "RankResult",
    "correlate",
    "find_models",
    "rank_average",
    "rank_csv",
    "rank_from_results",
    "rank_models",
    "rank_table",
    "read_accuracies",
    "summarise",
]
