"""Choose an activation function or a weight initialisation without training (SPEC §6).

Each candidate is scored on the same architecture, the same data and the same seed, over
several repetitions with re-drawn weights, as the model it is held in memory (nothing is
written to disk; external data is read from the model's own folder); the candidates are ranked by their mean NEAR
score (higher is better), with the standard deviation over repetitions.  Because every
candidate uses the same seed, repetition r of every candidate sees the same input rows and
(for activations) the same weights: the comparison is paired.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import onnx

from .config import ScoreConfig
from .errors import ConfigError
from .inputs import DataArg
from .load import load_model
from .model_source import InMemoryModel, ModelSource, report_name
from .reinit import SCHEMES, check_scheme
from .report import grid
from .rewrite import inline_functions, sort_nodes
from .score import score
from .variants import CANDIDATES, check_activation, swap_activations


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
    model: ModelSource,
    names: Sequence[str],
    make: Callable[[onnx.ModelProto, str], tuple[onnx.ModelProto, ScoreConfig]],
    data: DataArg,
) -> Ranking:
    """Each candidate's variant of ``model``, scored in memory with the model's folder (for
    its external data), best first."""
    loaded = load_model(model)
    base = inline_functions(sort_nodes(loaded.proto))  # the rewrite's first two passes
    out: list[Candidate] = []
    for name in names:
        variant, cfg = make(base, name)
        r = score(InMemoryModel(variant, loaded.base_dir, f"{loaded.name} ({kind} {name})"), data=data, config=cfg)
        out.append(Candidate(name, r.score, r.score_std, r.scores))
    out.sort(key=lambda c: -c.score)
    return Ranking(kind, report_name(model), len(out[0].scores) if out else 0, tuple(out))


def _check_some(names: Sequence[str], check: Callable[[str], None], what: str, known: Sequence[str]) -> None:
    """Raise :class:`ConfigError` unless ``names`` lists at least one ``what``, each known (``check``)."""
    if not names:
        raise ConfigError(f"no {what} given; expected some of {', '.join(known)}")
    for name in names:
        check(name)


def rank_activations(
    model: ModelSource,
    candidates: Sequence[str],
    data: DataArg = None,
    config: ScoreConfig | None = None,
    init: str = "pytorch-default",
) -> Ranking:
    """Every activation site of ``model`` swapped for each candidate; weights re-drawn with ``init``.

    ``model``: a file, or a model held in memory (as for :func:`onnx_near.score`)."""
    _check_some(candidates, check_activation, "activation", CANDIDATES)
    cfg = replace(config or ScoreConfig(repetitions=5, batchnorm="batch"), reinit=init)
    return _rank("activation", model, candidates, lambda m, c: (swap_activations(m, c), cfg), data)


def rank_inits(
    model: ModelSource, schemes: Sequence[str], data: DataArg = None, config: ScoreConfig | None = None
) -> Ranking:
    """``model`` (a file, or a model held in memory) with its layer weights re-drawn by each
    scheme, repetition after repetition."""
    _check_some(schemes, check_scheme, "initialisation scheme", SCHEMES)
    cfg = config or ScoreConfig(repetitions=5, batchnorm="batch")
    return _rank("init", model, schemes, lambda m, s: (m, replace(cfg, reinit=s)), data)


def choice_table(r: Ranking) -> str:
    """Candidates (activations or initialisations) best first."""
    rows = [(str(k + 1), c.name, f"{c.score:.3f}", f"{c.score_std:.3f}") for k, c in enumerate(r.candidates)]
    head = f"model {r.model} · {r.repetitions} repetitions each, same seed for every candidate"
    return "\n".join([head, "", grid(("#", r.kind, "NEAR", "std"), rows), "", "higher NEAR is better"])
