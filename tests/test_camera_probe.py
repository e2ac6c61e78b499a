"""``edge check-config`` names the camera sources the host can open (issue 22, item 3).

A Raspberry Pi has picamera2; a Jetson (JetPack 6, Ubuntu 22.04) has none and reads V4L2
devices through OpenCV. picamera2 is the real package over the stand-in libcamera
(``tests/fakes/picamera2_stack``); the V4L2 side opens real paths with OpenCV (this
machine has no camera, so a device that is not a capture device stands in for one that
does not open).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge.service.sources.probe import camera_report, picamera2_report, v4l2_report


def test_picamera2_is_named_with_the_cameras_libcamera_sees() -> None:
    from tests.fakes import picamera2_stack

    picamera2_stack.load()
    picamera2_stack.sensor().reset("imx708")
    assert picamera2_report() == "picamera2: importable, 1 camera(s) (0: imx708)"


def test_picamera2_not_importable_says_why() -> None:
    def importer(name: str) -> object:
        raise ModuleNotFoundError("No module named 'libcamera'")

    assert picamera2_report(importer) == (
        "picamera2: not importable (No module named 'libcamera')"
    )


def test_each_video_device_is_named_in_order_with_whether_it_opens(tmp_path: Path) -> None:
    for name in ("video10", "video2", "video0", "videoX", "media0"):
        (tmp_path / name).write_bytes(b"")
    lines = v4l2_report(tmp_path)
    assert [line.split()[1] for line in lines] == [
        str(tmp_path / n) for n in ("video0", "video2", "video10")
    ]
    assert all("does not open with OpenCV" in line for line in lines)
    assert v4l2_report(tmp_path / "none") == [f"V4L2: no {tmp_path / 'none'}/video* device"]


def test_camera_report_has_both_kinds(tmp_path: Path) -> None:
    report = camera_report(tmp_path)
    assert report[0].startswith("picamera2: ")
    assert report[1:] == [f"V4L2: no {tmp_path}/video* device"]


@pytest.mark.parametrize("kind", ["opencv", "picamera2"])
def test_check_config_prints_the_cameras_and_values_only_does_not(
    tmp_path: Path, kind: str
) -> None:
    state, models, creds = tmp_path / "state", tmp_path / "models", tmp_path / "creds"
    for d in (state, models, creds):
        d.mkdir()
    (models / "manifest.json").write_text("{}")
    for name in ("device.key", "device-signing.key", "signer.pub"):
        (creds / name).write_text("x")
    config = tmp_path / "edge.toml"
    config.write_text(
        f'[device]\nid = "cam-01"\nstate_dir = "{state}"\nmodels_dir = "{models}"\n'
        f'[source]\nkind = "{kind}"\n'
        '[mqtt]\nhost = "127.0.0.1"\ntls = false\n'
    )
    run = [sys.executable, "-m", "edge", "check-config", "--config", str(config)]
    env = {"CREDENTIALS_DIRECTORY": str(creds), "PATH": "/usr/bin:/bin"}
    full = subprocess.run(run, capture_output=True, text=True, env=env, timeout=120)
    assert full.returncode == 0, full.stderr
    lines = full.stdout.splitlines()
    cams = [i for i, line in enumerate(lines) if line.strip().startswith("cameras")]
    assert cams, full.stdout
    # A subprocess has no stand-in libcamera on its path: picamera2 does not import here.
    assert "picamera2: not importable (" in lines[cams[0]]
    assert any("V4L2: " in line for line in lines[cams[0]:])
    note = "source.kind is picamera2, which cannot be opened here"
    assert (note in full.stdout) == (kind == "picamera2")
    values = subprocess.run([*run, "--values-only"], capture_output=True, text=True, env=env,
                            timeout=120)
    assert values.returncode == 0, values.stderr
    assert "cameras" not in values.stdout
