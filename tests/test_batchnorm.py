"""``--batchnorm batch`` (onnx_near/batchnorm.py): the rewrite pass, whole batches in every
forward pass, the defaults and the hints (the window of whole batches itself: test_plan.py).

The goldens in models/bn_goldens/ come from PyTorch's training-mode BatchNorm
(models/make_bn_goldens.py, run with torch); these tests never import torch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from graphs import Graph, save
from onnx import TensorProto

import onnx_near
from onnx_near.batchnorm import batch_statistics, folded_batchnorm_hint, inference_batchnorms
from onnx_near.cli import main
from onnx_near.erank import effective_rank
from onnx_near.errors import ConfigError
from onnx_near.graph import GraphIndex
from onnx_near.load import load_model
from onnx_near.matrices import to_rows
from onnx_near.rewrite import analyse, infer_shapes, inline_functions

ROOT = Path(__file__).resolve().parents[1]
GOLDENS = ROOT / "models" / "bn_goldens"
CASES = json.loads((GOLDENS / "index.json").read_text())["cases"]
CNN = ROOT / "models" / "cnn.onnx"
FOLDED = ROOT / "models" / "corpus" / "torch-torchscript" / "conv_bn_relu_folded.onnx"
TOL = 1e-6


def _golden(name: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    g = np.load(GOLDENS / f"{name}.npz")
    feeds = {str(n): g[f"input_{k}"] for k, n in enumerate(g["input_names"])}
    want = {str(n): g[f"bn_{k}"] for k, n in enumerate(g["bn_names"])}
    want |= {str(n): g[f"output_{k}"] for k, n in enumerate(g["output_names"])}
    return feeds, want


def _bn_inputs(name: str) -> dict[str, np.ndarray]:
    """Per BatchNorm output tensor, the input torch fed it."""
    g = np.load(GOLDENS / f"{name}.npz")
    return {str(n): g[f"bn_input_{k}"] for k, n in enumerate(g["bn_names"])}


def _one_node(index: GraphIndex, node: onnx.NodeProto) -> onnx.ModelProto:
    """``node`` alone: its data input a graph input, its parameters initializers."""
    held = [index.weight(t) for t in node.input[1:5]]
    params = [
        onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(h[1]), t) for t, h in zip(node.input[1:5], held) if h
    ]
    graph = onnx.helper.make_graph(
        [node],
        "bn",
        [onnx.helper.make_tensor_value_info(node.input[0], TensorProto.FLOAT, None)],
        [onnx.helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)],
        params,
    )
    return onnx.helper.make_model(graph, opset_imports=index.model.opset_import, ir_version=8)


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    present = {o.name for o in m.graph.output}
    m.graph.output.extend(
        onnx.helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in outputs if t not in present
    )
    options = ort.SessionOptions()
    options.log_severity_level = 3
    s = ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return dict(zip(outputs, s.run(outputs, feeds)))


@pytest.mark.parametrize("case", sorted(CASES))
def test_pass_matches_torch_training_mode(case: str) -> None:
    """Each BatchNorm after the pass, under onnxruntime, fed the input torch fed it, equals
    PyTorch's training-mode BatchNorm (|Δ| ≤ 1e-6 · (1 + |torch|) elementwise); the whole
    rewritten model's BatchNorm outputs and outputs equal torch's training-mode forward of the
    same batch to 1e-6 of each tensor's largest value (the convolutions before them differ by
    float32 rounding, which a BatchNorm scales by 1/σ)."""
    feeds, want = _golden(case)
    model = infer_shapes(inline_functions(onnx.load(ROOT / CASES[case]["model"])))
    index = GraphIndex(model)
    done = batch_statistics(model)
    assert len(done.rewritten) == CASES[case]["batchnorms"]
    assert not inference_batchnorms(GraphIndex(done.model))
    for t, x in _bn_inputs(case).items():
        node = index.node_of(t)
        assert node is not None and node.op_type == "BatchNormalization"
        alone = batch_statistics(_one_node(index, node)).model
        got: Any = _run(alone, {node.input[0]: x}, [t])[t]  # an array here, the outputs by name below
        np.testing.assert_allclose(got, want[t], rtol=TOL, atol=TOL, err_msg=f"{case}: {t} alone")
    got = _run(done.model, feeds, list(want))
    for t, w in want.items():
        assert np.abs(got[t] - w).max() <= TOL * max(1.0, np.abs(w).max()), f"{case}: {t}"


def test_score_with_batch_statistics_gives_the_eranks_of_torchs_batchnorm(tmp_path: Path) -> None:
    """End to end: with --batchnorm batch, the batch of the golden (rows all, one forward pass),
    each BatchNorm tap's effective rank is that of PyTorch's training-mode output."""
    feeds, want = _golden("torchscript_conv_bn_relu")
    data = tmp_path / "x.npz"
    arrays: dict[str, Any] = feeds  # savez's keywords: arrays by name (its allow_pickle is a bool)
    np.savez(data, **arrays)
    n = next(iter(feeds.values())).shape[0]
    r = onnx_near.score(
        ROOT / CASES["torchscript_conv_bn_relu"]["model"], data=data, rows="all", batchnorm="batch", bn_batch=n
    )
    assert (r.batchnorm, r.bn_batch, r.batchnorms) == ("batch", n, 2)
    bns = [layer for layer in r.layers if layer.op == "BatchNormalization"]
    assert len(bns) == 2
    for layer in bns:
        assert layer.erank == pytest.approx(effective_rank(to_rows(want[layer.tensor], 1)), rel=1e-6)
    running = onnx_near.score(
        ROOT / CASES["torchscript_conv_bn_relu"]["model"], data=data, rows="all", batchnorm="running"
    )
    assert running.batchnorm == "running" and running.bn_batch is None
    assert running.score != pytest.approx(r.score, rel=1e-3)  # the statistics matter


def _bn_graph(
    shape: Sequence[int | str], opset: int, training_mode: int | None = None
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    g = Graph(opset=opset)
    x = g.input("x", shape)
    c = int(shape[1])
    attrs: dict[str, Any] = {"epsilon": 1e-3} if training_mode is None else {"epsilon": 1e-3, "training_mode": training_mode}
    rng = np.random.default_rng(1)
    y = g.op(
        "BatchNormalization",
        x,
        g.const(rng.uniform(0.5, 2, c)),
        g.const(rng.standard_normal(c)),
        g.const(rng.standard_normal(c)),
        g.const(rng.uniform(0.5, 2, c)),
        out="y",
        **attrs,
    )
    g.output(g.op("Relu", y, out="z"))
    params = {t.name: onnx.numpy_helper.to_array(t) for t in g.inits}
    return g.model(check=training_mode is None), params


@pytest.mark.parametrize(
    "shape", [[6, 5], [6, 5, 7], [6, 5, 4, 3], [6, 5, 2, 3, 2]], ids=["NC", "NCL", "NCHW", "NCDHW"]
)
@pytest.mark.parametrize("opset", [13, 18])
def test_pass_on_one_node_normalises_with_the_batch(shape: list[int], opset: int) -> None:
    """One BatchNormalization on (N, C) to (N, C, D, H, W), ReduceMean's axes as attribute
    (opset 13) and as input (18): per channel (x − mean)/√(var + ε)·scale + bias, the mean and
    biased variance over the batch and every position (numpy, float64); names kept, input untouched."""
    model, params = _bn_graph(shape, opset)
    before = model.SerializeToString()
    done = batch_statistics(model)
    assert model.SerializeToString() == before
    assert done.rewritten == ("y",) and [o.name for o in done.model.graph.output] == ["z"]
    onnx.checker.check_model(done.model)
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32) * 3 + 1
    got = _run(done.model, {"x": x}, ["y", "z"])
    axes = (0, *range(2, len(shape)))
    b = (1, -1) + (1,) * (len(shape) - 2)
    scale, bias = (params[n] for n in [t.name for t in model.graph.initializer][:2])
    x64 = x.astype(np.float64)
    want = (x64 - x64.mean(axes, keepdims=True)) / np.sqrt(x64.var(axes, keepdims=True) + 1e-3)
    want = want * scale.reshape(b) + bias.reshape(b)
    np.testing.assert_allclose(got["y"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["z"], np.maximum(want, 0), rtol=1e-5, atol=1e-5)


def test_pass_leaves_training_mode_nodes_and_models_without_batchnorm() -> None:
    """A node already in training mode is kept (and said why); a model without BatchNorm is returned as it is."""
    model, _ = _bn_graph([4, 3, 2, 2], 15, training_mode=1)
    done = batch_statistics(model)
    assert done.rewritten == () and "training mode" in done.kept[0] and done.model is model
    g = Graph()
    g.output(g.op("Relu", g.op("Gemm", g.input("x", ["N", 4]), g.weight(3, 4), g.weight(3), transB=1)))
    plain = g.model(check=False)
    assert batch_statistics(plain).model is plain


def test_running_statistics_leave_the_graph_as_it_is() -> None:
    """--batchnorm running (the default of score and vet): analyse keeps every BatchNormalization."""
    loaded = load_model(CNN)
    running, _, _ = analyse(loaded)
    batch, index, plan = analyse(loaded, batchnorm="batch")
    assert len(inference_batchnorms(GraphIndex(running))) == 2
    assert not inference_batchnorms(GraphIndex(batch))
    assert len(inference_batchnorms(index)) == 2  # the index is of the graph as the file has it
    assert sum(t.op == "BatchNormalization" for t in plan.taps) == 2  # BatchNorms are still taps


def test_every_forward_pass_holds_exactly_bn_batch_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    """With batch statistics every forward pass of a repetition holds --bn-batch samples (none
    partial, none padded), seeded: the same score twice; --rows all leaves out the partial batch and says so."""
    from onnx_near import run as run_module

    sizes: list[int] = []
    real_run, real_into = run_module.Runner.run, run_module.Runner.run_into

    def spy_run(self, feeds, outputs=None):  # type: ignore[no-untyped-def]
        sizes.append(int(feeds["input"].shape[0]))
        return real_run(self, feeds, outputs)

    def spy_into(self, feeds, into, outputs=(), xp=np):  # type: ignore[no-untyped-def]
        sizes.append(int(feeds["input"].shape[0]))
        return real_into(self, feeds, into, outputs, xp)

    monkeypatch.setattr(run_module.Runner, "run", spy_run)
    monkeypatch.setattr(run_module.Runner, "run_into", spy_into)
    data = ROOT / "models" / "cnn.inputs.npz"
    a = onnx_near.score(CNN, data=data, batchnorm="batch", bn_batch=12, repetitions=2, seed=4)
    assert set(sizes[2:]) == {12}  # after the two probe passes (the taps' shapes), whole batches only
    b = onnx_near.score(CNN, data=data, batchnorm="batch", bn_batch=12, repetitions=2, seed=4)
    assert a.scores == b.scores and a.bn_batch == 12
    sizes.clear()
    n = len(np.load(data)["input"])
    r = onnx_near.score(CNN, data=data, batchnorm="batch", bn_batch=12, rows="all")
    assert set(sizes[2:]) == {12}
    assert any("left out" in w for w in r.warnings) == (n % 12 != 0)


def test_impossible_batches_are_refused_in_one_sentence() -> None:
    """A memory limit that cannot hold one --bn-batch forward pass, a --batch-size that differs."""
    with pytest.raises(ConfigError, match="--bn-batch"):
        onnx_near.score(CNN, batchnorm="batch", bn_batch=4096, max_memory=64 << 20)
    with pytest.raises(ConfigError, match="--batch-size 8 and --bn-batch 16"):
        onnx_near.score(CNN, batchnorm="batch", bn_batch=16, batch_size=8)
    onnx_near.score(CNN, batchnorm="running", bn_batch=4096, max_memory=64 << 20)  # running: no such batch


def test_a_model_whose_graph_fixes_the_batch_uses_it(tmp_path: Path) -> None:
    """A static batch of 4 is the BatchNorms' batch, and the report says it is not --bn-batch."""
    m = onnx.load(CNN)
    for v in [*m.graph.input, *m.graph.output]:
        v.type.tensor_type.shape.dim[0].dim_value = 4
    path = save(m, tmp_path / "static.onnx")
    r = onnx_near.score(path, batchnorm="batch")
    assert r.bn_batch == 4 and any("fixes its batch at 4" in w for w in r.warnings)


def test_folded_batchnorm_is_said_once() -> None:
    """A conv net without BatchNorm scored with batch statistics gets one warning saying how to
    export with BatchNorm kept; "looks like" when a convolution has an all-zero bias."""
    r = onnx_near.score(FOLDED, batchnorm="batch")
    hints = [w for w in r.warnings if "TrainingMode.PRESERVE" in w]
    assert len(hints) == 1 and "do_constant_folding=False" in hints[0]
    assert not [w for w in onnx_near.score(FOLDED, batchnorm="running").warnings if "PRESERVE" in w]  # nothing to say
    assert not [w for w in onnx_near.score(CNN, batchnorm="batch").warnings if "PRESERVE" in w]
    g = Graph()
    x = g.input("x", ["N", 3, 6, 6])
    g.output(g.op("Relu", g.op("Conv", x, g.weight(4, 3, 3, 3), g.const(np.zeros(4)), pads=[1, 1, 1, 1])))
    hint = folded_batchnorm_hint(g.index())
    assert hint is not None and "looks like one an untrained BatchNorm was folded into" in hint


def test_command_defaults_follow_the_paper_except_vet(tmp_path: Path) -> None:
    """score, rank, activations, init and width use batch statistics by default, as the
    paper; vet running (the model as deployed); the JSON says which, with the batch."""
    assert onnx_near.ScoreConfig().batchnorm == "batch" and onnx_near.score(CNN).batchnorm == "batch"
    cli = CliRunner()
    out = cli.invoke(main, ["score", str(CNN), "--format", "json", "-q"])
    d = json.loads(out.output)
    assert (d["batchnorm"], d["bn_batch"], d["batchnorms"]) == ("batch", 64, 2)
    out = cli.invoke(main, ["score", str(CNN), "--format", "json", "-q", "--batchnorm", "batch", "--bn-batch", "16"])
    d = json.loads(out.output)
    assert (d["batchnorm"], d["bn_batch"]) == ("batch", 16)
    out = cli.invoke(main, ["score", str(CNN), "--format", "json", "-q", "--batchnorm", "running"])
    d = json.loads(out.output)
    assert (d["batchnorm"], d["bn_batch"], d["batchnorms"]) == ("running", None, 2)
    rank = {p.opts[0]: p.default for p in main.commands["rank"].params if p.opts[0] in ("--batchnorm", "--bn-batch")}
    assert rank == {"--batchnorm": "batch", "--bn-batch": 64}
    for command in ("score", "activations", "init", "width"):
        assert next(p.default for p in main.commands[command].params if p.opts[0] == "--batchnorm") == "batch"
    # vet fixes the running statistics (the model as deployed): it offers no --batchnorm to ignore
    assert not [p for p in main.commands["vet"].params if p.opts[0] in ("--batchnorm", "--bn-batch")]
    out = cli.invoke(main, ["vet", str(CNN), "--format", "json", "-q", "--trusted"])
    d = json.loads(out.output)
    assert (d["batchnorm"], d["bn_batch"], d["batchnorms"]) == ("running", None, 2)


def test_data_too_small_for_one_batch_is_refused_with_the_ways_out() -> None:
    """score's default is batch statistics over 64 samples per forward pass: the 32 samples
    of models/cnn.inputs.npz cannot fill one, which is said in one sentence with the three
    ways out; each of them then scores."""
    models = Path(__file__).resolve().parents[1] / "models"
    args = ["score", str(models / "cnn.onnx"), "--data", str(models / "cnn.inputs.npz"), "--trusted", "-q"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "32 samples cannot fill one forward pass of --bn-batch 64" in lines[0], lines
    assert "--bn-batch 32" in lines[0] and "--batchnorm running" in lines[0], lines
    for way in (["--bn-batch", "32"], ["--batchnorm", "running"]):
        assert CliRunner().invoke(main, [*args, *way]).exit_code == 0, way


@pytest.mark.parametrize("elem_type", [TensorProto.STRING, TensorProto.INT64])
def test_a_batchnorm_whose_input_is_not_float_is_left_to_onnxruntime(tmp_path: Path, elem_type: int) -> None:
    """Found by the fuzzing campaign on this round's code (seeds 205991, 208694: the model's
    input type mutated): the batch-statistics pass wrote the BatchNorm's epsilon in the input's
    element type, a string, and failed (exit 3).  A BatchNorm reading a non-float tensor is now
    left as it is, and the broken file is refused in one sentence."""
    g = Graph()
    x = g.input("x", ["N", 4])
    w = g.const(np.eye(4), "w")
    bn = g.op("BatchNormalization", x, *(g.const(np.full(4, v), f"bn{k}") for k, v in enumerate((1.0, 0.0, 0.0, 1.0))))
    g.output(g.op("Relu", g.op("Gemm", bn, w), out="y"), ["N", 4])
    m = g.model(infer=False)
    assert len(inference_batchnorms(GraphIndex(m))) == 1  # a float input: rewritten
    m.graph.input[0].type.tensor_type.elem_type = elem_type
    index = GraphIndex(m)
    assert inference_batchnorms(index) == []
    assert batch_statistics(m).model is m
    r = CliRunner().invoke(main, ["score", str(save(m, tmp_path / "m.onnx")), "--trusted", "-q"])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("onnx-near: error: "), r.stderr
