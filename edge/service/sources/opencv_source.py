"""OpenCV frame sources: V4L2 devices, network streams, video files, GIFs, image folders.

- :class:`OpenCVSource` wraps ``cv2.VideoCapture``. Its ``kind`` is
  ``"device"`` (an index such as ``0`` or a path such as ``/dev/video0``,
  opened with the V4L2 backend), ``"url"`` (``rtsp://``, ``http://`` ...,
  opened with FFmpeg and bounded open/read timeouts) or ``"file"`` (a video
  or an animated GIF). GIFs are read by ``VideoCapture``; on builds whose
  FFmpeg cannot, ``cv2.imreadanimation`` (OpenCV >= 4.11) is used instead.
- :class:`ImageFolderSource` reads the images of a folder in sorted name order.

Files and folders end (``read()`` returns ``None``) unless ``loop=True``;
``pace=True`` delivers them at their native frame rate instead of as fast as
they decode. Devices and URLs never end: a failed read raises
:class:`~edge.service.sources.base.SourceError` (the capture loop reopens them).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from edge.service.sources.base import FrameSource, SourceError, redact_uri
from edge.types import Frame, ImageU8

log = logging.getLogger(__name__)

CaptureKind = Literal["device", "url", "file"]
GifReader = Literal["auto", "videocapture", "imreadanimation"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm"})
URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
_MAX_SANE_FPS = 1000.0


def guess_kind(uri: str | int | Path) -> CaptureKind:
    """``"device"`` for an index or ``/dev/...``, ``"url"`` for a URL, else ``"file"``."""
    if isinstance(uri, int):
        return "device"
    text = str(uri).strip()
    if text.isdigit() or text.startswith("/dev/"):
        return "device"
    if text.lower().startswith(URL_SCHEMES):
        return "url"
    return "file"


def _sane_fps(value: float) -> float | None:
    return value if 0.0 < value <= _MAX_SANE_FPS and np.isfinite(value) else None


def _as_bgr(image: np.ndarray) -> ImageU8:
    """A contiguous HxWx3 uint8 BGR image from whatever a decoder returned."""
    if image.dtype != np.uint8:
        raise SourceError(f"decoder returned {image.dtype} pixels, expected uint8")
    if image.ndim == 2:
        return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
    if image.ndim == 3 and image.shape[2] == 4:
        return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGRA2BGR))
    if image.ndim == 3 and image.shape[2] == 3:
        return np.ascontiguousarray(image)
    raise SourceError(f"decoder returned an image of shape {image.shape}")


def _detect_copy(image: ImageU8, detect_size: tuple[int, int] | None) -> ImageU8 | None:
    if detect_size is None:
        return None
    return np.ascontiguousarray(cv2.resize(image, detect_size, interpolation=cv2.INTER_AREA))


class Pacer:
    """Sleeps so that successive :meth:`wait` calls return ``fps`` times a second.

    A consumer that falls behind by more than one frame resets the schedule
    instead of getting a burst of frames.
    """

    def __init__(self, fps: float) -> None:
        if not fps > 0:
            raise ValueError("fps must be positive")
        self.period = 1.0 / fps
        self._due: float | None = None

    def wait(self) -> None:
        now = time.monotonic()
        if self._due is None:
            self._due = now
        delay = self._due - now
        if delay > 0:
            time.sleep(delay)
        elif delay < -self.period:
            self._due = now
        self._due += self.period

    def reset(self) -> None:
        self._due = None


class OpenCVSource(FrameSource):
    """A ``cv2.VideoCapture`` source: V4L2 device, network URL, video file or GIF.

    ``size`` and ``fps`` are requested from devices (drivers may ignore them);
    ``detect_size`` adds a ``Frame.detect_image`` resized to (width, height).
    ``timeout_s`` bounds FFmpeg's open and read on URLs.
    """

    def __init__(
        self,
        uri: str | int | Path,
        *,
        kind: CaptureKind | None = None,
        loop: bool = False,
        pace: bool = False,
        size: tuple[int, int] | None = None,
        fps: float | None = None,
        detect_size: tuple[int, int] | None = None,
        timeout_s: float = 10.0,
        gif_reader: GifReader = "auto",
    ) -> None:
        super().__init__()
        self.kind: CaptureKind = kind or guess_kind(uri)
        self.uri: str | int = uri if isinstance(uri, int) else str(uri)
        self.loop = loop
        self.pace = pace
        self.size = size
        self.requested_fps = fps
        self.detect_size = detect_size
        self.timeout_s = timeout_s
        self.gif_reader = gif_reader
        self._cap: cv2.VideoCapture | None = None
        self._gif: list[ImageU8] | None = None  # imreadanimation fallback: decoded frames
        self._gif_pos = 0
        self._fps: float | None = None
        self._pacer: Pacer | None = None

    @property
    def name(self) -> str:
        return f"{self.kind}:{redact_uri(str(self.uri))}"

    @property
    def fps(self) -> float | None:
        return self._fps

    @property
    def live(self) -> bool:
        return self.kind != "file"

    @property
    def realtime(self) -> bool:
        return self.live or self.pace

    @property
    def backend(self) -> str:
        """Which decoder is in use (``"imreadanimation"`` or OpenCV's backend name)."""
        if self._gif is not None:
            return "imreadanimation"
        if self._cap is not None:
            return str(self._cap.getBackendName())
        return ""

    # -- FrameSource -------------------------------------------------------

    def _open(self) -> None:
        if self.kind == "file":
            self._open_file()
        else:
            self._cap = self._open_capture()
            self._fps = _sane_fps(float(self._cap.get(cv2.CAP_PROP_FPS)))
        self._pacer = Pacer(self._fps) if self.pace and self._fps else None
        log.info("opened %s (%s, fps %s)", self.name, self.backend, self._fps)

    def _read(self) -> Frame | None:
        image = self._next_image()
        if image is None:
            if self.live:
                raise SourceError(f"{self.name}: lost (no frame)")
            if not self.loop:
                return None
            self._rewind()
            image = self._next_image()
            if image is None:
                raise SourceError(f"{self.name}: no frames after rewinding")
        captured_at = time.time()
        if self._pacer is not None:
            self._pacer.wait()
            captured_at = time.time()
        bgr = _as_bgr(image)
        return self._frame(bgr, _detect_copy(bgr, self.detect_size), captured_at)

    def _close(self) -> None:
        if self._cap is not None:
            self._cap.release()
        self._cap = None
        self._gif = None
        self._gif_pos = 0
        if self._pacer is not None:
            self._pacer.reset()

    # -- helpers -----------------------------------------------------------

    def _open_file(self) -> None:
        path = Path(str(self.uri))
        # A named pipe is a file source too (e.g. a camera tool writing to a FIFO).
        if not (path.is_file() or path.is_fifo()):
            raise SourceError(f"{self.name}: no such file")
        is_gif = path.suffix.lower() == ".gif"
        if is_gif and self.gif_reader == "imreadanimation":
            self._open_gif(path)
            return
        try:
            self._cap = self._open_capture()
        except SourceError:
            if not (is_gif and self.gif_reader == "auto"):
                raise
            log.info("%s: VideoCapture cannot read it, using imreadanimation", self.name)
            self._open_gif(path)
            return
        self._fps = _sane_fps(float(self._cap.get(cv2.CAP_PROP_FPS)))

    def _open_gif(self, path: Path) -> None:
        reader = getattr(cv2, "imreadanimation", None)
        if reader is None:
            raise SourceError(f"{self.name}: this OpenCV build reads no GIFs")
        ok, animation = reader(str(path))
        frames = list(animation.frames) if ok else []
        if not frames:
            raise SourceError(f"{self.name}: not a readable GIF")
        self._gif = [_as_bgr(f) for f in frames]
        self._gif_pos = 0
        durations_ms = [float(d) for d in animation.durations if float(d) > 0]
        self._fps = _sane_fps(1000.0 / float(np.mean(durations_ms))) if durations_ms else None

    def _open_capture(self) -> cv2.VideoCapture:
        if self.kind == "device":
            target: str | int = int(self.uri) if str(self.uri).strip().isdigit() else str(self.uri)
            cap = cv2.VideoCapture(target, cv2.CAP_V4L2)
            if cap.isOpened():
                if self.size is not None:
                    cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.size[0])
                    cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size[1])
                if self.requested_fps is not None:
                    cap.set(cv2.CAP_PROP_FPS, self.requested_fps)
                cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # newest frame, not a stale backlog
        elif self.kind == "url":
            ms = int(self.timeout_s * 1000)
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
            cap = cv2.VideoCapture(str(self.uri), cv2.CAP_FFMPEG, params)
        else:
            cap = cv2.VideoCapture(str(self.uri), cv2.CAP_ANY)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self.name}: cannot open")
        return cap

    def _next_image(self) -> np.ndarray | None:
        if self._gif is not None:
            if self._gif_pos >= len(self._gif):
                return None
            gif_image = self._gif[self._gif_pos]
            self._gif_pos += 1
            return gif_image
        if self._cap is None:
            raise SourceError(f"{self.name}: not open")
        ok, image = self._cap.read()
        return np.asarray(image) if ok and image is not None else None

    def _rewind(self) -> None:
        if self._gif is not None:
            self._gif_pos = 0
            return
        # Reopening is slower than seeking but works for every container (GIFs included).
        if self._cap is not None:
            self._cap.release()
        self._cap = self._open_capture()


class ImageFolderSource(FrameSource):
    """The images of a folder (``IMAGE_SUFFIXES``), in sorted file-name order.

    ``fps`` paces delivery when given, else images come as fast as they
    decode. Unreadable files are skipped with a warning.
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        loop: bool = False,
        fps: float | None = None,
        detect_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.loop = loop
        self._fps = fps
        self.detect_size = detect_size
        self._files: list[Path] = []
        self._pos = 0
        self._pacer = Pacer(fps) if fps else None
        self.skipped = 0

    @property
    def name(self) -> str:
        return f"folder:{self.folder}"

    @property
    def fps(self) -> float | None:
        return self._fps

    @property
    def live(self) -> bool:
        return False

    @property
    def realtime(self) -> bool:
        return self._pacer is not None

    @property
    def files(self) -> list[Path]:
        return list(self._files)

    def _open(self) -> None:
        if not self.folder.is_dir():
            raise SourceError(f"{self.name}: no such folder")
        self._files = sorted(
            p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not self._files:
            raise SourceError(f"{self.name}: no images")
        self._pos = 0

    def _read(self) -> Frame | None:
        for _ in range(2 * len(self._files) + 1):  # bounded: one full pass plus a wrap
            if self._pos >= len(self._files):
                if not self.loop:
                    return None
                self._pos = 0
            path = self._files[self._pos]
            self._pos += 1
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                self.skipped += 1
                log.warning("%s: skipping unreadable %s", self.name, path.name)
                continue
            captured_at = time.time()
            if self._pacer is not None:
                self._pacer.wait()
                captured_at = time.time()
            bgr = _as_bgr(image)
            return self._frame(bgr, _detect_copy(bgr, self.detect_size), captured_at)
        raise SourceError(f"{self.name}: no readable images")

    def _close(self) -> None:
        self._files = []
        self._pos = 0
        if self._pacer is not None:
            self._pacer.reset()
