"""Raspberry Pi camera source (picamera2 / libcamera).

Two streams from one sensor readout: ``main`` (``RGB888``, full resolution, faces are
cropped from it) and ``lores`` (``YUV420``, small, the detector runs on it, with main's
aspect ratio because the ISP gives it main's crop). Both arrays come from ONE completed
request, so they show the same instant, and the request goes back to the camera before the
next frame.

What this module relies on in picamera2 (0.3.17 and later; tested against 0.3.36's own code
in ``tests/test_picamera2_real.py``):

- ``capture_request(wait=False)`` returns a job and ``wait(job, timeout)`` raises
  ``TimeoutError`` when no frame comes (``captured_request(wait=...)`` only exists from
  0.3.20). A timed-out job stays queued, so closing is ``cancel_all_and_flush()`` then
  ``close()``: a ``stop()`` dispatched to the event loop would queue behind it.
- ``Picamera2()`` opens a pipe before it can fail and its ``close()`` skips a camera that
  never opened: the camera list is checked first (``global_camera_info()`` opens nothing),
  and a failed instance's pipe and camera-manager entry are released here.
- ``"RGB888"`` arrays are **BGR** in memory; ``make_array("lores")`` for ``"YUV420"`` is
  planar I420 ``(height * 3 // 2, stride)`` with the stride padding; ``make_array`` copies.
- Controls the camera does not advertise are refused (``RuntimeError``), so each optional
  control is set only when ``camera_controls`` lists it.
- ``SensorTimestamp`` (CLOCK_MONOTONIC, ns, start of exposure) is the capture time and the
  request's ``FrameDuration`` the frame rate.

picamera2 is imported when the source is opened, so the package works on machines without
it (install ``python3-picamera2`` from Raspberry Pi OS apt).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import os
import time
from typing import Any

import numpy as np

from edge.service.sources.base import FrameSource, SourceError, SourceFatalError
from edge.service.sources.picamera2_options import (
    AE_EXPOSURE_MODES,
    AF_CONTINUOUS,
    COLOUR_SPACES,
    TRANSFORMS,
    Picamera2Options,
    i420_to_bgr,
    lores_keeping_aspect,
)
from edge.types import Frame, ImageU8

log = logging.getLogger(__name__)

__all__ = ["Picamera2Options", "Picamera2Source", "i420_to_bgr"]

NUMPY_CLASH_HINT = (
    "the venv's numpy does not match apt's simplejpeg/picamera2 build (numpy 2 in the venv, "
    "python3-simplejpeg built for numpy 1): install numpy<2 in the venv "
    "(pip install 'numpy<2') or use apt's python3-numpy (venv --system-site-packages)"
)


class Picamera2Source(FrameSource):
    """A Raspberry Pi camera read through picamera2.

    ``main_size`` is the frame faces are cropped from, ``lores_size`` the detector's image
    (``None``: no lores stream, detect on ``main``; another aspect ratio than main's is
    corrected, keeping its width). ``fps`` fixes the frame duration when the camera allows
    it. ``timeout_s`` bounds the wait for one frame: a camera that stops delivering (cable
    out, sensor reset) raises :class:`SourceError` instead of blocking the capture thread.
    """

    def __init__(
        self,
        camera_num: int = 0,
        *,
        main_size: tuple[int, int] = (1280, 720),
        lores_size: tuple[int, int] | None = None,
        fps: float | None = None,
        buffer_count: int = 4,
        timeout_s: float = 5.0,
        options: Picamera2Options | None = None,
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
        if lores_size is not None:
            fitted = lores_keeping_aspect(lores_size, main_size)
            if fitted != lores_size:
                log.info("lores %s -> %s: keeps main's aspect ratio", lores_size, fitted)
            lores_size = fitted
        self.camera_num = camera_num
        self.main_size = main_size
        self.lores_size = lores_size
        self.requested_fps = fps
        self.buffer_count = buffer_count
        self.timeout_s = timeout_s
        self.options = options or Picamera2Options()
        self._module_name = module
        self._cam: Any = None
        self._lores_width = 0
        self._lores_encoding = ("Rec601", False)
        self._frame_us: float | None = None
        self._busy_failures = 0

    @property
    def name(self) -> str:
        return f"picamera2:{self.camera_num}"

    @property
    def fps(self) -> float | None:
        """The camera's frame rate (its last ``FrameDuration``), else the requested one."""
        if self._frame_us:
            return 1e6 / self._frame_us
        return self.requested_fps

    # -- opening ------------------------------------------------------------------------

    def _import(self) -> Any:
        try:
            module = importlib.import_module(self._module_name)
        except ImportError as exc:
            if "numpy" in str(exc).lower():
                raise SourceFatalError(
                    f"{self.name}: cannot import picamera2 ({exc}): {NUMPY_CLASH_HINT}"
                ) from exc
            raise SourceFatalError(
                f"{self.name}: picamera2 is not installed "
                "(on Raspberry Pi OS: apt install python3-picamera2)"
            ) from exc
        except ValueError as exc:  # "numpy.dtype size changed, may indicate binary incompatibility"
            raise SourceFatalError(
                f"{self.name}: cannot import picamera2 ({exc}): {NUMPY_CLASH_HINT}"
            ) from exc
        except Exception as exc:
            raise SourceFatalError(
                f"{self.name}: cannot import picamera2: {type(exc).__name__}: {exc}"
            ) from exc
        cls = getattr(module, "Picamera2", None)
        capture = getattr(cls, "capture_request", None)
        if capture is None or not hasattr(cls, "wait") or (
            "wait" not in inspect.signature(capture).parameters
        ):
            version = getattr(module, "__version__", "?")
            raise SourceFatalError(
                f"{self.name}: picamera2 {version} is too old (needs capture_request(wait=) "
                "and wait(job, timeout), 0.3.17 or later)"
            )
        return module

    def _open(self) -> None:
        module = self._import()
        cls = module.Picamera2
        cameras = cls.global_camera_info()  # static: opens no descriptor
        if self.camera_num >= len(cameras):
            raise SourceError(f"{self.name}: no such camera ({len(cameras)} found)")
        cam = self._construct(cls)
        self._cam = cam
        self._busy_failures = 0
        config = self._configuration(cam, module)
        cam.configure(config)
        actual = cam.camera_configuration()
        self._check_sensor(cam, actual)
        if self.lores_size is not None:
            self._lores_width = int(actual["lores"]["size"][0])
            self._lores_encoding = _encoding(actual.get("colour_space"))
        cam.start()
        log.info(
            "opened %s: main %s, lores %s, sensor %s",
            self.name,
            actual["main"]["size"],
            actual["lores"]["size"] if self.lores_size is not None else None,
            actual.get("sensor"),
        )

    def _construct(self, cls: Any) -> Any:
        """``cls(camera_num)``, releasing what a failed constructor leaves behind."""
        cam = cls.__new__(cls)
        try:
            cam.__init__(self.camera_num)
        except Exception as exc:
            _discard(cls, cam)
            if _busy(exc):
                self._busy_failures += 1
                message = f"{self.name}: camera busy (another process has it)"
                if self._busy_failures >= self.options.busy_limit:
                    raise SourceFatalError(
                        f"{message}, {self._busy_failures} times in a row: giving up"
                    ) from exc
                raise SourceError(message) from exc
            if isinstance(exc, IndexError):
                raise SourceError(f"{self.name}: no such camera") from exc
            raise SourceError(f"{self.name}: cannot open camera: {exc}") from exc
        return cam

    def _configuration(self, cam: Any, module: Any) -> Any:
        libcamera = importlib.import_module("libcamera")
        opts = self.options
        advertised = cam.camera_controls
        controls: dict[str, Any] = {}

        def want(name: str, value: Any, why: str) -> None:
            if name in advertised:
                controls[name] = value
            else:
                log.warning("%s: the camera has no %s control: %s not set", self.name, name, why)

        if self.requested_fps:
            period_us = round(1_000_000 / self.requested_fps)
            want("FrameDurationLimits", (period_us, period_us), f"fps {self.requested_fps}")
        if opts.af_mode == "continuous" and "AfMode" in advertised:
            controls["AfMode"] = AF_CONTINUOUS  # fixed-focus cameras have no AfMode: nothing to do
        if opts.ae_exposure_mode != "normal":
            want("AeExposureMode", AE_EXPOSURE_MODES[opts.ae_exposure_mode], "ae_exposure_mode")
        if opts.exposure_time_us is not None:
            want("ExposureTime", opts.exposure_time_us, "exposure_time_us")
        hflip, vflip = TRANSFORMS[opts.transform]
        lores = None
        if self.lores_size is not None:
            lores = {"size": self.lores_size, "format": "YUV420"}
        return cam.create_video_configuration(
            main={"size": self.main_size, "format": "RGB888"},
            lores=lores,
            controls=controls,
            buffer_count=self.buffer_count,
            transform=libcamera.Transform(hflip=int(hflip), vflip=int(vflip)),
            colour_space=getattr(libcamera.ColorSpace, COLOUR_SPACES[opts.colour_space])(),
            sensor=opts.sensor(),
        )

    def _check_sensor(self, cam: Any, actual: dict[str, Any]) -> None:
        sensor = actual.get("sensor") or {}
        got = tuple(sensor.get("output_size") or ())
        want = self.options.sensor_output_size
        if want is not None and got != tuple(want):
            modes = sorted({tuple(m["size"]) for m in getattr(cam, "_raw_modes", [])})
            listed = ", ".join(f"{w}x{h}" for w, h in modes) or "unknown"
            raise SourceFatalError(
                f"{self.name}: sensor_output_size {want[0]}x{want[1]} is not a mode of this "
                f"camera (modes: {listed})"
            )
        crop = cam.camera_controls.get("ScalerCrop", (None, None, None))[1]
        full = cam.camera_properties.get("PixelArraySize")
        if crop and full and crop[2] < 0.95 * full[0]:
            log.warning(
                "%s: sensor mode %s reads %d of the sensor's %d columns (a cropped field of "
                "view): set [source] sensor_output_size to a full-width mode",
                self.name, "x".join(map(str, got)) or "?", crop[2], full[0],
            )

    # -- reading --------------------------------------------------------------------------

    def _read(self) -> Frame:
        if self._cam is None:
            raise SourceError(f"{self.name}: not open")
        job = self._cam.capture_request(wait=False)
        try:
            request = self._cam.wait(job, timeout=self.timeout_s)
        except TimeoutError as exc:
            raise SourceError(
                f"{self.name}: lost: TimeoutError: no frame within {self.timeout_s:g} s"
            ) from exc
        try:
            metadata = request.get_metadata()
            main = request.make_array("main")
            lores = request.make_array("lores") if self.lores_size is not None else None
        finally:
            request.release()
        captured_at = _wall_time(metadata.get("SensorTimestamp"))
        duration = metadata.get("FrameDuration")
        if isinstance(duration, int | float) and duration > 0:
            self._frame_us = float(duration)
        image = _main_to_bgr(main)
        detect = None
        if lores is not None:
            encoding, full_range = self._lores_encoding
            detect = i420_to_bgr(lores, self._lores_width, encoding, full_range)
        return self._frame(image, detect, captured_at)

    # -- closing --------------------------------------------------------------------------

    def _close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is None:
            return
        # A timed-out capture job is still queued: cancel it first, then close() (which
        # stops the event loop and the camera directly, never through a queued job).
        for step in ("cancel_all_and_flush", "close"):
            method = getattr(cam, step, None)
            if method is None:
                continue
            try:
                method()
            except Exception as exc:  # a lost camera may fail to stop; close it anyway
                log.warning("%s: %s failed: %s", self.name, step, exc)
                if step == "close":
                    _release_pipe(cam)


def _busy(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if "busy" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _release_pipe(cam: Any) -> None:
    """Close the notification pipe picamera2 opens in ``__init__`` (its close() may not)."""
    reader = getattr(cam, "notifymeread", None)
    if reader is not None:
        with contextlib.suppress(Exception):
            reader.close()
    writer = getattr(cam, "notifyme_w", None)
    if isinstance(writer, int):
        with contextlib.suppress(OSError):
            os.close(writer)
        with contextlib.suppress(Exception):
            cam.notifyme_w = None


def _discard(cls: Any, cam: Any) -> None:
    """Undo a failed ``Picamera2.__init__``: its camera, its pipe, its manager entry."""
    if getattr(cam, "is_open", False):
        with contextlib.suppress(Exception):
            cam.close()  # acquired, then failed later: close() releases it and the pipe
            return
    manager = getattr(cls, "_cm", None)
    entries = getattr(manager, "cameras", None)
    idx = getattr(cam, "camera_idx", None)
    if manager is not None and isinstance(entries, dict) and entries.get(idx) is cam:
        with contextlib.suppress(Exception):
            manager.cleanup(idx)  # 0.3.36 registers the camera before acquiring it
    with contextlib.suppress(Exception):
        import atexit

        atexit.unregister(cam.close)
    _release_pipe(cam)


def _encoding(colour_space: Any) -> tuple[str, bool]:
    """(matrix, full range) of a libcamera ColorSpace, BT.601 limited when unknown."""
    if colour_space is None:
        return "Rec601", False
    matrix = getattr(getattr(colour_space, "ycbcrEncoding", None), "name", "Rec601")
    full = getattr(getattr(colour_space, "range", None), "name", "Limited") == "Full"
    return ("Rec709" if matrix == "Rec709" else "Rec601"), full


def _wall_time(sensor_ns: Any) -> float:
    """The wall-clock time of a CLOCK_MONOTONIC ``SensorTimestamp``; now when absent."""
    now, mono = time.time(), time.monotonic_ns()
    if not isinstance(sensor_ns, int) or sensor_ns <= 0:
        return now
    age_s = (mono - sensor_ns) / 1e9
    return now - age_s if 0.0 <= age_s < 60.0 else now


def _main_to_bgr(array: np.ndarray) -> ImageU8:
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise SourceError(f"main stream returned shape {array.shape} {array.dtype}, want HxWx3")
    return np.ascontiguousarray(array)  # RGB888 is BGR in memory already
