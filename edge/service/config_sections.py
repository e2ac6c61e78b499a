"""The sections of the daemon's configuration: one strict pydantic model per TOML table.

``[device]``, ``[source]``, ``[detector]``, ``[quality]``, ``[recognition]``,
``[watchlist]``, ``[mqtt]``, ``[outbox]``, ``[retention]``, ``[health]``: each field has its
type, range, default and description, and cross-field rules raise
:class:`CrossFieldError` naming the dotted key. :mod:`edge.service.config` assembles them
into :class:`~edge.service.config.Settings` and loads them (file, environment,
credentials).

Why one module of about 450 lines: it is a declaration of every key ``edge.toml`` may hold,
read top to bottom like the example file; splitting it by section would scatter the one
list an operator or reviewer needs to see whole. It holds no logic beyond validators.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    NoDecode,
)

from edge.errors import ConfigError
from edge.vision.defaults import DEFAULT_EMBEDDER, DLIB_EMBEDDER

if TYPE_CHECKING:
    from edge.service.sources.picamera2_options import Picamera2Options

DEFAULT_CONFIG_PATH = Path("/etc/edge/edge.toml")
ENV_PREFIX = "EDGE_"
ENV_CONFIG = "EDGE_CONFIG"
"""Names the config file."""
ENV_NOT_SETTINGS = frozenset({ENV_CONFIG, "EDGE_MODELS_DIR", "EDGE_VENV"})
"""``EDGE_`` variables that are not settings (the config file, edge.vision.manifest's models
directory for tools, run.sh's venv); every other ``EDGE_`` variable must name a setting."""
ENV_NESTED = "__"

CredentialName = Literal[
    "device_key", "device_signing_key", "mqtt_client_key", "signer_public_key"
]
"""The secrets the daemon reads from files (systemd credentials)."""

_ID_RE = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"
_CREDENTIAL_RE = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
_FAMILY_RE = re.compile(r"^[a-z0-9_]{1,32}$")
_TOPIC_RE = re.compile(r"^[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*$")
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class CrossFieldError(ValueError):
    """Raised by cross-field validators: each item is (dotted key relative to the model, message).

    The key is joined to the model's own location when errors are formatted, so a
    rule in :class:`MqttSettings` reports ``mqtt.ca: ...``.
    """

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self.items = items
        super().__init__("; ".join(f"{key}: {msg}" for key, msg in items))


def _raise_if(items: list[tuple[str, str]]) -> None:
    if items:
        raise CrossFieldError(items)


def _parse_size(value: object) -> object:
    """``"1280x720"``, ``[1280, 720]`` or ``(1280, 720)`` -> ``(1280, 720)``; else as is."""
    if isinstance(value, str):
        text = value.strip().lower()
        match = re.fullmatch(r"(\d{1,5})\s*[x×,]\s*(\d{1,5})", text)
        if match is None:
            raise ValueError("expected WIDTHxHEIGHT, e.g. 1280x720")
        return (int(match.group(1)), int(match.group(2)))
    if isinstance(value, list):
        return tuple(value)
    return value


def _size_ok(value: tuple[int, int]) -> tuple[int, int]:
    width, height = value
    if not (16 <= width <= 8192 and 16 <= height <= 8192):
        raise ValueError("width and height must each be between 16 and 8192")
    return value


Size = Annotated[tuple[int, int], NoDecode, BeforeValidator(_parse_size)]
"""A (width, height) in pixels; written ``"1280x720"`` or ``[1280, 720]``."""


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Section(BaseModel):
    """Base of every section: unknown keys are errors, defaults are validated too."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class DeviceSettings(Section):
    """``[device]``: who this unit is and where it keeps things."""

    id: str = Field(
        pattern=_ID_RE,
        description="Device id: lower-case letters, digits and '-', at most 64 characters. "
        "Used in MQTT topics and matched against the device ids a watchlist bundle is for.",
    )
    state_dir: Path = Field(
        default=Path("/var/lib/edge"),
        description="Writable state: watchlist bundle, outbox, audit log "
        "(systemd StateDirectory=).",
    )
    models_dir: Path = Field(
        default=Path("/opt/edge/models"),
        description="Read-only directory holding manifest.json and the .tflite models.",
    )
    key_credential: str = Field(
        default="device.key",
        pattern=_CREDENTIAL_RE,
        description="Name of the systemd credential holding the device's X25519 private key "
        "(read from $CREDENTIALS_DIRECTORY/<name>).",
    )
    key_file: Path | None = Field(
        default=None,
        description="Development only: the device private key file, used when "
        "$CREDENTIALS_DIRECTORY does not hold key_credential.",
    )
    signing_key_credential: str = Field(
        default="device-signing.key",
        pattern=_CREDENTIAL_RE,
        description="Name of the systemd credential holding the device's Ed25519 signing "
        "key (PKCS#8 PEM, generated on the device): it signs every alert and audit entry. "
        "The daemon refuses to start without it.",
    )
    signing_key_file: Path | None = Field(
        default=None,
        description="Development only: the device signing key file, used when "
        "$CREDENTIALS_DIRECTORY does not hold signing_key_credential.",
    )
    require_clock_sync: bool = Field(
        default=False,
        description="Arm only while the system clock is synchronised by NTP (the kernel's "
        "adjtimex state, as timedatectl reports it; under the unit's ProtectClock=yes, "
        "systemd-timesyncd's flag file); status says why while it waits. Set it on a unit "
        "without an RTC (the Ansible role does).",
    )


class SourceSettings(Section):
    """``[source]``: where frames come from."""

    kind: Literal["picamera2", "opencv", "device", "file", "folder", "url"] = Field(
        default="opencv",
        description="picamera2 (Raspberry Pi camera, libcamera), or an OpenCV source: "
        "'opencv' guesses from uri; 'device', 'file', 'folder' and 'url' say which.",
    )
    uri: str = Field(
        default="0",
        min_length=1,
        description="Camera index ('0'), device path (/dev/video0), video file, folder of "
        "images, or stream URL. For picamera2: the camera number.",
    )
    loop: bool = Field(
        default=False, description="Files and image folders: start again at the end."
    )
    pace: Literal["native", "flat"] = Field(
        default="native",
        description="Files and image folders: 'native' delivers frames at the file's frame "
        "rate (or fps), 'flat' as fast as the pipeline takes them.",
    )
    size: Size = Field(
        default=(1280, 720),
        description="Main stream size WIDTHxHEIGHT; faces are cropped from it.",
    )
    lores_size: Size | None = Field(
        default=(640, 360),
        description="Detection stream size WIDTHxHEIGHT (picamera2 'lores'; opencv resizes); "
        "must fit inside size. Omit to detect on the main stream.",
    )
    fps: float = Field(
        default=15.0, gt=0, le=120, description="Frames per second requested from the camera."
    )
    queue_frames: int = Field(
        default=4,
        ge=1,
        le=64,
        description="A file read flat out (pace 'flat'): frames buffered between capture "
        "and inference; when full, capture waits (every frame is processed). Cameras, "
        "streams and paced files always hand over the newest frame only (one slot; a "
        "frame inference did not take in time is dropped and counted).",
    )
    # picamera2 only (ignored by the other kinds):
    sensor_output_size: Size | None = Field(
        default=None,
        description="picamera2: the sensor mode's output WIDTHxHEIGHT (e.g. 2304x1296 on a "
        "Camera Module 3 for the full field of view); omit to let picamera2 choose from "
        "size, which may be a cropped mode.",
    )
    sensor_bit_depth: Literal[8, 10, 12, 16] | None = Field(
        default=None, description="picamera2: the sensor mode's bit depth (with the output size)."
    )
    af_mode: Literal["continuous", "manual"] = Field(
        default="continuous",
        description="picamera2: 'continuous' autofocus on cameras that have it (Camera "
        "Module 3; otherwise the lens stays at about 1 m); 'manual' leaves the lens alone.",
    )
    ae_exposure_mode: Literal["normal", "short", "long"] = Field(
        default="normal",
        description="picamera2: the auto-exposure profile; 'short' prefers short shutters "
        "(less motion blur on walking people, more gain).",
    )
    exposure_time_us: int | None = Field(
        default=None,
        ge=50,
        le=1_000_000,
        description="picamera2: a fixed shutter time in microseconds (gain stays automatic), "
        "e.g. 4000 for people walking; shorter than a frame at fps. Omit for automatic.",
    )
    transform: Literal["identity", "hflip", "vflip", "rot180"] = Field(
        default="identity",
        description="picamera2: mirror ('hflip', 'vflip') or turn the image by 180 degrees "
        "('rot180', a camera mounted upside down).",
    )
    colour_space: Literal["smpte170m", "rec709", "sycc"] = Field(
        default="smpte170m",
        description="picamera2: the YUV colour space of the lores stream: 'smpte170m' "
        "(BT.601, what OpenCV converts directly), 'rec709', or 'sycc' (full-range BT.601).",
    )
    camera_busy_limit: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="picamera2: after this many consecutive 'camera busy' failures (another "
        "process holds the camera) capture stops, so the daemon exits and systemd restarts it.",
    )

    @field_validator("size")
    @classmethod
    def _check_size(cls, value: tuple[int, int]) -> tuple[int, int]:
        return _size_ok(value)

    @field_validator("sensor_output_size")
    @classmethod
    def _check_sensor(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        return None if value is None else _size_ok(value)

    def camera_options(self) -> Picamera2Options:
        """The picamera2 settings, for ``make_source(..., camera=...)``."""
        from edge.service.sources.picamera2_options import Picamera2Options

        return Picamera2Options(
            sensor_output_size=self.sensor_output_size,
            sensor_bit_depth=self.sensor_bit_depth,
            af_mode=self.af_mode,
            ae_exposure_mode=self.ae_exposure_mode,
            exposure_time_us=self.exposure_time_us,
            transform=self.transform,
            colour_space=self.colour_space,
            busy_limit=self.camera_busy_limit,
        )

    @field_validator("lores_size")
    @classmethod
    def _check_lores(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        return None if value is None else _size_ok(value)

    @property
    def factory_kind(self) -> str:
        """The kind for ``edge.service.sources.make_source`` ('opencv' becomes 'auto')."""
        return "auto" if self.kind == "opencv" else self.kind

    @property
    def paced(self) -> bool:
        """``pace == "native"``: the ``pace`` flag of ``edge.service.sources.make_source``."""
        return self.pace == "native"

    @model_validator(mode="after")
    def _cross(self) -> SourceSettings:
        problems: list[tuple[str, str]] = []
        if self.lores_size is not None:
            lw, lh = self.lores_size
            w, h = self.size
            if lw > w or lh > h:
                problems.append(("lores_size", f"{lw}x{lh} does not fit inside size {w}x{h}"))
            elif abs(lw / lh - w / h) > 0.02 * (w / h):
                problems.append(
                    ("lores_size", f"{lw}x{lh} has another aspect ratio than size {w}x{h}")
                )
        if self.exposure_time_us is not None and self.exposure_time_us >= 1e6 / self.fps:
            problems.append(
                (
                    "exposure_time_us",
                    f"{self.exposure_time_us} us is not shorter than a frame at fps "
                    f"{self.fps:g} ({1e6 / self.fps:.0f} us)",
                )
            )
        if self.sensor_output_size is not None:
            sw, sh = self.sensor_output_size
            w, h = self.size
            if sw < w or sh < h:
                problems.append(
                    (
                        "sensor_output_size",
                        f"{sw}x{sh} is smaller than size {w}x{h} (the ISP does not upscale)",
                    )
                )
        if self.sensor_bit_depth is not None and self.sensor_output_size is None:
            problems.append(("sensor_bit_depth", "set sensor_output_size too"))
        if self.kind == "picamera2" and not self.uri.isdigit():
            problems.append(("uri", "for picamera2 give the camera number, e.g. '0'"))
        _raise_if(problems)
        return self


class DetectorSettings(Section):
    """``[detector]``: the face detector."""

    model: str = Field(
        default="retinaface_mnet025_int8",
        min_length=1,
        description="Detector model name in the models manifest: retinaface_mnet025_int8 "
        "(default; faces from about 30 px wide), retinaface_mnet025_float32, or BlazeFace "
        "for close range (blazeface_full_float32, blazeface_short_float32, ..._int8).",
    )
    input_size: Size = Field(
        default=(640, 384),
        description="RetinaFace's input WIDTHxHEIGHT, both multiples of 32; the detect "
        "image (source.lores_size, else the main frame) is scaled to fit it, aspect kept. "
        "1280x736 finds smaller faces at about 3x the cost. BlazeFace ignores it.",
    )
    score_threshold: float = Field(
        default=0.6, gt=0.0, lt=1.0, description="Minimum detector confidence (0..1)."
    )
    min_face_px: int = Field(
        default=20,
        ge=8,
        le=2048,
        description="Ignore detections narrower than this, in main-stream pixels.",
    )
    tiles: str = Field(
        default="1x1",
        pattern=r"^[1-4]x[1-3]$",
        description="Also detect on a COLSxROWS grid of overlapping tiles (e.g. 2x2) and "
        "merge, for small faces in wide frames; 1x1 = the whole frame only. Each tile "
        "costs one more detector call per frame.",
    )

    @field_validator("input_size")
    @classmethod
    def _check_input(cls, value: tuple[int, int]) -> tuple[int, int]:
        w, h = _size_ok(value)
        if w % 32 or h % 32:
            raise ValueError(f"{w}x{h}: both sides must be multiples of 32 (e.g. 640x384)")
        return value

    @property
    def grid(self) -> tuple[int, int]:
        cols, rows = self.tiles.split("x")
        return int(cols), int(rows)


class QualitySettings(Section):
    """``[quality]``: which faces are good enough to embed."""

    min_face_px: int = Field(
        default=40,
        ge=8,
        le=2048,
        description="Minimum face width in main-stream pixels for an embedding.",
    )
    min_sharpness: float = Field(
        default=40.0,
        ge=0.0,
        description="Minimum sharpness (variance of the Laplacian of the face crop).",
    )
    max_yaw: float = Field(
        default=0.45,
        gt=0.0,
        le=1.0,
        description="Maximum |yaw| estimated from keypoints, 0 = frontal, 1 = full profile.",
    )


class RecognitionSettings(Section):
    """``[recognition]``: embedding and matching.

    Scores are similarities (higher = more alike) for every family: cosine
    similarity, or ``1 - distance`` for Euclidean families such as dlib150.
    """

    embedder: str = Field(
        default=DEFAULT_EMBEDDER,
        min_length=1,
        description="Embedder model name; the manifest entry is <embedder>_<precision> "
        f"(default {DEFAULT_EMBEDDER}, SFace; dlib's ResNet: {DLIB_EMBEDDER}).",
    )
    precision: Literal["int8", "float32"] = Field(
        default="int8", description="Embedder variant: int8 (quantised) or float32."
    )
    embeds_per_track: int = Field(
        default=12,
        ge=1,
        le=20,
        description="At most this many embeddings per track, each of a face better than "
        "every one of the track embedded before (its first good face at once).",
    )
    min_quality_gain: float = Field(
        default=0.10,
        ge=0.0,
        le=10.0,
        description="After a track's first embedding, embed a face only when its quality "
        "score is at least (1 + this) times the track's best embedded one (0.10: 10 % "
        "better, e.g. a face 10 % wider).",
    )
    embeds_per_frame: int = Field(
        default=2,
        ge=1,
        le=64,
        description="At most this many embeddings in one frame (a crowd): tracks with the "
        "fewest embeddings first, then the largest quality gain; the rest wait for a later "
        "frame.",
    )
    decision: Literal["template", "embedding"] = Field(
        default="template",
        description="'template': match each track on the fusion of its best embeddings "
        "(RAM only, wiped when the track ends); 'embedding': on each embedding alone.",
    )
    template_weight: Literal["quality", "size"] = Field(
        default="quality",
        description="Weight of a frame in its track's template: its quality score, or its "
        "face width.",
    )
    template_min_embeddings: int = Field(
        default=1,
        ge=1,
        le=20,
        description="Decide a track once its template holds this many embeddings, or when "
        "it ends with fewer (1: its first embedding may alert at once); at most "
        "embeds_per_track.",
    )
    cooldown_s: float = Field(
        default=60.0,
        ge=0.0,
        le=86400.0,
        description="After an alert for a subject, no new alert for that subject for this long.",
    )
    threshold_floor: dict[str, float] = Field(
        default_factory=lambda: {"dlib150": 0.5, "arcface112": 0.5},
        description="Per embedder family, the lowest similarity threshold a watchlist bundle "
        "may set (safeguard 9). dlib150: 0.5 (distance 0.5); dlib's 1:1 setting 0.4 "
        "falsely matched 86 % of strangers against an 860-subject LFW gallery. arcface112 "
        "(SFace, cosine): 0.5, above 0.49, the lowest threshold from which its false-match "
        "rates of women and men no longer differ significantly on LFW (docs/fairness.md); "
        "its FPIR-0.001 threshold is 0.455 for 20 subjects, 0.497 for 100.",
    )

    @model_validator(mode="after")
    def _min_within_max(self) -> RecognitionSettings:
        if self.template_min_embeddings > self.embeds_per_track:
            _raise_if([("template_min_embeddings",
                        f"{self.template_min_embeddings} is more than embeds_per_track "
                        f"{self.embeds_per_track}")])
        return self

    @field_validator("threshold_floor")
    @classmethod
    def _check_floors(cls, value: dict[str, float]) -> dict[str, float]:
        if not value:
            raise ValueError("give at least one family, e.g. dlib150 = 0.5")
        problems: list[tuple[str, str]] = []
        for family, floor in value.items():
            if not _FAMILY_RE.fullmatch(family):
                problems.append((family, "family names are [a-z0-9_], 1..32 characters"))
            elif not 0.0 < floor < 1.0:
                problems.append((family, "floor must be between 0 and 1 (a similarity)"))
        _raise_if(problems)
        return value

    @property
    def model_name(self) -> str:
        """The manifest entry: ``<embedder>_<precision>``, e.g. ``dlib_resnet_v1_int8``."""
        return f"{self.embedder}_{self.precision}"

    def floor_for(self, family: str) -> float:
        """The threshold floor for ``family``; a :class:`ConfigError` if none is configured."""
        try:
            return self.threshold_floor[family]
        except KeyError:
            raise ConfigError(
                [
                    f"recognition.threshold_floor.{family}: no floor configured for the "
                    f"embedder's family {family!r}"
                ]
            ) from None


class WatchlistSettings(Section):
    """``[watchlist]``: the signed, encrypted per-deployment bundle."""

    bundle: Path | None = Field(
        default=None,
        description="The watchlist bundle; default <device.state_dir>/watchlist.bundle.",
    )
    signer_credential: str = Field(
        default="signer.pub",
        pattern=_CREDENTIAL_RE,
        description="Name of the systemd credential holding the control room's Ed25519 "
        "signing public key (the only signer trusted).",
    )
    signer_file: Path | None = Field(
        default=None,
        description="The signer public key file, used when $CREDENTIALS_DIRECTORY does not "
        "hold signer_credential.",
    )
    max_subjects: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="A bundle with more subjects than this is refused (safeguard 3).",
    )
    deployment_keys_dir: Path = Field(
        default=Path("/run/edge/deployment-keys"),
        description="Where the per-deployment private keys are (edge keys deployment-key): "
        "a RAM file system (the unit's RuntimeDirectory=, kept over a restart, gone at a "
        "reboot). A bundle is opened only with its deployment key from here, which is "
        "destroyed when the deployment ends (the crypto-shred).",
    )
    allow_device_key_bundles: bool = Field(
        default=False,
        description="Tests and development only: also open bundles wrapped to the device's "
        "long-lived key (device.key), which a copy of the device's storage would open.",
    )


class MqttSettings(Section):
    """``[mqtt]``: the control-room broker, the device's only network peer (safeguard 10)."""

    host: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[A-Za-z0-9.:\[\]-]+$",
        description="Broker host name or IP address.",
    )
    port: int = Field(default=8883, ge=1, lt=65536, description="Broker port.")
    tls: bool = Field(
        default=True,
        description="Mutual TLS. May be false only for a loopback broker (development).",
    )
    ca: Path | None = Field(
        default=None, description="CA certificate (PEM) that signed the broker's certificate."
    )
    client_cert: Path | None = Field(
        default=None, description="This device's client certificate (PEM)."
    )
    client_key_credential: str = Field(
        default="mqtt-client.key",
        pattern=_CREDENTIAL_RE,
        description="Name of the systemd credential holding the client certificate's "
        "private key (PEM).",
    )
    client_key_file: Path | None = Field(
        default=None,
        description="The client private key file, used when $CREDENTIALS_DIRECTORY does not "
        "hold client_key_credential.",
    )
    client_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="MQTT client id; default 'edge-<device.id>'.",
    )
    keepalive_s: int = Field(default=60, ge=5, le=3600, description="MQTT keepalive, seconds.")
    stats_interval_s: float = Field(
        default=60.0, ge=1.0, le=3600.0, description="Seconds between stats messages."
    )
    topic_prefix: str = Field(
        default="lfr",
        description="Topics are <topic_prefix>/<device.id>/<name>; no wildcards, no "
        "leading or trailing '/'.",
    )

    @field_validator("topic_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not _TOPIC_RE.fullmatch(value):
            raise ValueError("use letters, digits, '_', '-' and '/' between levels, e.g. 'lfr'")
        return value

    @model_validator(mode="after")
    def _cross(self) -> MqttSettings:
        problems: list[tuple[str, str]] = []
        if self.tls:
            if self.ca is None:
                problems.append(("ca", "required when tls is true"))
            if self.client_cert is None:
                problems.append(("client_cert", "required when tls is true (mutual TLS)"))
        elif not _is_loopback(self.host):
            problems.append(("tls", f"may be false only for a loopback broker, not {self.host!r}"))
        _raise_if(problems)
        return self


class OutboxSettings(Section):
    """``[outbox]``: the durable queue of alerts awaiting PUBACK."""

    path: Path | None = Field(
        default=None, description="SQLite file; default <device.state_dir>/outbox.sqlite."
    )
    max_items: int = Field(
        default=10_000, ge=10, le=10_000_000, description="Most messages held at once."
    )
    max_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024 * 1024,
        le=64 * 1024**3,
        description="Most payload bytes held at once.",
    )
    audit_alarm_s: float = Field(
        default=3600.0,
        ge=1.0,
        le=7 * 86400.0,
        description="An audit entry the control room has not acknowledged after this many "
        "seconds raises the audit alarm on status (as does one that could not be queued).",
    )


class RetentionSettings(Section):
    """``[retention]``: how long alert data may be kept (safeguard 7)."""

    days: int = Field(
        default=31,
        ge=1,
        le=31,
        description="Alert data older than this is purged unless on legal hold; at most 31.",
    )
    purge_interval_s: float = Field(
        default=3600.0, ge=60.0, le=86400.0, description="Seconds between purges."
    )


class HealthSettings(Section):
    """``[health]``: the watchdog's view of the loops."""

    max_age_s: float = Field(
        default=30.0,
        ge=1.0,
        le=3600.0,
        description="A loop (capture, inference, publisher) that has not checked in for this "
        "long is stalled; the systemd watchdog is then no longer pinged.",
    )
