"""Flip-averaged embeddings: the chip and its mirror image, fused; a different identity."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge.vision.embed import embedder_identity
from edge.vision.faces import FaceEngine
from edge.vision.fusion import fuse

ROOT = Path(__file__).resolve().parents[1]
FRAME = ROOT / "demo" / "subjects" / "DEMO-0001" / "frame28.jpg"


def test_flip_is_the_fusion_of_the_chip_and_its_mirror(models_dir: Path) -> None:
    plain = FaceEngine.from_models(models_dir, threads=1, flip=False)
    flipped = FaceEngine.from_models(models_dir, threads=1, flip=True)
    (face,) = plain.analyse(cv2.imread(str(FRAME)))
    chip = face.chip
    a = plain.embed([chip])[0]
    mirror = plain.embedder.embed([np.ascontiguousarray(chip.rgb[:, ::-1])])[0]
    f = flipped.embed([chip, chip])
    assert np.allclose(f[0], fuse(np.stack([a, mirror]), plain.family.metric), atol=1e-5)
    assert np.allclose(f[0], f[1])
    assert not np.allclose(f[0], a, atol=1e-3)
    assert plain.score(f[0], a) > 0.8  # still the same face


def test_flip_changes_what_a_bundle_must_match(models_dir: Path) -> None:
    plain = FaceEngine.from_models(models_dir, threads=1, flip=False)
    flipped = FaceEngine.from_models(models_dir, threads=1, flip=True)
    sha = plain.model_info["embedder_sha256"]
    assert flipped.model_info["embedder_sha256"] == embedder_identity(sha, True) != sha
    assert plain.model_info["flip"] == "off" and flipped.model_info["flip"] == "on"
    assert embedder_identity(sha, False) == sha
