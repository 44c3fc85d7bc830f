"""Build the four small test models of onnx-near, with inputs and golden effective ranks.

Run from the repository root::

    python models/make_models.py

For each model NAME it writes, next to this script:

* ``NAME.onnx``        the exported graph (opset 17, IR version <= 10, dynamic batch dim 0);
* ``NAME.inputs.npz``  fixed, seeded input data, keyed by the ONNX graph input name and
                       stored in exactly the dtype that input declares;
* ``NAME.golden.json`` per-tap effective ranks (Roy & Vetterli 2007) of the layer outputs.

Models: ``mlp``, ``cnn`` (BatchNorm kept unfolded), ``transformer`` (hand-written tiny
encoder, int64 token ids) -- all untrained torch models with seeded weights -- and
``sklearn_mlp``, a scikit-learn ``MLPClassifier`` trained on the bundled digits data.

Why the goldens are independent: they are computed on the source-framework side only.
For torch models, forward hooks on the torch modules capture the tap outputs during one
float32 forward pass over all samples, and the singular values of each tap's matrix come
from ``numpy.linalg.svd`` in float64 (``common.erank_numpy``).  For scikit-learn, the forward pass is recomputed in
float64 numpy from ``clf.coefs_`` / ``clf.intercepts_`` and the singular values come from
``numpy.linalg.svd``.  Neither ONNX nor onnxruntime is used for any golden value;
onnxruntime is only used as a sanity check that the exported graph reproduces the
framework's final output.

Taps: the output of every module that has weights (Conv2d, BatchNorm2d, Linear, LayerNorm;
role "pre") and of every activation module (ReLU, SiLU, GELU; role "post").  Embedding,
softmax, residual adds and pooling are not taps.  A tap tensor becomes a matrix whose
columns are the feature axis (axis 1 for 4-D (N,C,H,W) tensors, the last axis otherwise)
and whose rows are all other axes, all rows kept.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import sklearn
import torch
from common import ATOL, Tap, cap_ir_version, erank_numpy, ort_run, save_inputs, tap, write_golden
from torch import nn

OUT_DIR = Path(__file__).resolve().parent
OPSET = 17

PRE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.LayerNorm)
POST_TYPES: tuple[type[nn.Module], ...] = (nn.ReLU, nn.SiLU, nn.GELU)


# --------------------------------------------------------------------------- effective rank


# --------------------------------------------------------------------------- torch models


def make_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(16, 64),
        nn.ReLU(),
        nn.Linear(64, 64),
        nn.SiLU(),
        nn.Linear(64, 10),
    )


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1, stride=2),
            nn.BatchNorm2d(16),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.features(x))))


def randomize_batchnorm_stats(model: nn.Module, gen: torch.Generator) -> None:
    """Give every BatchNorm2d non-trivial running statistics (so BN is not near-identity)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen) * 0.5)
            m.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.25)  # in [0.25, 1.75)


def make_cnn() -> nn.Module:
    model = SmallCNN()
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        randomize_batchnorm_stats(model, gen)
    return model


class SelfAttention(nn.Module):
    """Multi-head softmax self-attention from plain Linear layers (no nn.MultiheadAttention)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        assert dim % heads == 0
        self.heads = heads
        self.head_dim = dim // heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        n, seq, _ = t.shape
        return t.reshape(n, seq, self.heads, self.head_dim).transpose(1, 2)  # (N, H, T, hd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, seq, dim = x.shape
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        ctx = torch.softmax(scores, dim=-1) @ v  # (N, H, T, hd)
        return self.out(ctx.transpose(1, 2).reshape(n, seq, dim))


class EncoderBlock(nn.Module):
    """Pre-LN block: x + attn(ln1(x)), then x + ffn(ln2(x)); FFN uses exact (erf) GELU."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.ffn(self.ln2(x))


class TinyEncoder(nn.Module):
    def __init__(
        self,
        vocab: int = 50,
        seq_len: int = 12,
        dim: int = 32,
        heads: int = 2,
        hidden: int = 64,
        depth: int = 2,
        classes: int = 5,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(seq_len, dim) * 0.02)
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads, hidden) for _ in range(depth)])
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.pos
        x = self.ln_f(self.blocks(x))
        return self.head(x.mean(dim=1))


# --------------------------------------------------------------------------- torch side


def tap_matrix(t: torch.Tensor, axis: int) -> torch.Tensor:
    """Feature axis ``axis`` -> columns, every other axis -> rows (in order)."""
    return t.movedim(axis, -1).reshape(-1, t.shape[axis])


def torch_tap(module: str, type_: str, role: str, t: torch.Tensor, axis: int) -> Tap:
    """One golden tap from a torch tensor: all rows, effective rank in float64 (common.tap)."""
    return tap(module, type_, role, tap_matrix(t.detach(), axis).numpy())


def hook_goldens(
    model: nn.Module,
    x: torch.Tensor,
    axis: int,
    pre_types: tuple[type[nn.Module], ...] = PRE_TYPES,
    post_types: tuple[type[nn.Module], ...] = POST_TYPES,
) -> tuple[list[Tap], torch.Tensor]:
    """One float32 forward with hooks on weighted modules ("pre") and activations ("post");
    each distinct output tensor once, in firing order.  Returns the taps and the output."""
    taps: list[Tap] = []
    seen: list[torch.Tensor] = []  # kept alive, so identity checks are sound

    def make_hook(name: str, role: str) -> Callable[..., None]:
        def hook(module: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            if any(out is s for s in seen):
                return
            seen.append(out)
            taps.append(torch_tap(name, type(module).__name__, role, out, axis))

        return hook

    handles = []
    for name, module in model.named_modules():
        if isinstance(module, post_types):  # PReLU has weights but is an activation
            handles.append(module.register_forward_hook(make_hook(name, "post")))
        elif isinstance(module, pre_types):
            handles.append(module.register_forward_hook(make_hook(name, "pre")))
    try:
        with torch.no_grad():
            y = model(x)
    finally:
        for h in handles:
            h.remove()
    return taps, y


def export_torch(
    model: nn.Module, x: torch.Tensor, path: Path, input_name: str, output_name: str, keep_batchnorm: bool = False
) -> None:
    """TorchScript-based export (dynamo=False), opset 17, dynamic dim 0 on input and output."""
    kwargs: dict[str, Any] = {}
    if keep_batchnorm:
        # Constant folding (on by default in eval export) fuses BatchNorm into the preceding
        # Conv.  Turning it off keeps inference-mode BatchNormalization nodes
        # (training_mode=0).  training=TrainingMode.PRESERVE gives the same graph but warns.
        kwargs["do_constant_folding"] = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
            **kwargs,
        )


# --------------------------------------------------------------------------- scikit-learn side


def sklearn_goldens(clf: Any, x32: np.ndarray) -> tuple[list[Tap], np.ndarray]:
    """Float64 numpy forward from coefs_/intercepts_; returns taps and the softmax output."""
    taps: list[Tap] = []
    a = x32.astype(np.float64)
    n_layers = len(clf.coefs_)
    for i, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_)):
        z = a @ np.asarray(w, np.float64) + np.asarray(b, np.float64)
        taps.append(
            {"module": f"coefs_[{i}]", "type": "Dense", "role": "pre", "shape": list(z.shape), "erank": erank_numpy(z)}
        )
        if i < n_layers - 1:
            a = np.maximum(z, 0.0)
            taps.append(
                {
                    "module": f"relu[{i}]",
                    "type": "ReLU",
                    "role": "post",
                    "shape": list(a.shape),
                    "erank": erank_numpy(a),
                }
            )
    z = z - z.max(axis=1, keepdims=True)
    proba = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return taps, proba


# --------------------------------------------------------------------------- ONNX checks


# --------------------------------------------------------------------------- builders


def build_torch_model(
    name: str, model: nn.Module, data: np.ndarray, input_name: str, keep_batchnorm: bool = False
) -> None:
    model.eval()
    x = torch.from_numpy(data)
    taps, y = hook_goldens(model, x, axis=1 if x.dim() == 4 else -1)
    onnx_path = OUT_DIR / f"{name}.onnx"
    export_torch(model, x, onnx_path, input_name, "logits", keep_batchnorm=keep_batchnorm)
    proto = cap_ir_version(onnx_path)
    feeds = save_inputs(OUT_DIR / f"{name}.inputs.npz", proto, data)

    # Sanity: ORT reproduces the framework output (full batch, and a smaller batch).
    (ort_y,) = ort_run(onnx_path, feeds)
    np.testing.assert_allclose(ort_y, y.numpy(), rtol=0, atol=ATOL)
    (ort_small,) = ort_run(onnx_path, {input_name: data[:3]})
    np.testing.assert_allclose(ort_small, y.numpy()[:3], rtol=0, atol=ATOL)

    write_golden(OUT_DIR, name, f"torch {torch.__version__.split('+')[0]}", OPSET, taps, "torch-torchscript", name)


def build_mlp() -> None:
    torch.manual_seed(0)
    model = make_mlp()
    data = np.random.default_rng(0).standard_normal((256, 16)).astype(np.float32)
    build_torch_model("mlp", model, data, "input")


def build_cnn() -> None:
    torch.manual_seed(1)
    model = make_cnn()
    data = np.random.default_rng(1).standard_normal((32, 3, 16, 16)).astype(np.float32)
    build_torch_model("cnn", model, data, "input", keep_batchnorm=True)
    ops = {n.op_type for n in onnx.load(str(OUT_DIR / "cnn.onnx")).graph.node}
    assert "BatchNormalization" in ops, f"BatchNorm was folded: {sorted(ops)}"


def build_transformer() -> None:
    torch.manual_seed(2)
    model = TinyEncoder()
    data = np.random.default_rng(2).integers(0, 50, size=(16, 12), dtype=np.int64)
    build_torch_model("transformer", model, data, "input_ids")


def build_sklearn_mlp() -> None:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    digits = load_digits()
    x = digits.data / 16.0
    x_train, y_train = x[:1500], digits.target[:1500]
    x_test = x[1500:].astype(np.float32)

    clf = MLPClassifier(hidden_layer_sizes=(32, 16), activation="relu", max_iter=300, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x_train, y_train)

    taps, proba = sklearn_goldens(clf, x_test)
    np.testing.assert_allclose(proba, clf.predict_proba(x_test), rtol=0, atol=1e-10)

    # Default conversion options (ZipMap on); main-domain opset pinned to 17 like the torch
    # models (skl2onnx would otherwise pick opset 22, which needs IR version 11).
    onx = to_onnx(clf, initial_types=[("input", FloatTensorType([None, 64]))], target_opset=OPSET)
    onnx_path = OUT_DIR / "sklearn_mlp.onnx"
    onnx_path.write_bytes(onx.SerializeToString())
    proto = cap_ir_version(onnx_path)
    feeds = save_inputs(OUT_DIR / "sklearn_mlp.inputs.npz", proto, x_test)

    label, prob_maps = ort_run(onnx_path, feeds)
    ort_proba = np.array([[row[c] for c in clf.classes_] for row in prob_maps])
    np.testing.assert_allclose(ort_proba, clf.predict_proba(x_test), rtol=0, atol=ATOL)
    assert np.array_equal(label, clf.predict(x_test))

    write_golden(
        OUT_DIR, "sklearn_mlp", f"scikit-learn {sklearn.__version__}", OPSET, taps, "skl2onnx", "MLPClassifier relu"
    )


def main() -> None:
    torch.set_num_threads(1)  # bit-stable float32 reductions across machines
    for build in (build_mlp, build_cnn, build_transformer, build_sklearn_mlp):
        build()
        print(f"built {build.__name__[len('build_') :]}")


if __name__ == "__main__":
    main()
