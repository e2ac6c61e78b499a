"""Issue 13 item 1: after the end of a deployment, no copy of any file from the device's
persistent storage or from the provisioning host decrypts that deployment's watchlist.

The device's persistent storage is its state directory and its credential directory (the
long-lived ``device.key``, made on the device); the deployment's key is made on the device
in a RAM directory (``edge keys deployment-key``), which is not persistent storage and is
never copied here. The controller holds the control room's keys, the device's public keys
and its own copy of the bundle. Every private key found in any of those copies is tried
against every copy of the bundle (the one on the device, the controller's, a replaced one
still on flash) with the real :func:`~edge.watchlist.bundle.inspect_bundle` decryption.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge.errors import BundleRefused
from edge.watchlist.audit import AuditLog
from edge.watchlist.bundle import MAGIC, build_bundle, inspect_bundle
from edge.watchlist.deployment import DeploymentManager
from edge.watchlist.deployment_keys import staged_path
from edge.watchlist.keys import (
    init_deployment_key,
    init_device_key,
    init_signing_key,
    load_deployment_public,
    load_device_key,
    load_device_public,
    load_signer_public,
    load_signing_key,
)
from edge.watchlist.signed_commands import make_command
from tests.bundle_kit import EMBEDDER, EMBEDDER_SHA, NOW, Clock, embeddings, spec, subjects

DEVICE = "van-01"


class Site:
    """A controller and a device, with their files where the real ones keep them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.controller = root / "controller"  # the provisioning host
        self.state = root / "device" / "var-lib-edge"  # persistent: StateDirectory=
        self.creds = root / "device" / "credstore"  # persistent: the credential store
        self.run = root / "device" / "run-edge" / "deployment-keys"  # RAM: RuntimeDirectory=
        self.clock = Clock(NOW.timestamp())
        init_signing_key(self.controller / "keys")
        # The role makes the device key on the device and fetches only its public half.
        made = init_device_key(self.creds, DEVICE)
        shutil.copy(made.public, self.controller / "keys" / f"{DEVICE}.pub")
        made.public.unlink()
        self.state.mkdir(parents=True, mode=0o700)
        self.summaries: list[dict[str, Any]] = []

    @property
    def bundle_path(self) -> Path:
        return self.state / "watchlist.bundle"

    @property
    def signing_key(self) -> Any:
        return load_signing_key(self.controller / "keys" / "signing.key")

    def deployment_key(self) -> Path:
        """``edge keys deployment-key`` on the device; the play fetches the public half."""
        made = init_deployment_key(self.run, allow_persistent=True)  # tmp_path is not tmpfs
        fetched = self.controller / f"{DEVICE}.deployment.pub"
        shutil.copy(made.public, fetched)
        return fetched

    def build(self, recipient: Any, name: str, **changes: Any) -> bytes:
        """``edge watchlist build`` on the controller; the controller keeps its copy."""
        subj = subjects(4)
        data = build_bundle(
            spec(**changes), subj, embeddings(len(subj)), EMBEDDER, self.signing_key,
            [(DEVICE, recipient)], created_at=NOW - dt.timedelta(hours=2),
        )  # fmt: skip
        (self.controller / f"{name}.bundle").write_bytes(data)
        return data

    def manager(self) -> DeploymentManager:
        """What ``edge run`` builds at start (a restart builds a new one)."""
        audit = AuditLog(self.state / "audit.jsonl", clock=self.clock)
        return DeploymentManager(
            self.state, DEVICE, load_device_key(self.creds / f"{DEVICE}.key"),
            [load_signer_public(self.controller / "keys" / "signing.pub")],
            threshold_floor=0.4, max_subjects=100, expected_embedder_sha256=EMBEDDER_SHA,
            audit=audit, clock=self.clock, on_summary=self.summaries.append,
            deployment_keys_dir=self.run,
        )  # fmt: skip

    def end(self, manager: DeploymentManager, deployment_id: str) -> dict[str, Any]:
        cmd = make_command(self.signing_key, "end_deployment", DEVICE, deployment_id,
                           issued_at=dt.datetime.fromtimestamp(self.clock.t - 5, dt.UTC))
        return manager.end(cmd)

    def events(self) -> list[dict[str, Any]]:
        lines = (self.state / "audit.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]


def _files(*roots: Path) -> list[Path]:
    return [p for r in roots if r.exists() for p in sorted(r.rglob("*")) if p.is_file()]


def private_keys_in(*roots: Path) -> list[X25519PrivateKey]:
    """Every X25519 private key (PEM) in any file under ``roots``."""
    found: list[X25519PrivateKey] = []
    for path in _files(*roots):
        data = path.read_bytes()
        start = data.find(b"-----BEGIN PRIVATE KEY-----")
        while start >= 0:
            end = data.find(b"-----END PRIVATE KEY-----", start)
            block = data[start : end + len(b"-----END PRIVATE KEY-----")]
            try:
                key = serialization.load_pem_private_key(block, password=None)
            except ValueError:
                key = None
            if isinstance(key, X25519PrivateKey):
                found.append(key)
            start = data.find(b"-----BEGIN PRIVATE KEY-----", end)
    return found


def bundles_in(*roots: Path) -> list[bytes]:
    return [p.read_bytes() for p in _files(*roots) if p.read_bytes().startswith(MAGIC)]


def opens(data: bytes, key: X25519PrivateKey) -> bool:
    """True if ``key`` decrypts the bundle's watchlist (the device's own decryption)."""
    try:
        inspection = inspect_bundle(data, None, (DEVICE, key))
    except BundleRefused as exc:
        assert exc.reason == "wrong_key", exc
        return False
    assert inspection.subjects is not None and len(inspection.subjects) == 4
    return True


def test_after_the_end_no_copy_of_the_storage_or_the_controller_opens_the_watchlist(
    tmp_path: Path,
) -> None:
    site = Site(tmp_path)
    data = site.build(load_deployment_public(site.deployment_key()), "op-42")
    site.bundle_path.write_bytes(data)  # what deploy-watchlist.yml delivers
    m = site.manager()
    assert m.load(site.bundle_path).armed
    # The copy an attacker takes of the device's persistent storage and of the
    # controller's files, before the end (the RAM directory is not storage).
    seized = tmp_path / "seized"
    for name, src in (("state", site.state), ("creds", site.creds),
                      ("controller", site.controller)):  # fmt: skip
        shutil.copytree(src, seized / name)
    # Controls: the check can succeed. The deployment key in RAM opens the bundle
    # now, and the seized device key opens a bundle wrapped to it (what a bundle
    # wrapped to the device's long-lived key, the old scheme, exposed).
    (ram_key,) = private_keys_in(site.run)
    assert opens(data, ram_key)
    device_key = load_device_key(seized / "creds" / f"{DEVICE}.key")
    old_scheme = site.build(load_device_public(site.controller / "keys" / f"{DEVICE}.pub")[1],
                            "old-scheme")  # fmt: skip
    assert opens(old_scheme, device_key)
    (site.controller / "old-scheme.bundle").unlink()

    summary = site.end(m, "D-2026-0042")
    assert summary["end_reason"] == "end_command"
    destroyed = [e for e in site.events() if e["event"] == "deployment_key_destroyed"]
    assert [e["result"] for e in destroyed] == ["destroyed"]
    assert list(site.run.iterdir()) == []  # the RAM directory holds no key any more

    keys = private_keys_in(seized, site.state, site.creds, site.controller, site.run)
    copies = bundles_in(seized, site.state, site.controller)
    assert len(keys) >= 1 and len(copies) >= 2  # the seized device key; two bundle copies
    assert data in copies
    for copy in copies:
        for key in keys:
            assert not opens(copy, key)


def test_a_replaced_bundle_is_shredded_and_its_key_destroyed_before_the_new_one_is_installed(
    tmp_path: Path,
) -> None:
    site = Site(tmp_path)
    old = site.build(load_deployment_public(site.deployment_key()), "op-42")
    site.bundle_path.write_bytes(old)
    m = site.manager()
    assert m.load(site.bundle_path).armed
    (old_key,) = private_keys_in(site.run)
    # The old bundle's blocks as they are on the card: this descriptor keeps the inode,
    # as flash keeps a file that was renamed over (Ansible's copy).
    fd = os.open(site.bundle_path, os.O_RDONLY)
    try:
        new = site.build(load_deployment_public(site.deployment_key()), "op-43",
                         deployment_id="D-2026-0043", sequence=8)  # fmt: skip
        staged_path(site.bundle_path).write_bytes(new)  # what deploy-watchlist.yml delivers
        st = m.load(site.bundle_path)  # the reload (SIGHUP)
        assert st.armed and st.deployment_id == "D-2026-0043"
        assert site.bundle_path.read_bytes() == new and not staged_path(site.bundle_path).exists()
        assert os.pread(fd, len(old), 0) == bytes(len(old))  # overwritten in place
    finally:
        os.close(fd)
    names = [e["event"] for e in site.events()]
    order = ["watchlist_wiped", "watchlist_shredded", "deployment_key_destroyed", "disarmed",
             "deployment_summary", "bundle_replaced", "watchlist_loaded", "armed"]
    assert names[-len(order):] == order
    replaced = next(e for e in site.events() if e["event"] == "bundle_replaced")
    assert replaced["old_bundle_id"] != replaced["new_bundle_id"]
    assert site.summaries[-1]["end_reason"] == "replaced"
    # The old deployment's key is gone: its copy on the controller opens with nothing.
    keys = private_keys_in(site.state, site.creds, site.controller, site.run)
    assert keys and all(not opens(old, k) for k in keys)
    assert opens(old, old_key)  # control: the key it needed, now destroyed
    # A bad replacement never disarms the running deployment, and is shredded.
    staged_path(site.bundle_path).write_bytes(new[:-1] + bytes([new[-1] ^ 1]))
    st = m.load(site.bundle_path)
    assert st.armed and st.deployment_id == "D-2026-0043"
    assert not staged_path(site.bundle_path).exists()
    assert site.events()[-2]["event"] == "bundle_refused"
    assert site.events()[-2]["kept_armed"] is True


def test_a_restart_keeps_the_deployment_key_and_a_reboot_loses_it(tmp_path: Path) -> None:
    site = Site(tmp_path)
    data = site.build(load_deployment_public(site.deployment_key()), "op-42")
    site.bundle_path.write_bytes(data)
    m = site.manager()
    assert m.load(site.bundle_path).armed
    m.close()  # systemctl restart edge: /run/edge survives (RuntimeDirectoryPreserve=yes)
    m = site.manager()
    assert m.load(site.bundle_path).armed
    m.close()
    shutil.rmtree(site.run.parent)  # a reboot or power loss: the tmpfs is gone
    m = site.manager()
    st = m.load(site.bundle_path)
    assert not st.armed and st.code == "no_deployment_key"
    assert "re-provision the bundle" in st.line()
    assert st.line().count("\n") == 0
    assert not site.bundle_path.exists()  # it can never be opened again: shredded
    refused = [e for e in site.events() if e["event"] == "bundle_refused"]
    assert refused[-1]["reason"] == "no_deployment_key"


def test_a_bundle_wrapped_to_the_device_key_is_refused_unless_allowed(tmp_path: Path) -> None:
    site = Site(tmp_path)
    device_pub = load_device_public(site.controller / "keys" / f"{DEVICE}.pub")[1]
    site.bundle_path.write_bytes(site.build(device_pub, "legacy"))
    st = site.manager().load(site.bundle_path)
    assert not st.armed and st.code == "device_key_bundle"
    assert "long-lived key" in st.reason
    assert site.bundle_path.exists()  # not shredded: a test setting may open it
    audit = AuditLog(site.state / "audit.jsonl", clock=site.clock)
    allowed = DeploymentManager(
        site.state, DEVICE, load_device_key(site.creds / f"{DEVICE}.key"),
        [load_signer_public(site.controller / "keys" / "signing.pub")], threshold_floor=0.4,
        max_subjects=100, expected_embedder_sha256=EMBEDDER_SHA, audit=audit, clock=site.clock,
        deployment_keys_dir=site.run, allow_device_key_bundles=True,
    )  # fmt: skip
    assert allowed.load(site.bundle_path).armed


def test_the_header_names_the_deployment_key_and_no_other_key_opens(tmp_path: Path) -> None:
    from edge.watchlist.bundle import read_header_unverified
    from edge.watchlist.keys import key_id

    site = Site(tmp_path)
    pub = load_deployment_public(site.deployment_key())
    data = site.build(pub, "op-42")
    (recipient,) = read_header_unverified(data)[1].recipients
    assert recipient.key_id == key_id(pub).hex()
    with pytest.raises(BundleRefused) as info:
        inspect_bundle(data, None, (DEVICE, X25519PrivateKey.generate()))
    assert info.value.reason == "wrong_key" and "does not unwrap" in str(info.value)
    (key,) = private_keys_in(site.run)
    assert opens(data, key)
