"""What a Raspberry Pi camera is asked for beyond sizes and fps, and the lores conversion.

:class:`Picamera2Options` carries the ``[source]`` camera keys (sensor mode, autofocus,
exposure, transform, lores colour space) to :class:`~edge.service.sources.picamera2_source.
Picamera2Source`; :func:`i420_to_bgr` turns picamera2's planar YUV420 array into BGR with the
matrix and range the stream was encoded with; :func:`lores_keeping_aspect` fits the detector's
size to main's aspect ratio (the ISP gives lores main's crop, so another aspect ratio would
squeeze faces).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from edge.service.sources.base import SourceError
from edge.types import ImageU8

AfMode = Literal["continuous", "manual"]
AeExposureMode = Literal["normal", "short", "long"]
TransformName = Literal["identity", "hflip", "vflip", "rot180"]
ColourSpaceName = Literal["smpte170m", "rec709", "sycc"]

AE_EXPOSURE_MODES: dict[str, int] = {"normal": 0, "short": 1, "long": 2}  # libcamera's enum
AF_CONTINUOUS = 2  # libcamera controls.AfModeEnum.Continuous
TRANSFORMS: dict[str, tuple[bool, bool]] = {  # (hflip, vflip)
    "identity": (False, False),
    "hflip": (True, False),
    "vflip": (False, True),
    "rot180": (True, True),
}
COLOUR_SPACES: dict[str, str] = {"smpte170m": "Smpte170m", "rec709": "Rec709", "sycc": "Sycc"}
# (Kr, Kb) of the Y'CbCr matrices libcamera names
_MATRICES: dict[str, tuple[float, float]] = {"Rec601": (0.299, 0.114), "Rec709": (0.2126, 0.0722)}


@dataclass(frozen=True, slots=True)
class Picamera2Options:
    """The camera settings of ``[source]`` for picamera2 (see ``examples/edge.toml``).

    ``sensor_output_size``/``sensor_bit_depth`` pick the sensor mode (``None``: picamera2's
    choice from the main size, which may be a cropped mode); ``af_mode`` ``"continuous"``
    drives the lens on autofocus cameras (ignored, with a log line, on fixed-focus ones);
    ``ae_exposure_mode`` picks the AE profile (``"short"`` favours short shutters for
    walking people); ``exposure_time_us`` fixes the shutter (gain stays automatic);
    ``transform`` flips or rotates by 180°; ``colour_space`` is the lores YUV encoding
    (``smpte170m`` = BT.601, the default; ``rec709``; ``sycc`` = full-range BT.601).
    ``busy_limit`` consecutive "camera busy" failures end the source (the daemon exits and
    systemd restarts it).
    """

    sensor_output_size: tuple[int, int] | None = None
    sensor_bit_depth: int | None = None
    af_mode: AfMode = "continuous"
    ae_exposure_mode: AeExposureMode = "normal"
    exposure_time_us: int | None = None
    transform: TransformName = "identity"
    colour_space: ColourSpaceName = "smpte170m"
    busy_limit: int = 5

    def __post_init__(self) -> None:
        if self.exposure_time_us is not None and self.exposure_time_us <= 0:
            raise ValueError("exposure_time_us must be positive")
        if self.busy_limit < 1:
            raise ValueError("busy_limit must be at least 1")

    def sensor(self) -> dict[str, object]:
        """picamera2's ``sensor=`` argument."""
        out: dict[str, object] = {}
        if self.sensor_output_size is not None:
            out["output_size"] = tuple(self.sensor_output_size)
        if self.sensor_bit_depth is not None:
            out["bit_depth"] = self.sensor_bit_depth
        return out


def lores_keeping_aspect(detect: tuple[int, int], main: tuple[int, int]) -> tuple[int, int]:
    """``detect``'s width (even, at most main's) with the height that keeps main's aspect."""
    width = max(2, min(detect[0], main[0]) // 2 * 2)
    height = max(2, round(width * main[1] / main[0] / 2) * 2)
    return width, min(height, main[1])


def i420_to_bgr(
    yuv: np.ndarray, width: int, encoding: str = "Rec601", full_range: bool = False
) -> ImageU8:
    """BGR image from picamera2's planar YUV420 array of shape ``(h * 3 // 2, stride)``.

    Rows wider than ``width`` (stride padding) are cut off. ``encoding`` (``"Rec601"`` or
    ``"Rec709"``) and ``full_range`` are the stream's colour space; OpenCV's I420
    conversion is limited-range BT.601 and is used for exactly that case.
    """
    if yuv.dtype != np.uint8 or yuv.ndim != 2 or yuv.shape[0] % 3:
        raise SourceError(f"lores stream returned shape {yuv.shape} {yuv.dtype}, want I420")
    stride = yuv.shape[1]
    if width <= 0 or width > stride:
        width = stride
    if encoding == "Rec601" and not full_range:
        bgr = cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR_I420)
        return np.ascontiguousarray(bgr[:, :width] if width != stride else bgr)
    kr, kb = _MATRICES.get(encoding, _MATRICES["Rec601"])
    h = yuv.shape[0] * 2 // 3
    half = stride // 2
    chroma = yuv[h:].reshape(-1)
    quarter = (h // 2) * half
    u = chroma[:quarter].reshape(h // 2, half)[:, : width // 2]
    v = chroma[quarter : 2 * quarter].reshape(h // 2, half)[:, : width // 2]
    size = (width, h)
    cb = cv2.resize(u, size, interpolation=cv2.INTER_LINEAR).astype(np.float32) - 128.0
    cr = cv2.resize(v, size, interpolation=cv2.INTER_LINEAR).astype(np.float32) - 128.0
    y = yuv[:h, :width].astype(np.float32)
    if full_range:
        y, cb, cr = y / 255.0, cb / 255.0, cr / 255.0
    else:
        y, cb, cr = (y - 16.0) / 219.0, cb / 224.0, cr / 224.0
    r = y + 2 * (1 - kr) * cr
    b = y + 2 * (1 - kb) * cb
    g = (y - kr * r - kb * b) / (1 - kr - kb)
    bgr = np.stack([b, g, r], axis=-1) * 255.0
    return np.ascontiguousarray(np.clip(np.rint(bgr), 0, 255).astype(np.uint8))
