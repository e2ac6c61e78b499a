"""The console's configuration: one TOML file (``edge console serve --config F``).

::

    [console]
    database = "sqlite:////var/lib/edge-console/console.db"   # or postgresql+psycopg://...
    listen = "127.0.0.1"          # plain HTTP is allowed only on a loopback address
    port = 8443
    tls_cert = "/etc/edge-console/https.crt"   # HTTPS (required off loopback)
    tls_key = "/etc/edge-console/https.key"
    key_file = "/etc/edge-console/console.key" # X25519 (edge keys init --device console):
                                                # crops and reference images at rest
    signing_key = "/etc/edge-console/signing.key"  # the control room's Ed25519 key:
                                                # each adjudication is signed with it
    device_keys = "/etc/edge-console/devices"   # <device_id>.signing.pub of each device
                                                # (or one such file): alerts and audit
                                                # entries are verified against them
    references_dir = "/var/lib/edge-console/references"  # reference files to import
    session_ttl_s = 28800
    retention_days = 31
    alert_stale_s = 120           # an undecided alert older than this is marked stale
    metrics_token_file = "/etc/edge-console/metrics.token"  # optional: Prometheus may
                                                # scrape /metrics with "Bearer <token>"
    stale_after_s = 180           # a van online but silent (no status or stats) this long is
                                  # shown stale: 3 x the vans' [mqtt] stats_interval_s (60)
    trusted_proxies = []          # addresses or networks of reverse proxies whose
                                  # X-Forwarded-For/-Proto count; none by default
    login_concurrency = 2         # password checks at once (argon2: 64 MiB each);
                                  # more logins wait a moment or get 429 + Retry-After

    [mqtt]
    host = "broker.example"
    port = 8883
    ca = "/etc/edge-console/ca.crt"
    client_cert = "/etc/edge-console/console-1.crt"  # this instance's own certificate
    client_key_file = "/etc/edge-console/console-1.key"
    client_id = "console-1"       # fixed, one per instance: its persistent session lives
                                  # under it (on the role's broker the certificate's CN)
    session_expiry_s = 604800     # how long the broker keeps the session (and what it
                                  # queued) while this instance is away: at least 300 s

Each console instance holds its own durable subscription to the whole fleet (see
:mod:`edge.console.ingest`); ``share_group`` (from when instances shared one) is accepted
and ignored, with a warning.

Problems are collected and raised together as :class:`edge.errors.ConfigError`. A
private file the console reads (``key_file``, ``signing_key``, ``tls_key``, the MQTT
client key, the metrics token) that others may read or write (any group or other
permission bit) is refused: ``chmod 600`` it.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.compat import tomllib
from edge.errors import ConfigError

log = logging.getLogger(__name__)

_CONSOLE_KEYS = {"database", "listen", "port", "tls_cert", "tls_key", "key_file",
                 "signing_key", "device_keys", "references_dir", "session_ttl_s",
                 "retention_days", "metrics_token_file", "stale_after_s", "trusted_proxies",
                 "login_concurrency", "alert_stale_s"}
_MQTT_KEYS = {"host", "port", "ca", "client_cert", "client_key_file", "client_id",
              "share_group", "session_expiry_s"}  # fmt: skip
_OBSOLETE = {("mqtt", "share_group"): "every console instance now holds its own "
             "subscription to the whole fleet (docs/console.md, Running several instances)"}


@dataclass(frozen=True)
class ConsoleConfig:
    database: str
    listen: str
    port: int
    tls_cert: Path | None
    tls_key: Path | None
    key_file: Path
    signing_key: Path
    device_keys: Path
    references_dir: Path | None
    session_ttl_s: int
    retention_days: int
    mqtt_host: str
    mqtt_port: int
    mqtt_ca: Path | None
    mqtt_cert: Path | None
    mqtt_key: Path | None
    client_id: str
    session_expiry_s: int
    metrics_token: str | None = None
    stale_after_s: int = 180
    trusted_proxies: tuple[str, ...] = ()
    login_concurrency: int = 2
    alert_stale_s: int = 120

    @property
    def https(self) -> bool:
        return self.tls_cert is not None


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


PRIVATE_KEYS = (("console", "key_file"), ("console", "signing_key"), ("console", "tls_key"),
                ("console", "metrics_token_file"), ("mqtt", "client_key_file"))


def private_mode_problem(where: str, path: Path) -> str | None:
    """One line if ``path`` may be read or written by its group or others, else None."""
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return None  # reported as missing elsewhere
    if mode & 0o077:
        return (f"{where}: {path} is open to others (mode {mode:04o}); it holds a secret: "
                f"chmod 600 {path}")
    return None


def _proxies(value: Any, problems: list[str]) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append("[console] trusted_proxies: must be a list of addresses or networks")
        return ()
    for v in value:
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            problems.append(f"[console] trusted_proxies: {v!r} is not an address or network")
            return ()
    return tuple(value)


def _token(path: Path | None, problems: list[str]) -> str | None:
    if path is None:
        return None
    try:
        token = path.read_text().strip()
    except OSError as exc:
        problems.append(f"[console] metrics_token_file: cannot read {path}: {exc.strerror}")
        return None
    if len(token) < 16 or not token.isascii() or not token.isprintable():
        problems.append("[console] metrics_token_file: the token must be 16+ printable ASCII")
        return None
    return token


def load(path: Path) -> ConsoleConfig:
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError([f"cannot read {path}: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML ({exc})"]) from None
    return from_dict(doc, path.parent)


def from_dict(doc: dict[str, Any], base: Path) -> ConsoleConfig:
    problems: list[str] = []
    c = doc.get("console", {})
    m = doc.get("mqtt", {})
    for name, section, known in (("console", c, _CONSOLE_KEYS), ("mqtt", m, _MQTT_KEYS)):
        if not isinstance(section, dict):
            problems.append(f"[{name}] is not a table")
            continue
        problems += [f"[{name}] {k}: unknown key" for k in sorted(set(section) - known)]
    for k in sorted(set(doc) - {"console", "mqtt"}):
        problems.append(f"[{k}]: unknown section")
    if problems:
        raise ConfigError(problems)
    for (where, key), why in _OBSOLETE.items():
        if key in doc.get(where, {}):
            log.warning("[%s] %s is no longer used and is ignored: %s", where, key, why)

    def path(section: dict[str, Any], key: str, where: str, required: bool,
             must_exist: bool = True) -> Path | None:  # fmt: skip
        v = section.get(key)
        if v is None:
            if required:
                problems.append(f"[{where}] {key}: required")
            return None
        if not isinstance(v, str) or not v:
            problems.append(f"[{where}] {key}: must be a path")
            return None
        p = Path(v) if Path(v).is_absolute() else base / v
        if must_exist and not p.exists():
            problems.append(f"[{where}] {key}: {p} does not exist")
        return p

    def integer(section: dict[str, Any], key: str, where: str, default: int, lo: int,
                hi: int) -> int:  # fmt: skip
        v = section.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            problems.append(f"[{where}] {key}: must be an integer in {lo}..{hi}")
            return default
        return v

    def string(section: dict[str, Any], key: str, where: str, default: str) -> str:
        v = section.get(key, default)
        if not isinstance(v, str) or not v:
            problems.append(f"[{where}] {key}: must be a non-empty string")
            return default
        return v

    listen = string(c, "listen", "console", "127.0.0.1")
    tls_cert = path(c, "tls_cert", "console", False)
    tls_key = path(c, "tls_key", "console", tls_cert is not None)
    if tls_cert is None and not is_loopback(listen):
        problems.append(f"[console] listen: plain HTTP only on loopback; {listen} needs "
                        "tls_cert and tls_key")  # fmt: skip
    mqtt_tls = [path(m, k, "mqtt", False) for k in ("ca", "client_cert", "client_key_file")]
    host = string(m, "host", "mqtt", "127.0.0.1")
    if any(p is None for p in mqtt_tls) and not is_loopback(host):
        problems.append("[mqtt] ca, client_cert and client_key_file: mutual TLS is required")
    cfg = ConsoleConfig(
        database=string(c, "database", "console", f"sqlite:///{base / 'console.db'}"),
        listen=listen,
        port=integer(c, "port", "console", 8443, 0, 65535),
        tls_cert=tls_cert,
        tls_key=tls_key,
        key_file=path(c, "key_file", "console", True) or Path(),
        signing_key=path(c, "signing_key", "console", True) or Path(),
        device_keys=path(c, "device_keys", "console", True) or Path(),
        references_dir=path(c, "references_dir", "console", False, must_exist=False),
        session_ttl_s=integer(c, "session_ttl_s", "console", 8 * 3600, 60, 7 * 24 * 3600),
        retention_days=integer(c, "retention_days", "console", 31, 1, 31),
        mqtt_host=host,
        mqtt_port=integer(m, "port", "mqtt", 8883, 1, 65535),
        mqtt_ca=mqtt_tls[0],
        mqtt_cert=mqtt_tls[1],
        mqtt_key=mqtt_tls[2],
        client_id=string(m, "client_id", "mqtt", "console-1"),
        session_expiry_s=integer(m, "session_expiry_s", "mqtt", 7 * 24 * 3600, 300, 2**31 - 1),
        metrics_token=_token(path(c, "metrics_token_file", "console", False), problems),
        stale_after_s=integer(c, "stale_after_s", "console", 180, 5, 86400),
        trusted_proxies=_proxies(c.get("trusted_proxies", []), problems),
        login_concurrency=integer(c, "login_concurrency", "console", 2, 1, 64),
        alert_stale_s=integer(c, "alert_stale_s", "console", 120, 10, 24 * 3600),
    )
    for section, key in PRIVATE_KEYS:
        value = (c if section == "console" else m).get(key)
        if isinstance(value, str) and value:
            p = Path(value) if Path(value).is_absolute() else base / value
            line = private_mode_problem(f"[{section}] {key}", p)
            if line:
                problems.append(line)
    if cfg.device_keys.exists():
        from edge import signing

        try:
            signing.load_device_keys(cfg.device_keys, allow_empty=True)
        except signing.KeyFileError as exc:
            problems.append(f"[console] device_keys: {exc}")
    if problems:
        raise ConfigError(problems)
    return cfg
