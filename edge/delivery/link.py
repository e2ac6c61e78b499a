"""The MQTT link: topics, broker settings and a paho client with mutual TLS.

Split from :mod:`edge.delivery.publish` (which re-exports these names): what a
connection is made of, apart from what the publisher does with it.
"""

from __future__ import annotations

import ipaddress
import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.delivery.alert import DEVICE_ID_RE
from edge.errors import BrokerError

OUT_KINDS: Final = ("status", "alerts", "stats", "deployment", "audit")
IN_KINDS: Final = ("adjudications", "commands")
MAX_PACKET_BYTES: Final = 128 * 1024
"""The device's MQTT 5 ``MaximumPacketSize``: the broker must not send it a larger packet
(it drops it instead); the largest inbound message (a signed command) is 64 KiB."""


def topic(device_id: str, kind: str, prefix: str = "lfr") -> str:
    """``<prefix>/<device_id>/<kind>``; ValueError for an unknown kind or unsafe id.

    ``device_id`` may be ``+`` (any device) for subscriptions.
    """
    if kind not in OUT_KINDS + IN_KINDS:
        raise ValueError(f"unknown topic kind {kind!r}")
    if device_id != "+" and not DEVICE_ID_RE.match(device_id):
        raise ValueError(f"device id {device_id!r} is not a valid topic level")
    if not prefix or any(c in prefix for c in "+#") or prefix[0] == "/" or prefix[-1] == "/":
        raise ValueError(f"topic prefix {prefix!r} is not valid")
    return f"{prefix}/{device_id}/{kind}"


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """Where and how to reach the broker.

    Mutual TLS needs ``ca``, ``cert`` and ``key``. Leaving all three None means
    plain MQTT, which is refused unless ``host`` is a loopback address (a local
    test broker); the device's only peer is the control room over mutual TLS.
    """

    host: str
    port: int
    ca: Path | None
    cert: Path | None
    key: Path | None
    keepalive: int = 30

    @property
    def tls(self) -> bool:
        return not (self.ca is None and self.cert is None and self.key is None)


def tls_context(ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """A client TLS context: verify the broker against ``ca`` (and its name), TLS 1.2+,
    present ``cert``/``key``. BrokerError (one line) if a file is missing or unusable."""
    for what, path in (("CA certificate", ca), ("client certificate", cert), ("key", key)):
        if path is None:
            raise BrokerError(f"mutual TLS needs the MQTT {what}")
        if not Path(path).is_file():
            raise BrokerError(f"MQTT {what} {path} does not exist")
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as exc:
        raise BrokerError(f"cannot load the MQTT TLS files ({exc})") from None
    return ctx


def new_client(client_id: str, settings: BrokerSettings) -> mqtt.Client:
    """A paho MQTT 5 client (VERSION2 callbacks) with mutual TLS set, not connected."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    # A second net under our own callbacks (which catch everything): an exception in a
    # callback is logged by paho and never ends its network thread.
    client.suppress_exceptions = True
    if settings.tls:
        client.tls_set_context(tls_context(settings.ca, settings.cert, settings.key))
    else:
        try:
            loopback = ipaddress.ip_address(settings.host).is_loopback
        except ValueError:
            loopback = settings.host == "localhost"
        if not loopback:
            raise BrokerError(
                f"plain MQTT without TLS is allowed only to a loopback broker, not {settings.host}"
            )
    return client


def json_bytes(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8")
