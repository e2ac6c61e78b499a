"""Per-frame camera effects of the simulated street, each deterministic per seed and frame.

Face-level (applied to a passer-by's warped face before it is composited):

- **motion blur** along the passer-by's motion in the frame: a line kernel as long as the
  distance the face moves during a 1/50 s shutter (half a frame at 25 fps), in the direction
  of that motion (walking plus the head's bob);
- **wobble**: the roll and the scale of the head swing slightly (a few degrees, a few per
  cent) at walking rhythm; drawn per passer-by in the plan, the scale part moves the truth box.

Frame-level (in this order, the way light goes through a camera):

- **defocus**: a disc kernel over the whole frame whose radius drifts slowly (focus hunting);
- **exposure**: a brightness gain drifting over seconds (auto-exposure), then
- **sensor noise**: shot noise (its sigma grows with the square root of the brightness) plus
  read noise, from a pool of noise fields picked per frame;
- **gamma** drift (a per-frame look-up table);
- **compression**: OpenCV's JPEG encode/decode at ``jpeg_quality`` (see
  :class:`~edge.evaluation.simulate_config.CameraConfig`); the MP4 writer compresses again.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt

from edge.evaluation.simulate_config import CameraConfig
from edge.types import ImageU8

F32 = npt.NDArray[np.float32]

SHUTTER_FRAMES = 0.5
"""Exposure time as a share of the frame interval (1/50 s at 25 fps)."""
NOISE_POOL = 6


def motion_kernel(dx: float, dy: float) -> F32 | None:
    """A normalised line kernel for a motion of (dx, dy) px in the exposure; None below 1.5 px."""
    length = math.hypot(dx, dy)
    if length < 1.5:
        return None
    n = math.ceil(length) | 1
    k = np.zeros((n, n), np.float32)
    c = n // 2
    ux, uy = dx / length, dy / length
    half = length / 2
    p0 = (round((c - ux * half) * 16), round((c - uy * half) * 16))
    p1 = (round((c + ux * half) * 16), round((c + uy * half) * 16))
    cv2.line(k, p0, p1, 1.0, 1, cv2.LINE_AA, shift=4)
    total = float(k.sum())
    if total <= 0:
        return None
    out: F32 = (k / np.float32(total)).astype(np.float32)
    return out


def disc_kernel(radius: float) -> F32 | None:
    """A normalised anti-aliased disc (defocus) of ``radius`` px; None below 0.5 px."""
    if radius < 0.5:
        return None
    n = 2 * math.ceil(radius) + 1
    k = np.zeros((n, n), np.float32)
    c = n // 2
    cv2.circle(k, (c * 16, c * 16), round(radius * 16), 1.0, -1, cv2.LINE_AA, shift=4)
    out: F32 = (k / np.float32(k.sum())).astype(np.float32)
    return out


class Camera:
    """The frame-level effects for one clip: slow drifts drawn from ``seed`` up front."""

    def __init__(self, cfg: CameraConfig, size: tuple[int, int], fps: float, seed: int) -> None:
        self.cfg = cfg
        self.fps = fps
        rng = np.random.default_rng([seed, 0xCA3E])
        self.focus = (float(rng.uniform(0.6, 1.4)), float(rng.uniform(0.4, 0.9)),
                      float(rng.uniform(7.0, 15.0)), float(rng.uniform(0, 2 * math.pi)))
        self.gain = (float(rng.uniform(0.10, 0.18)), float(rng.uniform(9.0, 20.0)),
                     float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0.03, 0.06)),
                     float(rng.uniform(2.0, 4.0)), float(rng.uniform(0, 2 * math.pi)))
        self.gamma = (float(rng.uniform(0.08, 0.15)), float(rng.uniform(11.0, 23.0)),
                      float(rng.uniform(0, 2 * math.pi)))
        self.read_sigma = float(rng.uniform(2.5, 4.0))
        self.shot = float(rng.uniform(0.12, 0.25))  # variance per unit of brightness
        w, h = size
        self.seed = seed
        self.pool: list[F32] = []
        if cfg.noise:
            self.pool = [rng.standard_normal((h, w, 3), dtype=np.float32)
                         for _ in range(NOISE_POOL)]

    def _wave(self, f: int, amp: float, period_s: float, phase: float) -> float:
        return amp * math.sin(2 * math.pi * f / (self.fps * period_s) + phase)

    def defocus_radius(self, f: int) -> float:
        base, amp, period, phase = self.focus
        return max(0.0, base + self._wave(f, amp, period, phase))

    def gain_at(self, f: int) -> float:
        a1, p1, ph1, a2, p2, ph2 = self.gain
        return 1.0 + self._wave(f, a1, p1, ph1) + self._wave(f, a2, p2, ph2)

    def gamma_at(self, f: int) -> float:
        amp, period, phase = self.gamma
        return 1.0 + self._wave(f, amp, period, phase)

    def apply(self, img: F32, f: int) -> ImageU8:
        """Frame ``f`` (float32 BGR, 0-255, modified in place) through the camera -> uint8."""
        cfg = self.cfg
        if cfg.defocus and (k := disc_kernel(self.defocus_radius(f))) is not None:
            img = np.asarray(cv2.filter2D(img, -1, k, borderType=cv2.BORDER_REFLECT),
                             dtype=np.float32)
        if cfg.exposure:
            img *= np.float32(self.gain_at(f))
        if cfg.noise:
            rng = np.random.default_rng([self.seed, 0x5E45, f])
            field = self.pool[int(rng.integers(len(self.pool)))]
            sigma = np.sqrt(np.float32(self.read_sigma**2) + np.float32(self.shot)
                            * np.clip(img, 0.0, 255.0))
            img += field * sigma
        np.clip(img, 0, 255, out=img)
        out = img.astype(np.uint8)
        if cfg.exposure:
            g = self.gamma_at(f)
            lut = np.clip(255.0 * (np.arange(256) / 255.0) ** g + 0.5, 0, 255).astype(np.uint8)
            out = np.asarray(cv2.LUT(out, lut), dtype=np.uint8)
        if cfg.jpeg_quality:
            ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
            if ok:
                dec = cv2.imdecode(buf, cv2.IMREAD_COLOR)
                if dec is not None:
                    out = np.asarray(dec, dtype=np.uint8)
        return out
