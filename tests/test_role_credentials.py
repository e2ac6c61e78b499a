"""The edge_device role refuses device secrets a copy of the card opens (issue 21, Low).

The device's keys (device.key opens the outbox; the signing and MQTT keys) are bound to
the unit only by a TPM2: plaintext credentials, or systemd-creds with the host key alone
(``/var/lib/systemd/credential.secret``, on the same card), open for whoever copies the
card. The role's preflight (``tasks/credentials_check.yml``) refuses them unless the
inventory sets ``edge_device_credentials_without_tpm2``. Run here by ``ansible-playbook``
on localhost (three inventory aliases per run), with the TPM2 probe standing for a unit
without and with a TPM2 (``systemd-creds has-tpm2`` says so on a real unit).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def run_check(tmp_path: Path, tpm2: bool, hosts: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Run the role's credentials check; {host: its outcome line or the failure message}."""
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inventory = tmp_path / f"hosts-{tpm2}.json"
    inventory.write_text(json.dumps({"all": {"hosts": {
        name: {**local, **values} for name, values in hosts.items()}}}))  # fmt: skip
    play = tmp_path / "check.yml"
    play.write_text("- hosts: all\n  gather_facts: false\n  tasks:\n"
                    "    - ansible.builtin.include_role:\n        name: edge_device\n"
                    "        tasks_from: credentials_check\n")  # fmt: skip
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), str(play),
         "-e", json.dumps({"_edge_device_tpm2_probe": ["true" if tpm2 else "false"]})],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible" / "ansible.cfg"),
             "ANSIBLE_NOCOLOR": "1", "ANSIBLE_CALLBACK_RESULT_FORMAT": "json"},
    )  # fmt: skip
    assert "PLAY RECAP" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]
    outcome: dict[str, str] = {}
    for line in proc.stdout.splitlines():  # fatal: [host]: FAILED! => {...}
        if line.startswith("fatal: [") and "=> {" in line:
            host = line[len("fatal: ["):line.index("]")]
            outcome[host] = str(json.loads(line[line.index("=> {") + 3:]).get("msg", ""))
    for line in proc.stdout.split("PLAY RECAP", 1)[1].splitlines():
        if ":" in line and "failed=0" in line:
            outcome.setdefault(line.split(":", 1)[0].strip(), "ok")
    return outcome


@pytest.mark.parametrize("tpm2", [False, True], ids=["no-tpm2", "tpm2"])
def test_credentials_a_card_copy_opens_are_refused_unless_accepted(
    tmp_path: Path, tpm2: bool
) -> None:
    hosts = {
        "sealed": {"edge_device_credentials_encrypted": True,
                   "edge_device_credentials_key": "auto"},
        "host-key": {"edge_device_credentials_encrypted": True,
                     "edge_device_credentials_key": "host"},
        "plain": {"edge_device_credentials_encrypted": False},
        "accepted": {"edge_device_credentials_encrypted": False,
                     "edge_device_credentials_without_tpm2": True},
    }  # fmt: skip
    outcome = run_check(tmp_path, tpm2, hosts)
    assert set(outcome) == set(hosts), outcome
    refused = {h for h, line in outcome.items() if line != "ok"}
    assert refused == ({"host-key", "plain"} | (set() if tpm2 else {"sealed"})), outcome
    for host in refused:
        assert "edge_device_credentials_without_tpm2: true" in outcome[host], outcome[host]
        assert "copies its storage" in outcome[host]
    if not tpm2:
        assert "has no usable TPM2" in outcome["sealed"]
    assert "edge_device_credentials_key host does not use the TPM2" in outcome["host-key"] or (
        not tpm2)  # fmt: skip
