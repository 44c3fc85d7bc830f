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


def _package_imports() -> dict[str, set[str]]:
    """Per module of onnx_near/: the package's modules it imports, at any level of the file
    (module level, under TYPE_CHECKING, inside functions)."""
    import ast

    files = {}
    for p in (ROOT / "onnx_near").rglob("*.py"):
        parts = p.relative_to(ROOT).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph: dict[str, set[str]] = {m: set() for m in files}
    for m, p in files.items():
        package = m.split(".") if p.name == "__init__.py" else m.split(".")[:-1]
        for node in ast.walk(ast.parse(p.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            subs = {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in files}
            for t in subs if len(subs) == len(node.names) else {target, *subs}:
                if t in files and t != m:
                    graph[m].add(t)
    return graph


def test_no_import_circle_in_the_package() -> None:
    """Issue #16: no module reaches itself through imports, type-only and lazy ones included."""
    graph = _package_imports()
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                circles.append([*path[path.index(t) :], t])
            elif t not in state:
                visit(t, [*path, t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert len(graph) > 50 and not circles, circles


def test_no_module_over_450_lines() -> None:
    """Issue #16: modules stay small enough to read whole."""
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / "onnx_near").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 450
    }
    assert not long, long


def test_one_version() -> None:
    """The version a report and a results file record is the one the package is installed as."""
    import re

    from onnx_near.version import __version__

    declared = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), flags=re.M)
    assert declared is not None and declared.group(1) == __version__
