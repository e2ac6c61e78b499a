"""edge.service.config and `edge check-config`: real TOML files, real environment variables, real
subprocesses for the exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretBytes

from edge.errors import ConfigError
from edge.service.config import (
    DEFAULT_CONFIG_PATH,
    Settings,
    check_files,
    config_path,
    load_settings,
)

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "edge.toml"
EDGE = Path(sys.executable).with_name("edge")

MINIMAL = """\
[device]
id = "cam-01"

[mqtt]
host = "127.0.0.1"
tls = false
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No EDGE_ variable or credentials directory leaks in from the caller."""
    for name in list(os.environ):
        if name.upper().startswith("EDGE_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "edge.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_of(path: Path | None, **kw: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(path, **kw)  # type: ignore[arg-type]
    assert info.value.exit_code == 78
    return info.value.problems


# --- loading and precedence -------------------------------------------------------------------


def test_example_config_is_valid_and_complete() -> None:
    settings = load_settings(EXAMPLE)
    assert settings.device.id == "van-07-cam-1"
    assert settings.mqtt.tls is True
    assert settings.mqtt.port == 8883
    assert settings.recognition.threshold_floor == {"arcface112": 0.5, "dlib150": 0.5}
    assert settings.retention.days == 31
    # Every field of every section appears in the example (set or commented out).
    text = EXAMPLE.read_text()
    for section_name, section_field in Settings.model_fields.items():
        assert f"[{section_name}]" in text
        model = section_field.annotation
        for key in model.model_fields:  # type: ignore[union-attr]
            assert f"{key} =" in text or f"[{section_name}.{key}]" in text, (section_name, key)


def test_every_field_has_a_description() -> None:
    for section_name, section_field in Settings.model_fields.items():
        assert section_field.description, section_name
        model = section_field.annotation
        for key, field in model.model_fields.items():  # type: ignore[union-attr]
            assert field.description, f"{section_name}.{key}"


def test_minimal_file_gets_defaults_and_derived_paths(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, MINIMAL))
    assert settings.device.state_dir == Path("/var/lib/edge")
    assert settings.bundle_path == Path("/var/lib/edge/watchlist.bundle")
    assert settings.outbox_path == Path("/var/lib/edge/outbox.sqlite")
    assert settings.mqtt_client_id == "edge-cam-01"
    assert settings.topic_root == "lfr/cam-01"
    assert settings.source.size == (1280, 720)
    assert settings.source.factory_kind == "auto"
    assert settings.source.paced is True
    assert settings.recognition.model_name == "sface_2021dec_int8"
    assert settings.recognition.floor_for("dlib150") == 0.5
    with pytest.raises(ConfigError, match=r"recognition\.threshold_floor\.arcface"):
        settings.recognition.floor_for("arcface")


def test_state_dir_moves_the_derived_paths(tmp_path: Path) -> None:
    text = MINIMAL.replace('id = "cam-01"', f'id = "cam-01"\nstate_dir = "{tmp_path}"')
    settings = load_settings(write(tmp_path, text))
    assert settings.bundle_path == tmp_path / "watchlist.bundle"
    assert settings.outbox_path == tmp_path / "outbox.sqlite"


def test_precedence_kwargs_over_env_over_file_over_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, MINIMAL + "port = 1884\nkeepalive_s = 20\n")
    assert load_settings(path).mqtt.port == 1884  # file beats default
    assert load_settings(path).mqtt.stats_interval_s == 60.0  # default
    monkeypatch.setenv("EDGE_MQTT__PORT", "1885")
    settings = load_settings(path)
    assert settings.mqtt.port == 1885  # env beats file
    assert settings.mqtt.keepalive_s == 20  # the file's other keys in that section survive
    assert settings.mqtt.host == "127.0.0.1"
    settings = load_settings(path, overrides={"mqtt": {"port": 1886}})
    assert settings.mqtt.port == 1886  # kwargs beat env
    assert settings.mqtt.keepalive_s == 20


def test_env_sets_nested_mapping_and_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_RECOGNITION__THRESHOLD_FLOOR", '{"dlib150": 0.45, "arcface": 0.3}')
    monkeypatch.setenv("EDGE_SOURCE__SIZE", "1920x1080")
    monkeypatch.setenv("edge_source__lores_size", "[960, 540]")  # case does not matter
    settings = load_settings(write(tmp_path, MINIMAL))
    assert settings.recognition.threshold_floor == {"dlib150": 0.45, "arcface": 0.3}
    assert settings.source.size == (1920, 1080)
    assert settings.source.lores_size == (960, 540)


def test_edge_config_names_the_file_and_flag_beats_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = write(tmp_path, MINIMAL, "a.toml")
    b = write(tmp_path, MINIMAL.replace("cam-01", "cam-02"), "b.toml")
    assert config_path(None) == DEFAULT_CONFIG_PATH
    monkeypatch.setenv("EDGE_CONFIG", str(b))
    assert load_settings(None).device.id == "cam-02"
    assert load_settings(a).device.id == "cam-01"


# --- problems, one line each, naming the key --------------------------------------------------


def test_out_of_range_and_unknown_keys_in_file(tmp_path: Path) -> None:
    text = MINIMAL + "port = 70000\nbogus = 1\n\n[source]\nfps = 0\nwhat = 2\n\n[extra]\nx = 1\n"
    problems = problems_of(write(tmp_path, text))
    assert "mqtt.port: Input should be less than 65536" in problems
    assert "mqtt.bogus: unknown key" in problems
    assert "source.fps: Input should be greater than 0" in problems
    assert "source.what: unknown key" in problems
    assert "extra: unknown key" in problems
    assert len(problems) == 5


def test_unknown_keys_in_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_BOGUS", "1")
    monkeypatch.setenv("EDGE_MQTT_PORT", "1884")  # one underscore: not mqtt.port
    monkeypatch.setenv("EDGE_MQTT__NOPE", "2")
    monkeypatch.setenv("EDGE_MQTT__KEEPALIVE_S", "soon")
    problems = problems_of(write(tmp_path, MINIMAL))
    assert sorted(problems) == sorted(
        [
            "bogus: unknown key (environment variable EDGE_BOGUS)",
            "mqtt_port: unknown key (environment variable EDGE_MQTT_PORT)",
            "mqtt.nope: unknown key (environment variable EDGE_MQTT__NOPE)",
            "mqtt.keepalive_s: Input should be a valid integer, unable to parse string as an "
            "integer (environment variable EDGE_MQTT__KEEPALIVE_S)",
        ]
    )


def test_non_setting_edge_variables_are_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_MODELS_DIR", str(tmp_path))  # edge.vision.manifest's, not a setting
    monkeypatch.setenv("EDGE_VENV", ".venv")  # run.sh's
    monkeypatch.setenv("EDGE_CONFIG", str(write(tmp_path, MINIMAL)))
    assert load_settings(None).device.id == "cam-01"


def test_bad_json_in_env_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_RECOGNITION__THRESHOLD_FLOOR", "{not json")
    problems = problems_of(write(tmp_path, MINIMAL))
    assert len(problems) == 1
    assert "recognition" in problems[0]


def test_required_keys(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, "[source]\nkind = 'opencv'\n"))
    assert problems == ["device: Field required", "mqtt: Field required"]
    problems = problems_of(write(tmp_path, "[device]\n[mqtt]\ntls = false\n"))
    assert problems == ["device.id: Field required", "mqtt.host: Field required"]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('[device]\nid = "Cam_01"', "device.id: String should match pattern"),
        ('[device]\nid = "cam-01"\nkey_credential = "../etc/shadow"', "device.key_credential:"),
        ("[source]\nsize = 'big'", "source.size: expected WIDTHxHEIGHT, e.g. 1280x720"),
        ("[source]\nsize = '8x8'", "source.size: width and height must each be between"),
        (
            "[source]\nlores_size = '1920x1080'",
            "source.lores_size: 1920x1080 does not fit inside size 1280x720",
        ),
        (
            "[source]\nlores_size = '320x240'",
            "source.lores_size: 320x240 has another aspect ratio than size 1280x720",
        ),
        ("[source]\nkind = 'picamera2'\nuri = '/dev/video0'", "source.uri: for picamera2"),
        ("[source]\nkind = 'webcam'", "source.kind: Input should be 'picamera2', 'opencv'"),
        ("[source]\npace = 'fast'", "source.pace: Input should be 'native' or 'flat'"),
        ("[detector]\nscore_threshold = 1.0", "detector.score_threshold: Input should be less"),
        (
            "[quality]\nmin_face_px = 10",
            "quality.min_face_px: 10 is below detector.min_face_px 20",
        ),
        ("[quality]\nmax_yaw = 1.5", "quality.max_yaw: Input should be less than or equal to 1"),
        (
            "[recognition]\nprecision = 'int4'",
            "recognition.precision: Input should be 'int8' or 'float32'",
        ),
        (
            "[recognition.threshold_floor]\ndlib150 = 1.2",
            "recognition.threshold_floor.dlib150: floor must be between 0 and 1",
        ),
        (
            "[recognition.threshold_floor]\ndlib150 = 0.0",
            "recognition.threshold_floor.dlib150: floor must be between 0 and 1",
        ),
        (
            "[recognition]\nthreshold_floor = {}",
            "recognition.threshold_floor: give at least one family",
        ),
        (
            "[recognition.threshold_floor]\n'DLIB' = 0.4",
            "recognition.threshold_floor.DLIB: family names are [a-z0-9_]",
        ),
        ("[recognition]\nembeds_per_track = 0", "recognition.embeds_per_track: Input should be"),
        ("[recognition]\nembeds_per_frame = 0", "recognition.embeds_per_frame: Input should be"),
        ("[recognition]\nmin_quality_gain = -0.1",
         "recognition.min_quality_gain: Input should be greater than or equal"),
        (
            "[watchlist]\nallow_dev_watchlist = true",
            "watchlist.allow_dev_watchlist: unknown key",
        ),
        ("[watchlist]\nmax_subjects = 0", "watchlist.max_subjects: Input should be greater"),
        ("[outbox]\nmax_items = 1", "outbox.max_items: Input should be greater than or equal"),
        ("[retention]\ndays = 32", "retention.days: Input should be less than or equal to 31"),
        ("[health]\nmax_age_s = 0", "health.max_age_s: Input should be greater than or equal"),
    ],
)
def test_each_problem_names_its_key(tmp_path: Path, extra: str, expected: str) -> None:
    if extra.startswith("[device]"):
        text = extra + '\n\n[mqtt]\nhost = "127.0.0.1"\ntls = false\n'
    else:
        text = MINIMAL + "\n" + extra + "\n"
    problems = problems_of(write(tmp_path, text))
    assert any(line.startswith(expected) for line in problems), problems
    assert len(problems) == 1, problems


@pytest.mark.parametrize(
    ("mqtt", "expected"),
    [
        ('host = "broker.example"\ntls = false', "mqtt.tls: may be false only for a loopback"),
        ('host = "10.0.0.5"\ntls = false', "mqtt.tls: may be false only for a loopback"),
        ('host = "broker.example"', "mqtt.ca: required when tls is true"),
        ('host = "127.0.0.1"\nport = 0\ntls = false', "mqtt.port: Input should be greater"),
        ('host = "127.0.0.1"\ntls = false\ntopic_prefix = "lfr/#"', "mqtt.topic_prefix: use"),
        ('host = "127.0.0.1"\ntls = false\ntopic_prefix = "/lfr"', "mqtt.topic_prefix: use"),
        ('host = "a b"\ntls = false', "mqtt.host: String should match pattern"),
    ],
)
def test_mqtt_rules(tmp_path: Path, mqtt: str, expected: str) -> None:
    problems = problems_of(write(tmp_path, f'[device]\nid = "cam-01"\n\n[mqtt]\n{mqtt}\n'))
    assert any(line.startswith(expected) for line in problems), problems


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_plain_mqtt_allowed_on_loopback(tmp_path: Path, host: str) -> None:
    text = f'[device]\nid = "cam-01"\n\n[mqtt]\nhost = "{host}"\ntls = false\n'
    assert load_settings(write(tmp_path, text)).mqtt.tls is False


def test_tls_needs_both_ca_and_client_cert(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, '[device]\nid = "c"\n[mqtt]\nhost = "b.example"\n'))
    assert problems == [
        "mqtt.ca: required when tls is true",
        "mqtt.client_cert: required when tls is true (mutual TLS)",
    ]


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert problems_of(missing) == [f"config file {missing}: no such file"]


def test_directory_is_one_line(tmp_path: Path) -> None:
    assert problems_of(tmp_path) == [f"config file {tmp_path}: is a directory, not a file"]


def test_invalid_toml_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[device\nid = 1\n")
    (line,) = problems_of(path)
    assert line.startswith(f"config file {path}: invalid TOML: ")
    assert "line 1" in line


def test_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_bytes(b'[device]\nid = "\xff\xfe"\n')
    (line,) = problems_of(path)
    assert line.startswith(f"config file {path}: ")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    path.chmod(0)
    assert problems_of(path) == [f"config file {path}: permission denied"]


# --- credentials --------------------------------------------------------------------------------


def test_credentials_from_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "device.key").write_bytes(b"SECRET-DEVICE-KEY-MATERIAL-0123456789")
    fallback = tmp_path / "fallback.key"
    fallback.write_bytes(b"fallback")
    text = MINIMAL.replace('id = "cam-01"', f'id = "cam-01"\nkey_file = "{fallback}"')
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    settings = load_settings(write(tmp_path, text))
    assert settings.credentials_dir == creds
    assert settings.credential_path("device_key") == creds / "device.key"  # beats key_file
    secret = settings.read_credential("device_key")
    assert isinstance(secret, SecretBytes)
    assert secret.get_secret_value() == b"SECRET-DEVICE-KEY-MATERIAL-0123456789"
    assert "SECRET" not in repr(secret) and "SECRET" not in str(secret)
    assert "SECRET" not in repr(settings)
    # Not in the credentials directory and no file: one line naming the key.
    with pytest.raises(ConfigError) as info:
        settings.credential_path("signer_public_key")
    assert info.value.problems == [
        f"watchlist.signer_credential: credential 'signer.pub' not found (not in "
        f"$CREDENTIALS_DIRECTORY ({creds})) and watchlist.signer_file is not set"
    ]


def test_credential_file_fallback_outside_systemd(tmp_path: Path) -> None:
    key = tmp_path / "client.key"
    key.write_bytes(b"pem")
    text = MINIMAL + f'client_key_file = "{key}"\n'
    settings = load_settings(write(tmp_path, text))
    assert settings.credentials_dir is None
    assert settings.credential_path("mqtt_client_key") == key
    with pytest.raises(ConfigError, match=r"^device\.key_credential: credential 'device\.key'"):
        settings.credential_path("device_key")
    key.unlink()
    with pytest.raises(ConfigError, match=r"mqtt\.client_key_file: .*: no such file"):
        settings.read_credential("mqtt_client_key")


def test_check_files_reports_each_missing_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (
        f'[device]\nid = "cam-01"\nstate_dir = "{tmp_path / "state"}"\n'
        f'models_dir = "{tmp_path / "models"}"\n'
        f'[source]\nkind = "file"\nuri = "{tmp_path / "clip.mp4"}"\n'
        '[mqtt]\nhost = "b.example"\n'
        f'ca = "{tmp_path / "ca.pem"}"\nclient_cert = "{tmp_path / "c.pem"}"\n'
    )
    settings = load_settings(write(tmp_path, text))
    problems = check_files(settings)
    keys = [line.split(":")[0] for line in problems]
    assert keys == [
        "device.state_dir",
        "device.models_dir",
        "mqtt.ca",
        "mqtt.client_cert",
        "device.key_credential",
        "device.signing_key_credential",
        "watchlist.signer_credential",
        "mqtt.client_key_credential",
        "source.uri",
    ]
    # Provide everything: no problems.
    creds = tmp_path / "creds"
    for d in ("state", "models", "creds"):
        (tmp_path / d).mkdir()
    (tmp_path / "models" / "manifest.json").write_text("{}")
    for f in ("ca.pem", "c.pem", "clip.mp4"):
        (tmp_path / f).write_text("x")
    for name in ("device.key", "device-signing.key", "signer.pub", "mqtt-client.key"):
        (creds / name).write_text("x")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert check_files(load_settings(write(tmp_path, text))) == []


# --- the command, in subprocesses ----------------------------------------------------------


def run_edge(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("EDGE_")}
    base.pop("CREDENTIALS_DIRECTORY", None)
    return subprocess.run(
        [str(EDGE), *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=60,
        check=False,
    )


def test_cli_ok_exit_0() -> None:
    result = run_edge("check-config", "--config", str(EXAMPLE), "--values-only")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "ok"
    assert any("van-07-cam-1" in line for line in lines)
    assert result.stderr == ""


def test_cli_problems_exit_78_one_line_each(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "port = 70000\n[retention]\ndays = 90\nlegal = 1\n")
    result = run_edge("check-config", "--config", str(path), env={"EDGE_NOPE": "1"})
    assert result.returncode == 78
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert sorted(result.stderr.splitlines()) == sorted(
        [
            "edge: nope: unknown key (environment variable EDGE_NOPE)",
            "edge: mqtt.port: Input should be less than 65536",
            "edge: retention.days: Input should be less than or equal to 31",
            "edge: retention.legal: unknown key",
        ]
    )


def test_cli_env_override_and_edge_config(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    result = run_edge(
        "check-config", "--values-only", env={"EDGE_CONFIG": str(path), "EDGE_MQTT__PORT": "1884"}
    )
    assert result.returncode == 0, result.stderr
    assert "127.0.0.1:1884" in result.stdout
    result = run_edge(
        "check-config", "--values-only", env={"EDGE_CONFIG": str(path), "EDGE_MQTT__PORT": "0"}
    )
    assert result.returncode == 78
    assert result.stderr.splitlines() == [
        "edge: mqtt.port: Input should be greater than or equal to 1 "
        "(environment variable EDGE_MQTT__PORT)"
    ]


@pytest.mark.parametrize("content", [None, "[device\n", "\xff"])
def test_cli_bad_file_exit_78_no_traceback(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "edge.toml"
    if content is not None:
        path.write_bytes(content.encode("latin-1"))
    result = run_edge("check-config", "--config", str(path))
    assert result.returncode == 78
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"edge: config file {path}: ")


def test_cli_checks_files_and_never_prints_secrets(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    state = tmp_path / "state"
    models = tmp_path / "models"
    for d in (creds, state, models):
        d.mkdir()
    (models / "manifest.json").write_text("{}")
    (creds / "device.key").write_text("TOPSECRET-device")
    (creds / "signer.pub").write_text("TOPSECRET-signer")
    (creds / "device-signing.key").write_text("TOPSECRET-signing")
    text = (
        f'[device]\nid = "cam-01"\nstate_dir = "{state}"\nmodels_dir = "{models}"\n'
        '[mqtt]\nhost = "127.0.0.1"\ntls = false\n'
    )
    path = write(tmp_path, text)
    ok = run_edge("check-config", "--config", str(path), env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert ok.returncode == 0, ok.stderr
    assert "TOPSECRET" not in ok.stdout + ok.stderr
    missing = run_edge("check-config", "--config", str(path))
    assert missing.returncode == 78
    assert "Traceback" not in missing.stderr
    assert [line.split(":")[1].strip() for line in missing.stderr.splitlines()] == [
        "device.key_credential",
        "device.signing_key_credential",
        "watchlist.signer_credential",
    ]
