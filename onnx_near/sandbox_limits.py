"""The sandbox's limits: what a sandboxed computation may use, and how its child holds them.

:class:`Limits` is what the parent asks for (``--max-memory``, ``--timeout``, the threads);
in the child, :func:`apply_limits` sets ``RLIMIT_DATA`` at the child's size when it starts
plus the memory limit plus :func:`headroom`, and :func:`memory_error` is the one sentence for
an allocation the limit refused (:class:`MemoryLimitError`).
"""

from __future__ import annotations

import os
import re
import resource
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .budget import gib
from .errors import RunError

if TYPE_CHECKING:
    from .config import ScoreConfig

# Room for what a process needs beyond the data it computes: each thread's stack (8 MiB by
# default, reserved writable: counted by RLIMIT_DATA) and its allocator arena.
STACK_ROOM = 16 << 20
BASE_ROOM = 64 << 20


class MemoryLimitError(RunError):
    """The model needs more memory than the sandbox's limit (``--max-memory``) allows."""


@dataclass(frozen=True)
class Limits:
    """What a sandboxed computation may use.

    Attributes:
        memory: bytes of data the child may allocate beyond its size at the start (the
            imported libraries); None: no limit.
        timeout: seconds one score may run, counted from the call and again from each
            :func:`~onnx_near.sandbox_child.restart_clock`; None: no limit.
        threads: the threads onnxruntime will start (0: one per CPU), for the stacks' room.
    """

    memory: int | None = None
    timeout: float | None = None
    threads: int = 0

    @classmethod
    def of(cls, config: ScoreConfig) -> Limits:
        """The limits a :class:`~onnx_near.config.ScoreConfig` asks for: ``max_memory``,
        ``timeout`` and ``threads``."""
        return cls(config.max_memory, config.timeout, config.threads)


def headroom(threads: int) -> int:
    """Bytes the limit allows beyond ``memory``: the stacks of onnxruntime's (and BLAS's)
    threads and a fixed room for the allocator (64 MiB + 16 MiB a thread)."""
    n = threads or len(os.sched_getaffinity(0))
    return BASE_ROOM + STACK_ROOM * n


# How onnxruntime and the C++ runtime say that an allocation failed.
ALLOCATION = re.compile(r"Failed to allocate memory|bad_alloc|Cannot allocate memory|out of memory", re.IGNORECASE)


def memory_error(label: str, limits: Limits, message: str | None) -> MemoryLimitError:
    """The sentence for an allocation the limit refused, naming the node and size when the
    message says them."""
    assert limits.memory is not None
    what = ""
    if message:
        node = re.search(r"running (\w+) node", message)
        size = re.search(r"buffer of size (\d+)", message)
        if size:
            what = f": onnxruntime could not allocate {gib(int(size.group(1)))}"
            what += f" for its {node.group(1)} node" if node else ""
    return MemoryLimitError(
        f"scoring {label} needs more memory than the limit of {gib(limits.memory)} (--max-memory) allows{what}"
    )


def apply_limits(limits: Limits) -> int:
    """Apply ``limits`` to this process; return its data size now (the base of the limit)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash writes no core file
    start = vm_data()
    if limits.memory is not None:
        cap = start + limits.memory + headroom(limits.threads)
        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    return start


def vm_data() -> int:
    """This process's data size (``VmData``: heap and private writable mappings), in bytes."""
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmData:"):
                return int(line.split()[1]) * 1024
    return 0
