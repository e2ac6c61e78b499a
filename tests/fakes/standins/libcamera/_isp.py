"""The simulated ISP's output: one scene in pixel-array coordinates, rendered per stream.

The scene is a gradient (blue rises downwards, green rightwards) with a pure red square
that moves with the frame sequence; :func:`render` writes one stream's buffer as the ISP
does (``RGB888`` BGR in memory, rows padded to the stride; ``YUV420`` planar, encoded with
the stream's colour space: the Rec.601 or Rec.709 matrix, limited or full range).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from libcamera._sensor import CameraHardware

PAD_BYTE = 0xAA
SQUARE_SIDE = 0.2  # of the pixel array's height
BYTES_PER_PIXEL = {"RGB888": 3, "BGR888": 3, "XBGR8888": 4, "XRGB8888": 4}


def square_centre(hw: CameraHardware, sequence: int) -> tuple[float, float]:
    """Where the red square is in pixel-array coordinates at frame ``sequence``."""
    pw, ph = hw.model.pixel_array
    return pw * (0.3 + 0.4 * ((sequence * 3) % 50) / 50), ph / 2


def scene(hw: CameraHardware, size: tuple[int, int], sequence: int) -> np.ndarray:
    """The BGR picture the ISP makes of the current crop at ``size``."""
    w, h = size
    x0, y0, cw, ch = hw.crop
    xs = x0 + (np.arange(w, dtype=np.float32) + 0.5) * (cw / w)
    ys = y0 + (np.arange(h, dtype=np.float32) + 0.5) * (ch / h)
    pw, ph = hw.model.pixel_array
    image = np.empty((h, w, 3), np.uint8)
    image[..., 0] = (64 + 128 * ys / ph)[:, None].astype(np.uint8)  # blue rises downwards
    image[..., 1] = (32 + 160 * xs / pw)[None, :].astype(np.uint8)  # green rises rightwards
    image[..., 2] = 40
    cx, cy = square_centre(hw, sequence)
    half = SQUARE_SIDE * ph / 2
    inside = (np.abs(ys - cy) <= half)[:, None] & (np.abs(xs - cx) <= half)[None, :]
    image[inside] = (0, 0, 255)  # pure red, BGR
    orientation = getattr(hw, "orientation", None)
    name = orientation.name if orientation is not None else "Rotate0"
    if name in ("Rotate0Mirror", "Rotate180"):
        image = image[:, ::-1]
    if name in ("Rotate180Mirror", "Rotate180"):
        image = image[::-1]
    return np.ascontiguousarray(image)


# (Kr, Kb) of the Y'CbCr matrices
_MATRICES = {"Rec601": (0.299, 0.114), "Rec709": (0.2126, 0.0722)}


def bgr_to_yuv(image: np.ndarray, encoding: str, full_range: bool) -> tuple[np.ndarray, ...]:
    """Y, U, V planes (U, V subsampled 2x2) of a BGR image, as the ISP encodes them."""
    kr, kb = _MATRICES[encoding]
    f = image.astype(np.float32) / 255.0
    b, g, r = f[..., 0], f[..., 1], f[..., 2]
    y = kr * r + (1 - kr - kb) * g + kb * b
    u = (b - y) / (2 * (1 - kb))
    v = (r - y) / (2 * (1 - kr))
    if full_range:
        yq, uq, vq = y * 255, u * 255 + 128, v * 255 + 128
    else:
        yq, uq, vq = 16 + 219 * y, 128 + 224 * u, 128 + 224 * v
    h, w = y.shape
    sub = lambda p: p.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))  # noqa: E731
    planes = (yq, sub(uq), sub(vq))
    return tuple(np.clip(np.rint(p), 0, 255).astype(np.uint8) for p in planes)


def render(hw: CameraHardware, config: Any, sequence: int) -> bytes:
    """One stream's buffer as the ISP writes it (rows padded to the stride)."""
    fmt = str(config.pixel_format)
    w, h, stride = config.size.width, config.size.height, config.stride
    if config.role.name == "Raw":
        return bytes(config.frame_size)
    image = scene(hw, (w, h), sequence)
    if fmt in BYTES_PER_PIXEL:
        if fmt in ("BGR888", "XRGB8888"):  # named by the word layout: RGB in memory is BGR888
            image = image[..., ::-1] if fmt == "BGR888" else image
        if fmt == "XBGR8888":
            image = image[..., ::-1]
        if BYTES_PER_PIXEL[fmt] == 4:
            image = np.concatenate([image, np.full((h, w, 1), 255, np.uint8)], axis=2)
        rows = np.full((h, stride), PAD_BYTE, np.uint8)
        rows[:, : w * BYTES_PER_PIXEL[fmt]] = image.reshape(h, -1)
        return rows.tobytes()
    cs = config.color_space
    y, u, v = bgr_to_yuv(image, cs.ycbcrEncoding.name, cs.range.name == "Full")
    if fmt == "YVU420":
        u, v = v, u
    out = np.full(stride * h * 3 // 2, PAD_BYTE, np.uint8)
    out[: stride * h].reshape(h, stride)[:, :w] = y
    half = stride // 2
    quarter = half * (h // 2)
    out[stride * h : stride * h + quarter].reshape(h // 2, half)[:, : w // 2] = u
    out[stride * h + quarter :].reshape(h // 2, half)[:, : w // 2] = v
    return out.tobytes()
