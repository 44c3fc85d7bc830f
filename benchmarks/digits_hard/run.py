"""NEAR (running and batch BatchNorm statistics), MeCo, SWAP, near+swap, params and MACs on digits_hard.

    python benchmarks/digits_hard/run.py [--jobs 1] [--json out.json]

Scores the untrained ONNX models that make_search_space.py wrote with the package's own
``onnx-near rank`` (one run per BatchNorm reading)::

    onnx-near rank benchmarks/digits_hard/models --data benchmarks/digits_hard/inputs.npy
        --accuracy benchmarks/digits_hard/accuracy.csv --proxies near,meco,swap,near+swap
        --batchnorm running|batch --seed 0 --format json

and prints one Markdown table: Kendall's τ, Spearman's ρ and top-10 % precision (how many of
the best 10 % by accuracy the predictor puts in its own best 10 %) of each predictor against
the trained accuracy — on all models, on the ReLU networks, the only ones SWAP (and so
near+swap) is defined for, and on the networks with BatchNorm, the only ones whose scores the
statistics change.  Nothing is tuned: every option is onnx-near's default but the
statistics, and the numbers are reported whatever they are.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from onnx_near.rank import correlate

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PROXIES = "near,meco,swap,near+swap"
PLAN = (  # (predictor, subset)
    ("near", "all"),
    ("meco", "all"),
    ("params", "all"),
    ("macs", "all"),
    ("near", "relu"),
    ("meco", "relu"),
    ("swap", "relu"),
    ("near+swap", "relu"),
    ("params", "relu"),
    ("macs", "relu"),
    ("near", "bn"),
    ("params", "bn"),
)


def rank(stats: str, jobs: int) -> tuple[list[str], dict]:
    """``onnx-near rank`` with these BatchNorm statistics: the command and its JSON document."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rank.json"
        command = [
            sys.executable,
            "-m",
            "onnx_near.cli",
            "rank",
            str((HERE / "models").relative_to(ROOT)),
            "--data",
            str((HERE / "inputs.npy").relative_to(ROOT)),
            "--accuracy",
            str((HERE / "accuracy.csv").relative_to(ROOT)),
            "--proxies",
            PROXIES,
            "--batchnorm",
            stats,
            "--seed",
            "0",
            "--jobs",
            str(jobs),
            "--format",
            "json",
            "-q",
            "-o",
            str(out),
        ]
        subprocess.run(command, check=True, cwd=ROOT)
        return command, json.loads(out.read_text())


def value(m: dict, predictor: str) -> float:
    if predictor == "near":
        return float(m["score"])
    if predictor in ("params", "macs"):
        return float(m[predictor])
    v = m["proxies"].get(predictor)
    return float("nan") if v is None else float(v)


def table(docs: dict[str, dict]) -> tuple[str, dict]:
    with (HERE / "accuracy.csv").open(newline="") as f:
        rows = {Path(r["model"]).name: r for r in csv.DictReader(f)}
    subsets = {
        "all": lambda r: True,
        "relu": lambda r: r["activation"] == "relu",
        "bn": lambda r: r["batchnorm"] == "1",
    }
    n_relu = sum(r["activation"] == "relu" for r in rows.values())
    lines = [
        f"digits_hard: {len(rows)} untrained CNNs ({n_relu} with ReLU), 1 repetition, seed 0, 512 scoring images; "
        "MeCo and SWAP from one forward pass of 64 images; near+swap: rank average",
        "",
        "| predictor | models | running: τ | ρ | top-10 % | batch: τ | ρ | top-10 % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    out: dict[str, dict] = {}
    for predictor, subset in PLAN:
        cells: list[str] = []
        entry: dict[str, object] = {}
        count = 0
        for stats, doc in docs.items():
            known = [
                m
                for m in doc["models"]
                if m.get("error") is None
                and m.get("accuracy") is not None
                and subsets[subset](rows[Path(m["model"]).name])
            ]
            v = np.array([value(m, predictor) for m in known])
            a = np.array([float(m["accuracy"]) for m in known])
            ok = ~np.isnan(v)
            count = int(ok.sum())
            k = max(1, round(0.1 * count))
            c = correlate(v[ok], a[ok], k)
            cells += [f"{c.kendall_tau:.3f}", f"{c.spearman_rho:.3f}", f"{c.top_k_precision * k:.0f}/{k}"]
            entry[stats] = {"kendall_tau": c.kendall_tau, "spearman_rho": c.spearman_rho, "top_k": c.top_k_precision}
        what = {"all": "all", "relu": "ReLU nets", "bn": "with BatchNorm"}[subset]
        lines.append(f"| {predictor} | {count} ({what}) | " + " | ".join(cells) + " |")
        out[f"{predictor}/{subset}"] = {"models": count, **entry}
    failed = sorted({Path(m["model"]).name for d in docs.values() for m in d["models"] if m.get("error")})
    if failed:
        lines += ["", f"not scored: {', '.join(failed)}"]
    return "\n".join(lines), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=1, help="models scored in parallel (onnx-near rank --jobs)")
    ap.add_argument("--json", type=Path, help="also write the rank documents and the table as JSON")
    args = ap.parse_args()
    t0 = time.perf_counter()
    docs, commands = {}, {}
    for stats in ("running", "batch"):
        commands[stats], docs[stats] = rank(stats, args.jobs)
        print("$ onnx-near " + " ".join(commands[stats][3:]), file=sys.stderr)
    text, figures = table(docs)
    print(text)
    print(f"\n(scored twice in {time.perf_counter() - t0:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({"table": figures, "rank": docs}, indent=1, default=float))


if __name__ == "__main__":
    main()
