"""A synthetic deployment stream with ground truth: passers-by walking past a camera.

Faces come from an LFW-style folder (one sub-folder per identity, aligned
crops with the face in the middle, like LFW deep-funneled's 250x250 images).
Each passer-by is one picture of one identity, cut out with a soft elliptical
head mask (or shown as the whole tile), scaled so that its face is 60-160 px
wide, and moved across a procedural background (gradients, shop fronts,
texture; no external images) with its own lighting, colour cast, blur and a
small roll; the frame gets slow global lighting changes and sensor noise.
Passers-by further away are smaller and higher in the frame; some cross the
view, some walk towards the camera (their face grows).

A fraction of passers-by is *watchlisted*: their identity is on the
watchlist, and the watchlist enrols *other* images of that identity than the
one shown, so only identities with at least two images can be watchlisted.
The watchlist also holds subjects who never appear (distractors, as on a real
list). Everyone else is drawn from identities not on the watchlist.

Everything random is drawn from one seed up front (:func:`plan_clip`), and each
frame's noise from ``(seed, frame)``: the same seed gives the same truth file
and the same frames.

The truth file's format is :class:`edge.evaluation.stream.Truth`; the face box
per frame is LFW's typical face box (HOG detector's, measured on 199 LFW
deep-funneled images: (69, 79)-(175, 185) in the 250x250 tile) mapped into the
frame.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

from edge.errors import UsageError
from edge.evaluation.stream import Box, Truth, TruthTrack, WatchlistEntry
from edge.progress import Progress
from edge.types import ImageU8
from edge.watchlist.bundle import CATEGORIES

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

TILE = 250
"""Pictures are brought to TILE x TILE (LFW's size) before use."""
FACE_BOX_TILE: Box = (69.0, 79.0, 175.0, 185.0)
"""Where the face is in an LFW deep-funneled tile (mean dlib HOG box)."""
HEAD_ELLIPSE = ((125.0, 118.0), (74.0, 98.0))
"""Centre and semi-axes of the head mask in the tile: hair to chin, ear to ear."""

MaskKind = Literal["ellipse", "tile"]


@dataclass(frozen=True, slots=True)
class SimConfig:
    size: tuple[int, int] = (1280, 720)
    fps: float = 25.0
    seconds: float = 60.0
    faces: tuple[int, int] = (1, 5)  # passers-by visible at once, min-max
    watchlisted: float = 0.1  # share of passers-by who are watchlisted
    seed: int = 0
    face_px: tuple[float, float] = (60.0, 160.0)  # face width range
    watchlist_size: int = 20  # subjects on the watchlist (raised to cover those shown)
    max_enrol: int = 3  # images enrolled per subject
    mask: MaskKind = "ellipse"
    dwell: tuple[float, float] = (2.5, 7.0)  # seconds a passer-by is in view

    @property
    def frames(self) -> int:
        return max(1, round(self.seconds * self.fps))

    def check(self) -> None:
        w, h = self.size
        problems: list[str] = []
        if w < 64 or h < 64 or w % 2 or h % 2:
            problems.append(f"--size {w}x{h}: width and height must be even and >= 64")
        if not (0 < self.fps <= 120):
            problems.append(f"--fps {self.fps}: must be in (0, 120]")
        if not (0 < self.seconds <= 3600):
            problems.append(f"--seconds {self.seconds}: must be in (0, 3600]")
        lo, hi = self.faces
        if not (1 <= lo <= hi <= 20):
            problems.append(f"--faces-per-frame {lo}-{hi}: need 1 <= min <= max <= 20")
        if not (0.0 <= self.watchlisted <= 1.0):
            problems.append(f"--watchlisted {self.watchlisted}: must be between 0 and 1")
        fmin, fmax = self.face_px
        if not (16 <= fmin <= fmax) or fmax > min(w, h) / 2:
            problems.append(
                f"face sizes {fmin:g}-{fmax:g} px do not fit a {w}x{h} frame"
            )
        if self.watchlist_size < 0 or self.max_enrol < 1:
            problems.append("--watchlist-size must be >= 0 and --max-enrol >= 1")
        if problems:
            raise UsageError("; ".join(problems))


@dataclass(frozen=True, slots=True)
class Walker:
    """One passer-by's path and appearance (everything needed to draw it)."""

    track: int
    first_frame: int
    frames: int
    x: tuple[float, float]  # face centre at start and end
    y: tuple[float, float]
    width: tuple[float, float]  # face width at start and end
    bob: tuple[float, float, float]  # amplitude (px), frequency (Hz), phase
    angle: float  # roll, degrees
    gain: tuple[float, float, float]  # B, G, R
    blur: float  # Gaussian sigma in frame pixels (0 = sharp)
    identity: str = ""
    image: str = ""
    watchlisted: bool = False
    subject_id: str | None = None

    @property
    def last_frame(self) -> int:
        return self.first_frame + self.frames - 1

    def at(self, frame: int, fps: float) -> tuple[float, float, float]:
        """Face centre x, y and face width at ``frame``."""
        i = frame - self.first_frame
        t = i / (self.frames - 1) if self.frames > 1 else 0.0
        amp, freq, phase = self.bob
        cx = self.x[0] + (self.x[1] - self.x[0]) * t
        cy = self.y[0] + (self.y[1] - self.y[0]) * t
        cy += amp * math.sin(2.0 * math.pi * freq * i / fps + phase)
        w = self.width[0] + (self.width[1] - self.width[0]) * t
        return cx, cy, w

    def box(self, frame: int, fps: float) -> Box:
        cx, cy, w = self.at(frame, fps)
        return (cx - w / 2, cy - w / 2, cx + w / 2, cy + w / 2)


@dataclass(frozen=True, slots=True)
class Plan:
    config: SimConfig
    walkers: tuple[Walker, ...]
    truth: Truth
    images_dir: Path = field(default_factory=Path)


def scan_identities(images_dir: Path) -> dict[str, list[str]]:
    """``{identity: [relative image paths, sorted]}`` for an LFW-style folder."""
    if not images_dir.is_dir():
        raise UsageError(f"--images {images_dir}: not a folder")
    out: dict[str, list[str]] = {}
    for sub in sorted(p for p in images_dir.iterdir() if p.is_dir()):
        files = sorted(
            f"{sub.name}/{f.name}"
            for f in sub.iterdir()
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()
        )
        if files:
            out[sub.name] = files
    if not out:
        raise UsageError(
            f"--images {images_dir}: no identity folders with images "
            "(expected one folder per identity, LFW style)"
        )
    return out


def _overlap(a: Walker, b: Walker, fps: float) -> float:
    """Largest IoU of two walkers' face boxes (inflated to the head) over shared frames."""
    lo = max(a.first_frame, b.first_frame)
    hi = min(a.last_frame, b.last_frame)
    worst = 0.0
    for f in range(lo, hi + 1, 5):
        ba, bb = _head(a.box(f, fps)), _head(b.box(f, fps))
        ix = min(ba[2], bb[2]) - max(ba[0], bb[0])
        iy = min(ba[3], bb[3]) - max(ba[1], bb[1])
        if ix > 0 and iy > 0:
            inter = ix * iy
            union = (ba[2] - ba[0]) * (ba[3] - ba[1]) + (bb[2] - bb[0]) * (bb[3] - bb[1])
            worst = max(worst, inter / (union - inter))
    return worst


def _head(b: Box) -> Box:
    w = b[2] - b[0]
    return (b[0] - 0.3 * w, b[1] - 0.5 * w, b[2] + 0.3 * w, b[3] + 0.2 * w)


def _new_walker(
    rng: np.random.Generator, cfg: SimConfig, track: int, first: int, frames: int
) -> Walker:
    fw, fh = cfg.size
    fmin, fmax = cfg.face_px
    fps = cfg.fps
    w0 = float(rng.uniform(fmin, fmax))
    approaching = bool(rng.random() < 0.4)
    if approaching:
        w1 = min(fmax, w0 * float(rng.uniform(1.15, 1.6)))
    else:
        w1 = float(np.clip(w0 * rng.uniform(0.95, 1.08), fmin, fmax))
    # Nearer (bigger) faces sit lower in the frame, as seen from a raised camera.
    span = fmax - fmin if fmax > fmin else 1.0

    def row(w: float) -> float:
        return fh * (0.28 + 0.42 * (w - fmin) / span)

    jitter = float(rng.uniform(-0.08, 0.08)) * fh
    wmax = max(w0, w1)
    amp = float(rng.uniform(0.01, 0.03)) * wmax
    margin_y = wmax / 2 + amp + 2
    y0 = float(np.clip(row(w0) + jitter, margin_y, fh - margin_y))
    y1 = float(np.clip(row(w1) + jitter, margin_y, fh - margin_y))
    lo_x, hi_x = wmax / 2 + 2, fw - wmax / 2 - 2
    seconds = frames / fps
    if approaching:
        x0 = float(rng.uniform(lo_x, hi_x))
        x1 = float(np.clip(x0 + rng.uniform(-0.12, 0.12) * fw, lo_x, hi_x))
    else:
        speed = float(rng.uniform(0.8, 2.5)) * wmax  # px/s
        dist = min(speed * seconds, hi_x - lo_x)
        x0 = float(rng.uniform(lo_x, max(lo_x, hi_x - dist)))
        x1 = x0 + dist
        if rng.random() < 0.5:
            x0, x1 = x1, x0
    return Walker(
        track=track,
        first_frame=first,
        frames=frames,
        x=(x0, x1),
        y=(y0, y1),
        width=(w0, w1),
        bob=(amp, float(rng.uniform(1.6, 2.2)), float(rng.uniform(0, 2 * math.pi))),
        angle=float(rng.uniform(-7.0, 7.0)),
        gain=_gain(rng),
        blur=float(rng.choice([0.0, rng.uniform(0.3, 1.4)])),
    )


def _gain(rng: np.random.Generator) -> tuple[float, float, float]:
    g = float(rng.uniform(0.65, 1.25))
    b, gg, r = (g * float(rng.uniform(0.92, 1.08)) for _ in range(3))
    return (b, gg, r)


def _schedule(rng: np.random.Generator, cfg: SimConfig) -> list[Walker]:
    """When each passer-by enters and how long it stays, keeping min-max in view."""
    n = cfg.frames
    lo, hi = cfg.faces
    fps = cfg.fps
    walkers: list[Walker] = []
    target = int(rng.integers(lo, hi + 1))
    next_change = int(rng.integers(round(2 * fps), round(5 * fps) + 1))
    min_gap = max(1, round(0.3 * fps))
    last_spawn = -min_gap
    for f in range(n):
        if f >= next_change:
            target = int(rng.integers(lo, hi + 1))
            next_change = f + int(rng.integers(round(2 * fps), round(5 * fps) + 1))
        active = [w for w in walkers if w.first_frame <= f <= w.last_frame]
        while len(active) < target and (
            f == 0 or len(active) < lo or f - last_spawn >= min_gap
        ):
            dwell = round(float(rng.uniform(*cfg.dwell)) * fps)
            frames = max(2, min(dwell, n - f))
            best: Walker | None = None
            best_ov = 2.0
            for _ in range(12):  # a few tries for a path that keeps clear of the others
                cand = _new_walker(rng, cfg, len(walkers), f, frames)
                ov = max((_overlap(cand, a, fps) for a in active), default=0.0)
                if ov < best_ov:
                    best, best_ov = cand, ov
                if ov < 0.02:
                    break
            assert best is not None
            walkers.append(best)
            active.append(best)
            last_spawn = f
    return walkers


def plan_clip(
    images_dir: Path, cfg: SimConfig, *, enrol_ok: Callable[[Path], bool] | None = None
) -> Plan:
    """Draw every random choice of the clip (paths, identities, looks) from ``cfg.seed``.

    ``enrol_ok(path)`` (see :func:`enrolment_checker`) keeps only reference images
    that enrolment would accept, and skips identities left without one.
    """
    cfg.check()
    ids = scan_identities(images_dir)
    rng = np.random.default_rng(cfg.seed)
    walkers = _schedule(rng, cfg)
    n_tracks = len(walkers)

    n_watch = round(cfg.watchlisted * n_tracks)
    if cfg.watchlisted > 0 and n_watch == 0 and n_tracks > 0:
        n_watch = 1
    watch_tracks = {int(i) for i in rng.choice(n_tracks, size=n_watch, replace=False)}

    multi = [name for name, files in ids.items() if len(files) >= 2]
    list_size = max(cfg.watchlist_size, n_watch)
    if list_size > len(multi):
        raise UsageError(
            f"--images {images_dir}: {len(multi)} identities have >= 2 images, "
            f"but the watchlist needs {list_size} (lower --watchlisted or --watchlist-size)"
        )
    order = [multi[int(i)] for i in rng.permutation(len(multi))]
    # Which image each watchlist subject shows in the clip, and which it enrols (others
    # than the one shown; with ``enrol_ok``, only images the device's enrolment accepts).
    chosen: list[tuple[str, str, tuple[str, ...]]] = []
    rejected = 0
    for name in order:
        if len(chosen) == list_size:
            break
        files = ids[name]
        held = files[int(rng.integers(len(files)))]
        rest = [f for f in files if f != held]
        if enrol_ok is None:
            enrol = rest[: cfg.max_enrol]
        else:
            enrol = []
            for f in rest:
                if enrol_ok(images_dir / f):
                    enrol.append(f)
                    if len(enrol) == cfg.max_enrol:
                        break
        if not enrol:
            rejected += 1
            continue
        chosen.append((name, held, tuple(enrol)))
    if len(chosen) < list_size:
        raise UsageError(
            f"--images {images_dir}: only {len(chosen)} identities have an enrollable image "
            f"besides the one shown, but the watchlist needs {list_size}"
        )
    listed = [c[0] for c in chosen]
    listed_set = set(listed)
    others = [name for name in ids if name not in listed_set]
    if not others and n_tracks > n_watch:
        raise UsageError(f"--images {images_dir}: no identities left for passers-by")
    others = [others[int(i)] for i in rng.permutation(len(others))]

    shown = {name: held for name, held, _ in chosen}
    appearing = listed[:n_watch]
    entries = [
        WatchlistEntry(
            subject_id=f"SIM-{k + 1:04d}",
            identity=name,
            category=CATEGORIES[int(rng.integers(len(CATEGORIES)))],
            enrol=enrol,
            appears=name in appearing,
        )
        for k, (name, _, enrol) in enumerate(chosen)
    ]
    subject_of = {e.identity: e.subject_id for e in entries}

    placed: list[Walker] = []
    wi = oi = 0
    for w in walkers:
        if w.track in watch_tracks:
            name = appearing[wi]
            wi += 1
            placed.append(
                replace(
                    w, identity=name, image=shown[name], watchlisted=True,
                    subject_id=subject_of[name],
                )
            )
        else:
            name = others[oi % len(others)]
            oi += 1
            files = ids[name]
            placed.append(replace(w, identity=name, image=files[int(rng.integers(len(files)))]))

    tracks = tuple(
        TruthTrack(
            track=w.track,
            identity=w.identity,
            watchlisted=w.watchlisted,
            subject_id=w.subject_id,
            image=w.image,
            first_frame=w.first_frame,
            boxes=tuple(
                _round_box(w.box(f, cfg.fps)) for f in range(w.first_frame, w.last_frame + 1)
            ),
        )
        for w in placed
    )
    truth = Truth(
        fps=cfg.fps,
        frames=cfg.frames,
        size=cfg.size,
        tracks=tracks,
        watchlist=tuple(entries),
        images_dir=str(images_dir.resolve()),
        seed=cfg.seed,
        params={
            "faces_per_frame": list(cfg.faces),
            "watchlisted": cfg.watchlisted,
            "face_px": list(cfg.face_px),
            "watchlist_size": list_size,
            "max_enrol": cfg.max_enrol,
            "mask": cfg.mask,
            "face_box_in_tile": list(FACE_BOX_TILE),
            "enrolment_checked": enrol_ok is not None,
            "identities_without_enrollable_image": rejected,
        },
    )
    return Plan(cfg, tuple(placed), truth, images_dir)


def _round_box(b: Box) -> Box:
    return (round(b[0], 1), round(b[1], 1), round(b[2], 1), round(b[3], 1))


# ---------------------------------------------------------------------------
# Pixels


def background(size: tuple[int, int], seed: int) -> npt.NDArray[np.float32]:
    """A procedural street-ish scene: sky/wall gradient, shop fronts, pavement, texture."""
    fw, fh = size
    rng = np.random.default_rng([seed, 0xB6])
    top = _muted(rng, 90, 200)
    bottom = _muted(rng, 40, 140)
    t = np.linspace(0.0, 1.0, fh, dtype=np.float32)[:, None, None]
    img = (top[None, None, :] * (1 - t) + bottom[None, None, :] * t).astype(np.float32)
    img = np.repeat(img, fw, axis=1)
    horizon = int(fh * rng.uniform(0.72, 0.85))
    img[horizon:] = _muted(rng, 70, 130)  # pavement
    x = 0
    while x < fw:  # shop fronts with windows and signs
        bw = int(rng.uniform(0.08, 0.25) * fw)
        top_y = int(rng.uniform(0.0, 0.25) * fh)
        colour = _muted(rng, 30, 220)
        cv2.rectangle(img, (x, top_y), (x + bw, horizon), colour.tolist(), -1)
        for _ in range(int(rng.integers(1, 4))):
            wx = x + int(rng.uniform(0.05, 0.6) * bw)
            wy = top_y + int(rng.uniform(0.1, 0.6) * (horizon - top_y))
            ww = int(rng.uniform(0.15, 0.35) * bw)
            wh = int(rng.uniform(0.1, 0.3) * (horizon - top_y))
            shade = _muted(rng, 20, 240)
            cv2.rectangle(img, (wx, wy), (wx + ww, wy + wh), shade.tolist(), -1)
        x += bw
    for _ in range(int(rng.integers(6, 14))):  # posts, bins, signs
        cx, cy = int(rng.uniform(0, fw)), int(rng.uniform(0.3, 1.0) * fh)
        if rng.random() < 0.5:
            cv2.circle(img, (cx, cy), int(rng.uniform(6, 40)), _muted(rng, 0, 255).tolist(), -1)
        else:
            x2, y2 = cx + int(rng.uniform(4, 20)), min(fh, cy + int(rng.uniform(40, 200)))
            cv2.rectangle(img, (cx, cy), (x2, y2), _muted(rng, 0, 255).tolist(), -1)
    lw, lh = max(2, fw // 32), max(2, fh // 32)
    texture = rng.normal(0.0, 12.0, (lh, lw, 1)) + rng.normal(0.0, 3.0, (lh, lw, 3))
    texture = texture.astype(np.float32)
    img += cv2.resize(texture, (fw, fh), interpolation=cv2.INTER_CUBIC)
    blurred = np.asarray(cv2.GaussianBlur(img, (0, 0), 1.2), dtype=np.float32)
    return np.clip(blurred, 0, 255).astype(np.float32)


def _muted(rng: np.random.Generator, lo: float, hi: float) -> npt.NDArray[np.float64]:
    """A colour of brightness in [lo, hi] with a modest tint (street scenes are not neon)."""
    return np.clip(rng.uniform(lo, hi) + rng.uniform(-25.0, 25.0, 3), 0.0, 255.0)


def head_mask(kind: MaskKind) -> npt.NDArray[np.float32]:
    """A TILE x TILE soft alpha mask (1 inside the head, fading over ~10 px)."""
    if kind == "tile":
        m = np.zeros((TILE, TILE), np.float32)
        m[4:-4, 4:-4] = 1.0
        return np.asarray(cv2.GaussianBlur(m, (0, 0), 2.0), dtype=np.float32)
    m = np.zeros((TILE, TILE), np.float32)
    (cx, cy), (ax, ay) = HEAD_ELLIPSE
    cv2.ellipse(m, (round(cx), round(cy)), (round(ax), round(ay)), 0, 0, 360, 1.0, -1)
    return np.asarray(cv2.GaussianBlur(m, (0, 0), 6.0), dtype=np.float32)


def load_tile(path: Path) -> ImageU8:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise UsageError(f"cannot read image {path}")
    if img.shape[:2] != (TILE, TILE):
        img = cv2.resize(img, (TILE, TILE), interpolation=cv2.INTER_AREA)
    return img.astype(np.uint8)


class Renderer:
    """Draws frame ``f`` of a plan; frames may be drawn in any order."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        cfg = plan.config
        self.bg = background(cfg.size, cfg.seed)
        self.mask = head_mask(cfg.mask)
        rng = np.random.default_rng([cfg.seed, 0x015E])
        fw, fh = cfg.size
        self.noise = [
            rng.normal(0.0, 2.5, (fh, fw, 3)).astype(np.float32) for _ in range(6)
        ]
        self._tiles: dict[int, npt.NDArray[np.float32]] = {}
        fc = FACE_BOX_TILE
        self._face_centre = ((fc[0] + fc[2]) / 2, (fc[1] + fc[3]) / 2)
        self._face_w = fc[2] - fc[0]

    def _tile(self, w: Walker) -> npt.NDArray[np.float32]:
        tile = self._tiles.get(w.track)
        if tile is None:
            img = load_tile(self.plan.images_dir / w.image).astype(np.float32)
            tile = img * np.asarray(w.gain, np.float32)[None, None, :]
            self._tiles[w.track] = tile
        return tile

    def frame(self, f: int) -> ImageU8:
        cfg = self.plan.config
        fps = cfg.fps
        light = 1.0 + 0.07 * math.sin(2 * math.pi * f / (fps * 13.0)) + 0.03 * math.sin(
            2 * math.pi * f / (fps * 3.1)
        )
        img = self.bg * np.float32(light)
        active = [w for w in self.plan.walkers if w.first_frame <= f <= w.last_frame]
        active.sort(key=lambda w: (w.at(f, fps)[2], w.track))  # far (small) first
        for w in active:
            self._draw(img, w, f)
        for k in list(self._tiles):  # forget pictures of passers-by who have left
            if self.plan.walkers[k].last_frame < f:
                del self._tiles[k]
        rng = np.random.default_rng([cfg.seed, f])
        img += self.noise[int(rng.integers(len(self.noise)))]
        np.clip(img, 0, 255, out=img)
        return img.astype(np.uint8)

    def _draw(self, img: npt.NDArray[np.float32], w: Walker, f: int) -> None:
        fw, fh = self.plan.config.size
        cx, cy, width = w.at(f, self.plan.config.fps)
        s = width / self._face_w
        a = math.radians(w.angle)
        ca, sa = s * math.cos(a), s * math.sin(a)
        fx, fy = self._face_centre
        # tile -> frame: p' = sR (p - face centre) + (cx, cy)
        m = np.array(
            [[ca, -sa, cx - (ca * fx - sa * fy)], [sa, ca, cy - (sa * fx + ca * fy)]],
            dtype=np.float64,
        )
        corners = np.array([[0, 0, 1], [TILE, 0, 1], [0, TILE, 1], [TILE, TILE, 1]], float)
        pts = corners @ m.T
        x0 = max(0, math.floor(pts[:, 0].min()))
        y0 = max(0, math.floor(pts[:, 1].min()))
        x1 = min(fw, math.ceil(pts[:, 0].max()) + 1)
        y1 = min(fh, math.ceil(pts[:, 1].max()) + 1)
        if x1 <= x0 or y1 <= y0:
            return
        m[0, 2] -= x0
        m[1, 2] -= y0
        size = (x1 - x0, y1 - y0)
        face = cv2.warpAffine(
            self._tile(w), m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        alpha = cv2.warpAffine(
            self.mask, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
            borderValue=0.0,
        )
        if w.blur > 0.25:
            face = cv2.GaussianBlur(face, (0, 0), w.blur)
        roi = img[y0:y1, x0:x1]
        a3 = alpha[:, :, None]
        roi *= 1.0 - a3
        roi += face * a3

    def frames(self) -> Iterator[ImageU8]:
        for f in range(self.plan.config.frames):
            yield self.frame(f)


def write_clip(plan: Plan, out: Path, *, progress: bool = True) -> None:
    """Render ``plan`` into an MP4 (mp4v) at ``out`` and check that it reads back."""
    cfg = plan.config
    out.parent.mkdir(parents=True, exist_ok=True)
    fourcc = cv2.VideoWriter.fourcc(*"mp4v")
    writer = cv2.VideoWriter(str(out), fourcc, cfg.fps, cfg.size)
    if not writer.isOpened():
        raise UsageError(f"--out {out}: cannot open an MP4 writer there")
    renderer = Renderer(plan)
    try:
        with Progress(cfg.frames, "simulate", enabled=progress) as bar:
            for frame in renderer.frames():
                writer.write(frame)
                bar.advance()
    finally:
        writer.release()
    check_clip(out, cfg.frames, cfg.size)


def check_clip(path: Path, frames: int, size: tuple[int, int]) -> None:
    """Raise unless ``path`` opens with OpenCV and has ``frames`` frames of ``size``."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise UsageError(f"{path}: written but OpenCV cannot open it")
        ok, first = cap.read()
        if not ok or first is None or (first.shape[1], first.shape[0]) != size:
            raise UsageError(f"{path}: written but the first frame does not read back")
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if count != frames:
            raise UsageError(f"{path}: has {count} frames, expected {frames}")
    finally:
        cap.release()


def simulate(
    images_dir: Path,
    out: Path,
    truth_path: Path,
    cfg: SimConfig,
    *,
    subjects_out: Path | None = None,
    copy: bool = False,
    progress: bool = True,
    enrol_ok: Callable[[Path], bool] | None = None,
) -> Truth:
    """Plan, render and write the clip, the truth file and optionally the subjects folder."""
    plan = plan_clip(images_dir, cfg, enrol_ok=enrol_ok)
    write_clip(plan, out, progress=progress)
    truth_path.parent.mkdir(parents=True, exist_ok=True)
    plan.truth.save(truth_path)
    if subjects_out is not None:
        write_subjects(plan.truth, images_dir, subjects_out, copy=copy)
    return plan.truth


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


# ---------------------------------------------------------------------------
# Watchlist subjects folder for ``edge watchlist build``


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


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = text.lower().split("x")
        return int(w), int(h)
    except ValueError:
        raise UsageError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 1280x720") from None


def parse_range(text: str, name: str) -> tuple[int, int]:
    try:
        if "-" in text:
            a, b = text.split("-", 1)
            return int(a), int(b)
        n = int(text)
        return n, n
    except ValueError:
        raise UsageError(f"{name} {text!r}: expected N or MIN-MAX, e.g. 1-5") from None


def frames_with_faces(truth: Truth) -> Sequence[int]:
    """How many passers-by are in view in each frame (for summaries and tests)."""
    counts = [0] * truth.frames
    for t in truth.tracks:
        for f in range(t.first_frame, t.last_frame + 1):
            counts[f] += 1
    return counts
