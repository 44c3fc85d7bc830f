"""The sandbox (issue #13, items 1–3 and 6): what a model computes stays under --max-memory,
--timeout stops loading and session creation too, a crash inside onnxruntime is one
sentence; data files are budgeted from their headers; the last hostile files of item 4.

The CLI runs in a subprocess: what reaches file descriptor 2, the exit code and the peak
resident set of the command and its children are what the user sees.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from graphs import memory_bomb, mlp, save
from onnx import TensorProto, helper, numpy_helper

import onnx_near

GIB = 1 << 30

# Runs the command given as its arguments and prints the largest resident set (KiB) of the
# processes it waited for: the CLI and the sandbox's child, reaped by the CLI.
_PEAK = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)"
)


def _cli(*args: str, timeout: float = 120) -> tuple[int, list[str], int, float]:
    """The real CLI in a subprocess: exit code, its stderr lines, peak resident set (bytes), seconds."""
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-c", _PEAK, sys.executable, "-m", "onnx_near.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = r.stderr.strip().splitlines()
    return r.returncode, lines[:-1], int(lines[-1]) * 1024, time.monotonic() - t0


def _one_sentence(lines: list[str], *says: str) -> None:
    assert len(lines) == 1 and lines[0].startswith("onnx-near: error: "), lines
    assert all(s in lines[0] for s in says) and "Traceback" not in lines[0], lines


@pytest.mark.parametrize("kind", ["Expand", "Tile", "ConstantOfShape"])
def test_a_tensor_the_model_computes_stays_under_max_memory(tmp_path: Path, kind: str) -> None:
    """Item 1: a 0.5 KB model whose non-tap node makes 3 GiB scored with exit 0 under
    --max-memory 256M, 3.3–6.5 GiB resident.  Now: one sentence, exit 2, under 1 GiB."""
    path = save(memory_bomb(kind), tmp_path / "bomb.onnx")
    assert path.stat().st_size < 512
    code, lines, peak, _ = _cli("score", str(path), "--max-memory", "256M")
    assert code == 2 and peak < GIB, (lines, peak)
    _one_sentence(lines, "--max-memory", kind, "3.00 GiB")


def _chain(n: int) -> onnx.ModelProto:
    """Neg and Relu, n nodes in a chain, listed last node first."""
    nodes, x = [], "x"
    for k in range(n):
        nodes.append(helper.make_node("Relu" if k % 2 else "Neg", [x], [f"t{k}"]))
        x = f"t{k}"
    g = helper.make_graph(
        nodes[::-1],
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 4])],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _slow_session(size: int = 2048, products: int = 60) -> onnx.ModelProto:
    """A 1 KB model whose session takes about half a minute to build: onnxruntime folds a
    chain of constant 2048² matrix products (of a ConstantOfShape) while it creates it."""
    fill = numpy_helper.from_array(np.full(1, 0.5, np.float32))
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["a0"], value=fill)]
    nodes += [helper.make_node("MatMul", [f"a{k}", "a0"], [f"a{k + 1}"]) for k in range(products)]
    nodes += [
        helper.make_node("ReduceMax", [f"a{products}"], ["s"], keepdims=0),
        helper.make_node("Gemm", ["x", "w"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Mul", ["r", "s"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([size, size], dtype=np.int64), "shape"),
        numpy_helper.from_array(np.eye(4, dtype=np.float32), "w"),
    ]
    g = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


# The CLI's own start (imports) lies before the deadline's clock, which starts with the score:
# this much is allowed on top of --timeout on a busy machine (the runs below took 43 s and
# 13–30 s before the sandbox).
START_UP = 6.0


def test_timeout_covers_loading(tmp_path: Path) -> None:
    """Item 2: a 100,000-node chain listed in reverse order ran 43 s under --timeout 5."""
    path = save(_chain(100_000), tmp_path / "chain.onnx")
    code, lines, _, seconds = _cli("score", str(path), "--timeout", "2")
    assert code == 2 and seconds < 2 + START_UP, (lines, seconds)
    _one_sentence(lines, "time limit", "--timeout")


def test_timeout_covers_session_creation(tmp_path: Path) -> None:
    """Item 2: session creation could not be interrupted (13 s under --timeout 3)."""
    path = save(_slow_session(), tmp_path / "slow.onnx")
    code, lines, _, seconds = _cli("score", str(path), "--timeout", "2")
    assert code == 2 and seconds < 2 + START_UP, (lines, seconds)
    _one_sentence(lines, "time limit", "'slow.onnx'")


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def test_a_crash_inside_the_child_is_one_sentence(tmp_path: Path) -> None:
    """A child killed by a signal (here SIGSEGV, sent while onnxruntime builds the session)
    is reported as onnxruntime's crash, exit 2; the interpreter that asked lives on."""
    path = save(_slow_session(), tmp_path / "slow.onnx")
    cli = subprocess.Popen(
        [sys.executable, "-m", "onnx_near.cli", "score", str(path)], stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not (kids := _children(cli.pid)) and cli.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert kids, "the CLI started no child"
        time.sleep(0.3)
        os.kill(kids[0], signal.SIGSEGV)
        _, err = cli.communicate(timeout=60)
    finally:
        cli.kill()
    assert cli.returncode == 2, err
    _one_sentence(err.strip().splitlines(), "onnxruntime crashed on 'slow.onnx' (signal 11, SIGSEGV)")


def test_the_api_sandbox_reports_crashes_errors_and_deadlines_and_goes_on(tmp_path: Path) -> None:
    """sandbox.run and a long-lived Sandbox: a crash, a NearError, a bug (its own type, the
    child's traceback as its cause) and a deadline each come back as an exception; the next
    call gets a fresh worker; the result equals the in-process one."""
    from onnx_near import sandbox
    from onnx_near.sandbox import CrashError, Limits, Sandbox

    model = save(mlp(), tmp_path / "m.onnx")
    with pytest.raises(CrashError, match=r"crashed on 'm.onnx' \(signal 11, SIGSEGV\)"):
        sandbox.run(partial(_kill_self, signal.SIGSEGV), Limits(), "'m.onnx'")
    with pytest.raises(KeyError) as bug:
        sandbox.run(lambda: dict[int, int]()[97], Limits())
    assert "in the sandboxed worker" in str(bug.value.__cause__)
    with pytest.raises(onnx_near.ModelLoadError, match="does not exist"):
        sandbox.run(lambda: onnx_near.score(tmp_path / "missing.onnx"), Limits())
    t0 = time.monotonic()
    with pytest.raises(onnx_near.RunError, match="time limit"):
        sandbox.run(lambda: time.sleep(30), Limits(timeout=0.3))
    assert time.monotonic() - t0 < 5
    with Sandbox(Limits(memory=256 << 20)) as box:  # calls after the first are pickled: no lambdas
        first = box.call(partial(onnx_near.score, model, seed=0))
        with pytest.raises(CrashError, match="killed"):
            box.call(partial(_kill_self, signal.SIGKILL))
        again = box.call(partial(onnx_near.score, model, seed=0))  # a fresh worker
    assert first.score == again.score == onnx_near.score(model, seed=0).score


def _kill_self(sig: int) -> None:
    os.kill(os.getpid(), sig)


def test_sandbox_score_is_the_scorer_engines_call(tmp_path: Path) -> None:
    """sandbox.score: onnx_near.score's arguments and result; a model that breaks a limit is
    an exception, and the same worker scores the next model."""
    from onnx_near import sandbox

    good, bomb = save(mlp(), tmp_path / "m.onnx"), save(memory_bomb("Expand"), tmp_path / "bomb.onnx")
    assert sandbox.score(good, seed=3).score == onnx_near.score(good, seed=3).score
    with pytest.raises(sandbox.MemoryLimitError, match=r"'bomb\.onnx' needs more memory"):
        sandbox.score(bomb, max_memory=256 << 20)
    assert sandbox.score(good, seed=3, max_memory=256 << 20).score == onnx_near.score(good, seed=3).score


def _crash_on_crash_onnx(model: Any, *args: Any, **kwargs: Any) -> Any:
    """onnx_near.score, except that a model named crash.onnx kills the process (a stand-in
    for a segmentation fault inside onnxruntime)."""
    if str(model).endswith("crash.onnx"):
        os.kill(os.getpid(), signal.SIGSEGV)
    return _real_score(model, *args, **kwargs)


_real_score = onnx_near.score


def test_score_each_finds_the_model_that_takes_the_worker_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One call for many models; when one of them crashes the worker, each is scored again
    on its own, and only that one gets the error."""
    from onnx_near import sandbox

    monkeypatch.setattr(sys.modules["onnx_near.score"], "score", _crash_on_crash_onnx)
    monkeypatch.setattr(sandbox, "_worker", None)  # a fresh worker, forked with the stand-in
    a, b = save(mlp(), tmp_path / "a.onnx"), save(mlp(hidden=16), tmp_path / "b.onnx")
    crash, missing = save(mlp(), tmp_path / "crash.onnx"), tmp_path / "missing.onnx"
    try:
        out = sandbox.score_each([a, crash, missing, b], seed=1)
    finally:
        sandbox._close_worker()
    assert [type(r).__name__ for r in out] == ["ScoreResult", "CrashError", "ModelLoadError", "ScoreResult"]
    assert "crashed on 'crash.onnx' (signal 11, SIGSEGV)" in str(out[1])
    assert isinstance(out[0], onnx_near.ScoreResult) and isinstance(out[3], onnx_near.ScoreResult)
    assert [out[0].score, out[3].score] == [_real_score(p, seed=1).score for p in (a, b)]


def test_trusted_runs_in_process_with_the_same_result(tmp_path: Path) -> None:
    """--trusted skips the sandbox; the report is the same."""
    from click.testing import CliRunner

    from onnx_near.cli import main

    path = str(save(mlp(), tmp_path / "m.onnx"))
    boxed = CliRunner().invoke(main, ["score", path, "--format", "json"])
    trusted = CliRunner().invoke(main, ["score", path, "--format", "json", "--trusted"])
    assert boxed.exit_code == trusted.exit_code == 0, boxed.stderr + trusted.stderr
    assert boxed.stdout == trusted.stdout


# --- data files: each array's declared size checked before it is read (item 6, item 4) -----


def _npy(shape: tuple[int, ...], dtype: str = "<f4", data: bytes = b"") -> bytes:
    """A .npy file's bytes: a header declaring ``shape``, then ``data``."""
    b = io.BytesIO()
    np.lib.format.write_array_header_1_0(b, {"descr": dtype, "fortran_order": False, "shape": shape})
    return b.getvalue() + data


def _npz(path: Path, members: dict[str, bytes], compress: bool) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name + ".npy", data)
    return path


@pytest.mark.parametrize("form", ["npy", "npz", "npz-compressed"])
def test_a_header_declaring_a_trillion_rows_is_truncated(tmp_path: Path, form: str) -> None:
    """Item 4: "MemoryError: Unable to allocate 21.8 TiB" from an .npz header of 10¹² rows."""
    from onnx_near.inputs import read_data

    header = _npy((10**12, 6), data=b"\0" * 64)
    if form == "npy":
        (tmp_path / "d.npy").write_bytes(header)
        path = tmp_path / "d.npy"
    else:
        path = _npz(tmp_path / "d.npz", {"x": header}, form == "npz-compressed")
    with pytest.raises(
        onnx_near.InputDataError, match=r"truncated: its header declares 1000000000000×6 float32 \(21.8 TiB\)"
    ):
        read_data(str(path), ["x"], limit=256 << 20)


def test_compressed_arrays_are_budgeted_before_they_are_inflated(tmp_path: Path) -> None:
    """Item 6: a 2 MB archive inflating to 2 GiB scored under --max-memory 256M (2.1 GiB
    resident).  The declared sizes of the compressed arrays are summed first."""
    x = np.zeros((3_000_000, 6), np.float32)  # 69 MiB, a few hundred KB compressed
    np.savez_compressed(tmp_path / "d.npz", x=x)
    model = save(mlp(), tmp_path / "m.onnx")
    code, lines, peak, _ = _cli("score", str(model), "--data", str(tmp_path / "d.npz"), "--max-memory", "64M")
    assert code == 2 and peak < 512 << 20, lines
    _one_sentence(lines, "would take 68.7 MiB once decompressed", "--max-memory")


def test_uncompressed_arrays_are_memory_mapped_not_budgeted(tmp_path: Path) -> None:
    """np.savez and .npy: read from disk batch by batch, so larger than the budget is fine;
    values (Fortran order too) as saved."""
    from onnx_near.inputs import read_data

    x = np.asfortranarray(np.arange(300_000 * 6, dtype=np.float32).reshape(300_000, 6))  # 6.9 MiB
    np.savez(tmp_path / "d.npz", x=x)
    np.save(tmp_path / "d.npy", x)
    for name in ("d.npz", "d.npy"):
        arrays = read_data(str(tmp_path / name), ["x"], limit=1 << 20)
        assert arrays is not None and isinstance(arrays["x"], np.memmap), name
        assert np.array_equal(arrays["x"], x)


def test_unreadable_data_is_one_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Objects that need pickle, a directory, and an archive that cannot be inflated in the
    memory there is (item 4): InputDataError, never MemoryError."""
    from onnx_near.inputs import read_data

    _npz(tmp_path / "o.npz", {"x": _npy((2,), "|O", b"\0" * 16)}, compress=True)
    with pytest.raises(onnx_near.InputDataError, match="cannot be read without pickle"):
        read_data(str(tmp_path / "o.npz"), ["x"])
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(onnx_near.InputDataError, match="not a regular file"):
        read_data(str(tmp_path / "dir.npz"), ["x"])
    np.savez_compressed(tmp_path / "d.npz", x=np.ones((4, 6), np.float32))

    def no_memory(*a: object, **k: object) -> None:
        raise MemoryError

    monkeypatch.setattr(np.lib.format, "read_array", no_memory)
    with pytest.raises(onnx_near.InputDataError, match="needs more memory to be read"):
        read_data(str(tmp_path / "d.npz"), ["x"])


# --- the last hostile files of item 4 ------------------------------------------------------


def test_an_input_of_element_type_97(tmp_path: Path) -> None:
    """Item 4: an input of an element type ONNX does not define gave KeyError (exit 1)."""
    m = mlp()
    m.graph.input[0].type.tensor_type.elem_type = 97
    code, lines, _, _ = _cli("score", str(save(m, tmp_path / "m.onnx")))
    assert code == 2
    _one_sentence(lines, "input 'x' has element type 97")


@pytest.mark.parametrize("where", ["graph name", "subgraph initializer"])
def test_names_that_are_not_utf8_anywhere(tmp_path: Path, where: str) -> None:
    """Item 4: a graph name (or a name in a subgraph) that is not UTF-8 ended in an internal
    error where a stage compared or copied it; every string of the file is checked at load."""
    m = mlp()
    if where == "graph name":
        m.graph.name = "MARKER"
    else:  # an If on a constant condition, its then-branch reading an initializer of its own
        then = helper.make_graph(
            [helper.make_node("Mul", ["y", "MARKER"], ["t"])],
            "then",
            [],
            [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(np.array(2.0, np.float32), "MARKER")],
        )
        other = helper.make_graph(
            [helper.make_node("Neg", ["y"], ["e"])],
            "else",
            [],
            [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)],
        )
        m.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
        m.graph.node.append(helper.make_node("If", ["cond"], ["z"], then_branch=then, else_branch=other))
        del m.graph.output[:]
        m.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    (tmp_path / "m.onnx").write_bytes(m.SerializeToString().replace(b"MARKER", b"MA\xff\xfeER"))
    code, lines, _, _ = _cli("score", str(tmp_path / "m.onnx"))
    assert code == 2
    _one_sentence(lines, "is not valid UTF-8", "graph.name" if where == "graph name" else ".g.")


def test_rank_scores_every_model_in_the_sandbox_one_bad_model_one_row(tmp_path: Path) -> None:
    """Issue #13 item 3: ``rank`` (local engine) scores each model in a limited child, so a
    memory bomb among healthy models is one error row under --max-memory and the others are
    scored (it was: the whole command ended, or the machine swapped)."""
    import json

    save(mlp(), tmp_path / "a.onnx")
    save(memory_bomb("Expand"), tmp_path / "b.onnx")
    save(mlp(hidden=12), tmp_path / "c.onnx")
    r = subprocess.run(
        [sys.executable, "-m", "onnx_near.cli", "rank", str(tmp_path), "--max-memory", "256M", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    rows = {Path(m["model"]).name: m for m in json.loads(r.stdout)["models"]}
    assert rows["b.onnx"]["error"] and "--max-memory" in rows["b.onnx"]["error"]
    assert rows["a.onnx"]["error"] is None and rows["c.onnx"]["error"] is None


def _untyped_axis(tmp_path: Path) -> list[str]:
    """A LayerNormalization whose axis attribute has no type (fuzzing seed 167646)."""
    m = mlp(act="Relu")
    ln = helper.make_node("LayerNormalization", ["y", "ln_s"], ["z"], name="ln")
    ln.attribute.append(onnx.AttributeProto(name="axis"))
    m.graph.node.append(ln)
    m.graph.initializer.append(numpy_helper.from_array(np.ones(3, np.float32), "ln_s"))
    m.graph.output[0].name = "z"
    return ["score", str(save(m, tmp_path / "m.onnx"))]


def _batchnorm_on_strings(tmp_path: Path) -> list[str]:
    """A BatchNormalization reading a string input (fuzzing seeds 205991, 208694)."""
    nodes = [
        helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["h"]),
        helper.make_node("Relu", ["h"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.full(4, f, np.float32), n) for n, f in zip("sbmv", (1.0, 0.0, 0.0, 1.0))]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.STRING, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    return ["score", str(save(m, tmp_path / "m.onnx"))]


ROUND_FIVE_ERRORS: dict[str, tuple[Callable[[Path], list[str]], tuple[str, ...]]] = {
    "too little data for a BatchNorm batch": (
        lambda _: ["score", "models/cnn.onnx", "--data", "models/cnn.inputs.npz"],
        ("cannot fill one forward pass of --bn-batch 64", "--bn-batch 32"),
    ),
    "a negative vet threshold": (
        lambda _: ["vet", "models/vet/healthy.onnx", "--max-gain", "-1"],
        ("--max-gain must be a finite number of at least 0",),
    ),
    "an untyped integer attribute": (_untyped_axis, ()),
    "a BatchNorm on strings": (_batchnorm_on_strings, ()),
}


@pytest.mark.parametrize("case", ROUND_FIVE_ERRORS)
def test_this_rounds_errors_are_one_sentence_on_file_descriptor_2(tmp_path: Path, case: str) -> None:
    """The refusals added this round, through the real CLI and its sandbox: one sentence and
    exit 2 on stderr as the operating system sees it (onnxruntime's own log included)."""
    make, says = ROUND_FIVE_ERRORS[case]
    cwd = os.getcwd()
    os.chdir(Path(__file__).resolve().parents[1])  # the shipped models' relative paths
    try:
        code, lines, _, _ = _cli(*make(tmp_path))
    finally:
        os.chdir(cwd)
    assert code == 2, lines
    _one_sentence(lines, *says)
