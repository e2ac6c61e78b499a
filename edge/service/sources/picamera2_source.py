"""Raspberry Pi camera source (picamera2 / libcamera).

Two streams from one sensor readout: ``main`` (``RGB888``, full resolution,
faces are cropped from it) and ``lores`` (``YUV420``, small, the detector runs
on it). Both arrays come from ONE ``captured_request()``, so they show the
same instant, and the context manager hands the buffers back to the camera
before the next frame.

Pixel-order facts this module relies on (picamera2 ``request.py``/``helpers``):

- ``"RGB888"`` arrays are **BGR** in memory (libcamera names formats by
  their little-endian word layout), i.e. OpenCV's order: no conversion.
- ``make_array("lores")`` for ``"YUV420"`` returns planar I420 as a
  ``(height * 3 // 2, stride)`` uint8 array, padding included;
  ``cv2.COLOR_YUV2BGR_I420`` converts it and the padding columns are cut off.
- ``make_array`` copies the pixels, so the frame outlives the request.

picamera2 is imported when the source is opened, so the package works on
machines without it (install ``python3-picamera2`` from Raspberry Pi OS apt).
"""

from __future__ import annotations

import importlib
import logging
import time
from typing import Any

import cv2
import numpy as np

from edge.service.sources.base import FrameSource, SourceError
from edge.types import Frame, ImageU8

log = logging.getLogger(__name__)


class Picamera2Source(FrameSource):
    """A Raspberry Pi camera read through picamera2.

    ``main_size`` is the frame faces are cropped from, ``lores_size`` the
    detector's image (``None``: no lores stream, detect on ``main``).
    ``fps`` fixes the frame duration when given. ``timeout_s`` bounds the wait
    for one frame: a camera that stops delivering (cable out, sensor reset)
    raises :class:`SourceError` instead of blocking the capture thread forever.
    """

    def __init__(
        self,
        camera_num: int = 0,
        *,
        main_size: tuple[int, int] = (1280, 720),
        lores_size: tuple[int, int] | None = (320, 240),
        fps: float | None = None,
        buffer_count: int = 4,
        timeout_s: float = 5.0,
        module: str = "picamera2",
    ) -> None:
        super().__init__()
        for label, size in (("main_size", main_size), ("lores_size", lores_size)):
            if size is not None and (size[0] <= 0 or size[1] <= 0 or size[0] % 2 or size[1] % 2):
                raise ValueError(f"{label} must be positive even (width, height), got {size}")
        if lores_size is not None and (
            lores_size[0] > main_size[0] or lores_size[1] > main_size[1]
        ):
            raise ValueError("lores_size may not exceed main_size")
        self.camera_num = camera_num
        self.main_size = main_size
        self.lores_size = lores_size
        self.requested_fps = fps
        self.buffer_count = buffer_count
        self.timeout_s = timeout_s
        self._module_name = module
        self._cam: Any = None
        self._lores_width = 0

    @property
    def name(self) -> str:
        return f"picamera2:{self.camera_num}"

    @property
    def fps(self) -> float | None:
        return self.requested_fps

    def _import(self) -> Any:
        try:
            return importlib.import_module(self._module_name)
        except ImportError as exc:
            raise SourceError(
                f"{self.name}: picamera2 is not installed "
                "(on Raspberry Pi OS: apt install python3-picamera2)"
            ) from exc

    def _open(self) -> None:
        module = self._import()
        try:
            cam = module.Picamera2(self.camera_num)
        except IndexError as exc:
            raise SourceError(f"{self.name}: no such camera") from exc
        except Exception as exc:
            raise SourceError(f"{self.name}: cannot open camera: {exc}") from exc
        self._cam = cam
        main: dict[str, Any] = {"size": self.main_size, "format": "RGB888"}
        lores: dict[str, Any] | None = None
        if self.lores_size is not None:
            lores = {"size": self.lores_size, "format": "YUV420"}
        controls: dict[str, Any] = {}
        if self.requested_fps:
            period_us = round(1_000_000 / self.requested_fps)
            controls["FrameDurationLimits"] = (period_us, period_us)
        config = cam.create_video_configuration(
            main=main, lores=lores, controls=controls, buffer_count=self.buffer_count
        )
        cam.configure(config)
        actual = cam.camera_configuration()
        if lores is not None:
            self._lores_width = int(actual["lores"]["size"][0])
        cam.start()
        log.info(
            "opened %s: main %s, lores %s",
            self.name,
            actual["main"]["size"],
            actual["lores"]["size"] if lores is not None else None,
        )

    def _read(self) -> Frame:
        if self._cam is None:
            raise SourceError(f"{self.name}: not open")
        with self._cam.captured_request(wait=self.timeout_s) as request:
            captured_at = time.time()
            main = request.make_array("main")
            lores = request.make_array("lores") if self.lores_size is not None else None
        image = _main_to_bgr(main)
        detect = None if lores is None else i420_to_bgr(lores, self._lores_width)
        return self._frame(image, detect, captured_at)

    def _close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is None:
            return
        for step in ("cancel_all_and_flush", "stop", "close"):
            method = getattr(cam, step, None)
            if method is None:
                continue
            try:
                method()
            except Exception as exc:  # a lost camera may fail to stop; close it anyway
                log.warning("%s: %s failed: %s", self.name, step, exc)


def _main_to_bgr(array: np.ndarray) -> ImageU8:
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise SourceError(f"main stream returned shape {array.shape} {array.dtype}, want HxWx3")
    return np.ascontiguousarray(array)  # RGB888 is BGR in memory already


def i420_to_bgr(yuv: np.ndarray, width: int) -> ImageU8:
    """BGR image from picamera2's planar YUV420 array of shape ``(h * 3 // 2, stride)``.

    Rows wider than ``width`` (stride padding) are converted and then cut off:
    with a padded stride each chroma row is ``stride // 2`` wide, which is the
    layout OpenCV's I420 conversion expects for an image ``stride`` wide.
    """
    if yuv.dtype != np.uint8 or yuv.ndim != 2 or yuv.shape[0] % 3:
        raise SourceError(f"lores stream returned shape {yuv.shape} {yuv.dtype}, want I420")
    stride = yuv.shape[1]
    if width <= 0 or width > stride:
        width = stride
    bgr = cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR_I420)
    if width != stride:
        bgr = bgr[:, :width]
    return np.ascontiguousarray(bgr)
