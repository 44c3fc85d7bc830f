#!/usr/bin/env bash
# The GPU checks of issue #5, as one prepared run for a machine with an NVIDIA GPU (the
# device tool's image: CUDA, cupy and PyTorch, but neither onnxruntime-gpu nor onnx-near's
# other dependencies).  Not yet run: no session so far was lent a GPU.
#
# Before it, on this side (see ../.library/device/README.md): download onnxruntime-gpu and
# the missing pure dependencies (onnx, click, threadpoolctl, ...) as wheels for the device's
# Python into .whl/ (ignored by git); onnxruntime-gpu's wheel is larger than one call
# carries, so split it (`split -b 60M`) into .whl/parts/ and send the parts with
# back-to-back calls, then run this script, whose first step reassembles them.
#
#     bash benchmarks/gpu_check.sh            (on the device machine, from the repo root)
set -euo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"

if compgen -G ".whl/parts/*" >/dev/null; then  # reassemble the split onnxruntime-gpu wheel
    name=$(cat .whl/parts/NAME)
    cat .whl/parts/part.* >".whl/$name"
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD

python3 - <<'EOF' | tee "$OUT/providers.txt"
import cupy, onnxruntime as ort
print("onnxruntime", ort.__version__, ort.get_available_providers())
print("cupy", cupy.__version__, "devices", cupy.cuda.runtime.getDeviceCount())
EOF

# The rank core's tests with cupy, and the whole score on the GPU against the CPU.
python3 -m pytest -q tests/test_erank.py tests/test_score.py -rs 2>&1 | tee "$OUT/tests.txt"

# The benchmark on the GPU, both sides there (the README's Performance section).
python3 benchmarks/vs_pytorch.py --device cuda --threads 0 --quick --json "$OUT/vs_pytorch_cuda.json" \
    2>&1 | tee "$OUT/vs_pytorch_cuda.txt"
