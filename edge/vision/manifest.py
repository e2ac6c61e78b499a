"""``models/manifest.json``: which model files exist, their checksums and input specs.

The models directory is, in order: an explicit argument, ``$EDGE_MODELS_DIR``,
the repository's ``models/`` next to the ``edge`` package (a development
checkout), or ``/usr/share/lfr-edge/models`` (an installed device). See
docs/design.md for the schema.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.errors import ModelError

MANIFEST = "manifest.json"
INSTALLED_MODELS_DIR = Path("/usr/share/lfr-edge/models")
ENV_MODELS_DIR = "EDGE_MODELS_DIR"


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, protected_namespaces=())


class Normalisation(_Loose):
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class FamilySpec(_Loose):
    input_size: int = Field(gt=0)
    colour: Literal["RGB", "BGR"] = "RGB"
    normalisation: Normalisation
    template: Literal["dlib5", "arcface5"]
    padding: float = 0.0
    embedding_size: int = Field(gt=0)
    metric: Literal["euclidean", "cosine"]
    threshold: float
    flip: bool = False


class SourceSpec(_Loose):
    package: str = ""
    version: str = ""
    file: str = ""
    sha256: str = ""


class TensorIO(_Loose):
    name: str = ""
    shape: list[int]
    dtype: Literal["uint8", "int8", "float32"]
    quantization: tuple[float, int] | None = None
    normalisation_in_model: bool = False


class ModelEntry(_Loose):
    file: str
    role: Literal["detector", "landmarks", "embedder"]
    family: str | None = None
    precision: Literal["float32", "int8", "float16"] = "float32"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)
    source: SourceSpec | None = None
    licence: str = ""
    input: TensorIO | None = None
    output: TensorIO | list[TensorIO] | None = None
    measured: dict[str, Any] = Field(default_factory=dict)
    detector_kind: Literal["blazeface", "retinaface"] | None = None


class ManifestDoc(_Loose):
    schema_: int = Field(alias="schema")
    families: dict[str, FamilySpec] = Field(default_factory=dict)
    models: dict[str, ModelEntry]


def default_models_dir() -> Path:
    """Where models are when nobody says: $EDGE_MODELS_DIR, the checkout, the install."""
    env = os.environ.get(ENV_MODELS_DIR)
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2] / "models"
    if (repo / MANIFEST).is_file():
        return repo
    return INSTALLED_MODELS_DIR


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Manifest:
    """A loaded manifest bound to its directory."""

    def __init__(self, directory: Path, doc: ManifestDoc) -> None:
        self.directory = directory
        self.doc = doc
        self._verified: set[str] = set()

    @classmethod
    def load(cls, models_dir: str | Path | None = None) -> Manifest:
        directory = Path(models_dir) if models_dir is not None else default_models_dir()
        path = directory / MANIFEST
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelError(f"model manifest {path} is missing") from None
        except OSError as exc:
            raise ModelError(f"model manifest {path} cannot be read: {exc.strerror}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"model manifest {path} is not valid JSON: {exc}") from None
        try:
            doc = ManifestDoc.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ModelError(f"model manifest {path}: {where}: {err['msg']}") from None
        for name, entry in doc.models.items():
            if entry.family is not None and entry.family not in doc.families:
                raise ModelError(
                    f"model manifest {path}: model {name} names unknown family {entry.family}"
                )
        return cls(directory, doc)

    @property
    def names(self) -> list[str]:
        return list(self.doc.models)

    def entry(self, name: str) -> ModelEntry:
        try:
            return self.doc.models[name]
        except KeyError:
            known = ", ".join(sorted(self.doc.models)) or "none"
            raise ModelError(f"no model named {name!r} in the manifest (known: {known})") from None

    def family(self, name: str) -> FamilySpec:
        try:
            return self.doc.families[name]
        except KeyError:
            raise ModelError(f"no embedder family named {name!r} in the manifest") from None

    def path(self, name: str) -> Path:
        return self.directory / self.entry(name).file

    def verify(self, name: str) -> Path:
        """Check the file's size and sha256 against the manifest; return its path."""
        entry = self.entry(name)
        path = self.directory / entry.file
        if name in self._verified:
            return path
        if not path.is_file():
            raise ModelError(f"model file {path} is missing")
        size = path.stat().st_size
        if entry.bytes and size != entry.bytes:
            raise ModelError(f"model file {path} has {size} bytes, the manifest says {entry.bytes}")
        digest = sha256_file(path)
        if digest != entry.sha256:
            raise ModelError(f"model file {path} does not match its sha256 in the manifest")
        self._verified.add(name)
        return path

    def find(self, role: str, family: str | None = None, precision: str | None = None) -> str:
        """The first model name with this role (and family/precision when given)."""
        for name, e in self.doc.models.items():
            if e.role != role:
                continue
            if family is not None and e.family != family and not name.startswith(family):
                continue
            if precision is not None and e.precision != precision:
                continue
            return name
        want = " ".join(x for x in (family, precision, role) if x)
        raise ModelError(f"no {want} model in the manifest")


def _dumps(raw: dict[str, Any]) -> str:
    """Indented JSON with short lists of numbers on one line, as the build writes it."""
    text = json.dumps(raw, indent=2)
    return re.sub(
        r"\[\s*(-?[0-9.e+-]+(?:,\s*-?[0-9.e+-]+)*)\s*\]",
        lambda mo: "[" + ", ".join(v.strip() for v in mo.group(1).split(",")) + "]",
        text,
    )


def record_measurement(
    models_dir: str | Path | None, name: str, key: str, value: dict[str, Any]
) -> Path:
    """Set ``models[name].measured[key]`` in the manifest (replaced atomically, everything
    else kept as it is). Returns the manifest's path."""
    directory = Path(models_dir) if models_dir is not None else default_models_dir()
    Manifest.load(directory).entry(name)  # a valid manifest that has this model
    path = directory / MANIFEST
    raw = json.loads(path.read_text(encoding="utf-8"))
    raw["models"][name].setdefault("measured", {})[key] = value
    tmp = directory / f".{MANIFEST}.part"
    try:
        tmp.write_text(_dumps(raw) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ModelError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path
