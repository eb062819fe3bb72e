"""Decoding, alignment and resizing of face images (OpenCV, and insightface's ArcFace alignment).

Alignment: where the five landmarks of a face are known, insightface's ArcFace alignment (`align.py`, identical
to `face_align.norm_crop`) maps them onto the ArcFace 112x112 template (the convention every insightface model
and benchmark file uses); otherwise a centre crop of `crop_fraction` of the shorter side is resized to the target
size. Grey images are replicated to
three channels, or colour images converted to grey, as the `channels` of the model ask.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from facenas.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Preprocess:
    """How a raw image becomes a model input: size, channels, alignment."""

    size: int = 112
    channels: int = 3
    crop_fraction: float = 1.0  # used without landmarks: centre square of this share of the shorter side

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise DataError(f"channels must be 1 or 3, got {self.channels}")
        if not 0 < self.crop_fraction <= 1:
            raise DataError(f"crop_fraction must lie in (0, 1], got {self.crop_fraction}")
        if self.size < 8:
            raise DataError(f"image size must be >= 8, got {self.size}")

    def to_dict(self) -> dict[str, object]:
        return {"size": self.size, "channels": self.channels, "crop_fraction": self.crop_fraction}


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Encoded bytes -> RGB (H, W, 3) or grey (H, W) uint8; a clear error naming `where` otherwise."""
    if not data:
        raise DataError(f"{where}: empty image data")
    array = np.frombuffer(data, dtype=np.uint8)
    img = cv2.imdecode(array, cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise DataError(f"{where}: not a decodable image (corrupt or truncated, {len(data)} bytes)")
    if img.dtype != np.uint8:  # 16-bit PNG/TIFF
        img = (img / (256.0 if img.dtype == np.uint16 else max(float(img.max()), 1.0) / 255.0)).astype(np.uint8)
    if img.ndim == 2:
        return img
    if img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    elif img.shape[2] == 1:
        return img[:, :, 0]
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_image(path: str | Path) -> np.ndarray:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return decode_image(data, str(path))


def encode_image(rgb: np.ndarray, fmt: str = ".jpg", quality: int = 95) -> bytes:
    """RGB or grey uint8 -> encoded bytes (JPEG quality `quality`, or PNG, lossless)."""
    img = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if fmt in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(fmt, img, params)
    if not ok:
        raise DataError(f"could not encode an image of shape {rgb.shape} as {fmt}")
    return buf.tobytes()


def norm_crop(img: np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
    """ArcFace alignment, identical to insightface's `norm_crop` (see `align.py`); sizes that are not multiples of
    112 are aligned at 112 and resized."""
    from facenas.data.faces.align import norm_crop as arcface_crop

    lmk = np.asarray(landmarks, dtype=np.float32).reshape(5, 2)
    base = size if size % 112 == 0 else 112
    out = arcface_crop(img, lmk, base)
    return out if base == size else cv2.resize(out, (size, size), interpolation=cv2.INTER_AREA)


def centre_crop(img: np.ndarray, size: int, fraction: float) -> np.ndarray:
    h, w = img.shape[:2]
    side = max(int(round(min(h, w) * fraction)), 1)
    y0, x0 = (h - side) // 2, (w - side) // 2
    crop = img[y0:y0 + side, x0:x0 + side]
    if crop.shape[0] == size and crop.shape[1] == size:
        return crop
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


def to_channels(img: np.ndarray, channels: int) -> np.ndarray:
    """(H, W[, 3]) -> (H, W, channels)."""
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == channels:
        return img
    if channels == 3:
        return np.repeat(img, 3, axis=2)
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[:, :, None]


def prepare(img: np.ndarray, prep: Preprocess, landmarks: Optional[np.ndarray] = None) -> np.ndarray:
    """Raw decoded image -> (channels, size, size) uint8, aligned where landmarks are given."""
    if landmarks is not None and np.all(np.isfinite(landmarks)):
        out = norm_crop(img, landmarks, prep.size)
    else:
        out = centre_crop(img, prep.size, prep.crop_fraction)
    return np.ascontiguousarray(to_channels(out, prep.channels).transpose(2, 0, 1))
