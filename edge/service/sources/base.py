"""The frame-source interface: one abstract base, one module per backend.

A :class:`FrameSource` is opened, read frame by frame and closed::

    with OpenCVSource("clip.avi") as source:
        while (frame := source.read()) is not None:
            ...

``read()`` returns ``None`` only at the end of a non-looping file. A live
source (camera, network stream) never ends: when it is lost, ``open()`` or
``read()`` raises :class:`SourceError`, and the capture loop
(:mod:`edge.service.capture`) closes it and opens it again with a backoff.

Frame indices are counted by the source object and keep increasing across
``close()``/``open()`` and file loops, so the tracker's frame arithmetic never
sees an index go backwards.
"""

from __future__ import annotations

import abc
import contextlib
import time
from types import TracebackType
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

from edge.errors import EdgeError
from edge.types import Frame, ImageU8

_S = TypeVar("_S", bound="FrameSource")


class SourceError(EdgeError):
    """A frame source cannot be opened or was lost (camera unplugged, stream down)."""

    exit_code = 7
    fatal = False
    """True when retrying cannot help (see :class:`SourceFatalError`)."""


class SourceFatalError(SourceError):
    """A source that retrying cannot fix: a broken install, a camera another process keeps.

    The capture loop gives up on it instead of retrying for ever, so the daemon exits and
    systemd restarts it (or reports it failed) with this one line as the reason.
    """

    fatal = True


def redact_uri(uri: str) -> str:
    """``uri`` without a password, fit for logs and error messages.

    ``rtsp://user:secret@cam/stream`` becomes ``rtsp://user:***@cam/stream``;
    anything that is not a URL with credentials is returned unchanged.
    """
    if "://" not in uri:
        return uri
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class FrameSource(abc.ABC):
    """A camera, stream, file or folder that yields :class:`~edge.types.Frame` objects.

    Subclasses implement :meth:`_open`, :meth:`_read` and :meth:`_close`;
    this base class keeps the open state, the frame counter and the context
    manager. ``open()`` on an open source and ``close()`` on a closed one do
    nothing.
    """

    def __init__(self) -> None:
        self._is_open = False
        self._next_index = 0

    # -- the interface -----------------------------------------------------

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """A short description for logs (never contains a password)."""

    @property
    @abc.abstractmethod
    def fps(self) -> float | None:
        """The nominal frame rate, or ``None`` when the source does not say."""

    @property
    def live(self) -> bool:
        """True for cameras and network streams (they never end, they get lost)."""
        return True

    @property
    def realtime(self) -> bool:
        """True when frames arrive at the scene's pace whether or not they are taken: a
        camera, a stream, or a file paced at its frame rate. The capture thread then
        hands over only the newest frame (:mod:`edge.service.capture`)."""
        return self.live

    @property
    def is_open(self) -> bool:
        return self._is_open

    @property
    def frames_read(self) -> int:
        """Frames returned so far by this object (also the next frame's index)."""
        return self._next_index

    def open(self) -> None:
        """Open the device, stream or file; raise :class:`SourceError` if that fails."""
        if self._is_open:
            return
        try:
            self._open()
        except SourceError:
            self._close_quietly()
            raise
        except Exception as exc:
            self._close_quietly()
            raise SourceError(f"{self.name}: cannot open: {exc}") from exc
        self._is_open = True

    def read(self) -> Frame | None:
        """The next frame, ``None`` at the end of a non-looping file.

        Raises :class:`SourceError` when the source is not open or was lost.
        """
        if not self._is_open:
            raise SourceError(f"{self.name}: read() on a closed source")
        try:
            return self._read()
        except SourceError:
            raise
        except Exception as exc:
            raise SourceError(f"{self.name}: lost: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        """Release the device; safe to call more than once."""
        if not self._is_open:
            return
        self._is_open = False
        self._close()

    def __enter__(self: _S) -> _S:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- for subclasses ----------------------------------------------------

    @abc.abstractmethod
    def _open(self) -> None: ...

    @abc.abstractmethod
    def _read(self) -> Frame | None: ...

    @abc.abstractmethod
    def _close(self) -> None: ...

    def _frame(
        self,
        image: ImageU8,
        detect_image: ImageU8 | None = None,
        captured_at: float | None = None,
    ) -> Frame:
        """Wrap a just-captured image in a :class:`Frame` with the next index.

        ``captured_at`` defaults to now (``time.time()``); backends pass the
        time taken right after the capture call returned.
        """
        frame = Frame(
            index=self._next_index,
            captured_at=time.time() if captured_at is None else captured_at,
            image=image,
            detect_image=detect_image,
        )
        self._next_index += 1
        return frame

    def _close_quietly(self) -> None:
        with contextlib.suppress(Exception):  # best effort after a failed open
            self._close()
