"""BlazeFace face detection (MediaPipe's short- and full-range TFLite models).

The image is letterboxed (aspect kept, black padding split evenly) to the
model's square input, RGB, scaled to [-1, 1]. Outputs are decoded against SSD
anchors generated exactly as MediaPipe's ``SsdAnchorsCalculator`` does for each
variant, scores go through a sigmoid (logits clipped to +-100), and
overlapping boxes are merged with MediaPipe's weighted non-maximum suppression
(or plain NMS). Results are :class:`edge.types.Detection` in pixels of the
image passed in.

Variants (from MediaPipe's graphs ``face_detection_short_range.pbtxt`` and
``face_detection_full_range.pbtxt``):

* short range: 128x128, strides 8, 16, 16, 16, two anchors per cell per layer
  (16x16x2 + 8x8x6 = 896), min score 0.5;
* full range: 192x192, one layer of stride 4, one anchor per cell
  (48x48 = 2304), min score 0.6.

Both use fixed-size anchors (w = h = 1), offset 0.5, box/keypoint scale equal
to the input size and weighted NMS at IoU 0.3.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import cv2
import numpy as np
import numpy.typing as npt

from edge.errors import ModelError
from edge.types import Detection, ImageU8
from edge.vision.runtime import TFLiteModel, shared_model

F32 = npt.NDArray[np.float32]
NmsKind = Literal["weighted", "plain"]


@dataclass(frozen=True, slots=True)
class AnchorOptions:
    input_size: int
    num_layers: int
    min_scale: float
    max_scale: float
    strides: tuple[int, ...]
    aspect_ratios: tuple[float, ...] = (1.0,)
    interpolated_scale_aspect_ratio: float = 1.0
    anchor_offset: float = 0.5
    reduce_boxes_in_lowest_layer: bool = False


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    anchors: AnchorOptions
    min_score: float
    num_anchors: int


SHORT_RANGE = Variant(
    name="short",
    anchors=AnchorOptions(
        input_size=128,
        num_layers=4,
        min_scale=0.1484375,
        max_scale=0.75,
        strides=(8, 16, 16, 16),
        interpolated_scale_aspect_ratio=1.0,
    ),
    min_score=0.5,
    num_anchors=896,
)
FULL_RANGE = Variant(
    name="full",
    anchors=AnchorOptions(
        input_size=192,
        num_layers=1,
        min_scale=0.1484375,
        max_scale=0.75,
        strides=(4,),
        interpolated_scale_aspect_ratio=0.0,
    ),
    min_score=0.6,
    num_anchors=2304,
)
VARIANTS = {v.anchors.input_size: v for v in (SHORT_RANGE, FULL_RANGE)}


def ssd_anchors(opt: AnchorOptions) -> F32:
    """Anchor centres (N, 2) in [0, 1] as MediaPipe's SsdAnchorsCalculator makes them.

    With ``fixed_anchor_size`` (true for BlazeFace) every anchor has w = h = 1,
    so only the number of anchors per cell matters: one per aspect ratio per
    layer sharing a stride, plus one interpolated anchor when
    ``interpolated_scale_aspect_ratio > 0`` (or three in a reduced lowest layer).
    """
    centres: list[F32] = []
    layer = 0
    n = len(opt.strides)
    while layer < opt.num_layers:
        per_cell = 0
        last = layer
        while last < n and opt.strides[last] == opt.strides[layer]:
            if last == 0 and opt.reduce_boxes_in_lowest_layer:
                per_cell += 3
            else:
                per_cell += len(opt.aspect_ratios)
                if opt.interpolated_scale_aspect_ratio > 0.0:
                    per_cell += 1
            last += 1
        stride = opt.strides[layer]
        fm = math.ceil(opt.input_size / stride)
        ys, xs = np.meshgrid(np.arange(fm), np.arange(fm), indexing="ij")
        cx = (xs.astype(np.float32) + opt.anchor_offset) / fm
        cy = (ys.astype(np.float32) + opt.anchor_offset) / fm
        cell = np.stack([cx.ravel(), cy.ravel()], axis=1)
        centres.append(np.repeat(cell, per_cell, axis=0).astype(np.float32))
        layer = last
    return np.concatenate(centres, axis=0)


def _iou_one(box: F32, boxes: F32) -> F32:
    ix1 = np.maximum(box[0], boxes[:, 0])
    iy1 = np.maximum(box[1], boxes[:, 1])
    ix2 = np.minimum(box[2], boxes[:, 2])
    iy2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    iou: F32 = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float32)
    return iou


def non_max_suppression(
    boxes: F32, keypoints: F32, scores: F32, iou_threshold: float, kind: NmsKind = "weighted"
) -> list[tuple[F32, F32, float]]:
    """MediaPipe-style NMS over (N, 4) boxes, (N, K, 2) keypoints and (N,) scores.

    ``weighted``: the best remaining detection absorbs every detection whose
    IoU with it exceeds the threshold; box and keypoints become the
    score-weighted mean of the group, the score stays the best one's.
    ``plain``: overlapping detections are dropped.
    """
    order = np.argsort(-scores, kind="stable")
    out: list[tuple[F32, F32, float]] = []
    while order.size:
        top = order[0]
        iou = _iou_one(boxes[top], boxes[order])
        group = order[iou > iou_threshold]
        rest = order[iou <= iou_threshold]
        if kind == "weighted" and group.size > 1:
            w = scores[group]
            total = float(np.sum(w))
            box = (np.sum(boxes[group] * w[:, None], axis=0) / total).astype(np.float32)
            kps = (np.sum(keypoints[group] * w[:, None, None], axis=0) / total).astype(np.float32)
        else:
            box, kps = boxes[top].copy(), keypoints[top].copy()
        out.append((box, kps, float(scores[top])))
        order = rest if group.size else order[1:]
    return out


class Detector:
    """A BlazeFace detector; ``detect(image_bgr)`` returns detections in its pixels."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        threads: int = 2,
        min_score: float | None = None,
        iou_threshold: float = 0.3,
        nms: NmsKind = "weighted",
        max_faces: int = 64,
    ) -> None:
        self.model: TFLiteModel = shared_model(model_path, threads)
        shape = self.model.input.shape
        if len(shape) != 4 or shape[1] != shape[2] or shape[1] not in VARIANTS:
            raise ModelError(f"model file {model_path} is not a BlazeFace detector ({shape})")
        self.variant = VARIANTS[shape[1]]
        self.size = shape[1]
        self.anchors = ssd_anchors(self.variant.anchors)
        outs = self.model.outputs
        reg = [i for i, o in enumerate(outs) if o.shape[-1] == 16]
        cls = [i for i, o in enumerate(outs) if o.shape[-1] == 1]
        if len(reg) != 1 or len(cls) != 1 or outs[reg[0]].shape[1] != len(self.anchors):
            raise ModelError(
                f"model file {model_path}: outputs {[o.shape for o in outs]} do not match "
                f"{self.variant.name}-range BlazeFace ({len(self.anchors)} anchors)"
            )
        self._reg, self._cls = reg[0], cls[0]
        self.min_score = self.variant.min_score if min_score is None else float(min_score)
        self.iou_threshold = iou_threshold
        self.nms: NmsKind = nms
        self.max_faces = max_faces
        self._buf = np.zeros((1, self.size, self.size, 3), dtype=np.float32)
        self._lock = threading.Lock()

    def _prepare(self, image_bgr: ImageU8) -> tuple[float, float, float]:
        """Letterbox into the reusable input buffer; returns (scale, pad_x, pad_y)."""
        h, w = image_bgr.shape[:2]
        s = self.size
        scale = min(s / w, s / h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        px, py = (s - nw) // 2, (s - nh) // 2
        interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
        resized = cv2.resize(image_bgr, (nw, nh), interpolation=interp)
        buf = self._buf[0]
        buf.fill(-1.0)
        rgb = resized[:, :, ::-1].astype(np.float32)
        buf[py : py + nh, px : px + nw] = rgb * (2.0 / 255.0) - 1.0
        return scale, float(px), float(py)

    def detect(self, image_bgr: ImageU8, min_score: float | None = None) -> list[Detection]:
        """Faces in ``image_bgr`` (HxWx3 uint8 BGR), best first."""
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.size == 0:
            raise ValueError(f"expected an HxWx3 image, got shape {image_bgr.shape}")
        thr = self.min_score if min_score is None else float(min_score)
        with self._lock:  # the input buffer is per detector
            scale, px, py = self._prepare(image_bgr)
            outs = self.model.run(self._buf)
        raw = outs[self._reg][0]
        logits = np.clip(outs[self._cls][0, :, 0].astype(np.float64), -100.0, 100.0)
        scores = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
        keep = np.flatnonzero(scores > thr)
        if keep.size == 0:
            return []
        s = float(self.size)
        a = self.anchors[keep]
        r = raw[keep]
        cx = r[:, 0] / s + a[:, 0]
        cy = r[:, 1] / s + a[:, 1]
        bw = r[:, 2] / s
        bh = r[:, 3] / s
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
        kps = r[:, 4:16].reshape(-1, 6, 2) / s + a[:, None, :]
        merged = non_max_suppression(
            boxes.astype(np.float32),
            kps.astype(np.float32),
            scores[keep],
            self.iou_threshold,
            self.nms,
        )
        h, w = image_bgr.shape[:2]
        result: list[Detection] = []
        for box, kp, score in merged[: self.max_faces]:
            # normalised letterbox coords -> input-image pixels
            bx = (box * s - np.array([px, py, px, py], dtype=np.float32)) / scale
            kpx = ((kp * s - np.array([px, py], dtype=np.float32)) / scale).astype(np.float32)
            x1 = float(np.clip(bx[0], 0, w))
            y1 = float(np.clip(bx[1], 0, h))
            x2 = float(np.clip(bx[2], 0, w))
            y2 = float(np.clip(bx[3], 0, h))
            if x2 - x1 < 1 or y2 - y1 < 1:
                continue
            result.append(Detection(box=(x1, y1, x2, y2), keypoints=kpx, score=score))
        return result


class _Detects(Protocol):
    def detect(self, image_bgr: ImageU8, min_score: float | None = None) -> list[Detection]: ...


def tile_rects(
    width: int, height: int, cols: int, rows: int, overlap: float = 0.25
) -> list[tuple[int, int, int, int]]:
    """``cols`` x ``rows`` tiles (x1, y1, x2, y2) covering the frame, each pair of
    neighbours sharing ``overlap`` of a tile's width/height."""
    if cols < 1 or rows < 1 or not 0.0 <= overlap < 1.0:
        raise ValueError("need cols, rows >= 1 and 0 <= overlap < 1")
    tw = width / (cols - (cols - 1) * overlap)
    th = height / (rows - (rows - 1) * overlap)
    rects = []
    for r in range(rows):
        for c in range(cols):
            x1 = round(c * tw * (1 - overlap))
            y1 = round(r * th * (1 - overlap))
            rects.append((x1, y1, min(width, round(x1 + tw)), min(height, round(y1 + th))))
    return rects


def detect_tiled(
    detector: _Detects,
    image_bgr: ImageU8,
    grid: tuple[int, int],
    *,
    overlap: float = 0.25,
    iou_threshold: float = 0.3,
    edge_px: float = 2.0,
    min_score: float | None = None,
) -> list[Detection]:
    """Detect on the whole frame and on overlapping tiles, then merge.

    BlazeFace sees its input at 192x192 (full range): a 1280x720 frame shrinks a
    70 px face to 10 px, below what it finds reliably. Each tile of a 2x2 grid is
    shown at about twice that scale. A detection that touches a tile's inner edge
    is a face cut by the tile (its whole self is in a neighbour), so it is dropped;
    the rest are merged with plain NMS, the best score winning.
    """
    h, w = image_bgr.shape[:2]
    found = list(detector.detect(image_bgr, min_score))
    cols, rows = grid
    if cols * rows > 1:
        for x1, y1, x2, y2 in tile_rects(w, h, cols, rows, overlap):
            for d in detector.detect(image_bgr[y1:y2, x1:x2], min_score):
                bx1, by1, bx2, by2 = d.box
                cut = ((x1 > 0 and bx1 <= edge_px) or (y1 > 0 and by1 <= edge_px)
                       or (x2 < w and bx2 >= (x2 - x1) - edge_px)
                       or (y2 < h and by2 >= (y2 - y1) - edge_px))
                if cut:
                    continue
                off = np.array([x1, y1], dtype=np.float32)
                p5 = None if d.points5 is None else (d.points5 + off).astype(np.float32)
                found.append(Detection((bx1 + x1, by1 + y1, bx2 + x1, by2 + y1),
                                       (d.keypoints + off).astype(np.float32), d.score, p5))
    if len(found) < 2:
        return found
    boxes = np.array([d.box for d in found], dtype=np.float32)
    scores = np.array([d.score for d in found], dtype=np.float32)
    # Keep each survivor's own detection (with its points5): plain NMS keeps boxes as they are.
    order = np.argsort(-scores, kind="stable")
    kept: list[Detection] = []
    for i in order:
        if all(_iou_one(boxes[i], np.array([k.box], dtype=np.float32))[0] <= iou_threshold
               for k in kept):
            kept.append(found[int(i)])
    return kept
