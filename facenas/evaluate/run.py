"""`facenas eval`: benchmark a facenas checkpoint or any insightface-style recognition ONNX on pair sets.

Sets are LFW directories with their `pairs.txt` and insightface `.bin` files (LFW, CFP-FP, AgeDB-30, ...).
Each is embedded with the flip test and scored with the insightface protocol (`metrics.py`); the report gives
accuracy (mean, population std, standard error), thresholds as distances and cosines, TAR@FAR, EER, AUC and
XNorm, and can include a ROC plot and the embeddings.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from facenas import __version__
from facenas.data.faces.images import Preprocess
from facenas.data.faces.pairs import load_pair_images, parse_pairs, read_bin
from facenas.data.faces.sources import read_landmarks_file
from facenas.data.faces.types import PairSet
from facenas.evaluate.verify import Embedder, OnnxEmbedder, TorchEmbedder, evaluate_pairs

PROTOCOL = ("insightface: flip test (sum of the embeddings of the image and its mirror), L2 normalisation, squared "
            "Euclidean distance, thresholds 0..3.99 step 0.01, 10 folds (the set's own, or contiguous), threshold "
            "chosen on the other 9 folds; std is the population std over folds, sem the standard error")


@dataclass(frozen=True)
class PairSource:
    name: str
    bin: Optional[Path] = None
    lfw_dir: Optional[Path] = None
    pairs: Optional[Path] = None


def open_model(path: str | Path, device: str = "cpu") -> tuple[Embedder, dict[str, Any]]:
    """A facenas checkpoint / model.pt, or a recognition ONNX file, ready to embed."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        onnx_model = OnnxEmbedder(path)
        return onnx_model, {"kind": "onnx", "path": str(path), "input_size": onnx_model.size,
                            "channels": onnx_model.channels, "normalisation": [onnx_model.mean, onnx_model.std]}
    from facenas.models.checkpoint import describe_face_model, load_face_model

    model, network, preprocess = load_face_model(path, device)
    info = describe_face_model(model, network)
    size, channels = info.input_size, info.in_channels
    return TorchEmbedder(model, size, channels, device), {
        "kind": "facenas", "path": str(path), "arch": info.short, "params": info.params,
        "macs": info.macs, "input_size": size, "channels": channels, "preprocess": preprocess}


def load_pair_source(source: PairSource, prep: Preprocess, landmarks: Optional[Path] = None,
                     progress: Optional[Callable[[], None]] = None) -> PairSet:
    if source.bin is not None:
        return read_bin(source.bin, prep)
    assert source.lfw_dir is not None and source.pairs is not None
    pairs = parse_pairs(source.pairs, source.lfw_dir)
    table = read_landmarks_file(landmarks, source.lfw_dir) if landmarks else None
    return load_pair_images(pairs, prep, source.name, table, source.lfw_dir, progress)


def roc_plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, r in results.items():
        fpr, tpr = np.asarray(r["roc"]["fpr"]), np.asarray(r["roc"]["tpr"])
        keep = fpr > 0
        ax.plot(fpr[keep], tpr[keep], label=f"{name} (acc {r['accuracy'] * 100:.2f}%, AUC {r['auc']:.4f})")
    ax.set_xscale("log")
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title("ROC (flip test, 10-fold protocol)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class _Ticker:
    """Counts progress for one stage and forwards (label, done, total) to the caller's callback."""

    def __init__(self, label: str, total: int, progress: Optional[Callable[[str, int, int], None]]) -> None:
        self.label, self.total, self.progress, self.done = label, total, progress, 0

    def __call__(self, n: int = 1) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.label, self.done, self.total)


def evaluate_model(model_path: str | Path, sources: Sequence[PairSource], *, crop_fraction: float = 1.0,
                   landmarks: Optional[Path] = None, batch_size: int = 128, device: str = "cpu",
                   json_out: Optional[Path] = None, plot: Optional[Path] = None,
                   save_embeddings: Optional[Path] = None,
                   progress: Optional[Callable[[str, int, int], None]] = None) -> dict[str, Any]:
    """Evaluate a model on every source; returns (and optionally writes) the report."""
    embedder, info = open_model(model_path, device)
    prep = Preprocess(size=embedder.size, channels=embedder.channels, crop_fraction=crop_fraction)
    results: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    for source in sources:
        began = time.perf_counter()
        pairs = load_pair_source(source, prep, landmarks, _Ticker(f"{source.name}: reading", 0, progress))
        embedded = _Ticker(f"{source.name}: embedding", len(pairs.images), progress)
        report, emb = evaluate_pairs(embedder, pairs, batch_size=batch_size, progress=embedded)
        results[source.name] = {**report.to_dict(with_roc=True), "images": int(len(pairs.images)),
                                "seconds": time.perf_counter() - began}
        arrays[f"{source.name}_embeddings"] = emb.embeddings.astype(np.float32)
        arrays[f"{source.name}_raw"] = emb.raw.astype(np.float32)
        arrays[f"{source.name}_issame"] = pairs.issame
        if pairs.sources:
            arrays[f"{source.name}_files"] = np.asarray(pairs.sources)
    out = {"model": info, "protocol": PROTOCOL, "crop_fraction": crop_fraction,
           "landmarks": str(landmarks) if landmarks else None, "sets": results, "facenas_version": __version__}
    if plot is not None:
        roc_plot(results, plot)
        out["plot"] = str(plot)
    if save_embeddings is not None:
        np.savez_compressed(save_embeddings, **arrays)
        out["embeddings"] = str(save_embeddings)
    if json_out is not None:
        slim = {**out, "sets": {k: {kk: vv for kk, vv in v.items() if kk != "roc"} for k, v in results.items()}}
        Path(json_out).write_text(json.dumps(slim, indent=2) + "\n")
    return out
