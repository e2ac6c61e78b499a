"""The ``[source]`` picamera2 keys: documented, validated by ``edge check-config``, passed on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge.errors import ConfigError
from edge.service.config import load_settings
from edge.service.sources import make_source
from edge.service.sources.picamera2_source import Picamera2Options, Picamera2Source

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "edge.toml"
BASE = '[device]\nid = "cam-01"\n\n[mqtt]\nhost = "127.0.0.1"\ntls = false\n\n[source]\n'
KEYS = (
    "sensor_output_size", "sensor_bit_depth", "af_mode", "ae_exposure_mode",
    "exposure_time_us", "transform", "colour_space", "camera_busy_limit",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("EDGE_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


def _problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "edge.toml"
    path.write_text(BASE + text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert info.value.exit_code == 78
    return info.value.problems


def test_each_camera_key_is_documented_in_the_example() -> None:
    text = EXAMPLE.read_text()
    section = text[text.index("[source]") : text.index("[detector]")]
    for key in KEYS:
        assert f"{key} =" in section, key


def test_camera_keys_reach_the_source(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(
        BASE + 'kind = "picamera2"\nsize = "1280x720"\nlores_size = "640x360"\n'
        'sensor_output_size = "2304x1296"\nsensor_bit_depth = 10\naf_mode = "manual"\n'
        'ae_exposure_mode = "short"\nexposure_time_us = 4000\ntransform = "rot180"\n'
        'colour_space = "rec709"\ncamera_busy_limit = 3\n'
    )
    src = load_settings(path).source
    options = src.camera_options()
    assert options == Picamera2Options(
        sensor_output_size=(2304, 1296), sensor_bit_depth=10, af_mode="manual",
        ae_exposure_mode="short", exposure_time_us=4000, transform="rot180",
        colour_space="rec709", busy_limit=3,
    )
    source = make_source(src.factory_kind, src.uri, size=src.size, detect_size=src.lores_size,
                         camera=options)
    assert isinstance(source, Picamera2Source) and source.options == options
    assert source.lores_size == (640, 360)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("exposure_time_us = 70000\n", "source.exposure_time_us: 70000 us is not shorter than a"),
        ("exposure_time_us = 10\n", "source.exposure_time_us: Input should be greater than or"),
        ('sensor_output_size = "640x480"\n', "source.sensor_output_size: 640x480 is smaller"),
        ('sensor_output_size = "huge"\n', "source.sensor_output_size: expected WIDTHxHEIGHT"),
        ("sensor_bit_depth = 10\n", "source.sensor_bit_depth: set sensor_output_size too"),
        ("sensor_bit_depth = 9\n", "source.sensor_bit_depth: Input should be 8, 10, 12 or 16"),
        ('af_mode = "auto"\n', "source.af_mode: Input should be 'continuous' or 'manual'"),
        ('ae_exposure_mode = "fast"\n', "source.ae_exposure_mode: Input should be 'normal'"),
        ('transform = "rot90"\n', "source.transform: Input should be 'identity'"),
        ('colour_space = "bt2020"\n', "source.colour_space: Input should be 'smpte170m'"),
        ("camera_busy_limit = 0\n", "source.camera_busy_limit: Input should be greater than"),
    ],
)
def test_bad_camera_keys_are_one_line_each(tmp_path: Path, text: str, problem: str) -> None:
    problems = _problems(tmp_path, text)
    assert any(p.startswith(problem) for p in problems), problems


def test_check_config_names_a_bad_camera_key_and_exits_78(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(BASE + 'kind = "picamera2"\ntransform = "rot90"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "edge.cli", "check-config", "--config", str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 78, proc.stdout + proc.stderr
    assert "source.transform" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_role_writes_the_camera_keys_into_source(tmp_path: Path) -> None:
    """edge_device_source_camera lands in edge.toml's [source] and passes check-config."""
    import json
    import os

    role = REPO / "ansible" / "roles" / "edge_device"
    out = tmp_path / "edge.toml"
    play = [
        {
            "name": "render edge.toml",
            "hosts": "localhost",
            "gather_facts": False,
            "vars_files": [str(role / "defaults" / "main.yml"), str(role / "vars" / "main.yml")],
            "tasks": [
                {
                    "name": "render",
                    "ansible.builtin.template": {
                        "src": str(role / "templates" / "edge.toml.j2"),
                        "dest": str(out),
                        "mode": "0644",
                    },
                }
            ],
        }
    ]
    playbook = tmp_path / "render.yml"
    playbook.write_text(json.dumps(play))
    camera = {"sensor_output_size": "2304x1296", "transform": "rot180", "exposure_time_us": 4000}
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,",
            "-c", "local", "-e", f"ansible_python_interpreter={sys.executable}",
            "-e", json.dumps({"edge_device_source_camera": camera, "edge_device_id": "cam-01",
                              "edge_device_broker_host": "127.0.0.1"}),
            str(playbook),
        ],
        capture_output=True, text=True, timeout=120, check=False,
        env=dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="False"),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    from edge.compat import tomllib

    source = tomllib.loads(out.read_text())["source"]
    assert {k: source[k] for k in camera} == camera
    options = load_settings(out).source.camera_options()
    assert options.sensor_output_size == (2304, 1296) and options.transform == "rot180"
