"""Ranking many models: order, baselines, correlations against scipy, parallel jobs, failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from graphs import Graph, mlp, save
from scipy import stats

from onnx_near.cli import main
from onnx_near.config import ScoreConfig
from onnx_near.errors import InputDataError
from onnx_near.rank import correlate, rank_models, read_accuracies


@pytest.fixture()
def zoo(tmp_path: Path) -> Path:
    """Six MLPs of growing width (and a broken file), with made-up accuracies in a CSV."""
    folder = tmp_path / "zoo"
    folder.mkdir()
    rows = ["model,accuracy"]
    for k, width in enumerate([2, 4, 8, 16, 32, 64]):
        save(mlp(d_in=16, hidden=width, d_out=10), folder / f"w{width:02d}.onnx")
        rows.append(f"w{width:02d}.onnx,{0.5 + 0.05 * k}")
    (folder / "broken.onnx").write_bytes(b"not a model")
    (folder / "acc.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_correlations_match_scipy() -> None:
    """τ and ρ are scipy's; top-k precision counts the shared top-k on a hand-checked example."""
    pred = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    acc = np.array([0.2, 0.5, 0.6, 0.7, 0.1, 0.65])
    c = correlate(pred, acc, 2)
    assert c.kendall_tau == pytest.approx(stats.kendalltau(pred, acc).statistic)
    assert c.spearman_rho == pytest.approx(stats.spearmanr(pred, acc).statistic)
    assert c.top_k_precision == 1.0  # top-2 by score {5, 3}, by accuracy {3, 5}
    assert correlate(pred, acc, 1).top_k_precision == 0.0  # {5} vs {3}
    assert correlate(pred, acc, 3).top_k_precision == pytest.approx(2 / 3)  # {5, 3, 1} vs {3, 5, 2}


def test_rank_orders_best_first_and_reports_baselines(zoo: Path) -> None:
    """Models come best first with params and MACs; the broken file is reported, the rest go on."""
    r = rank_models([zoo], config=ScoreConfig(seed=0), accuracies=read_accuracies(zoo / "acc.csv"))
    good = [m for m in r.models if m.error is None]
    assert [m.score for m in good] == sorted((m.score for m in good), reverse=True)
    assert r.models[-1].model.endswith("broken.onnx") and "not a readable ONNX model" in (r.models[-1].error or "")
    w64 = next(m for m in good if m.model.endswith("w64.onnx"))
    assert w64.params == 16 * 64 + 64 * 10 and w64.macs == 16 * 64 + 64 * 10 and w64.accuracy == pytest.approx(0.75)
    assert set(r.correlation) == {"near", "params", "macs"}
    assert r.correlation["params"].spearman_rho == pytest.approx(1.0)  # accuracies grow with width by construction


def test_parallel_jobs_give_the_same_ranking(zoo: Path) -> None:
    """--jobs 2 scores in two processes and gives the same scores as one."""
    one = rank_models([zoo], config=ScoreConfig(seed=1))
    two = rank_models([zoo], config=ScoreConfig(seed=1), jobs=2)
    assert [(m.model, m.score) for m in one.models if m.error is None] == [
        (m.model, m.score) for m in two.models if m.error is None
    ]


def test_cli_rank_json(zoo: Path) -> None:
    """`onnx-near rank --format json` has models and, with accuracies, correlation for near/params/macs."""
    r = CliRunner().invoke(main, ["rank", str(zoo), "--accuracy", str(zoo / "acc.csv"), "--format", "json", "-q"])
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert {"model", "score", "params", "macs"} <= set(d["models"][0])
    for name in ("near", "params", "macs"):
        assert {"kendall_tau", "spearman_rho", "top_k_precision"} <= set(d["correlation"][name])


def test_bad_accuracy_file(tmp_path: Path) -> None:
    """An accuracy that is not a number is named with its line."""
    (tmp_path / "acc.csv").write_text("model,accuracy\na.onnx,0.9\nb.onnx,high\n")
    with pytest.raises(InputDataError, match="line 3"):
        read_accuracies(tmp_path / "acc.csv")


def test_parameter_count_matches_pytorch_on_the_digits_models() -> None:
    """PyTorch's own count (accuracy.csv's params, from make_search_space.py) for all 64 models,
    including BatchNorm models whose second γ/β the exporter deduplicated into Identity nodes."""
    import csv

    from onnx_near.graph import GraphIndex, parameter_count
    from onnx_near.load import load_model

    root = Path(__file__).resolve().parents[1] / "benchmarks" / "digits"
    rows = list(csv.DictReader((root / "accuracy.csv").open()))
    got = {r["model"]: parameter_count(GraphIndex(load_model(root / r["model"]).proto)) for r in rows}
    assert len(rows) == 64 and got == {r["model"]: int(r["params"]) for r in rows}


def test_parameter_count_of_deduplicated_aliases() -> None:
    """An initializer named again through Identity for a second layer counts twice; BN statistics never."""
    g = Graph()
    ones, zeros = g.const(np.ones(8), "gamma"), g.const(np.zeros(8), "beta")
    h = g.op("Gemm", g.input("x", ["N", 4]), g.weight(4, 8))
    alias = lambda t: g.op("Identity", t)  # noqa: E731  (how torch.onnx names a deduplicated copy)
    h = g.op("BatchNormalization", h, ones, zeros, alias(zeros), alias(ones))
    h = g.op("Gemm", h, g.weight(8, 8))
    h = g.op("BatchNormalization", h, alias(ones), alias(zeros), alias(zeros), alias(ones))
    g.output(h, ["N", 8])
    from onnx_near.graph import GraphIndex, parameter_count

    # two Gemm weights (4·8 + 8·8) and two BatchNorms' γ and β (2·16)
    assert parameter_count(GraphIndex(g.model(infer=False))) == 32 + 64 + 32
