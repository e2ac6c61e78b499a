"""The daemon's configuration: strict pydantic models, one per section.

Where values come from, highest priority first:

1. keyword arguments (``load_settings(path, overrides={...})`` or ``Settings(...)``);
2. ``EDGE_`` environment variables, ``__`` between levels (``EDGE_MQTT__PORT=8884``);
3. the TOML file: ``--config F``, else ``$EDGE_CONFIG``, else ``/etc/edge/edge.toml``;
4. the defaults below.

Unknown keys are errors wherever they come from (the file or an ``EDGE_``
variable). :func:`load_settings` turns every problem into one line naming the
dotted key (``mqtt.port: Input should be less than 65536``) and raises
:class:`~edge.errors.ConfigError` with all of them.

Secrets never live in the config. The config names a systemd credential
(``LoadCredential=device.key:/etc/credstore/edge/device.key`` in the unit): at run
time the file is ``$CREDENTIALS_DIRECTORY/device.key``. Outside systemd a
``*_file`` path may be given instead (development, tests). See
:meth:`Settings.credential_path` and :meth:`Settings.read_credential`.

Validation here is pure (types, ranges, cross-field rules). Whether the
referenced files exist is a separate question, answered by :func:`check_files`
(``edge check-config`` runs both; the daemon should too before it starts).
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretBytes,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from edge.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ENV_CONFIG",
    "ENV_NOT_SETTINGS",
    "ENV_PREFIX",
    "CredentialName",
    "DetectorSettings",
    "DeviceSettings",
    "HealthSettings",
    "MqttSettings",
    "OutboxSettings",
    "QualitySettings",
    "RecognitionSettings",
    "RetentionSettings",
    "Settings",
    "SourceSettings",
    "WatchlistSettings",
    "check_files",
    "config_path",
    "load_settings",
]

DEFAULT_CONFIG_PATH = Path("/etc/edge/edge.toml")
ENV_PREFIX = "EDGE_"
ENV_CONFIG = "EDGE_CONFIG"
"""Names the config file."""
ENV_NOT_SETTINGS = frozenset({ENV_CONFIG, "EDGE_MODELS_DIR", "EDGE_VENV"})
"""``EDGE_`` variables that are not settings (the config file, edge.vision.manifest's models
directory for tools, run.sh's venv); every other ``EDGE_`` variable must name a setting."""
ENV_NESTED = "__"

CredentialName = Literal["device_key", "mqtt_client_key", "signer_public_key"]
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
        description="Frames buffered between capture and inference; when full the oldest "
        "is dropped (and counted).",
    )

    @field_validator("size")
    @classmethod
    def _check_size(cls, value: tuple[int, int]) -> tuple[int, int]:
        return _size_ok(value)

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
        if self.kind == "picamera2" and not self.uri.isdigit():
            problems.append(("uri", "for picamera2 give the camera number, e.g. '0'"))
        _raise_if(problems)
        return self


class DetectorSettings(Section):
    """``[detector]``: the face detector."""

    model: str = Field(
        default="blazeface_full_float32",
        min_length=1,
        description="Detector model name in the models manifest.",
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
        default="dlib_resnet_v1",
        min_length=1,
        description="Embedder model name; the manifest entry is <embedder>_<precision>.",
    )
    precision: Literal["int8", "float32"] = Field(
        default="int8", description="Embedder variant: int8 (quantised) or float32."
    )
    embeds_per_track: int = Field(
        default=3,
        ge=1,
        le=20,
        description="At most this many embeddings per track (its best-quality frames).",
    )
    cooldown_s: float = Field(
        default=60.0,
        ge=0.0,
        le=86400.0,
        description="After an alert for a subject, no new alert for that subject for this long.",
    )
    threshold_floor: dict[str, float] = Field(
        default_factory=lambda: {"dlib150": 0.5},
        description="Per embedder family, the lowest similarity threshold a watchlist bundle "
        "may set (safeguard 9). dlib150: 0.5 (distance 0.5); dlib's 1:1 setting 0.4 "
        "falsely matched 86 % of strangers against an 860-subject LFW gallery.",
    )

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


# The TOML file's contents for the Settings being built (see load_settings).
_FILE_DATA: ContextVar[Mapping[str, Any]] = ContextVar("edge_config_file_data")
_NO_FILE: Mapping[str, Any] = MappingProxyType({})


class _FileSource(PydanticBaseSettingsSource):
    """The already-parsed TOML file as a settings source."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        data = _FILE_DATA.get(_NO_FILE)
        return data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_FILE_DATA.get(_NO_FILE))


class Settings(BaseSettings):
    """All settings. Build with :func:`load_settings`; ``Settings(**kw)`` skips the file."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED,
        case_sensitive=False,
        extra="forbid",
        validate_default=True,
    )

    device: DeviceSettings = Field(description="Identity and directories.")
    source: SourceSettings = Field(default_factory=SourceSettings, description="Frames.")
    detector: DetectorSettings = Field(
        default_factory=DetectorSettings, description="Face detector."
    )
    quality: QualitySettings = Field(default_factory=QualitySettings, description="Quality gate.")
    recognition: RecognitionSettings = Field(
        default_factory=RecognitionSettings, description="Embedding and matching."
    )
    watchlist: WatchlistSettings = Field(
        default_factory=WatchlistSettings, description="Watchlist bundle."
    )
    mqtt: MqttSettings = Field(description="Control-room broker.")
    outbox: OutboxSettings = Field(default_factory=OutboxSettings, description="Alert outbox.")
    retention: RetentionSettings = Field(
        default_factory=RetentionSettings, description="Data retention."
    )
    health: HealthSettings = Field(default_factory=HealthSettings, description="Watchdog.")

    _credentials_dir: Path | None = PrivateAttr(default=None)

    _CREDENTIALS: ClassVar[dict[str, tuple[str, str, str]]] = {
        # name -> (section, credential field, file field)
        "device_key": ("device", "key_credential", "key_file"),
        "mqtt_client_key": ("mqtt", "client_key_credential", "client_key_file"),
        "signer_public_key": ("watchlist", "signer_credential", "signer_file"),
    }

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _FileSource(settings_cls))

    @model_validator(mode="after")
    def _cross(self) -> Settings:
        problems: list[tuple[str, str]] = []
        if self.quality.min_face_px < self.detector.min_face_px:
            problems.append(
                (
                    "quality.min_face_px",
                    f"{self.quality.min_face_px} is below detector.min_face_px "
                    f"{self.detector.min_face_px}; such faces are never detected",
                )
            )
        if self.watchlist.bundle is None:
            self.watchlist.bundle = self.device.state_dir / "watchlist.bundle"
        if self.outbox.path is None:
            self.outbox.path = self.device.state_dir / "outbox.sqlite"
        if self.mqtt.client_id is None:
            self.mqtt.client_id = f"edge-{self.device.id}"
        _raise_if(problems)
        return self

    def model_post_init(self, context: Any, /) -> None:
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        self._credentials_dir = Path(creds) if creds else None

    # --- derived values (always set after validation) -------------------------------------

    @property
    def bundle_path(self) -> Path:
        """The watchlist bundle path (``watchlist.bundle`` or its default)."""
        assert self.watchlist.bundle is not None
        return self.watchlist.bundle

    @property
    def outbox_path(self) -> Path:
        """The outbox database path (``outbox.path`` or its default)."""
        assert self.outbox.path is not None
        return self.outbox.path

    @property
    def mqtt_client_id(self) -> str:
        assert self.mqtt.client_id is not None
        return self.mqtt.client_id

    @property
    def topic_root(self) -> str:
        """``<topic_prefix>/<device id>``; topics are ``topic_root + "/alerts"`` etc."""
        return f"{self.mqtt.topic_prefix}/{self.device.id}"

    # --- credentials -----------------------------------------------------------------------

    @property
    def credentials_dir(self) -> Path | None:
        """``$CREDENTIALS_DIRECTORY`` as it was when these settings were built."""
        return self._credentials_dir

    def credential_path(self, which: CredentialName) -> Path:
        """The file holding a secret: ``$CREDENTIALS_DIRECTORY/<name>`` when it exists there,
        else the configured ``*_file``; a :class:`ConfigError` naming the key otherwise."""
        problem = self._credential_problem(which)
        if problem is not None:
            raise ConfigError([problem])
        path = self._credential_candidate(which)
        assert path is not None
        return path

    def read_credential(self, which: CredentialName) -> SecretBytes:
        """The secret's bytes, wrapped so that they never show up in a repr or a log line."""
        path = self.credential_path(which)
        try:
            return SecretBytes(path.read_bytes())
        except OSError as exc:
            section, cred_field, _ = self._CREDENTIALS[which]
            raise ConfigError(
                [f"{section}.{cred_field}: cannot read {path}: {exc.strerror or exc}"]
            ) from None

    def _credential_candidate(self, which: CredentialName) -> Path | None:
        section, cred_field, file_field = self._CREDENTIALS[which]
        model = getattr(self, section)
        name: str = getattr(model, cred_field)
        explicit: Path | None = getattr(model, file_field)
        if self._credentials_dir is not None:
            candidate = self._credentials_dir / name
            if candidate.is_file():
                return candidate
        return explicit

    def _credential_problem(self, which: CredentialName) -> str | None:
        section, cred_field, file_field = self._CREDENTIALS[which]
        model = getattr(self, section)
        name: str = getattr(model, cred_field)
        explicit: Path | None = getattr(model, file_field)
        if self._credentials_dir is not None and (self._credentials_dir / name).is_file():
            return None
        if explicit is not None:
            if explicit.is_file():
                return None
            return f"{section}.{file_field}: {explicit}: no such file"
        where = (
            f"not in $CREDENTIALS_DIRECTORY ({self._credentials_dir})"
            if self._credentials_dir is not None
            else "$CREDENTIALS_DIRECTORY is not set"
        )
        return (
            f"{section}.{cred_field}: credential {name!r} not found ({where}) "
            f"and {section}.{file_field} is not set"
        )


# --- loading --------------------------------------------------------------------------------


def config_path(path: Path | None = None) -> Path:
    """The config file to read: ``path``, else ``$EDGE_CONFIG``, else the default."""
    if path is not None:
        return path
    env = os.environ.get(ENV_CONFIG)
    return Path(env) if env else DEFAULT_CONFIG_PATH


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        problem = "no such file"
    except IsADirectoryError:
        problem = "is a directory, not a file"
    except PermissionError:
        problem = "permission denied"
    except OSError as exc:
        problem = f"cannot read: {exc.strerror or exc}"
    except UnicodeDecodeError:
        problem = "not UTF-8 text"
    except tomllib.TOMLDecodeError as exc:
        problem = f"invalid TOML: {exc}"
    raise ConfigError([f"config file {path}: {problem}"])


def _env_locations() -> dict[tuple[str, ...], str]:
    """Each ``EDGE_`` setting variable as a lower-case key path -> its name."""
    found: dict[tuple[str, ...], str] = {}
    for name in os.environ:
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in ENV_NOT_SETTINGS:
            rest = name[len(ENV_PREFIX) :].lower()
            found[tuple(rest.split(ENV_NESTED))] = name
    return found


def _unknown_env_keys(env: Mapping[tuple[str, ...], str]) -> list[str]:
    # Nested unknown keys (EDGE_MQTT__BOGUS) are caught by the models; pydantic-settings
    # ignores unknown top-level variables, so those are checked here.
    problems = []
    for loc, name in sorted(env.items(), key=lambda item: item[1]):
        if loc[0] not in Settings.model_fields:
            problems.append(f"{'.'.join(loc)}: unknown key (environment variable {name})")
    return problems


def _format_errors(exc: ValidationError, env: Mapping[tuple[str, ...], str]) -> list[str]:
    lines: list[str] = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = tuple(str(part) for part in error["loc"])
        ctx = error.get("ctx") or {}
        cause = ctx.get("error")
        items: list[tuple[tuple[str, ...], str]]
        if isinstance(cause, CrossFieldError):
            items = [(loc + tuple(key.split(".")), msg) for key, msg in cause.items]
        elif error["type"] == "extra_forbidden":
            items = [(loc, "unknown key")]
        elif error["type"] == "value_error" and isinstance(cause, ValueError):
            items = [(loc, str(cause))]
        else:
            items = [(loc, error["msg"])]
        for key, msg in items:
            origin = _origin(key, env)
            dotted = ".".join(key) if key else "config"
            lines.append(f"{dotted}: {msg}{origin}")
    return lines


def _origin(key: tuple[str, ...], env: Mapping[tuple[str, ...], str]) -> str:
    lowered = tuple(part.lower() for part in key)
    for n in range(len(lowered), 0, -1):
        name = env.get(lowered[:n])
        if name is not None:
            return f" (environment variable {name})"
    return ""


@contextmanager
def _file_data(data: Mapping[str, Any]) -> Iterator[None]:
    token = _FILE_DATA.set(data)
    try:
        yield
    finally:
        _FILE_DATA.reset(token)


def load_settings(
    path: Path | None = None, *, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Read and validate the settings; :class:`ConfigError` lists every problem, one a line.

    ``path``: the TOML file, else ``$EDGE_CONFIG``, else ``/etc/edge/edge.toml``; a missing,
    unreadable or malformed file is a problem too. ``overrides`` beat everything else
    (nested mappings, e.g. ``{"mqtt": {"port": 1884}}``).
    """
    data = _read_toml(config_path(path))
    env = _env_locations()
    problems = _unknown_env_keys(env)
    settings: Settings | None = None
    try:
        with _file_data(data):
            settings = Settings(**dict(overrides or {}))
    except ValidationError as exc:
        problems.extend(_format_errors(exc, env))
    except SettingsError as exc:
        # e.g. EDGE_RECOGNITION__THRESHOLD_FLOOR='not json'
        problems.append(f"environment: {exc}")
    if problems or settings is None:
        raise ConfigError(problems)
    return settings


def check_files(settings: Settings) -> list[str]:
    """Problems with the files the settings point at, one line each (empty when all is well).

    Checks what the daemon needs at start: the models directory, the state directory, TLS
    files and every credential. A missing watchlist bundle is not a problem (the daemon
    starts disarmed).
    """
    problems: list[str] = []

    def need_dir(key: str, path: Path) -> None:
        if not path.is_dir():
            problems.append(f"{key}: {path}: no such directory")
        elif not os.access(path, os.R_OK | os.X_OK):
            problems.append(f"{key}: {path}: permission denied")

    def need_file(key: str, path: Path) -> None:
        if not path.is_file():
            problems.append(f"{key}: {path}: no such file")
        elif not os.access(path, os.R_OK):
            problems.append(f"{key}: {path}: permission denied")

    need_dir("device.state_dir", settings.device.state_dir)
    need_dir("device.models_dir", settings.device.models_dir)
    if settings.device.models_dir.is_dir():
        need_file("device.models_dir", settings.device.models_dir / "manifest.json")
    if settings.mqtt.tls:
        if settings.mqtt.ca is not None:
            need_file("mqtt.ca", settings.mqtt.ca)
        if settings.mqtt.client_cert is not None:
            need_file("mqtt.client_cert", settings.mqtt.client_cert)
    creds: list[CredentialName] = ["device_key", "signer_public_key"]
    if settings.mqtt.tls:
        creds.append("mqtt_client_key")
    for which in creds:
        problem = settings._credential_problem(which)
        if problem is not None:
            problems.append(problem)
    uri = settings.source.uri
    kind = settings.source.kind
    is_path = kind in ("opencv", "device", "file", "folder") and not uri.isdigit()
    is_path = is_path and "://" not in uri
    if is_path and not Path(uri).exists():
        problems.append(f"source.uri: {uri}: no such file or device")
    return problems
