"""Frame sources: OpenCV files/GIFs/folders/URLs/devices; picamera2's pure helpers and the Pi.

The picamera2 adapter against picamera2's own code is in ``tests/test_picamera2_real.py``.
"""

from __future__ import annotations

import functools
import http.server
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.service.sources import make_source, open_source
from edge.service.sources.base import FrameSource, SourceError, SourceFatalError, redact_uri
from edge.service.sources.opencv_source import ImageFolderSource, OpenCVSource, guess_kind
from edge.service.sources.picamera2_source import Picamera2Source, i420_to_bgr
from tests.videos import frame_number, write_video


@pytest.fixture()
def video(tmp_path: Path) -> Path:
    return write_video(tmp_path / "clip.avi", frames=10)


def _read_all(source: FrameSource, limit: int = 1000) -> list[np.ndarray]:
    images = []
    for _ in range(limit):
        frame = source.read()
        if frame is None:
            return images
        images.append(frame.image)
    raise AssertionError("source did not end")


# -- helpers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("rtsp://admin:hunter2@10.0.0.5:554/stream1", "rtsp://admin:***@10.0.0.5:554/stream1"),
        ("http://u:p@cam/x.mjpg?a=1", "http://u:***@cam/x.mjpg?a=1"),
        ("rtsp://10.0.0.5/stream", "rtsp://10.0.0.5/stream"),
        ("/dev/video0", "/dev/video0"),
        ("clip.avi", "clip.avi"),
    ],
)
def test_redact_uri_hides_passwords(uri: str, expected: str) -> None:
    assert redact_uri(uri) == expected


@pytest.mark.parametrize(
    ("uri", "kind"),
    [
        (0, "device"),
        ("2", "device"),
        ("/dev/video1", "device"),
        ("rtsp://cam/s", "url"),
        ("HTTP://cam/s.mjpg", "url"),
        ("clip.mp4", "file"),
        ("dir/x.gif", "file"),
    ],
)
def test_guess_kind(uri: str | int, kind: str) -> None:
    assert guess_kind(uri) == kind


def test_factory_builds_each_kind(tmp_path: Path, video: Path) -> None:
    assert isinstance(make_source("auto", video), OpenCVSource)
    assert isinstance(make_source("auto", tmp_path), ImageFolderSource)
    assert isinstance(make_source("folder", tmp_path), ImageFolderSource)
    dev = make_source("device", "/dev/video0")
    assert isinstance(dev, OpenCVSource) and dev.kind == "device" and dev.live
    cam = make_source("picamera2", "1", size=(640, 480), detect_size=(320, 240))
    assert isinstance(cam, Picamera2Source)
    assert (cam.camera_num, cam.main_size, cam.lores_size) == (1, (640, 480), (320, 240))
    assert not make_source("file", video).is_open  # make_source does not open
    with pytest.raises(SourceError, match="unknown source kind"):
        make_source("webcam", "0")


# -- video files ---------------------------------------------------------------


def test_file_reads_every_frame_in_order_then_ends(video: Path) -> None:
    before = time.time()
    with open_source("file", video) as source:
        assert source.is_open and not source.live
        assert source.fps == pytest.approx(10.0)
        frames = []
        while (frame := source.read()) is not None:
            frames.append(frame)
        assert source.read() is None  # stays ended
    after = time.time()
    assert [f.index for f in frames] == list(range(10))
    first = float(frames[0].image.mean())
    assert [frame_number(f.image, first) for f in frames] == list(range(10))
    for f in frames:
        assert f.image.dtype == np.uint8 and f.image.shape == (48, 64, 3)
        assert f.image.flags.c_contiguous
        assert f.detect_image is None
        assert before <= f.captured_at <= after
    assert [f.captured_at for f in frames] == sorted(f.captured_at for f in frames)
    assert not source.is_open
    with pytest.raises(SourceError, match="closed"):
        source.read()


def test_file_loops_and_indices_keep_increasing(video: Path) -> None:
    source = OpenCVSource(video, loop=True)
    with source:
        frames = [source.read() for _ in range(25)]
    assert all(f is not None for f in frames)
    images = [f.image for f in frames if f is not None]
    first = float(images[0].mean())
    assert [frame_number(im, first) for im in images] == [i % 10 for i in range(25)]
    assert [f.index for f in frames if f is not None] == list(range(25))
    # Reopening continues the count (the tracker never sees an index go back).
    with source:
        frame = source.read()
    assert frame is not None and frame.index == 25


def test_file_detect_size_adds_a_resized_copy(video: Path) -> None:
    with OpenCVSource(video, detect_size=(32, 24)) as source:
        frame = source.read()
    assert frame is not None and frame.detect_image is not None
    assert frame.detect_image.shape == (24, 32, 3)
    assert abs(float(frame.detect_image.mean()) - float(frame.image.mean())) < 2


def test_paced_file_is_not_faster_than_its_fps(tmp_path: Path) -> None:
    clip = write_video(tmp_path / "fast.avi", frames=6, fps=50.0)
    with OpenCVSource(clip, pace=True) as source:
        start = time.monotonic()
        n = len(_read_all(source))
        elapsed = time.monotonic() - start
    assert n == 6
    # A lower bound only: sleeping guarantees at least (n - 1) periods.
    assert elapsed >= (n - 1) / 50.0 * 0.99


def test_missing_file_is_a_source_error(tmp_path: Path) -> None:
    source = OpenCVSource(tmp_path / "nope.mp4")
    with pytest.raises(SourceError, match="no such file") as info:
        source.open()
    assert info.value.exit_code == 7
    assert not source.is_open


def test_empty_file_cannot_loop_forever(tmp_path: Path) -> None:
    bad = tmp_path / "empty.avi"
    bad.write_bytes(b"")
    source = OpenCVSource(bad, loop=True)
    with pytest.raises(SourceError):
        source.open()
        source.read()


# -- GIFs (the shared Intel clips) ----------------------------------------------


def test_gif_clip_reads_with_videocapture_and_imreadanimation_alike(clips_dir: Path) -> None:
    gif = clips_dir / "intel_head-pose-face-detection-female.gif"
    with OpenCVSource(gif, gif_reader="videocapture") as a:
        assert a.backend == "FFMPEG"
        frames_a = _read_all(a)
        fps_a = a.fps
    if not hasattr(cv2, "imreadanimation"):
        pytest.skip("this OpenCV has no imreadanimation")
    with OpenCVSource(gif, gif_reader="imreadanimation") as b:
        assert b.backend == "imreadanimation"
        frames_b = _read_all(b)
        fps_b = b.fps
    assert len(frames_a) == len(frames_b) == 23
    assert frames_a[0].shape == frames_b[0].shape == (270, 480, 3)
    for x, y in zip(frames_a, frames_b, strict=True):
        assert np.array_equal(x, y)
    assert fps_a is not None and fps_b is not None
    assert fps_b == pytest.approx(fps_a, rel=0.1)


def test_every_shared_gif_decodes(clips_dir: Path) -> None:
    gifs = sorted(clips_dir.glob("*.gif"))
    assert gifs
    for gif in gifs:
        with OpenCVSource(gif) as source:
            frames = _read_all(source)
        assert 20 <= len(frames) <= 100, gif.name
        assert frames[0].shape == (270, 480, 3)


def test_gif_falls_back_to_imreadanimation_when_videocapture_cannot(
    clips_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not hasattr(cv2, "imreadanimation"):
        pytest.skip("this OpenCV has no imreadanimation")

    def no_ffmpeg(self: OpenCVSource) -> cv2.VideoCapture:  # an OpenCV built without FFmpeg
        raise SourceError(f"{self.name}: cannot open")

    monkeypatch.setattr(OpenCVSource, "_open_capture", no_ffmpeg)
    with OpenCVSource(clips_dir / "intel_head-pose-face-detection-female.gif") as source:
        assert source.backend == "imreadanimation"
        assert len(_read_all(source)) == 23
        assert source.fps is not None and 5 < source.fps < 30
    with pytest.raises(SourceError, match="cannot open"):
        OpenCVSource(clips_dir / "opencv_vtest.avi").open()  # no fallback for other files


def test_gif_loops_via_imreadanimation(clips_dir: Path) -> None:
    if not hasattr(cv2, "imreadanimation"):
        pytest.skip("this OpenCV has no imreadanimation")
    gif = clips_dir / "intel_head-pose-face-detection-female.gif"
    with OpenCVSource(gif, loop=True, gif_reader="imreadanimation") as source:
        frames = [source.read() for _ in range(30)]
    images = [f.image for f in frames if f is not None]
    assert len(images) == 30
    assert np.array_equal(images[0], images[23])


# -- image folders ---------------------------------------------------------------


def test_folder_reads_sorted_images_and_skips_unreadable(tmp_path: Path) -> None:
    for name, level in (("b.png", 100), ("a.jpg", 50), ("c.bmp", 150)):
        cv2.imwrite(str(tmp_path / name), np.full((20, 30), level, np.uint8))  # grey -> BGR
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("ignored")
    source = ImageFolderSource(tmp_path)
    with source:
        assert [p.name for p in source.files] == ["a.jpg", "b.png", "broken.png", "c.bmp"]
        images = _read_all(source)
    assert [round(float(im.mean()) / 50) for im in images] == [1, 2, 3]
    assert all(im.shape == (20, 30, 3) for im in images)
    assert source.skipped == 1


def test_folder_loop_and_errors(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "only.png"), np.zeros((4, 4, 3), np.uint8))
    with ImageFolderSource(tmp_path, loop=True) as source:
        assert [source.read() is not None for _ in range(5)] == [True] * 5
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="no images"):
        ImageFolderSource(empty).open()
    with pytest.raises(SourceError, match="no such folder"):
        ImageFolderSource(tmp_path / "missing").open()


# -- network stream (a real HTTP server on loopback) ------------------------------


@pytest.fixture()
def http_dir(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", tmp_path
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_url_stream_reads_then_is_lost_not_ended(http_dir: tuple[str, Path]) -> None:
    host, root = http_dir
    write_video(root / "live.avi", frames=5)
    url = f"http://viewer:s3cret@{host}/live.avi"
    source = make_source("auto", url, timeout_s=5.0)
    assert isinstance(source, OpenCVSource) and source.kind == "url" and source.live
    assert "s3cret" not in source.name
    with source:
        images = [source.read() for _ in range(5)]
        assert all(f is not None for f in images)
        # A live stream that stops delivering is lost (the capture loop reopens it),
        # never a silent end of stream.
        with pytest.raises(SourceError, match="lost") as info:
            source.read()
    assert "s3cret" not in str(info.value)


def test_url_that_does_not_answer_is_a_source_error(http_dir: tuple[str, Path]) -> None:
    host, _ = http_dir
    with pytest.raises(SourceError, match="cannot open"):
        open_source("url", f"http://{host}/missing.avi", timeout_s=5.0)


def test_missing_v4l2_device_is_a_source_error() -> None:
    with pytest.raises(SourceError, match="cannot open"):
        open_source("device", "/dev/video-does-not-exist")


@pytest.mark.device
def test_real_v4l2_device_delivers_frames() -> None:
    if not Path("/dev/video0").exists():
        pytest.skip("no /dev/video0")
    with open_source("device", 0) as source:
        frames = [source.read() for _ in range(3)]
    assert all(f is not None and f.image.ndim == 3 and f.image.shape[2] == 3 for f in frames)


# -- picamera2 (the adapter against picamera2's own code: tests/test_picamera2_real.py) -----


def test_i420_to_bgr_matches_opencv_for_unpadded_input() -> None:
    rng = np.random.default_rng(1)
    bgr = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)
    out = i420_to_bgr(yuv, 64)
    assert np.array_equal(out, cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR_I420))
    with pytest.raises(SourceError):
        i420_to_bgr(np.zeros((47, 64), np.uint8), 64)


@pytest.mark.parametrize(
    ("kr", "kb", "encoding"), [(0.2126, 0.0722, "Rec709"), (0.299, 0.114, "Rec601")]
)
@pytest.mark.parametrize("full_range", [False, True])
def test_i420_to_bgr_inverts_each_matrix_and_range(
    kr: float, kb: float, encoding: str, full_range: bool
) -> None:
    rng = np.random.default_rng(2)
    bgr = cv2.GaussianBlur(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), (0, 0), 4)
    f = bgr.astype(np.float64) / 255
    y = kr * f[..., 2] + (1 - kr - kb) * f[..., 1] + kb * f[..., 0]
    cb, cr = (f[..., 0] - y) / (2 * (1 - kb)), (f[..., 2] - y) / (2 * (1 - kr))
    scale, offset = (255, 0) if full_range else (219, 16)
    cscale = 255 if full_range else 224
    sub = lambda p: p.reshape(24, 2, 32, 2).mean(axis=(1, 3))  # noqa: E731
    planes = [offset + scale * y, 128 + cscale * sub(cb), 128 + cscale * sub(cr)]
    yuv = np.concatenate([np.clip(np.rint(p), 0, 255).astype(np.uint8).reshape(-1) for p in planes])
    out = i420_to_bgr(yuv.reshape(72, 64), 64, encoding, full_range)
    assert float(np.abs(out.astype(int) - bgr.astype(int)).mean()) < 2.5


def test_picamera2_not_installed_is_a_clear_fatal_source_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # makes the import fail
    with pytest.raises(SourceFatalError, match="picamera2 is not installed"):
        Picamera2Source().open()


def test_invalid_picamera2_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="even"):
        Picamera2Source(main_size=(1279, 720))
    with pytest.raises(ValueError, match="exceed"):
        Picamera2Source(main_size=(320, 240), lores_size=(640, 480))
    assert Picamera2Source(main_size=(1280, 720), lores_size=(320, 240)).lores_size == (320, 180)


# -- the real camera (only on a Raspberry Pi with a camera attached) -------------------


@pytest.mark.device
def test_real_picamera2_delivers_main_and_lores() -> None:
    libcamera = pytest.importorskip("libcamera")
    if "standins" in str(getattr(libcamera, "__file__", "")):
        pytest.skip("libcamera is the test stand-in, not a Raspberry Pi")
    picamera2 = pytest.importorskip("picamera2")
    if not picamera2.Picamera2.global_camera_info():
        pytest.skip("no camera attached")
    with Picamera2Source(main_size=(1280, 720), lores_size=(320, 180)) as source:
        frames = [source.read() for _ in range(5)]
    for frame in frames:
        assert frame.image.shape == (720, 1280, 3)
        assert frame.detect_image is not None and frame.detect_image.shape == (180, 320, 3)
        small = cv2.resize(frame.image, (320, 180), interpolation=cv2.INTER_AREA)
        assert float(np.abs(small.astype(int) - frame.detect_image.astype(int)).mean()) < 25
    assert [f.index for f in frames] == list(range(5))
