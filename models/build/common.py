"""Helpers shared by the build, the benchmarks and the tests (numpy + ai-edge-litert only)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

MODELS_DIR = Path(__file__).resolve().parents[1]
MANIFEST = MODELS_DIR / "manifest.json"

FAMILIES: dict[str, Any] = {
    "dlib150": {
        "input_size": 150,
        "colour": "RGB",
        "normalisation": {"mean": [122.782, 117.001, 104.298], "std": [256, 256, 256]},
        "template": "dlib5",
        "padding": 0.25,
        "embedding_size": 128,
        "metric": "euclidean",
        "threshold": 0.6,
        # flip-averaged embeddings: LFW 1:N TPIR at FPIR 0.001 0.316 vs 0.262 (models/README.md)
        "flip": True,
    },
    # ArcFace's five-point 112x112 alignment, cosine: SFace (models/build/sface.py). The
    # normalisation is inside the model ((x - 127.5) / 128); it is recorded for importers.
    # threshold: FPIR 0.001 against LFW's 860 subjects (0.559); flip-averaged: LFW 1:N
    # TPIR at FPIR 0.001 0.911 vs 0.889, and one more of 82 found on the degraded street
    # (models/README.md).
    "arcface112": {
        "input_size": 112,
        "colour": "RGB",
        "normalisation": {"mean": [127.5, 127.5, 127.5], "std": [128, 128, 128]},
        "template": "arcface5",
        "padding": 0.0,
        "embedding_size": 128,
        "metric": "cosine",
        "threshold": 0.56,
        "flip": True,
    },
    # MobileFaceNet (sirius-ai, MS1M; models/build/mobilefacenet.py): the same five-point
    # alignment and normalisation as arcface112 (inside the model), 192-D, cosine.
    # threshold: FPIR 0.001 against LFW's 860 subjects, int8 and float32, flip: 0.675
    # (models/README.md).
    "arcface112_mfn": {
        "input_size": 112,
        "colour": "RGB",
        "normalisation": {"mean": [127.5, 127.5, 127.5], "std": [128, 128, 128]},
        "template": "arcface5",
        "padding": 0.0,
        "embedding_size": 192,
        "metric": "cosine",
        "threshold": 0.67,
        "flip": True,
    },
}


def interpreter(path: Path | str, threads: int = 1) -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - fallback runtime
        from tflite_runtime.interpreter import Interpreter
    it = Interpreter(model_path=str(path), num_threads=threads)
    it.allocate_tensors()
    return it


def tensor_spec(d: dict[str, Any]) -> dict[str, Any]:
    scale, zp = d["quantization"]
    spec: dict[str, Any] = {
        "name": d["name"],
        "shape": [int(v) for v in d["shape"]],
        "dtype": np.dtype(d["dtype"]).name,
    }
    if scale != 0.0:
        spec["quantization"] = [float(scale), int(zp)]
    return spec


def io_specs(path: Path | str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    it = interpreter(path)
    return (
        [tensor_spec(d) for d in it.get_input_details()],
        [tensor_spec(d) for d in it.get_output_details()],
    )


class Embedder:
    """Minimal runner for an embedder .tflite: uint8 RGB chip -> float32 (128,)."""

    def __init__(self, path: Path | str, threads: int = 1) -> None:
        self.it = interpreter(path, threads)
        self.inp = self.it.get_input_details()[0]
        self.out = self.it.get_output_details()[0]
        if self.inp["dtype"] != np.uint8:
            raise ValueError(f"{path}: input dtype {self.inp['dtype']} (expected uint8)")
        scale, zp = self.inp["quantization"]
        if scale not in (0.0, 1.0) or zp != 0:
            raise ValueError(f"{path}: input quantisation {scale, zp} (expected raw pixels)")

    def __call__(self, chip_rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        self.it.set_tensor(self.inp["index"], chip_rgb[None])
        self.it.invoke()
        return np.array(self.it.get_tensor(self.out["index"])[0], dtype=np.float32)

    def many(self, chips: list[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float32]:
        return np.stack([self(c) for c in chips]) if chips else np.zeros((0, 128), np.float32)


def fidelity(emb: npt.NDArray[np.float32], ref: npt.NDArray[np.float32]) -> dict[str, float]:
    """Agreement of embeddings with dlib's: cosine and Euclidean drift, max abs diff."""
    e = emb.astype(np.float64)
    r = ref.astype(np.float64)
    cos = (e * r).sum(1) / (np.linalg.norm(e, axis=1) * np.linalg.norm(r, axis=1))
    eu = np.linalg.norm(e - r, axis=1)
    return {
        "n": len(e),
        "cosine_min": round(float(cos.min()), 6),
        "cosine_mean": round(float(cos.mean()), 6),
        "euclidean_drift_mean": round(float(eu.mean()), 6),
        "euclidean_drift_max": round(float(eu.max()), 6),
        "max_abs_diff": float(f"{np.abs(e - r).max():.3g}"),
    }


def load_manifest() -> dict[str, Any]:
    if MANIFEST.exists():
        m: dict[str, Any] = json.loads(MANIFEST.read_text())
        return m
    return {"schema": 1, "families": FAMILIES, "models": {}}


def dumps(m: dict[str, Any]) -> str:
    """Indented JSON with short lists of numbers kept on one line."""
    text = json.dumps(m, indent=2)
    return re.sub(
        r"\[\s*(-?[0-9.e+-]+(?:,\s*-?[0-9.e+-]+)*)\s*\]",
        lambda mo: "[" + ", ".join(v.strip() for v in mo.group(1).split(",")) + "]",
        text,
    )


def write_manifest(m: dict[str, Any]) -> None:
    text = dumps(m)
    if json.loads(text) != m:
        raise AssertionError("manifest formatting changed its content")
    MANIFEST.write_text(text + "\n")
