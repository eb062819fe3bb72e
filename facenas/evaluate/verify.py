"""Embedding pair sets with a model and scoring them with the insightface protocol.

Flip test: every image is embedded as is and mirrored, the two raw embeddings are summed, then L2-normalised.
XNorm is the mean L2 norm of the raw embeddings over both passes (a training health indicator). A model is
anything with `embed(uint8 NCHW batch) -> raw embeddings`: a facenas checkpoint (`TorchEmbedder`) or any
recognition ONNX following insightface's contract (`OnnxEmbedder`); both apply the contract's preprocessing,
RGB and `(x - 127.5) / 127.5`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import numpy as np

from facenas.data.faces.types import PairSet
from facenas.errors import DataError
from facenas.evaluate.metrics import VerificationReport, l2_normalize, squared_distances, verification_report

MEAN, STD = 127.5, 127.5


class Embedder(Protocol):
    size: int
    channels: int

    def embed(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, C, size, size) RGB -> raw float32 embeddings (N, D)."""
        ...


def fit_images(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """Resize / convert channels so that a pair set meets a model's input."""
    import cv2

    n, c, h, w = images.shape
    if (c, h, w) == (channels, size, size):
        return images
    out = np.empty((n, channels, size, size), np.uint8)
    for i in range(n):
        img = images[i].transpose(1, 2, 0)
        if (h, w) != (size, size):
            img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA if h > size else cv2.INTER_LINEAR)
            img = img[:, :, None] if img.ndim == 2 else img
        if img.shape[2] != channels:
            img = np.repeat(img, 3, axis=2) if channels == 3 else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[:, :, None]
        out[i] = img.transpose(2, 0, 1)
    return out


@dataclass
class EmbeddedPairs:
    embeddings: np.ndarray  # normalised flip-test embeddings, (2N, D)
    raw: np.ndarray  # raw embeddings of the unflipped images, (2N, D)
    xnorm: float


def embed_flip(embedder: Embedder, images: np.ndarray, batch_size: int = 256,
               progress: Optional[Callable[[int], None]] = None) -> EmbeddedPairs:
    images = fit_images(images, embedder.size, embedder.channels)
    raws, sums, norms = [], [], []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        plain = embedder.embed(batch)
        mirrored = embedder.embed(np.ascontiguousarray(batch[:, :, :, ::-1]))
        if not (np.all(np.isfinite(plain)) and np.all(np.isfinite(mirrored))):
            raise DataError("the model produced NaN or infinite embeddings")
        raws.append(plain)
        sums.append(plain + mirrored)
        norms.append(np.linalg.norm(plain, axis=1))
        norms.append(np.linalg.norm(mirrored, axis=1))
        if progress is not None:
            progress(len(batch))
    return EmbeddedPairs(l2_normalize(np.concatenate(sums)), np.concatenate(raws),
                         float(np.concatenate(norms).mean()))


def evaluate_pairs(embedder: Embedder, pairs: PairSet, *, batch_size: int = 256,
                   progress: Optional[Callable[[int], None]] = None) -> tuple[VerificationReport, EmbeddedPairs]:
    embedded = embed_flip(embedder, pairs.images, batch_size, progress)
    emb = embedded.embeddings
    dist = squared_distances(emb[0::2], emb[1::2])
    return verification_report(dist, pairs.issame, pairs.folds, xnorm=embedded.xnorm), embedded


class TorchEmbedder:
    """A facenas face model (an `nn.Module` producing embeddings) on a device."""

    def __init__(self, model: Any, size: int, channels: int, device: Any = "cpu") -> None:
        import torch

        self.model = model.eval()
        self.size, self.channels = size, channels
        self.device = torch.device(device)

    def embed(self, images: np.ndarray) -> np.ndarray:
        import torch

        array = np.ascontiguousarray(images)
        # a read-only array (a memory-mapped set) is copied: torch cannot share memory it may not write
        x = (torch.from_numpy(array) if array.flags.writeable else torch.tensor(array)).to(self.device).float()
        x = (x - MEAN) / STD
        with torch.inference_mode():
            return self.model(x).float().cpu().numpy()


def session_options(threads: int) -> Any:
    """onnxruntime options for serving, and for timing a net as it will be served (`facenas.export.latency`):
    `threads` intra-op threads (0: one per core) that sleep instead of spinning between calls, since between two
    batches the cores belong to HTTP parsing and image decoding; one inter-op thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxEmbedder:
    """A recognition ONNX with insightface's contract: input NCHW float32 RGB, one output, the embedding.

    Like insightface's `ArcFaceONNX`, a graph whose first nodes subtract and multiply is taken to normalise
    inside (mean 0, std 1); otherwise inputs are normalised with (x - 127.5) / 127.5 here.
    """

    def __init__(self, path: str | Path, providers: Optional[list[str]] = None, options: Any = None) -> None:
        try:
            import onnx
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - both are dependencies
            raise DataError(f"ONNX models need onnxruntime and onnx ({exc})") from exc
        path = Path(path)
        if not path.is_file():
            raise DataError(f"model file {path} does not exist")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options,
                                                providers=providers or ["CPUExecutionProvider"])
            graph = onnx.load(str(path), load_external_data=False).graph
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
            raise DataError(f"{path}: not a loadable ONNX model ({exc})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise DataError(f"{path}: expected one NCHW input, got {[i.shape for i in inputs]}")
        if len(self.session.get_outputs()) != 1:
            raise DataError(f"{path}: expected one output (the embedding), got {len(self.session.get_outputs())}")
        shape = inputs[0].shape
        if not (isinstance(shape[2], int) and isinstance(shape[3], int) and shape[2] == shape[3]):
            raise DataError(f"{path}: the input must be square with a fixed size, got {shape}")
        self.input_name = inputs[0].name
        self.channels = int(shape[1]) if isinstance(shape[1], int) else 3
        self.size = int(shape[2])
        names = [n.name.lstrip("/").lower() for n in graph.node[:8]]
        baked = any(n.startswith(("sub", "_minus")) for n in names) and any(n.startswith(("mul", "_mul"))
                                                                          for n in names)
        self.mean, self.std = (0.0, 1.0) if baked else (MEAN, STD)

    def embed(self, images: np.ndarray) -> np.ndarray:
        x = (images.astype(np.float32) - self.mean) / self.std
        return self.session.run(None, {self.input_name: x})[0].astype(np.float32)
