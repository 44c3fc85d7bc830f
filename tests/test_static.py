"""Static checks run with the tests: the package and the tests are fully typed (mypy --strict)
and lint-clean (ruff)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_mypy_strict() -> None:
    """mypy --strict (configured in pyproject.toml) finds no issue in onnx_near/."""
    r = _run("mypy")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_tests() -> None:
    """The tests are typed too: mypy --strict, and the few checks more that pyproject.toml
    asks of them (unreachable code, redundant expressions, ignores without a code…), finds
    no issue in tests/."""
    r = _run("mypy", "tests")
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff() -> None:
    """ruff finds no lint issue in the package, tests, benchmarks and model scripts."""
    r = _run("ruff", "check", "onnx_near", "tests", "benchmarks", "models")
    assert r.returncode == 0, r.stdout + r.stderr
