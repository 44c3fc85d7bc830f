"""The approximate route (onnx_near/lanczos.py): stochastic Lanczos quadrature within its bound
of the exact effective rank, and in the device arrays' own array module."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from onnx_near.erank import effective_rank


def test_approximate_route_within_its_bound() -> None:
    """Stochastic Lanczos quadrature lands within four standard errors and 3 % of the exact erank."""
    from onnx_near.lanczos import approximate_effective_rank

    rng = np.random.default_rng(5)
    a = np.maximum(rng.standard_normal((600, 600)) @ rng.standard_normal((600, 600)) / np.sqrt(600), 0)
    exact = effective_rank(a)
    value, stderr = approximate_effective_rank(a, np.random.default_rng(0))
    assert abs(value - exact) <= 4 * stderr and abs(value - exact) / exact < 0.03 and stderr > 0


class _DeviceArray:
    """A stand-in for a cupy array: its own array module, and no implicit copy to numpy."""

    __array_ufunc__ = None  # numpy's operators defer to ours, as they do for cupy

    def __init__(self, a: Any) -> None:
        self.a = np.asarray(a)

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("Implicit conversion to a NumPy array is not allowed (a device array)")

    def __array_namespace__(self) -> Any:
        return _DEVICE

    def __getattr__(self, name: str) -> Any:  # shape, dtype, T, all(), … (no __array_interface__)
        if name.startswith("__"):
            raise AttributeError(name)
        return _wrap(getattr(self.a, name))

    def __getitem__(self, key: Any) -> Any:
        return _wrap(self.a[_unwrap(key)])

    def __setitem__(self, key: Any, value: Any) -> None:
        self.a[_unwrap(key)] = _unwrap(value)

    def __bool__(self) -> bool:
        return bool(self.a)

    def __float__(self) -> float:
        return float(self.a)

    def __len__(self) -> int:
        return len(self.a)

    def __neg__(self) -> Any:
        return _wrap(-self.a)

    def __invert__(self) -> Any:
        return _wrap(~self.a)


def _binary(name: str) -> Any:
    return lambda self, other: _wrap(getattr(self.a, name)(_unwrap(other)))


for _op in ("matmul", "add", "sub", "mul", "truediv", "pow", "gt", "ge", "lt", "le", "eq", "ne", "and", "or"):
    setattr(_DeviceArray, f"__{_op}__", _binary(f"__{_op}__"))
    setattr(_DeviceArray, f"__r{_op}__", _binary(f"__r{_op}__"))


def _unwrap(x: Any) -> Any:
    if isinstance(x, _DeviceArray):
        return x.a
    if isinstance(x, (tuple, list)):
        return type(x)(_unwrap(v) for v in x)
    return x


def _wrap(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return _DeviceArray(x)
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    if callable(x) and not isinstance(x, type):  # a function, not a dtype such as float64
        return lambda *a, **k: _wrap(x(*_unwrap(a), **{n: _unwrap(v) for n, v in k.items()}))
    return x


class _DeviceModule:
    """A stand-in for cupy: numpy's functions on _DeviceArray, and asnumpy to copy back."""

    def __init__(self, base: Any = np) -> None:
        self.base = base

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.base, name)
        return _DeviceModule(attr) if isinstance(attr, type(np)) else _wrap(attr)

    @staticmethod
    def asnumpy(x: Any) -> np.ndarray:
        return np.array(x.a)


_DEVICE = _DeviceModule()


def test_approximate_route_runs_on_device_arrays() -> None:
    """With --approx-above on the GPU path the quadrature gets device arrays: it runs in their
    own array module (never np.asarray, which cupy refuses) and gives numpy's result."""
    from onnx_near.lanczos import approximate_effective_rank
    from onnx_near.plan import Route
    from onnx_near.routes import erank_by_route

    rng = np.random.default_rng(6)
    a = np.maximum(rng.standard_normal((300, 200)), 0)
    with pytest.raises(TypeError):
        np.asarray(_DeviceArray(a))  # the stand-in refuses, as cupy does
    host = approximate_effective_rank(a, np.random.default_rng(0))
    device = approximate_effective_rank(_DeviceArray(a), np.random.default_rng(0))
    assert device == pytest.approx(host, rel=1e-12)
    routes = [Route(approximate=True, rank_bound=None), Route(approximate=False, rank_bound=None)]
    on_device = erank_by_route([_DeviceArray(a), _DeviceArray(a[:50])], routes, np.random.default_rng(0), _DEVICE)
    on_host = erank_by_route([a, a[:50]], routes, np.random.default_rng(0))
    assert on_device[0] == pytest.approx(on_host[0], rel=1e-12) and on_device[0][1] is not None  # approximate
    assert on_device[1][0] == pytest.approx(on_host[1][0], rel=1e-12) and on_device[1][1] is None  # exact
