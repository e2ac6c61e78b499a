"""Quantising an imported embedder and measuring its drift on real faces.

Chips of real faces (calibration), the int8 variants (dynamic range, full integer)
and the float-vs-int8 drift report that ``edge models import --quantise`` records in
the manifest. Build-time only (TensorFlow); :mod:`edge.vision.model_import` calls it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from edge.errors import ModelError, UsageError
from edge.vision.families import EmbedderFamily
from edge.vision.manifest import Manifest

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
CALIBRATION_CHIPS = 200
FULL_INT8_MIN_COSINE = 0.99  # below this mean drift, "auto" tries dynamic-range int8 too
DRIFT_CHIPS = 200
BUILD_EXTRA_MISSING = (
    "int8 quantisation needs the build extra (TensorFlow): pip install 'lfr-edge[build]' "
    "on a build machine and run the import there; nothing was imported"
)





if TYPE_CHECKING:
    from edge.vision.model_facts import ModelFacts


# --- chips of real faces, quantisation, drift -------------------------------------------------


def _images(folder: Path) -> list[Path]:
    """Image files under ``folder``, ordered by the sha256 of their relative path (no RNG)."""
    files = [p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]

    def rank(p: Path) -> str:
        return hashlib.sha256(p.relative_to(folder).as_posix().encode()).hexdigest()

    return sorted(files, key=rank)


def calibration_chips(
    manifest: Manifest,
    family: EmbedderFamily,
    folder: Path,
    threads: int = 2,
    n_calib: int = CALIBRATION_CHIPS,
    n_eval: int = DRIFT_CHIPS,
) -> tuple[list[U8], list[U8]]:
    """Aligned chips (the device's detector, mesh landmarks and aligner), split in two
    disjoint sets by rank: even -> calibration, odd -> drift check. Kept in memory only."""
    import cv2

    from edge.vision.align import Aligner
    from edge.vision.detect import Detector
    from edge.vision.landmarks import MeshLandmarker

    det = Detector(manifest.verify(manifest.find("detector")), threads=threads)
    lm = MeshLandmarker(manifest.verify(manifest.find("landmarks")), threads=threads)
    aligner = Aligner(family)
    calib: list[U8] = []
    held: list[U8] = []
    for path in _images(folder):
        if len(calib) >= n_calib and len(held) >= n_eval:
            break
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            continue
        image = np.asarray(img, dtype=np.uint8)
        dets = det.detect(image)
        if not dets:
            continue
        d = max(dets, key=lambda x: x.width * x.height)
        chip = aligner.align(image, lm.points(image, d, family.template)).rgb
        target = calib if (len(calib) + len(held)) % 2 == 0 else held
        if target is calib and len(calib) >= n_calib:
            target = held
        elif target is held and len(held) >= n_eval:
            target = calib
        target.append(chip)
    if len(calib) < 20 or len(held) < 20:
        raise UsageError(
            f"{folder}: found faces in only {len(calib) + len(held)} images; "
            "need at least 40 for calibration and the drift check"
        )
    return calib, held


def _batches(x: F32, batch: int) -> Iterator[tuple[F32, int]]:
    """Fixed-size batches of ``x`` (the last padded by repeating its first row)."""
    for i in range(0, len(x), batch):
        part = x[i : i + batch]
        n = len(part)
        if n < batch:
            part = np.concatenate([part, np.repeat(part[:1], batch - n, axis=0)])
        yield np.ascontiguousarray(part, dtype=np.float32), n


def choose_int8(
    model_bytes: bytes, family: EmbedderFamily, facts: ModelFacts, calib: Sequence[U8],
    held_out: Sequence[U8], threads: int = 2, mode: str = "auto",
) -> tuple[bytes, dict[str, Any], dict[str, Any]]:
    """The int8 variant to keep, how it was made, and its drift from the float model.

    ``full``: full-integer (int8 activations too). ``dynamic``: int8 weights with
    activations quantised at run time (needs the rebuilt graph). ``auto``: full-integer,
    unless its mean cosine drift is below FULL_INT8_MIN_COSINE and dynamic-range drifts
    less; both candidates' figures are recorded."""
    candidates: dict[str, dict[str, Any]] = {}
    chosen: tuple[bytes, dict[str, Any], dict[str, Any]] | None = None
    if mode in ("auto", "full"):
        q, method = quantise_int8(model_bytes, family, facts, calib, threads)
        drift = drift_report(model_bytes, q, family, held_out, threads)
        method["kind"] = "full-integer"
        candidates["full_integer"] = _summary(drift)
        chosen = (q, method, drift)
        if mode == "full" or drift["cosine_mean"] >= FULL_INT8_MIN_COSINE:
            method["candidates"] = candidates
            return chosen
    from edge.vision import tflite_graph

    try:
        qd, stats = tflite_graph.quantise_dynamic(model_bytes)
    except NotImplementedError as exc:
        if chosen is None:
            raise ModelError(f"dynamic-range int8 needs a rebuildable graph: {exc}") from None
        chosen[1]["candidates"] = candidates
        return chosen
    drift_d = drift_report(model_bytes, qd, family, held_out, threads)
    candidates["dynamic_range"] = _summary(drift_d)
    if chosen is None or drift_d["cosine_mean"] > chosen[2]["cosine_mean"]:
        method_d: dict[str, Any] = {
            "method": "rebuilt TF graph + TFLiteConverter", "kind": "dynamic-range", **stats,
            "activations": "float32, quantised per call (dynamic range)",
        }
        chosen = (qd, method_d, drift_d)
    chosen[1]["candidates"] = candidates
    return chosen


def _summary(drift: dict[str, Any]) -> dict[str, Any]:
    keys = ("cosine_mean", "cosine_min", "cosine_p01", "ms_per_face_int8")
    return {k: drift[k] for k in keys}


def quantise_int8(
    model_bytes: bytes, family: EmbedderFamily, facts: ModelFacts, chips: Sequence[U8],
    threads: int = 2,
) -> tuple[bytes, dict[str, Any]]:
    """Full-integer int8 of a float .tflite (needs TensorFlow); returns (bytes, method).

    First choice: rebuild the graph in TF from the flatbuffer (:mod:`edge.vision.tflite_graph`,
    PReLU fused, batch 1), check the rebuilt float graph against the file, and convert
    it with ``TFLiteConverter``. Fallback for other operators: TFLite's calibrator
    directly on the flatbuffer (keeps the file's ops and batch)."""
    from edge.vision.model_facts import tensorflow_available

    if not tensorflow_available():
        raise ModelError(BUILD_EXTRA_MISSING)
    if facts.input_dtype != "float32":
        raise ModelError("int8 quantisation takes a model with a float32 input")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tf: Any = importlib.import_module("tensorflow")
    x = family.normalise(np.stack(chips))

    from edge.vision import tflite_graph

    try:
        rebuilt = tflite_graph.rebuild_float(model_bytes)
        check = x[: min(8, len(x))]
        cos = _cosines(_embed_bytes(model_bytes, check, threads),
                       _embed_bytes(rebuilt, check, threads))
        if float(cos.min()) < 0.99999:
            raise NotImplementedError(f"rebuilt graph differs (cosine {float(cos.min()):.6f})")

        def rep1() -> Iterator[list[F32]]:
            for i in range(len(x)):
                yield [x[i : i + 1]]

        q, stats = tflite_graph.quantise_rebuilt(model_bytes, rep1)
        return q, {"method": "rebuilt TF graph + TFLiteConverter", "rebuilt_float_cosine_min":
                   round(float(cos.min()), 7), **stats}
    except NotImplementedError as exc:
        log.info("graph rebuild not possible (%s); using the flatbuffer calibrator", exc)
        why = str(exc)

    calibrator: Any = importlib.import_module("tensorflow.lite.python.optimize.calibrator")

    def rep() -> Iterator[list[F32]]:
        for batch, _ in _batches(x, facts.batch):
            yield [batch]

    try:
        cal = calibrator.Calibrator(model_bytes)
        out: bytes = cal.calibrate_and_quantize(rep, tf.float32, tf.float32, False, tf.int8)
    except (ValueError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"TFLite could not quantise this model: {first}") from None
    return out, {"method": "TFLite calibrator on the flatbuffer", "rebuild_not_possible": why}


def _cosines(a: F32, b: F32) -> npt.NDArray[np.float64]:
    an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    out: npt.NDArray[np.float64] = np.sum(an * bn, axis=1).astype(np.float64)
    return out


def _embed_bytes(model_bytes: bytes, x: F32, threads: int) -> F32:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.tflite"
        path.write_bytes(model_bytes)
        return _embed_all(path, x, threads)


def _embed_all(model_path: Path, x: F32, threads: int) -> F32:
    from edge.vision.runtime import TFLiteModel

    model = TFLiteModel(model_path, threads)
    batch = model.input.shape[0]
    rows: list[F32] = []
    for part, n in _batches(x, batch):
        rows.append(model.run(part)[0].reshape(batch, -1)[:n])
    return np.concatenate(rows).astype(np.float32)


def drift_report(
    float_bytes: bytes, int8_bytes: bytes, family: EmbedderFamily, chips: Sequence[U8],
    threads: int = 2,
) -> dict[str, Any]:
    """Cosine between the float and int8 embeddings of the same chips, and per-face time."""
    x = family.normalise(np.stack(chips))
    with tempfile.TemporaryDirectory() as tmp:
        fpath, qpath = Path(tmp) / "f.tflite", Path(tmp) / "q.tflite"
        fpath.write_bytes(float_bytes)
        qpath.write_bytes(int8_bytes)
        t0 = time.perf_counter()
        a = _embed_all(fpath, x, threads)
        t1 = time.perf_counter()
        b = _embed_all(qpath, x, threads)
        t2 = time.perf_counter()
    cos = _cosines(a, b)
    return {
        "n": len(chips),
        "cosine_mean": round(float(cos.mean()), 6),
        "cosine_min": round(float(cos.min()), 6),
        "cosine_p01": round(float(np.percentile(cos, 1)), 6),
        "ms_per_face_float32": round(1000 * (t1 - t0) / len(chips), 3),
        "ms_per_face_int8": round(1000 * (t2 - t1) / len(chips), 3),
        "evaluation": (
            "cosine of float32 vs int8 embeddings of the same aligned chips (device detector, "
            "mesh landmarks, family alignment), disjoint from the calibration chips"
        ),
    }


