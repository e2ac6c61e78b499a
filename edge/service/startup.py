"""What ``edge run`` builds before its loops: the device's keys and the components made
straight from the settings.

Split from :mod:`edge.service.daemon`, which stays the composition root (it wires these
together, with the callbacks between them, in one order it documents). This module owns
reading the credentials (the device's X25519 key and its Ed25519 signing key arrive as
systemd credentials, never from the config; the control room's public key from its file)
and the builders that need nothing but the settings: the face engine (models loaded
once), the encrypted outbox, the broker's connection settings, the recognizer and the
frame source. A key that cannot be used is one line (a :class:`~edge.errors.ConfigError`),
never a traceback. Nothing here logs or keeps a key beyond what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge import signing
from edge.delivery.outbox import Outbox
from edge.delivery.publish import BrokerSettings
from edge.errors import ConfigError
from edge.recognition.decide import TrackDecider
from edge.recognition.pipeline import Recognizer
from edge.recognition.track import IoUTracker
from edge.service.config import QualitySettings, RecognitionSettings, Settings
from edge.service.sources import FrameSource, make_source
from edge.vision.faces import FaceEngine
from edge.vision.quality import QualityGate
from edge.watchlist.keys import (
    derive_key,
    device_key_from_bytes,
    load_signer_public,
    raw_private_bytes,
)


@dataclass(frozen=True, slots=True)
class DeviceKeys:
    """The keys the daemon starts with (never printed: no field is in the repr)."""

    device_key: X25519PrivateKey = field(repr=False)
    signer: Ed25519PublicKey = field(repr=False)
    signing_key: Ed25519PrivateKey = field(repr=False)


def load_keys(settings: Settings) -> DeviceKeys:
    """The device key (credential), the control room's signer key and the device's own
    signing key (credential; no key, no start: one line)."""
    device_key = device_key_from_bytes(
        settings.read_credential("device_key").get_secret_value()
    )
    signer = load_signer_public(settings.credential_path("signer_public_key"))
    # The device's own Ed25519 key signs every alert and audit entry (issue 13, 4 and 9).
    try:
        signing_key = signing.private_from_pem(
            settings.read_credential("device_signing_key").get_secret_value()
        )
    except signing.KeyFileError as exc:
        raise ConfigError([f"device.signing_key_credential: {exc}"]) from None
    return DeviceKeys(device_key, signer, signing_key)


def make_engine(settings: Settings) -> FaceEngine:
    return FaceEngine.from_models(
        settings.device.models_dir,
        embedder=settings.recognition.embedder,
        precision=settings.recognition.precision,
        detector=settings.detector.model,
        detector_input=settings.detector.input_size,
    )


def make_outbox(settings: Settings, device_key: X25519PrivateKey) -> Outbox:
    """The durable, encrypted outbox (its at-rest key derived from the device key)."""
    return Outbox(
        settings.outbox_path,
        derive_key(raw_private_bytes(device_key), "outbox"),
        max_items=settings.outbox.max_items,
        max_bytes=settings.outbox.max_bytes,
        reserve_items=max(1, settings.outbox.max_items // 10),  # for audit entries
        reserve_bytes=settings.outbox.max_bytes // 10,
    )


def broker_settings(settings: Settings) -> BrokerSettings:
    mqtt = settings.mqtt
    return BrokerSettings(
        host=mqtt.host,
        port=mqtt.port,
        ca=mqtt.ca if mqtt.tls else None,
        cert=mqtt.client_cert if mqtt.tls else None,
        key=settings.credential_path("mqtt_client_key") if mqtt.tls else None,
        keepalive=mqtt.keepalive_s,
    )


def make_gate(q: QualitySettings) -> QualityGate:
    """The quality gate of ``[quality]``."""
    return QualityGate(q.min_face_px, q.min_sharpness, q.max_yaw)


def make_decider(rec: RecognitionSettings) -> TrackDecider:
    """The track decider of ``[recognition]`` (its threshold is the bundle's once armed)."""
    return TrackDecider(
        threshold=1.0,  # replaced by the bundle's threshold when armed
        max_embeds_per_track=rec.embeds_per_track,
        max_embeds_per_frame=rec.embeds_per_frame,
        min_quality_gain=rec.min_quality_gain,
        cooldown_s=rec.cooldown_s,
        decision=rec.decision,
        weight=rec.template_weight,
        min_embeddings=rec.template_min_embeddings,
    )


def make_recognizer(settings: Settings, engine: FaceEngine) -> Recognizer:
    return Recognizer(
        engine,
        IoUTracker(),
        make_gate(settings.quality),
        make_decider(settings.recognition),
        device_id=settings.device.id,
        min_score=settings.detector.score_threshold,
        min_face_px=settings.detector.min_face_px,
        tiles=settings.detector.grid,
    )


def make_frame_source(settings: Settings) -> FrameSource:
    """The camera or file, unopened (the capture thread opens it)."""
    src = settings.source
    return make_source(
        src.factory_kind,
        src.uri,
        loop=src.loop,
        pace=src.paced,
        size=src.size,
        fps=src.fps,
        detect_size=src.lores_size,
        camera=src.camera_options(),
    )
