"""Is onnxruntime installed once, and whole?  Checked when the command line starts.

Every onnxruntime build on PyPI (``onnxruntime`` for the CPU, ``onnxruntime-gpu``, …) writes
the same ``onnxruntime/`` folder.  ``pip install onnx-near`` on a machine that already has
``onnxruntime`` puts ``onnxruntime-gpu`` beside it: the files of whichever came last win,
and once one of the two is removed or upgraded the folder is left half empty — ``import
onnxruntime`` still works (a namespace package), but it has no ``InferenceSession``, and
every command would die with an AttributeError.  :func:`check_onnxruntime` says instead,
in one sentence, how to repair it: uninstall both, install one.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata as metadata
import importlib.util
import io
import logging
from collections.abc import Callable, Iterable
from types import ModuleType

from .errors import NearError

log = logging.getLogger(__name__)

# Distributions that install the ``onnxruntime`` package (one of them at a time).
ONNXRUNTIME_BUILDS = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-directml",
    "onnxruntime-openvino",
    "onnxruntime-qnn",
    "onnxruntime-rocm",
    "onnxruntime-training",
    "onnxruntime-silicon",
    "ort-nightly",
    "ort-nightly-gpu",
)

# What onnx-near uses from onnxruntime: present in every whole install.
REQUIRED = ("InferenceSession", "SessionOptions", "GraphOptimizationLevel", "OrtValue", "get_available_providers")

REINSTALL = "pip uninstall -y {names}, then pip install onnxruntime-gpu (one build; it runs on the CPU too)"


class InstallError(NearError):
    """onnxruntime is installed twice, or its folder is broken: the environment needs repair."""


def onnxruntime_problem(
    installed: Iterable[str] | None = None, load: Callable[[], ModuleType] | None = None
) -> str | None:
    """One sentence on what is wrong with this environment's onnxruntime, or None.

    ``installed`` (the onnxruntime distributions installed, with versions) and ``load``
    (imports onnxruntime) default to the real ones; tests pass stand-ins."""
    builds = list(installed) if installed is not None else _installed_builds()
    if len(builds) > 1:
        names = " ".join(b.split(" ")[0] for b in builds)
        return (
            f"onnxruntime is installed twice ({' and '.join(builds)}), and both write the same onnxruntime/ "
            f"folder: {REINSTALL.format(names=names)}"
        )
    try:
        module = (load or (lambda: importlib.import_module("onnxruntime")))()
    except Exception as e:  # ImportError, or a broken native library raising something else
        msg = " ".join(str(e).split())[:160]
        return (
            f"onnxruntime cannot be imported ({type(e).__name__}: {msg}): "
            f"{REINSTALL.format(names=' '.join(b.split(' ')[0] for b in builds) or 'onnxruntime onnxruntime-gpu')}"
        )
    missing = [name for name in REQUIRED if not hasattr(module, name)]
    if missing:
        names = " ".join(b.split(" ")[0] for b in builds) or "onnxruntime onnxruntime-gpu"
        return (
            f"the installed onnxruntime is broken (its module has no {missing[0]}; a second onnxruntime build "
            f"was probably removed or upgraded over it): {REINSTALL.format(names=names)}"
        )
    return None


def check_onnxruntime() -> None:
    """Raise :class:`InstallError` (exit code 2) when :func:`onnxruntime_problem` finds one."""
    problem = onnxruntime_problem()
    if problem is not None:
        raise InstallError(problem)


def _installed_builds() -> list[str]:
    """``name version`` of each onnxruntime distribution installed."""
    out = []
    for name in ONNXRUNTIME_BUILDS:
        try:
            out.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return out


@functools.cache
def preload_cuda_libraries() -> bool:
    """Load the CUDA and cuDNN libraries of the ``nvidia-*`` wheels (what ``pip install
    'onnx-near[gpu]'`` brings) before a CUDA session is made: onnxruntime's CUDA provider
    has no search path into site-packages on Linux, so without this it would not find them.
    Uses onnxruntime's own :func:`onnxruntime.preload_dlls` (its notes on stdout are kept
    off the command's output).  Does nothing, and returns False, without those wheels;
    True when it loaded them."""
    if importlib.util.find_spec("nvidia") is None:
        return False
    try:
        import onnxruntime as ort

        with contextlib.redirect_stdout(io.StringIO()) as said:
            ort.preload_dlls(directory="")
    except Exception as e:  # an older onnxruntime, a library that does not load: CUDA may still come
        log.debug("preloading the CUDA libraries of the nvidia wheels failed: %s", e)
        return False
    if said.getvalue().strip():
        log.debug("onnxruntime.preload_dlls: %s", " ".join(said.getvalue().split()))
    return True
