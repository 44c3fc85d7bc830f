"""Ranking many models (onnx_near/rank.py): order, baselines, parallel jobs, failures, and the
report's column and correlations per proxy."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from graphs import mlp, save

from onnx_near.cli import main
from onnx_near.config import ScoreConfig
from onnx_near.errors import InputDataError
from onnx_near.rank import rank_models, read_accuracies, summarise
from onnx_near.results import ResultRow

DIGITS = Path(__file__).resolve().parents[1] / "benchmarks" / "digits"


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


def test_rank_orders_best_first_and_reports_baselines(zoo: Path) -> None:
    """Models come best first with params and MACs; the broken file is reported, the rest go on."""
    r = rank_models([zoo], config=ScoreConfig(seed=0), accuracies=read_accuracies(zoo / "acc.csv"))
    good = [m for m in r.models if m.error is None]
    assert len(good) == 6 and len(r.models) == 7  # every MLP scored: the order below is not that of an empty list
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
    widths = [f"w{w:02d}.onnx" for w in (2, 4, 8, 16, 32, 64)]
    for r in (one, two):  # the six MLPs scored (the lists above are not both empty), only the broken file failed
        assert sorted(Path(m.model).name for m in r.models if m.error is None) == widths
        assert [Path(m.model).name for m in r.models if m.error is not None] == ["broken.onnx"]


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


def _row(name: str, near: float, swap_value: float | None, params: int) -> ResultRow:
    return ResultRow(
        name, f"/m/{name}", None, {}, "0", near, 0.0, params, params, None, 0.0, proxies={"swap": swap_value}
    )


def test_rank_report_has_a_column_and_correlations_per_proxy() -> None:
    """summarise: the first proxy orders the models, each proxy and combination gets its
    correlations (over the models that have it), params and MACs stay the baselines."""
    names = [f"m{k}" for k in range(6)]
    near = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    swaps = [6.0, 5.0, None, 3.0, 2.0, 1.0]
    rows = [_row(n, a, s, 10 * (k + 1)) for k, (n, a, s) in enumerate(zip(names, near, swaps))]
    acc = {f"/m/{n}": float(k) for k, n in enumerate(names)}
    r = summarise(rows, acc, proxies=("swap", "near", "near+swap"))
    assert [m.model for m in r.models][:5] == ["m0", "m1", "m3", "m4", "m5"]  # by SWAP; m2 has none
    assert list(r.correlation) == ["near", "swap", "near+swap", "params", "macs"]
    assert r.correlation["near"].kendall_tau == pytest.approx(1.0)
    assert r.correlation["swap"].kendall_tau == pytest.approx(-1.0) and r.correlation["swap"].models == 5
    assert r.correlation["near+swap"].models == 5
    d = r.to_dict()
    assert d["proxies"] == ["swap", "near", "near+swap"] and d["models"][-1]["proxies"]["swap"] is None
    row = ResultRow.from_json(rows[2].to_json())
    assert row.proxies == {"swap": None}
    old = json.loads(rows[0].to_json())
    del old["proxies"]  # a results file written before proxies existed
    assert ResultRow.from_json(json.dumps(old)).proxies == {}


def test_rank_cli_shows_the_proxies(tmp_path: Path) -> None:
    """rank --proxies near,meco,swap,near+swap on a few digits models: a column each, the
    correlations of each, the same NEAR as without them."""
    models = sorted((DIGITS / "models").glob("cnn_d2_c4_*.onnx"))[:4]
    acc = tmp_path / "acc.csv"
    acc.write_text("\n".join(f"{m},{0.5 + 0.1 * k}" for k, m in enumerate(models)) + "\n")
    args = ["rank", *map(str, models), "--data", str(DIGITS / "digits_inputs.npy"), "--accuracy", str(acc), "-q"]
    cli = CliRunner()
    out = cli.invoke(main, [*args, "--proxies", "near,meco,swap,near+swap", "--format", "json"])
    assert out.exit_code == 0, out.output
    d = json.loads(out.output)
    assert set(d["correlation"]) == {"near", "meco", "swap", "near+swap", "params", "macs"}
    assert all({"meco", "swap", "near+swap"} <= set(m["proxies"]) for m in d["models"])
    plain = json.loads(cli.invoke(main, [*args, "--format", "json"]).output)
    assert sorted(m["score"] for m in plain["models"]) == sorted(m["score"] for m in d["models"])
    table = cli.invoke(main, [*args, "--proxies", "near,swap"]).output
    assert "SWAP" in table and "higher is better for every proxy" in table
    for combo in itertools.permutations(["near", "swap"]):
        assert cli.invoke(main, [*args, "--proxies", ",".join(combo), "--format", "csv"]).exit_code == 0
