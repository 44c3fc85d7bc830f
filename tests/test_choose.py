"""Choosing an activation or an initialisation (onnx_near/choose.py): the rankings of the
candidates.  The swapped graphs themselves: test_variants.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from graphs import mlp, save

from onnx_near.choose import rank_activations, rank_inits
from onnx_near.config import ScoreConfig
from onnx_near.errors import ConfigError


def test_activation_ranking_is_paired_and_ordered(tmp_path: Path) -> None:
    """Candidates are ranked by mean score; the saturating sigmoid scores below relu and tanh."""
    path = save(mlp(d_in=16, hidden=64, d_out=10), tmp_path / "m.onnx")
    r = rank_activations(path, ["sigmoid", "relu", "tanh"], config=ScoreConfig(repetitions=3))
    assert [c.score for c in r.candidates] == sorted((c.score for c in r.candidates), reverse=True)
    assert r.candidates[-1].name == "sigmoid" and all(len(c.scores) == 3 for c in r.candidates)
    d: dict[str, Any] = r.to_dict()
    assert d["candidates"][0]["rank"] == 1


def test_init_ranking(tmp_path: Path) -> None:
    """Each scheme is scored with its own re-drawn weights and reported with its spread."""
    path = save(mlp(d_in=16, hidden=64, d_out=10), tmp_path / "m.onnx")
    r = rank_inits(path, ["pytorch-default", "kaiming-normal", "orthogonal"], config=ScoreConfig(repetitions=2))
    assert {c.name for c in r.candidates} == {"pytorch-default", "kaiming-normal", "orthogonal"}
    for c in r.candidates:  # the mean and sample spread of its two repetitions, each a sum of eranks ≥ 1 per tap
        assert len(c.scores) == 2 and c.score == pytest.approx(np.mean(c.scores), rel=1e-12)
        assert c.score_std == pytest.approx(np.std(c.scores, ddof=1), rel=1e-12, abs=1e-12)
        assert all(3 <= s <= 64 + 64 + 10 for s in c.scores)  # three taps (64, 64, 10 columns), erank ≥ 1 each
    assert len({c.score for c in r.candidates}) == 3  # each scheme its own weights


def test_unknown_candidate_is_a_config_error(tmp_path: Path) -> None:
    """A candidate name that does not exist is refused with the list of valid ones."""
    with pytest.raises(ConfigError, match="relu"):
        rank_activations(save(mlp(), tmp_path / "m.onnx"), ["swish2"])
