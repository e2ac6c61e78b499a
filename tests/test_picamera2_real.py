"""The picamera2 adapter against picamera2's own code (PyPI, 0.3.36) over a stand-in libcamera.

The adapter's calls go through the real ``Picamera2`` (its camera-manager thread, event
loop, jobs, ``CompletedRequest``, ``make_array``, controls and configuration checks); only
what needs a Raspberry Pi is stood in (``tests/fakes/standins``: libcamera with a simulated
sensor and ISP, the DRM bindings, the DMA heap).
"""

from __future__ import annotations

import gc
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.service.capture import CaptureThread
from edge.service.sources import make_source
from edge.service.sources.base import SourceError, SourceFatalError
from edge.service.sources.picamera2_source import Picamera2Options, Picamera2Source
from tests.fakes import picamera2_stack

picamera2 = picamera2_stack.load()
sensor = picamera2_stack.sensor()
# picamera2 0.3.36's NullPreview still calls Thread.setDaemon().
pytestmark = pytest.mark.filterwarnings("ignore:setDaemon:DeprecationWarning")


@pytest.fixture(autouse=True)
def rig() -> Iterator[Any]:
    yield sensor.reset("imx708")
    gc.collect()
    sensor.reset("imx708")


def _red_box(image: np.ndarray) -> tuple[float, float, int, int]:
    """(centre x, centre y, width, height) of the pure-red pixels."""
    b, g, r = (image[..., i].astype(int) for i in range(3))
    ys, xs = np.nonzero((r > 200) & (g < 70) & (b < 70))
    assert len(xs) > 0, "no red square found"
    return float(xs.mean()), float(ys.mean()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1


def _read(source: Picamera2Source, n: int = 3) -> list[Any]:
    frames = []
    with source:
        for _ in range(n):
            frame = source.read()
            assert frame is not None
            frames.append(frame)
    return frames


# -- the streams ------------------------------------------------------------------------------


def test_main_and_lores_are_one_instant_in_bgr() -> None:
    source = Picamera2Source(main_size=(1280, 720), lores_size=(320, 180))
    frames = _read(source, 8)  # more than buffer_count: every request went back
    for frame in frames:
        assert frame.image.shape == (720, 1280, 3) and frame.image.dtype == np.uint8
        assert frame.detect_image is not None and frame.detect_image.shape == (180, 320, 3)
        assert frame.image.flags.c_contiguous and frame.detect_image.flags.c_contiguous
        mx, my, _, _ = _red_box(frame.image)  # red in both: RGB888 is BGR, I420 converted
        lx, ly, _, _ = _red_box(frame.detect_image)
        assert lx * 4 == pytest.approx(mx, abs=8)  # same place: one request
        assert ly * 4 == pytest.approx(my, abs=8)
    assert [f.index for f in frames] == list(range(8))
    assert len({_red_box(f.image)[0] for f in frames}) > 1  # the scene moves


def test_padded_lores_stride_is_cut_off() -> None:
    # 200-pixel rows are padded to a 256-byte stride: the padding must not leak in.
    frame = _read(Picamera2Source(main_size=(640, 480), lores_size=(200, 150)), 1)[0]
    assert frame.detect_image is not None and frame.detect_image.shape == (150, 200, 3)
    import cv2

    expected = cv2.resize(frame.image, (200, 150), interpolation=cv2.INTER_AREA)
    diff = np.abs(frame.detect_image.astype(int) - expected.astype(int))
    assert float(np.median(diff)) < 4


# -- item 4: lores keeps main's aspect ratio ---------------------------------------------------


def test_factory_lores_keeps_mains_aspect_ratio() -> None:
    source = make_source("picamera2", "0", size=(1280, 720), detect_size=(320, 240))
    assert isinstance(source, Picamera2Source) and source.lores_size == (320, 180)
    frame = _read(source, 1)[0]
    assert frame.detect_image is not None and frame.detect_image.shape == (180, 320, 3)
    _, _, mw, mh = _red_box(frame.image)
    _, _, lw, lh = _red_box(frame.detect_image)
    assert mw / mh == pytest.approx(1.0, abs=0.05)  # a square on the sensor is square ...
    assert lw / lh == pytest.approx(1.0, abs=0.1)  # ... in lores too: faces are not squeezed


def test_factory_without_detect_size_detects_on_main() -> None:
    source = make_source("picamera2", "0", size=(640, 360))
    frame = _read(source, 1)[0]  # type: ignore[arg-type]
    assert frame.detect_image is None and frame.image.shape == (360, 640, 3)
    assert sensor.camera(0).streams and len(sensor.camera(0).streams) == 2  # main + raw


# -- item 5: the sensor mode -------------------------------------------------------------------


def test_sensor_output_size_picks_a_full_field_of_view(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        cropped = _read(Picamera2Source(main_size=(1280, 720)), 1)[0]
    assert sensor.camera(0).last_mode.size == (1536, 864)  # picamera2's pick for 1280x720
    assert "cropped field of view" in caplog.text
    full = _read(
        Picamera2Source(
            main_size=(1280, 720),
            options=Picamera2Options(sensor_output_size=(2304, 1296), sensor_bit_depth=10),
        ),
        1,
    )[0]
    assert sensor.camera(0).last_mode.size == (2304, 1296)
    assert sensor.camera(0).crop[2] == 4608  # the whole sensor width
    # The same square covers 2/3 of the pixels with the full field of view.
    assert _red_box(full.image)[2] / _red_box(cropped.image)[2] == pytest.approx(2 / 3, abs=0.05)


def test_sensor_output_size_that_is_not_a_mode_is_one_clear_line() -> None:
    source = Picamera2Source(options=Picamera2Options(sensor_output_size=(2000, 1000)))
    with pytest.raises(SourceFatalError, match=r"not a mode of this camera \(modes: 1536x864"):
        source.open()
    assert sensor.camera(0).owner is None  # released


# -- item 7: focus, exposure, transform, colour space, timestamps, frame rate --------------------


def test_autofocus_exposure_and_transform_reach_the_camera() -> None:
    identity = _read(Picamera2Source(main_size=(640, 360)), 1)[0]
    told = dict(sensor.camera(0).controls)
    assert told["AfMode"] == 2  # Continuous on Camera Module 3
    options = Picamera2Options(
        ae_exposure_mode="short", exposure_time_us=4000, transform="hflip"
    )
    flipped = _read(Picamera2Source(main_size=(640, 360), options=options), 1)[0]
    told = sensor.camera(0).controls
    assert told["AeExposureMode"] == 1 and told["ExposureTime"] == 4000
    assert told["ExposureTimeMode"] == 1  # picamera2 switches to a fixed shutter, gain stays auto
    # Green rises left to right on the sensor; mirrored, it falls.
    assert identity.image[10, -10, 1] > identity.image[10, 10, 1]
    assert flipped.image[10, -10, 1] < flipped.image[10, 10, 1]


def test_fixed_focus_camera_opens_without_autofocus() -> None:
    sensor.reset("imx219")
    _read(Picamera2Source(main_size=(640, 480)), 1)
    assert "AfMode" not in sensor.camera(0).controls


def test_lores_colours_match_main_by_default() -> None:
    # picamera2's default for a >= 1280x720 video main is Rec.709; OpenCV's I420 is BT.601.
    import cv2

    frame = _read(Picamera2Source(main_size=(1280, 720), lores_size=(320, 180)), 1)[0]
    assert frame.detect_image is not None
    expected = cv2.resize(frame.image, (320, 180), interpolation=cv2.INTER_AREA)
    diff = np.abs(frame.detect_image.astype(int) - expected.astype(int))
    assert float(np.median(diff)) <= 2.0


@pytest.mark.parametrize("colour_space", ["smpte170m", "rec709", "sycc"])
def test_lores_colours_match_main_in_each_colour_space(colour_space: str) -> None:
    import cv2

    options = Picamera2Options(colour_space=colour_space)  # type: ignore[arg-type]
    source = Picamera2Source(main_size=(1280, 720), lores_size=(320, 180), options=options)
    frame = _read(source, 1)[0]
    assert frame.detect_image is not None
    expected = cv2.resize(frame.image, (320, 180), interpolation=cv2.INTER_AREA)
    diff = np.abs(frame.detect_image.astype(int) - expected.astype(int))
    assert float(np.median(diff)) <= 2.0, colour_space


def test_capture_time_is_the_sensor_timestamp() -> None:
    sensor.camera(0).latency_s = 0.3  # exposure to hand-over
    with Picamera2Source(main_size=(320, 180), lores_size=None) as source:
        frame = source.read()
        now_wall, now_mono = time.time(), time.monotonic_ns()
    assert frame is not None
    exposed = [now_wall - (now_mono - ts) / 1e9 for ts in sensor.camera(0).timestamps]
    assert min(abs(frame.captured_at - t) for t in exposed) < 0.03
    assert frame.captured_at < now_wall - 0.25


def test_fps_is_the_frames_real_duration() -> None:
    options = Picamera2Options(sensor_output_size=(4608, 2592))  # the 14 fps full mode
    source = Picamera2Source(main_size=(640, 360), lores_size=None, fps=30.0, options=options)
    with source:
        assert source.fps == 30.0  # nothing measured yet
        source.read()
        assert source.fps == pytest.approx(1e6 / 69_669, rel=0.01)


# -- item 6: what the real library does -----------------------------------------------------


def test_camera_without_frame_duration_control_still_opens(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sensor.reset("no_vblank")
    with caplog.at_level(logging.WARNING):
        frames = _read(Picamera2Source(main_size=(640, 480), lores_size=None, fps=20.0), 2)
    assert len(frames) == 2
    assert "no FrameDurationLimits control" in caplog.text


def test_stalled_camera_times_out_then_closes_and_reopens() -> None:
    source = Picamera2Source(main_size=(320, 180), lores_size=None, timeout_s=0.5)
    source.open()
    assert source.read() is not None
    sensor.stall(0)
    with pytest.raises(SourceError, match="TimeoutError"):  # the real library's error
        source.read()
    closer = __import__("threading").Thread(target=source.close, daemon=True)
    closer.start()
    closer.join(20)
    assert not closer.is_alive(), "close() hung behind the timed-out capture job"
    assert sensor.camera(0).owner is None
    sensor.plug(0)
    frame = _read(source, 1)[0]
    assert frame.index == 1  # the count continues across the reopen


def test_unplugged_csi_camera_stays_listed_and_fails_at_start() -> None:
    sensor.unplug(0)
    assert len(picamera2.Picamera2.global_camera_info()) == 1  # CSI cameras stay enumerated
    source = Picamera2Source(main_size=(320, 180), lores_size=None)
    with pytest.raises(SourceError, match="Failed to start camera"):
        source.open()
    assert sensor.camera(0).owner is None  # the failed open released it
    sensor.plug(0)
    assert _read(source, 1)


# -- item 1: failed opens leak nothing ------------------------------------------------------


def _failing_opens(source: Picamera2Source, n: int) -> list[str]:
    errors = []
    for _ in range(n):
        with pytest.raises(SourceError) as info:
            source.open()
        errors.append(str(info.value))
    return errors


def test_failed_opens_without_a_camera_leave_the_descriptor_count_flat() -> None:
    sensor.reset()  # no camera
    source = Picamera2Source(lores_size=None)
    _failing_opens(source, 2)  # first use: picamera2's camera manager opens its eventfd
    gc.collect()
    before = picamera2_stack.open_fds()
    errors = _failing_opens(source, 50)
    gc.collect()
    assert picamera2_stack.open_fds() == before
    assert "no such camera" in errors[-1]


def test_busy_camera_failures_leave_the_descriptor_count_flat() -> None:
    sensor.hold(0)  # another process has the camera
    source = Picamera2Source(options=Picamera2Options(busy_limit=1000))
    _failing_opens(source, 2)
    gc.collect()
    before = picamera2_stack.open_fds()
    errors = _failing_opens(source, 50)
    gc.collect()
    assert picamera2_stack.open_fds() == before
    assert "camera busy" in errors[-1]
    assert not picamera2.Picamera2._cm.cameras  # no failed instance left in the manager
    sensor.hold(0, held=False)
    assert _read(source, 1)  # and the camera opens once it is free


def test_busy_camera_ends_the_stream_after_busy_limit() -> None:
    sensor.hold(0)
    source = Picamera2Source(options=Picamera2Options(busy_limit=3))
    capture = CaptureThread(source, backoff_initial=0.01, backoff_max=0.01)
    capture.start()
    capture.stop_event.wait(0)  # the thread ends by itself
    capture._thread.join(30)
    assert not capture.running
    status = capture.status
    assert status.state == "failed" and status.attempts == 3
    assert "camera busy" in status.last_error and "3 times in a row" in status.last_error


# -- items 2 and 3: an old picamera2, a broken install --------------------------------------


class _Picamera2Before0320(picamera2.Picamera2):  # type: ignore[misc,name-defined]
    """picamera2 0.3.17-0.3.19 (Debian stable shipped 0.3.19): no ``wait`` here."""

    def captured_request(self, flush: Any = None) -> Any:
        return super().captured_request(flush=flush)


def test_picamera2_before_0_3_20_still_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(picamera2, "Picamera2", _Picamera2Before0320)
    frames = _read(Picamera2Source(main_size=(320, 180), lores_size=(160, 90)), 3)
    assert [f.index for f in frames] == [0, 1, 2]


def test_picamera2_without_wait_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    class Ancient(picamera2.Picamera2):  # type: ignore[misc,name-defined]
        def capture_request(self, signal_function: Any = None) -> Any:  # 0.3.16 and older
            return super().capture_request(signal_function=signal_function)

    monkeypatch.setattr(picamera2, "Picamera2", Ancient)
    with pytest.raises(SourceFatalError, match="too old"):
        Picamera2Source().open()


def test_numpy_simplejpeg_clash_is_named_and_not_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # apt's simplejpeg built for numpy 1, imported under the venv's numpy 2:
    (tmp_path / "simplejpeg.py").write_text(
        "raise ValueError('numpy.dtype size changed, may indicate binary incompatibility. "
        "Expected 96 from C header, got 88 from PyObject')\n"
    )
    before = set(sys.modules)
    for name in [m for m in sys.modules if m == "simplejpeg" or m.startswith("picamera2")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        capture = CaptureThread(Picamera2Source(), backoff_initial=0.01, backoff_max=0.01)
        capture.start()
        capture._thread.join(30)
    finally:
        for name in set(sys.modules) - before:
            if name == "simplejpeg" or name.startswith("picamera2"):
                del sys.modules[name]
    status = capture.status
    assert status.state == "failed" and status.attempts == 1  # not retried for ever
    assert "numpy.dtype size changed" in status.last_error
    assert "numpy<2" in status.last_error  # names the fix
