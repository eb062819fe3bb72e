"""Loading face models from facenas checkpoints: the file alone rebuilds the network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from facenas.errors import DataError
from facenas.models.chain import build_model
from facenas.space.arch import Arch


def check_model_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"model file {path} does not exist")
    return path


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> Any:
    """`torch.load` of a facenas checkpoint as data only (`weights_only=True`).

    A full unpickle can run any code a file carries, and checkpoints come from users and downloads. facenas writes
    only tensors, numbers, strings, lists and dicts, which the weights-only unpickler accepts without an allow-list;
    anything else in a file is refused with the name of what it would have loaded.
    """
    return torch.load(path, map_location=map_location, weights_only=True)


def load_face_model(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, Arch, dict[str, Any]]:
    """Rebuild a face model from a facenas checkpoint or `model.pt` alone."""
    path = check_model_file(path)
    try:
        state = load_checkpoint(path, device)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise DataError(f"{path}: not a readable facenas checkpoint ({_first_line(exc)})") from None
    if not isinstance(state, dict) or "arch" not in state or "model" not in state:
        raise DataError(f"{path}: not a facenas face checkpoint (no architecture and weights inside)")
    arch = Arch.from_dict(state["arch"])
    model = build_model(arch)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), arch, state.get("preprocess", {})


def _first_line(exc: BaseException) -> str:
    """torch's weights-only refusal is a page of advice; its first line names the problem."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
