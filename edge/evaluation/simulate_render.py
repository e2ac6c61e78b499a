"""The pixels of a simulated street: background, heads, the camera, and the MP4.

:class:`Renderer` draws frame ``f`` of a :class:`~edge.evaluation.simulate_plan.Plan` in
any order: each passer-by's current view warped into the frame (with its roll, wobble and,
if on, motion blur), then the frame through the camera's effects
(:mod:`edge.evaluation.simulate_camera`). Noise comes from ``(seed, frame)``, so the same
plan gives the same frames.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from edge.errors import UsageError
from edge.evaluation.simulate_camera import SHUTTER_FRAMES, Camera, motion_kernel
from edge.evaluation.simulate_config import FACE_BOX_TILE, HEAD_ELLIPSE, TILE, MaskKind
from edge.evaluation.simulate_plan import Plan, Walker
from edge.progress import Progress
from edge.types import ImageU8


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
        self._tiles: dict[tuple[int, int], npt.NDArray[np.float32]] = {}
        self.camera = Camera(cfg.camera, cfg.size, cfg.fps, cfg.seed)
        fc = FACE_BOX_TILE
        self._face_centre = ((fc[0] + fc[2]) / 2, (fc[1] + fc[3]) / 2)
        self._face_w = fc[2] - fc[0]

    def _tile(self, w: Walker, f: int) -> npt.NDArray[np.float32]:
        key = (w.track, w.view_at(f))
        tile = self._tiles.get(key)
        if tile is None:
            img = load_tile(self.plan.images_dir / w.views[key[1]]).astype(np.float32)
            tile = img * np.asarray(w.gain, np.float32)[None, None, :]
            self._tiles[key] = tile
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
        for k in list(self._tiles):  # forget pictures no longer shown
            w = self.plan.walkers[k[0]]
            if w.last_frame < f or (f >= w.first_frame and w.view_at(f) > k[1]):
                del self._tiles[k]
        rng = np.random.default_rng([cfg.seed, f])
        img += self.noise[int(rng.integers(len(self.noise)))]
        if cfg.camera.any:
            return self.camera.apply(img, f)
        np.clip(img, 0, 255, out=img)
        out: ImageU8 = img.astype(np.uint8)
        return out

    def _draw(self, img: npt.NDArray[np.float32], w: Walker, f: int) -> None:
        fw, fh = self.plan.config.size
        cx, cy, width = w.at(f, self.plan.config.fps)
        s = width / self._face_w
        a = math.radians(w.roll_at(f, self.plan.config.fps))
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
            self._tile(w, f), m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        alpha = cv2.warpAffine(
            self.mask, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
            borderValue=0.0,
        )
        if w.blur > 0.25:
            face = cv2.GaussianBlur(face, (0, 0), w.blur)
        if self.plan.config.camera.motion_blur:
            k = self._motion(w, f)
            if k is not None:  # the face and its edge smear along the motion
                face = cv2.filter2D(face, -1, k, borderType=cv2.BORDER_REPLICATE)
                alpha = cv2.filter2D(alpha, -1, k, borderType=cv2.BORDER_CONSTANT)
        roi = img[y0:y1, x0:x1]
        a3 = alpha[:, :, None]
        roi *= 1.0 - a3
        roi += face * a3

    def _motion(self, w: Walker, f: int) -> npt.NDArray[np.float32] | None:
        fps = self.plan.config.fps
        g = min(max(f, w.first_frame), w.last_frame - 1) if w.frames > 1 else f
        x0, y0, _ = w.at(g, fps)
        x1, y1, _ = w.at(g + 1, fps)
        return motion_kernel((x1 - x0) * SHUTTER_FRAMES, (y1 - y0) * SHUTTER_FRAMES)

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
