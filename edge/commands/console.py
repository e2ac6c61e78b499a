"""``edge console``: the control room's web console.

- ``edge console serve --config console.toml``: the web application and its MQTT ingest;
- ``edge console user add NAME --role operator|supervisor|auditor [--password-stdin]
  [--replace]`` (``--replace``: a new password and role; the user's sessions end);
- ``edge console user disable NAME`` (logins refused, sessions ended at once), ``enable
  NAME``, ``remove NAME`` (the user and their sessions deleted), ``list``; each change
  is on the console's trail with the operating-system user who made it;
- ``edge console migrate --config console.toml``: bring the database to the newest schema
  (``serve`` does this too).

The configuration is described in :mod:`edge.console.config`.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("console", help="control room: the web console (alerts, fleet, audit)")
    csub = p.add_subparsers(dest="console_command", metavar="ACTION")
    csub.required = True
    s = csub.add_parser("serve", help="run the web console and its MQTT ingest")
    s.add_argument("--config", type=Path, required=True, help="console.toml")
    s.set_defaults(func=run_serve)
    m = csub.add_parser("migrate", help="bring the database to the newest schema")
    m.add_argument("--config", type=Path, required=True, help="console.toml")
    m.set_defaults(func=run_migrate)
    u = csub.add_parser("user", help="manage console users")
    usub = u.add_subparsers(dest="user_command", metavar="ACTION")
    usub.required = True
    a = usub.add_parser("add", help="add a user (or --replace an existing one's password)")
    a.add_argument("name")
    a.add_argument("--role", required=True, choices=("operator", "supervisor", "auditor"))
    a.add_argument("--config", type=Path, required=True, help="console.toml (for the database)")
    a.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of stdin")
    a.add_argument("--replace", action="store_true", help="set a new password and role")
    a.set_defaults(func=run_user_add)
    for action, text in (("disable", "refuse the user's logins and end their sessions now"),
                         ("enable", "allow a disabled user to log in again"),
                         ("remove", "delete the user and end their sessions now")):
        d = usub.add_parser(action, help=text)
        d.add_argument("name")
        d.add_argument("--config", type=Path, required=True, help="console.toml")
        d.set_defaults(func=run_user_change, action=action)
    ls = usub.add_parser("list", help="the users, their roles and whether they are disabled")
    ls.add_argument("--config", type=Path, required=True, help="console.toml")
    ls.set_defaults(func=run_user_list)


def _actor() -> str:
    """Who changes users from the command line, for the console's trail."""
    import os

    try:
        return f"cli:{getpass.getuser()}"[:64]
    except (KeyError, OSError):
        return f"cli:uid-{os.getuid()}"


def _open_store(config: Path) -> Any:
    from edge.console.config import load
    from edge.console.store import Store
    from edge.errors import UsageError

    cfg = load(config)
    try:
        return cfg, Store.open(cfg.database)
    except Exception as exc:  # sqlalchemy's errors are many; say it in one line
        raise UsageError(f"cannot open the database {cfg.database}: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from None


def run_migrate(args: argparse.Namespace) -> int:
    from edge.console import migrate

    _cfg, store = _open_store(args.config)
    print(f"database at schema {migrate.current(store.engine)}")
    store.close()
    return 0


def run_user_add(args: argparse.Namespace) -> int:
    from edge.console.auth import add_user, check_name
    from edge.errors import UsageError

    check_name(args.name)
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            raise UsageError("the passwords differ")
    _cfg, store = _open_store(args.config)
    try:
        what = add_user(store, args.name, args.role, password, replace=args.replace,
                        actor=_actor())  # fmt: skip
    finally:
        store.close()
    print(f"user {args.name} {what} (role {args.role})")
    return 0


def run_user_change(args: argparse.Namespace) -> int:
    from edge.console.auth import check_name, disable_user, enable_user, remove_user

    check_name(args.name)
    _cfg, store = _open_store(args.config)
    try:
        if args.action == "enable":
            enable_user(store, args.name, _actor())
            print(f"user {args.name} enabled")
            return 0
        change = disable_user if args.action == "disable" else remove_user
        ended = change(store, args.name, _actor())
    finally:
        store.close()
    done = "disabled" if args.action == "disable" else "removed"
    print(f"user {args.name} {done}; {ended} session{'' if ended == 1 else 's'} ended")
    return 0


def run_user_list(args: argparse.Namespace) -> int:
    _cfg, store = _open_store(args.config)
    try:
        users = store.auth.users()
    finally:
        store.close()
    for u in users:
        print(f"{u['name']:<24} {u['role']:<10} {'disabled' if u['disabled'] else 'enabled'}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from edge import signing
    from edge.console import routes_api, routes_pages
    from edge.console.app import Context, create_app, templates
    from edge.console.crypto import AtRest
    from edge.console.events import Hub
    from edge.console.handlers import Handler
    from edge.console.ingest import Ingest
    from edge.console.login import Logins
    from edge.console.metrics import Metrics
    from edge.console.service import Console
    from edge.delivery.publish import BrokerSettings
    from edge.errors import ConfigError
    from edge.watchlist.keys import load_device_key, load_signing_key

    cfg, store = _open_store(args.config)
    at_rest = AtRest(load_device_key(cfg.key_file))
    signing_key = load_signing_key(cfg.signing_key)
    hub, metrics = Hub(), Metrics()
    try:
        device_keys = signing.DeviceKeyring(cfg.device_keys)  # re-read for a new van
    except signing.KeyFileError as exc:
        raise ConfigError([f"[console] device_keys: {exc}"]) from None
    handler = Handler(store, at_rest, hub, metrics, device_keys=device_keys,
                      retention_days=cfg.retention_days)
    broker = BrokerSettings(host=cfg.mqtt_host, port=cfg.mqtt_port, ca=cfg.mqtt_ca,
                            cert=cfg.mqtt_cert, key=cfg.mqtt_key)  # fmt: skip
    ingest = Ingest(broker, handler, metrics, client_id=cfg.client_id,
                    session_expiry_s=cfg.session_expiry_s)  # fmt: skip
    console = Console(store, at_rest, hub, metrics, ingest, signing_key,
                      retention_days=cfg.retention_days, references_dir=cfg.references_dir,
                      stale_after_s=cfg.stale_after_s)
    logins = Logins(store.auth, cfg.session_ttl_s, cfg.login_concurrency)
    context = Context(store=store, console=console, hub=hub, metrics=metrics,
                      templates=templates(), session_ttl_s=cfg.session_ttl_s,
                      secure_cookies=cfg.https, logins=logins,
                      metrics_token=cfg.metrics_token, ingest_connected=lambda: ingest.ready,
                      stale_after_s=cfg.stale_after_s, alert_stale_s=cfg.alert_stale_s)
    app = create_app(context, [routes_pages.router, routes_api.router])
    ssl: dict[str, Any] = {}
    if cfg.https:
        ssl = {"ssl_certfile": str(cfg.tls_cert), "ssl_keyfile": str(cfg.tls_key)}
    # X-Forwarded-For/-Proto count only from the configured proxies (uvicorn would trust
    # them from loopback by default: a spoofed client on the trail, the address limit
    # bypassed). Open SSE streams and idle keep-alives do not hold up a stop for long.
    proxies: dict[str, Any] = {"proxy_headers": bool(cfg.trusted_proxies),
                               "forwarded_allow_ips": list(cfg.trusted_proxies)}
    server = uvicorn.Server(uvicorn.Config(app, host=cfg.listen, port=cfg.port,
                                           log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=3, **proxies, **ssl))
    scheme = "https" if cfg.https else "http"
    ingest.start()
    console.start()
    print(f"console: listening on {scheme}://{cfg.listen}:{cfg.port}/", file=sys.stderr,
          flush=True)  # fmt: skip
    try:
        server.run()
    finally:
        console.stop()
        ingest.stop()
        logins.close()
        store.close()
    return 0
