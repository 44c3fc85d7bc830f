"""Does NEAR predict accuracy? The trained-model benchmark on scikit-learn's digits.

    python benchmarks/digits/run.py [--retrain] [--json out.json] [--plot scatter.png]

Uses the untrained ONNX models and the test accuracies that make_search_space.py wrote
(``--retrain`` runs it first: ~5 minutes on 2 cores) and prints, as Markdown tables:

1. the search space (64 MLPs and CNNs): Kendall's τ, Spearman's ρ and top-10 % precision of
   NEAR, parameter count and MACs against the trained accuracy (``onnx-near rank``, BatchNorm
   on batch statistics as its default);
1b. the proxies on the same space (``onnx-near rank --proxies``): NEAR with running and with
   batch statistics, MeCo (the CNNs: it needs feature maps), SWAP (the ReLU networks: it counts
   ReLU patterns) and their rank-average combinations, each beside NEAR and the baselines on
   the same models;
2. the activation study: ``onnx-near activations`` on the ReLU MLP, and the untrained
   exports of each variant, against the trained order (τ);
3. the initialisation study: ``onnx-near init`` against the trained order (τ);
4. the width study: ``onnx-near width`` on the digits, and where the trained accuracy stops
   improving.

Nothing is tuned here: the search space and the training recipe are fixed in
make_search_space.py, and the numbers are reported whatever they are.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

from onnx_near import ScoreConfig
from onnx_near.choose import rank_activations, rank_inits
from onnx_near.rank import correlate, rank_models, read_accuracies
from onnx_near.width import estimate_width

HERE = Path(__file__).resolve().parent
DATA = HERE / "digits_inputs.npy"
# make_search_space.py's scheme names → onnx-near's
SCHEMES = {
    "default": "pytorch-default",
    "kaiming_uniform": "kaiming-uniform",
    "kaiming_normal": "kaiming-normal",
    "xavier_uniform": "xavier-uniform",
    "xavier_normal": "xavier-normal",
    "orthogonal": "orthogonal",
    "normal": "normal",
    "uniform": "uniform",
}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def search_space(jobs: int) -> tuple[str, dict[str, object], list[tuple[float, float, str]]]:
    accuracies = read_accuracies(HERE / "accuracy.csv")
    result = rank_models([HERE / "models"], DATA, ScoreConfig(seed=0, batchnorm="batch"), accuracies, jobs=jobs)
    families = {r["model"]: r["family"] for r in _rows(HERE / "accuracy.csv")}
    lines = [
        f"Search space: {len(result.models)} untrained models, NEAR on {len(np.load(DATA))} digits "
        "(1 repetition, seed 0, BatchNorm on batch statistics of 64 digits)",
        "",
        "| predictor | Kendall τ | Spearman ρ | top-10 % precision |",
        "|---|---|---|---|",
    ]
    for name, c in result.correlation.items():
        lines.append(f"| {name} | {c.kendall_tau:.3f} | {c.spearman_rho:.3f} | {c.top_k_precision:.2f} |")
    points = [
        (m.score, m.accuracy or 0.0, families.get(str(Path(m.model).relative_to(HERE)), "?"))
        for m in result.models
        if m.error is None
    ]
    for fam in ("mlp", "cnn"):
        sub = [(s, a) for s, a, f in points if f == fam]
        tau = stats.kendalltau([s for s, _ in sub], [a for _, a in sub]).statistic
        rho = stats.spearmanr([s for s, _ in sub], [a for _, a in sub]).statistic
        lines.append(f"| near, {fam}s only ({len(sub)}) | {tau:.3f} | {rho:.3f} | |")
    doc = {
        "correlation": {k: vars(v) for k, v in result.correlation.items()},
        "models": [vars(m) for m in result.models],
    }
    return "\n".join(lines), doc, points


PROXIES = ("near", "meco", "swap", "near+meco", "near+swap", "meco+swap", "near+meco+swap")


def proxy_study(jobs: int) -> tuple[str, dict[str, object]]:
    """NEAR (running and batch statistics), MeCo, SWAP and their rank averages on the search
    space, each on the models it is defined for, beside NEAR and the baselines on those models."""
    accuracies = read_accuracies(HERE / "accuracy.csv")
    rows = {str((HERE / r["model"]).resolve()): r for r in _rows(HERE / "accuracy.csv")}
    by_stats = {}
    for stats_ in ("running", "batch"):
        cfg = ScoreConfig(seed=0, batchnorm=stats_)  # type: ignore[arg-type]
        by_stats[stats_] = rank_models([HERE / "models"], DATA, cfg, accuracies, jobs=jobs, proxies=PROXIES)
    subsets = {
        "all": lambda r: True,
        "cnn": lambda r: r["family"] == "cnn",
        "relu": lambda r: r["activation"] == "relu",
        "relu_cnn": lambda r: r["activation"] == "relu" and r["family"] == "cnn",
    }
    plan = [
        *((p, "all") for p in ("near", "params", "macs")),
        *((p, "cnn") for p in ("near", "meco", "near+meco", "params", "macs")),
        *((p, "relu") for p in ("near", "swap", "near+swap", "params", "macs")),
        *((p, "relu_cnn") for p in ("near", "meco", "swap", "meco+swap", "near+meco+swap", "params")),
    ]
    table: dict[str, dict[str, object]] = {}
    lines = [
        "Proxies on the search space (1 repetition, seed 0; MeCo and SWAP from one forward pass of 64 digits; "
        "combinations: rank averages over the models that have every part)",
        "",
        "| predictor | models | running: τ | ρ | top-10 % | batch: τ | ρ | top-10 % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, subset in plan:
        cells, doc = [], {}
        count = 0
        for stats_, result in by_stats.items():
            known = [
                m
                for m in result.models
                if m.error is None and m.accuracy is not None and subsets[subset](rows[str(Path(m.model).resolve())])
            ]
            value = {
                "near": lambda m: m.score,
                "params": lambda m: float(m.params),
                "macs": lambda m: float(m.macs),
            }.get(name, lambda m, name=name: m.proxies.get(name, float("nan")))
            v = np.array([value(m) for m in known], dtype=float)
            a = np.array([m.accuracy for m in known], dtype=float)
            ok = ~np.isnan(v)
            count = int(ok.sum())
            c = correlate(v[ok], a[ok], max(1, round(0.1 * count)))
            cells += [f"{c.kendall_tau:.3f}", f"{c.spearman_rho:.3f}", f"{c.top_k_precision:.2f}"]
            doc[stats_] = vars(c)
        what = {"all": "all", "cnn": "CNNs", "relu": "ReLU nets", "relu_cnn": "ReLU CNNs"}[subset]
        lines.append(f"| {name} | {count} ({what}) | " + " | ".join(cells) + " |")
        table[f"{name}/{subset}"] = {"models": count, **doc}
    return "\n".join(lines), table


def _tau_table(
    title: str, names: list[str], near: dict[str, float], near_std: dict[str, float], acc: dict[str, float]
) -> tuple[str, float]:
    order = sorted(names, key=lambda n: -near[n])
    tau = float(stats.kendalltau([near[n] for n in names], [acc[n] for n in names]).statistic)
    lines = [title, "", "| candidate | NEAR (mean ± std) | trained accuracy |", "|---|---|---|"]
    lines += [f"| {n} | {near[n]:.2f} ± {near_std[n]:.2f} | {acc[n]:.4f} |" for n in order]
    lines += ["", f"Kendall τ between NEAR and trained accuracy: {tau:.3f}"]
    return "\n".join(lines), tau


def activation_study(reps: int) -> tuple[str, dict[str, object]]:
    rows = _rows(HERE / "activations.csv")
    acc = {r["activation"]: float(r["accuracy_mean"]) for r in rows}
    ranking = rank_activations(
        HERE / "activations" / "mlp_relu.onnx", list(acc), DATA, ScoreConfig(repetitions=reps, seed=0)
    )
    near = {c.name: c.score for c in ranking.candidates}
    std = {c.name: c.score_std for c in ranking.candidates}
    text, tau = _tau_table(
        f"Activations: `onnx-near activations` on the ReLU MLP 64-128-128-10 ({reps} repetitions, weights re-drawn)",
        list(acc),
        near,
        std,
        acc,
    )
    return text, {"tau": tau, "near": near, "accuracy": acc}


def init_study(reps: int) -> tuple[str, dict[str, object]]:
    rows = _rows(HERE / "inits.csv")
    acc = {SCHEMES[r["scheme"]]: float(r["accuracy_mean"]) for r in rows}
    ranking = rank_inits(HERE / "inits" / "mlp_default.onnx", list(acc), DATA, ScoreConfig(repetitions=reps, seed=0))
    near = {c.name: c.score for c in ranking.candidates}
    std = {c.name: c.score_std for c in ranking.candidates}
    text, tau = _tau_table(
        f"Initialisations: `onnx-near init` on the ReLU MLP ({reps} repetitions)", list(acc), near, std, acc
    )
    return text, {"tau": tau, "near": near, "accuracy": acc}


def width_study() -> tuple[str, dict[str, object]]:
    rows = _rows(HERE / "widths.csv")
    widths = [int(r["width"]) for r in rows]
    acc = [float(r["accuracy_mean"]) for r in rows]
    x = np.load(DATA).reshape(len(np.load(DATA)), -1)
    e = estimate_width(x, 64, 10, widths, activation="silu")
    best = max(acc)
    plateau = next(w for w, a in zip(widths, acc) if a >= best - 0.005)
    lines = [
        "Width of the hidden layer of an MLP 64-W-10 (SiLU): `onnx-near width` against training",
        "",
        "| W | relative NEAR | fit | trained accuracy |",
        "|---|---|---|---|",
    ]
    lines += [f"| {w} | {r:.4f} | {float(e.fit(w)):.4f} | {a:.4f} |" for w, r, a in zip(widths, e.relative_scores, acc)]
    lines += [
        "",
        f"Fit f(s) = {e.fit.alpha:.3f} + {e.fit.beta:.3f}·s^{e.fit.gamma:.3f} (R² {e.fit.r2:.3f}); "
        f"estimated width (slope at 0.5 % of its initial value): {e.estimate:.0f} "
        f"(absolute-slope reading: {e.other:.0f}). Trained accuracy first comes within 0.5 points of its best "
        f"({best:.4f}) at W = {plateau}.",
    ]
    return "\n".join(lines), {"estimate": e.estimate, "other": e.other, "plateau": plateau, "fit": vars(e.fit)}


def scatter(points: list[tuple[float, float, str]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for fam, marker in (("mlp", "o"), ("cnn", "s")):
        sub = [(s, a) for s, a, f in points if f == fam]
        ax.scatter([s for s, _ in sub], [a for _, a in sub], marker=marker, label=f"{fam.upper()}s", alpha=0.75)
    ax.set_xlabel("NEAR score (untrained, higher is better)")
    ax.set_ylabel("test accuracy after training")
    ax.set_title("digits: NEAR before training vs accuracy after")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description="NEAR against trained accuracy on scikit-learn's digits.")
    ap.add_argument(
        "--retrain", action="store_true", help="rebuild and retrain the models first (make_search_space.py)"
    )
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--repetitions", type=int, default=5, help="repetitions of the activation and init studies")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON")
    ap.add_argument("--plot", type=Path, help="save the NEAR-vs-accuracy scatter plot")
    args = ap.parse_args()
    t0 = time.perf_counter()
    if args.retrain:
        subprocess.run([sys.executable, str(HERE / "make_search_space.py")], check=True)
    parts, doc = [], {}
    text, doc["search_space"], points = search_space(args.jobs)
    parts.append(text)
    text, doc["proxies"] = proxy_study(args.jobs)
    parts.append(text)
    text, doc["activations"] = activation_study(args.repetitions)
    parts.append(text)
    text, doc["inits"] = init_study(args.repetitions)
    parts.append(text)
    text, doc["width"] = width_study()
    parts.append(text)
    print("\n\n".join(parts))
    print(f"\n(benchmark ran in {time.perf_counter() - t0:.0f} s)")
    if args.plot:
        scatter(points, args.plot)
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1, default=float))


if __name__ == "__main__":
    main()
