"""Embedders: aligned chips -> (N, D) float32 embeddings, driven by the manifest.

The manifest entry's ``input`` says what the model expects:

* ``normalisation_in_model: true`` (the dlib models): the chip's RGB pixel
  values go in as they are — passed through for a uint8 input, quantised with
  the input's scale/zero point for int8, or cast for float32;
* otherwise the family's normalisation ``(pixel - mean) / std`` is applied
  here first, then quantised if the input is quantised.

A model may have a fixed batch ``B`` (MobileFaceNet's file takes exactly two
chips); ``embed`` runs the chips ``B`` at a time and pads the last group by
repeating a chip (batch rows are independent: the padding never changes a
result, tested in tests/test_mobilefacenet.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge.errors import ModelError
from edge.types import Chip
from edge.vision.families import BUILTIN, EmbedderFamily
from edge.vision.fusion import fuse
from edge.vision.manifest import Manifest, ModelEntry
from edge.vision.runtime import TFLiteModel, shared_model

F32 = npt.NDArray[np.float32]


def embedder_identity(file_sha256: str, flip: bool) -> str:
    """What a bundle and the device compare: the model file's sha256, or, for
    flip-averaged embeddings (another function of the same file), sha256 of it + "+flip"."""
    if not flip:
        return file_sha256
    return hashlib.sha256(f"{file_sha256}+flip".encode()).hexdigest()


class Embedder:
    """One embedder model of one family."""

    def __init__(
        self,
        model_path: str | Path,
        family: EmbedderFamily,
        *,
        normalisation_in_model: bool = True,
        threads: int = 2,
        name: str = "",
        flip: bool = False,
    ) -> None:
        self.family = family
        # Flip-averaging: each chip and its mirror image are embedded and fused
        # (edge.vision.fusion, as a track's frames are); enrolment and the device must
        # agree, so the bundle records it.
        self.flip = flip
        self.name = name or Path(model_path).stem
        self.model: TFLiteModel = shared_model(model_path, threads)
        self.normalisation_in_model = normalisation_in_model
        s = family.input_size
        shape = self.model.input.shape
        if len(shape) != 4 or shape[0] < 1 or shape[1:] != (s, s, 3):
            raise ModelError(
                f"model file {model_path} takes {shape}, "
                f"family {family.name} needs (batch, {s}, {s}, 3)"
            )
        self.batch = shape[0]
        out = self.model.outputs[0]
        if out.shape[0] != self.batch or int(np.prod(out.shape[1:])) != family.dim:
            raise ModelError(
                f"model file {model_path} outputs {out.shape}, family {family.name} "
                f"has {family.dim} dimensions"
            )

    @classmethod
    def from_manifest(
        cls, manifest: Manifest, name: str, threads: int = 2, *, flip: bool | None = None
    ) -> Embedder:
        """``flip`` None: the family's default."""
        entry: ModelEntry = manifest.entry(name)
        if entry.role != "embedder":
            raise ModelError(f"model {name} is a {entry.role}, not an embedder")
        fam_name = entry.family or ""
        if fam_name in manifest.doc.families:
            family = EmbedderFamily.from_spec(fam_name, manifest.family(fam_name))
        elif fam_name in BUILTIN:
            family = BUILTIN[fam_name]
        else:
            raise ModelError(f"model {name} has no known embedder family ({fam_name!r})")
        in_model = bool(entry.input.normalisation_in_model) if entry.input else True
        path = manifest.verify(name)
        return cls(path, family, normalisation_in_model=in_model, threads=threads, name=name,
                   flip=family.flip if flip is None else flip)

    def _prepare(self, rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.generic]:
        s = self.family.input_size
        if rgb.shape != (s, s, 3) or rgb.dtype != np.uint8:
            raise ValueError(f"chip must be ({s}, {s}, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
        batch = rgb[None]
        if self.normalisation_in_model:
            if self.family.colour == "BGR":
                batch = batch[..., ::-1]
            if self.model.input.dtype is np.uint8:
                return np.ascontiguousarray(batch)
            return batch.astype(np.float32)
        return self.family.normalise(batch)

    def embed(self, chips: Sequence[Chip | npt.NDArray[np.uint8]]) -> F32:
        """(N, D) float32 embeddings for N chips (``Chip`` or raw RGB arrays)."""
        if not self.flip:
            return self._embed(chips)
        rgbs = [c.rgb if isinstance(c, Chip) else c for c in chips]
        both = self._embed([*rgbs, *(np.ascontiguousarray(r[:, ::-1]) for r in rgbs)])
        n = len(rgbs)
        out = np.zeros((n, self.family.dim), dtype=np.float32)
        for i in range(n):
            out[i] = fuse(both[[i, n + i]], self.family.metric)
        both.fill(0.0)
        return out

    def _embed(self, chips: Sequence[Chip | npt.NDArray[np.uint8]]) -> F32:
        out = np.zeros((len(chips), self.family.dim), dtype=np.float32)
        b = self.batch
        for i in range(0, len(chips), b):
            group = [c.rgb if isinstance(c, Chip) else c for c in chips[i : i + b]]
            n = len(group)
            x = [self._prepare(rgb) for rgb in group]
            batch = x[0] if b == 1 else np.concatenate(x + [x[0]] * (b - n))
            out[i : i + n] = self.model.run(batch)[0].reshape(b, -1)[:n]
        return out
