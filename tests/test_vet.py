"""`onnx-near vet` on the fixtures of models/vet/: each planted fault is caught at its layer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from onnx_near.cli import main
from onnx_near.vet import VetChecks, vet

VET = Path(__file__).resolve().parents[1] / "models" / "vet"
DATA = VET / "inputs.npy"


def run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, list(args))
    return r.exit_code, r.stdout, r.stderr


def test_healthy_model_passes() -> None:
    """The healthy MLP passes every check: exit code 0."""
    r = vet(VET / "healthy.onnx", DATA)
    assert r.passed and r.exit_code == 0 and all(v.ok for v in r.layers)


@pytest.mark.parametrize(
    "fixture,layer,problem",
    [("zeroed", "fc2", "collapsed"), ("saturated", "tanh1", "saturated"), ("nan_bias", "fc2", "broken")],
)
def test_fault_is_caught_at_its_layer(fixture: str, layer: str, problem: str) -> None:
    """The first flagged layer is the one with the planted fault, and the problem is named."""
    r = vet(VET / f"{fixture}.onnx", DATA)
    assert not r.passed and r.exit_code == 1
    first = next(v for v in r.layers if not v.ok)
    assert first.name == layer and first.problems[0].startswith(problem)


def test_baseline_report_round_trip(tmp_path: Path) -> None:
    """A saved JSON report is a baseline: the zeroed copy's layers are flagged as dropped."""
    code, out, _ = run(
        "vet", str(VET / "healthy.onnx"), "--data", str(DATA), "--format", "json", "-o", str(tmp_path / "h.json")
    )
    assert code == 0 and out == ""
    r = vet(VET / "zeroed.onnx", DATA, checks=VetChecks(min_layer_ratio=0.0), baseline=tmp_path / "h.json")
    dropped = [v.name for v in r.layers if any(p.startswith("dropped") for p in v.problems)]
    assert dropped[:2] == ["fc2", "relu2"]


def test_baseline_model_matches_by_position_when_names_differ(tmp_path: Path) -> None:
    """Against a baseline .onnx whose node names differ, taps are matched by position."""
    import onnx

    m = onnx.load(str(VET / "healthy.onnx"))
    for n in m.graph.node:
        n.name = "renamed_" + n.name
    onnx.save(m, str(tmp_path / "renamed.onnx"))
    r = vet(VET / "healthy.onnx", DATA, baseline=tmp_path / "renamed.onnx")
    assert r.passed and all(v.baseline_erank == pytest.approx(v.erank) for v in r.layers)


def test_cli_exit_codes_and_json() -> None:
    """0 passed, 1 failed a check, 2 could not vet; the JSON document holds the verdict and the layers."""
    assert run("vet", str(VET / "healthy.onnx"), "--data", str(DATA))[0] == 0
    code, out, _ = run("vet", str(VET / "zeroed.onnx"), "--data", str(DATA), "--format", "json")
    d = json.loads(out)
    assert code == 1 and d["vet"]["passed"] is False and d["layers"][2]["problems"]
    assert {"name", "erank", "rank_ratio", "width"} <= set(d["layers"][0])
    assert run("vet", str(VET / "missing.onnx"))[0] == 2
    assert run("vet", str(VET / "healthy.onnx"), "--data", str(DATA), "--min-score", "1e9")[0] == 1
