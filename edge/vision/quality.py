"""The quality gate: is this face worth embedding, and how good is it?

Three checks, in this order (the first failing one is the reason):

1. ``"too small"``: the smaller side of the detection box is under
   ``min_face_px`` pixels of ``Frame.image``.
2. ``"profile"``: the head is turned too far. Yaw is estimated from the
   detector's keypoints (RetinaFace's five points and BlazeFace's six both start
   with the right eye, the left eye and the nose tip): the nose tip's offset
   from the eye midpoint along the eye line, divided by the eye distance,
   turned into an angle with a nose-depth ratio of a typical adult head
   (:data:`NOSE_DEPTH`), and scaled to -1..1 (0 = frontal, 0.5 ~ 45 degrees,
   +-1 = full profile). The sign follows the direction from the subject's right
   eye to their left eye.
   Using the eye line makes it independent of roll; the aligner handles roll.
3. ``"blurred"``: the variance of the Laplacian of the grey face crop, resized
   to ``sharpness_size`` square first so that the measure does not depend on
   how many pixels the face has, is under ``min_sharpness``.

``Quality.score`` (0..1, higher is better) orders a track's frames best
first: it grows with the face size (up to ``ideal_face_px``), the sharpness
(up to ``3 * min_sharpness``, so sensor noise cannot win), frontality and the
detector's confidence. It is computed for failing faces too. Being a product, it
grows in proportion to the face's size below ``ideal_face_px``: the decider asks a
track's next embedded face to beat its best one by a ratio
(:mod:`edge.recognition.decide`).

Default thresholds were measured with ``sharpness_size`` 64 on
``../shared/data``: sharp face photos score 120-2000, the same faces blurred
with a Gaussian of sigma = face width / 20 score under 30; BlazeFace faces of
50-90 px in the Intel GIF clips score 20-320 (median 65-145; the low end is
real motion blur), blurred as above under 10. ``min_sharpness`` 40 sits
between. ``max_yaw`` 0.45 (about 40 degrees) keeps the dlib embedder in the
pose range it was trained for.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from edge.types import Detection, ImageU8, Points, Quality

NOSE_DEPTH = 0.55
"""Nose-tip protrusion in front of the eye centres, in eye distances (adult heads)."""

RIGHT_EYE, LEFT_EYE, NOSE_TIP = 0, 1, 2  # BlazeFace's and RetinaFace's keypoint order


def estimate_yaw(keypoints: Points) -> float:
    """Rough yaw in -1..1 from the keypoints (right eye, left eye, nose tip, ...).

    Model: turning the head by ``yaw`` shifts the nose tip, ``NOSE_DEPTH`` eye
    distances in front of the eyes, by about ``NOSE_DEPTH * d * tan(yaw)``
    along the eye line (``d``: the projected eye distance).
    Degenerate eyes (on top of each other) mean a full profile.
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    right, left, nose = kp[RIGHT_EYE], kp[LEFT_EYE], kp[NOSE_TIP]
    axis = left - right
    dist = float(np.hypot(axis[0], axis[1]))
    offset_vec = nose - (right + left) / 2.0
    if dist < 1e-6:
        along = float(np.hypot(offset_vec[0], offset_vec[1]))
        return 0.0 if along < 1e-6 else 1.0
    offset = float(np.dot(offset_vec, axis / dist))
    angle = math.atan2(offset, NOSE_DEPTH * dist)  # -pi/2 .. pi/2
    return float(np.clip(angle / (math.pi / 2.0), -1.0, 1.0))


def face_sharpness(
    image_bgr: ImageU8, box: tuple[float, float, float, float], size: int = 64
) -> float:
    """Variance of the Laplacian of the grey face crop resized to ``size`` x ``size``.

    The box is clipped to the image; a crop under 2 px either way scores 0.
    """
    h, w = image_bgr.shape[:2]
    x1 = max(0, math.floor(box[0]))
    y1 = max(0, math.floor(box[1]))
    x2 = min(w, math.ceil(box[2]))
    y2 = min(h, math.ceil(box[3]))
    if x2 - x1 < 2 or y2 - y1 < 2:
        return 0.0
    crop = image_bgr[y1:y2, x1:x2]
    grey = crop if crop.ndim == 2 else cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    shrinking = (x2 - x1) >= size and (y2 - y1) >= size
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    small = cv2.resize(grey, (size, size), interpolation=interp).astype(np.float32)
    lap = cv2.Laplacian(small, cv2.CV_32F)  # the classic 3x3 4-neighbour kernel
    return float(lap.var())


class QualityGate:
    """Decides which detections are good enough to align and embed."""

    def __init__(
        self,
        min_face_px: float = 40.0,
        min_sharpness: float = 40.0,
        max_yaw: float = 0.45,
        *,
        sharpness_size: int = 64,
        ideal_face_px: float = 112.0,
    ) -> None:
        if min_face_px < 0 or min_sharpness < 0 or sharpness_size < 8:
            raise ValueError("quality thresholds must be non-negative (sharpness_size >= 8)")
        if not 0.0 < max_yaw <= 1.0:
            raise ValueError("max_yaw must be in (0, 1]")
        self.min_face_px = min_face_px
        self.min_sharpness = min_sharpness
        self.max_yaw = max_yaw
        self.sharpness_size = sharpness_size
        self.ideal_face_px = max(ideal_face_px, min_face_px, 1.0)

    def assess(self, image_bgr: ImageU8, det: Detection) -> Quality:
        """The verdict for ``det`` (pixel coordinates of ``image_bgr``)."""
        face_px = float(max(0.0, min(det.width, det.height)))
        yaw = estimate_yaw(det.keypoints)
        sharpness = face_sharpness(image_bgr, det.box, self.sharpness_size)
        reason = ""
        if face_px < self.min_face_px:
            reason = "too small"
        elif abs(yaw) > self.max_yaw:
            reason = "profile"
        elif sharpness < self.min_sharpness:
            reason = "blurred"
        return Quality(
            ok=not reason,
            score=self.score(face_px, sharpness, yaw, det.score),
            face_px=face_px,
            sharpness=sharpness,
            yaw=yaw,
            reason=reason,
        )

    def score(self, face_px: float, sharpness: float, yaw: float, det_score: float) -> float:
        """0..1, higher is better; see the module doc."""
        size = min(1.0, face_px / self.ideal_face_px)
        sharp_ref = 3.0 * self.min_sharpness
        sharp = 1.0 if sharp_ref <= 0 else min(1.0, sharpness / sharp_ref)
        pose = 1.0 - min(1.0, abs(yaw))
        conf = min(1.0, max(0.0, det_score))
        return float(size * sharp * pose * conf)
