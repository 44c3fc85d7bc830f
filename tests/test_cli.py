"""The CLI through click's runner: every format, and one clean sentence for bad input."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from graphs import add_only, mlp, save
from test_inputs import SR, vad_model

import onnx_near
from onnx_near.cli import main

MODELS = Path(__file__).resolve().parents[1] / "models"
CNN = str(MODELS / "cnn.onnx")


def run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, list(args))
    return r.exit_code, r.stdout, r.stderr


def test_table_output() -> None:
    """The table lists every tap and the total, and says higher is better."""
    code, out, _ = run("score", CNN)
    assert code == 0
    assert "NEAR score" in out and "higher is better" in out
    assert out.count("Relu") >= 2 and "BatchNormalization" in out


def test_json_output_has_the_documented_keys() -> None:
    """One JSON document with the keys every later tool relies on."""
    code, out, _ = run("score", CNN, "--format", "json", "--repetitions", "2", "--seed", "5")
    assert code == 0
    d = json.loads(out)
    for key in (
        "schema_version",
        "score",
        "score_std",
        "repetitions",
        "provider",
        "seed",
        "layers",
        "skipped",
        "params",
    ):
        assert key in d
    assert d["repetitions"] == 2 and d["seed"] == 5 and d["provider"] == "CPUExecutionProvider"
    for layer in d["layers"]:
        assert {"name", "op", "role", "tensor", "shape", "erank"} <= set(layer)
    assert d["score"] == pytest.approx(sum(l["erank"] for l in d["layers"]))


def test_csv_output() -> None:
    """One CSV row per tap."""
    code, out, _ = run("score", CNN, "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 7 and rows[0]["role"] == "pre"
    assert [float(r["erank"]) for r in rows] == [l.erank for l in onnx_near.score(CNN).layers]  # the API's, exactly


def test_cli_and_api_give_the_same_score() -> None:
    """The CLI is a thin layer over onnx_near.score."""
    code, out, _ = run("score", CNN, "--format", "json", "--seed", "2", "--rows", "12")
    api = onnx_near.score(CNN, seed=2, rows=12)
    assert code == 0 and json.loads(out)["score"] == api.score


def test_data_option_and_output_file(tmp_path: Path) -> None:
    """--data takes an .npz keyed by input name; --output writes the document to a file."""
    target = tmp_path / "r.json"
    code, out, _ = run(
        "score",
        CNN,
        "--data",
        str(MODELS / "cnn.inputs.npz"),
        "--rows",
        "all",
        "--batchnorm",
        "running",  # the golden is eval-mode
        "--format",
        "json",
        "-o",
        str(target),
    )
    assert code == 0 and out == ""
    golden = json.loads((MODELS / "cnn.golden.json").read_text())
    assert json.loads(target.read_text())["score"] == pytest.approx(golden["total"], rel=1e-4)


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_layers_dry_run(fmt: str) -> None:
    """`layers` lists the taps and their feature axes without running the model."""
    code, out, _ = run("layers", str(MODELS / "transformer.onnx"), "--format", fmt)
    assert code == 0
    if fmt == "json":
        d = json.loads(out)
        assert len(d["layers"]) == 20 and d["inputs"][0]["name"] == "input_ids"
        assert {l["axis"] for l in d["layers"]} == {-1}
    else:
        assert "GELU (erf)" in out


def _bad_inputs(tmp: Path) -> dict[str, list[str]]:
    text = tmp / "notes.onnx"
    text.write_text("this is not a model\n" * 20)
    truncated = tmp / "truncated.onnx"
    truncated.write_bytes((MODELS / "cnn.onnx").read_bytes()[:3000])
    nothing = save(add_only(), tmp / "add.onnx")
    dense = str(save(mlp(), tmp / "mlp.onnx"))
    np.savez(tmp / "wrong_name.npz", pixels=np.zeros((4, 6), np.float32))
    np.save(tmp / "wrong_shape.npy", np.zeros((4, 7), np.float32))
    np.save(tmp / "wrong_dtype.npy", np.zeros((16, 12), np.float64))
    np.save(tmp / "few.npy", np.zeros((3, 6), np.float32))
    nan = np.zeros((16, 6), np.float32)
    nan[2, 3] = np.nan
    np.save(tmp / "nan.npy", nan)
    vad = str(save(vad_model(), tmp / "vad.onnx"))
    return {
        "missing file": ["score", str(tmp / "nope.onnx")],
        "not onnx": ["score", str(text)],
        "truncated onnx": ["score", str(truncated)],
        "no taps": ["score", str(nothing)],
        "wrong input name": ["score", dense, "--data", str(tmp / "wrong_name.npz")],
        "wrong input shape": ["score", dense, "--data", str(tmp / "wrong_shape.npy")],
        "wrong input dtype": ["score", str(MODELS / "transformer.onnx"), "--data", str(tmp / "wrong_dtype.npy")],
        "too few rows": ["score", dense, "--data", str(tmp / "few.npy"), "--rows", "8"],
        "nan in data": ["score", dense, "--data", str(tmp / "nan.npy")],
        "bad rows value": ["score", dense, "--rows", "many"],
        "bad shape option": ["score", dense, "--shape", "x=Nxfoo"],
        "unknown shape input": ["score", dense, "--shape", "pixels=Nx6"],
        "missing data file": ["score", dense, "--data", str(tmp / "nope.npz")],
        "int input without a value": ["score", vad],
        "unknown --input": ["score", vad, "--input", "rate=16000"],
        "bad --input value": ["score", vad, "--input", "sr=loud"],
        "bad --input form": ["score", vad, "--input", "sr"],
        "bad --batch-axis": ["score", vad, "--input", "sr=16000", "--batch-axis", "state=first"],
        "unknown --batch-axis": ["score", vad, "--input", "sr=16000", "--batch-axis", "rate=0"],
        "batch axis out of range": ["score", vad, "--input", "sr=16000", "--batch-axis", "state=5"],
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing file",
        "not onnx",
        "truncated onnx",
        "no taps",
        "wrong input name",
        "wrong input shape",
        "wrong input dtype",
        "too few rows",
        "nan in data",
        "bad rows value",
        "bad shape option",
        "unknown shape input",
        "missing data file",
        "int input without a value",
        "unknown --input",
        "bad --input value",
        "bad --input form",
        "bad --batch-axis",
        "unknown --batch-axis",
        "batch axis out of range",
    ],
)
def test_bad_input_gives_one_sentence_and_no_traceback(tmp_path: Path, case: str) -> None:
    """Bad input exits with code 2, one line on stderr, nothing on stdout, no traceback."""
    args = _bad_inputs(tmp_path)[case]
    code, out, err = run(*args)
    assert code == 2, err
    assert out == ""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnx-near: error: "), err
    assert NAMED.get(case, "") in lines[0], err


# What the sentence must name, for the inputs that are not a batch (the option that fixes it).
NAMED = {
    "int input without a value": "input 'sr' (int64, shape ()) has no batch axis",
    "unknown --input": "--input names input 'rate'",
    "bad --input value": "--input expects NAME=VALUE",
    "bad --input form": "--input expects NAME=VALUE",
    "bad --batch-axis": "--batch-axis expects NAME=K",
    "unknown --batch-axis": "--batch-axis names input 'rate'",
    "batch axis out of range": "--batch-axis state=5 is outside the 3 dimensions",
}


def test_failed_run_writes_no_output_file(tmp_path: Path) -> None:
    """When scoring fails, --output is not created (nothing written half-way)."""
    target = tmp_path / "out.json"
    code, _, _ = run("score", str(tmp_path / "nope.onnx"), "-o", str(target))
    assert code == 2 and not target.exists()


def test_cuda_requested_without_a_gpu_says_so_in_one_line() -> None:
    """--device cuda where the session cannot get CUDA: one clear line, then the CPU runs it."""
    import onnxruntime as ort

    code, out, err = run("score", CNN, "--device", "cuda", "--format", "json")
    assert code == 0
    provider = json.loads(out)["provider"]
    if provider == "CUDAExecutionProvider":  # a machine with a working GPU: nothing to warn about
        assert err == ""
        return
    assert provider == "CPUExecutionProvider"
    assert err.strip().splitlines() == [
        "onnx-near: WARNING: CUDA was asked for but is not available to onnxruntime here; running on the CPU instead"
    ]
    assert "CPUExecutionProvider" in ort.get_available_providers()


def test_repeated_runs_give_identical_json() -> None:
    """The same model, data and seed give the same JSON document, byte for byte (timings only on request)."""
    args = ("score", CNN, "--format", "json", "--seed", "7", "--repetitions", "3")
    first, second = run(*args), run(*args)
    assert first[0] == 0 and first[1] == second[1]
    assert json.loads(run(*args, "--timings")[1])["timings_s"]["total"] > 0


@pytest.mark.parametrize(
    "args,match",
    [
        (["rank", "{tmp}"], "no .onnx model"),
        (["rank", CNN, "--jobs", "0"], "--jobs"),
        (["rank", CNN, "--accuracy", "{tmp}/none.csv"], "does not exist"),
        (["activations", CNN, "--candidates", "relu,swish9"], "'swish9'"),
        (["init", CNN, "--schemes", "he-magic"], "'he-magic'"),
        (["width", "--data", "{tmp}/x.npy"], "--inputs"),
        (["width", "--data", "{tmp}/x.npy", "--inputs", "4", "--outputs", "2", "--widths", "8,x"], "--widths"),
        (["width", "--data", "{tmp}/x.npy", "--model", "m.onnx"], "PATH:WIDTH"),
        (["score", CNN, "--max-memory", "lots"], "--max-memory"),
        (["score", CNN, "--batch-memory", "0"], "--batch-memory"),
    ],
)
def test_bad_options_of_every_command(tmp_path: Path, args: list[str], match: str) -> None:
    """Each command refuses bad options with one sentence and exit code 2."""
    np.save(tmp_path / "x.npy", np.zeros((20, 4), np.float32))
    code, out, err = run(*[a.format(tmp=tmp_path) for a in args])
    assert code == 2 and out == "" and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnx-near: error: ") and match in lines[0], err


def test_batch_memory_splits_taps_into_groups_with_the_same_score() -> None:
    """A batch budget smaller than one sample's tap outputs: the taps run in groups, same score."""
    code, plain, _ = run("score", CNN, "--format", "json")
    code_small, grouped, _ = run("score", CNN, "--format", "json", "--batch-memory", "1K")
    assert code == code_small == 0 and json.loads(grouped)["score"] == json.loads(plain)["score"]


def test_state_and_sample_rate_options_match_the_api(tmp_path: Path) -> None:
    """--data with a state batched on axis 1, --input for the sample rate: the API's score,
    and the JSON's warnings say how each input was fed."""
    path = str(save(vad_model(), tmp_path / "vad.onnx"))
    rng = np.random.default_rng(0)
    data: dict[str, Any] = {  # Any: savez's keywords are the arrays by name (its allow_pickle is a bool)
        "x": rng.standard_normal((10, 16)).astype(np.float32),
        "state": rng.standard_normal((2, 10, 8)).astype(np.float32),
    }
    np.savez(tmp_path / "d.npz", **data)
    code, out, err = run("score", path, "--data", str(tmp_path / "d.npz"), "--input", "sr=16000", "--format", "json")
    assert code == 0, err
    d = json.loads(out)
    assert d["score"] == onnx_near.score(path, data=data, input_values={"sr": SR}).score
    assert any("'sr'" in w and "16000" in w for w in d["warnings"]) and any("axis 1" in w for w in d["warnings"])
    code, out, err = run("score", path, "--data", str(tmp_path / "d.npz"), "--input", "sr=zeros", "--format", "json")
    assert code == 0
    assert [l["erank"] for l in json.loads(out)["layers"] if l["op"] == "Tanh"] == [0.0]  # zero rate: Tanh(0)


@pytest.mark.parametrize(
    "command",
    [
        ["score"],
        ["rank"],
        ["vet"],
        ["init", "--schemes", "xavier-uniform,kaiming-normal", "-r", "1"],
        ["activations", "--candidates", "relu,tanh", "-r", "1"],
        ["layers"],
    ],
)
def test_every_command_takes_batch_axis_and_input(tmp_path: Path, command: list[str]) -> None:
    """--batch-axis and --input reach the config of every command that scores (and the dry
    run's): a state whose batch symbol the graph does not share, and an int sample rate,
    score with them and are refused without them."""
    path = str(save(vad_model(state="state_batch"), tmp_path / "unshared.onnx"))
    code, out, err = run(command[0], path, *command[1:], "--batch-axis", "state=1", "--input", "sr=16000")
    assert code in (0, 1) and "error" not in err, err  # vet exits 1 when a check fails
    assert out.strip()
    code, _, err = run(command[0], path, *command[1:], "--input", "sr=16000")
    if command[0] not in ("rank", "layers"):  # rank lists a model it cannot score; layers runs nothing
        assert code == 2 and "--batch-axis state=1" in err, err
