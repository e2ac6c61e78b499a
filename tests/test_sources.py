"""Frame sources: OpenCV files/GIFs/folders/URLs/devices and picamera2 (fake and real)."""

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
from edge.service.sources.base import FrameSource, SourceError, redact_uri
from edge.service.sources.opencv_source import ImageFolderSource, OpenCVSource, guess_kind
from edge.service.sources.picamera2_source import Picamera2Source, i420_to_bgr
from tests.fakes import picamera2_fake
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


# -- picamera2, against the fake ----------------------------------------------------


@pytest.fixture()
def fake_picamera2(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    picamera2_fake.reset(cameras=1)
    monkeypatch.setitem(sys.modules, "picamera2", picamera2_fake)
    yield
    picamera2_fake.reset(cameras=1)


def _red_centre(image: np.ndarray) -> tuple[float, float]:
    """Centre (x, y) of the pure-red pixels."""
    b, g, r = (image[..., i].astype(int) for i in range(3))
    ys, xs = np.nonzero((r > 200) & (g < 60) & (b < 60))
    assert len(xs) > 0, "no red square found"
    return float(xs.mean()), float(ys.mean())


@pytest.mark.usefixtures("fake_picamera2")
def test_picamera2_main_and_lores_are_one_instant_in_bgr() -> None:
    with Picamera2Source(main_size=(1280, 720), lores_size=(320, 240)) as source:
        frames = [source.read() for _ in range(12)]  # more than buffer_count: all released
    for frame in frames:
        assert frame.image.shape == (720, 1280, 3) and frame.image.dtype == np.uint8
        assert frame.detect_image is not None
        assert frame.detect_image.shape == (240, 320, 3)
        assert frame.image.flags.c_contiguous and frame.detect_image.flags.c_contiguous
        # The red square is red in both (RGB888 is BGR in memory; I420 converted to BGR) ...
        mx, my = _red_centre(frame.image)
        lx, ly = _red_centre(frame.detect_image)
        # ... and at the same place: both arrays come from the same request.
        assert lx * 4 == pytest.approx(mx, abs=6)
        assert ly * 3 == pytest.approx(my, abs=6)
    assert [f.index for f in frames] == list(range(12))
    assert _red_centre(frames[0].image) != _red_centre(frames[1].image)  # the scene moves
    assert picamera2_fake.HARDWARE.acquired == set()  # closed and released


@pytest.mark.usefixtures("fake_picamera2")
def test_picamera2_padded_lores_stride_is_cut_off() -> None:
    # 200 px rows are padded to a 256-byte stride: the padding must not leak in.
    with Picamera2Source(main_size=(640, 480), lores_size=(200, 150)) as source:
        frame = source.read()
    assert frame.detect_image is not None and frame.detect_image.shape == (150, 200, 3)
    expected = cv2.resize(frame.image, (200, 150), interpolation=cv2.INTER_AREA)
    diff = np.abs(frame.detect_image.astype(int) - expected.astype(int))
    assert float(diff.mean()) < 6  # YUV 4:2:0 round trip only


def test_i420_to_bgr_matches_opencv_for_unpadded_input() -> None:
    rng = np.random.default_rng(1)
    bgr = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)
    out = i420_to_bgr(yuv, 64)
    assert np.array_equal(out, cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR_I420))
    with pytest.raises(SourceError):
        i420_to_bgr(np.zeros((47, 64), np.uint8), 64)


@pytest.mark.usefixtures("fake_picamera2")
def test_picamera2_without_lores_detects_on_main() -> None:
    with Picamera2Source(main_size=(640, 480), lores_size=None) as source:
        frame = source.read()
    assert frame.detect_image is None and frame.image.shape == (480, 640, 3)


@pytest.mark.usefixtures("fake_picamera2")
def test_picamera2_requested_fps_sets_frame_duration() -> None:
    with Picamera2Source(fps=20.0) as source:
        cam = source._cam
        assert cam.camera_configuration()["controls"]["FrameDurationLimits"] == (50000, 50000)
        assert cam.camera_configuration()["main"]["format"] == "RGB888"
        assert cam.camera_configuration()["lores"]["format"] == "YUV420"
        assert source.fps == 20.0


def test_picamera2_not_installed_is_a_clear_source_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # makes the import fail
    with pytest.raises(SourceError, match="picamera2 is not installed"):
        Picamera2Source().open()


@pytest.mark.usefixtures("fake_picamera2")
def test_picamera2_no_camera_and_busy_camera() -> None:
    with pytest.raises(SourceError, match="no such camera"):
        Picamera2Source(camera_num=1).open()
    first = Picamera2Source()
    first.open()
    second = Picamera2Source()
    with pytest.raises(SourceError, match="cannot open camera"):
        second.open()
    first.close()
    second.open()  # released by close()
    assert second.read().image.shape == (720, 1280, 3)
    second.close()


@pytest.mark.usefixtures("fake_picamera2")
def test_picamera2_lost_camera_raises_then_reopens() -> None:
    source = Picamera2Source()
    source.open()
    assert source.read() is not None
    picamera2_fake.unplug(0)
    with pytest.raises(SourceError, match="lost: RuntimeError"):
        source.read()
    source.close()
    assert picamera2_fake.HARDWARE.acquired == set()
    with pytest.raises(SourceError, match="no such camera"):
        source.open()
    picamera2_fake.plug(0)
    source.open()
    frame = source.read()
    assert frame.index == 1  # the count continues across the reopen
    source.close()


@pytest.mark.usefixtures("fake_picamera2")
def test_picamera2_stalled_camera_times_out_instead_of_hanging() -> None:
    with Picamera2Source(timeout_s=0.5) as source:
        source.read()
        picamera2_fake.stall(0)
        with pytest.raises(SourceError, match="TimeoutError"):
            source.read()


def test_invalid_picamera2_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="even"):
        Picamera2Source(main_size=(1279, 720))
    with pytest.raises(ValueError, match="exceed"):
        Picamera2Source(main_size=(320, 240), lores_size=(640, 480))


# -- the fake itself behaves like picamera2 where it matters -------------------------


@pytest.mark.usefixtures("fake_picamera2")
def test_fake_picamera2_is_strict_like_the_real_one() -> None:
    cam = picamera2_fake.Picamera2()
    config = cam.create_video_configuration(main={"size": (640, 480), "format": "RGB888"})
    assert config["main"]["format"] == "RGB888" and config["buffer_count"] == 6
    assert config["lores"] is None
    with pytest.raises(ValueError, match="Bad key"):
        cam.create_video_configuration(main={"sise": (640, 480)})
    bad = cam.create_video_configuration(main={"size": (320, 240)}, lores={"size": (640, 480)})
    with pytest.raises(RuntimeError, match="exceed"):
        cam.configure(bad)
    with pytest.raises(RuntimeError, match="block forever"):
        cam.configure(config)
        cam.capture_request()  # not started
    cam.start()
    with pytest.raises(RuntimeError, match="Camera must be stopped"):
        cam.configure(config)
    held = [cam.capture_request(wait=1.0) for _ in range(6)]  # all buffers held
    with pytest.raises(TimeoutError):
        cam.capture_request(wait=1.0)
    held[0].release()
    with pytest.raises(RuntimeError, match="failed to find buffer"):
        held[0].make_array("main")
    with cam.captured_request(wait=1.0) as request:
        assert request.make_array("main").shape == (480, 640, 3)
        with pytest.raises(RuntimeError, match="not defined"):
            request.make_array("lores")
    for r in held[1:]:
        r.release()
    cam.close()
    cam.close()  # idempotent


# -- the real camera (only on a Raspberry Pi with a camera attached) -------------------


@pytest.mark.device
def test_real_picamera2_delivers_main_and_lores() -> None:
    picamera2 = pytest.importorskip("picamera2")
    if not picamera2.Picamera2.global_camera_info():
        pytest.skip("no camera attached")
    with Picamera2Source(main_size=(1280, 720), lores_size=(320, 240)) as source:
        frames = [source.read() for _ in range(5)]
    for frame in frames:
        assert frame.image.shape == (720, 1280, 3)
        assert frame.detect_image is not None and frame.detect_image.shape == (240, 320, 3)
        small = cv2.resize(frame.image, (320, 240), interpolation=cv2.INTER_AREA)
        assert float(np.abs(small.astype(int) - frame.detect_image.astype(int)).mean()) < 25
    assert [f.index for f in frames] == list(range(5))
