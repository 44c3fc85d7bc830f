"""Build the digits benchmark: untrained ONNX networks plus their accuracy after training.

Run from the repository root (CPU only, no network; about the runtime see README.md)::

    python benchmarks/digits/make_search_space.py

Data: scikit-learn's bundled ``load_digits`` (1797 images of 8x8 pixels, 10 classes), features
/16 to [0, 1], one stratified split (600 test, 1197 train, ``random_state=0``).  Every model
takes ``input``: float32 (N, 1, 8, 8), batch dimension dynamic, and returns ``logits`` (N, 10).

It writes, next to this file:

* ``digits_inputs.npy``   the first 512 test-split images, float32 (512, 1, 8, 8): the
                          scoring data for NEAR (no labels);
* ``models/*.onnx`` + ``accuracy.csv``       the search space (MLPs and small CNNs drawn with a
                                             fixed seed from the grid below), mean test accuracy
                                             over 2 training seeds;
* ``activations/*.onnx`` + ``activations.csv`` one MLP 64-128-128-10, ten activations, 3 seeds;
* ``inits/*.onnx`` + ``inits.csv``           the ReLU version of that MLP, eight initialisations,
                                             3 seeds;
* ``widths.csv``                             MLP 64-W-10 with SiLU, twelve widths, 3 seeds.

Each network is exported to ONNX untrained (``torch.onnx.export(..., dynamo=False,
opset_version=17, do_constant_folding=False)``, eval mode, so BatchNorm nodes stay and use
their initial running statistics), checked against torch with onnxruntime, and then trained
with one recipe for all: Adam (lr 1e-3), batch 64 (reshuffled each epoch), 40 epochs,
cross-entropy, no augmentation, no weight decay.  Training seed ``k`` of a network re-creates
it under ``torch.manual_seed(base + k)`` (``base`` from a CRC-32 of the network's name), so
seed 0 trains exactly the exported weights (checked by a digest); seed ``k`` also drives the
batch order.  Test accuracy is taken in eval mode on all 600 test images.

Training runs in ``--jobs`` processes (default 2) of one torch thread each, with
``torch.use_deterministic_algorithms(True)``: each result depends only on (network, seed), not
on the number of processes or the order they finish in.  (One process with two threads was
5-10x slower on the 2-core machine for these tiny networks once anything else ran.)
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import multiprocessing as mp
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trained_spaces import base_seed, digest, export, n_params, train_eval

HERE = Path(__file__).resolve().parent
MAX_ONNX_BYTES = 200 * 1024
MAX_PARAMS = 48_000  # 4 bytes each: keeps every exported search-space model under 200 KB
N_SCORE = 512

# Training recipe (one for every network).
EPOCHS = 40
BATCH = 64
LR = 1e-3
SEARCH_SEEDS = 2
STUDY_SEEDS = 3

# Search-space grid.
GRID_SEED = 0
N_MLP = 32
N_CNN = 32
ACTIVATIONS = ("relu", "tanh", "sigmoid", "silu", "gelu", "elu", "leaky_relu", "softplus")
MLP_DEPTHS = (1, 2, 3, 4)
MLP_WIDTHS = (8, 16, 32, 64, 128, 256)
CNN_DEPTHS = (1, 2, 3)
CNN_CHANNELS = (4, 8, 16, 32)
BATCHNORM = (False, True)
CNN_POOL = (False, True)  # one MaxPool2d(2) after the first conv block
CNN_HEADS = ("gap", "flatten")

# Studies.
STUDY_ACTIVATIONS = (*ACTIVATIONS, "selu", "mish")
INIT_SCHEMES = (
    "default",
    "kaiming_uniform",
    "kaiming_normal",
    "xavier_uniform",
    "xavier_normal",
    "orthogonal",
    "normal",
    "uniform",
)
STUDY_WIDTHS = (8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)

ACT: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "softplus": nn.Softplus,
    "selu": nn.SELU,
    "mish": nn.Mish,
}


# ----------------------------------------------------------------------------- data


def load_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=600, stratify=y, random_state=0)
    return torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_te), torch.from_numpy(y_te)


# ----------------------------------------------------------------------------- networks


def mlp(widths: list[int], act: str, bn: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    fan_in = 64
    for w in widths:
        layers.append(nn.Linear(fan_in, w))
        if bn:
            layers.append(nn.BatchNorm1d(w))
        layers.append(ACT[act]())
        fan_in = w
    layers.append(nn.Linear(fan_in, 10))
    return nn.Sequential(*layers)


def cnn(depth: int, channels: int, act: str, bn: bool, pool: bool, head: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    c_in, side = 1, 8
    for i in range(depth):
        layers.append(nn.Conv2d(c_in, channels, 3, padding=1))
        if bn:
            layers.append(nn.BatchNorm2d(channels))
        layers.append(ACT[act]())
        if pool and i == 0:
            layers.append(nn.MaxPool2d(2))
            side = 4
        c_in = channels
    if head == "gap":
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10)]
    else:
        layers += [nn.Flatten(), nn.Linear(channels * side * side, 10)]
    return nn.Sequential(*layers)


def mlp_params(depth: int, width: int, bn: bool) -> int:
    return sum(p.numel() for p in mlp([width] * depth, "relu", bn).parameters())


def apply_init(model: nn.Module, scheme: str) -> nn.Module:
    """Re-initialise every Linear layer; ``default`` keeps PyTorch's own initialisation."""
    if scheme == "default":
        return model
    for m in model.modules():
        if not isinstance(m, nn.Linear):
            continue
        w = m.weight
        if scheme == "kaiming_uniform":
            nn.init.kaiming_uniform_(w, nonlinearity="relu")
        elif scheme == "kaiming_normal":
            nn.init.kaiming_normal_(w, nonlinearity="relu")
        elif scheme == "xavier_uniform":
            nn.init.xavier_uniform_(w)
        elif scheme == "xavier_normal":
            nn.init.xavier_normal_(w)
        elif scheme == "orthogonal":
            nn.init.orthogonal_(w)
        elif scheme == "normal":
            nn.init.normal_(w, 0.0, 1.0)
        elif scheme == "uniform":
            nn.init.uniform_(w, -1.0, 1.0)
        else:
            raise ValueError(scheme)
        nn.init.zeros_(m.bias)
    return model


def build(spec: dict) -> nn.Module:
    if spec["family"] == "mlp":
        return apply_init(mlp(spec["widths"], spec["activation"], spec["batchnorm"]), spec.get("init", "default"))
    return cnn(spec["depth"], spec["width"], spec["activation"], spec["batchnorm"], spec["pool"], spec["head"])


def cost(spec: dict) -> float:
    """Rough training cost, only to hand out the longest runs first."""
    if spec["family"] == "mlp":
        sizes = [64, *spec["widths"], 10]
        return sum(a * b for a, b in itertools.pairwise(sizes)) + 3000 * len(sizes)
    c, side, total = 1, 8, 0.0
    for i in range(spec["depth"]):
        total += 9 * c * spec["width"] * side * side + 3000
        side = 4 if spec["pool"] and i == 0 else side
        c = spec["width"]
    return total


# ----------------------------------------------------------------------------- training workers


_DATA: tuple[torch.Tensor, ...] | None = None


def _init_worker() -> None:
    global _DATA
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    _DATA = load_data()


def _train_task(task: tuple[dict, int, str | None]) -> tuple[str, int, float]:
    """Train seed k of a network: re-created under torch.manual_seed(base + k); seed 0 = the exported weights."""
    spec, k, want = task
    assert _DATA is not None
    seed = base_seed(spec["name"]) + k
    torch.manual_seed(seed)
    model = build(spec)
    if want is not None:
        assert digest(model) == want, f"{spec['name']}: seed 0 does not rebuild the exported weights"
    return spec["name"], k, train_eval(model, seed, _DATA, epochs=EPOCHS, batch=BATCH, lr=LR)


# ----------------------------------------------------------------------------- search space / studies


def draw_search_space() -> list[dict]:
    rng = np.random.default_rng(GRID_SEED)
    mlp_grid = [
        dict(family="mlp", depth=d, width=w, activation=a, batchnorm=b, pool=None, head=None)
        for d, w, a, b in itertools.product(MLP_DEPTHS, MLP_WIDTHS, ACTIVATIONS, BATCHNORM)
        if mlp_params(d, w, b) <= MAX_PARAMS
    ]
    cnn_grid = [
        dict(family="cnn", depth=d, width=c, activation=a, batchnorm=b, pool=p, head=h)
        for d, c, a, b, p, h in itertools.product(CNN_DEPTHS, CNN_CHANNELS, ACTIVATIONS, BATCHNORM, CNN_POOL, CNN_HEADS)
    ]
    mlps = [mlp_grid[i] for i in sorted(rng.choice(len(mlp_grid), N_MLP, replace=False))]
    cnns = [cnn_grid[i] for i in sorted(rng.choice(len(cnn_grid), N_CNN, replace=False))]
    for spec in mlps:
        spec["widths"] = [spec["width"]] * spec["depth"]
        spec["name"] = f"mlp_d{spec['depth']}_w{spec['width']}_{spec['activation']}" + (
            "_bn" if spec["batchnorm"] else ""
        )
    for spec in cnns:
        spec["name"] = (
            f"cnn_d{spec['depth']}_c{spec['width']}_{spec['activation']}"
            + ("_bn" if spec["batchnorm"] else "")
            + ("_pool" if spec["pool"] else "")
            + f"_{spec['head']}"
        )
    for spec in mlps + cnns:
        spec["onnx"] = f"models/{spec['name']}.onnx"
    return mlps + cnns


def study_specs() -> tuple[list[dict], list[dict], list[dict]]:
    acts = [
        dict(
            family="mlp",
            widths=[128, 128],
            activation=a,
            batchnorm=False,
            name=f"act_{a}",
            onnx=f"activations/mlp_{a}.onnx",
        )
        for a in STUDY_ACTIVATIONS
    ]
    inits = [
        dict(
            family="mlp",
            widths=[128, 128],
            activation="relu",
            batchnorm=False,
            init=s,
            name=f"init_{s}",
            onnx=f"inits/mlp_{s}.onnx",
        )
        for s in INIT_SCHEMES
    ]
    widths = [
        dict(family="mlp", widths=[w], activation="silu", batchnorm=False, name=f"width_{w}", onnx=None)
        for w in STUDY_WIDTHS
    ]
    return acts, inits, widths


# ----------------------------------------------------------------------------- main


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def fmt(v: float) -> str:
    return f"{v:.4f}"


def mean_std(accs: list[float]) -> tuple[str, str]:
    a = np.asarray(accs)
    return fmt(float(a.mean())), fmt(float(a.std(ddof=1)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--jobs", type=int, default=2, help="training processes, 1 thread each (results do not depend on it)"
    )
    args = ap.parse_args()

    t0, c0 = time.perf_counter(), time.process_time()
    _init_worker()  # this process too: 1 thread, deterministic algorithms, the data
    assert _DATA is not None
    np.save(HERE / "digits_inputs.npy", _DATA[2][:N_SCORE].numpy())

    space = draw_search_space()
    acts, inits, widths = study_specs()
    n_seeds = {s["name"]: SEARCH_SEEDS for s in space} | {s["name"]: STUDY_SEEDS for s in acts + inits + widths}

    # Export every untrained network (seed 0 of its name); remember its weights' digest.
    digests: dict[str, str] = {}
    params: dict[str, int] = {}
    for spec in space + acts + inits + widths:
        torch.manual_seed(base_seed(spec["name"]))
        model = build(spec)
        digests[spec["name"]] = digest(model)
        params[spec["name"]] = n_params(model)
        if spec["onnx"] is not None:
            export(model, HERE / spec["onnx"], _DATA[2][:N_SCORE], MAX_ONNX_BYTES)
    t_export = time.perf_counter() - t0
    print(
        f"exported {sum(s['onnx'] is not None for s in space + acts + inits)} networks in {t_export:.0f} s", flush=True
    )

    # Train every (network, seed); longest first.  Each result depends only on (network, seed).
    tasks = [
        (spec, k, digests[spec["name"]] if k == 0 else None)
        for spec in space + acts + inits + widths
        for k in range(n_seeds[spec["name"]])
    ]
    tasks.sort(key=lambda t: -cost(t[0]))
    acc: dict[str, list[float]] = {name: [math.nan] * n for name, n in n_seeds.items()}
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.jobs, initializer=_init_worker) as pool:
        for i, (name, k, a) in enumerate(pool.imap_unordered(_train_task, tasks, chunksize=1), 1):
            acc[name][k] = a
            if i % 20 == 0 or i == len(tasks):
                print(f"  trained {i}/{len(tasks)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    t_train = time.perf_counter() - t0 - t_export

    rows = []
    for spec in space:
        a = acc[spec["name"]]
        rows.append(
            [
                spec["onnx"],
                fmt(float(np.mean(a))),
                spec["family"],
                spec["depth"],
                spec["width"],
                spec["activation"],
                int(spec["batchnorm"]),
                params[spec["name"]],
                "" if spec["pool"] is None else int(spec["pool"]),
                spec["head"] or "",
                ";".join(fmt(x) for x in a),
            ]
        )
    header = ["model", "accuracy", "family", "depth", "width", "activation", "batchnorm", "params"]
    write_csv(HERE / "accuracy.csv", [*header, "pool", "head", "accuracy_per_seed"], rows)
    act_rows = [[s["activation"], *mean_std(acc[s["name"]]), s["onnx"]] for s in acts]
    write_csv(HERE / "activations.csv", ["activation", "accuracy_mean", "accuracy_std", "onnx"], act_rows)
    init_rows = [[s["init"], *mean_std(acc[s["name"]]), s["onnx"]] for s in inits]
    write_csv(HERE / "inits.csv", ["scheme", "accuracy_mean", "accuracy_std", "onnx"], init_rows)
    width_rows = [[s["widths"][0], *mean_std(acc[s["name"]])] for s in widths]
    write_csv(HERE / "widths.csv", ["width", "accuracy_mean", "accuracy_std"], width_rows)

    total = time.perf_counter() - t0
    accs = np.array([float(r[1]) for r in rows])
    fam = np.array([r[2] for r in rows])
    size = sum(p.stat().st_size for p in HERE.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    print(f"\nsearch space: {len(rows)} architectures ({(fam == 'mlp').sum()} MLP, {(fam == 'cnn').sum()} CNN)")
    for f in ("mlp", "cnn"):
        a = accs[fam == f]
        print(f"  {f}: accuracy {a.min():.4f} .. {a.max():.4f} (median {np.median(a):.4f})")
    print(f"  all: accuracy {accs.min():.4f} .. {accs.max():.4f}")
    print("activations: " + ", ".join(f"{r[0]} {r[1]}±{r[2]}" for r in act_rows))
    print("inits:       " + ", ".join(f"{r[0]} {r[1]}±{r[2]}" for r in init_rows))
    print("widths:      " + ", ".join(f"{r[0]} {r[1]}±{r[2]}" for r in width_rows))
    print(
        f"folder size {size / 1e6:.2f} MB; {len(tasks)} training runs; time: export {t_export:.0f} s, "
        f"training {t_train:.0f} s ({args.jobs} processes), total {total:.0f} s wall "
        f"(main process CPU {time.process_time() - c0:.0f} s)"
    )


if __name__ == "__main__":
    main()
