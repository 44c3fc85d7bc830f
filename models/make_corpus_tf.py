"""Corpus of Keras models exported with tf2onnx, with golden effective ranks from Keras itself.

Run from the repository root with the TensorFlow environment (NOT the project's /work/venv)::

    /work/venv-tf/bin/python models/make_corpus_tf.py

/work/venv-tf holds tensorflow-cpu, keras 3, tf2onnx, onnx, onnxruntime and numpy; this script
never imports onnx_near.  It writes three cases into ``models/corpus/tf2onnx/``:

* ``keras_mlp_tanh``  Dense 8->16, ReLU, Dense 16->16, tanh, Dense 16->4       (opset 13)
* ``keras_mlp_gelu``  the same with GELU (tanh approximation) in place of tanh (opset 14;
                      Keras's exact GELU becomes TF ``Erfc``, which tf2onnx cannot convert)
* ``keras_cnn_nhwc``  NHWC image (N, 12, 12, 3): Conv2D(8, 3x3), ReLU, Conv2D(8, 3x3),
                      BatchNormalization (inference), ReLU, GlobalAveragePooling2D, Dense(5)
                      (opset 13).  tf2onnx wraps the NHWC graph in Transposes and runs the
                      convolutions as NCHW ``Conv``: the feature axis must be read from the graph.
                      tf2onnx's transpose optimizer then pushes the Transposes away, leaving one
                      at the input and every tap in NCHW.
* ``keras_cnn_nhwc_transposes``  the same Keras model (same weights) converted with every
                      tf2onnx optimizer except ``optimize_transpose`` (opset 15): each Conv sits
                      between NHWC->NCHW and NCHW->NHWC Transposes, so the BatchNorm arithmetic
                      and the ReLUs run on NHWC tensors (feature axis 3 in the ONNX graph).

Weights are Keras's seeded default initialisers, except that biases (and BatchNorm's beta,
gamma and moving statistics) are drawn at random so that nothing is trivially zero/one.
Activations are separate layers (``ReLU`` / ``Activation``), so both the pre-activation
(layer output) and the post-activation exist as Keras tensors.

Goldens (never from ONNX): one float32 forward pass of a ``keras.Model`` whose outputs are
the intermediate layer outputs.  Taps: every weighted layer (Dense, Conv2D, BatchNormalization;
role "pre") and every activation layer (role "post").  A tap tensor becomes a matrix whose
columns are the Keras feature axis (the last one: channels for NHWC, units for Dense) and
whose rows are all other axes, all rows kept; erank via ``common.erank_numpy`` (float64).
Each tap also records ``axis`` (the feature axis in the Keras tensor) and ``tensor_shape``;
the golden's top level records ``layout`` and ``channel_axis``.  onnxruntime is only used to
check that the exported graph reproduces the Keras output (atol 1e-4).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf
import tf2onnx
from common import Tap, finish_case, tap

OUT_DIR = Path(__file__).resolve().parent / "corpus" / "tf2onnx"
N_SAMPLES = 24
L = keras.layers

PRE_TYPES = (L.Dense, L.Conv2D, L.BatchNormalization)
POST_TYPES = (L.ReLU, L.Activation)


def rnd(seed: int, scale: float = 0.5) -> keras.initializers.Initializer:
    return keras.initializers.RandomNormal(stddev=scale, seed=seed)


def make_mlp(activation: str) -> keras.Model:
    inp = keras.Input((8,), name="features")
    x = L.Dense(16, bias_initializer=rnd(10), name="dense1")(inp)
    x = L.ReLU(name="relu1")(x)
    x = L.Dense(16, bias_initializer=rnd(11), name="dense2")(x)
    if activation == "gelu_tanh":
        # Keras's exact gelu lowers to TF's Erfc, which tf2onnx 1.17 cannot convert; the tanh
        # approximation lowers to plain Mul/Add/Pow/Tanh ops.
        act = L.Activation(lambda t: keras.activations.gelu(t, approximate=True), name=activation)
    else:
        act = L.Activation(activation, name=activation)
    x = act(x)
    out = L.Dense(4, bias_initializer=rnd(12), name="head")(x)
    return keras.Model(inp, out, name=f"mlp_{activation}")


def make_cnn() -> keras.Model:
    inp = keras.Input((12, 12, 3), name="image")
    x = L.Conv2D(8, 3, bias_initializer=rnd(20), name="conv1")(inp)
    x = L.ReLU(name="relu1")(x)
    x = L.Conv2D(8, 3, bias_initializer=rnd(21), name="conv2")(x)
    x = L.BatchNormalization(
        name="bn",
        beta_initializer=rnd(22),
        gamma_initializer=keras.initializers.RandomUniform(0.5, 1.5, seed=23),
        moving_mean_initializer=rnd(24),
        moving_variance_initializer=keras.initializers.RandomUniform(0.25, 1.75, seed=25),
    )(x)
    x = L.ReLU(name="relu2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    out = L.Dense(5, bias_initializer=rnd(26), name="head")(x)
    return keras.Model(inp, out, name="cnn_nhwc")


def keras_goldens(model: keras.Model, data: np.ndarray) -> tuple[list[Tap], np.ndarray]:
    """Taps in layer order from one forward pass of a multi-output model; plus the final output."""
    tapped = [
        (layer, "pre" if isinstance(layer, PRE_TYPES) else "post")
        for layer in model.layers
        if isinstance(layer, PRE_TYPES + POST_TYPES)
    ]
    probe = keras.Model(model.inputs[0], [layer.output for layer, _ in tapped] + [model.output])
    outs = [np.asarray(o) for o in probe(data, training=False)]
    taps: list[Tap] = []
    for (layer, role), t in zip(tapped, outs[:-1]):
        entry = tap(layer.name, type(layer).__name__, role, t.reshape(-1, t.shape[-1]))
        entry["axis"] = t.ndim - 1
        entry["tensor_shape"] = list(t.shape)
        taps.append(entry)
    return taps, outs[-1]


def build(name: str, model: keras.Model, data: np.ndarray, opset: int, kind: str, transpose_opt: bool = True) -> str:
    taps, y = keras_goldens(model, data)
    np.testing.assert_allclose(y, np.asarray(model(data, training=False)), rtol=0, atol=1e-6)

    spec = [tf.TensorSpec((None, *data.shape[1:]), tf.float32, name=model.inputs[0].name)]
    onnx_path = OUT_DIR / f"{name}.onnx"
    optimizers = None  # tf2onnx's default: all graph optimizers
    if not transpose_opt:
        from tf2onnx.optimizer import _get_optimizers

        optimizers = OrderedDict((k, v) for k, v in _get_optimizers().items() if k != "optimize_transpose")
    tf2onnx.convert.from_keras(
        model, input_signature=spec, opset=opset, output_path=str(onnx_path), optimizers=optimizers
    )
    extra = {"layout": "NHWC" if data.ndim == 4 else "NF", "channel_axis": data.ndim - 1}
    finish_case(
        OUT_DIR,
        name,
        data,
        y,
        taps,
        f"tensorflow {tf.__version__} / keras {keras.__version__}",
        opset,
        f"tf2onnx {tf2onnx.__version__}",
        kind,
        extra,
    )
    return name


def main() -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(100)
    mlp_x = rng.standard_normal((N_SAMPLES, 8)).astype(np.float32)
    img_x = rng.standard_normal((N_SAMPLES, 12, 12, 3)).astype(np.float32)
    print("built", build("keras_mlp_tanh", make_mlp("tanh"), mlp_x, 13, "Keras MLP relu/tanh"))
    print("built", build("keras_mlp_gelu", make_mlp("gelu_tanh"), mlp_x, 14, "Keras MLP relu/gelu(tanh approx)"))
    cnn = make_cnn()
    cnn_kind = "Keras CNN NHWC conv-relu-conv-bn-relu-gap-dense"
    print("built", build("keras_cnn_nhwc", cnn, img_x, 13, cnn_kind))
    print("built", build("keras_cnn_nhwc_transposes", cnn, img_x, 15, cnn_kind + ", transpose optimizer off", False))


if __name__ == "__main__":
    main()
