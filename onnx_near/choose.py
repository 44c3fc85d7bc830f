"""Choose an activation function or a weight initialisation without training (SPEC §6).

Each candidate is scored on the same architecture, the same data and the same seed, over
several repetitions with re-drawn weights; the candidates are ranked by their mean NEAR
score (higher is better), with the standard deviation over repetitions.  Because every
candidate uses the same seed, repetition r of every candidate sees the same input rows and
(for activations) the same weights: the comparison is paired.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import onnx

from .config import ScoreConfig
from .errors import ConfigError
from .inputs import DataArg
from .load import load_model
from .reinit import SCHEMES
from .report import grid
from .rewrite import inline_functions
from .score import score
from .variants import CANDIDATES, swap_activations


@dataclass(frozen=True)
class Candidate:
    """One candidate's NEAR score: mean and standard deviation over the repetitions."""

    name: str
    score: float
    score_std: float
    scores: tuple[float, ...]


@dataclass(frozen=True)
class Ranking:
    """Candidates best first."""

    kind: str  # "activation" or "init"
    model: str
    repetitions: int
    candidates: tuple[Candidate, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "schema_version": 1,
            "kind": self.kind,
            "model": self.model,
            "repetitions": self.repetitions,
            "direction": "higher is better: a higher NEAR score predicts higher accuracy after training",
            "candidates": [
                {"rank": k + 1, "name": c.name, "score": c.score, "score_std": c.score_std, "scores": list(c.scores)}
                for k, c in enumerate(self.candidates)
            ],
        }


def _rank(
    kind: str,
    model: str | os.PathLike[str],
    names: Sequence[str],
    make: Callable[[onnx.ModelProto, str], tuple[onnx.ModelProto, ScoreConfig]],
    data: DataArg,
) -> Ranking:
    loaded = load_model(model)
    base = inline_functions(loaded.proto)
    out: list[Candidate] = []
    with tempfile.TemporaryDirectory(prefix="onnx-near-") as tmp:
        for name in names:
            variant, cfg = make(base, name)
            path = Path(tmp) / f"{kind}_{name}.onnx"
            onnx.save(variant, str(path))
            r = score(path, data=data, config=cfg)
            out.append(Candidate(name, r.score, r.score_std, r.scores))
    out.sort(key=lambda c: -c.score)
    return Ranking(kind, str(model), len(out[0].scores) if out else 0, tuple(out))


def rank_activations(
    model: str | os.PathLike[str],
    candidates: Sequence[str],
    data: DataArg = None,
    config: ScoreConfig | None = None,
    init: str = "pytorch-default",
) -> Ranking:
    """Every activation site of ``model`` swapped for each candidate; weights re-drawn with ``init``."""
    unknown = [c for c in candidates if c not in CANDIDATES]
    if unknown or not candidates:
        raise ConfigError(
            f"unknown activation {unknown[0] if unknown else '(none)'!r}; expected some of {', '.join(CANDIDATES)}"
        )
    cfg = replace(config or ScoreConfig(repetitions=5, batchnorm="batch"), reinit=init)
    return _rank("activation", model, candidates, lambda m, c: (swap_activations(m, c), cfg), data)


def rank_inits(
    model: str | os.PathLike[str], schemes: Sequence[str], data: DataArg = None, config: ScoreConfig | None = None
) -> Ranking:
    """``model`` with its layer weights re-drawn by each scheme, repetition after repetition."""
    unknown = [s for s in schemes if s not in SCHEMES]
    if unknown or not schemes:
        raise ConfigError(
            f"unknown initialisation scheme {unknown[0] if unknown else '(none)'!r}; expected some of {', '.join(SCHEMES)}"
        )
    cfg = config or ScoreConfig(repetitions=5, batchnorm="batch")
    return _rank("init", model, schemes, lambda m, s: (m, replace(cfg, reinit=s)), data)


def choice_table(r: Ranking) -> str:
    """Candidates (activations or initialisations) best first."""
    rows = [(str(k + 1), c.name, f"{c.score:.3f}", f"{c.score_std:.3f}") for k, c in enumerate(r.candidates)]
    head = f"model {r.model} · {r.repetitions} repetitions each, same seed for every candidate"
    return "\n".join([head, "", grid(("#", r.kind, "NEAR", "std"), rows), "", "higher NEAR is better"])
