"""Counters for ``/metrics`` (Prometheus text exposition format 0.0.4).

Thread-safe; the ingest thread counts, the route renders. Ingest latency is the time
from the device's ``published_at`` (its first hand-over to MQTT) to the alert being in
the store and announced, as a histogram.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Final

LATENCY_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self._sum = 0.0
        self._count = 0

    def inc(self, name: str, n: float = 1.0, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self.counters[key] = self.counters.get(key, 0.0) + n

    def get(self, name: str, **labels: str) -> float:
        with self._lock:
            return self.counters.get((name, tuple(sorted(labels.items()))), 0.0)

    def observe_latency(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        with self._lock:
            for i, edge in enumerate(LATENCY_BUCKETS):
                if seconds <= edge:
                    self._buckets[i] += 1
                    break
            else:
                self._buckets[-1] += 1
            self._sum += seconds
            self._count += 1

    def render(self, gauges: Mapping[str, float], outcomes: Mapping[str, int]) -> str:
        lines = [
            "# HELP console_alerts_received_total Distinct alerts stored.",
            "# TYPE console_alerts_received_total counter",
        ]
        with self._lock:
            counters = dict(self.counters)
            buckets, total, count = list(self._buckets), self._sum, self._count
        names = sorted({n for n, _ in counters} | {"console_alerts_received_total"})
        for name in names:
            if name != "console_alerts_received_total":
                lines.append(f"# TYPE {name} counter")
            series = [(lab, v) for (n, lab), v in counters.items() if n == name] or [((), 0.0)]
            for lab, v in sorted(series):
                tag = ",".join(f'{k}="{_esc(x)}"' for k, x in lab)
                lines.append(f"{name}{{{tag}}} {v:g}" if tag else f"{name} {v:g}")
        lines += ["# HELP console_adjudications Alerts by outcome: the last decision the van "
                  "recorded, else the last sent (each alert once).",
                  "# TYPE console_adjudications gauge"]  # fmt: skip
        for decision in ("confirmed", "rejected", "not_stopped"):
            lines.append(f'console_adjudications{{decision="{decision}"}} '
                         f"{outcomes.get(decision, 0)}")  # fmt: skip
        for name, value in sorted(gauges.items()):
            lines += [f"# TYPE {name} gauge", f"{name} {value:g}"]
        lines += ["# HELP console_ingest_latency_seconds Device publish to stored and announced.",
                  "# TYPE console_ingest_latency_seconds histogram"]  # fmt: skip
        running = 0
        for edge, n in zip(LATENCY_BUCKETS, buckets, strict=False):
            running += n
            lines.append(f'console_ingest_latency_seconds_bucket{{le="{edge:g}"}} {running}')
        lines.append(f'console_ingest_latency_seconds_bucket{{le="+Inf"}} {count}')
        lines += [f"console_ingest_latency_seconds_sum {total:g}",
                  f"console_ingest_latency_seconds_count {count}"]  # fmt: skip
        return "\n".join(lines) + "\n"
