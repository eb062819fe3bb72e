"""Loading face models from facenas checkpoints: the file alone rebuilds the network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from facenas.errors import DataError
from facenas.models.chain import build_model
from facenas.space.arch import Arch


def load_face_model(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, Arch, dict[str, Any]]:
    """Rebuild a face model from a facenas checkpoint or `model.pt` alone."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"model file {path} does not exist")
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise DataError(f"{path}: not a readable facenas checkpoint ({exc})") from None
    if not isinstance(state, dict) or "arch" not in state or "model" not in state:
        raise DataError(f"{path}: not a facenas face checkpoint (no architecture and weights inside)")
    arch = Arch.from_dict(state["arch"])
    model = build_model(arch)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), arch, state.get("preprocess", {})
