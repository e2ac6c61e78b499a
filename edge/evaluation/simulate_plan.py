"""The plan of a simulated street: every random choice (paths, identities, images, looks).

Everything random is drawn from ``cfg.seed`` up front (:func:`plan_clip`). The views a
passer-by shows (``cfg.views`` > 1) and the heads' wobble are drawn from generators of
their own, so a clip without them plans exactly as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edge.errors import UsageError
from edge.evaluation.simulate_config import FACE_BOX_TILE, IMAGE_SUFFIXES, SimConfig
from edge.evaluation.stream import Box, Truth, TruthTrack, WatchlistEntry
from edge.watchlist.bundle import CATEGORIES

Wobble = tuple[float, float, float, float, float, float]
NO_WOBBLE: Wobble = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


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
    images: tuple[str, ...] = ()  # the views shown along the walk, in order (first = image)
    wobble: Wobble = NO_WOBBLE  # roll amp (deg), Hz, phase; scale amp (share), Hz, phase

    @property
    def views(self) -> tuple[str, ...]:
        return self.images or (self.image,)

    def view_at(self, frame: int) -> int:
        """Which of :attr:`views` is shown at ``frame`` (equal shares of the walk)."""
        n = len(self.views)
        return min(n - 1, (frame - self.first_frame) * n // max(1, self.frames))

    def roll_at(self, frame: int, fps: float) -> float:
        amp, freq, phase = self.wobble[:3]
        t = (frame - self.first_frame) / fps
        return self.angle + amp * math.sin(2 * math.pi * freq * t + phase)

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
        s_amp, s_freq, s_phase = self.wobble[3:]
        if s_amp:
            w *= 1.0 + s_amp * math.sin(2.0 * math.pi * s_freq * i / fps + s_phase)
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
    vrng = np.random.default_rng([cfg.seed, 0x71E5])  # views only: the rest plans as before
    # Which image each watchlist subject shows in the clip, and which it enrols (others
    # than the one shown; with ``enrol_ok``, only images the device's enrolment accepts).
    chosen: list[tuple[str, str, tuple[str, ...]]] = []
    views_of: dict[str, tuple[str, ...]] = {}
    rejected = 0
    for name in order:
        if len(chosen) == list_size:
            break
        files = ids[name]
        held = files[int(rng.integers(len(files)))]
        rest = [f for f in files if f != held]
        # More views shown: set aside up to views-1 other images (leaving one to enrol).
        spare = _pick(vrng, rest, min(cfg.views - 1, len(rest) - 1))
        rest = [f for f in rest if f not in spare]
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
        views_of[name] = (held, *spare)
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
                    images=views_of[name] if cfg.views > 1 else (),
                )
            )
        else:
            name = others[oi % len(others)]
            oi += 1
            files = ids[name]
            image = files[int(rng.integers(len(files)))]
            more = _pick(vrng, [f for f in files if f != image], cfg.views - 1)
            placed.append(replace(w, identity=name, image=image,
                                  images=(image, *more) if cfg.views > 1 else ()))
    if cfg.camera.wobble:
        wrng = np.random.default_rng([cfg.seed, 0x30BB])
        placed = [replace(w, wobble=_wobble(wrng)) for w in placed]

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
            "views": cfg.views,
            "camera": cfg.camera.to_dict(),
            "identities_without_enrollable_image": rejected,
        },
    )
    return Plan(cfg, tuple(placed), truth, images_dir)


def _round_box(b: Box) -> Box:
    return (round(b[0], 1), round(b[1], 1), round(b[2], 1), round(b[3], 1))


def _pick(rng: np.random.Generator, files: list[str], n: int) -> tuple[str, ...]:
    """Up to ``n`` of ``files`` in a random order (none for n <= 0)."""
    if n <= 0 or not files:
        return ()
    idx = rng.permutation(len(files))[:n]
    return tuple(files[int(i)] for i in idx)


def _wobble(rng: np.random.Generator) -> Wobble:
    return (float(rng.uniform(1.0, 3.0)), float(rng.uniform(0.4, 1.2)),
            float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.015, 0.04)),
            float(rng.uniform(0.5, 1.5)), float(rng.uniform(0, 2 * math.pi)))
