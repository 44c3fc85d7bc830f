"""Progress on stderr: shown on a terminal for a score that takes more than a moment,
never in a pipe or with --quiet (tested through a real pseudo-terminal)."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import onnx_near
from onnx_near import progress as progress_module
from onnx_near.progress import Progress

MODELS = Path(__file__).resolve().parents[1] / "models"

# Runs the CLI with the progress delay at zero, so that a small model shows its line.
SCRIPT = """
import sys
from onnx_near import progress
progress.DELAY = 0.0
progress.Progress.__init__.__defaults__ = (None, None, 0.0)
from onnx_near.cli import main
sys.argv = ["onnx-near", *sys.argv[1:]]
main()
"""


def _run_on_a_terminal(*args: str) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal; return (exit code, stdout, terminal text)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, *args], stdout=subprocess.PIPE, stderr=follower, stdin=subprocess.DEVNULL
    )
    os.close(follower)
    seen = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    out = proc.stdout.read().decode() if proc.stdout else ""
    code = proc.wait(timeout=60)
    os.close(leader)
    return code, out, seen.decode(errors="replace")


def test_progress_is_shown_on_a_terminal() -> None:
    """On a terminal: samples collected and matrices ranked, with counts; the result on stdout."""
    code, out, tty = _run_on_a_terminal("score", str(MODELS / "cnn.onnx"), "--format", "json", "--batchnorm", "running")
    assert code == 0 and '"score"' in out
    assert "samples 10/10" in tty and "matrices 7/7" in tty
    assert tty.rstrip().endswith("s")  # the line ends with the elapsed time, then a newline


def test_quiet_silences_progress_on_a_terminal() -> None:
    code, out, tty = _run_on_a_terminal("score", str(MODELS / "cnn.onnx"), "--quiet", "--format", "json")
    assert code == 0 and '"score"' in out
    assert tty.strip() == ""


def test_no_progress_in_a_pipe() -> None:
    """stderr to a pipe (a pipeline, a log): nothing but what the logs say."""
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, "score", str(MODELS / "cnn.onnx")], capture_output=True, text=True, check=True
    )
    assert "samples" not in r.stderr and "NEAR score" in r.stdout


def test_a_short_score_stays_silent_and_a_long_one_speaks() -> None:
    """The delay: nothing within it; past it, a line redrawn in place and ended by finish()."""
    quick = io.StringIO()
    onnx_near.score(MODELS / "cnn.onnx", progress=Progress(quick, enabled=True, delay=60.0))
    assert quick.getvalue() == ""
    slow = io.StringIO()
    onnx_near.score(MODELS / "mlp.onnx", repetitions=2, progress=Progress(slow, enabled=True, delay=0.0))
    text = slow.getvalue()
    assert text.startswith("\r\x1b[K") and text.endswith("\n")
    assert "repetition 2/2" in text and "matrices" in text
    assert progress_module.DELAY == 2.0
