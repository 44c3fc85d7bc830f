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
it under ``torch.manual_seed(base + k)`` (``base`` from the network's id), so seed 0 trains
exactly the exported weights; seed ``k`` also drives the batch order.  Test accuracy is taken
in eval mode on all 600 test images.
"""

from __future__ import annotations

import csv
import itertools
import math
import time
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

HERE = Path(__file__).resolve().parent
OPSET = 17
MAX_IR_VERSION = 10
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


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


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


def base_seed(name: str) -> int:
    return zlib.crc32(name.encode()) % 1_000_000


# ----------------------------------------------------------------------------- export / train


def export(model: nn.Module, path: Path, x_check: torch.Tensor) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x_check[:2],),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
            do_constant_folding=False,
        )
    proto = onnx.load(str(path))
    if proto.ir_version > MAX_IR_VERSION:
        proto.ir_version = MAX_IR_VERSION
    proto.producer_name = "pytorch"
    onnx.save(proto, str(path))
    onnx.checker.check_model(proto, full_check=True)
    size = path.stat().st_size
    assert size <= MAX_ONNX_BYTES, f"{path.name}: {size} bytes"
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for xb in (x_check, x_check[:3]):
        got = sess.run(None, {"input": xb.numpy()})[0]
        with torch.no_grad():
            want = model(xb).numpy()
        assert np.allclose(got, want, atol=1e-4, rtol=1e-4), f"{path.name}: onnxruntime != torch"
    return size


def train_eval(model: nn.Module, seed: int, data: tuple[torch.Tensor, ...]) -> float:
    x_tr, y_tr, x_te, y_te = data
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    n = len(x_tr)
    model.train()
    for _ in range(EPOCHS):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, BATCH):
            idx = perm[i : i + BATCH]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x_tr[idx]), y_tr[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(x_te).argmax(1)
    return float((pred == y_te).double().mean())


def run_seeds(
    name: str, build: Callable[[], nn.Module], n_seeds: int, data: tuple[torch.Tensor, ...], onnx_path: Path | None
) -> tuple[list[float], nn.Module]:
    """Export seed 0's untrained network (if onnx_path), then train each seed; returns accuracies."""
    base = base_seed(name)
    accs: list[float] = []
    first: nn.Module | None = None
    for k in range(n_seeds):
        torch.manual_seed(base + k)
        model = build()
        if k == 0:
            first = model
            if onnx_path is not None:
                export(model, onnx_path, data[2][:N_SCORE])
                torch.manual_seed(base)
                again = build()  # the trained copy of seed 0 starts from the exported weights
                assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
                model = again
        accs.append(train_eval(model, base + k, data))
    assert first is not None
    return accs, first


# ----------------------------------------------------------------------------- search space


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
        spec["id"] = f"mlp_d{spec['depth']}_w{spec['width']}_{spec['activation']}" + ("_bn" if spec["batchnorm"] else "")
    for spec in cnns:
        spec["id"] = (
            f"cnn_d{spec['depth']}_c{spec['width']}_{spec['activation']}"
            + ("_bn" if spec["batchnorm"] else "")
            + ("_pool" if spec["pool"] else "")
            + f"_{spec['head']}"
        )
    return mlps + cnns


def build_spec(spec: dict) -> nn.Module:
    if spec["family"] == "mlp":
        return mlp([spec["width"]] * spec["depth"], spec["activation"], spec["batchnorm"])
    return cnn(spec["depth"], spec["width"], spec["activation"], spec["batchnorm"], spec["pool"], spec["head"])


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def fmt(v: float) -> str:
    return f"{v:.4f}"


def mean_std(accs: list[float]) -> tuple[float, float]:
    a = np.asarray(accs)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else math.nan


def main() -> None:
    t0 = time.perf_counter()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    data = load_data()
    np.save(HERE / "digits_inputs.npy", data[2][:N_SCORE].numpy())

    # 1. search space
    rows = []
    for spec in draw_search_space():
        rel = f"models/{spec['id']}.onnx"
        accs, model = run_seeds(spec["id"], lambda s=spec: build_spec(s), SEARCH_SEEDS, data, HERE / rel)
        rows.append(
            [
                rel,
                fmt(float(np.mean(accs))),
                spec["family"],
                spec["depth"],
                spec["width"],
                spec["activation"],
                int(spec["batchnorm"]),
                n_params(model),
                "" if spec["pool"] is None else int(spec["pool"]),
                spec["head"] or "",
                ";".join(fmt(a) for a in accs),
            ]
        )
        print(f"  {spec['id']:<40s} params {n_params(model):>6d}  acc {rows[-1][1]}", flush=True)
    header = ["model", "accuracy", "family", "depth", "width", "activation", "batchnorm", "params"]
    write_csv(HERE / "accuracy.csv", [*header, "pool", "head", "accuracy_per_seed"], rows)
    t_search = time.perf_counter() - t0

    # 2. activation study
    act_rows = []
    for act in STUDY_ACTIVATIONS:
        rel = f"activations/mlp_{act}.onnx"
        accs, _ = run_seeds(f"act_{act}", lambda a=act: mlp([128, 128], a), STUDY_SEEDS, data, HERE / rel)
        m, s = mean_std(accs)
        act_rows.append([act, fmt(m), fmt(s), rel])
    write_csv(HERE / "activations.csv", ["activation", "accuracy_mean", "accuracy_std", "onnx"], act_rows)

    # 3. initialisation study
    init_rows = []
    for scheme in INIT_SCHEMES:
        rel = f"inits/mlp_{scheme}.onnx"
        accs, _ = run_seeds(
            f"init_{scheme}", lambda s=scheme: apply_init(mlp([128, 128], "relu"), s), STUDY_SEEDS, data, HERE / rel
        )
        m, s = mean_std(accs)
        init_rows.append([scheme, fmt(m), fmt(s), rel])
    write_csv(HERE / "inits.csv", ["scheme", "accuracy_mean", "accuracy_std", "onnx"], init_rows)

    # 4. width study
    width_rows = []
    for w in STUDY_WIDTHS:
        accs, _ = run_seeds(f"width_{w}", lambda w=w: mlp([w], "silu"), STUDY_SEEDS, data, None)
        m, s = mean_std(accs)
        width_rows.append([w, fmt(m), fmt(s)])
    write_csv(HERE / "widths.csv", ["width", "accuracy_mean", "accuracy_std"], width_rows)

    # summary
    total = time.perf_counter() - t0
    accs = np.array([float(r[1]) for r in rows])
    fam = np.array([r[2] for r in rows])
    size = sum(p.stat().st_size for p in HERE.rglob("*") if p.is_file())
    print(f"\nsearch space: {len(rows)} architectures ({(fam == 'mlp').sum()} MLP, {(fam == 'cnn').sum()} CNN)")
    for f in ("mlp", "cnn"):
        a = accs[fam == f]
        print(f"  {f}: accuracy {a.min():.4f} .. {a.max():.4f} (median {np.median(a):.4f})")
    print(f"  all: accuracy {accs.min():.4f} .. {accs.max():.4f}; time {t_search:.0f} s")
    print("activations: " + ", ".join(f"{r[0]} {r[1]}±{r[2]}" for r in act_rows))
    print("inits:       " + ", ".join(f"{r[0]} {r[1]}±{r[2]}" for r in init_rows))
    print("widths:      " + ", ".join(f"{r[0]} {r[1]}±{r[2]}" for r in width_rows))
    print(f"folder size {size / 1e6:.2f} MB; total time {total:.0f} s")


if __name__ == "__main__":
    main()
