"""``edge alerts``: the control room's subscriber, and ``edge alerts adjudicate``.

Listen (mutual TLS, QoS 1) to ``lfr/<device>/alerts`` (plus ``status`` and
``deployment``), print one line per alert, save each matched-face crop as
``<alert_id>.jpg`` (``--save-crops``: a private directory, each crop 0600, audited and
purged after 31 days, :mod:`edge.commands.alerts_crops`), and drop redeliveries by
``alert_id``::

    edge alerts --host H --port P --ca CA --cert C --key K --device-keys DIR|FILE
                [--device ID|+] [--save-crops DIR] [--count N] [--timeout S] [--json]

Each alert is verified against its device's signing key (``--device-keys``: a directory
of ``<device_id>.signing.pub``, or one such file; issue 13, item 9) before anything is
printed or saved: an alert without a valid device signature (a broker or a holder of
the control room's certificate injecting a face of its choosing) is one ``edge: REFUSED``
line on stderr, counted in the final summary, and never shown as an alert.

Send an officer's decision back to the device (waits for the broker's PUBACK)::

    edge alerts adjudicate --alert-id ID --device ID --signing-key FILE
                --decision confirmed|rejected|not_stopped --officer X  [connection options]

The decision is signed with the control room's Ed25519 signing key
(:func:`edge.watchlist.adjudication.sign_adjudication`); the device refuses unsigned ones.

Every message is untrusted: parsed with :func:`edge.boundedjson.loads` (size and depth
bounded), a bad one is one line on stderr and the listener goes on; retained alerts are
ignored (a device must not plant an alert every later subscriber receives); every string
printed from a message is escaped (:func:`safe`), so a ``subject_id`` with control
characters cannot forge a line.

``--count`` stops after N distinct alerts (exit 0); ``--timeout`` stops after
S seconds (exit 0, or 1 if ``--count`` was not reached). A connection problem
is one line on stderr and exit 5.
"""

from __future__ import annotations

import argparse
import base64
import json
import queue
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.commands.alerts_output import alert_line, print_other, safe
from edge.errors import BrokerError, EdgeError, UsageError

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

    from edge.delivery.publish import BrokerSettings

CONNECT_TIMEOUT_S = 10.0


class AlertsTimeoutError(EdgeError):
    """``--timeout`` passed before ``--count`` alerts arrived."""

    exit_code = 1


def _connection_args(p: argparse.ArgumentParser, suppress: bool) -> None:
    def d(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    p.add_argument("--host", default=d("127.0.0.1"), help="broker host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=d(8883), help="broker TLS port (default 8883)")
    p.add_argument("--ca", type=Path, default=d(None), help="CA certificate of the broker")
    p.add_argument("--cert", type=Path, default=d(None), help="this client's certificate")
    p.add_argument("--key", type=Path, default=d(None), help="this client's private key")
    p.add_argument("--client-id", default=d(None), help="MQTT client id (default random)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "alerts",
        help="control room: watch alerts, save crops, send adjudications",
        description="Subscribe to device alerts over MQTT 5 with mutual TLS.",
    )
    _connection_args(p, suppress=False)
    p.add_argument("--device", default="+", help="device id to watch, or + for all (default)")
    p.add_argument("--device-keys", type=Path, metavar="PATH",
                   help="the devices' signing public keys: a directory of "
                   "<device_id>.signing.pub files, or one such file (required to listen)")
    p.add_argument("--save-crops", type=Path, metavar="DIR",
                   help="save face crops here: a private directory (0700, crops 0600), each "
                   "save audited in DIR/crops-audit.log, crops deleted after 31 days")
    p.add_argument("--count", type=int, metavar="N", help="stop after N distinct alerts")
    p.add_argument("--timeout", type=float, metavar="S", help="stop after S seconds")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument(
        "--session-expiry",
        type=int,
        default=0,
        metavar="S",
        help="keep a persistent session for S seconds (with --client-id), so alerts "
        "published while this subscriber is away are delivered when it returns",
    )
    p.set_defaults(func=run_listen)
    actions = p.add_subparsers(dest="alerts_action", metavar="ACTION")
    a = actions.add_parser(
        "adjudicate",
        help="send an officer's decision on an alert to its device",
        description="Publish {alert_id, decision, officer, at} to lfr/<device>/adjudications.",
    )
    _connection_args(a, suppress=True)
    a.add_argument("--alert-id", required=True, help="the alert's id (UUIDv7)")
    a.add_argument("--device", required=True, help="the device that raised the alert")
    a.add_argument("--decision", required=True, choices=("confirmed", "rejected", "not_stopped"))
    a.add_argument("--officer", required=True, help="the adjudicating officer's id")
    a.add_argument("--signing-key", required=True, type=Path, metavar="FILE",
                   help="the control room's Ed25519 signing key (edge keys init)")  # fmt: skip
    a.add_argument("--json", action="store_true", help="print the sent message as JSON")
    a.add_argument(
        "--timeout", type=float, default=CONNECT_TIMEOUT_S, help="seconds to wait for PUBACK"
    )
    a.set_defaults(func=run_adjudicate)


# --- shared ----------------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> BrokerSettings:
    from edge.delivery.publish import BrokerSettings

    missing = [f"--{n}" for n in ("ca", "cert", "key") if getattr(args, n, None) is None]
    if missing:
        raise UsageError(f"missing {', '.join(missing)} (mutual TLS needs all three)")
    return BrokerSettings(host=args.host, port=args.port, ca=args.ca, cert=args.cert, key=args.key)


def _connect(
    client: mqtt.Client,
    settings: BrokerSettings,
    *,
    clean_start: bool = True,
    session_expiry: int = 0,
    timeout: float = CONNECT_TIMEOUT_S,
) -> None:
    """Connect and wait for a successful CONNACK, or raise BrokerError (one line)."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    where = f"{settings.host}:{settings.port}"
    done = threading.Event()
    outcome: list[str] = []

    def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            outcome.append(f"the broker at {where} refused the connection: {rc}")
        done.set()

    def on_disconnect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not done.is_set():
            outcome.append(
                f"the broker at {where} closed the connection ({rc}); "
                "is this client's certificate issued by the broker's CA?"
            )
            done.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    if session_expiry > 0:
        props.SessionExpiryInterval = session_expiry
    try:
        client.connect(
            settings.host, settings.port, keepalive=30, clean_start=clean_start, properties=props
        )
    except OSError as exc:  # includes ssl.SSLError and refused/unreachable
        raise BrokerError(f"cannot connect to the broker at {where}: {exc}") from None
    client.loop_start()
    if not done.wait(timeout):
        client.loop_stop()
        raise BrokerError(f"no answer from the broker at {where} within {timeout:g} s")
    if outcome:
        client.loop_stop()
        raise BrokerError(outcome[0])


def _client(args: argparse.Namespace, settings: BrokerSettings, prefix: str) -> mqtt.Client:
    from edge.delivery.publish import new_client

    return new_client(args.client_id or f"{prefix}-{uuid.uuid4().hex[:12]}", settings)


# --- listen ----------------------------------------------------------------------------------


def run_listen(args: argparse.Namespace) -> int:
    from edge.delivery.alert import AlertFormatError, parse_alert
    from edge.delivery.publish import topic

    if args.count is not None and args.count < 1:
        raise UsageError("--count must be at least 1")
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    if args.device_keys is None:
        raise UsageError("--device-keys is required: alerts are verified against the "
                         "devices' signing keys")  # fmt: skip
    from edge import signing

    try:
        args.keyring = signing.DeviceKeyring(args.device_keys)  # re-read for a new van
    except signing.KeyFileError as exc:
        raise UsageError(f"--device-keys: {exc}") from None
    args.refused = 0
    try:
        topics = [topic(args.device, kind) for kind in ("alerts", "status", "deployment")]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    args.crops = None
    if args.save_crops is not None:
        from edge.commands.alerts_crops import CropStore

        args.crops = CropStore(args.save_crops)
        args.crops.purge(force=True)
    settings = _settings(args)
    client = _client(args, settings, "edge-alerts")
    inbox: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    subscribed = threading.Event()
    refused: list[str] = []

    def on_subscribe(_c: Any, _u: Any, _mid: int, rcs: Any, _p: Any) -> None:
        bad = [f"{t}: {rc}" for t, rc in zip(topics, rcs, strict=False) if rc.is_failure]
        if bad:
            refused.append("; ".join(bad))
        subscribed.set()

    client.on_message = lambda _c, _u, msg: inbox.put(msg)
    client.on_subscribe = on_subscribe
    expiry = args.session_expiry
    _connect(client, settings, clean_start=expiry <= 0, session_expiry=max(0, expiry))
    client.subscribe([(t, 1) for t in topics])
    try:
        if not subscribed.wait(CONNECT_TIMEOUT_S):
            raise BrokerError("the broker did not confirm the subscription")
        if refused:
            raise BrokerError(f"the broker refused the subscription ({refused[0]})")
        seen: set[str] = set()
        duplicates = 0
        deadline = None if args.timeout is None else time.monotonic() + args.timeout
        while args.count is None or len(seen) < args.count:
            wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if wait <= 0:
                if args.count is not None:
                    raise AlertsTimeoutError(
                        f"timed out after {args.timeout:g} s with {len(seen)} of "
                        f"{args.count} alerts"
                    )
                break
            if args.crops is not None:
                args.crops.purge()  # hourly
            try:
                msg = inbox.get(timeout=wait)
            except queue.Empty:
                continue
            try:
                duplicates += _handle(msg, seen, args, parse_alert, AlertFormatError)
            except Exception as exc:  # one bad message never ends the listener
                print(f"edge: ignoring a message on {safe(msg.topic)}: "
                      f"{safe(type(exc).__name__)}", file=sys.stderr)  # fmt: skip
        print(
            f"edge: {len(seen)} alerts, {duplicates} duplicate deliveries ignored, "
            f"{args.refused} refused (no valid device signature)",
            file=sys.stderr,
        )
        return 0
    finally:
        client.disconnect()
        client.loop_stop()


def _handle(msg: mqtt.MQTTMessage, seen: set[str], args: argparse.Namespace,
            parse_alert: Any, format_error: type[Exception]) -> int:
    """Print (and save) one message; returns 1 for a duplicate alert, else 0."""
    kind = msg.topic.rsplit("/", 1)[-1]
    device = safe(msg.topic.split("/")[1] if msg.topic.count("/") >= 2 else "?", 64)
    if kind != "alerts":
        print_other(kind, device, bytes(msg.payload), msg.retain, args.json)
        return 0
    if msg.retain:
        print(f"edge: ignoring a retained alert on {safe(msg.topic)}", file=sys.stderr)
        return 0
    from edge.delivery.alert_sign import AlertSignatureError

    try:
        alert = parse_alert(bytes(msg.payload), args.keyring)
    except AlertSignatureError as exc:
        args.refused += 1
        print(f"edge: REFUSED an alert on {safe(msg.topic)}: {safe(exc, 200)} "
              f"({safe(exc.reason)})", file=sys.stderr, flush=True)  # fmt: skip
        return 0
    except format_error as exc:
        print(f"edge: ignoring an invalid alert from {device}: {safe(exc, 200)}",
              file=sys.stderr)  # fmt: skip
        return 0
    if alert["device_id"] != msg.topic.split("/")[1]:
        print(f"edge: ignoring an alert on {safe(msg.topic)} that claims device "
              f"{safe(alert['device_id'])}", file=sys.stderr)  # fmt: skip
        return 0
    if alert["alert_id"] in seen:
        return 1
    seen.add(alert["alert_id"])
    jpeg = base64.b64decode(alert["face_jpeg_b64"])
    crop = (
        args.crops.save(alert["alert_id"], alert["device_id"], jpeg)
        if args.crops is not None
        else None
    )
    if args.json:
        out = {k: v for k, v in alert.items() if k != "face_jpeg_b64"}
        out.update(type="alert", face_jpeg_bytes=len(jpeg),
                   crop=None if crop is None else str(crop))  # fmt: skip
        print(json.dumps(out, sort_keys=True), flush=True)
    else:
        print(alert_line(alert, crop), flush=True)
    return 0


# --- adjudicate ------------------------------------------------------------------------------


def run_adjudicate(args: argparse.Namespace) -> int:
    from edge.delivery.publish import topic
    from edge.watchlist.adjudication import sign_adjudication
    from edge.watchlist.keys import load_signing_key

    if args.device == "+":
        raise UsageError("--device must name one device")
    key = load_signing_key(args.signing_key)
    at = time.time()
    try:
        payload = sign_adjudication(key, device_id=args.device, alert_id=args.alert_id,
                                    decision=args.decision, officer=args.officer, at=at)
        target = topic(args.device, "adjudications")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    body = json.loads(json.loads(payload)["body"])  # what was signed, exactly
    adj = {k: body[k] for k in ("alert_id", "decision", "officer", "at")}
    settings = _settings(args)
    client = _client(args, settings, "edge-adjudicate")
    acked = threading.Event()
    codes: list[Any] = []

    def on_publish(_c: Any, _u: Any, _mid: int, rc: Any, _p: Any) -> None:
        codes.append(rc)
        acked.set()

    client.on_publish = on_publish
    _connect(client, settings)
    try:
        client.publish(target, payload, qos=1)
        if not acked.wait(args.timeout):
            raise BrokerError(f"no PUBACK for the adjudication within {args.timeout:g} s")
        if codes[0].is_failure:
            raise BrokerError(f"the broker refused the adjudication on {target}: {codes[0]}")
    finally:
        client.disconnect()
        client.loop_stop()
    if args.json:
        print(json.dumps({**adj, "device_id": args.device}, sort_keys=True))
    else:
        print(
            f"adjudication sent: alert_id={adj['alert_id']} decision={adj['decision']} "
            f"officer={adj['officer']} device={args.device} at={adj['at']}"
        )
    return 0
