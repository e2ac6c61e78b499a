"""RetinaFace (MobileNet-0.25, WIDER FACE) face detection with five landmarks.

The model (biubug6's Pytorch_Retinaface, MIT licence; converted by
``models/build/retinaface.py``) is fully convolutional. Its TFLite files keep the
input's height and width dynamic (``shape_signature`` ``[1, -1, -1, 3]``): the
detector resizes the input tensor once, at load, to the configured size (both sides
multiples of 32), so one file serves 640x384 and 1280x736 alike.

Pre-processing, as the package the weights come from: BGR, the per-channel means
(104, 117, 127) subtracted, float32, here NHWC. The frame is scaled to fit the input
(aspect kept) and placed at the top-left corner; the rest of the tensor is zero (the
mean colour after subtraction).

Decoding (this module's own): priors at strides 8, 16 and 32 with two square sizes
each (16/32, 64/128, 256/512 px), in row-major cell order, the two sizes of a cell
adjacent; centre offsets and landmark offsets scaled by variance 0.1 times the prior
size, width and height by ``exp(0.2 * v)``. Scores are the softmax's face
probability. Overlapping boxes are suppressed with plain NMS at IoU 0.4.

Results are :class:`edge.types.Detection`: ``points5`` holds the five landmarks in
ArcFace order (the subject's right eye, left eye — image left to right — nose tip,
right and left mouth corners) and ``keypoints`` the same five points.
"""

from __future__ import annotations

import functools
import math
import threading
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from edge.errors import ModelError
from edge.types import Detection, ImageU8
from edge.vision.detect import non_max_suppression
from edge.vision.runtime import TFLiteModel, shared_model

F32 = npt.NDArray[np.float32]

MEAN_BGR = (104.0, 117.0, 127.0)
STRIDES = (8, 16, 32)
PRIOR_SIZES = ((16.0, 32.0), (64.0, 128.0), (256.0, 512.0))
VARIANCE_CENTRE = 0.1
VARIANCE_SIZE = 0.2
DEFAULT_INPUT = (640, 384)
DEFAULT_MIN_SCORE = 0.6
DEFAULT_IOU = 0.4
PRE_NMS_TOP_K = 1000


def check_input_size(size: tuple[int, int]) -> tuple[int, int]:
    """A (width, height) both positive multiples of 32, else ValueError."""
    w, h = (int(size[0]), int(size[1]))
    if w < 32 or h < 32 or w % 32 or h % 32:
        raise ValueError(f"RetinaFace input {w}x{h}: both sides must be multiples of 32")
    return w, h


@functools.lru_cache(maxsize=8)
def priors(width: int, height: int) -> F32:
    """(N, 4) priors (cx, cy, w, h) in input pixels, in the model's output order."""
    out = []
    for stride, sizes in zip(STRIDES, PRIOR_SIZES, strict=True):
        nx, ny = math.ceil(width / stride), math.ceil(height / stride)
        ys, xs = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        centres = (np.stack([xs.ravel(), ys.ravel()], axis=1) + 0.5) * stride
        per = np.repeat(centres, len(sizes), axis=0)
        wh = np.tile(np.array([[s, s] for s in sizes]), (nx * ny, 1))
        out.append(np.concatenate([per, wh], axis=1))
    p = np.concatenate(out).astype(np.float32)
    p.setflags(write=False)
    return p


def decode(loc: F32, landmarks: F32, pri: F32) -> tuple[F32, F32]:
    """Raw regressions -> boxes (N, 4: x1, y1, x2, y2) and points (N, 5, 2), input pixels."""
    centre = pri[:, :2] + loc[:, :2] * VARIANCE_CENTRE * pri[:, 2:]
    size = pri[:, 2:] * np.exp(loc[:, 2:] * VARIANCE_SIZE)
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    pts = pri[:, None, :2] + landmarks.reshape(-1, 5, 2) * VARIANCE_CENTRE * pri[:, None, 2:]
    return boxes.astype(np.float32), pts.astype(np.float32)


def raw_detections(
    loc: F32, conf: F32, landmarks: F32, width: int, height: int, min_score: float,
    iou_threshold: float = DEFAULT_IOU, top_k: int = PRE_NMS_TOP_K,
) -> list[tuple[F32, F32, float]]:
    """(box, points, score) in input pixels from the model's three outputs (batch dropped)."""
    pri = priors(width, height)
    if loc.shape != (len(pri), 4) or conf.shape != (len(pri), 2):
        raise ModelError(
            f"RetinaFace outputs {loc.shape}/{conf.shape} do not match {len(pri)} priors "
            f"of a {width}x{height} input"
        )
    scores = conf[:, 1]
    keep = np.flatnonzero(scores > min_score)
    if keep.size == 0:
        return []
    if keep.size > top_k:
        keep = keep[np.argsort(-scores[keep], kind="stable")[:top_k]]
    boxes, pts = decode(loc[keep], landmarks[keep], pri[keep])
    return non_max_suppression(boxes, pts, scores[keep].astype(np.float32), iou_threshold,
                               "plain")


def _outputs(model: TFLiteModel) -> tuple[int, int, int]:
    by_dim = {o.shape[-1]: i for i, o in enumerate(model.outputs)}
    if sorted(by_dim) != [2, 4, 10] or len(model.outputs) != 3:
        raise ModelError(
            f"model file {model.path}: outputs {[o.shape for o in model.outputs]} are not "
            "RetinaFace's (boxes 4, scores 2, landmarks 10)"
        )
    return by_dim[4], by_dim[2], by_dim[10]


class RetinaFaceDetector:
    """``detect(image_bgr)`` -> faces with five landmarks, in the image's pixels."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        threads: int = 2,
        input_size: tuple[int, int] = DEFAULT_INPUT,
        min_score: float | None = None,
        iou_threshold: float = DEFAULT_IOU,
        max_faces: int = 64,
    ) -> None:
        self.width, self.height = check_input_size(input_size)
        self.input_size = (self.width, self.height)
        self.model: TFLiteModel = shared_model(
            model_path, threads, input_shape=(1, self.height, self.width, 3)
        )
        shape = self.model.input.shape
        if len(shape) != 4 or shape[3] != 3:
            raise ModelError(f"model file {model_path} is not a RetinaFace detector ({shape})")
        # Output lengths behind the heads' Reshape(-1) are known only after a run: the
        # decoder checks them against the priors on every frame.
        self._loc, self._conf, self._landm = _outputs(self.model)
        self.min_score = DEFAULT_MIN_SCORE if min_score is None else float(min_score)
        self.iou_threshold = iou_threshold
        self.max_faces = max_faces
        self.size = max(self.width, self.height)  # what the pipeline reports as "input"
        self._buf = np.zeros((1, self.height, self.width, 3), dtype=np.float32)
        self._mean = np.array(MEAN_BGR, dtype=np.float32)
        self._lock = threading.Lock()

    def _prepare(self, image_bgr: ImageU8) -> float:
        """Scale into the reusable input buffer (top-left, aspect kept); returns the scale."""
        h, w = image_bgr.shape[:2]
        scale = min(self.width / w, self.height / h)
        nw = min(self.width, max(1, round(w * scale)))
        nh = min(self.height, max(1, round(h * scale)))
        resized: ImageU8 = image_bgr
        if (nw, nh) != (w, h):
            interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
            resized = np.asarray(cv2.resize(image_bgr, (nw, nh), interpolation=interp))
        buf = self._buf[0]
        buf[nh:, :, :] = 0.0
        buf[:nh, nw:, :] = 0.0
        np.subtract(resized, self._mean, out=buf[:nh, :nw], dtype=np.float32)
        return float(scale)

    def detect(self, image_bgr: ImageU8, min_score: float | None = None) -> list[Detection]:
        """Faces in ``image_bgr`` (HxWx3 uint8 BGR), best first."""
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.size == 0:
            raise ValueError(f"expected an HxWx3 image, got shape {image_bgr.shape}")
        thr = self.min_score if min_score is None else float(min_score)
        with self._lock:
            scale = self._prepare(image_bgr)
            outs = self.model.run(self._buf)
        found = raw_detections(outs[self._loc][0], outs[self._conf][0], outs[self._landm][0],
                               self.width, self.height, thr, self.iou_threshold)
        h, w = image_bgr.shape[:2]
        result: list[Detection] = []
        for box, pts, score in found[: self.max_faces]:
            bx = box / scale
            x1, y1 = float(np.clip(bx[0], 0, w)), float(np.clip(bx[1], 0, h))
            x2, y2 = float(np.clip(bx[2], 0, w)), float(np.clip(bx[3], 0, h))
            if x2 - x1 < 1 or y2 - y1 < 1:
                continue
            p5 = (pts / scale).astype(np.float32)
            result.append(Detection(box=(x1, y1, x2, y2), keypoints=p5, score=score, points5=p5))
        return result
