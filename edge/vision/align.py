"""Face alignment: five points -> an embedder's chip.

``dlib5`` reproduces dlib's ``get_face_chip_details(shape5, size, padding)``
followed by ``extract_image_chip`` (dlib/image_transforms/interpolation.h)
step by step, because the dlib ResNet is sensitive to the exact crop:

1. the 5-point template, padded: ``chip_pt = (padding + p) / (2 padding + 1) * size``;
2. a least-squares similarity (Umeyama, as ``find_similarity_transform``)
   from chip points to image points; its angle and scale ``s``;
3. ``rect = centered_drect(T(size/2, size/2), size*s, size*s)`` (dlib subtracts
   1 from the width and height);
4. if the rect, taken one ``pyramid_down<2>`` level down, is still larger than
   the chip, the image (cropped to the rotated rect grown by a border) is
   halved with dlib's 5x5 [1 4 6 4 1] filter, as often as needed, and the rect
   follows with ``point_down(p) = p/2 - (1.25, 0.75)``;
5. chip pixel (c, r) samples at the rect's rotated corner mapping
   ``tl + c/(size-1) (tr - tl) + r/(size-1) (bl - tl)``, bilinear, black
   when a 2x2 neighbourhood leaves the image, truncated to uint8.

``arcface5`` is the usual ArcFace 112x112 similarity warp to the five
reference points (eye centres, nose tip, mouth corners) with OpenCV.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from edge.types import Chip, ImageU8, Points
from edge.vision.families import EmbedderFamily

F64 = npt.NDArray[np.float64]

# dlib's 5-point template (dlib part order: 0/1 outer/inner corner of the eye on
# the image's right, 2/3 outer/inner corner of the eye on the image's left, 4 the
# base of the nose), normalised to the unit square.
DLIB5_TEMPLATE = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ],
    dtype=np.float64,
)

# ArcFace / InsightFace reference points for a 112x112 chip: eye on the image's
# left, eye on the image's right, nose tip, mouth corner left, mouth corner right.
ARCFACE5_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def umeyama(src: F64, dst: F64) -> tuple[F64, F64]:
    """Least-squares similarity ``dst ~ M @ src + t`` (Umeyama 1991); returns (M, t).

    Same estimator as dlib's ``find_similarity_transform`` (reflection guarded).
    """
    n = src.shape[0]
    mu_s = src.mean(axis=0)
    mu_d = dst.mean(axis=0)
    xs = src - mu_s
    xd = dst - mu_d
    var_s = float(np.sum(xs * xs)) / n
    cov = (xd.T @ xs) / n
    u, d, vt = np.linalg.svd(cov)
    sgn = np.eye(2)
    det_cov = np.linalg.det(cov)
    if det_cov < 0 or (det_cov == 0 and np.linalg.det(u) * np.linalg.det(vt) < 0):
        sgn[1, 1] = -1.0
    rot = u @ sgn @ vt
    scale = float(np.trace(np.diag(d) @ sgn)) / var_s if var_s > 0 else 1.0
    m = scale * rot
    t = mu_d - m @ mu_s
    return m, t


@dataclass(frozen=True, slots=True)
class ChipDetails:
    """dlib's ``chip_details``: a rotated rectangle in the image and the chip size."""

    left: float
    top: float
    right: float
    bottom: float
    angle: float
    size: int

    @property
    def width(self) -> float:
        return self.right - self.left + 1.0

    @property
    def area(self) -> float:
        return self.width * (self.bottom - self.top + 1.0)


def face_chip_details(points: Points, size: int = 150, padding: float = 0.25) -> ChipDetails:
    """dlib's ``get_face_chip_details`` for a 5-point shape (dlib's point order)."""
    pts = np.asarray(points, dtype=np.float64).reshape(5, 2)
    chip_pts = (padding + DLIB5_TEMPLATE) / (2.0 * padding + 1.0) * size
    m, t = umeyama(chip_pts, pts)
    px, py = m @ np.array([1.0, 0.0])
    angle = math.atan2(py, px)
    scale = math.hypot(px, py)
    centre = m @ np.array([size / 2.0, size / 2.0]) + t
    w = size * scale - 1.0  # centered_drect: width-- and height--
    return ChipDetails(
        left=float(centre[0] - w / 2),
        top=float(centre[1] - w / 2),
        right=float(centre[0] + w / 2),
        bottom=float(centre[1] + w / 2),
        angle=angle,
        size=size,
    )


def _rect_down(r: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = r
    return (x0 / 2.0 - 1.25, y0 / 2.0 - 0.75, x1 / 2.0 - 1.25, y1 / 2.0 - 0.75)


def _area(r: tuple[float, float, float, float]) -> float:
    w = r[2] - r[0] + 1.0
    h = r[3] - r[1] + 1.0
    if w <= 0 or h <= 0:
        return 0.0
    return w * h


def pyramid_down2(img: ImageU8) -> ImageU8:
    """dlib's ``pyramid_down<2>`` on an RGB uint8 image (5x5 [1 4 6 4 1]^2/256, truncated)."""
    nr, nc = img.shape[:2]
    if nr <= 8 or nc <= 8:
        return np.zeros((0, 0, 3), dtype=np.uint8)
    oc = (nc - 3) // 2
    orr = (nr - 3) // 2
    x = img.astype(np.uint32)
    # row filter: temp[r, c] = sum_k w_k img[r, 2c + k]
    temp = (
        x[:, 0 : 2 * oc : 2]
        + 4 * x[:, 1 : 2 * oc + 1 : 2]
        + 6 * x[:, 2 : 2 * oc + 2 : 2]
        + 4 * x[:, 3 : 2 * oc + 3 : 2]
        + x[:, 4 : 2 * oc + 4 : 2]
    )
    # column filter at rows r = 2, 4, ..., r < nr - 2 (rows r-2 .. r+2)
    down = (
        temp[0 : 2 * orr : 2]
        + 4 * temp[1 : 2 * orr + 1 : 2]
        + 6 * temp[2 : 2 * orr + 2 : 2]
        + 4 * temp[3 : 2 * orr + 3 : 2]
        + temp[4 : 2 * orr + 4 : 2]
    )
    out: ImageU8 = (down // 256).astype(np.uint8)
    return out


def _rotate(centre: F64, p: F64, angle: float) -> F64:
    c, s = math.cos(angle), math.sin(angle)
    d = p - centre
    return np.array([c * d[0] - s * d[1], s * d[0] + c * d[1]]) + centre


def bilinear_sample(img: ImageU8, xs: F64, ys: F64) -> ImageU8:
    """dlib's ``interpolate_bilinear`` at (xs, ys); black where it leaves the image.

    Same arithmetic as dlib (double precision, the same expression order, then
    truncation to uint8) so the result is bit-identical.
    """
    h, w = img.shape[:2]
    left = np.floor(xs).astype(np.int64)
    top = np.floor(ys).astype(np.int64)
    ok = (left >= 0) & (top >= 0) & (left + 1 < w) & (top + 1 < h)
    idx = np.where(ok, top * w + left, 0).ravel()
    flat = np.ascontiguousarray(img).reshape(-1, 3)
    tl = flat[idx].astype(np.float64)
    tr = flat[idx + 1].astype(np.float64)
    bl = flat[idx + w].astype(np.float64)
    br = flat[idx + w + 1].astype(np.float64)
    fx = (xs - left).reshape(-1, 1)
    fy = (ys - top).reshape(-1, 1)
    gx = 1 - fx
    val = (1 - fy) * (gx * tl + fx * tr) + fy * (gx * bl + fx * br)
    out: ImageU8 = val.astype(np.uint8).reshape(*xs.shape, 3)  # in [0, 255]: truncation
    out[~ok] = 0
    return out


def extract_image_chip(img_rgb: ImageU8, det: ChipDetails) -> ImageU8:
    """dlib's ``extract_image_chip`` with bilinear interpolation (rotated, pyramid)."""
    size = det.size
    chip_area = float(size * size)
    rect = (det.left, det.top, det.right, det.bottom)
    h, w = img_rgb.shape[:2]
    # pyramid depth and the border grown around the rotated rect
    depth = 0
    grow = 2.0
    r = _rect_down(rect)
    while _area(r) > chip_area:
        r = _rect_down(r)
        depth += 1
        grow = grow * 2 + 2
    cx, cy = (rect[0] + rect[2]) / 2.0, (rect[1] + rect[3]) / 2.0
    centre = np.array([cx, cy])
    corners = [
        np.array([rect[0], rect[1]]),
        np.array([rect[2], rect[1]]),
        np.array([rect[0], rect[3]]),
        np.array([rect[2], rect[3]]),
    ]
    rot = np.array([_rotate(centre, c, det.angle) for c in corners])
    bl_, bt_ = rot[:, 0].min() - grow, rot[:, 1].min() - grow
    br_, bb_ = rot[:, 0].max() + grow, rot[:, 1].max() + grow
    # intersect with the image, then drectangle -> rectangle rounds (floor(x + 0.5))
    bl_, bt_ = max(bl_, 0.0), max(bt_, 0.0)
    br_, bb_ = min(br_, w - 1.0), min(bb_, h - 1.0)
    bx0, by0 = math.floor(bl_ + 0.5), math.floor(bt_ + 0.5)
    bx1, by1 = math.floor(br_ + 0.5), math.floor(bb_ + 0.5)
    if bx1 < bx0 or by1 < by0:
        return np.zeros((size, size, 3), dtype=np.uint8)
    sub = img_rgb[by0 : by1 + 1, bx0 : bx1 + 1]
    # level to sample from, and the rect in its coordinates
    lrect = (rect[0] - bx0, rect[1] - by0, rect[2] - bx0, rect[3] - by0)
    level = -1
    while _area(_rect_down(lrect)) > chip_area:
        level += 1
        lrect = _rect_down(lrect)
    source = sub
    for _ in range(level + 1):
        source = pyramid_down2(source)
    lc = np.array([(lrect[0] + lrect[2]) / 2.0, (lrect[1] + lrect[3]) / 2.0])
    tl = _rotate(lc, np.array([lrect[0], lrect[1]]), det.angle)
    tr = _rotate(lc, np.array([lrect[2], lrect[1]]), det.angle)
    bl = _rotate(lc, np.array([lrect[0], lrect[3]]), det.angle)
    n = float(size - 1)
    cc, rr = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64))
    xs = tl[0] + cc / n * (tr[0] - tl[0]) + rr / n * (bl[0] - tl[0])
    ys = tl[1] + cc / n * (tr[1] - tl[1]) + rr / n * (bl[1] - tl[1])
    if source.size == 0:
        return np.zeros((size, size, 3), dtype=np.uint8)
    return bilinear_sample(source, xs, ys)


def dlib_face_chip(
    image_rgb: ImageU8, points: Points, size: int = 150, padding: float = 0.25
) -> ImageU8:
    """The equivalent of ``dlib.get_face_chip(image_rgb, shape5, size, padding)``."""
    return extract_image_chip(image_rgb, face_chip_details(points, size, padding))


def arcface_chip(image_bgr: ImageU8, points: Points, size: int = 112) -> ImageU8:
    """ArcFace alignment: similarity warp of 5 points onto the reference (RGB out)."""
    pts = np.asarray(points, dtype=np.float64).reshape(5, 2)
    ref = ARCFACE5_TEMPLATE * (size / 112.0)
    m, t = umeyama(pts, ref)
    mat = np.hstack([m, t[:, None]])
    warped = cv2.warpAffine(
        image_bgr, mat, (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0)
    )
    rgb: ImageU8 = np.ascontiguousarray(warped[:, :, ::-1])
    return rgb


class Aligner:
    """Aligns a face for one embedder family: ``align(image_bgr, points) -> Chip``.

    ``points`` are the five points of the family's template, in image pixels:
    dlib's order for ``dlib5``, ArcFace's for ``arcface5``.
    """

    def __init__(self, family: EmbedderFamily) -> None:
        self.family = family

    def align(self, image_bgr: ImageU8, points: Points) -> Chip:
        size = self.family.input_size
        if self.family.template == "dlib5":
            rgb_full = image_bgr[:, :, ::-1]
            chip = dlib_face_chip(rgb_full, points, size, self.family.padding)
        else:
            chip = arcface_chip(image_bgr, points, size)
        return Chip(rgb=chip, landmarks=np.asarray(points, dtype=np.float32).copy())
