"""Enrolment: subject folders -> watchlist subjects and embeddings (safeguards 2, 4).

Enrolment runs the same :class:`edge.vision.faces.FaceEngine` and
:class:`edge.vision.quality.QualityGate` as the device, so a reference embedding is made
exactly as a live one is. Every image
gets a verdict: ``ok``, ``no face``, ``N faces``, ``too low quality (<reason>)`` or
``unreadable``. Every good image's embedding is one of the subject's references (at
most :data:`edge.recognition.match.MAX_REFERENCES` images per subject folder: more is
refused before any model runs); the device scores a subject by its best reference or by
their fusion, as the bundle says (``docs/design.md``).

Input layout::

    SUBJECTS/
      <subject-id>/            one folder per subject (the folder name is the id
        subject.toml           unless subject.toml sets ``id``)
        *.jpg|*.jpeg|*.png     reference images

``subject.toml`` and ``deployment.toml``: :mod:`edge.watchlist.enrol_files`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from edge.errors import ConfigError, UsageError
from edge.recognition.match import MAX_REFERENCES
from edge.types import Chip, Detection, ImageU8, Metric, Quality
from edge.watchlist.bundle import DeploymentSpec, EmbedderInfo, Subject, format_time
from edge.watchlist.enrol_files import (
    DEPLOYMENT_KEYS,
    SUBJECT_KEYS,
    SubjectMeta,
    load_deployment,
    load_subject,
)

__all__ = [
    "DEPLOYMENT_KEYS", "SUBJECT_KEYS", "EnrolmentReport", "ImageVerdict", "SubjectMeta",
    "demographics_warning", "describe_spec", "embedder_info", "enrol", "face_image",
    "images_in", "load_deployment", "load_subject", "load_subjects", "subject_folders",
    "thumbnail",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
THUMB_PX = 112
"""The bundle's thumbnail (kept small: the bundle goes to every van)."""
REFERENCE_PX = 320
"""The console's reference images (``<bundle>.refs``): large enough for an officer to
compare side by side at 256 px or more, never upscaled beyond the source's own pixels."""
F32 = npt.NDArray[np.float32]


class FaceResultLike(Protocol):
    @property
    def detection(self) -> Detection: ...

    @property
    def chip(self) -> Chip: ...


class FaceEngineLike(Protocol):
    def analyse(self, image_bgr: ImageU8) -> Sequence[FaceResultLike]: ...

    def embed(self, chips: list[Chip]) -> F32: ...


class QualityGateLike(Protocol):
    def assess(self, image_bgr: ImageU8, det: Detection) -> Quality: ...


# --- enrolment -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImageVerdict:
    subject_id: str
    file: str
    ok: bool
    verdict: str  # "ok", "no face", "2 faces", "too low quality (blurred)", "unreadable"


@dataclass(slots=True)
class EnrolmentReport:
    """Everything enrolment produced. ``embeddings`` holds each subject's ``references``
    rows, consecutive, in the order of ``subjects``."""

    subjects: list[Subject]
    embeddings: F32
    thumbnails: dict[str, bytes]
    verdicts: list[ImageVerdict]
    failed: list[tuple[str, str]] = field(default_factory=list)  # (subject id, why)
    reference_images: dict[str, list[bytes]] = field(default_factory=dict)
    """For the console's reference file: every usable image's face at up to
    :data:`REFERENCE_PX`, the best quality first (the bundle keeps only the thumbnail)."""

    def lines(self) -> list[str]:
        """The human report: one line per image, then one per failed subject."""
        out = [
            f"{v.subject_id}/{v.file}: {'ok' if v.ok else 'rejected: ' + v.verdict}"
            for v in self.verdicts
        ]
        out += [f"{sid}: FAILED: {why}" for sid, why in self.failed]
        return out


def subject_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory of subject folders")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise UsageError(f"{root} has no subject folders")
    return folders


def images_in(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def _read_image(path: Path) -> ImageU8 | None:
    import cv2

    data = np.fromfile(path, dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if img is None or img.ndim != 3 or img.shape[2] != 3:
        return None
    return np.ascontiguousarray(img, dtype=np.uint8)


def face_image(image_bgr: ImageU8, det: Detection, max_side: int, quality: int = 85) -> bytes:
    """A JPEG of the face (box plus a margin, a square where the frame allows), its longer
    side at most ``max_side`` pixels: downscaled if larger, never upscaled."""
    import cv2

    h, w = image_bgr.shape[:2]
    x1, y1, x2, y2 = det.box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half = max(x2 - x1, y2 - y1) * 0.75
    left, top = max(0, int(cx - half)), max(0, int(cy - half))
    right, bottom = min(w, int(cx + half)), min(h, int(cy + half))
    crop: npt.NDArray[Any] = image_bgr[top:bottom, left:right]
    if crop.size == 0:
        crop = image_bgr
    scale = max_side / max(crop.shape[:2])
    if scale < 1.0:
        crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        return b""
    return bytes(buf.tobytes())


def thumbnail(image_bgr: ImageU8, det: Detection, size: int = THUMB_PX) -> bytes:
    """The bundle's small JPEG of the face (:func:`face_image` at :data:`THUMB_PX`)."""
    return face_image(image_bgr, det, size, quality=80)


def load_subjects(root: Path) -> list[tuple[Path, SubjectMeta]]:
    """Every subject folder under ``root`` with its parsed subject.toml, checked before any
    model runs: :class:`ConfigError` lists every invalid subject.toml, repeated id and folder
    with more images than a subject may have references."""
    folders = subject_folders(root)
    metas: list[tuple[Path, SubjectMeta]] = []
    problems: list[str] = []
    for folder in folders:
        try:
            metas.append((folder, load_subject(folder)))
        except ConfigError as exc:
            problems += exc.problems
    ids = [m.subject_id for _, m in metas]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    problems += [f"subject id {i} is used by more than one folder" for i in dupes]
    for folder, _ in metas:
        n_images = len(images_in(folder))
        if n_images > MAX_REFERENCES:
            problems.append(
                f"{folder}: {n_images} images, more than the {MAX_REFERENCES} references a "
                f"subject may have (keep the best {MAX_REFERENCES})"
            )
    if problems:
        raise ConfigError(problems)
    return metas


def enrol(
    root: Path,
    engine: FaceEngineLike,
    gate: QualityGateLike,
    metric: Metric,
    progress: Callable[[int], None] | None = None,
) -> EnrolmentReport:
    """Enrol every subject folder under ``root``.

    Subjects whose subject.toml is invalid raise :class:`ConfigError` (all problems at
    once); subjects with no usable image are listed in ``failed``, not raised: the
    caller decides (``--skip-bad``). ``progress(n)`` is called after each image.
    """
    metas = load_subjects(root)
    subjects: list[Subject] = []
    rows: list[F32] = []
    thumbs: dict[str, bytes] = {}
    ref_images: dict[str, list[bytes]] = {}
    verdicts: list[ImageVerdict] = []
    failed: list[tuple[str, str]] = []
    for folder, meta in metas:
        good: list[F32] = []
        best: tuple[float, bytes] | None = None
        faces: list[tuple[float, bytes]] = []
        files = images_in(folder)
        if not files:
            failed.append((meta.subject_id, "no images"))
        for path in files:
            verdict, emb, thumb, face, score = _enrol_image(path, engine, gate)
            verdicts.append(ImageVerdict(meta.subject_id, path.name, emb is not None, verdict))
            if emb is not None:
                good.append(emb)
                if face:
                    faces.append((score, face))
                if best is None or score > best[0]:
                    best = (score, thumb)
            if progress is not None:
                progress(1)
        if not good:
            if files:
                failed.append((meta.subject_id, "no usable image"))
            continue
        rows.extend(g.copy() for g in good)
        subjects.append(
            Subject(
                subject_id=meta.subject_id,
                category=meta.category,
                reference=meta.reference,
                source=meta.source,
                capture_date=meta.capture_date,
                legal_basis=meta.legal_basis,
                images_used=len(good),
                references=len(good),
            )
        )
        if best is not None and best[1]:
            thumbs[meta.subject_id] = best[1]
        faces.sort(key=lambda f: -f[0])  # stable: equal scores keep the folder's order
        ref_images[meta.subject_id] = [f for _, f in faces]
        for g in good:
            g.fill(0.0)
    dim = rows[0].shape[0] if rows else 0
    matrix = np.stack(rows).astype(np.float32) if rows else np.zeros((0, dim), np.float32)
    for r in rows:
        r.fill(0.0)
    return EnrolmentReport(subjects, matrix, thumbs, verdicts, failed, ref_images)


def _enrol_image(
    path: Path, engine: FaceEngineLike, gate: QualityGateLike
) -> tuple[str, F32 | None, bytes, bytes, float]:
    image = _read_image(path)
    if image is None:
        return "unreadable", None, b"", b"", 0.0
    faces = engine.analyse(image)
    if not faces:
        return "no face", None, b"", b"", 0.0
    if len(faces) > 1:
        return f"{len(faces)} faces (one face per reference image)", None, b"", b"", 0.0
    face = faces[0]
    q = gate.assess(image, face.detection)
    if not q.ok:
        return f"too low quality ({q.reason or 'below the bar'})", None, b"", b"", 0.0
    emb = np.asarray(engine.embed([face.chip]), dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != 1 or not np.isfinite(emb).all():
        return "embedding failed", None, b"", b"", 0.0
    return ("ok", emb[0].copy(), thumbnail(image, face.detection),
            face_image(image, face.detection, REFERENCE_PX), float(q.score))


class _EngineInfo(Protocol):
    @property
    def embedder(self) -> Any: ...

    @property
    def family(self) -> Any: ...


def embedder_info(engine: _EngineInfo, models_dir: Path | None) -> EmbedderInfo:
    """The bundle's embedder description for a loaded FaceEngine (name, manifest sha256,
    family, metric, dim). The daemon compares the bundle's sha256 with the same value."""
    from edge.vision.embed import embedder_identity
    from edge.vision.manifest import Manifest

    name = str(engine.embedder.name)
    entry = Manifest.load(models_dir).entry(name)
    return EmbedderInfo(
        name=name,
        sha256=embedder_identity(entry.sha256, bool(getattr(engine.embedder, "flip", False))),
        family=str(engine.family.name),
        metric=engine.family.metric,
        dim=int(engine.family.dim),
    )


def demographics_warning(
    info: EmbedderInfo, models_dir: Path | None, threshold: float
) -> str | None:
    """One line when ``threshold`` lies below the lowest threshold from which the embedder
    (as enrolled: the same file and flip, ``info.sha256``) was measured free of significant
    differences in false match rate between groups: the manifest's
    ``measured.demographics``, written by ``edge eval demographics --record-manifest``
    (safeguard 16, docs/fairness.md). None when it does not, or nothing was recorded for
    this embedder as enrolled."""
    from edge.vision.manifest import Manifest

    rec = Manifest.load(models_dir).entry(info.name).measured.get("demographics")
    if not isinstance(rec, dict) or rec.get("embedder_sha256") != info.sha256:
        return None
    floor = rec.get("threshold_free_of_significant_differences")
    swept = rec.get("swept") or [None, None]
    groups = ", ".join(str(g) for g in rec.get("groups") or {})
    where = f"groups {groups} of {rec.get('labels', '?')}; docs/fairness.md"
    if floor is None:
        top = f" up to {swept[1]}" if swept[1] is not None else ""
        return (f"warning: {info.name} showed significant differences in false match rate "
                f"between groups at every threshold measured{top} ({where})")
    if not isinstance(floor, (int, float)) or threshold >= floor:
        return None
    return (f"warning: threshold {threshold:.3f} is below {floor:.3f}, the lowest threshold "
            f"from which {info.name} was measured free of significant differences in false "
            f"match rate between groups ({where})")


def describe_spec(spec: DeploymentSpec) -> str:
    return (
        f"deployment {spec.deployment_id} at {spec.location}, "
        f"{format_time(spec.start)} to {format_time(spec.end)}, threshold {spec.threshold}, "
        f"sequence {spec.sequence}"
    )
