"""Per-call latency of the committed models with ai-edge-litert, and of dlib-bin's ResNet.

    cd /work/main && nice -n 10 .venv/bin/python -m models.build.bench_models [--write]

Inputs are fixed pseudo-random tensors (latency does not depend on content for
these networks). Each figure is the median of ``--runs`` calls after warm-up, in
milliseconds. ``--write`` stores the figures in models/manifest.json under each
model's ``measured.speed_ms`` (the sha256 of the model files is unchanged).
The machine is shared: run it on an otherwise idle machine for stable numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from models.build import common

COMMAND = "nice -n 10 .venv/bin/python -m models.build.bench_models --write"


def _median_ms(fn: Callable[[], object], runs: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000.0)
    return round(statistics.median(times), 3)


def bench_tflite(name: str, threads: int, runs: int) -> float:
    m = common.load_manifest()["models"][name]
    it = common.interpreter(common.MODELS_DIR / m["file"], threads)
    d = it.get_input_details()[0]
    rng = np.random.default_rng(0)
    if d["dtype"] == np.uint8:
        x = rng.integers(0, 256, size=d["shape"], dtype=np.uint8)
    else:
        x = rng.uniform(-1, 1, size=d["shape"]).astype(d["dtype"])
    it.set_tensor(d["index"], x)

    def call() -> None:
        it.set_tensor(d["index"], x)
        it.invoke()

    return _median_ms(call, runs)


def bench_dlib(runs: int) -> float:
    from models.build import chips

    tools = chips.dlib_tools()
    chip = np.random.default_rng(0).integers(0, 256, size=(150, 150, 3), dtype=np.uint8)
    return _median_ms(lambda: tools.recogniser.compute_face_descriptor(chip), runs, warmup=3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="model latency benchmark")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--write", action="store_true", help="store figures in the manifest")
    args = ap.parse_args(argv)
    manifest = common.load_manifest()
    results: dict[str, dict[str, float]] = {}
    for name in manifest["models"]:
        results[name] = {}
        for threads in (1, 2):
            runs = args.runs if "dlib" not in name else max(10, args.runs // 2)
            results[name][f"threads_{threads}"] = bench_tflite(name, threads, runs)
    dlib_ms = bench_dlib(max(10, args.runs // 3))
    env = {"machine": platform.machine(), "cpus": os.cpu_count() or 0,
           "python": platform.python_version(), "command": COMMAND,
           "date": time.strftime("%Y-%m-%d")}
    out: dict[str, Any] = {"ai_edge_litert_ms": results,
                           "dlib_bin_compute_face_descriptor_ms": dlib_ms, "env": env}
    print(json.dumps(out, indent=2))
    for name in ("dlib_resnet_v1_float32", "dlib_resnet_v1_int8"):
        if name in results:
            best = min(results[name].values())
            print(f"{name}: {best:.1f} ms; dlib-bin {dlib_ms:.1f} ms -> {dlib_ms / best:.1f}x")
    if args.write:
        for name, r in results.items():
            entry = manifest["models"][name]
            entry.setdefault("measured", {})["speed_ms"] = {
                "ai_edge_litert": r, "median_of_runs": args.runs, **env}
            if entry["role"] == "embedder":
                entry["measured"]["speed_ms"]["dlib_bin_forward_ms"] = dlib_ms
        common.write_manifest(manifest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
