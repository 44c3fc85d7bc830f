"""Fixtures for `onnx-near vet`: a healthy MLP and copies of it with one planted fault each.

Run from the repository root (needs only numpy and onnx)::

    python models/make_vet_fixtures.py

Writes into ``models/vet/``:

* ``healthy.onnx``   16 → Gemm(64) → Tanh → Gemm(64) → Relu → Gemm(10), weights drawn as
                     PyTorch's nn.Linear draws them (U(±1/√fan_in)), seeded;
* ``zeroed.onnx``    the second layer's weight and bias set to zero (a bad export): its
                     output and the ReLU after it collapse to erank 0;
* ``saturated.onnx`` the first layer's weight scaled by 200: the Tanh after it sits at ±1;
* ``nan_bias.onnx``  one NaN in the second layer's bias: that layer and all after it are NaN;
* ``inputs.npy``     256 standard-normal samples to vet them on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT = Path(__file__).resolve().parent / "vet"


def healthy() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    weights: dict[str, np.ndarray] = {}
    for k, (fan_in, fan_out) in enumerate([(16, 64), (64, 64), (64, 10)], start=1):
        bound = 1 / np.sqrt(fan_in)
        weights[f"fc{k}.weight"] = rng.uniform(-bound, bound, (fan_out, fan_in)).astype(np.float32)
        weights[f"fc{k}.bias"] = rng.uniform(-bound, bound, fan_out).astype(np.float32)
    return weights


def build(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Gemm", ["input", "fc1.weight", "fc1.bias"], ["fc1"], name="fc1", transB=1),
        helper.make_node("Tanh", ["fc1"], ["tanh1"], name="tanh1"),
        helper.make_node("Gemm", ["tanh1", "fc2.weight", "fc2.bias"], ["fc2"], name="fc2", transB=1),
        helper.make_node("Relu", ["fc2"], ["relu2"], name="relu2"),
        helper.make_node("Gemm", ["relu2", "fc3.weight", "fc3.bias"], ["logits"], name="fc3", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "vet_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model)
    return model


def main() -> None:
    OUT.mkdir(exist_ok=True)
    base = healthy()
    zeroed = {**base, "fc2.weight": np.zeros_like(base["fc2.weight"]), "fc2.bias": np.zeros_like(base["fc2.bias"])}
    saturated = {**base, "fc1.weight": base["fc1.weight"] * 200}
    nan_bias = {**base, "fc2.bias": base["fc2.bias"].copy()}
    nan_bias["fc2.bias"][3] = np.nan
    for name, w in [("healthy", base), ("zeroed", zeroed), ("saturated", saturated), ("nan_bias", nan_bias)]:
        onnx.save(build(w), str(OUT / f"{name}.onnx"))
    np.save(OUT / "inputs.npy", np.random.default_rng(1).standard_normal((256, 16)).astype(np.float32))
    print(f"wrote {sorted(p.name for p in OUT.iterdir())}")


if __name__ == "__main__":
    main()
