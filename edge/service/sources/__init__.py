"""Frame sources behind one interface, and the factory that picks one from config.

``make_source(kind, uri, ...)`` builds an unopened :class:`FrameSource`
(the capture loop opens it, and reopens it when it is lost);
``open_source(...)`` does the same and opens it.

Kinds: ``"auto"`` (guess from ``uri``), ``"device"`` (V4L2 index or
``/dev/videoN``), ``"url"`` (RTSP/HTTP...), ``"file"`` (video or GIF),
``"folder"`` (images in sorted order), ``"picamera2"`` (``uri`` is the camera
number, default 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

from edge.service.sources.base import FrameSource, SourceError, SourceFatalError, redact_uri

if TYPE_CHECKING:
    from edge.service.sources.opencv_source import CaptureKind
    from edge.service.sources.picamera2_options import Picamera2Options

SourceKind = Literal["auto", "device", "url", "file", "folder", "picamera2"]
SOURCE_KINDS: tuple[str, ...] = ("auto", "device", "url", "file", "folder", "picamera2")

__all__ = [
    "SOURCE_KINDS",
    "FrameSource",
    "SourceError",
    "SourceFatalError",
    "SourceKind",
    "make_source",
    "open_source",
    "redact_uri",
]


def make_source(
    kind: SourceKind | str,
    uri: str | int | Path,
    *,
    loop: bool = False,
    pace: bool = False,
    size: tuple[int, int] | None = None,
    fps: float | None = None,
    detect_size: tuple[int, int] | None = None,
    timeout_s: float = 10.0,
    camera: Picamera2Options | None = None,
) -> FrameSource:
    """An unopened source of that kind (see the module doc).

    ``loop`` and ``pace`` apply to files and folders (a folder is paced at
    ``fps`` when given). ``size``/``fps`` are requested from cameras; for
    picamera2, ``size`` is the main stream and ``detect_size`` the lores
    stream, its width kept and its height fitted to main's aspect ratio
    (``None``: no lores, detect on main), and ``camera`` the sensor mode,
    focus, exposure, transform and colour space. For the other kinds
    ``detect_size`` adds a resized ``Frame.detect_image``. Raises :class:`SourceError` for an
    unknown kind.
    """
    if kind == "picamera2":
        from edge.service.sources.picamera2_options import lores_keeping_aspect
        from edge.service.sources.picamera2_source import Picamera2Source

        text = str(uri).strip()
        num = int(text) if text.isdigit() else 0
        main = size or (1280, 720)
        return Picamera2Source(
            num,
            main_size=main,
            lores_size=None if detect_size is None else lores_keeping_aspect(detect_size, main),
            fps=fps,
            timeout_s=min(timeout_s, 5.0),
            options=camera,
        )
    if kind == "folder" or (kind == "auto" and Path(str(uri)).is_dir()):
        from edge.service.sources.opencv_source import ImageFolderSource

        return ImageFolderSource(
            Path(str(uri)), loop=loop, fps=fps if pace else None, detect_size=detect_size
        )
    if kind in ("auto", "device", "url", "file"):
        from edge.service.sources.opencv_source import OpenCVSource, guess_kind

        target = uri if isinstance(uri, int) else str(uri)
        capture_kind: CaptureKind = (
            guess_kind(target) if kind == "auto" else cast("CaptureKind", kind)
        )
        return OpenCVSource(
            target,
            kind=capture_kind,
            loop=loop,
            pace=pace,
            size=size,
            fps=fps,
            detect_size=detect_size,
            timeout_s=timeout_s,
        )
    raise SourceError(f"unknown source kind {kind!r} (one of {', '.join(SOURCE_KINDS)})")


def open_source(
    kind: SourceKind | str,
    uri: str | int | Path,
    *,
    loop: bool = False,
    pace: bool = False,
    size: tuple[int, int] | None = None,
    fps: float | None = None,
    detect_size: tuple[int, int] | None = None,
    timeout_s: float = 10.0,
    camera: Picamera2Options | None = None,
) -> FrameSource:
    """:func:`make_source` then ``open()``; raises :class:`SourceError` if it cannot open."""
    source = make_source(
        kind,
        uri,
        loop=loop,
        pace=pace,
        size=size,
        fps=fps,
        detect_size=detect_size,
        timeout_s=timeout_s,
        camera=camera,
    )
    source.open()
    return source
