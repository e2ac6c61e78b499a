"""The edge_device role on its distributions: Debian 12 / Raspberry Pi OS bookworm, and
Ubuntu 22.04 on a Jetson (JetPack 6) (issue 22, item 3).

Debian's archive has no Ubuntu, so no Ubuntu root can be booted here: the Ubuntu path is
exercised in check mode on this host (a local connection) with its facts set to Ubuntu
22.04 (``set_fact`` with ``cacheable``, which is what ``ansible_facts`` reads): the role
loads ``vars/Ubuntu-22.yml`` and its preflight accepts the OpenCV source and refuses
picamera2 and systemd-creds (systemd 249) with a line saying what to set instead.
``tests/test_provision.py::test_the_ubuntu_2204_path_in_check_mode`` runs the whole role
that way on a booted systemd host; ``ansible-lint`` covers the files
(``tests/test_systemd_unit.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
ROLES = REPO / "ansible" / "roles"
VENV_BIN = Path(sys.executable).parent
# This development host is a VM whose PID 1 is not systemd: every run says it is.
SYSTEMD = {"service_mgr": "systemd"}
UBUNTU_2204 = {**SYSTEMD, "distribution": "Ubuntu", "distribution_version": "22.04",
               "distribution_major_version": "22", "distribution_release": "jammy"}
REQUIRED = {
    "edge_device_id": "cam-01", "edge_device_wheel": "/x/lfr_edge.whl",
    "edge_device_models_src": "/x/models", "edge_device_ca_cert_src": "/x/ca.pem",
    "edge_device_client_cert_src": "/x/c.pem", "edge_device_client_key_src": "/x/c.key",
    "edge_device_public_keys_dir": "/x/keys", "edge_device_signer_pubkey_src": "/x/s.pub",
    "edge_device_broker_allow": ["192.0.2.10"],
    # this host may run the legacy cgroup hierarchy and has no TPM2; the role's own checks
    # of both are tested elsewhere (a Jetson under Ubuntu 22.04 needs the second: its
    # systemd 249 cannot encrypt credentials at all)
    "edge_device_allow_unenforced_ip_filter": True,
    "edge_device_credentials_without_tpm2": True,
}


def preflight(tmp_path: Path, facts: dict[str, str], **variables: Any
              ) -> subprocess.CompletedProcess[str]:
    """The role's os.yml and preflight.yml in check mode on this host, its facts overridden."""
    tasks: list[dict[str, Any]] = [
        {"name": "say which distribution this host is",
         "ansible.builtin.set_fact": {**facts, "cacheable": True}},
        {"name": "the role's distribution vars", "ansible.builtin.include_role": {
            "name": "edge_device", "tasks_from": "os.yml"}},
        {"name": "the role's preflight", "ansible.builtin.include_role": {
            "name": "edge_device", "tasks_from": "preflight.yml"}},
        {"name": "show", "ansible.builtin.debug": {"msg": "OS={{ _edge_device_os | to_json }}"}},
    ]
    play = [{"name": "preflight", "hosts": "localhost", "gather_facts": True,
             "gather_subset": ["!all", "min"],
             "vars": {**REQUIRED, **variables}, "tasks": tasks}]
    playbook = tmp_path / "play.yml"
    playbook.write_text(json.dumps(play))
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="False",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="False", ANSIBLE_ROLES_PATH=str(ROLES))
    return subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "--check", "-i", "localhost,", "-c", "local",
         "-e", f"ansible_python_interpreter={sys.executable}", str(playbook)],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )


def loaded_os(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    line = next(ln for ln in proc.stdout.splitlines() if '"msg": "OS=' in ln)
    text = json.loads("{" + line.strip().rstrip(",") + "}")["msg"][3:]
    result: dict[str, Any] = json.loads(text)
    return result


def test_ubuntu_2204_loads_its_vars_and_passes_preflight_with_the_opencv_source(
    tmp_path: Path,
) -> None:
    proc = preflight(tmp_path, UBUNTU_2204, edge_device_source_kind="opencv",
                     edge_device_source_uri="/dev/video0",
                     edge_device_credentials_encrypted=False)
    os_vars = loaded_os(proc)
    assert os_vars["name"] == "Ubuntu 22.04 (Jetson, JetPack 6)"
    assert os_vars["python"] == "3.10"
    assert os_vars["picamera2"] is False and os_vars["encrypted_credentials"] is False
    assert {"python3", "python3-venv", "libsystemd0"} <= set(os_vars["packages"])


@pytest.mark.parametrize(("variables", "says"), [
    ({"edge_device_source_kind": "picamera2", "edge_device_credentials_encrypted": False},
     "it has no picamera2 (no Raspberry Pi archive): set edge_device_source_kind: opencv"),
    ({"edge_device_source_kind": "opencv", "edge_device_credentials_encrypted": True},
     "its systemd has no systemd-creds or LoadCredentialEncrypted= (systemd 250 or later)"),
])
def test_ubuntu_2204_refuses_picamera2_and_encrypted_credentials_saying_what_to_set(
    tmp_path: Path, variables: dict[str, Any], says: str
) -> None:
    proc = preflight(tmp_path, UBUNTU_2204, **variables)
    assert proc.returncode != 0
    assert "Ubuntu 22.04 (Jetson, JetPack 6):" in proc.stdout
    assert says in " ".join(proc.stdout.split())


def test_debian_keeps_picamera2_and_encrypted_credentials(tmp_path: Path) -> None:
    """This host is Debian 12: its own distribution facts load vars/Debian.yml."""
    proc = preflight(tmp_path, SYSTEMD, edge_device_source_kind="picamera2",
                     edge_device_credentials_encrypted=True)
    os_vars = loaded_os(proc)
    assert os_vars["name"] == "Debian 12 / Raspberry Pi OS bookworm"
    assert os_vars["python"] == "3.11" and os_vars["picamera2"] is True


@pytest.mark.parametrize("facts", [
    {**UBUNTU_2204, "distribution_version": "24.04", "distribution_major_version": "24"},
    {**SYSTEMD, "distribution": "Debian", "distribution_version": "11",
     "distribution_major_version": "11"},
])
def test_other_distributions_are_refused_naming_the_supported_ones(
    tmp_path: Path, facts: dict[str, str]
) -> None:
    proc = preflight(tmp_path, facts, edge_device_source_kind="opencv",
                     edge_device_credentials_encrypted=False)
    assert proc.returncode != 0
    assert ("edge_device supports Debian 12 / Raspberry Pi OS bookworm and Ubuntu 22.04"
            in " ".join(proc.stdout.split()))


def test_the_roles_floors_cover_the_default_embedders_family() -> None:
    """A device converged with the role's defaults must start with the daemon's default
    embedder (SFace, family arcface112): a family without a floor is exit 78 at start."""
    import yaml

    from edge.service.config_sections import RecognitionSettings
    from edge.vision.families import BUILTIN
    from edge.vision.manifest import Manifest

    role = yaml.safe_load((ROLES / "edge_device" / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load(
        (ROLES / "edge_device" / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    floors = role["edge_device_threshold_floor"]
    assert options["edge_device_threshold_floor"]["default"] == floors
    rec = RecognitionSettings()
    manifest = Manifest.load(REPO / "models")
    family = manifest.entry(f"{rec.embedder}_{rec.precision}").family
    assert family in BUILTIN and family in floors
    assert floors == rec.threshold_floor
