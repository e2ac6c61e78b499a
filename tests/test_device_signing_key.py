"""``edge run`` without the device's signing key refuses to start, in one line (issue 13,
items 4 and 9: an unsigned alert or audit entry is never published)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge.watchlist.keys import init_device_key, init_signing_key

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, extra: str = "") -> Path:
    keys = tmp_path / "keys"
    device = init_device_key(keys, "van-k")
    signer = init_signing_key(keys)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    path = tmp_path / "edge.toml"
    path.write_text(f"""[device]
id = "van-k"
state_dir = "{state}"
models_dir = "{ROOT / "models"}"
key_file = "{device.private}"
{extra}
[source]
kind = "file"
uri = "{ROOT / "demo" / "clip.gif"}"

[watchlist]
signer_file = "{signer.public}"

[mqtt]
host = "127.0.0.1"
port = 1
tls = false
""")
    return path


def _run(config: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("EDGE_") and k != "CREDENTIALS_DIRECTORY"}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "edge", "run", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, env=env, cwd=ROOT,
                          check=False)  # fmt: skip


def test_no_signing_key_no_start(tmp_path: Path) -> None:
    r = _run(_config(tmp_path))
    assert r.returncode == 78, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.splitlines() == [
        "edge: device.signing_key_credential: credential 'device-signing.key' not found "
        "($CREDENTIALS_DIRECTORY is not set) and device.signing_key_file is not set"
    ]


@pytest.mark.parametrize("which", ["the X25519 device key", "not a key"])
def test_a_signing_key_that_is_not_ed25519_is_refused(tmp_path: Path, which: str) -> None:
    bad = tmp_path / "keys" / "van-k.key"  # the device's X25519 key, made by _config
    if which == "not a key":
        bad = tmp_path / "garbage.key"
        bad.write_text("garbage\n")
    r = _run(_config(tmp_path, f'signing_key_file = "{bad}"'))
    assert r.returncode == 78, r.stderr
    (line,) = r.stderr.splitlines()
    assert line.startswith("edge: device.signing_key_credential: device signing key is not ")
    assert "Traceback" not in r.stderr
