"""Helpers for the bundle, deployment and audit tests: keys and valid bundles in memory."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge.watchlist.bundle import DeploymentSpec, EmbedderInfo, Subject, build_bundle
from edge.watchlist.keys import deployment_key_path, key_id, write_atomic

EMBEDDER_SHA = "ab" * 32
NOW = dt.datetime(2026, 11, 22, 12, 0, 0, tzinfo=dt.UTC)
EMBEDDER = EmbedderInfo(
    name="dlib_resnet_v1_int8", sha256=EMBEDDER_SHA, family="dlib150", metric="euclidean", dim=128
)


@dataclass
class Kit:
    """The control room's signing key, the device's long-lived key (``device``: on its
    storage), this deployment's key (``deployment``: in the device's RAM directory once
    :meth:`install` put it there) and another device's key. Bundles are wrapped to the
    deployment key unless a test says otherwise."""

    signer: Ed25519PrivateKey
    device: X25519PrivateKey
    other_device: X25519PrivateKey
    deployment: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)
    device_id: str = "van-01"

    @property
    def trusted(self) -> list[Any]:
        return [self.signer.public_key()]

    @property
    def deployment_key_id(self) -> str:
        return key_id(self.deployment.public_key()).hex()

    def install(self, keys_dir: Path) -> Path:
        """Write the deployment private key where the device looks for it (as
        ``edge keys deployment-key`` does, 0600); returns ``keys_dir``."""
        keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = self.deployment.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_atomic(deployment_key_path(keys_dir, self.deployment_key_id), pem, 0o600, True)
        return keys_dir


def make_kit() -> Kit:
    return Kit(Ed25519PrivateKey.generate(), X25519PrivateKey.generate(),
               X25519PrivateKey.generate())


def spec(**changes: Any) -> DeploymentSpec:
    base = DeploymentSpec(
        deployment_id="D-2026-0042",
        location="Example Street, Example Town",
        start=NOW - dt.timedelta(hours=1),
        end=NOW + dt.timedelta(hours=4),
        authorising_officer="Supt 1234",
        approved_at=NOW - dt.timedelta(days=1),
        threshold=0.45,
        signage_confirmed=True,
        max_watchlist_size=50,
        sequence=7,
    )
    return replace(base, **changes)


def subjects(n: int, category: str = "wanted_court") -> list[Subject]:
    return [
        Subject(
            subject_id=f"S-{i:04d}",
            category=category if i % 2 == 0 else "missing_person",
            reference=f"PNC 24/{i:06d}X",
            source="custody image",
            capture_date="2024-05-01",
            legal_basis="PACE Code D",
            images_used=2,
        )
        for i in range(n)
    ]


def embeddings(n: int, dim: int = 128, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    e = rng.normal(size=(n, dim)).astype(np.float32)
    return (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)


def make_bundle(
    kit: Kit,
    n: int = 5,
    *,
    spec_changes: dict[str, Any] | None = None,
    embedder: EmbedderInfo = EMBEDDER,
    subj: list[Subject] | None = None,
    emb: np.ndarray | None = None,
    devices: list[tuple[str, Any]] | None = None,
    signer: Ed25519PrivateKey | None = None,
) -> bytes:
    subj = subj if subj is not None else subjects(n)
    emb = emb if emb is not None else embeddings(len(subj), embedder.dim)
    devices = devices if devices is not None else [
        (kit.device_id, kit.deployment.public_key()),
        ("van-02", kit.other_device.public_key()),
    ]
    return build_bundle(
        spec(**(spec_changes or {})),
        subj,
        emb,
        embedder,
        signer or kit.signer,
        devices,
        thumbnails={s.subject_id: b"\xff\xd8thumb" + s.subject_id.encode() for s in subj},
        created_at=NOW - dt.timedelta(hours=2),
    )


def open_args(kit: Kit, **changes: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "device_id": kit.device_id,
        "device_private_key": kit.deployment,
        "trusted_signers": kit.trusted,
        "expected_embedder_sha256": EMBEDDER_SHA,
        "threshold_floor": 0.4,
        "max_subjects": 100,
        "last_sequence": None,
        "now": NOW.timestamp(),
    }
    args.update(changes)
    return args


class Clock:
    """An injected clock for the deployment manager's tests: ``clock()`` is ``clock.t``."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t
