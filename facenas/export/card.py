"""The model card: what a deployed embedding model is, how to feed it, and where its threshold comes from.

Written next to every exported ONNX file (`<name>.card.json`) and read by the service, so that nothing about
preprocessing or decisions is guessed (face-ecosystem.md 5, pains 2, 3, 7). Torch-free on purpose: the service
loads cards without PyTorch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from facenas.errors import DataError

CARD_FORMAT = "facenas.model-card/1"
INPUT_CONTRACT = {
    "name": "data", "shape": ["N", 3, 112, 112], "dtype": "float32", "layout": "NCHW", "color": "RGB",
    "normalization": "(x - 127.5) / 127.5, applied outside the graph",
    "alignment": "insightface ArcFace 5-point template, 112x112 (face_align.norm_crop)",
}


@dataclass
class Threshold:
    """A same-person decision threshold on cosine similarity, and where it was chosen."""

    cosine: float
    squared_distance: float
    chosen_on: str
    pairs: int
    rule: str
    far: float
    tar: float
    accuracy: float


OPERATING_FARS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


@dataclass
class OperatingPoint:
    """The threshold reaching a target false-accept rate on the calibration pairs (insightface's `calculate_val`
    rule on all pairs): what a deployment that bounds false accepts, such as 1:N search, decides at."""

    target_far: float
    cosine: float
    squared_distance: float
    far: float  # measured on the calibration pairs at this threshold
    tar: float
    negatives: int  # mismatched pairs it was chosen on


@dataclass
class ModelCard:
    arch: dict[str, Any]
    arch_short: str
    params: int
    macs: int
    embedding_size: int
    onnx_sha256: str
    facenas_version: str
    input: dict[str, Any] = field(default_factory=lambda: dict(INPUT_CONTRACT))
    threshold: Optional[Threshold] = None
    thresholds_at_far: dict[str, Optional[dict[str, float]]] = field(default_factory=dict)
    operating_points: list[OperatingPoint] = field(default_factory=list)
    evaluation: dict[str, Any] = field(default_factory=dict)
    source_checkpoint: Optional[str] = None
    trained_channels: int = 3
    trained_size: int = 112
    quantization: Optional[str] = None
    latency: Optional[dict[str, Any]] = None  # measured on a target (`facenas.export.latency`), with its settings
    format: str = CARD_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelCard":
        if data.get("format") != CARD_FORMAT:
            raise DataError(f"not a facenas model card (format {data.get('format')!r}, expected {CARD_FORMAT!r})")
        data = dict(data)
        if data.get("threshold") is not None:
            data["threshold"] = Threshold(**data["threshold"])
        data["operating_points"] = [OperatingPoint(**p) for p in data.get("operating_points") or []]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


    def operating_point(self, target_far: float) -> Optional[OperatingPoint]:
        """The recorded point at this target FAR (the calibration set could show it), or None."""
        return next((p for p in self.operating_points if abs(p.target_far - target_far) <= 1e-9 * target_far), None)


def card_path(onnx_path: str | Path) -> Path:
    path = Path(onnx_path)
    return path.with_name(path.stem + ".card.json")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_card(onnx_path: str | Path, verify_hash: bool = True) -> Optional[ModelCard]:
    """The card next to an ONNX file, or None where there is none; refuses a card of another file."""
    path = card_path(onnx_path)
    if not path.exists():
        return None
    try:
        card = ModelCard.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise DataError(f"{path}: unreadable model card ({exc})") from None
    if verify_hash and card.onnx_sha256 != sha256_file(onnx_path):
        raise DataError(f"{path} describes another file (sha256 differs from {onnx_path}); re-export the model")
    return card
