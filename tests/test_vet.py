"""`onnx-near vet` on the fixtures of models/vet/: each planted fault is caught at its layer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnx_near.cli import main
from onnx_near.config import ScoreConfig
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
    [("zeroed", "fc2", "collapsed"), ("saturated", "fc1", "exploded"), ("nan_bias", "fc2", "broken")],
)
def test_fault_is_caught_at_its_layer(fixture: str, layer: str, problem: str) -> None:
    """The first flagged layer is the one with the planted fault, and the problem is named."""
    r = vet(VET / f"{fixture}.onnx", DATA)
    assert not r.passed and r.exit_code == 1
    first = next(v for v in r.layers if not v.ok)
    assert first.name == layer and first.problems[0].rule == problem
    if fixture == "saturated":  # fc1's weights were scaled up: fc1 explodes, the Tanh after it saturates
        assert [p.rule for p in next(v for v in r.layers if v.name == "tanh1").problems] == ["saturated"]


def test_baseline_report_round_trip(tmp_path: Path) -> None:
    """A saved JSON report is a baseline: the zeroed copy's layer is flagged as dropped, the
    layers after it (which dropped because their feed did) are inherited notes."""
    code, out, _ = run(
        "vet", str(VET / "healthy.onnx"), "--data", str(DATA), "--format", "json", "-o", str(tmp_path / "h.json")
    )
    assert code == 0 and out == ""
    r = vet(VET / "zeroed.onnx", DATA, checks=VetChecks(min_layer_ratio=0.0), baseline=tmp_path / "h.json")
    dropped = [v.name for v in r.layers if any(p.rule == "dropped" for p in v.problems)]
    assert dropped == ["fc2"]
    relu2 = next(v for v in r.layers if v.name == "relu2")
    assert [n.rule for n in relu2.notes] == ["inherited"] and relu2.change is not None and relu2.change < -0.5


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


def _squeeze_excite(gate_weight_scale: float = 1.0, gate_bias: float = 0.0) -> onnx.ModelProto:
    """Conv(3→64, 3×3) → ReLU → squeeze-excite (GlobalAveragePool over 32×32 → FC 64→64 →
    Sigmoid gate → Mul) → Conv → GlobalAveragePool → FC head (10 classes).  On white-noise
    images the pooled vector is nearly the same for every sample (1024 positions averaged),
    so the gate's matrix has erank ≈ 1 whatever its weights."""
    from graphs import Graph

    g = Graph(seed=1)
    x = g.input("x", ["N", 3, 32, 32])
    c = g.op("Relu", g.op("Conv", x, g.weight(64, 3, 3, 3), pads=[1, 1, 1, 1], node_name="conv1"), node_name="relu1")
    pooled = g.op("Flatten", g.op("GlobalAveragePool", c))
    w = g.const(g.rng.standard_normal((64, 64)) * gate_weight_scale / 8)
    fc = g.op("Gemm", pooled, w, g.const(np.full(64, gate_bias)), node_name="se_fc")
    gate = g.op("Sigmoid", fc, node_name="se_gate")
    scaled = g.op("Mul", c, g.op("Unsqueeze", gate, g.const(np.array([2, 3]), dtype=np.int64)))
    c2 = g.op("Conv", scaled, g.weight(32, 64, 1, 1), node_name="conv2")
    head = g.op("Gemm", g.op("Flatten", g.op("GlobalAveragePool", c2)), g.weight(32, 10), node_name="head")
    g.output(head, ["N", 10])
    return g.model(infer=False)


def test_a_gate_after_global_pooling_is_input_limited_not_collapsed(tmp_path: Path) -> None:
    """Issue #12 item 1: the gate's rank ratio is far below 0.05, but its feed (the pooled
    vector) gives it no more: a note, and the model passes; its measured feed is the pooled
    tensor, with an erank of a few.  A zeroed conv, which had rank to lose, fails — and only
    it: what follows it is input-limited."""
    from graphs import save

    noise = ScoreConfig(synthetic="normal")  # white noise: the pooled vectors nearly alike
    r = vet(save(_squeeze_excite(), tmp_path / "se.onnx"), config=noise)
    gate = next(v for v in r.layers if v.name == "se_gate")
    assert gate.rank_ratio < 0.05 and gate.feed_erank is not None and gate.feed_erank < 3
    assert r.passed, r.findings
    kept = gate.notes[0].value
    assert [n.rule for n in gate.notes] == ["input-limited"] and kept is not None and kept >= VetChecks().min_kept
    fc = next(v for v in r.layers if v.name == "se_fc")
    assert fc.feed is not None and fc.feed.startswith("flatten")  # the pooled vector, flattened

    from onnx import numpy_helper

    m = _squeeze_excite()
    conv2_w = next(n for n in m.graph.node if n.name == "conv2").input[1]
    for t in m.graph.initializer:
        if t.name == conv2_w:
            t.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(t)), t.name))
    broken = vet(save(m, tmp_path / "zeroed.onnx"), config=noise)
    first = next(v for v in broken.layers if not v.ok)
    assert first.name == "conv2" and first.problems[0].rule == "collapsed"
    assert [v.name for v in broken.layers if not v.ok] == ["conv2"]  # what follows is input-limited


def test_an_output_head_at_its_bounds_is_a_note(tmp_path: Path) -> None:
    """A detector's class sigmoids at 0 on an image with nothing in it are normal: an output
    head's saturation is a note; the same saturated sigmoid inside the network fails."""
    from graphs import Graph, save

    def model(hidden: bool) -> Path:
        g = Graph(seed=2)
        h = g.op("Relu", g.op("Gemm", g.input("x", ["N", 16]), g.weight(16, 32), node_name="fc1"), node_name="relu1")
        s = g.op("Sigmoid", g.op("Gemm", h, g.weight(32, 32), g.const(np.full(32, -40.0)), node_name="cls"))
        if hidden:
            s = g.op("Gemm", s, g.weight(32, 8), node_name="after")
        g.output(s, ["N", 32 if not hidden else 8])
        return save(g.model(infer=False), tmp_path / f"head_{hidden}.onnx")

    head = vet(model(hidden=False))
    sig = next(v for v in head.layers if v.op == "Sigmoid")
    assert sig.head and sig.saturation is not None and sig.saturation > 0.9
    assert head.passed and "head-saturated" in [n.rule for n in sig.notes]
    inner = vet(model(hidden=True))
    assert not inner.passed and [p.rule for v in inner.layers for p in v.problems] == ["saturated"]


def test_vetting_measures_feeds_without_changing_the_score() -> None:
    """The feeds are drawn and ranked apart: vet's NEAR score is score's, bit for bit."""
    from onnx_near import score

    for m in ("healthy", "zeroed"):
        assert vet(VET / f"{m}.onnx", DATA).report.score == score(VET / f"{m}.onnx", DATA).score


def test_findings_say_rule_value_and_threshold() -> None:
    """Item 5: each finding in the JSON names its rule, the measured value and the threshold."""
    code, out, _ = run("vet", str(VET / "zeroed.onnx"), "--data", str(DATA), "--format", "json")
    assert code == 1
    layer = json.loads(out)["layers"][2]
    assert layer["problems"][0] == {
        "rule": "collapsed",
        "value": 0.0,
        "threshold": 0.1,
        "message": layer["problems"][0]["message"],
    }
    assert layer["feed"] and layer["feed_erank"] > 20
    assert json.loads(out)["layers"][3]["notes"][0]["rule"] == "input-limited"


def test_vet_says_which_inputs_it_used_and_prefers_smooth_images(tmp_path: Path) -> None:
    """Issue #12 item 2: without data, vet feeds image-shaped inputs smooth random images
    (quarter-resolution noise, bilinearly upsampled, unit variance per pixel) and says so;
    score keeps N(0, 1) noise; with data, "data"."""
    from graphs import save

    from onnx_near import score
    from onnx_near.inputs import InputSpec, synthesise

    r = vet(save(_squeeze_excite(), tmp_path / "se.onnx"))
    assert r.report.inputs == "synthetic: smooth random images"
    assert score(tmp_path / "se.onnx").inputs == "synthetic: N(0, 1) noise"
    assert vet(VET / "healthy.onnx", DATA).report.inputs == "data"
    spec = InputSpec("x", np.dtype(np.float32), (3, 32, 32), None, None, None, 0, None)
    a = synthesise(spec, 400, np.random.default_rng(0), "smooth")
    assert a.shape == (400, 3, 32, 32) and abs(a.std() - 1) < 0.05
    near = np.corrcoef(a[:, 0, 10, 10], a[:, 0, 10, 11])[0, 1]  # neighbouring pixels move together
    far = np.corrcoef(a[:, 0, 10, 10], a[:, 0, 10, 30])[0, 1]
    assert near > 0.8 and abs(far) < 0.15
