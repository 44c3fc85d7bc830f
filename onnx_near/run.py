"""Stage 3, run: execute the rewritten model with onnxruntime.

The session is built once from the in-memory graph; external weights are read by
onnxruntime from the model's own folder.  ``device="auto"`` asks for CUDA and keeps it
only if the session really got it; the provider that ran is reported.  onnxruntime's own
provider-loading noise is silenced and replaced by one clear log line.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from . import clock
from .budget import weight_bytes
from .errors import ModelLoadError, RunError
from .graph import split_weights
from .install import preload_cuda_libraries

log = logging.getLogger(__name__)

# onnxruntime's ORT_ENABLE_ALL adds its blocked-layout (NCHWc) convolutions: measured, a
# batch of ten through the 64-channel CNN of benchmarks/vs_pytorch.py takes 22 ms instead of
# 30, ResNet-18's forward pass is ~20 % faster — but a reordered copy of the weights is held
# (+81 MiB for ResNet-18's 43 MiB, +0.07 s to build the session).  Up to this size of weights
# the copy costs less than a quarter of the default batch budget, so speed wins; above it,
# memory (ORT_ENABLE_EXTENDED).
ALL_MAX_WEIGHT_BYTES = 16 * 2**20

# onnxruntime's fusions that would compute a tapped activation or normalisation (or the
# layer before it) with another kernel: a tap is the output of the graph's own op, so they
# stay off.  (When every tap was a graph output, that alone kept them from firing; with the
# rows cut inside the graph, FastGeluFusion turned a Keras GELU into FastGelu, 1e-8 away.)
TAP_FUSIONS = (
    "GeluFusionL1",
    "GeluFusionL2",
    "FastGeluFusion",
    "BiasGeluFusion",
    "QuickGeluFusion",
    "LayerNormFusionL1",
    "LayerNormFusionL2",
    "SimplifiedLayerNormFusion",
    "SkipLayerNormFusion",
    "BiasSkipLayerNormFusion",
    "EmbedLayerNormFusion",
    "AttentionFusion",
    "GroupQueryAttentionFusion",
    "GroupQueryAttentionPreNormFusion",
    "ConvActivationFusion",
    "ConvAddActivationFusion",
    "GemmActivationFusion",
    "MatMulActivationFusion",
)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class Runner:
    """An onnxruntime session over the rewritten model, returning the requested outputs."""

    def __init__(
        self,
        model: onnx.ModelProto,
        base_dir: Path,
        device: str,
        outputs: Sequence[str],
        label: str = "model",
        threads: int = 0,
        deadline: float | None = None,
    ):
        self.outputs = list(outputs)
        self.label = label
        self.deadline = deadline  # time.monotonic() value after which runs are stopped
        providers = [CPU] if device == "cpu" else [CUDA, CPU]
        if CUDA in providers and CUDA in ort.get_available_providers():
            preload_cuda_libraries()  # the CUDA/cuDNN wheels of the [gpu] extra
        level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if weight_bytes(model) <= ALL_MAX_WEIGHT_BYTES
            else ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        )

        def options(weights: Mapping[str, np.ndarray]) -> ort.SessionOptions:
            o = ort.SessionOptions()
            o.log_severity_level = 4  # onnxruntime's own error lines (fd 2): onnx-near says it in one sentence
            o.graph_optimization_level = level
            # Nodes in priority order: each tap's cut runs as soon as the tap exists, so the
            # tap is freed early (default order, ResNet-50 at a batch of 16: 4.5 GB; this: 0.8 GB).
            o.execution_order = ort.ExecutionOrder.PRIORITY_BASED
            if threads:
                o.intra_op_num_threads = threads
                o.inter_op_num_threads = 1
            o.add_session_config_entry("session.model_external_initializers_file_folder_path", str(base_dir))
            if weights:  # handed over as arrays: onnxruntime copies them in, no protobuf to parse
                o.add_external_initializers(
                    list(weights), [ort.OrtValue.ortvalue_from_numpy(v) for v in weights.values()]
                )
            return o

        self.session = self._create(model, options, providers)
        got = self.session.get_providers()
        self.provider = got[0] if got else CPU
        if device == "cuda" and self.provider != CUDA:
            log.warning("CUDA was asked for but is not available to onnxruntime here; running on the CPU instead")
        elif device == "auto" and self.provider != CUDA:
            log.info("no usable CUDA device: running on the CPU")
        self.input_names = [i.name for i in self.session.get_inputs()]

    def _create(
        self,
        model: onnx.ModelProto,
        options: Callable[[Mapping[str, np.ndarray]], ort.SessionOptions],
        providers: list[str],
    ) -> ort.InferenceSession:
        """The session, built from the graph with its large weights passed as arrays
        (measured on ResNet-18: 0.075 s instead of 0.2 s, 36 MiB less at the peak, than
        serialising 43 MiB of weights into a protobuf for onnxruntime to parse again)."""
        previous = 2
        ort.set_default_logger_severity(4)  # silence provider-loading noise
        light, weights = split_weights(model)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    return ort.InferenceSession(
                        _serialize(light), options(weights), providers=providers, disabled_optimizers=TAP_FUSIONS
                    )
                except Exception as e:
                    lowered = _lower_ir_version(light, str(e))
                    if lowered is None:
                        raise
                    return ort.InferenceSession(
                        _serialize(lowered), options(weights), providers=providers, disabled_optimizers=TAP_FUSIONS
                    )
        except Exception as e:
            raise ModelLoadError(f"onnxruntime cannot load {self.label}: {_ort_message(e)}") from e
        finally:
            ort.set_default_logger_severity(previous)

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run one batch; return the requested outputs (default: all the runner's) by name.

        Past the deadline the run is stopped (onnxruntime's terminate flag) and
        :class:`RunError` says the time limit was reached.
        """
        names = list(outputs) if outputs is not None else self.outputs
        values = self._guarded(lambda options: self.session.run(names, dict(feeds), options))
        return dict(zip(names, values))

    def run_bound(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str], xp: Any = np) -> dict[str, Any]:
        """Run one batch with I/O binding: the outputs stay where the provider computed them.

        On CUDA the tap tensors are left in device memory and handed over as ``xp`` (cupy)
        arrays viewing onnxruntime's buffers — no copy to the host; with ``xp = numpy``
        (the CPU provider) they are numpy arrays.  The views live as long as the returned
        arrays.  Same deadline and errors as :meth:`run`.
        """
        device = "cuda" if self.provider == CUDA else "cpu"
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in outputs:
            binding.bind_output(name, device)
        self._guarded(lambda options: self.session.run_with_iobinding(binding, options))
        return {name: device_array(v, xp) for name, v in zip(outputs, binding.get_outputs())}

    def run_into(
        self,
        feeds: Mapping[str, np.ndarray],
        into: Mapping[str, Any],
        outputs: Sequence[str] = (),
        xp: Any = np,
    ) -> dict[str, Any]:
        """Run one batch with I/O binding: each output named in ``into`` is written by
        onnxruntime straight into that array (C-contiguous, of the output's exact shape and
        dtype; numpy on the CPU, cupy on CUDA) — no buffer of onnxruntime's, no copy; the
        ``outputs`` are returned as :meth:`run_bound` returns them.  Same deadline and errors."""
        device = "cuda" if self.provider == CUDA else "cpu"
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name, target in into.items():
            pointer, device_id = (target.ctypes.data, 0) if xp is np else (target.data.ptr, target.device.id)
            binding.bind_output(name, device, device_id, target.dtype, list(target.shape), pointer)
        for name in outputs:
            binding.bind_output(name, device)
        self._guarded(lambda options: self.session.run_with_iobinding(binding, options))
        values = binding.get_outputs()[len(into) :]
        return {name: device_array(v, xp) for name, v in zip(outputs, values)}

    def _guarded(self, call: Callable[[ort.RunOptions], Any]) -> Any:
        """``call(run_options)``, stopped at the deadline; onnxruntime errors as :class:`RunError`."""
        options = ort.RunOptions()
        options.log_severity_level = 4  # a failed run is reported as RunError, not by onnxruntime's logger
        timer = None
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise clock.time_limit_error(self.label)
            timer = threading.Timer(remaining, lambda: setattr(options, "terminate", True))
            timer.daemon = True
            timer.start()
        try:
            return call(options)
        except Exception as e:
            if options.terminate:
                raise clock.time_limit_error(self.label) from e
            raise RunError(f"onnxruntime failed to run {self.label}: {_ort_message(e)}") from e
        finally:
            if timer is not None:
                timer.cancel()


def device_array(value: ort.OrtValue, xp: Any = np) -> Any:
    """An onnxruntime output as an ``xp`` array: numpy for host memory; for cupy, a view of
    the device buffer that keeps the OrtValue alive (no copy)."""
    if xp is np:
        return value.numpy()
    dtype = onnx.helper.tensor_dtype_to_np_dtype(value.element_type())
    memory = xp.cuda.UnownedMemory(value.data_ptr(), value.tensor_size_in_bytes(), value)  # current device
    return xp.ndarray(tuple(value.shape()), dtype, xp.cuda.MemoryPointer(memory, 0))


def _serialize(model: onnx.ModelProto) -> bytes:
    data: bytes = model.SerializeToString()
    return data


def _lower_ir_version(model: onnx.ModelProto, message: str) -> onnx.ModelProto | None:
    """A copy of ``model`` stamped with the highest IR version the runtime says it supports."""
    m = re.search(r"max supported IR version:\s*(\d+)", message)
    if not m or int(m.group(1)) >= model.ir_version:
        return None
    log.warning(
        "the model's IR version %d is newer than onnxruntime supports; reading it as IR %s",
        model.ir_version,
        m.group(1),
    )
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.ir_version = int(m.group(1))
    return out


def _ort_message(e: BaseException) -> str:
    """onnxruntime's message without its bracketed prefixes and source locations, on one line."""
    text = " ".join(str(e).split())
    text = re.sub(r"\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*", "", text)
    text = re.sub(r"/onnxruntime_src/\S+\s*", "", text)
    text = re.sub(r"(?:\bvoid\s+)?\bonnxruntime::[\w:~<>]*\([^)]*\)\s*", "", text)  # a C++ signature
    return _sentences(text, 400) or type(e).__name__


def _sentences(text: str, limit: int) -> str:
    """``text`` cut at the end of its last whole sentence within ``limit`` characters (at a
    word, with an ellipsis, when even the first sentence is longer)."""
    if len(text) <= limit:
        return text
    cut = max(text.rfind(". ", 0, limit), text.rfind("; ", 0, limit))
    if cut > limit // 4:
        return text[: cut + 1]
    return text[: text.rfind(" ", 0, limit - 1)] + "…"
