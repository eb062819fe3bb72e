"""Loading face models from facenas checkpoints: the file alone rebuilds the network."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import torch

from facenas.errors import DataError, FacenasError
from facenas.models.backbones import BackboneSpec, build_backbone, count_macs_module
from facenas.models.chain import build_model, module_param_count
from facenas.space.arch import Arch
from facenas.space.count import count_macs, count_params

#: What a face checkpoint describes its network with: a searched architecture or a hand-designed backbone.
Network = Union[Arch, BackboneSpec]


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


def load_face_model(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, Network, dict[str, Any]]:
    """Rebuild a face model from a facenas checkpoint or `model.pt` alone.

    The second item is the `Arch` of a searched network, or the `BackboneSpec` of a hand-designed one;
    `describe_face_model` gives what callers need about either.
    """
    path = check_model_file(path)
    try:
        state = load_checkpoint(path, device)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise DataError(f"{path}: not a readable facenas checkpoint ({first_line(exc)})") from None
    if not isinstance(state, dict) or "model" not in state or (state.get("arch") is None and
                                                                state.get("backbone") is None):
        raise DataError(f"{path}: not a facenas face checkpoint (no architecture and weights inside)")
    try:
        if state.get("backbone") is not None:
            network: Network = BackboneSpec.from_dict(state["backbone"])
            model: torch.nn.Module = build_backbone(network)
        else:
            network = Arch.from_dict(state["arch"])
            model = build_model(network)
    except FacenasError as exc:
        raise DataError(f"{path}: {exc}") from None
    model.load_state_dict(state["model"])
    return model.to(device).eval(), network, state.get("preprocess", {})


@dataclass(frozen=True)
class FaceModelInfo:
    """What the users of a loaded face model need to know, for a searched and a hand-designed network alike."""

    description: dict[str, Any]  # `Arch.to_dict()` or `BackboneSpec.to_dict()` (their "format" tells which)
    short: str
    params: int
    macs: int
    in_channels: int
    input_size: int
    embedding_dim: int
    head: str  # "embedding" or "classifier"


def describe_face_model(model: torch.nn.Module, network: Network) -> FaceModelInfo:
    """Parameters and MACs: the closed form for a searched chain, the built module measured for a backbone."""
    if isinstance(network, BackboneSpec):
        return FaceModelInfo(network.to_dict(), network.short(), module_param_count(model),
                             count_macs_module(model, network.input_size, network.in_channels), network.in_channels,
                             network.input_size, network.embedding_dim, "embedding")
    profile = network.profile
    return FaceModelInfo(network.to_dict(), network.short(), count_params(network), count_macs(network),
                         profile.in_channels, profile.input_size, profile.embedding_dim, profile.head)


def first_line(exc: BaseException) -> str:
    """torch's weights-only refusal is a page of advice; its first line names the problem."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
