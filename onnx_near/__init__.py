"""onnx-near: NEAR scores for any ONNX model.

NEAR (Husistein, Reiher, Eckhoff; arXiv 2408.08776, ICLR 2025) judges an untrained
network by the effective rank of its pre- and post-activation matrices: the higher the
score, the higher the accuracy the network is expected to reach after training.

    >>> import onnx_near
    >>> result = onnx_near.score("models/cnn.onnx", seed=0)
    >>> result.score, [(l.name, l.erank) for l in result.layers]

Every command has its function here, and each takes a model as a path, an
``onnx.ModelProto`` or its bytes (:class:`InMemoryModel` adds the folder of its external
data and a name):

* ``score`` → :func:`score` (:class:`ScoreResult`); ``layers`` → :func:`describe`
  (:class:`LayersReport`);
* ``vet`` → :func:`vet` (:class:`VetChecks` in, :class:`VetResult` out);
* ``rank`` → :func:`rank_models`, :func:`rank_from_results` (:class:`RankResult`; engines
  :class:`LocalEngine`, :class:`RayEngine`);
* ``activations``, ``init`` → :func:`rank_activations`, :func:`rank_inits` (:class:`Ranking`);
* ``width`` → :func:`estimate_width` (a :class:`WidthSearch` in), :func:`estimate_from_models`
  (:class:`WidthEstimate`).
"""

from __future__ import annotations

from .choose import Candidate, Ranking, rank_activations, rank_inits
from .config import ScoreConfig
from .engines import LocalEngine, RayEngine
from .erank import effective_rank
from .errors import (
    ConfigError,
    GraphError,
    InputDataError,
    ModelLoadError,
    NearError,
    NoTapsError,
    RunError,
)
from .model_source import InMemoryModel, ModelSource
from .rank import Correlation, ModelRank, RankResult, rank_from_results, rank_models
from .report import LayerScore, LayersReport, ScoreResult, Skipped, TapInfo
from .score import describe, score
from .version import __version__
from .vet import Finding, LayerVerdict, VetChecks, VetResult, vet
from .width import PowerLaw, WidthEstimate, WidthSearch, estimate_from_models, estimate_width

__all__ = [
    "Candidate",
    "ConfigError",
    "Correlation",
    "Finding",
    "GraphError",
    "InMemoryModel",
    "InputDataError",
    "LayerScore",
    "LayerVerdict",
    "LayersReport",
    "LocalEngine",
    "ModelLoadError",
    "ModelRank",
    "ModelSource",
    "NearError",
    "NoTapsError",
    "PowerLaw",
    "RankResult",
    "Ranking",
    "RayEngine",
    "RunError",
    "ScoreConfig",
    "ScoreResult",
    "Skipped",
    "TapInfo",
    "VetChecks",
    "VetResult",
    "WidthEstimate",
    "WidthSearch",
    "__version__",
    "describe",
    "effective_rank",
    "estimate_from_models",
    "estimate_width",
    "rank_activations",
    "rank_from_results",
    "rank_inits",
    "rank_models",
    "score",
    "vet",
]
