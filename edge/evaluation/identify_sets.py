"""What ``edge eval identify`` searches: a gallery and probes (LFW or folders), and K-image probes.

LFW protocol (:func:`lfw_sets`): every identity with at least two images gives a
gallery subject (its first image) and mated probes (its other images); every image of
the other identities is a non-mated probe. With ``holdout`` a seeded share of the
identities with two or more images is kept out of the gallery instead, so that there are
non-mated identities with several images (which multi-image probes need).

Several gallery images (``gallery_images`` K, :func:`limit_gallery`): an identity's first
``min(K, n - 1)`` images are its gallery entry and the rest its probes; with several K
(``--gallery-images 1,2,3``) the probes are cut at the largest, so that every K searches
exactly the same probes, and each K keeps the first K of those gallery images.

Multi-image probes (:func:`group_probes`): the probe images of each identity, in sorted
order, are cut into disjoint groups of K, each group one search whose embeddings are fused
into one template (:func:`edge.vision.fusion.fuse`, the daemon's track templates'
fusion); an identity's last images that do not fill a group, and identities with fewer
than K probe images, are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import UsageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
HOLDOUT_SEED = 0
"""Seed of the LFW hold-out draw: the same identities are held out for every K."""


@dataclass(frozen=True, slots=True)
class Probe:
    """One search: an image of ``identity`` (and, for a K-image probe, ``more`` images fused
    with it into one template)."""

    path: Path
    identity: str
    more: tuple[Path, ...] = ()

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self.path, *self.more)


@dataclass(frozen=True, slots=True)
class SearchSet:
    """A gallery (subject -> images) and the probes searched against it."""

    gallery: dict[str, list[Path]]
    probes: list[Probe]
    protocol: str

    @property
    def mated(self) -> int:
        return sum(1 for p in self.probes if p.identity in self.gallery)

    @property
    def non_mated(self) -> int:
        return len(self.probes) - self.mated

    @property
    def probe_images(self) -> int:
        """Images per probe (1 unless grouped)."""
        return max((len(p.paths) for p in self.probes), default=1)


def _images(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


def _identity_folders(root: Path, option: str) -> dict[str, list[Path]]:
    if not root.is_dir():
        raise UsageError(f"{option} {root}: not a folder")
    out = {d.name: _images(d) for d in sorted(root.iterdir()) if d.is_dir()}
    out = {k: v for k, v in out.items() if v}
    if not out:
        raise UsageError(f"{option} {root}: no sub-folders with images (one folder per identity)")
    return out


def lfw_sets(lfw_dir: Path, holdout: float = 0.0, gallery_images: int = 1) -> SearchSet:
    """LFW protocol: the first ``min(gallery_images, n - 1)`` images of each identity with
    n >= 2 images are its gallery entry, the others its mated probes.

    ``holdout`` (0 <= h < 1): that share of the identities with >= 2 images (drawn with
    :data:`HOLDOUT_SEED`) is non-mated instead, all their images probes.
    """
    if not (0.0 <= holdout < 1.0):
        raise UsageError(f"--holdout {holdout}: must be in [0, 1)")
    if gallery_images < 1:
        raise UsageError(f"--gallery-images {gallery_images}: must be >= 1")
    ids = _identity_folders(lfw_dir, "--lfw")
    multi = [name for name, files in ids.items() if len(files) >= 2]
    n_out = round(holdout * len(multi))
    order = np.random.default_rng(HOLDOUT_SEED).permutation(len(multi))
    held = {multi[int(i)] for i in order[:n_out]}
    gallery: dict[str, list[Path]] = {}
    probes: list[Probe] = []
    for name, files in ids.items():
        if len(files) >= 2 and name not in held:
            cut = min(gallery_images, len(files) - 1)
            gallery[name] = files[:cut]
            probes.extend(Probe(f, name) for f in files[cut:])
        else:
            probes.extend(Probe(f, name) for f in files)
    if not gallery:
        raise UsageError(f"--lfw {lfw_dir}: no identity has two images, so nothing is mated")
    protocol = "lfw" if not held else f"lfw, {len(held)} multi-image identities held out"
    if gallery_images > 1:
        protocol += f"; probes after the first {gallery_images} images"
    return SearchSet(gallery, probes, protocol)


def limit_gallery(sets: SearchSet, k: int) -> SearchSet:
    """The same probes against each subject's first ``k`` gallery images only."""
    if k < 1:
        raise UsageError(f"--gallery-images {k}: must be >= 1")
    gallery = {name: files[:k] for name, files in sets.gallery.items()}
    if all(len(files) == len(gallery[n]) for n, files in sets.gallery.items()):
        gallery = sets.gallery
    multi = sum(1 for files in gallery.values() if len(files) > 1)
    protocol = f"{sets.protocol}; up to {k} gallery images ({multi} subjects with more than one)"
    return SearchSet(gallery, sets.probes, protocol if k > 1 else sets.protocol)


def folder_sets(gallery_dir: Path, probes_dir: Path) -> SearchSet:
    """Gallery and probes as folders of identity folders; probe names absent from the gallery
    are non-mated."""
    gallery = _identity_folders(gallery_dir, "--gallery")
    probes = [
        Probe(f, name)
        for name, files in _identity_folders(probes_dir, "--probes").items()
        for f in files
    ]
    return SearchSet(gallery, probes, "folders")


def group_probes(sets: SearchSet, k: int) -> SearchSet:
    """K-image probes: each identity's probe images in disjoint groups of ``k`` (see above)."""
    if k < 1:
        raise UsageError(f"--probe-images {k}: must be >= 1")
    if k == 1:
        return sets
    by_identity: dict[str, list[Path]] = {}
    for p in sets.probes:
        by_identity.setdefault(p.identity, []).extend(p.paths)
    probes: list[Probe] = []
    for name, paths in by_identity.items():
        for g in range(len(paths) // k):
            group = paths[g * k : (g + 1) * k]
            probes.append(Probe(group[0], name, tuple(group[1:])))
    out = SearchSet(sets.gallery, probes, f"{sets.protocol}; {k} images fused per probe")
    if out.mated == 0:
        raise UsageError(f"--probe-images {k}: no mated identity has {k} probe images")
    return out


def ungroup(sets: SearchSet) -> SearchSet:
    """Every image of a K-image search set as a one-image probe: the single-image baseline on
    exactly the images the fused probes use."""
    probes = [Probe(x, p.identity) for p in sets.probes for x in p.paths]
    return SearchSet(sets.gallery, probes, f"{sets.protocol}; its images one by one")
