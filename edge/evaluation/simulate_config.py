"""The settings of ``edge simulate``: the clip (:class:`SimConfig`) and the camera's
per-frame effects (:class:`CameraConfig`), and the command line's size/range parsers.

Every effect of :class:`CameraConfig` is off by default (the clean street of before);
:meth:`CameraConfig.degraded` turns them all on at a van camera's settings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from edge.errors import UsageError
from edge.evaluation.stream import Box
from edge.recognition.match import MAX_REFERENCES

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

TILE = 250
"""Pictures are brought to TILE x TILE (LFW's size) before use."""
FACE_BOX_TILE: Box = (69.0, 79.0, 175.0, 185.0)
"""Where the face is in an LFW deep-funneled tile (mean dlib HOG box)."""
HEAD_ELLIPSE = ((125.0, 118.0), (74.0, 98.0))
"""Centre and semi-axes of the head mask in the tile: hair to chin, ear to ear."""

MaskKind = Literal["ellipse", "tile"]


@dataclass(frozen=True, slots=True)
class CameraConfig:
    """Per-frame camera effects (see :mod:`edge.evaluation.simulate_camera`), each switchable.

    ``jpeg_quality`` 0 leaves the frame to the MP4 writer's own (mp4v) compression alone;
    1-100 passes each frame through OpenCV's JPEG encode/decode at that quality first.
    Measured on a degraded 1280x720 street frame: quality 30 gives about 30 KB a frame
    (6 Mbit/s as motion JPEG at 25 fps); H.264, about three times as efficient, keeps that
    much per frame at roughly 2 Mbit/s, a van camera's uplink (an estimate, not an H.264
    encode): the blocking and lost texture of a low bitrate, without H.264's motion
    artefacts.
    """

    motion_blur: bool = False  # along each passer-by's direction of motion (shutter 1/50 s)
    defocus: bool = False  # disc blur of the whole frame, focus drifting slowly
    noise: bool = False  # shot + read noise (brightness-dependent), per frame
    jpeg_quality: int = 0  # 0 = off
    exposure: bool = False  # brightness and gamma drift (auto-exposure hunting)
    wobble: bool = False  # slight in-plane rotation and scale wobble of each head

    @classmethod
    def degraded(cls, jpeg_quality: int = 30) -> CameraConfig:
        return cls(True, True, True, jpeg_quality, True, True)

    @property
    def any(self) -> bool:
        return any(asdict(self).values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self) -> list[str]:
        if not (0 <= self.jpeg_quality <= 100):
            return [f"--jpeg-quality {self.jpeg_quality}: must be 0 (off) to 100"]
        return []


@dataclass(frozen=True, slots=True)
class SimConfig:
    size: tuple[int, int] = (1280, 720)
    fps: float = 25.0
    seconds: float = 60.0
    faces: tuple[int, int] = (1, 5)  # passers-by visible at once, min-max
    watchlisted: float = 0.1  # share of passers-by who are watchlisted
    seed: int = 0
    face_px: tuple[float, float] = (60.0, 160.0)  # face width range
    watchlist_size: int = 20  # subjects on the watchlist (raised to cover those shown)
    max_enrol: int = 3  # images enrolled per subject
    mask: MaskKind = "ellipse"
    dwell: tuple[float, float] = (2.5, 7.0)  # seconds a passer-by is in view
    views: int = 1  # distinct images of its identity a passer-by shows along the walk
    camera: CameraConfig = field(default_factory=CameraConfig)

    @property
    def frames(self) -> int:
        return max(1, round(self.seconds * self.fps))

    def check(self) -> None:
        w, h = self.size
        problems: list[str] = []
        if w < 64 or h < 64 or w % 2 or h % 2:
            problems.append(f"--size {w}x{h}: width and height must be even and >= 64")
        if not (0 < self.fps <= 120):
            problems.append(f"--fps {self.fps}: must be in (0, 120]")
        if not (0 < self.seconds <= 3600):
            problems.append(f"--seconds {self.seconds}: must be in (0, 3600]")
        lo, hi = self.faces
        if not (1 <= lo <= hi <= 20):
            problems.append(f"--faces-per-frame {lo}-{hi}: need 1 <= min <= max <= 20")
        if not (0.0 <= self.watchlisted <= 1.0):
            problems.append(f"--watchlisted {self.watchlisted}: must be between 0 and 1")
        fmin, fmax = self.face_px
        if not (16 <= fmin <= fmax) or fmax > min(w, h) / 2:
            problems.append(
                f"face sizes {fmin:g}-{fmax:g} px do not fit a {w}x{h} frame"
            )
        if self.watchlist_size < 0 or self.max_enrol < 1:
            problems.append("--watchlist-size must be >= 0 and --max-enrol >= 1")
        if self.max_enrol > MAX_REFERENCES:
            problems.append(f"--max-enrol {self.max_enrol}: a subject has at most "
                            f"{MAX_REFERENCES} references")
        if not (1 <= self.views <= 10):
            problems.append(f"--views {self.views}: must be 1-10")
        problems.extend(self.camera.check())
        if problems:
            raise UsageError("; ".join(problems))


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = text.lower().split("x")
        return int(w), int(h)
    except ValueError:
        raise UsageError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 1280x720") from None


def parse_range(text: str, name: str) -> tuple[int, int]:
    try:
        if "-" in text:
            a, b = text.split("-", 1)
            return int(a), int(b)
        n = int(text)
        return n, n
    except ValueError:
        raise UsageError(f"{name} {text!r}: expected N or MIN-MAX, e.g. 1-5") from None

