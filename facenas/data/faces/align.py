"""ArcFace alignment: the 5-point template and insightface's `norm_crop`, in numpy and OpenCV.

insightface's `face_align.norm_crop` fits a similarity transform (scikit-image's `SimilarityTransform.estimate`,
i.e. Umeyama's least-squares method) from the five landmarks to the ArcFace template and warps with
`cv2.warpAffine`. This module computes the same transform without importing insightface, because importing the
insightface package pulls in albumentations and, through it, PyTorch: the service must run without PyTorch. A
test checks that both give the same matrix and the same pixels, so training, evaluation and the service share
one aligner.
"""

from __future__ import annotations

import cv2
import numpy as np

#: insightface's `arcface_dst` (float32, as insightface keeps it, so that the arithmetic below matches theirs):
#: left eye, right eye, nose tip, left and right mouth corners, for 112x112.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                             [70.7299, 92.2041]], dtype=np.float32)


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 similarity transform (rotation, uniform scale, translation) mapping src onto dst, least squares.

    Arithmetic stays in the inputs' dtypes, as scikit-image's `_umeyama` does, so results match bit for bit.
    """
    src, dst = np.asarray(src), np.asarray(dst)
    n, dim = src.shape
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / n
    d = np.ones(dim)
    if np.linalg.det(cov) < 0:
        d[dim - 1] = -1
    transform = np.eye(dim + 1)
    u, s, vt = np.linalg.svd(cov)
    rank = np.count_nonzero(s > s.max() * max(cov.shape) * np.finfo(float).eps)
    if rank == 0:
        return np.full((dim + 1, dim + 1), np.nan)
    if rank == dim - 1:
        if np.linalg.det(u) * np.linalg.det(vt) > 0:
            transform[:dim, :dim] = u @ vt
        else:
            sign = d[dim - 1]
            d[dim - 1] = -1
            transform[:dim, :dim] = u @ np.diag(d) @ vt
            d[dim - 1] = sign
    else:
        transform[:dim, :dim] = u @ np.diag(d) @ vt
    scale = 1.0 / src_c.var(axis=0).sum() * (s @ d)  # this order of operations, as scikit-image's
    transform[:dim, dim] = dst_mean - scale * (transform[:dim, :dim] @ src_mean.T)
    transform[:dim, :dim] *= scale
    return transform


def estimate_norm(landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """The 2x3 matrix insightface's `estimate_norm(lmk, size, mode="arcface")` returns."""
    if size % 112 == 0:
        dst = ARCFACE_TEMPLATE * (size / 112.0)
    elif size % 128 == 0:
        dst = ARCFACE_TEMPLATE * (size / 128.0)
        dst[:, 0] += 8.0 * size / 128.0
    else:
        raise ValueError(f"ArcFace alignment needs a size that is a multiple of 112 or 128, got {size}")
    return umeyama(np.asarray(landmarks).reshape(5, 2), dst)[:2]


def norm_crop(img: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Align a face onto the ArcFace template (a `size` x `size` crop, zero border), as insightface does."""
    return cv2.warpAffine(img, estimate_norm(landmarks, size), (size, size), borderValue=0.0)
