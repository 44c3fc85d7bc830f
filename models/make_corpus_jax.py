"""Corpus of Flax (nnx) models exported with jax2onnx, with golden effective ranks from JAX itself.

Run from the repository root with the JAX environment (NOT the project's /work/venv)::

    /work/venv-jax/bin/python models/make_corpus_jax.py

/work/venv-jax holds jax, jaxlib, flax, jax2onnx, onnx, onnxruntime and numpy; this script
never imports onnx_near.  It writes three cases into ``models/corpus/jax2onnx/``:

* ``flax_mlp_tanh``  nnx.Linear 8->16, relu, Linear 16->16, tanh, Linear 16->4   (opset 15)
* ``flax_mlp_gelu``  the same with ``nnx.gelu`` (JAX default: tanh approximation) (opset 17)
* ``flax_cnn_nhwc``  NHWC image (N, 12, 12, 3): nnx.Conv(8, 3x3, VALID), relu, nnx.Conv(8,
                     3x3, VALID), nnx.BatchNorm (running averages), relu, mean over H and W,
                     nnx.Linear(8->5) (opset 16).  jax2onnx runs the convolutions and the
                     BatchNorm as NCHW ONNX ops between Transposes; the second relu runs on NHWC.

Weights are Flax's seeded default initialisers, except that biases and BatchNorm's scale, bias
and running statistics are drawn at random (seeded) so that nothing is trivially zero/one.
The ONNX input keeps jax2onnx's default name (``in_0``); inputs are saved under that name.

Goldens (never from ONNX): the module's forward pass is applied layer by layer in JAX (float32,
the module's own params), recording every weighted-layer output (Linear, Conv, BatchNorm;
role "pre") and every activation output (role "post").  A tap tensor becomes a matrix whose
columns are the feature axis (the last one: channels in Flax's NHWC, units for Linear) and whose
rows are all other axes, all rows kept; erank via ``common.erank_numpy`` (float64).  Each tap
also records ``axis`` (the feature axis in the JAX tensor) and ``tensor_shape``; the golden's
top level records ``layout`` and ``channel_axis``.  onnxruntime is only used to check that the
exported graph reproduces the module's output (atol 1e-4).
"""

from __future__ import annotations

import os
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import flax
import jax
import jax.numpy as jnp
import jax2onnx
import numpy as np
from common import Tap, finish_case, tap
from flax import nnx

OUT_DIR = Path(__file__).resolve().parent / "corpus" / "jax2onnx"
N_SAMPLES = 24

Record = Callable[[str, str, str, jax.Array], jax.Array]


def _no_record(_module: str, _type: str, _role: str, t: jax.Array) -> jax.Array:
    return t


class MLP(nnx.Module):
    def __init__(self, activation: str, rngs: nnx.Rngs) -> None:
        self.dense1 = nnx.Linear(8, 16, rngs=rngs)
        self.dense2 = nnx.Linear(16, 16, rngs=rngs)
        self.head = nnx.Linear(16, 4, rngs=rngs)
        self.activation = activation

    def forward(self, x: jax.Array, rec: Record = _no_record) -> jax.Array:
        x = rec("dense1", "Linear", "pre", self.dense1(x))
        x = rec("relu1", "relu", "post", nnx.relu(x))
        x = rec("dense2", "Linear", "pre", self.dense2(x))
        act = {"tanh": nnx.tanh, "gelu": nnx.gelu}[self.activation]
        x = rec(self.activation, self.activation, "post", act(x))
        return rec("head", "Linear", "pre", self.head(x))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.forward(x)


class CNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.conv1 = nnx.Conv(3, 8, (3, 3), padding="VALID", rngs=rngs)
        self.conv2 = nnx.Conv(8, 8, (3, 3), padding="VALID", rngs=rngs)
        self.bn = nnx.BatchNorm(8, use_running_average=True, rngs=rngs)
        self.head = nnx.Linear(8, 5, rngs=rngs)

    def forward(self, x: jax.Array, rec: Record = _no_record) -> jax.Array:
        x = rec("conv1", "Conv", "pre", self.conv1(x))
        x = rec("relu1", "relu", "post", nnx.relu(x))
        x = rec("conv2", "Conv", "pre", self.conv2(x))
        x = rec("bn", "BatchNorm", "pre", self.bn(x))
        x = rec("relu2", "relu", "post", nnx.relu(x))
        # Global average pool over H, W.  (jax2onnx 0.17 lowers ``jnp.mean`` to ReduceMean with an
        # axes *input*, which is invalid below opset 18; the ``Array.mean`` method becomes
        # ReduceSum + Div, valid at every opset >= 13.)
        x = x.mean(axis=(1, 2))
        return rec("head", "Linear", "pre", self.head(x))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.forward(x)


def randomize(model: nnx.Module, seed: int) -> None:
    """Random biases and BatchNorm parameters/statistics (Flax initialises them to 0 / 1)."""
    rng = np.random.default_rng(seed)
    for _path, m in nnx.iter_modules(model):
        if isinstance(m, (nnx.Linear, nnx.Conv)):
            m.bias[...] = jnp.asarray(rng.normal(0.0, 0.5, m.bias.shape), jnp.float32)
        elif isinstance(m, nnx.BatchNorm):
            c = m.scale.shape
            m.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32)
            m.bias[...] = jnp.asarray(rng.normal(0.0, 0.5, c), jnp.float32)
            m.mean[...] = jnp.asarray(rng.normal(0.0, 0.5, c), jnp.float32)
            m.var[...] = jnp.asarray(rng.uniform(0.25, 1.75, c), jnp.float32)


def jax_goldens(model: Any, data: np.ndarray) -> tuple[list[Tap], np.ndarray]:
    taps: list[Tap] = []

    def rec(module: str, type_: str, role: str, t: jax.Array) -> jax.Array:
        a = np.asarray(t)
        entry = tap(module, type_, role, a.reshape(-1, a.shape[-1]))
        entry["axis"] = a.ndim - 1
        entry["tensor_shape"] = list(a.shape)
        taps.append(entry)
        return t

    y = np.asarray(model.forward(jnp.asarray(data), rec))
    return taps, y


def build(name: str, model: nnx.Module, data: np.ndarray, opset: int, kind: str) -> str:
    taps, y = jax_goldens(model, data)
    np.testing.assert_allclose(y, np.asarray(model(jnp.asarray(data))), rtol=0, atol=1e-6)

    onnx_path = OUT_DIR / f"{name}.onnx"
    proto = jax2onnx.to_onnx(model, [("B", *data.shape[1:])], model_name=name, opset=opset)
    onnx_path.write_bytes(proto.SerializeToString())
    extra = {"layout": "NHWC" if data.ndim == 4 else "NF", "channel_axis": data.ndim - 1}
    finish_case(
        OUT_DIR,
        name,
        data,
        y,
        taps,
        f"jax {jax.__version__} / flax {flax.__version__}",
        opset,
        f"jax2onnx {version('jax2onnx')}",
        kind,
        extra,
    )
    return name


def main() -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(200)
    mlp_x = rng.standard_normal((N_SAMPLES, 8)).astype(np.float32)
    img_x = rng.standard_normal((N_SAMPLES, 12, 12, 3)).astype(np.float32)

    mlp = MLP("tanh", nnx.Rngs(0))
    randomize(mlp, 1)
    print("built", build("flax_mlp_tanh", mlp, mlp_x, 15, "Flax nnx MLP relu/tanh"))
    mlp = MLP("gelu", nnx.Rngs(2))
    randomize(mlp, 3)
    print("built", build("flax_mlp_gelu", mlp, mlp_x, 17, "Flax nnx MLP relu/gelu(tanh approx)"))
    cnn = CNN(nnx.Rngs(4))
    randomize(cnn, 5)
    print("built", build("flax_cnn_nhwc", cnn, img_x, 16, "Flax nnx CNN NHWC conv-relu-conv-bn-relu-mean-linear"))


if __name__ == "__main__":
    main()
