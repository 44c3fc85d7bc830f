"""Calibrate `onnx-near vet` on the trained corpus of models/vet_calibration (issue #12 item 3).

Run from the repository root in the project's environment (no torch needed)::

    python benchmarks/vet_calibration.py [--threads 1] [--no-inputs]

The corpus (``models/make_vet_calibration.py``): four small classifiers trained on
scikit-learn's digits (``healthy``) and copies of them with one injected fault each; its
``manifest.json`` names each fault's layer (ONNX node) and the tensor onnx-near taps for it.
Every model is vetted with the public API the CLI calls (:func:`onnx_near.vet.vet`, default
checks) three ways: on synthetic inputs (no data: what ``onnx-near vet MODEL`` does), on the
held-out digits (``--data digits.npy``), and on the digits against the healthy model as
``--baseline``.

**Caught at its layer** (the rule used throughout): the fault's tap has a finding, or — when
its own output looks sound (weights scaled before a Tanh, a bias before a ReLU) — the first
tap downstream of it (the next tap in tap order whose tensor is reachable from the fault's
tensor in the graph) has one.  Findings on taps *downstream* of the fault are its
consequences (NaN spreads); findings on any other tap, and every finding on a healthy model,
are **false alarms**.  Targets (issue #12): no finding on any healthy model, every fault
caught at its layer.

Then, on every model, the same vet with synthetic inputs of several kinds passed as data
(all (256, 1, 16, 16) float32, seeded): ``white`` N(0, 1) (what onnx-near draws today),
``smooth`` (N(0, 1) at a quarter of the resolution, upsampled bilinearly, rescaled to unit
variance: image-like spatial correlation), ``normalised`` (uniform [0, 1] pixels normalised
per channel with ImageNet's mean and std, as a preprocessing pipeline would feed a random
image), ``uniform`` (uniform [0, 1], unnormalised); the held-out digits are the reference.
For each kind: false alarms on the healthy models, faults caught, and how far the rank
ratios on the healthy models sit from those on the digits (mean |log(erank / erank on
digits)| over taps).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnx_near.config import ScoreConfig
from onnx_near.vet import VetResult, vet

CORPUS = Path(__file__).resolve().parents[1] / "models" / "vet_calibration"
N_SAMPLES = 256


@dataclass(frozen=True)
class Flag:
    """One rule that fired on a tap (a problem) or was noted there (a note)."""

    index: int
    layer: str
    op: str
    tensor: str
    rule: str
    value: float | None
    threshold: float | None
    message: str
    head: bool

    def short(self) -> str:
        v = "" if self.value is None else f" {self.value:.3g}"
        t = "" if self.threshold is None else f" vs {self.threshold:.3g}"
        return f"#{self.index} {self.layer} ({self.op}{', head' if self.head else ''}): {self.rule}{v}{t}"


def _flag(v: Any, p: Any) -> Flag:
    """A problem or note of a layer verdict, as a Flag (vet's Finding objects, or older plain strings)."""
    rule = getattr(p, "rule", None) or str(p).split(":", 1)[0]
    message = getattr(p, "message", None) or str(p).split(": ", 1)[-1]
    return Flag(
        v.index,
        v.name,
        v.op,
        v.tensor,
        rule,
        getattr(p, "value", None),
        getattr(p, "threshold", None),
        message,
        bool(getattr(v, "head", False)),
    )


def problems(r: VetResult) -> list[Flag]:
    return [_flag(v, p) for v in r.layers for p in v.problems]


def notes(r: VetResult) -> list[Flag]:
    return [_flag(v, p) for v in r.layers for p in getattr(v, "notes", ())]


def downstream(model: onnx.ModelProto, tensor: str) -> set[str]:
    """Every tensor computed from ``tensor`` (itself included)."""
    reach = {tensor}
    for n in model.graph.node:  # nodes are in topological order
        if any(i in reach for i in n.input):
            reach.update(n.output)
    return reach


@dataclass(frozen=True)
class Judged:
    """One vet of one corpus file against its manifest entry."""

    file: str
    kind: str
    result: VetResult
    fault_index: int | None  # the tap index of the fault's tensor
    caught: bool | None  # None for a healthy model
    first: Flag | None  # the finding that decides ``caught``
    false_alarms: list[Flag]
    consequences: list[Flag]


def judge(file: str, entry: dict[str, Any], r: VetResult) -> Judged:
    flags = problems(r)
    if entry["kind"] == "healthy":
        return Judged(file, "healthy", r, None, None, flags[0] if flags else None, flags, [])
    tensor = entry["tensor"]
    taps = [v.tensor for v in r.layers]
    if tensor not in taps:
        raise SystemExit(f"{file}: the manifest's tensor {tensor!r} is not a tap; taps: {taps}")
    k = taps.index(tensor)
    down = downstream(onnx.load(str(CORPUS / file), load_external_data=False), tensor)
    after = [v.index for v in r.layers if v.index > k and v.tensor in down]
    at = {k} if any(f.index == k for f in flags) else ({after[0]} if after else set())
    first = next((f for f in flags if f.index in at), None)
    return Judged(
        file,
        entry["kind"],
        r,
        k,
        first is not None,
        first,
        [f for f in flags if f.tensor not in down],
        [f for f in flags if f.tensor in down],
    )


def vet_all(manifest: dict[str, Any], data: Any, cfg: ScoreConfig, baseline: bool = False) -> list[Judged]:
    """Vet every model of ``manifest`` on ``data`` (None: synthetic), against its healthy model
    when ``baseline``."""
    out = []
    for file, entry in manifest["models"].items():
        base = CORPUS / f"{entry['model']}.onnx" if baseline and entry["kind"] != "healthy" else None
        r = vet(CORPUS / file, data, cfg, baseline=base)
        out.append(judge(file, entry, r))
    return out


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def report(title: str, judged: list[Judged], verbose: bool = True) -> dict[str, float]:
    """Print the per-model table of one way of vetting and return its rates."""
    rows = []
    for j in judged:
        flags = problems(j.result)
        if j.kind == "healthy":
            caught = ""
        else:
            caught = "yes" if j.caught else "NO"
            if j.first is not None:
                caught += f" (#{j.first.index} {j.first.rule})"
        rows.append(
            [
                j.file,
                j.kind,
                "" if j.fault_index is None else f"#{j.fault_index}",
                "passed" if j.result.passed else "FAILED",
                str(len(flags)),
                caught,
                "; ".join(f.short() for f in j.false_alarms) or "-",
            ]
        )
    print(f"\n## {title}\n")
    print(table(rows, ["file", "kind", "fault tap", "verdict", "findings", "caught at layer", "false alarms"]))
    healthy = [j for j in judged if j.kind == "healthy"]
    faulty = [j for j in judged if j.kind != "healthy"]
    rates = {
        "healthy_false_alarm_rate": sum(bool(j.false_alarms) for j in healthy) / len(healthy),
        "healthy_false_alarms": float(sum(len(j.false_alarms) for j in healthy)),
        "healthy_taps": float(sum(len(j.result.layers) for j in healthy)),
        "detection_rate": sum(bool(j.caught) for j in faulty) / len(faulty),
        "detected_anywhere": sum(not j.result.passed for j in faulty) / len(faulty),
        "faulty_false_alarms": float(sum(len(j.false_alarms) for j in faulty)),
    }
    print(
        f"\nhealthy models with a false alarm: {rates['healthy_false_alarm_rate']:.0%} of {len(healthy)} "
        f"({rates['healthy_false_alarms']:.0f} findings on {rates['healthy_taps']:.0f} taps); "
        f"faults caught at their layer: {rates['detection_rate']:.0%} of {len(faulty)} "
        f"(failed vet at all: {rates['detected_anywhere']:.0%}); "
        f"false alarms on the faulty copies (not downstream of the fault): {rates['faulty_false_alarms']:.0f}"
    )
    if verbose:
        fired = [(j.file, f) for j in healthy for f in j.false_alarms]
        if fired:
            print("\nrules firing on healthy models:")
            for file, f in fired:
                print(f"  {file} {f.short()}: {f.message}")
        noted = [(j.file, f) for j in healthy for f in notes(j.result)]
        if noted:
            print("\nnotes on healthy models (not failures):")
            for file, f in noted:
                print(f"  {file} {f.short()}: {f.message}")
        missed = [j for j in faulty if not j.caught]
        if missed:
            print("\nfaults not caught at their layer (the fault's tap and the next one downstream):")
            for j in missed:
                k = j.fault_index or 0
                down = downstream(onnx.load(str(CORPUS / j.file), load_external_data=False), j.result.layers[k].tensor)
                nxt = [v for v in j.result.layers if v.index > k and v.tensor in down][:1]
                for v in [j.result.layers[k], *nxt]:
                    base = "" if v.baseline_erank is None else f" baseline {v.baseline_erank:.3f}"
                    feed = getattr(v, "feed_erank", None)
                    feed_text = "" if feed is None else f" feed erank {feed:.3f}"
                    sat = "" if v.saturation is None else f" saturation {v.saturation:.0%}"
                    print(
                        f"  {j.file} #{v.index} {v.name} ({v.op}): erank {v.erank:.3f} of {v.width} "
                        f"(ratio {v.rank_ratio:.3f}){feed_text}{sat}{base}"
                        + (
                            f"; later: {j.consequences[0].short()}"
                            if j.consequences and v is j.result.layers[k]
                            else ""
                        )
                    )
    return rates


def _tensors(path: Path, names: list[str], x: np.ndarray) -> list[np.ndarray]:
    """The named tensors of the model at ``path`` on ``x`` (onnxruntime, CPU, one thread)."""
    import onnxruntime as ort

    model = onnx.load(str(path))
    del model.graph.output[:]
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return list(sess.run(None, {sess.get_inputs()[0].name: x}))


def _rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(a.astype(np.float64)))))


def missed_diagnostics(manifest: dict[str, Any], judged: list[Judged], digits: np.ndarray) -> None:
    """For each fault vet did not catch: how much it changes the faulty tensor and the output."""
    missed = [j for j in judged if j.kind != "healthy" and not j.caught]
    if not missed:
        return
    rows = []
    for j in missed:
        e = manifest["models"][j.file]
        healthy = CORPUS / f"{e['model']}.onnx"
        out = onnx.load(str(healthy), load_external_data=False).graph.output[0].name
        th, yh = _tensors(healthy, [e["tensor"], out], digits)
        tf, yf = _tensors(CORPUS / j.file, [e["tensor"], out], digits)
        rows.append(
            [
                j.file,
                e["tensor"],
                f"{_rms(tf) / _rms(th):.3g}",
                f"{float(np.abs(tf).max()):.3g} / {float(np.abs(th).max()):.3g}",
                f"{np.linalg.norm(tf - th) / np.linalg.norm(th):.3g}",
                f"{np.linalg.norm(yf - yh) / np.linalg.norm(yh):.3g}",
                f"{float((yf.argmax(1) == yh.argmax(1)).mean()):.0%}",
            ]
        )
    print("\n## What the missed faults change, on the digits (onnxruntime)\n")
    print(
        table(
            rows,
            [
                "file",
                "fault tensor",
                "RMS faulty/healthy",
                "max|x| faulty / healthy",
                "rel. change",
                "output rel. change",
                "same prediction",
            ],
        )
    )


def signals(judged: list[Judged], digits: np.ndarray) -> None:
    """Two signals the rank does not give, per tap on the digits: the share of its channels that
    are constant over the rows (std ≤ 1e-6 of the tap's RMS: a zeroed channel reads only its
    bias), and its RMS gain over the tensor that feeds it (vet's ``feed``, where measured).
    Printed: the extremes over each healthy model's taps, and the values at each fault's tap."""

    def per_tap(j: Judged) -> list[tuple[Any, float, float | None]]:
        layers = j.result.layers
        feeds = [getattr(v, "feed", None) for v in layers]
        names = list(dict.fromkeys([v.tensor for v in layers] + [f for f in feeds if f]))
        values = dict(zip(names, _tensors(CORPUS / j.file, names, digits)))
        out = []
        for v, s, feed in zip(layers, j.result.report.layers, feeds):
            a = np.moveaxis(values[v.tensor].astype(np.float64), s.axis, -1)
            a = a.reshape(-1, a.shape[-1])
            rms = float(np.sqrt(np.mean(a * a))) if np.isfinite(a).all() else math.nan
            const = float((a.std(0) <= 1e-6 * rms).mean()) if rms > 0 else (1.0 if rms == 0 else math.nan)
            gain = None
            if feed:
                b = values[feed].astype(np.float64)
                fr = float(np.sqrt(np.mean(b * b))) if np.isfinite(b).all() else math.nan
                gain = rms / fr if fr > 0 else math.nan
            out.append((v, const, gain))
        return out

    print("\n## Constant channels and RMS gain over the feed, on the digits (onnxruntime)\n")
    rows = []
    for j in judged:
        taps = per_tap(j)
        if j.kind == "healthy":
            pre = max((t for t in taps if t[0].role != "post"), key=lambda t: t[1])
            post = max((t for t in taps if t[0].role == "post"), key=lambda t: t[1], default=None)
            gains = [t for t in taps if t[2] is not None and math.isfinite(t[2])]
            hi = max(gains, key=lambda t: t[2] or 0.0, default=None)
            lo = min(gains, key=lambda t: t[2] or 0.0, default=None)
            rows.append(
                [
                    j.file,
                    "max over taps",
                    f"pre {pre[1]:.0%} (#{pre[0].index} {pre[0].name})"
                    + ("" if post is None else f", post {post[1]:.0%} (#{post[0].index} {post[0].name})"),
                    "-"
                    if hi is None
                    else f"max {hi[2]:.3g} (#{hi[0].index} {hi[0].name}), min {lo[2]:.3g} (#{lo[0].index} {lo[0].name})",  # type: ignore[index]
                ]
            )
        else:
            v, const, gain = taps[j.fault_index or 0]
            rows.append(
                [
                    j.file,
                    f"fault tap #{v.index} {v.name}",
                    f"{const:.0%}",
                    "-" if gain is None else f"{gain:.3g}",
                ]
            )
    print(table(rows, ["file", "where", "constant channels", "RMS gain over the feed"]))


def orientation(manifest: dict[str, Any], digits: np.ndarray) -> None:
    """A candidate signal for a transposed square weight, which leaves every erank as it was:
    ``||X W|| / ||X Wᵀ||`` for each square Gemm/MatMul weight W as the graph applies it, on the
    layer's real input X.  Training aligns W with its inputs, so the stored orientation should
    carry more energy than its transpose (ratio > 1)."""
    from onnx import numpy_helper

    noise = synthetic("white", tuple(digits.shape[1:]))
    rows = []
    for file, e in manifest["models"].items():
        if e["kind"] not in ("healthy", "transposed"):
            continue
        model = onnx.load(str(CORPUS / file))
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        square = [
            n
            for n in model.graph.node
            if n.op_type in ("Gemm", "MatMul")
            and n.input[1] in inits
            and inits[n.input[1]].ndim == 2
            and inits[n.input[1]].shape[0] == inits[n.input[1]].shape[1]
        ]
        if not square:
            continue
        cells = []
        for x in (digits, noise):
            ratios = []
            for n, a in zip(square, _tensors(CORPUS / file, [n.input[0] for n in square], x)):
                w = inits[n.input[1]].astype(np.float64)
                w = w.T if any(t.name == "transB" and t.i == 1 for t in n.attribute) else w  # y = a @ w
                a = a.reshape(-1, a.shape[-1]).astype(np.float64)
                ratios.append((float(np.linalg.norm(a @ w) / np.linalg.norm(a @ w.T)), n.name))
            if e["kind"] == "healthy":
                lo = min(ratios)
                cells.append(f"min {lo[0]:.2f} ({lo[1]}) of {len(ratios)}")
            else:
                cells.append(f"{next(r for r, name in ratios if name == e['node']):.2f}")
        rows.append([file, "all square weights" if e["kind"] == "healthy" else f"fault {e['node']}", *cells])
    print("\n## Orientation of square weights: ||X W|| / ||X Wᵀ|| on the layer's input\n")
    print(table(rows, ["file", "where", "on the digits", "on white noise"]))


# --------------------------------------------------------------------------- synthetic inputs


def _upsample(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear upsampling of (N, C, h0, w0) to (N, C, h, w), half-pixel centres (numpy only)."""
    h0, w0 = x.shape[2:]

    def grid(size: int, size0: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(size) + 0.5) * size0 / size - 0.5, 0, size0 - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, size0 - 1)
        return lo, hi, pos - lo

    ylo, yhi, fy = grid(h, h0)
    xlo, xhi, fx = grid(w, w0)
    rows = x[:, :, ylo, :] * (1 - fy)[:, None] + x[:, :, yhi, :] * fy[:, None]
    return np.asarray(rows[:, :, :, xlo] * (1 - fx) + rows[:, :, :, xhi] * fx)


def synthetic(kind: str, shape: tuple[int, ...], seed: int = 0, n: int = N_SAMPLES) -> np.ndarray:
    """``n`` synthetic samples of per-sample ``shape`` (C, H, W) of one kind, float32."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    if kind == "white":
        x = rng.standard_normal((n, c, h, w))
    elif kind == "smooth":
        low = rng.standard_normal((n, c, max(h // 4, 1), max(w // 4, 1)))
        x = _upsample(low, h, w)
        x = x / x.std()
    elif kind == "normalised":
        mean = np.resize(np.array([0.485, 0.456, 0.406]), c)[None, :, None, None]
        std = np.resize(np.array([0.229, 0.224, 0.225]), c)[None, :, None, None]
        x = (rng.uniform(0, 1, (n, c, h, w)) - mean) / std
    elif kind == "uniform":
        x = rng.uniform(0, 1, (n, c, h, w))
    else:
        raise ValueError(kind)
    return x.astype(np.float32)


KINDS = ["white", "smooth", "normalised", "uniform"]


def input_comparison(manifest: dict[str, Any], cfg: ScoreConfig, digits: np.ndarray) -> None:
    shape = tuple(digits.shape[1:])
    ref = {
        j.file: j.result
        for j in vet_all(
            {"models": {f: e for f, e in manifest["models"].items() if e["kind"] == "healthy"}}, digits, cfg
        )
    }
    rows = []
    for kind in [*KINDS, "digits"]:
        x = digits if kind == "digits" else synthetic(kind, shape)
        judged = vet_all(manifest, x, cfg)
        healthy = [j for j in judged if j.kind == "healthy"]
        faulty = [j for j in judged if j.kind != "healthy"]
        dist = []
        for j in healthy:
            for v, w in zip(j.result.layers, ref[j.file].layers):
                if v.erank > 0 and w.erank > 0 and math.isfinite(v.erank) and math.isfinite(w.erank):
                    dist.append(abs(math.log(v.erank / w.erank)))
        fired = [f"{j.file.removesuffix('.onnx')} {f.short()}" for j in healthy for f in j.false_alarms]
        noted = sum(len(notes(j.result)) for j in healthy)
        rows.append(
            [
                kind,
                f"{sum(bool(j.false_alarms) for j in healthy)}/{len(healthy)}",
                str(sum(len(j.false_alarms) for j in healthy)),
                str(noted),
                f"{sum(bool(j.caught) for j in faulty)}/{len(faulty)}",
                str(sum(len(j.false_alarms) for j in faulty)),
                f"{float(np.mean(dist)):.3f}",
                "; ".join(fired) or "-",
            ]
        )
    print("\n## Synthetic input kinds, passed as data (256 samples each)\n")
    print(
        table(
            rows,
            [
                "input",
                "healthy failing",
                "healthy findings",
                "healthy notes",
                "faults caught",
                "false alarms on faulty",
                "|log erank/digits|",
                "findings on healthy models",
            ],
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-inputs", action="store_true", help="skip the comparison of synthetic input kinds")
    args = ap.parse_args()
    manifest = json.loads((CORPUS / "manifest.json").read_text())
    digits = np.load(CORPUS / manifest["data"])
    cfg = ScoreConfig(threads=args.threads)
    print(f"corpus {CORPUS}: {len(manifest['models'])} models; data {manifest['data']} {digits.shape}")
    for file, e in manifest["models"].items():
        what = f"accuracy {e['accuracy']:.2%}" if e["kind"] == "healthy" else f"{e['tensor']}: {e['description']}"
        print(f"  {file:34s} {e['kind']:15s} {what}")
    t0 = time.perf_counter()
    on_digits = vet_all(manifest, digits, cfg)
    summary = {
        "synthetic (no data)": report("No data: synthetic inputs", vet_all(manifest, None, cfg)),
        "digits": report("--data digits.npy", on_digits),
        "digits + baseline": report(
            "--data digits.npy --baseline HEALTHY.onnx (faulty copies only)",
            vet_all(manifest, digits, cfg, baseline=True),
            verbose=False,
        ),
    }
    print("\n## Summary\n")
    print(
        table(
            [
                [
                    way,
                    f"{s['healthy_false_alarm_rate']:.0%}",
                    f"{s['healthy_false_alarms']:.0f}/{s['healthy_taps']:.0f}",
                    f"{s['detection_rate']:.0%}",
                    f"{s['detected_anywhere']:.0%}",
                    f"{s['faulty_false_alarms']:.0f}",
                ]
                for way, s in summary.items()
            ],
            [
                "vetted on",
                "healthy false-alarm rate",
                "findings/taps",
                "caught at layer",
                "failed at all",
                "false alarms on faulty",
            ],
        )
    )
    missed_diagnostics(manifest, on_digits, digits)
    signals(on_digits, digits)
    orientation(manifest, digits)
    if not args.no_inputs:
        input_comparison(manifest, cfg, digits)
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
