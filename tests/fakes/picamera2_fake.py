"""A faithful, hardware-free stand-in for the parts of picamera2 the edge uses.

Inject it with ``monkeypatch.setitem(sys.modules, "picamera2", picamera2_fake)``.
It mirrors picamera2 (raspberrypi/picamera2, v0.3.20+) where our code can
tell the difference:

- ``Picamera2(camera_num)`` indexes ``global_camera_info()`` (IndexError when
  there is no such camera) and acquires the camera exclusively (a second open
  of the same camera raises RuntimeError, as libcamera's "Device or resource
  busy" does); ``close()`` releases it and is idempotent.
- ``create_video_configuration(main=..., lores=..., ...)`` returns the same
  dict shape with the same defaults (main XBGR8888 1280x720, lores YUV420 at
  the main size, buffer_count 6, FrameDurationLimits 33333 us), rejects
  unknown stream keys (ValueError), and aligns sizes to even numbers.
- ``configure()`` validates like ``check_camera_config`` (formats, even sizes,
  lores no larger than main, lores must be YUV on VC4, not while started) and
  fills in ``stride`` and ``framesize`` per stream, with strides padded to
  ``stride_align`` bytes as the ISP does.
- ``capture_request(wait=...)``/``captured_request(wait=...)``: one completed
  request per call; ``wait`` a number -> ``TimeoutError`` when no frame can
  come (camera stopped, stalled, or all buffers held by the caller), ``wait``
  None -> a ``RuntimeError`` where real picamera2 would block forever.
- ``CompletedRequest.make_array(name)`` returns a copy shaped like picamera2's
  helpers: ``RGB888`` (h, w, 3) **BGR in memory**, ``XBGR8888`` (h, w, 4),
  ``YUV420`` planar I420 as (h * 3 // 2, stride) with the stride padding left
  in; ``make_buffer`` the flat bytes; using a released request raises.

Both streams show the same synthetic scene (a gradient with a pure red
square that moves one step per frame, drawn at the main size and scaled for
lores), so a test can check that ``lores`` is
the same instant as ``main`` and that colours come out in the right order.

Hardware faults are simulated with :func:`unplug` (the camera disappears:
pending and later captures raise, it is no longer enumerated), :func:`stall`
(frames stop coming: captures time out) and :func:`plug` (it is back).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

RGB_FORMATS = {"RGB888": 3, "BGR888": 3, "XBGR8888": 4, "XRGB8888": 4}
YUV_FORMATS = {"YUV420", "YVU420"}
SENSOR_SIZE = (4608, 2592)
SQUARE = 0.25  # side of the red square, as a fraction of the image height
PADDING_BYTE = 0xAA


@dataclass
class _Camera:
    num: int
    model: str = "imx708"
    plugged: bool = True
    stalled: bool = False
    error: BaseException | None = None


@dataclass
class _Hardware:
    platform: str = "PISP"  # "VC4" (Pi 4 and older) or "PISP" (Pi 5)
    stride_align: int = 64
    cameras: list[_Camera] = field(default_factory=lambda: [_Camera(0)])
    acquired: set[int] = field(default_factory=set)
    opens: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


HARDWARE = _Hardware()


def reset(cameras: int = 1, *, platform: str = "PISP", stride_align: int = 64) -> None:
    """Forget all state: ``cameras`` plugged-in cameras, nothing acquired."""
    global HARDWARE
    HARDWARE = _Hardware(
        platform=platform,
        stride_align=stride_align,
        cameras=[_Camera(i) for i in range(cameras)],
    )


def unplug(num: int = 0, error: BaseException | None = None) -> None:
    """The camera is lost: captures raise ``error`` (default a RuntimeError)."""
    cam = HARDWARE.cameras[num]
    cam.plugged = False
    cam.error = error or RuntimeError("Camera frontend has timed out!")


def stall(num: int = 0) -> None:
    """The camera stops delivering frames (captures with a timeout raise TimeoutError)."""
    HARDWARE.cameras[num].stalled = True


def plug(num: int = 0) -> None:
    """The camera works again."""
    cam = HARDWARE.cameras[num]
    cam.plugged = True
    cam.stalled = False
    cam.error = None


def _align_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


def scene(frame_no: int, width: int, height: int) -> np.ndarray:
    """The BGR picture the fake sensor sees at ``frame_no`` (deterministic)."""
    xs = np.linspace(0, 255, width, dtype=np.float32)
    ys = np.linspace(0, 255, height, dtype=np.float32)
    image = np.empty((height, width, 3), np.uint8)
    image[..., 0] = (0.5 * ys[:, None] + 64).astype(np.uint8)  # blue varies with y
    image[..., 1] = (0.5 * xs[None, :] + 32).astype(np.uint8)  # green varies with x
    image[..., 2] = 40
    side = max(2, int(SQUARE * height))
    x0 = (frame_no * max(1, width // 50)) % max(1, width - side)
    y0 = (height - side) // 2
    image[y0 : y0 + side, x0 : x0 + side] = (0, 0, 255)  # pure red, BGR
    return image


def square_box(frame_no: int, width: int, height: int) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) of the red square in :func:`scene` at the main stream's size."""
    side = max(2, int(SQUARE * height))
    x0 = (frame_no * max(1, width // 50)) % max(1, width - side)
    y0 = (height - side) // 2
    return x0, y0, x0 + side, y0 + side


def _stream_bytes(sensor: np.ndarray, cfg: dict[str, Any]) -> np.ndarray:
    """The stream's buffer as the ISP writes it: flat, rows padded to the stride.

    ``sensor`` is the BGR picture of this instant at the main stream's size;
    other streams are scaled from it, as the ISP scales one sensor readout.
    """
    fmt = cfg["format"]
    w, h = cfg["size"]
    stride = cfg["stride"]
    picture = sensor
    if (sensor.shape[1], sensor.shape[0]) != (w, h):
        picture = cv2.resize(sensor, (w, h), interpolation=cv2.INTER_AREA)
    if fmt in RGB_FORMATS:
        if fmt in ("BGR888", "XRGB8888"):  # these are RGB in memory
            picture = picture[..., ::-1]
        if RGB_FORMATS[fmt] == 4:
            picture = np.concatenate([picture, np.full((h, w, 1), 255, np.uint8)], axis=2)
        rows = np.full((h, stride), PADDING_BYTE, np.uint8)
        rows[:, : w * RGB_FORMATS[fmt]] = picture.reshape(h, -1)
        return rows.reshape(-1)
    if fmt in YUV_FORMATS:
        i420 = cv2.cvtColor(picture, cv2.COLOR_BGR2YUV_I420).reshape(-1)
        y = i420[: w * h].reshape(h, w)
        u = i420[w * h : w * h + (w // 2) * (h // 2)].reshape(h // 2, w // 2)
        v = i420[w * h + (w // 2) * (h // 2) :].reshape(h // 2, w // 2)
        if fmt == "YVU420":
            u, v = v, u
        out = np.full(stride * h * 3 // 2, PADDING_BYTE, np.uint8)
        out[: stride * h].reshape(h, stride)[:, :w] = y
        half = stride // 2
        u_plane = out[stride * h : stride * h + half * (h // 2)].reshape(h // 2, half)
        u_plane[:, : w // 2] = u
        v_plane = out[stride * h + half * (h // 2) :].reshape(h // 2, half)
        v_plane[:, : w // 2] = v
        return out
    raise RuntimeError("Format " + fmt + " not supported")


class CompletedRequest:
    """One frame's buffers, held until :meth:`release` (as picamera2's is)."""

    def __init__(self, picam2: Picamera2, frame_no: int) -> None:
        self.picam2 = picam2
        self.ref_count = 1
        self.config = copy.deepcopy(picam2.camera_config)
        self.frame_no = frame_no
        self._timestamp_ns = time.monotonic_ns()
        self._buffers: dict[str, np.ndarray] = {}
        sensor = scene(frame_no, *self.config["main"]["size"])
        for name in ("main", "lores"):
            cfg = self.config.get(name)
            if cfg is not None:
                self._buffers[name] = _stream_bytes(sensor, cfg)

    def _buffer(self, name: str) -> np.ndarray:
        if self.config.get(name) is None:
            raise RuntimeError(f"Stream {name!r} is not defined")
        if self.ref_count <= 0:
            raise RuntimeError("failed to find buffer")
        return self._buffers[name]

    def make_buffer(self, name: str) -> np.ndarray:
        return np.array(self._buffer(name), dtype=np.uint8)

    def make_array(self, name: str) -> np.ndarray:
        buffer = self._buffer(name)
        cfg = self.config[name]
        fmt = cfg["format"]
        w, h = cfg["size"]
        stride = cfg["stride"]
        if fmt in RGB_FORMATS:
            channels = RGB_FORMATS[fmt]
            array = buffer.reshape(h, stride)[:, : w * channels]
            return np.ascontiguousarray(array.reshape(h, w, channels))
        if fmt in YUV_FORMATS:
            return np.copy(buffer.reshape(h * 3 // 2, stride))
        raise RuntimeError("Format " + fmt + " not supported")

    def get_metadata(self) -> dict[str, Any]:
        duration = self.config["controls"].get("FrameDurationLimits", (33333, 33333))[0]
        return {
            "SensorTimestamp": self._timestamp_ns,
            "FrameDuration": duration,
            "ExposureTime": min(duration, 20000),
            "AnalogueGain": 1.0,
        }

    def acquire(self) -> None:
        with self.picam2.request_lock:
            if self.ref_count == 0:
                raise RuntimeError("CompletedRequest: acquiring lock with ref_count 0")
            self.ref_count += 1

    def release(self) -> None:
        with self.picam2.request_lock:
            self.ref_count -= 1
            if self.ref_count < 0:
                raise RuntimeError("CompletedRequest: lock now has negative ref_count")
            if self.ref_count == 0:
                self.picam2._outstanding.discard(self)
                self._buffers = {}


class Picamera2:
    """The subset of ``picamera2.Picamera2`` a capture pipeline uses."""

    @staticmethod
    def global_camera_info() -> list[dict[str, Any]]:
        return [
            {
                "Model": c.model,
                "Location": 2,
                "Rotation": 0,
                "Id": f"/base/cam{c.num}",
                "Num": c.num,
            }
            for c in HARDWARE.cameras
            if c.plugged
        ]

    def __init__(
        self,
        camera_num: int = 0,
        verbose_console: int | None = None,
        tuning: Any = None,
        allocator: Any = None,
    ) -> None:
        self.is_open = False
        self.started = False
        self.camera_config: dict[str, Any] = {}
        self.request_lock = threading.Lock()
        self._outstanding: set[CompletedRequest] = set()
        self._frames = itertools.count()
        self.stop_count = 0
        self.configure_count = 0
        num = self.global_camera_info()[camera_num]["Num"]  # IndexError, as the real one
        with HARDWARE.lock:
            if num in HARDWARE.acquired:
                raise RuntimeError("Camera __init__ sequence did not complete.")
            HARDWARE.acquired.add(num)
            HARDWARE.opens += 1
        self.camera_idx = num
        self._camera = HARDWARE.cameras[num]
        self.is_open = True

    # -- properties ------------------------------------------------------------

    @property
    def camera_properties(self) -> dict[str, Any]:
        return {
            "Model": self._camera.model,
            "PixelArraySize": SENSOR_SIZE,
            "ColorFilterArrangement": 0,
        }

    @property
    def sensor_resolution(self) -> tuple[int, int]:
        return SENSOR_SIZE

    # -- configuration ---------------------------------------------------------

    @staticmethod
    def _make_initial_stream_config(
        stream_config: dict[str, Any], updates: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        if updates is None:
            return None
        valid = ("format", "size", "stride", "preserve_ar")
        for key, value in updates.items():
            if key not in valid:
                raise ValueError(f"Bad key {key!r}: valid stream configuration keys are {valid}")
            stream_config[key] = value
        return stream_config

    @staticmethod
    def align_stream(stream_config: dict[str, Any], optimal: bool = True) -> None:
        if optimal:
            align = 32 if HARDWARE.platform == "VC4" else 64
            if stream_config["format"] in YUV_FORMATS:
                align *= 2
            elif stream_config["format"] in ("XBGR8888", "XRGB8888"):
                align //= 2
        else:
            align = 2
        w, h = stream_config["size"]
        stream_config["size"] = (w - w % align, h - h % 2)

    def create_video_configuration(
        self,
        main: dict[str, Any] | None = None,
        lores: dict[str, Any] | None = None,
        raw: dict[str, Any] | None = None,
        transform: Any = None,
        colour_space: Any = None,
        buffer_count: int = 6,
        controls: dict[str, Any] | None = None,
        display: str | None = "main",
        encode: str | None = "main",
        queue: bool = True,
        sensor: dict[str, Any] | None = None,
        use_case: str = "video",
    ) -> dict[str, Any]:
        if not self.is_open:
            raise RuntimeError("Camera not opened")
        main_cfg = self._make_initial_stream_config(
            {"format": "XBGR8888", "size": (1280, 720), "preserve_ar": True}, main or {}
        )
        assert main_cfg is not None
        self.align_stream(main_cfg, optimal=False)
        lores_cfg = self._make_initial_stream_config(
            {"format": "YUV420", "size": main_cfg["size"], "preserve_ar": False}, lores
        )
        if lores_cfg is not None:
            self.align_stream(lores_cfg, optimal=False)
        raw_cfg = {"format": "SBGGR10_CSI2P", "size": main_cfg["size"]} | (raw or {})
        if colour_space is None:
            w, h = main_cfg["size"]
            colour_space = "Smpte170m" if w < 1280 or h < 720 else "Rec709"
        all_controls = {"NoiseReductionMode": 1, "FrameDurationLimits": (33333, 33333)} | (
            controls or {}
        )
        config: dict[str, Any] = {
            "use_case": use_case,
            "transform": transform or "Transform(identity)",
            "colour_space": colour_space,
            "buffer_count": buffer_count,
            "queue": queue,
            "main": main_cfg,
            "lores": lores_cfg,
            "raw": raw_cfg,
            "controls": all_controls,
            "sensor": sensor or {},
            "display": display,
            "encode": encode,
        }
        for name in (display, encode):
            if name is not None and config.get(name) is None:
                raise RuntimeError(f"Display stream {name} was not defined")
        return config

    @staticmethod
    def _check_stream_config(stream_config: Any, name: str) -> None:
        if type(stream_config) is not dict:
            raise RuntimeError(name + " stream should be a dictionary")
        for key in ("format", "size"):
            if key not in stream_config:
                raise RuntimeError(f"{key} not found in {name} stream")
        fmt = stream_config["format"]
        if fmt not in RGB_FORMATS and fmt not in YUV_FORMATS:
            raise RuntimeError("Bad format " + str(fmt) + " in stream " + name)
        size = stream_config["size"]
        if type(size) is not tuple or len(size) != 2:
            raise RuntimeError("size in " + name + " stream should be (width, height)")
        if size[0] % 2 or size[1] % 2:
            raise RuntimeError("width and height should be even")

    def configure(self, camera_config: dict[str, Any] | None = None) -> None:
        if not self.is_open:
            raise RuntimeError("Camera not opened")
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        if camera_config is None:
            camera_config = self.create_video_configuration()
        config = copy.deepcopy(camera_config)
        for key in ("colour_space", "transform", "main", "lores", "raw"):
            if key not in config:
                raise RuntimeError(f"{key!r} key expected in camera configuration")
        self._check_stream_config(config["main"], "main")
        if config["lores"] is not None:
            self._check_stream_config(config["lores"], "lores")
            mw, mh = config["main"]["size"]
            lw, lh = config["lores"]["size"]
            if lw > mw or lh > mh:
                raise RuntimeError("lores stream dimensions may not exceed main stream")
            if HARDWARE.platform == "VC4" and config["lores"]["format"] not in YUV_FORMATS:
                raise RuntimeError("lores stream must be YUV")
        for name in ("main", "lores"):
            cfg = config[name]
            if cfg is None:
                continue
            w, h = cfg["size"]
            if cfg["format"] in RGB_FORMATS:
                cfg["stride"] = _align_up(w * RGB_FORMATS[cfg["format"]], HARDWARE.stride_align)
                cfg["framesize"] = cfg["stride"] * h
            else:
                cfg["stride"] = _align_up(w, HARDWARE.stride_align)
                cfg["framesize"] = cfg["stride"] * h * 3 // 2
        self.camera_config = config
        self.configure_count += 1

    def camera_configuration(self) -> dict[str, Any]:
        return self.camera_config

    def stream_configuration(self, name: str = "main") -> dict[str, Any]:
        cfg: dict[str, Any] = self.camera_config[name]
        return cfg

    # -- running ---------------------------------------------------------------

    def start(self, config: dict[str, Any] | None = None, show_preview: bool = False) -> None:
        if config is not None:
            self.configure(config)
        if not self.camera_config:
            raise RuntimeError("Camera has not been configured")
        self.started = True

    def stop(self) -> None:
        if self.started:
            self.stop_count += 1
            self.started = False

    def cancel_all_and_flush(self) -> None:
        """Cancels pending jobs; the fake has none (captures never run asynchronously)."""

    def close(self) -> None:
        if not self.is_open:
            return
        self.stop()
        with HARDWARE.lock:
            HARDWARE.acquired.discard(self.camera_idx)
        self.is_open = False
        self.camera_config = {}

    def capture_request(self, wait: Any = None, flush: Any = None) -> CompletedRequest:
        if not self.is_open:
            raise RuntimeError("Camera not opened")
        cam = self._camera
        if not cam.plugged and cam.error is not None:
            raise cam.error
        blocked = (
            not self.started
            or cam.stalled
            or len(self._outstanding) >= int(self.camera_config.get("buffer_count", 1))
        )
        if blocked:
            if wait is None or wait is True:
                raise RuntimeError("fake picamera2: this capture would block forever")
            raise TimeoutError()
        request = CompletedRequest(self, next(self._frames))
        self._outstanding.add(request)
        return request

    @contextlib.contextmanager
    def captured_request(self, wait: Any = None, flush: Any = None) -> Iterator[CompletedRequest]:
        request = self.capture_request(wait=wait, flush=flush)
        try:
            yield request
        finally:
            request.release()

    def capture_array(self, name: str = "main", wait: Any = None) -> np.ndarray:
        with self.captured_request(wait=wait) as request:
            return request.make_array(name)

    def __enter__(self) -> Picamera2:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
