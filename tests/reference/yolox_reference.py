#!/usr/bin/env python3
"""Reference YOLOX-Nano detector (Python + onnxruntime) for skynet's Rust tests.

This script was used once to compute the expected detections in
``tests/fixtures/dog_expected.json``, which the Rust detector test compares
against.  It is not part of the build and is not run by ``cargo test``; keep
it so the fixture can be regenerated and audited.

It implements exactly the pre- and post-processing that the Rust code is
expected to reproduce:

* Preprocessing (letterbox): ``r = min(416/h, 416/w)``; resize the BGR image
  to ``(int(w*r), int(h*r))`` with ``cv2.INTER_LINEAR``; paste it at the
  top-left of a 416x416 canvas filled with 114; HWC -> CHW float32, values
  0-255, no normalisation, BGR channel order.
* Model output ``output`` [1, 3549, 85]: cx, cy, w, h (raw), objectness,
  80 COCO class scores (objectness and class scores are already
  probabilities).  Decode over the grids of strides 8, 16, 32 in that order:
  ``xy = (raw + grid) * stride``, ``wh = exp(raw) * stride``.
* Postprocessing: per anchor take the best class (argmax of the class
  scores), ``score = objectness * class_score``; keep ``score >= threshold``
  (0.3); class-aware greedy NMS at IoU 0.45 (highest score first, suppress
  only boxes of the same class); boxes to x1,y1,x2,y2, divided by ``r``
  (source-image pixels) and clipped to the image bounds.

Output: one JSON object per line and image::

    {"image": PATH, "detections": [{"label": "dog", "score": 0.87,
                                    "box": [x1, y1, x2, y2]}, ...]}

with scores rounded to 4 decimals, boxes to 2 decimals, detections sorted by
descending score.

To rerun (from the repository root)::

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install onnxruntime==1.32.0 numpy opencv-python-headless
    /tmp/refvenv/bin/python tests/reference/yolox_reference.py \\
        --model /work/shared/models/yolox_nano.onnx /work/shared/media/dog.jpg

The fixture additionally records "image" as the basename, the model's
sha256, the threshold, the NMS IoU and the generator; those keys were added
around this script's output line.
"""

import argparse
import json
import sys

import cv2
import numpy as np
import onnxruntime as ort

INPUT_SIZE = 416          # model input is 416x416
PAD_VALUE = 114           # letterbox fill value
STRIDES = (8, 16, 32)     # grid strides, in the order of the output rows
NMS_IOU = 0.45            # class-aware NMS IoU threshold

COCO_LABELS = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train",
    "truck", "boat", "traffic light", "fire hydrant", "stop sign",
    "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag",
    "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon",
    "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot",
    "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
]
assert len(COCO_LABELS) == 80


def preprocess(img_bgr):
    """Letterbox a BGR uint8 image; return (tensor [1,3,416,416] f32, r)."""
    h, w = img_bgr.shape[:2]
    r = min(INPUT_SIZE / h, INPUT_SIZE / w)
    new_w, new_h = int(w * r), int(h * r)
    resized = cv2.resize(img_bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((INPUT_SIZE, INPUT_SIZE, 3), PAD_VALUE, dtype=np.uint8)
    canvas[:new_h, :new_w] = resized          # top-left placement
    tensor = canvas.transpose(2, 0, 1).astype(np.float32)[None]  # HWC -> NCHW
    return np.ascontiguousarray(tensor), r


def make_grids():
    """Per-anchor (grid_x, grid_y, stride) for strides 8, 16, 32 in order."""
    grids, strides = [], []
    for s in STRIDES:
        n = INPUT_SIZE // s
        ys, xs = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        grids.append(np.stack([xs, ys], axis=-1).reshape(-1, 2))  # row-major
        strides.append(np.full((n * n, 1), s))
    return (np.concatenate(grids).astype(np.float32),
            np.concatenate(strides).astype(np.float32))


GRIDS, GRID_STRIDES = make_grids()   # (3549, 2), (3549, 1)


def iou_one_to_many(box, boxes):
    """IoU of one x1,y1,x2,y2 box against an (N,4) array."""
    ix1 = np.maximum(box[0], boxes[:, 0])
    iy1 = np.maximum(box[1], boxes[:, 1])
    ix2 = np.minimum(box[2], boxes[:, 2])
    iy2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def nms_class_aware(boxes, scores, classes, iou_thr=NMS_IOU):
    """Greedy NMS, highest score first; only same-class boxes suppress."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    suppressed = np.zeros(len(scores), dtype=bool)
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[pos + 1:]
        rest = rest[(~suppressed[rest]) & (classes[rest] == classes[i])]
        if len(rest):
            suppressed[rest[iou_one_to_many(boxes[i], boxes[rest]) > iou_thr]] = True
    return keep


def postprocess(raw, r, img_w, img_h, threshold):
    """Decode the raw [3549, 85] output into a list of detection dicts."""
    xy = (raw[:, 0:2] + GRIDS) * GRID_STRIDES
    wh = np.exp(raw[:, 2:4]) * GRID_STRIDES
    obj = raw[:, 4]
    cls_scores = raw[:, 5:]
    cls = np.argmax(cls_scores, axis=1)
    scores = obj * cls_scores[np.arange(len(cls)), cls]

    mask = scores >= threshold
    xy, wh, scores, cls = xy[mask], wh[mask], scores[mask], cls[mask]
    # Boxes in letterboxed-input pixels (NMS runs here; dividing by r is a
    # uniform scale and does not change IoU).
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1)

    dets = []
    for i in nms_class_aware(boxes, scores, cls):
        b = boxes[i] / r
        b = [min(max(float(b[0]), 0.0), img_w), min(max(float(b[1]), 0.0), img_h),
             min(max(float(b[2]), 0.0), img_w), min(max(float(b[3]), 0.0), img_h)]
        dets.append({"label": COCO_LABELS[int(cls[i])],
                     "score": float(scores[i]),
                     "box": b})
    dets.sort(key=lambda d: -d["score"])
    return dets


class Detector:
    def __init__(self, model_path, threshold=0.3, intra_op_threads=None):
        opts = ort.SessionOptions()
        if intra_op_threads:
            opts.intra_op_num_threads = intra_op_threads
        self.session = ort.InferenceSession(model_path, opts,
                                            providers=["CPUExecutionProvider"])
        self.threshold = threshold

    def infer(self, tensor):
        return self.session.run(["output"], {"images": tensor})[0][0]

    def detect(self, img_bgr):
        tensor, r = preprocess(img_bgr)
        raw = self.infer(tensor)
        h, w = img_bgr.shape[:2]
        return postprocess(raw, r, w, h, self.threshold)


def rounded(dets):
    """Round scores to 4 and boxes to 2 decimals for JSON output."""
    return [{"label": d["label"], "score": round(d["score"], 4),
             "box": [round(v, 2) for v in d["box"]]} for d in dets]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="/work/shared/models/yolox_nano.onnx")
    ap.add_argument("--threshold", type=float, default=0.3)
    ap.add_argument("images", nargs="+")
    args = ap.parse_args()

    det = Detector(args.model, args.threshold)
    for path in args.images:
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            sys.exit(f"cannot read image: {path}")
        print(json.dumps({"image": path, "detections": rounded(det.detect(img))}))


if __name__ == "__main__":
    main()
