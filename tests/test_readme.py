"""The README's pasted outputs are real: each example is run and compared with what it shows,
so that the front door cannot go stale (issue #16)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _block_after(marker: str) -> str:
    """The first fenced block after ``marker``, without a leading ``$ command`` line."""
    start = README.index("```", README.index(marker)) + 3
    text = README[README.index("\n", start) + 1 : README.index("```", start)]
    lines = text.rstrip("\n").split("\n")
    return "\n".join(lines[1:] if lines[0].startswith("$ ") else lines)


def _cli(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "onnx_near.cli", *args], capture_output=True, text=True, cwd=ROOT)
    return r.stdout.rstrip("\n")


@pytest.mark.parametrize(
    "marker,command",
    [
        ("## The main job", ("score", "models/cnn.onnx")),
        ("## Vetting a model before it ships", ("vet", "models/vet/zeroed.onnx", "--data", "models/vet/inputs.npy")),
    ],
)
def test_readme_output_is_what_the_command_prints(marker: str, command: tuple[str, ...]) -> None:
    assert _cli(*command) == _block_after(marker)


def test_readme_is_a_front_door() -> None:
    """At most 16 KB, the two set-up commands first, and every docs/ page it links exists."""
    import re

    assert len(README.encode()) <= 16 * 1024
    first = README.split("```", 2)[1]
    assert "onnx-near score models/cnn.onnx" in first and "python -m pytest -q" in first
    for link in re.findall(r"\]\((docs/[^)#]+)\)", README):
        assert (ROOT / link).exists(), link


def test_readme_python_examples_run() -> None:
    """The README's Python blocks, in order, as one script run from the repository root."""
    import re

    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert len(blocks) >= 2
    r = subprocess.run(
        [sys.executable, "-c", "\n".join(blocks)], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
