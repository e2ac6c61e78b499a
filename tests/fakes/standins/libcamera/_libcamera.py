"""Stand-in for libcamera's Python bindings (the ``_libcamera`` extension module).

Only what picamera2 (0.3.x) calls, with the same names, types and failure modes as the
pybind11 bindings of libcamera 0.3-0.5 on a Raspberry Pi:

- ``CameraManager.singleton()`` lists the cameras of the simulated rig
  (:mod:`libcamera._sensor`); ``event_fd`` is a real eventfd that becomes readable when
  requests complete, ``get_ready_requests()`` drains it.
- ``Camera.acquire()`` raises ``RuntimeError("Failed to acquire camera: Device or resource
  busy")`` when another process holds the camera; ``start()`` raises when the sensor does
  not answer; ``queue_request()`` refuses while stopped; ``stop()`` completes every pending
  request as cancelled, as libcamera does.
- ``CameraConfiguration.validate()`` fills in stride and frame size (rows padded to the
  ISP's alignment), drops what the sensor cannot do (transpose) and says ``Adjusted``.

Enums and value types (``Transform``, ``ColorSpace``, ``Size``, ...) keep Python's identity
hash, like the bindings, because picamera2 uses them as dict keys and set members.

About 400 lines: one module, like the binding it stands in for (the control ids are in
:mod:`libcamera._controls`, the hardware in :mod:`libcamera._sensor`).
"""

from __future__ import annotations

import contextlib
import enum
import os
import threading
from types import SimpleNamespace
from typing import Any

from libcamera import _sensor
from libcamera._controls import (
    _PROPERTY_IDS,
    CONTROL_IDS,
    ControlId,
    ControlInfo,
    ControlType,
    controls,
    properties,
)

__all__ = [
    "CONTROL_IDS", "Camera", "CameraConfiguration", "CameraManager", "ColorSpace", "ControlId",
    "ControlInfo", "ControlType", "FrameBuffer", "FrameBufferAllocator", "FrameMetadata",
    "Orientation", "PixelFormat", "Rectangle", "Request", "SensorConfiguration", "Size",
    "Stream", "StreamConfiguration", "StreamFormats", "StreamRole", "Transform", "controls",
    "properties",
]

# -- value types ----------------------------------------------------------------------


class Size:
    def __init__(self, width: int = 0, height: int = 0) -> None:
        self.width = int(width)
        self.height = int(height)

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"

    __repr__ = __str__


class Rectangle:
    def __init__(self, x: int = 0, y: int = 0, width: int = 0, height: int = 0) -> None:
        self.x, self.y, self.width, self.height = int(x), int(y), int(width), int(height)

    def __str__(self) -> str:
        return f"({self.x}, {self.y})/{self.width}x{self.height}"


class Transform:
    def __init__(
        self, other: Transform | None = None, *, hflip: int = 0, vflip: int = 0,
        transpose: int = 0, rotation: int = 0,
    ) -> None:
        if other is not None:
            hflip, vflip, transpose = other.hflip, other.vflip, other.transpose
        if rotation not in (0, 180):
            raise RuntimeError(f"Invalid rotation {rotation}")  # what the binding says
        if rotation == 180:
            hflip, vflip = not hflip, not vflip
        self.hflip, self.vflip, self.transpose = bool(hflip), bool(vflip), bool(transpose)

    def __str__(self) -> str:
        parts = [n for n in ("hflip", "vflip", "transpose") if getattr(self, n)]
        return f"<libcamera.Transform '{'/'.join(parts) or 'identity'}'>"


class Orientation(enum.Enum):
    Rotate0 = 1
    Rotate0Mirror = 2
    Rotate180 = 3
    Rotate180Mirror = 4
    Rotate90Mirror = 5
    Rotate270 = 6
    Rotate270Mirror = 7
    Rotate90 = 8


class ColorSpace:
    class Primaries(enum.Enum):
        Raw = 0
        Smpte170m = 1
        Rec709 = 2
        Rec2020 = 3

    class TransferFunction(enum.Enum):
        Linear = 0
        Srgb = 1
        Rec709 = 2

    class YcbcrEncoding(enum.Enum):
        Null = 0
        Rec601 = 1
        Rec709 = 2
        Rec2020 = 3

    class Range(enum.Enum):
        Full = 0
        Limited = 1

    def __init__(
        self, other: ColorSpace | None = None, primaries: Any = None,
        transferFunction: Any = None, ycbcrEncoding: Any = None, range: Any = None,
    ) -> None:
        if other is not None:
            primaries, transferFunction = other.primaries, other.transferFunction
            ycbcrEncoding, range = other.ycbcrEncoding, other.range
        self.primaries = primaries
        self.transferFunction = transferFunction
        self.ycbcrEncoding = ycbcrEncoding
        self.range = range

    @staticmethod
    def Raw() -> ColorSpace:
        c = ColorSpace
        return c(None, c.Primaries.Raw, c.TransferFunction.Linear, c.YcbcrEncoding.Null,
                 c.Range.Full)

    @staticmethod
    def Sycc() -> ColorSpace:
        c = ColorSpace
        return c(None, c.Primaries.Rec709, c.TransferFunction.Srgb, c.YcbcrEncoding.Rec601,
                 c.Range.Full)

    @staticmethod
    def Smpte170m() -> ColorSpace:
        c = ColorSpace
        return c(None, c.Primaries.Smpte170m, c.TransferFunction.Rec709,
                 c.YcbcrEncoding.Rec601, c.Range.Limited)

    @staticmethod
    def Rec709() -> ColorSpace:
        c = ColorSpace
        return c(None, c.Primaries.Rec709, c.TransferFunction.Rec709, c.YcbcrEncoding.Rec709,
                 c.Range.Limited)

    def __str__(self) -> str:
        return (f"{self.primaries.name}/{self.transferFunction.name}/"
                f"{self.ycbcrEncoding.name}/{self.range.name}")


class PixelFormat:
    def __init__(self, name: str) -> None:
        self.name = str(name)

    def __str__(self) -> str:
        return self.name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PixelFormat) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


class StreamRole(enum.Enum):
    Raw = 0
    StillCapture = 1
    VideoRecording = 2
    Viewfinder = 3


# -- buffers and requests -----------------------------------------------------------------


class FrameMetadata:
    class Status(enum.Enum):
        Success = 0
        Error = 1
        Cancelled = 2

    def __init__(self) -> None:
        self.status = FrameMetadata.Status.Success
        self.sequence = 0
        self.timestamp = 0
        self.planes: list[SimpleNamespace] = []


class FrameBuffer:
    class Plane:
        def __init__(self) -> None:
            self.fd = -1
            self.offset = 0
            self.length = 0

    def __init__(self, planes: list[FrameBuffer.Plane], cookie: int = 0) -> None:
        self.planes = list(planes)
        self.cookie = cookie
        self.metadata = FrameMetadata()


class Stream:
    def __init__(self, config: StreamConfiguration) -> None:
        self.configuration = config


class Request:
    class Status(enum.Enum):
        Pending = 0
        Complete = 1
        Cancelled = 2

    class ReuseFlag(enum.Enum):
        Default = 0
        ReuseBuffers = 1

    def __init__(self, camera: Camera, cookie: int) -> None:
        self._camera = camera
        self.cookie = cookie
        self.status = Request.Status.Pending
        self.sequence = 0
        self.buffers: dict[Stream, FrameBuffer] = {}
        self.metadata: dict[ControlId, Any] = {}
        self.controls: dict[ControlId, Any] = {}

    def add_buffer(self, stream: Stream, buffer: FrameBuffer) -> None:
        if stream in self.buffers:
            raise RuntimeError("Failed to add buffer: File exists")
        self.buffers[stream] = buffer

    def set_control(self, control: ControlId, value: Any) -> None:
        self.controls[control] = value

    def reuse(self, flags: Request.ReuseFlag = ReuseFlag.ReuseBuffers) -> None:
        self.status = Request.Status.Pending
        self.metadata = {}
        self.controls = {}


# -- configuration ----------------------------------------------------------------------------


class StreamFormats:
    def __init__(self, modes: list[_sensor.Mode]) -> None:
        self._modes = modes
        self.pixel_formats = list(dict.fromkeys(PixelFormat(m.format) for m in modes))

    def sizes(self, pixel_format: PixelFormat) -> list[Size]:
        return [Size(*m.size) for m in self._modes if m.format == str(pixel_format)]


class StreamConfiguration:
    def __init__(self, role: StreamRole, model: _sensor.SensorModel) -> None:
        self.role = role
        raw = role == StreamRole.Raw
        mode = model.modes[-1]
        self.pixel_format = PixelFormat(mode.format if raw else "YUV420")
        self.size = Size(*(mode.size if raw else (1920, 1080)))
        self.stride = 0
        self.frame_size = 0
        self.buffer_count = 4
        self.color_space: ColorSpace | None = ColorSpace.Raw() if raw else ColorSpace.Sycc()
        self.formats = StreamFormats(model.modes if raw else [])
        self.stream = Stream(self)


class SensorConfiguration:
    def __init__(self) -> None:
        self.bit_depth = 0
        self.output_size = Size()


class CameraConfiguration:
    class Status(enum.Enum):
        Valid = 0
        Adjusted = 1
        Invalid = 2

    def __init__(self, camera: Camera, roles: list[StreamRole]) -> None:
        self._camera = camera
        self._streams = [StreamConfiguration(r, camera._hw.model) for r in roles]
        self.orientation = Orientation.Rotate0
        self.sensor_config: SensorConfiguration | None = None

    def at(self, index: int) -> StreamConfiguration:
        return self._streams[index]

    def __iter__(self) -> Any:
        return iter(self._streams)

    def __len__(self) -> int:
        return len(self._streams)

    @property
    def size(self) -> int:
        return len(self._streams)

    def validate(self) -> CameraConfiguration.Status:
        return _sensor.validate(self, self._camera._hw)


# -- camera and manager -------------------------------------------------------------------------


class Camera:
    def __init__(self, hw: _sensor.CameraHardware) -> None:
        self._hw = hw
        self.id = hw.id

    @property
    def properties(self) -> dict[ControlId, Any]:
        m = self._hw.model
        props: dict[ControlId, Any] = {
            _PROPERTY_IDS["Model"]: m.name,
            _PROPERTY_IDS["Location"]: 2,
            _PROPERTY_IDS["Rotation"]: 180 if m.name == "imx708" else 0,
            _PROPERTY_IDS["PixelArraySize"]: Size(*m.pixel_array),
            _PROPERTY_IDS["PixelArrayActiveAreas"]: [Rectangle(0, 0, *m.pixel_array)],
            _PROPERTY_IDS["UnitCellSize"]: Size(1400, 1400),
        }
        if m.raspberry_pi:
            props[_PROPERTY_IDS["ColorFilterArrangement"]] = 0
        return props

    @property
    def controls(self) -> dict[ControlId, ControlInfo]:
        return {CONTROL_IDS[k]: ControlInfo(*v) for k, v in self._hw.control_info().items()}

    def acquire(self) -> None:
        self._hw.acquire(self)

    def release(self) -> None:
        self._hw.release(self)

    def generate_configuration(self, roles: list[StreamRole]) -> CameraConfiguration:
        return CameraConfiguration(self, list(roles))

    def configure(self, config: CameraConfiguration) -> int:
        return self._hw.configure(self, config)

    def create_request(self, cookie: int = 0) -> Request:
        return Request(self, cookie)

    def start(self, controls: dict[ControlId, Any] | None = None) -> None:
        self._hw.start(self, controls or {})

    def stop(self) -> None:
        self._hw.stop(self)

    def queue_request(self, request: Request) -> None:
        self._hw.queue(self, request)


class CameraManager:
    _instance: CameraManager | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.event_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._ready: list[Request] = []
        self._ready_lock = threading.Lock()
        self._cameras: dict[str, Camera] = {}

    @classmethod
    def singleton(cls) -> CameraManager:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    @property
    def version(self) -> str:
        return "v0.5.0+standin"

    @property
    def cameras(self) -> list[Camera]:
        out = []
        for hw in _sensor.RIG.enumerated():
            if hw.id not in self._cameras or self._cameras[hw.id]._hw is not hw:
                self._cameras[hw.id] = Camera(hw)
            out.append(self._cameras[hw.id])
        return out

    def get(self, camera_id: str) -> Camera:
        for cam in self.cameras:
            if cam.id == camera_id:
                return cam
        raise RuntimeError(f"Failed to find camera {camera_id}")

    find = get

    def complete(self, request: Request) -> None:
        with self._ready_lock:
            self._ready.append(request)
        os.eventfd_write(self.event_fd, 1)

    def get_ready_requests(self) -> list[Request]:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self.event_fd)
        with self._ready_lock:
            ready, self._ready = self._ready, []
        return ready


class FrameBufferAllocator:
    def __init__(self, camera: Camera) -> None:
        raise RuntimeError("the stand-in has no FrameBufferAllocator: use the DMA-heap allocator")
