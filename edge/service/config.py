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

The sections themselves are declared in :mod:`edge.service.config_sections`; this module
assembles them into :class:`Settings` and loads them. It stays one unit (about 430 lines)
because the priority of the sources, the error formatting and the credential lookup are one
algorithm that must be read together.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

from pydantic import (
    Field,
    PrivateAttr,
    SecretBytes,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from edge.compat import tomllib
from edge.errors import ConfigError
from edge.service.config_sections import (
    DEFAULT_CONFIG_PATH,
    ENV_CONFIG,
    ENV_NESTED,
    ENV_NOT_SETTINGS,
    ENV_PREFIX,
    CredentialName,
    CrossFieldError,
    DetectorSettings,
    DeviceSettings,
    HealthSettings,
    MqttSettings,
    OutboxSettings,
    QualitySettings,
    RecognitionSettings,
    RetentionSettings,
    SourceSettings,
    WatchlistSettings,
    _raise_if,
)

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
        "device_signing_key": ("device", "signing_key_credential", "signing_key_file"),
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
            doc: dict[str, Any] = tomllib.load(handle)
            return doc
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
    creds: list[CredentialName] = ["device_key", "device_signing_key", "signer_public_key"]
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
