#!/usr/bin/env python3
"""The Python baseline of `cargo bench --bench pipeline`: YOLOX-Nano on N video streams with
OpenCV and onnxruntime, doing per frame the work skynet does.

Per frame: decode (cv2.VideoCapture, BGR), letterbox to 416x416 (scale with INTER_LINEAR to
fit, top-left, pad 114, BGR, 0-255 floats, NCHW), infer, decode the YOLOX grid output
(strides 8, 16, 32), keep scores >= threshold, class-aware NMS (cv2.dnn.NMSBoxesBatched),
boxes back to source pixels. The same pre- and post-processing as
tests/reference/yolox_reference.py, vectorised.

The thread budget is skynet's (benches/pipeline.rs: `workers = 2`, `intra_threads = 1`):

- one decode thread per stream, as skynet runs one GStreamer source per camera; it decodes
  and scales the frame to the model's input size (skynet converts and scales in its source
  too), then waits on one bounded queue shared by all streams (skynet: a bounded queue per
  camera, blocking for files);
- `--workers` inference threads, each with its own ONNX Runtime session of
  `--intra-threads` intra-op threads (and one inter-op thread), which pad, infer and
  post-process, as skynet's detection workers do.

Threads, not processes: OpenCV's decoding and resizing and ONNX Runtime's `run` release the
GIL, so the only Python-bound work is the NumPy post-processing (well under a millisecond per
frame against tens of milliseconds of inference), and all streams share the sessions as they
do in skynet.

The clock runs from before the sessions are created to the last frame's result, as
skynet's does around `pipeline::run`. Prints one JSON object on stdout:

    {"streams": 4, "frames": 3180, "seconds": 45.1, "cpu_seconds": 88.0, "frames_per_s": 70.5, ...}

`cpu_seconds` is the process's user + system time over the same span, all threads.

Run with benches/baseline/setup.sh's venv:

    ~/.local/share/skynet/bench-venv/bin/python benches/baseline/yolox_streams.py \\
        --model ~/.local/share/skynet/models/yolox_nano.onnx \\
        --video ~/.local/share/skynet/media/vtest.avi --streams 4 --frames 795
"""

import argparse
import json
import queue
import sys
import threading
import time

import cv2
import numpy as np
import onnxruntime as ort

INPUT_SIZE = 416
PAD_VALUE = 114
STRIDES = (8, 16, 32)


def make_grids():
    """Per-anchor (grid_x, grid_y) and stride for strides 8, 16, 32 in order."""
    grids, strides = [], []
    for s in STRIDES:
        n = INPUT_SIZE // s
        ys, xs = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        grids.append(np.stack([xs, ys], axis=-1).reshape(-1, 2))
        strides.append(np.full((n * n, 1), s))
    return (np.concatenate(grids).astype(np.float32),
            np.concatenate(strides).astype(np.float32))


GRIDS, GRID_STRIDES = make_grids()


def scale_to_fit(frame):
    """The source's part of the letterbox: scale to fit 416x416, keeping the aspect ratio."""
    h, w = frame.shape[:2]
    r = min(INPUT_SIZE / h, INPUT_SIZE / w)
    resized = cv2.resize(frame, (int(w * r), int(h * r)), interpolation=cv2.INTER_LINEAR)
    return resized, r


def to_tensor(resized, canvas):
    """The worker's part: paste top-left on a 114 canvas, HWC uint8 -> NCHW float32."""
    h, w = resized.shape[:2]
    canvas[:] = PAD_VALUE
    canvas[:h, :w] = resized
    return np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], dtype=np.float32)


def postprocess(raw, r, img_w, img_h, threshold, nms_iou):
    """[3549, 85] -> list of (class, score, x1, y1, x2, y2) in source pixels."""
    cls_scores = raw[:, 5:]
    cls = np.argmax(cls_scores, axis=1)
    scores = raw[:, 4] * cls_scores[np.arange(len(cls)), cls]
    keep = scores >= threshold
    if not keep.any():
        return []
    raw, cls, scores = raw[keep], cls[keep], scores[keep]
    xy = (raw[:, 0:2] + GRIDS[keep]) * GRID_STRIDES[keep]
    wh = np.exp(raw[:, 2:4]) * GRID_STRIDES[keep]
    top_left = xy - wh / 2
    # NMSBoxesBatched takes x, y, w, h; NMS in input pixels (dividing by r keeps IoU).
    picked = cv2.dnn.NMSBoxesBatched(
        np.concatenate([top_left, wh], axis=1).tolist(), scores.tolist(), cls.tolist(),
        threshold, nms_iou)
    dets = []
    for i in np.asarray(picked, dtype=np.int64).reshape(-1):
        x1, y1 = top_left[i] / r
        x2, y2 = (top_left[i] + wh[i]) / r
        dets.append((int(cls[i]), float(scores[i]),
                     min(max(float(x1), 0.0), img_w), min(max(float(y1), 0.0), img_h),
                     min(max(float(x2), 0.0), img_w), min(max(float(y2), 0.0), img_h)))
    return dets


def decode_stream(video, max_frames, frames_out, failures):
    cap = cv2.VideoCapture(video)
    if not cap.isOpened():
        failures.append(f"cannot open {video}")
        return
    n = 0
    while max_frames is None or n < max_frames:
        ok, frame = cap.read()
        if not ok:
            break
        resized, r = scale_to_fit(frame)
        frames_out.put((resized, r, frame.shape[1], frame.shape[0]))
        n += 1
    cap.release()


class Worker(threading.Thread):
    def __init__(self, session, frames_in, args):
        super().__init__(daemon=True)
        self.session, self.frames_in, self.args = session, frames_in, args
        self.input_name = session.get_inputs()[0].name
        self.frames = 0
        self.detections = 0
        self.latencies = []

    def run(self):
        canvas = np.empty((INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
        while True:
            item = self.frames_in.get()
            if item is None:
                return
            resized, r, w, h = item
            tensor = to_tensor(resized, canvas)
            started = time.perf_counter()
            raw = self.session.run(None, {self.input_name: tensor})[0][0]
            self.latencies.append(time.perf_counter() - started)
            dets = postprocess(raw, r, w, h, self.args.threshold, self.args.nms_iou)
            self.frames += 1
            self.detections += len(dets)


def percentile(values, q):
    return float(np.percentile(np.asarray(values), q)) * 1000.0 if values else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--video", required=True)
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--frames", type=int, default=None, help="frames per stream (default: all)")
    ap.add_argument("--workers", type=int, default=2, help="ONNX Runtime sessions")
    ap.add_argument("--intra-threads", type=int, default=1)
    ap.add_argument("--queue", type=int, default=4, help="frames waiting per stream")
    ap.add_argument("--threshold", type=float, default=0.3)
    ap.add_argument("--nms-iou", type=float, default=0.45)
    args = ap.parse_args()

    started = time.perf_counter()
    cpu_started = time.process_time()
    sessions = []
    for _ in range(args.workers):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.intra_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sessions.append(ort.InferenceSession(args.model, opts,
                                             providers=["CPUExecutionProvider"]))

    frames = queue.Queue(maxsize=args.queue * args.streams)
    failures = []
    workers = [Worker(s, frames, args) for s in sessions]
    for w in workers:
        w.start()
    decoders = [threading.Thread(target=decode_stream,
                                 args=(args.video, args.frames, frames, failures), daemon=True)
                for _ in range(args.streams)]
    for d in decoders:
        d.start()
    for d in decoders:
        d.join()
    for _ in workers:
        frames.put(None)
    for w in workers:
        w.join()
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started

    if failures:
        sys.exit("; ".join(failures))
    total = sum(w.frames for w in workers)
    latencies = [x for w in workers for x in w.latencies]
    print(json.dumps({
        "streams": args.streams,
        "workers": args.workers,
        "intra_threads": args.intra_threads,
        "frames": total,
        "detections": sum(w.detections for w in workers),
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu_seconds, 3),
        "frames_per_s": round(total / seconds, 2) if seconds > 0 else None,
        "inference_p50_ms": percentile(latencies, 50),
        "inference_p99_ms": percentile(latencies, 99),
        "opencv": cv2.__version__,
        "onnxruntime": ort.__version__,
    }))


if __name__ == "__main__":
    main()
