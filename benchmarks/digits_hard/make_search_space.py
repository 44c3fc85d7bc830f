"""Build the digits_hard benchmark: untrained ONNX CNNs plus their accuracy after a short training.

Run from the repository root (CPU only, no network; about the runtime see README.md)::

    python benchmarks/digits_hard/make_search_space.py            # --jobs N (default 1)

Data: scikit-learn's bundled ``load_digits`` (1797 images of 8x8 pixels, 10 classes), made
harder and larger: pixels /16 to [0, 1], upsampled to 16x16 (bilinear), then one seeded random
affine distortion per image (rotation, scale, shift) and additive Gaussian noise; one
stratified split (600 test, 1197 train, ``random_state=0``).  Every model takes ``input``:
float32 (N, 1, 16, 16), batch dimension dynamic, and returns ``logits`` (N, 10).

It writes, next to this file:

* ``inputs.npy``                 the first 512 test-split images, float32 (512, 1, 16, 16): the
                                 scoring data (no labels);
* ``models/*.onnx``, ``accuracy.csv``  the search space (CNNs drawn with a fixed seed from the
                                 grid below), mean test accuracy over 2 training seeds.

Each network is exported to ONNX untrained (``torch.onnx.export(..., dynamo=False,
opset_version=17, do_constant_folding=False)``, eval mode, so BatchNorm nodes stay with their
initial running statistics), ``ir_version`` capped at 10, checked with ``onnx.checker`` and
against torch with onnxruntime, and then trained with one short recipe for all: Adam (lr 3e-3),
batch 64 (reshuffled each epoch), 20 epochs, cross-entropy, no augmentation, no weight decay.
Training seed ``k`` re-creates the network under ``torch.manual_seed(base + k)`` (``base`` from
a CRC-32 of its name), so seed 0 trains exactly the exported weights (checked by a digest);
the same number drives the batch order.  Test accuracy in eval mode on all 600 test images.

Training runs in ``--jobs`` processes of one torch thread each, with
``torch.use_deterministic_algorithms(True)``: a result depends only on (network, seed).
Nothing here was chosen by looking at any proxy's score.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trained_spaces import base_seed, digest, export, n_params, train_eval

HERE = Path(__file__).resolve().parent
N_SCORE = 512
SIDE = 16

# Data: one distortion per image, drawn in image order from this seed.
DATA_SEED = 0
ROTATION_DEG = 20.0  # uniform in ±20°
SCALE = (0.8, 1.2)  # uniform zoom factor
SHIFT_PX = 2.0  # uniform in ±2 pixels (of 16) on each axis
NOISE_STD = 0.2  # additive N(0, 0.2²) on every pixel, pixels in [0, 1] before it

# Training recipe (one for every network).
EPOCHS = 20
BATCH = 64
LR = 3e-3
SEEDS = 2

# Search-space grid.
GRID_SEED = 0
N_MODELS = 72
DEPTHS = (1, 2, 3, 4)  # blocks after the stem
WIDTHS = (8, 16, 32)  # channels of the stem and of every block
KERNELS = (3, 5)
BATCHNORM = (False, True)
SEPARABLE = (False, True)  # depthwise k×k + pointwise 1×1 instead of one k×k convolution
RESIDUAL = (False, True)  # x + block(x)
SQUEEZE_EXCITE = (False, True)
ACTIVATIONS = ("relu", "silu", "tanh")

ACT = {"relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}
TAGS = {"bn": "batchnorm", "sep": "separable", "res": "residual", "se": "se"}  # name suffix → grid field


# ----------------------------------------------------------------------------- data


def distort(x8: np.ndarray, seed: int = DATA_SEED) -> np.ndarray:
    """(N, 1, 8, 8) in [0, 1] → (N, 1, 16, 16): bilinear upsampling, one random affine map per
    image (rotation, zoom, shift; zeros outside), then additive Gaussian noise."""
    rng = np.random.default_rng(seed)
    n = len(x8)
    angle = np.deg2rad(rng.uniform(-ROTATION_DEG, ROTATION_DEG, n))
    zoom = rng.uniform(*SCALE, n)
    shift = rng.uniform(-SHIFT_PX, SHIFT_PX, (n, 2)) * 2 / SIDE  # in affine_grid's [-1, 1] units
    noise = rng.standard_normal((n, 1, SIDE, SIDE))
    x = F.interpolate(torch.from_numpy(x8).double(), size=(SIDE, SIDE), mode="bilinear", align_corners=False)
    c, s = np.cos(angle) / zoom, np.sin(angle) / zoom  # output → input coordinates
    theta = torch.from_numpy(np.stack([np.stack([c, -s, shift[:, 0]], 1), np.stack([s, c, shift[:, 1]], 1)], 1))
    grid = F.affine_grid(theta, [n, 1, SIDE, SIDE], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (x.numpy() + NOISE_STD * noise).astype(np.float32)


def load_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    digits = load_digits()
    x = distort((digits.data / 16.0).reshape(-1, 1, 8, 8))
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=600, stratify=y, random_state=0)
    return torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_te), torch.from_numpy(y_te)


# ----------------------------------------------------------------------------- networks


class SqueezeExcite(nn.Module):
    """Hu et al. 2018: channels scaled by sigmoid(W2 act(W1 GAP(x))), bottleneck C/4 (at least 4)."""

    def __init__(self, channels: int, act: str) -> None:
        super().__init__()
        hidden = max(channels // 4, 4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.act = ACT[act]()
        self.expand = nn.Conv2d(hidden, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


class Block(nn.Module):
    """C → C at one resolution: a k×k convolution (or depthwise k×k then pointwise 1×1), each
    followed by [BatchNorm] and the activation; then [squeeze-excite]; then [x + that]."""

    def __init__(self, c: int, k: int, act: str, bn: bool, separable: bool, residual: bool, se: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        convs = [nn.Conv2d(c, c, k, padding=k // 2, groups=c, bias=not bn), nn.Conv2d(c, c, 1, bias=not bn)]
        for conv in convs if separable else [nn.Conv2d(c, c, k, padding=k // 2, bias=not bn)]:
            layers.append(conv)
            if bn:
                layers.append(nn.BatchNorm2d(c))
            layers.append(ACT[act]())
        if se:
            layers.append(SqueezeExcite(c, act))
        self.body = nn.Sequential(*layers)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


def cnn(spec: dict) -> nn.Sequential:
    """Stem (3×3 conv 1 → C, [BN], act, MaxPool 2: 16×16 → 8×8), ``depth`` blocks (a MaxPool 2
    after the second when there are three or four: 8×8 → 4×4), global average pooling, Linear."""
    c, bn, act = spec["width"], spec["batchnorm"], spec["activation"]
    layers: list[nn.Module] = [nn.Conv2d(1, c, 3, padding=1, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(c))
    layers += [ACT[act](), nn.MaxPool2d(2)]
    for i in range(spec["depth"]):
        layers.append(Block(c, spec["kernel"], act, bn, spec["separable"], spec["residual"], spec["se"]))
        if i == 1 and spec["depth"] >= 3:
            layers.append(nn.MaxPool2d(2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)]
    return nn.Sequential(*layers)


def cost(spec: dict) -> float:
    """Rough training cost (MACs of one sample plus a per-layer overhead), only to hand out the
    longest runs first."""
    c, k, total, side = spec["width"], spec["kernel"], 9.0 * spec["width"] * 256, 8
    for i in range(spec["depth"]):
        total += side * side * c * (k * k + c if spec["separable"] else k * k * c) + 3000
        side = 4 if i == 1 and spec["depth"] >= 3 else side
    return total


# ----------------------------------------------------------------------------- training workers


_DATA: tuple[torch.Tensor, ...] | None = None


def _init_worker() -> None:
    global _DATA
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    _DATA = load_data()


def _train_task(task: tuple[dict, int, str | None]) -> tuple[str, int, float, float]:
    """Train seed k of a network: re-created under torch.manual_seed(base + k); seed 0 = the exported weights."""
    spec, k, want = task
    assert _DATA is not None
    t0 = time.process_time()
    seed = base_seed(spec["name"]) + k
    torch.manual_seed(seed)
    model = cnn(spec)
    if want is not None:
        assert digest(model) == want, f"{spec['name']}: seed 0 does not rebuild the exported weights"
    return spec["name"], k, train_eval(model, seed, _DATA, epochs=EPOCHS, batch=BATCH, lr=LR), time.process_time() - t0


# ----------------------------------------------------------------------------- search space


def draw_search_space() -> list[dict]:
    rng = np.random.default_rng(GRID_SEED)
    grid = [
        dict(depth=d, width=w, kernel=k, batchnorm=b, separable=s, residual=r, se=e, activation=a)
        for d, w, k, b, s, r, e, a in itertools.product(
            DEPTHS, WIDTHS, KERNELS, BATCHNORM, SEPARABLE, RESIDUAL, SQUEEZE_EXCITE, ACTIVATIONS
        )
    ]
    space = [grid[i] for i in sorted(rng.choice(len(grid), N_MODELS, replace=False))]
    for spec in space:
        tags = "".join(f"_{tag}" for tag, field in TAGS.items() if spec[field])
        spec["name"] = f"d{spec['depth']}_c{spec['width']}_k{spec['kernel']}_{spec['activation']}{tags}"
        spec["onnx"] = f"models/{spec['name']}.onnx"
    return space


# ----------------------------------------------------------------------------- main


def fmt(v: float) -> str:
    return f"{v:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--jobs", type=int, default=1, help="training processes, 1 thread each (results do not depend on it)"
    )
    ap.add_argument("--only-export", action="store_true", help="write the data and the ONNX files, train nothing")
    args = ap.parse_args()

    t0, c0 = time.perf_counter(), time.process_time()
    _init_worker()  # this process too: 1 thread, deterministic algorithms, the data
    assert _DATA is not None
    np.save(HERE / "inputs.npy", _DATA[2][:N_SCORE].numpy())

    space = draw_search_space()
    digests: dict[str, str] = {}
    params: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for old in (HERE / "models").glob("*.onnx"):
        old.unlink()
    for spec in space:
        torch.manual_seed(base_seed(spec["name"]))
        model = cnn(spec)
        digests[spec["name"]] = digest(model)
        params[spec["name"]] = n_params(model)
        sizes[spec["name"]] = export(model, HERE / spec["onnx"], _DATA[2][:N_SCORE])
    t_export = time.perf_counter() - t0
    print(f"exported {len(space)} networks in {t_export:.0f} s ({sum(sizes.values()) / 1e6:.2f} MB)", flush=True)
    if args.only_export:
        return

    tasks = [(spec, k, digests[spec["name"]] if k == 0 else None) for spec in space for k in range(SEEDS)]
    tasks.sort(key=lambda t: -cost(t[0]))
    acc: dict[str, list[float]] = {spec["name"]: [math.nan] * SEEDS for spec in space}
    cpu = 0.0
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.jobs, initializer=_init_worker) as pool:
        for i, (name, k, a, c) in enumerate(pool.imap_unordered(_train_task, tasks, chunksize=1), 1):
            acc[name][k] = a
            cpu += c
            if i % 12 == 0 or i == len(tasks):
                print(f"  trained {i}/{len(tasks)} ({time.perf_counter() - t0:.0f} s, {cpu:.0f} s CPU)", flush=True)
    t_train = time.perf_counter() - t0 - t_export

    header = ["model", "accuracy", "depth", "width", "kernel", "activation", "batchnorm", "separable", "residual"]
    header += ["se", "params", "accuracy_per_seed"]
    rows = [
        [
            spec["onnx"],
            fmt(float(np.mean(acc[spec["name"]]))),
            spec["depth"],
            spec["width"],
            spec["kernel"],
            spec["activation"],
            *(int(spec[f]) for f in ("batchnorm", "separable", "residual", "se")),
            params[spec["name"]],
            ";".join(fmt(x) for x in acc[spec["name"]]),
        ]
        for spec in space
    ]
    with (HERE / "accuracy.csv").open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)

    accs = np.array([float(r[1]) for r in rows])
    print(
        f"\nsearch space: {len(rows)} CNNs, {sum(s['activation'] == 'relu' for s in space)} with ReLU; accuracy "
        f"{accs.min():.4f} .. {accs.max():.4f} (median {np.median(accs):.4f}, quartiles "
        f"{np.quantile(accs, 0.25):.4f} / {np.quantile(accs, 0.75):.4f}); largest ONNX "
        f"{max(sizes.values()) / 1e3:.0f} KB, all {sum(sizes.values()) / 1e6:.2f} MB"
    )
    print(
        f"{len(tasks)} training runs: export {t_export:.0f} s, training {t_train:.0f} s wall ({args.jobs} processes, "
        f"{cpu:.0f} s CPU in training), total {time.perf_counter() - t0:.0f} s wall "
        f"(main process CPU {time.process_time() - c0:.0f} s)"
    )


if __name__ == "__main__":
    main()
