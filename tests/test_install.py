"""A doubled or half-removed onnxruntime is found when the command line starts, and said in one sentence."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

from onnx_near.install import onnxruntime_problem

MODEL = str(Path(__file__).resolve().parents[1] / "models" / "mlp.onnx")


def test_this_environment_is_whole() -> None:
    """The environment the tests run in has one onnxruntime with everything onnx-near uses."""
    assert onnxruntime_problem() is None


def test_two_builds_installed() -> None:
    """onnxruntime and onnxruntime-gpu side by side: uninstall both, reinstall one."""
    msg = onnxruntime_problem(["onnxruntime 1.20.0", "onnxruntime-gpu 1.31.1"])
    assert msg is not None and "installed twice (onnxruntime 1.20.0 and onnxruntime-gpu 1.31.1)" in msg
    assert "pip uninstall -y onnxruntime onnxruntime-gpu, then pip install onnxruntime-gpu" in msg


def test_half_removed_folder() -> None:
    """A folder left by removing one of two builds imports, but has no InferenceSession."""
    msg = onnxruntime_problem(["onnxruntime-gpu 1.31.1"], lambda: types.ModuleType("onnxruntime"))
    assert msg is not None and "has no InferenceSession" in msg and "pip uninstall -y onnxruntime-gpu" in msg

    def fail() -> types.ModuleType:
        raise ImportError("libonnxruntime.so: cannot open shared object file")

    msg = onnxruntime_problem([], fail)
    assert msg is not None and "cannot be imported (ImportError: libonnxruntime.so" in msg


def _cli_with(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "onnx_near.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_cli_says_it_at_start_up(tmp_path: Path) -> None:
    """`onnx-near score` over a broken onnxruntime folder (first on the path: a package with
    nothing in it, as a half-removed install leaves) exits 2 with the one sentence."""
    (tmp_path / "onnxruntime").mkdir()
    (tmp_path / "onnxruntime" / "__init__.py").write_text("")
    r = _cli_with(tmp_path, "score", MODEL)
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert r.stderr.startswith("onnx-near: error: the installed onnxruntime is broken") and r.stderr.count("\n") == 1


def test_cli_says_two_builds_at_start_up(tmp_path: Path) -> None:
    """A second build's metadata beside this one's (pip install onnx-near next to onnxruntime): exit 2."""
    info = tmp_path / "onnxruntime-1.20.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: onnxruntime\nVersion: 1.20.0\n")
    r = _cli_with(tmp_path, "layers", MODEL)
    assert r.returncode == 2 and "onnxruntime is installed twice (onnxruntime 1.20.0 and onnxruntime-gpu" in r.stderr
