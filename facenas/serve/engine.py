"""Uploaded bytes -> checked image -> aligned 112x112 face -> normalised embedding, with onnxruntime only.

Decoding is defensive: the pixel count is read from the header before anything is decoded (no decompression
bombs), a truncated file is an error rather than a half-grey image, and only real image formats pass. A face is
taken as given when the upload is already a 112x112 crop, aligned with the ArcFace template when five landmarks
come with it, and otherwise found by a detector (`detectors.py`): the largest face of OpenCV's YuNet or
insightface's SCRFD (box and landmarks, then aligned), or of OpenCV's bundled Haar cascade as the last resort (a
box; the crop is squared around it, and the answer says so).
"""

from __future__ import annotations

import io
import json
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Optional

import cv2
import numpy as np

from facenas.data.faces.images import norm_crop
from facenas.evaluate.metrics import l2_normalize
from facenas.evaluate.verify import OnnxEmbedder, session_options
from facenas.export.card import ModelCard, read_card, sha256_file
from facenas.serve.batching import BatchingEmbedder
from facenas.serve.detectors import load_detector
from facenas.serve.errors import ImageRejected, ImageTooLarge
from facenas.serve.settings import ServeSettings
from facenas.serve.thresholds import resolve_decisions

log = logging.getLogger("facenas.serve")
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
        # OpenCV decodes (a third faster than PIL, and without the GIL), refusing truncated data; PIL decodes what
        # OpenCV cannot, and its errors name corrupt data. EXIF orientation is ignored by both: landmarks sent with
        # an image are in its stored pixels
        rgb = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
        if rgb is not None and rgb.shape[:2] == (height, width):
            return rgb
        try:
            img.load()  # decodes now; raises on truncated data
            return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))  # no copy when RGB already
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            raise ImageRejected(f"{field}: the image data is truncated or corrupt") from None


def crop_sized(data: bytes) -> bool:
    """Whether the upload's header says 112x112 (an aligned crop: nothing to detect; cheap to decode), without
    decoding it; False for anything that is not an image (decode_upload says what is wrong)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size == (CROP, CROP)
    except Exception:  # noqa: BLE001 - any unreadable header: decode_upload names the problem
        return False


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


HAAR_NOTE = ("found by OpenCV's Haar cascade, the last resort: a box without landmarks, so the face is not aligned "
             "as the model was trained and recognition is less accurate; start the service with --detector mtcnn (the "
             "default) or a YuNet or SCRFD model")


@dataclass(frozen=True)
class Face:
    crop: np.ndarray  # RGB uint8 (112, 112, 3)
    box: Optional[list[int]]  # x, y, width, height in the uploaded image
    aligned: str  # "crop", "landmarks", "detected-landmarks" or "detected-box"
    detector: Optional[str] = None  # which found it: "mtcnn", "yunet", "scrfd" or "haar"
    landmarks: Optional[np.ndarray] = None  # (5, 2) the crop was aligned on, in the uploaded image's pixels

    def describe(self) -> dict[str, Any]:
        points = None if self.landmarks is None else np.round(self.landmarks, 1).tolist()
        return {"box": self.box, "aligned": self.aligned, "detector": self.detector, "landmarks": points,
                "note": HAAR_NOTE if self.detector == "haar" else None}


class FaceEngine:
    """The model, its card, its two operating points, the detector; thread-safe embedding of uploads (batched
    across concurrent requests)."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        # several workers share the cores: each takes its part, unless onnx_threads says otherwise
        cores = max(1, (os.cpu_count() or 1) // settings.workers)  # this worker's share of the machine
        threads = settings.onnx_threads or (cores if settings.workers > 1 else 0)
        self.embedder = OnnxEmbedder(settings.model, options=session_options(threads))
        if self.embedder.size != CROP or self.embedder.channels != 3:
            raise RuntimeError(f"{settings.model}: input {self.embedder.channels}x{self.embedder.size}x"
                               f"{self.embedder.size} does not follow the 3x112x112 contract")
        self.model_id = sha256_file(settings.model)
        self.card: Optional[ModelCard] = read_card(settings.model)
        self.verify_decision, self.identify_decision = resolve_decisions(settings, self.card)
        self.detector = load_detector(settings.detector, settings.detector_max_side, settings.detector_kind,
                                      settings.detector_score)
        if self.detector.kind == "haar":
            log.warning("detector: OpenCV's Haar cascade, the last resort (boxes without landmarks: photos are not "
                        "aligned as the model was trained); use --detector mtcnn (the default) or a YuNet or SCRFD "
                        "model")
        self.embedding_size = int(self.embed_crops(np.zeros((1, CROP, CROP, 3), np.uint8)).shape[1])  # warm-up
        self.batcher = BatchingEmbedder(self.embed_crops, settings.batch_max_faces, settings.batch_wait_ms / 1000)
        # Decoding, detection and alignment of uploads, off the event loop: a plain executor, lighter per call than
        # the general thread pool (the work is C code that releases the GIL: PIL, OpenCV, the detector)
        self.decoders = ThreadPoolExecutor(settings.decode_threads or min(8, cores + 2),
                                           thread_name_prefix="facenas-decode")

    def close(self) -> None:
        self.decoders.shutdown(wait=True)
        self.batcher.close()

    def face(self, rgb: np.ndarray, landmarks: Optional[np.ndarray]) -> Face:
        h, w = rgb.shape[:2]
        if landmarks is not None:
            return Face(norm_crop(rgb, landmarks, CROP), None, "landmarks", landmarks=landmarks)
        if (h, w) == (CROP, CROP):
            return Face(rgb, [0, 0, w, h], "crop")
        found = self.detector.largest(rgb)
        kind = self.detector.kind
        if found.landmarks is not None:
            return Face(norm_crop(rgb, found.landmarks, CROP), found.box, "detected-landmarks", kind,
                        found.landmarks)
        x, y, bw, bh = found.box
        side = int(max(bw, bh) * 1.1)
        cx, cy = x + bw / 2, y + bh / 2 + 0.05 * bh
        x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
        padded = cv2.copyMakeBorder(rgb, side, side, side, side, cv2.BORDER_CONSTANT, value=0)
        crop = padded[y0 + side:y0 + 2 * side, x0 + side:x0 + 2 * side]
        return Face(cv2.resize(crop, (CROP, CROP), interpolation=cv2.INTER_AREA), found.box, "detected-box", kind)

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        """RGB uint8 (N, 112, 112, 3) -> L2-normalised embeddings (N, D)."""
        return l2_normalize(self.embedder.embed(np.ascontiguousarray(crops.transpose(0, 3, 1, 2))))

    def submit_faces(self, faces: list[Face]) -> Future:
        """The faces' embeddings, to come from the batcher (shared with concurrent requests)."""
        return self.batcher.submit(np.stack([f.crop for f in faces]))
