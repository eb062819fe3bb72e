"""Uploaded bytes -> checked image -> aligned 112x112 face -> normalised embedding, with onnxruntime only.

Decoding is defensive: the pixel count is read from the header before anything is decoded (no decompression
bombs), a truncated file is an error rather than a half-grey image, and only real image formats pass. A face is
taken as given when the upload is already a 112x112 crop, aligned with the ArcFace template when five landmarks
come with it, and otherwise found by a detector: the largest face of OpenCV's bundled Haar cascade (a box; the
crop is squared around it) or of a detector ONNX such as insightface's SCRFD (box and landmarks, then aligned).
"""

from __future__ import annotations

import io
import json
import threading
from dataclasses import dataclass
from typing import Any, Optional

import cv2
import numpy as np

from facenas.data.faces.images import norm_crop
from facenas.evaluate.metrics import l2_normalize
from facenas.evaluate.verify import OnnxEmbedder
from facenas.export.card import ModelCard, read_card, sha256_file
from facenas.serve.errors import ImageRejected, ImageTooLarge, NoFaceFound
from facenas.serve.settings import ServeSettings

CROP = 112
FORMATS = {"JPEG", "PNG", "BMP", "WEBP", "TIFF", "PPM", "GIF"}


def decode_upload(data: bytes, settings: ServeSettings, field: str = "image") -> np.ndarray:
    """Bytes -> RGB uint8 (H, W, 3); every problem is a 4xx naming the field."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageRejected(f"{field}: empty upload")
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise ImageRejected(f"{field}: not an image (JPEG, PNG, BMP, WEBP or TIFF expected)") from None
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"{field}: image dimensions are too large") from None
    with img:
        fmt, (width, height) = img.format, img.size
        if fmt not in FORMATS:
            raise ImageRejected(f"{field}: unsupported image format {fmt}")
        if width * height > settings.max_pixels:
            raise ImageTooLarge(f"{field}: {width}x{height} pixels is more than the limit of {settings.max_pixels}")
        if min(width, height) < settings.min_side:
            raise ImageRejected(f"{field}: {width}x{height} is too small (sides of at least {settings.min_side} "
                                "pixels)")
        try:
            img.load()  # decodes now; raises on truncated data
            rgb = np.asarray(img.convert("RGB"))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            raise ImageRejected(f"{field}: the image data is truncated or corrupt") from None
    return rgb


def parse_landmarks(value: Any, field: str) -> Optional[np.ndarray]:
    """Five [x, y] pairs, as JSON text (a form field) or already decoded (an entry of a per-file list)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        points = np.asarray(json.loads(value) if isinstance(value, str) else value, dtype=np.float64)
    except (ValueError, TypeError):
        raise ImageRejected(f"{field}: landmarks must be JSON, five [x, y] pairs") from None
    if points.shape != (5, 2) or not np.all(np.isfinite(points)):
        raise ImageRejected(f"{field}: landmarks must be five [x, y] pairs (eyes, nose tip, mouth corners)")
    return points


@dataclass(frozen=True)
class Face:
    crop: np.ndarray  # RGB uint8 (112, 112, 3)
    box: Optional[list[int]]  # x, y, width, height in the uploaded image
    aligned: str  # "crop", "landmarks", "detected-landmarks" or "detected-box"

    def describe(self) -> dict[str, Any]:
        return {"box": self.box, "aligned": self.aligned}


class Detector:
    """Largest face: OpenCV's Haar cascade (box only) or a detector ONNX via insightface (box + landmarks)."""

    def __init__(self, spec: str, max_side: int) -> None:
        self.max_side = max_side
        self.kind = "haar" if spec == "haar" else "onnx"
        self._lock = threading.Lock()
        if self.kind == "haar":
            self.cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
            if self.cascade.empty():
                raise RuntimeError("OpenCV's bundled Haar cascade could not be loaded")
        else:
            from insightface.model_zoo import get_model

            self.model = get_model(spec, providers=["CPUExecutionProvider"])
            if self.model is None or not hasattr(self.model, "detect"):
                raise RuntimeError(f"{spec} is not a face detector insightface recognises")
            self.model.prepare(ctx_id=-1, input_size=(640, 640))

    def largest(self, rgb: np.ndarray) -> tuple[list[int], Optional[np.ndarray]]:
        h, w = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        small = cv2.resize(rgb, (int(w * scale), int(h * scale)), interpolation=cv2.INTER_AREA) if scale < 1 else rgb
        if self.kind == "haar":
            grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
            with self._lock:
                boxes = self.cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
            if len(boxes) == 0:
                raise NoFaceFound("no face found in the image")
            x, y, bw, bh = max(boxes, key=lambda b: b[2] * b[3])
            return [int(round(v / scale)) for v in (x, y, bw, bh)], None
        with self._lock:
            boxes, kps = self.model.detect(cv2.cvtColor(small, cv2.COLOR_RGB2BGR), max_num=0)
        if boxes is None or len(boxes) == 0:
            raise NoFaceFound("no face found in the image")
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        i = int(np.argmax(areas))
        x1, y1, x2, y2 = boxes[i, :4] / scale
        points = kps[i] / scale if kps is not None else None
        return [int(round(x1)), int(round(y1)), int(round(x2 - x1)), int(round(y2 - y1))], points


class FaceEngine:
    """The model, its card, the detector; thread-safe embedding of uploads."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.embedder = OnnxEmbedder(settings.model)
        if self.embedder.size != CROP or self.embedder.channels != 3:
            raise RuntimeError(f"{settings.model}: input {self.embedder.channels}x{self.embedder.size}x"
                               f"{self.embedder.size} does not follow the 3x112x112 contract")
        self.model_id = sha256_file(settings.model)
        self.card: Optional[ModelCard] = read_card(settings.model)
        if settings.threshold is not None:
            self.threshold, self.threshold_source = settings.threshold, "service setting"
        elif self.card is not None and self.card.threshold is not None:
            self.threshold = self.card.threshold.cosine
            self.threshold_source = f"model card ({self.card.threshold.chosen_on})"
        else:
            raise RuntimeError(f"{settings.model} has no model card with a threshold; start the service with "
                               "--threshold (a cosine similarity)")
        self.detector = Detector(settings.detector, settings.detector_max_side)
        self.embedding_size = int(self.embed_crops(np.zeros((1, CROP, CROP, 3), np.uint8)).shape[1])  # warm-up

    def face(self, rgb: np.ndarray, landmarks: Optional[np.ndarray]) -> Face:
        h, w = rgb.shape[:2]
        if landmarks is not None:
            return Face(norm_crop(rgb, landmarks, CROP), None, "landmarks")
        if (h, w) == (CROP, CROP):
            return Face(rgb, [0, 0, w, h], "crop")
        box, points = self.detector.largest(rgb)
        if points is not None:
            return Face(norm_crop(rgb, points, CROP), box, "detected-landmarks")
        x, y, bw, bh = box
        side = int(max(bw, bh) * 1.1)
        cx, cy = x + bw / 2, y + bh / 2 + 0.05 * bh
        x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
        padded = cv2.copyMakeBorder(rgb, side, side, side, side, cv2.BORDER_CONSTANT, value=0)
        crop = padded[y0 + side:y0 + 2 * side, x0 + side:x0 + 2 * side]
        return Face(cv2.resize(crop, (CROP, CROP), interpolation=cv2.INTER_AREA), box, "detected-box")

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        """RGB uint8 (N, 112, 112, 3) -> L2-normalised embeddings (N, D)."""
        return l2_normalize(self.embedder.embed(np.ascontiguousarray(crops.transpose(0, 3, 1, 2))))

    def embed_faces(self, faces: list[Face]) -> np.ndarray:
        return self.embed_crops(np.stack([f.crop for f in faces]))
