"""What the device signatures cost (issue 13, items 4 and 9): per alert and per audit entry,
and how much larger an alert gets.

    nice .venv/bin/python benchmarks/signing_cost.py [--n 2000] [--json]

Alerts: :func:`edge.delivery.alert_sign.seal_alert` (stamp ``published_at`` and sign, what
the publisher does per alert) against :func:`~edge.delivery.alert.stamp_published_at`
alone (what it did before), and the control room's :func:`~edge.delivery.alert.parse_alert`
with and without the keys. Audit: :meth:`edge.watchlist.audit.AuditLog.append` with and
without a signing key, on a RAM file system when one is mounted at /dev/shm (so the fsync
does not hide the difference), and the signature alone. Sizes: the same alert stamped,
then sealed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge import signing
from edge.delivery.alert import encode_alert, parse_alert, stamp_published_at
from edge.delivery.alert_sign import seal_alert
from edge.watchlist.audit import SIG_CONTEXT, AuditLog
from tests.fixtures.alerts import make_record


def _us(fn: Callable[[], object], n: int) -> float:
    """Median of 5 runs of ``n`` calls, microseconds per call."""
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t) / n * 1e6)
    return sorted(runs)[2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    key = Ed25519PrivateKey.generate()
    keys = {"van-1": key.public_key()}
    queued = encode_alert(make_record("van-1"))
    at = time.time()
    stamped = stamp_published_at(queued, at)
    sealed = seal_alert(queued, at, key)
    n = args.n
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() else None
    result: dict[str, object] = {
        "alert_stamp_us": _us(lambda: stamp_published_at(queued, at), n),
        "alert_seal_us": _us(lambda: seal_alert(queued, at, key), n),
        "alert_parse_us": _us(lambda: parse_alert(stamped), n),
        "alert_parse_verify_us": _us(lambda: parse_alert(sealed, keys), n),
        "alert_bytes_stamped": len(stamped),
        "alert_bytes_sealed": len(sealed),
        "alert_bytes_added": len(sealed) - len(stamped),
        "sign_hash_us": _us(lambda: signing.sign(key, SIG_CONTEXT, b"0" * 64), n),
        "audit_fs": str(base or tempfile.gettempdir()),
    }
    with tempfile.TemporaryDirectory(dir=base) as d:
        plain = AuditLog(Path(d) / "plain.log")
        signed = AuditLog(Path(d) / "signed.log", signing_key=key)
        result["audit_append_us"] = _us(lambda: plain.append("tick", count=1), n // 4)
        result["audit_append_signed_us"] = _us(lambda: signed.append("tick", count=1), n // 4)
        line = (Path(d) / "signed.log").read_text().splitlines()[-1]
        plain_line = (Path(d) / "plain.log").read_text().splitlines()[-1]
        result["audit_line_bytes_added"] = len(line) - len(plain_line)
    for k, v in result.items():
        if isinstance(v, float):
            result[k] = round(v, 1)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for k, v in result.items():
            print(f"{k:28s} {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
