#!/usr/bin/env python3
"""Derives the test variants of YOLOX-Nano from the one export this project can download.

Only yolox_nano.onnx (fixed batch 1, YOLOX layout) can be fetched, so the other model
families the detector supports are made from it by graph surgery with the `onnx` package:

  dynamic  yolox_nano_dynamic.onnx  the same model with a symbolic batch axis
  yolov8   yolox_nano_v8.onnx       ultralytics layout [1, 84, N]: grid decode, obj * cls
  nms      yolox_nano_nms.onnx      end-to-end export [1, K, 6]: x1, y1, x2, y2, score, class

Each models/*.toml with `derived_from` and `recipe` names one of these recipes; its sha256
is that of the file this script writes with the pinned onnx version (scripts/setup.sh
installs it), so the result is checked like a download. Serialisation is deterministic:
no timestamps, node names fixed, the protobuf writer emits fields in order.

usage: derive_models.py SOURCE.onnx RECIPE DEST.onnx
"""

import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

STRIDES = (8, 16, 32)
INPUT_SIZE = 416


def load(path):
    model = onnx.load(path)
    # Stale shape annotations would contradict the new output; the runtime infers them again.
    del model.graph.value_info[:]
    return model


def make_batch_symbolic(model):
    """Marks the batch axis of every graph input and output symbolic, after checking no
    Reshape inside bakes a batch of 1 into a constant shape (this export takes the batch
    from Shape(), so none does)."""
    graph = model.graph
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    constants[node.output[0]] = numpy_helper.to_array(attr.t)
    for node in graph.node:
        if node.op_type == "Reshape":
            shape = constants.get(node.input[1])
            if shape is not None and shape.size > 0 and shape.flat[0] == 1:
                raise SystemExit(f"Reshape {node.name} fixes the batch at 1: {shape}")
    for port in list(graph.input) + list(graph.output):
        dim = port.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = "batch"
    return model


def grid_constants():
    grid, strides = [], []
    for s in STRIDES:
        n = INPUT_SIZE // s
        ys, xs = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        grid.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
        strides.append(np.full((n * n, 1), s))
    return (
        np.concatenate(grid).astype(np.float32)[None],
        np.concatenate(strides).astype(np.float32)[None],
    )


def const(graph, name, array):
    graph.initializer.append(numpy_helper.from_array(np.asarray(array), name))
    return name


def node(graph, op, inputs, output, **attrs):
    graph.node.append(helper.make_node(op, inputs, [output], name=output, **attrs))
    return output


def append_decode(model):
    """Adds YOLOX's grid decode after `output`; returns the names of the decoded tensors
    [1, N, 4] centre boxes (cx, cy, w, h in input pixels) and [1, N, C] scores (obj * cls)."""
    g = model.graph
    grid, stride = grid_constants()
    raw = g.output[0].name
    const(g, "derive/grid", grid)
    const(g, "derive/stride", stride)

    def cols(name, start, end):
        return node(
            g, "Slice",
            [raw, const(g, f"derive/{name}_s", np.array([start], np.int64)),
             const(g, f"derive/{name}_e", np.array([end], np.int64)),
             const(g, f"derive/{name}_a", np.array([2], np.int64))],
            f"derive/{name}",
        )

    xy = node(g, "Mul", [node(g, "Add", [cols("xy_raw", 0, 2), "derive/grid"], "derive/xy_g"),
                         "derive/stride"], "derive/xy")
    wh = node(g, "Mul", [node(g, "Exp", [cols("wh_raw", 2, 4)], "derive/wh_e"), "derive/stride"],
              "derive/wh")
    boxes = node(g, "Concat", [xy, wh], "derive/cxcywh", axis=2)
    scores = node(g, "Mul", [cols("cls", 5, 85), cols("obj", 4, 5)], "derive/scores")
    return boxes, scores


def set_output(model, name, elem, dims):
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info(name, elem, dims))


def to_yolov8(model):
    g = model.graph
    boxes, scores = append_decode(model)
    rows = node(g, "Concat", [boxes, scores], "derive/rows", axis=2)
    node(g, "Transpose", [rows], "output0", perm=[0, 2, 1])
    set_output(model, "output0", TensorProto.FLOAT, [1, 84, None])
    n = sum((INPUT_SIZE // s) ** 2 for s in STRIDES)
    model.graph.output[0].type.tensor_type.shape.dim[2].dim_value = n
    return model


MAX_PER_CLASS = 100
MAX_DETECTIONS = 100
NMS_IOU = 0.45
NMS_SCORE = 0.1


def to_nms_inside(model):
    """Class-aware NonMaxSuppression inside the graph, the best MAX_DETECTIONS kept by
    TopK; the output [1, K, 6] holds x1, y1, x2, y2, score, class in input pixels."""
    g = model.graph
    boxes, scores = append_decode(model)
    scores_t = node(g, "Transpose", [scores], "derive/scores_t", perm=[0, 2, 1])
    selected = node(
        g, "NonMaxSuppression",
        [boxes, scores_t,
         const(g, "derive/max_per_class", np.array([MAX_PER_CLASS], np.int64)),
         const(g, "derive/iou", np.array([NMS_IOU], np.float32)),
         const(g, "derive/score_min", np.array([NMS_SCORE], np.float32))],
        "derive/selected", center_point_box=1,
    )
    # selected: [K, 3] = (batch, class, box); batch is always 0 here.
    score = node(g, "GatherND", [scores_t, selected], "derive/sel_score")
    col = lambda i: node(g, "Gather", [selected, const(g, f"derive/c{i}", np.array(i, np.int64))],
                         f"derive/sel_col{i}", axis=1)
    cls, box_index = col(1), col(2)
    # k = min(K, MAX_DETECTIONS), then the best k by score.
    count = node(g, "Shape", [score], "derive/count")
    # (Min takes no int64 before opset 12; this export is opset 11.)
    both = node(g, "Concat", [count, const(g, "derive/kmax", np.array([MAX_DETECTIONS], np.int64))],
                "derive/k_both", axis=0)
    k = node(g, "ReduceMin", [both], "derive/k", keepdims=1)
    g.node.append(helper.make_node("TopK", [score, k], ["derive/top_score", "derive/top_i"],
                                   name="derive/topk", axis=0, largest=1, sorted=1))
    top_box = node(g, "Gather", [box_index, "derive/top_i"], "derive/top_box")
    top_cls = node(g, "Cast", [node(g, "Gather", [cls, "derive/top_i"], "derive/top_cls_i")],
                   "derive/top_cls", to=TensorProto.FLOAT)
    box_rows = node(g, "Gather", [boxes, top_box], "derive/top_cxcywh", axis=1)  # [1, k, 4]
    sl = lambda name, a, b: node(
        g, "Slice", [box_rows, const(g, f"derive/{name}_s", np.array([a], np.int64)),
                     const(g, f"derive/{name}_e", np.array([b], np.int64)),
                     const(g, f"derive/{name}_a", np.array([2], np.int64))], f"derive/{name}")
    centre, size = sl("top_c", 0, 2), sl("top_wh", 2, 4)
    half = node(g, "Mul", [size, const(g, "derive/half", np.array(0.5, np.float32))], "derive/half_wh")
    top_left = node(g, "Sub", [centre, half], "derive/x1y1")
    bottom_right = node(g, "Add", [centre, half], "derive/x2y2")
    unsq = lambda x: node(g, "Unsqueeze", [x], x + "_u", axes=[0, 2])
    node(g, "Concat", [top_left, bottom_right, unsq("derive/top_score"), unsq(top_cls)],
         "detections", axis=2)
    set_output(model, "detections", TensorProto.FLOAT, [1, None, 6])
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "detections"
    return model


RECIPES = {"dynamic-batch": make_batch_symbolic, "yolov8-layout": to_yolov8, "nms-inside": to_nms_inside}


def main():
    if len(sys.argv) != 4 or sys.argv[2] not in RECIPES:
        raise SystemExit(f"usage: {sys.argv[0]} SOURCE.onnx {{{'|'.join(RECIPES)}}} DEST.onnx")
    source, recipe, dest = sys.argv[1:]
    model = RECIPES[recipe](load(source))
    model.producer_name = f"skynet scripts/derive_models.py {recipe} (onnx {onnx.__version__})"
    onnx.checker.check_model(model, full_check=True)
    with open(dest + ".part", "wb") as f:
        f.write(model.SerializeToString(deterministic=True))
    import os
    os.replace(dest + ".part", dest)


if __name__ == "__main__":
    main()
