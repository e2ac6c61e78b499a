"""The real picamera2 package (from PyPI) over stand-ins for what needs a Raspberry Pi.

:func:`load` imports picamera2 with ``tests/fakes/standins`` first on ``sys.path``:
``libcamera`` (the bindings, the camera manager and a simulated sensor and ISP,
:mod:`libcamera._sensor`) and ``kms`` (the DRM preview's bindings). The kernel's DMA heap is
replaced by memfds (:class:`MemfdDmaAllocator`). Everything else is picamera2's own code:
``Picamera2``, its camera-manager thread and event loop, jobs, ``CompletedRequest``,
``make_array``, controls and configuration checks, with its real dependencies (numpy,
simplejpeg, PiDNG, piexif, videodev2, python-prctl).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

STANDINS = Path(__file__).resolve().parent / "standins"


def load() -> ModuleType:
    """picamera2, imported over the stand-ins (skips the test if it is not installed)."""
    libcamera = sys.modules.get("libcamera")
    if libcamera is not None and not str(getattr(libcamera, "__file__", "")).startswith(
        str(STANDINS)
    ):
        pytest.skip(
            "the real libcamera is loaded (a Raspberry Pi): stand-in tests skipped",
            allow_module_level=True,
        )
    if str(STANDINS) not in sys.path:
        sys.path.insert(0, str(STANDINS))
    picamera2 = pytest.importorskip("picamera2", reason="pip install -e .[test] (picamera2)")
    impl = importlib.import_module("picamera2.picamera2")
    if not getattr(impl.DmaAllocator, "standin", False):
        impl.DmaAllocator = _memfd_allocator()
    return picamera2


def sensor() -> Any:
    """The simulated hardware module (``libcamera._sensor``); call after :func:`load`."""
    return importlib.import_module("libcamera._sensor")


def open_fds() -> int:
    """Descriptors this process has open now."""
    return len(os.listdir("/proc/self/fd"))


def _memfd_allocator() -> type:
    """picamera2's ``DmaAllocator`` with the kernel's DMA heap replaced by memfds.

    Same life cycle (one fd per buffer, mmap'd, closed by the allocator); the
    ``DMA_BUF_IOCTL_SYNC`` cache syncs, which a memfd does not have, are skipped.
    """
    from picamera2.allocators.allocator import Allocator
    from picamera2.allocators.dmaallocator import DmaAllocator
    from picamera2.dma_heap import UniqueFD

    class MemfdHeap:
        isValid = True

        def alloc(self, name: str, size: int) -> UniqueFD:
            fd = os.memfd_create(name, os.MFD_CLOEXEC)
            os.ftruncate(fd, size)
            return UniqueFD(fd)

        def close(self) -> None:
            pass

    class MemfdSync:
        def __init__(self, allocator: Any, fb: Any, write: bool) -> None:
            self.allocator, self.fb = allocator, fb

        def __enter__(self) -> Any:
            buffer = self.allocator.mapped_buffers.get(self.fb, None)
            if buffer is None:
                raise RuntimeError("failed to find buffer in DmaSync")
            return buffer

        def __exit__(self, *args: object) -> None:
            pass

    class MemfdDmaAllocator(DmaAllocator):  # type: ignore[misc]
        standin = True

        def __init__(self) -> None:
            Allocator.__init__(self)
            self.dmaHeap = MemfdHeap()
            self.mapped_buffers: dict[Any, Any] = {}
            self.mapped_buffers_used: dict[Any, bool] = {}
            self.frame_buffers: dict[Any, Any] = {}
            self.open_fds: list[int] = []
            self.libcamera_fds: list[int] = []
            self.sync = MemfdSync

    return MemfdDmaAllocator
