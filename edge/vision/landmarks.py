"""The five alignment points on the device: from the detector's points or the face mesh.

dlib's 5-point predictor is not available on the device, so the points an
embedder template needs are derived from what the TFLite models give:

* ``blazeface`` — BlazeFace's six keypoints (eyes, nose tip, mouth, ear
  tragions) mapped to dlib's five points by a linear regression fitted on
  dlib's own predictor outputs (``benchmarks/fit_landmarks.py``). Costs
  nothing beyond detection.
* ``retina`` — RetinaFace's five landmarks: ArcFace's template takes them as they
  are; dlib's five points come from a linear regression fitted the same way
  (``benchmarks/fit_retinaface_landmarks.py``, :mod:`edge.vision.landmark_fit_retina`).
* ``mesh`` — MediaPipe's 468-point face mesh (``face_landmark.tflite``),
  run on the rotated, 1.5x square crop MediaPipe derives from the detection
  (box centre, rotation from the eye keypoints), then the eye corners
  (33/133, 362/263) and nose base mapped to dlib's points by a fitted
  regression over a set of mesh points.

Both regressions work in an eye-aligned frame (origin between the eyes, x along
the eye line, unit = inter-ocular distance) so they are invariant to position,
scale and in-plane rotation. The coefficients live in
:mod:`edge.vision.landmark_fit` (generated, with the figures of the fit).

Point orders: ``dlib5`` = dlib's (0/1 outer/inner corner of the eye on the
image's right, 2/3 outer/inner corner of the eye on the image's left, 4 nose
base); ``arcface5`` = eye on the image's left, eye on the image's right,
nose tip, mouth corner left, mouth corner right.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Literal, Protocol

import cv2
import numpy as np
import numpy.typing as npt

from edge.errors import ModelError
from edge.types import Detection, ImageU8, Points
from edge.vision import landmark_fit, landmark_fit_retina
from edge.vision.runtime import TFLiteModel, shared_model

F64 = npt.NDArray[np.float64]
TemplateName = Literal["dlib5", "arcface5"]
LANDMARKERS = ("blazeface", "retina", "mesh", "mesh_raw")

# Face-mesh indices (MediaPipe canonical topology).
MESH_RIGHT_EYE_OUTER = 33  # subject's right eye = image left
MESH_RIGHT_EYE_INNER = 133
MESH_LEFT_EYE_INNER = 362
MESH_LEFT_EYE_OUTER = 263
MESH_NOSE_BASE = 2
MESH_NOSE_TIP = 1
MESH_MOUTH_LEFT = 61  # image left
MESH_MOUTH_RIGHT = 291
# Mesh points fed to the dlib5 regression (eye corners and lids, nose, mouth).
MESH_FEATURES: tuple[int, ...] = (
    33,
    133,
    362,
    263,
    2,
    1,
    4,
    94,
    168,
    6,
    61,
    291,
    159,
    145,
    386,
    374,
    98,
    327,
)
# The direct pick (no regression) for each dlib point.
MESH_DLIB5: tuple[int, ...] = (263, 362, 33, 133, 2)


def eye_frame(left_eye: F64, right_eye: F64) -> tuple[F64, F64, float]:
    """(origin, unit x-axis, inter-ocular distance) from the image-left and image-right eye."""
    origin = (left_eye + right_eye) / 2.0
    v = right_eye - left_eye
    d = float(np.hypot(v[0], v[1]))
    if d < 1e-6:
        return origin, np.array([1.0, 0.0]), 1.0
    return origin, v / d, d


def to_frame(pts: F64, origin: F64, axis: F64, scale: float) -> F64:
    rot = np.array([[axis[0], axis[1]], [-axis[1], axis[0]]])  # image -> frame
    out: F64 = ((pts - origin) @ rot.T) / scale
    return out


def from_frame(pts: F64, origin: F64, axis: F64, scale: float) -> F64:
    rot = np.array([[axis[0], -axis[1]], [axis[1], axis[0]]])  # frame -> image
    out: F64 = (pts * scale) @ rot.T + origin
    return out


def blazeface_features(kps: F64) -> tuple[F64, tuple[F64, F64, float]]:
    """(13,) features (6 keypoints in the eye frame + bias) and the frame."""
    frame = eye_frame(kps[0], kps[1])
    f = to_frame(kps, *frame).ravel()
    return np.concatenate([f, [1.0]]), frame


def mesh_features(mesh: F64) -> tuple[F64, tuple[F64, F64, float]]:
    """Features from the mesh points named in MESH_FEATURES (+ bias) and the frame."""
    left = (mesh[MESH_RIGHT_EYE_OUTER] + mesh[MESH_RIGHT_EYE_INNER]) / 2.0
    right = (mesh[MESH_LEFT_EYE_OUTER] + mesh[MESH_LEFT_EYE_INNER]) / 2.0
    frame = eye_frame(left, right)
    f = to_frame(mesh[list(MESH_FEATURES)], *frame).ravel()
    return np.concatenate([f, [1.0]]), frame


def apply_fit(features: F64, weights: F64, frame: tuple[F64, F64, float]) -> F64:
    pts = (features @ weights).reshape(-1, 2)
    return from_frame(pts, *frame)


def _weights(rows: tuple[tuple[float, ...], ...], n_in: int) -> F64:
    w = np.asarray(rows, dtype=np.float64)
    if w.shape != (n_in, 10):
        raise ModelError(
            f"edge/vision/landmark_fit.py has weights of shape {w.shape}, need ({n_in}, 10)"
        )
    return w


def arcface_from_blazeface(kps: F64) -> F64:
    """ArcFace's five points from BlazeFace keypoints (mouth corners approximated).

    The mouth corners are the mouth centre +- 0.415 inter-ocular vectors (the
    ratio of mouth width to eye distance in ArcFace's template).
    """
    eye_l, eye_r, nose, mouth = kps[0], kps[1], kps[2], kps[3]
    half = 0.415 * (eye_r - eye_l)
    return np.stack([eye_l, eye_r, nose, mouth - half, mouth + half])


def retina_features(p5: F64) -> tuple[F64, tuple[F64, F64, float]]:
    """(11,) features (RetinaFace's 5 points in the eye frame + bias) and the frame."""
    frame = eye_frame(p5[0], p5[1])
    return np.concatenate([to_frame(p5, *frame).ravel(), [1.0]]), frame


class Landmarker(Protocol):
    name: str

    def points(self, image_bgr: ImageU8, det: Detection, template: TemplateName) -> Points: ...


class BlazeFaceLandmarker:
    """dlib5 / arcface5 points from the detection's six keypoints (no extra model)."""

    name = "blazeface"

    def __init__(self) -> None:
        self.weights = _weights(landmark_fit.BLAZEFACE_WEIGHTS, 13)

    def points(self, image_bgr: ImageU8, det: Detection, template: TemplateName) -> Points:
        kps = np.asarray(det.keypoints, dtype=np.float64)
        if template == "arcface5":
            return arcface_from_blazeface(kps).astype(np.float32)
        feats, frame = blazeface_features(kps)
        return apply_fit(feats, self.weights, frame).astype(np.float32)


class RetinaLandmarker:
    """dlib5 / arcface5 points from RetinaFace's five landmarks (no extra model).

    A detection without them (a bare box, see ``FaceEngine.detection_from_box``) falls
    back to the six-keypoint regression."""

    name = "retina"

    def __init__(self) -> None:
        self.weights = _weights(landmark_fit_retina.RETINA_WEIGHTS, 11)
        self._fallback = BlazeFaceLandmarker()

    def points(self, image_bgr: ImageU8, det: Detection, template: TemplateName) -> Points:
        if det.points5 is None:
            return self._fallback.points(image_bgr, det, template)
        p5 = np.asarray(det.points5, dtype=np.float64)
        if template == "arcface5":
            return p5.astype(np.float32)
        feats, frame = retina_features(p5)
        return apply_fit(feats, self.weights, frame).astype(np.float32)


class MeshLandmarker:
    """dlib5 / arcface5 points from MediaPipe's 468-point face mesh."""

    name = "mesh"
    SIZE = 192
    SCALE = 1.5

    def __init__(
        self,
        model_path: str | Path,
        threads: int = 2,
        regress: bool = True,
        *,
        for_retinaface: bool = False,
    ) -> None:
        self.model: TFLiteModel = shared_model(model_path, threads)
        shape = self.model.input.shape
        if shape != (1, self.SIZE, self.SIZE, 3):
            raise ModelError(f"model file {model_path} is not the face mesh (input {shape})")
        outs = [i for i, o in enumerate(self.model.outputs) if int(np.prod(o.shape)) == 1404]
        if len(outs) != 1:
            raise ModelError(f"model file {model_path} has no 468x3 landmark output")
        self._out = outs[0]
        self.regress = regress
        n_in = 2 * len(MESH_FEATURES) + 1
        # RetinaFace's boxes are larger than BlazeFace's: a 1.25x crop of them gives the
        # mesh what a 1.5x crop of BlazeFace's does (held-out NME against dlib's points
        # 0.0345 vs 0.0351; 0.0588 at 1.5x; a regression refitted on those crops did not
        # do better: 0.0357). See edge/vision/landmark_fit_retina.py.
        self.scale = float(landmark_fit_retina.MESH_SCALE) if for_retinaface else self.SCALE
        self.weights = _weights(landmark_fit.MESH_WEIGHTS, n_in)
        self._buf = np.zeros((1, self.SIZE, self.SIZE, 3), dtype=np.float32)
        self._lock = threading.Lock()

    def roi(self, det: Detection) -> npt.NDArray[np.float64]:
        """2x3 affine from crop pixels to image pixels (MediaPipe's detection-to-ROI)."""
        x1, y1, x2, y2 = det.box
        cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
        k = det.keypoints
        angle = -math.atan2(-(float(k[1, 1]) - float(k[0, 1])), float(k[1, 0]) - float(k[0, 0]))
        side = max(x2 - x1, y2 - y1) * self.scale
        c, s = math.cos(angle), math.sin(angle)
        step = side / self.SIZE
        # image = centre + R(angle) @ ((u + 0.5) * step - side / 2, (v + 0.5) * step - side / 2)
        off = 0.5 * step - side / 2.0
        return np.array(
            [
                [c * step, -s * step, cx + c * off - s * off],
                [s * step, c * step, cy + s * off + c * off],
            ]
        )

    def mesh(self, image_bgr: ImageU8, det: Detection) -> F64:
        """The 468 mesh points (x, y) in image pixels."""
        m = self.roi(det)
        crop = cv2.warpAffine(
            image_bgr,
            m,
            (self.SIZE, self.SIZE),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=(0, 0, 0),
        )
        with self._lock:  # the input buffer is per landmarker
            np.multiply(crop[:, :, ::-1], 1.0 / 255.0, out=self._buf[0], casting="unsafe")
            raw = self.model.run(self._buf)[self._out]
        out = raw.reshape(468, 3)[:, :2].astype(np.float64)
        uv1 = np.concatenate([out - 0.5, np.ones((468, 1))], axis=1)  # pixel centres
        pts: F64 = uv1 @ m.T
        return pts

    def points(self, image_bgr: ImageU8, det: Detection, template: TemplateName) -> Points:
        mesh = self.mesh(image_bgr, det)
        if template == "arcface5":
            eye_l = (mesh[MESH_RIGHT_EYE_OUTER] + mesh[MESH_RIGHT_EYE_INNER]) / 2.0
            eye_r = (mesh[MESH_LEFT_EYE_OUTER] + mesh[MESH_LEFT_EYE_INNER]) / 2.0
            pts = np.stack(
                [eye_l, eye_r, mesh[MESH_NOSE_TIP], mesh[MESH_MOUTH_LEFT], mesh[MESH_MOUTH_RIGHT]]
            )
            return pts.astype(np.float32)
        if not self.regress:
            return mesh[list(MESH_DLIB5)].astype(np.float32)
        feats, frame = mesh_features(mesh)
        return apply_fit(feats, self.weights, frame).astype(np.float32)
