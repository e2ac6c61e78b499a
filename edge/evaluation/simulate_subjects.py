"""The watchlist side of a simulated street: which reference images enrolment would accept,
and the subjects folder (enrol images + ``subject.toml``) for ``edge watchlist build``."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from edge.errors import UsageError
from edge.evaluation.stream import Truth, WatchlistEntry


def enrolment_checker(
    models_dir: Path | None = None, precision: str = "int8", threads: int = 2
) -> Callable[[Path], bool]:
    """``path -> bool``: would enrolment accept this reference image (one face, quality ok)?

    The same FaceEngine and QualityGate as ``edge watchlist build`` and the device.
    """
    from edge.vision.faces import FaceEngine
    from edge.vision.quality import QualityGate

    engine = FaceEngine.from_models(
        models_dir, precision="float32" if precision.startswith("float") else "int8",
        threads=threads,
    )
    gate = QualityGate()

    def ok(path: Path) -> bool:
        raw = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if raw is None:
            return False
        img = np.asarray(raw, dtype=np.uint8)
        faces = engine.analyse(img)
        return len(faces) == 1 and gate.assess(img, faces[0].detection).ok

    return ok


def _toml_str(s: str) -> str:
    out = s.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(c if c >= " " else f"\\u{ord(c):04x}" for c in out) + '"'


def subject_toml(entry: WatchlistEntry) -> str:
    fields = {
        "category": entry.category,
        "reference": f"{entry.subject_id} (simulated deployment; LFW identity {entry.identity})",
        "source": "Labeled Faces in the Wild, deep-funneled (research use only)",
        # LFW gives no capture dates; the images are 2002-2004 news photographs.
        "capture_date": "2004-01-01",
        "legal_basis": "test data for a simulated deployment; not a real watchlist",
    }
    return "".join(f"{k} = {_toml_str(v)}\n" for k, v in fields.items())


def write_subjects(
    truth: Truth, images_dir: Path, out_dir: Path, *, copy: bool = False
) -> list[Path]:
    """One folder per watchlist subject (named by subject id): its enrol images + subject.toml.

    Images are symlinked (``copy=False``) or copied. An existing subject folder
    is replaced. Returns the subject folders.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    for entry in truth.watchlist:
        folder = out_dir / entry.subject_id
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir()
        for rel in entry.enrol:
            src = (images_dir / rel).resolve()
            if not src.is_file():
                raise UsageError(f"enrol image {src} is missing")
            dst = folder / Path(rel).name
            if copy:
                shutil.copyfile(src, dst)
            else:
                dst.symlink_to(src)
        (folder / "subject.toml").write_text(subject_toml(entry), encoding="utf-8")
        made.append(folder)
    return made
