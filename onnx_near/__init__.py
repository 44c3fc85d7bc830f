"""onnx-near: NEAR scores for any ONNX model.

NEAR (Husistein, Reiher, Eckhoff; arXiv 2408.08776, ICLR 2025) judges an untrained
network by the effective rank of its pre- and post-activation matrices: the higher the
score, the higher the accuracy the network is expected to reach after training.

    >>> import onnx_near
    >>> result = onnx_near.score("models/cnn.onnx", seed=0)
    >>> result.score, [(l.name, l.erank) for l in result.layers]
"""

from __future__ import annotations

__version__ = "0.1.0"

from .config import ScoreConfig
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
from .report import LayerScore, LayersReport, ScoreResult, Skipped, TapInfo
from .score import describe, score

__all__ = [
    "ConfigError",
    "GraphError",
    "InputDataError",
    "LayerScore",
    "LayersReport",
    "ModelLoadError",
    "NearError",
    "NoTapsError",
    "RunError",
    "ScoreConfig",
    "ScoreResult",
    "Skipped",
    "TapInfo",
    "__version__",
    "describe",
    "effective_rank",
    "score",
]
