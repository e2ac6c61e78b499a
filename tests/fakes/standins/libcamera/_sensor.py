"""The simulated camera hardware behind the libcamera stand-in: sensors, modes, the ISP.

``RIG`` holds the cameras. A test changes the hardware with :func:`reset`, :func:`unplug`
(a CSI ribbon pulled out: the camera stays enumerated, as CSI cameras do, but ``start()``
fails and frames stop, so picamera2's wait times out), :func:`stall` (frames stop),
:func:`plug`, :func:`hold` (another process has the camera: ``acquire()`` is refused).

Sensor models follow the real ones: ``imx708`` (Camera Module 3, autofocus; its
1536x864 mode crops the pixel array to 3072x1728) and ``imx219`` (Camera Module 2, fixed
focus, no Af* controls); ``no_vblank`` is a third-party sensor whose driver gives libcamera no
frame-length control (no ``FrameDurationLimits``).

The ISP renders one scene, defined in pixel-array coordinates, into every output stream:
the crop (``ScalerCrop``) is the largest centred rectangle of the sensor mode's field with
main's aspect ratio, shared by every output stream, so a lores stream of another aspect
ratio is squeezed, as on the Pi. RGB streams are written BGR in memory for ``RGB888``; YUV420
is planar with the luma stride padded to 64 bytes and encoded with the stream's colour space
(Rec.601 or Rec.709 matrix, limited or full range).
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from libcamera._isp import BYTES_PER_PIXEL, render

STRIDE_ALIGN = 64


@dataclass(frozen=True)
class Mode:
    format: str
    size: tuple[int, int]
    crop: tuple[int, int, int, int]  # the part of the pixel array the mode reads
    min_frame_us: int


@dataclass(frozen=True)
class SensorModel:
    name: str
    pixel_array: tuple[int, int]
    modes: tuple[Mode, ...]
    autofocus: bool
    frame_duration_control: bool = True
    raspberry_pi: bool = True


IMX708 = SensorModel(
    "imx708", (4608, 2592),
    (
        Mode("SRGGB10_CSI2P", (1536, 864), (768, 432, 3072, 1728), 8_333),
        Mode("SRGGB10_CSI2P", (2304, 1296), (0, 0, 4608, 2592), 17_849),
        Mode("SRGGB10_CSI2P", (4608, 2592), (0, 0, 4608, 2592), 69_669),
    ),
    autofocus=True,
)
IMX219 = SensorModel(
    "imx219", (3280, 2464),
    (
        Mode("SRGGB10_CSI2P", (640, 480), (1000, 752, 1280, 960), 9_709),
        Mode("SRGGB10_CSI2P", (1640, 1232), (0, 0, 3280, 2464), 24_390),
        Mode("SRGGB10_CSI2P", (1920, 1080), (680, 692, 1920, 1080), 21_276),
        Mode("SRGGB10_CSI2P", (3280, 2464), (0, 0, 3280, 2464), 47_619),
    ),
    autofocus=False,
)
NO_VBLANK = dataclasses.replace(IMX219, name="no_vblank", frame_duration_control=False)
MODELS = {m.name: m for m in (IMX708, IMX219, NO_VBLANK)}


def _control_info(
    model: SensorModel, mode: Mode, crop: tuple[int, int, int, int]
) -> dict[str, tuple[Any, Any, Any]]:
    from libcamera._libcamera import Rectangle

    info: dict[str, tuple[Any, Any, Any]] = {
        "AeEnable": (False, True, True), "AeMeteringMode": (0, 3, 0),
        "AeConstraintMode": (0, 3, 0), "AeExposureMode": (0, 3, 0),
        "ExposureValue": (-8.0, 8.0, 0.0), "ExposureTime": (26, 112_015_443, 20_000),
        "ExposureTimeMode": (0, 1, 0), "AnalogueGain": (1.0, 16.0, 1.0),
        "AnalogueGainMode": (0, 1, 0), "Brightness": (-1.0, 1.0, 0.0),
        "Contrast": (0.0, 32.0, 1.0), "Saturation": (0.0, 32.0, 1.0),
        "Sharpness": (0.0, 16.0, 1.0), "AwbEnable": (False, True, True),
        "AwbMode": (0, 7, 0), "ColourGains": (0.0, 32.0, 0.0),
        "ScalerCrop": (Rectangle(0, 0, 64, 64), Rectangle(*mode.crop), Rectangle(*crop)),
        "NoiseReductionMode": (0, 4, 0),
    }
    if model.frame_duration_control:
        info["FrameDurationLimits"] = (mode.min_frame_us, 694_444_445, 33_333)
    if model.autofocus:
        info |= {
            "AfMode": (0, 2, 0), "AfRange": (0, 2, 0), "AfSpeed": (0, 1, 0),
            "AfTrigger": (0, 1, 0), "AfMetering": (0, 1, 0),
            "AfWindows": (Rectangle(0, 0, 0, 0), Rectangle(65535, 65535, 65535, 65535),
                          Rectangle(0, 0, 0, 0)),
            "AfPause": (0, 2, 0), "LensPosition": (0.0, 15.0, 1.0),
        }
    return info


@dataclass
class CameraHardware:
    num: int
    model: SensorModel
    plugged: bool = True
    stalled: bool = False
    held_elsewhere: bool = False
    latency_s: float = 0.0  # from the start of exposure to the request completing
    owner: Any = None
    started: bool = False
    streams: list[Any] = field(default_factory=list)
    mode: Mode | None = None
    last_mode: Mode | None = None  # the mode of the last configure(), kept after release
    crop: tuple[int, int, int, int] = (0, 0, 0, 0)
    controls: dict[str, Any] = field(default_factory=dict)  # what the camera was told, by name
    queue_: list[Any] = field(default_factory=list)
    sequence: int = 0
    timestamps: list[int] = field(default_factory=list)  # SensorTimestamp of each frame
    lock: threading.Lock = field(default_factory=threading.Lock)
    wake: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    @property
    def id(self) -> str:
        return f"/base/axi/pcie@120000/rp1/i2c@{80000 + self.num * 8000}/{self.model.name}@1a"

    def control_info(self) -> dict[str, tuple[Any, Any, Any]]:
        mode = self.mode or self.model.modes[-1]
        return _control_info(self.model, mode, self.crop if self.mode else mode.crop)

    def acquire(self, cam: Any) -> None:
        with self.lock:
            if self.held_elsewhere or (self.owner is not None and self.owner is not cam):
                raise RuntimeError("Failed to acquire camera: Device or resource busy")
            if self.owner is cam:
                raise RuntimeError("Failed to acquire camera: Device or resource busy")
            self.owner = cam

    def release(self, cam: Any) -> None:
        with self.lock:
            if self.owner is not cam:
                raise RuntimeError("Failed to release camera: Operation not permitted")
            if self.started:
                raise RuntimeError("Failed to release camera: Device or resource busy")
            self.owner = None
            self.mode = None

    def configure(self, cam: Any, config: Any) -> int:
        if self.owner is not cam or self.started:
            return -13  # -EACCES, as libcamera returns
        status = validate(config, self)
        if status.name == "Invalid":
            return -22
        self.streams = [sc for sc in config]
        self.mode = self.last_mode = _mode_for(self.model, config)
        main_w, main_h = config.at(0).size.width, config.at(0).size.height
        self.crop = _fit_crop(self.mode.crop, main_w / main_h)
        self.orientation = config.orientation
        self.controls = {}
        return 0

    def start(self, cam: Any, controls: dict[Any, Any]) -> None:
        if self.owner is not cam:
            raise RuntimeError("Failed to start camera: Permission denied")
        if not self.plugged:
            raise RuntimeError("Failed to start camera: Input/output error")
        self._apply(controls)
        self.started = True
        self.wake.clear()
        self.thread = threading.Thread(target=self._run, name=f"sensor{self.num}", daemon=True)
        self.thread.start()

    def stop(self, cam: Any) -> None:
        if self.owner is not cam:
            raise RuntimeError("Failed to stop camera: Permission denied")
        if not self.started:
            return
        self.started = False
        self.wake.set()
        if self.thread is not None:
            self.thread.join()
        from libcamera._libcamera import CameraManager, Request

        with self.lock:
            pending, self.queue_ = self.queue_, []
        for request in pending:  # libcamera completes every pending request as cancelled
            request.status = Request.Status.Cancelled
            for buffer in request.buffers.values():
                buffer.metadata.status = type(buffer.metadata).Status.Cancelled
            CameraManager.singleton().complete(request)

    def queue(self, cam: Any, request: Any) -> None:
        if self.owner is not cam or not self.started:
            raise RuntimeError("Failed to queue request: Permission denied")
        with self.lock:
            self.queue_.append(request)

    def _apply(self, controls: dict[Any, Any]) -> None:
        for cid, value in controls.items():
            self.controls[cid.name] = value

    def frame_us(self) -> int:
        assert self.mode is not None
        limits = self.controls.get("FrameDurationLimits", (33_333, 33_333))
        if not self.model.frame_duration_control:
            limits = (33_333, 33_333)
        return int(max(self.mode.min_frame_us, limits[0]))

    def _run(self) -> None:
        from libcamera._libcamera import CONTROL_IDS, CameraManager, Request

        manager = CameraManager.singleton()
        while not self.wake.wait(self.frame_us() / 1e6):
            if not self.plugged or self.stalled:
                continue  # "Camera frontend has timed out!": nothing completes
            with self.lock:
                request = self.queue_.pop(0) if self.queue_ else None
            if request is None:
                continue  # every buffer is held by the application: the frame is dropped
            self._apply(request.controls)
            exposed = time.monotonic_ns() - int(self.latency_s * 1e9)
            self.sequence += 1
            for stream, buffer in request.buffers.items():
                data = render(self, stream.configuration, self.sequence)
                os.pwrite(buffer.planes[0].fd, data, buffer.planes[0].offset)
                buffer.metadata.status = type(buffer.metadata).Status.Success
                buffer.metadata.sequence = self.sequence
                buffer.metadata.planes = [_BytesUsed(len(data))]
            exposure = int(self.controls.get("ExposureTime") or min(self.frame_us(), 20_000))
            meta = {
                "SensorTimestamp": exposed, "FrameDuration": self.frame_us(),
                "ExposureTime": exposure, "AnalogueGain": 1.0, "DigitalGain": 1.0,
                "ScalerCrop": _rect(self.crop), "Lux": 400.0,
            }
            if self.model.autofocus:
                meta["LensPosition"] = 1.0 if self.controls.get("AfMode", 0) == 0 else 0.5
                meta["AfState"] = 2 if self.controls.get("AfMode", 0) == 2 else 0
            self.timestamps.append(exposed)
            request.metadata = {CONTROL_IDS[k]: v for k, v in meta.items()}
            request.sequence = self.sequence
            request.status = Request.Status.Complete
            manager.complete(request)


@dataclass
class _BytesUsed:
    bytes_used: int


def _rect(crop: tuple[int, int, int, int]) -> Any:
    from libcamera._libcamera import Rectangle

    return Rectangle(*crop)


def _fit_crop(field_: tuple[int, int, int, int], aspect: float) -> tuple[int, int, int, int]:
    x, y, w, h = field_
    if w / h > aspect:
        cw, ch = round(h * aspect), h
    else:
        cw, ch = w, round(w / aspect)
    return x + (w - cw) // 2, y + (h - ch) // 2, cw, ch


def _mode_for(model: SensorModel, config: Any) -> Mode:
    sensor = config.sensor_config
    if sensor is not None:
        want = (sensor.output_size.width, sensor.output_size.height)
        for mode in model.modes:
            if mode.size == want and bit_depth(mode.format) == sensor.bit_depth:
                return mode
    return model.modes[-1]


def bit_depth(fmt: str) -> int:
    """10 for ``SRGGB10_CSI2P``."""
    match = re.search(r"(\d+)$", fmt.split("_")[0])
    return int(match.group(1)) if match else 8


def validate(config: Any, hw: CameraHardware) -> Any:
    """libcamera's ``CameraConfiguration::validate()`` for the Raspberry Pi pipeline."""
    from libcamera._libcamera import CameraConfiguration, Orientation, PixelFormat, Size

    status = CameraConfiguration.Status.Valid
    if config.orientation not in (Orientation.Rotate0, Orientation.Rotate180,
                                  Orientation.Rotate0Mirror, Orientation.Rotate180Mirror):
        config.orientation = Orientation.Rotate0  # the sensor cannot transpose
        status = CameraConfiguration.Status.Adjusted
    sensor = config.sensor_config
    if sensor is not None:
        want = (sensor.output_size.width, sensor.output_size.height)
        if not any(m.size == want for m in hw.model.modes):
            return CameraConfiguration.Status.Invalid
    mode = _mode_for(hw.model, config)
    for sc in config:
        fmt = str(sc.pixel_format)
        if sc.role.name == "Raw":
            if (sc.size.width, sc.size.height) != mode.size or fmt != mode.format:
                sc.size, sc.pixel_format = Size(*mode.size), PixelFormat(mode.format)
                status = CameraConfiguration.Status.Adjusted
            sc.stride = _align(mode.size[0] * 10 // 8)
            sc.frame_size = sc.stride * mode.size[1]
            continue
        if fmt not in BYTES_PER_PIXEL and fmt not in ("YUV420", "YVU420"):
            sc.pixel_format = PixelFormat("YUV420")
            fmt = "YUV420"
            status = CameraConfiguration.Status.Adjusted
        w = min(sc.size.width, hw.model.pixel_array[0]) & ~1
        h = min(sc.size.height, hw.model.pixel_array[1]) & ~1
        if (w, h) != (sc.size.width, sc.size.height):
            sc.size = Size(w, h)
            status = CameraConfiguration.Status.Adjusted
        if fmt in ("YUV420", "YVU420"):
            sc.stride = _align(w, STRIDE_ALIGN * 2)
            sc.frame_size = sc.stride * h * 3 // 2
        else:
            sc.stride = _align(w * BYTES_PER_PIXEL[fmt])
            sc.frame_size = sc.stride * h
    return status


def _align(value: int, align: int = STRIDE_ALIGN) -> int:
    return (value + align - 1) // align * align


# -- the rig -------------------------------------------------------------------------------


@dataclass
class Rig:
    cameras: list[CameraHardware] = field(default_factory=list)

    def enumerated(self) -> list[CameraHardware]:
        return list(self.cameras)


RIG = Rig([CameraHardware(0, IMX708)])


def reset(*models: str) -> Rig:
    """Replace the rig: one camera per model name (none: no camera attached)."""
    for hw in RIG.cameras:
        hw.started = False
        hw.wake.set()
        if hw.thread is not None:
            hw.thread.join()
    RIG.cameras = [CameraHardware(i, MODELS[m]) for i, m in enumerate(models)]
    return RIG


def camera(num: int = 0) -> CameraHardware:
    return RIG.cameras[num]


def unplug(num: int = 0) -> None:
    RIG.cameras[num].plugged = False


def stall(num: int = 0) -> None:
    RIG.cameras[num].stalled = True


def plug(num: int = 0) -> None:
    hw = RIG.cameras[num]
    hw.plugged, hw.stalled = True, False


def hold(num: int = 0, held: bool = True) -> None:
    """Another process has (or no longer has) the camera."""
    RIG.cameras[num].held_elsewhere = held
