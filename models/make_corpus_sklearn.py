"""Corpus of scikit-learn MLPs exported with skl2onnx, with independent golden effective ranks.

Run from the repository root with the project's environment::

    /work/venv/bin/python models/make_corpus_sklearn.py

Writes eight cases into ``models/corpus/skl2onnx/``: ``MLPClassifier`` (trained on the bundled
digits data) and ``MLPRegressor`` (bundled diabetes data), each with ``activation`` in
identity / logistic / tanh / relu and ``hidden_layer_sizes=(16, 8)``, briefly trained
(``max_iter=200``, ``random_state=0``; features standardised, regression target standardised).
Export: skl2onnx with ``target_opset=17`` for the main domain, default options (ZipMap on for
the classifier).

Goldens (never from ONNX): the forward pass is recomputed in float64 numpy from ``coefs_`` /
``intercepts_`` on the float32 test inputs.  Taps: every layer's affine output Z (role "pre");
for each hidden layer also the activation output (role "post": relu / sigmoid / tanh of Z).
With ``activation="identity"`` there is no non-linearity, so a hidden layer has one tap (Z).
The output layer's softmax (classifier) is not an activation.  All rows are kept; columns are
the layer's units.  onnxruntime is used only to check that the exported graph reproduces
``predict`` / ``predict_proba``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
from common import ATOL, Tap, cap_ir_version, ort_run, save_inputs, tap, write_golden

OUT_DIR = Path(__file__).resolve().parent / "corpus" / "skl2onnx"
OPSET = 17
ACTIVATIONS = ("identity", "logistic", "tanh", "relu")
ACT_FN = {
    "identity": None,
    "logistic": lambda z: 1.0 / (1.0 + np.exp(-z)),
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(z, 0.0),
}
ACT_TYPE = {"logistic": "Sigmoid", "tanh": "Tanh", "relu": "ReLU"}


def mlp_goldens(est: Any, x32: np.ndarray) -> tuple[list[Tap], np.ndarray]:
    """Float64 forward from coefs_/intercepts_; returns the taps and the last affine output Z."""
    taps: list[Tap] = []
    a = x32.astype(np.float64)
    n_layers = len(est.coefs_)
    act = ACT_FN[est.activation]
    z = a
    for i, (w, b) in enumerate(zip(est.coefs_, est.intercepts_)):
        z = a @ np.asarray(w, np.float64) + np.asarray(b, np.float64)
        taps.append(tap(f"coefs_[{i}]", "Dense", "pre", z))
        if i < n_layers - 1:
            if act is None:
                a = z
            else:
                a = act(z)
                taps.append(tap(f"{est.activation}[{i}]", ACT_TYPE[est.activation], "post", a))
    return taps, z


def load(kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x_train float64, y_train, x_test float32), features standardised on the training part."""
    from sklearn.datasets import load_diabetes, load_digits
    from sklearn.preprocessing import StandardScaler

    if kind == "MLPClassifier":
        ds = load_digits()
        n_train = 1500
        y = ds.target
    else:
        ds = load_diabetes()
        n_train = 342
        y = (ds.target - ds.target[:n_train].mean()) / ds.target[:n_train].std()
    scaler = StandardScaler().fit(ds.data[:n_train])
    x = scaler.transform(ds.data)
    return x[:n_train], y[:n_train], x[n_train:].astype(np.float32)


def build(kind: str, activation: str) -> str:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    x_train, y_train, x_test = load(kind)
    cls = MLPClassifier if kind == "MLPClassifier" else MLPRegressor
    est = cls(hidden_layer_sizes=(16, 8), activation=activation, max_iter=200, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(x_train, y_train)

    taps, z_out = mlp_goldens(est, x_test)
    # The numpy forward reproduces scikit-learn's own prediction.
    if kind == "MLPClassifier":
        e = np.exp(z_out - z_out.max(axis=1, keepdims=True))
        np.testing.assert_allclose(e / e.sum(axis=1, keepdims=True), est.predict_proba(x_test), rtol=0, atol=1e-10)
    else:
        np.testing.assert_allclose(z_out[:, 0], est.predict(x_test), rtol=0, atol=1e-10)

    name = f"{'mlpclf' if kind == 'MLPClassifier' else 'mlpreg'}_{activation}"
    onx = to_onnx(est, initial_types=[("input", FloatTensorType([None, x_test.shape[1]]))], target_opset=OPSET)
    onnx_path = OUT_DIR / f"{name}.onnx"
    onnx_path.write_bytes(onx.SerializeToString())
    proto = cap_ir_version(onnx_path)
    feeds = save_inputs(OUT_DIR / f"{name}.inputs.npz", proto, x_test)

    outs = ort_run(onnx_path, feeds)
    if kind == "MLPClassifier":
        label, prob_maps = outs
        ort_proba = np.array([[row[c] for c in est.classes_] for row in prob_maps])
        np.testing.assert_allclose(ort_proba, est.predict_proba(x_test), rtol=0, atol=ATOL)
        assert np.array_equal(label, est.predict(x_test))
    else:
        np.testing.assert_allclose(outs[0].reshape(-1), est.predict(x_test), rtol=0, atol=ATOL)

    write_golden(OUT_DIR, name, f"scikit-learn {sklearn.__version__}", OPSET, taps, "skl2onnx", f"{kind} {activation}")
    return name


def main() -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for kind in ("MLPClassifier", "MLPRegressor"):
        for activation in ACTIVATIONS:
            print("built", build(kind, activation))


if __name__ == "__main__":
    main()
