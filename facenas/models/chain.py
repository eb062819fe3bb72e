"""`Arch` -> `nn.Module`: the only place where an architecture becomes a network.

Stem (3x3 conv, stride from the profile, to 2C, BN, no activation) -> D pre-activation layers -> head
(method.md section 1). The trunk (`forward_features`) and the head are separate so that the classification runs
and the face runs share one body.
"""

from __future__ import annotations

import torch
from timm.layers import create_conv2d
from torch import nn

from facenas.models.layers import ClassifierHead, EmbeddingHead, build_layer
from facenas.space.arch import Arch


class Residual(nn.Module):
    """x + layer(x): the face profile's identity shortcut (`Profile.shortcut`) around a shape-preserving layer."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layer(x)


class ChainNet(nn.Module):
    """The paper's plain chain (no skip connections, no SE, no dropout); with `profile.shortcut`, identity
    shortcuts around the layers whose shapes match."""

    def __init__(self, arch: Arch) -> None:
        super().__init__()
        self.arch = arch
        profile = arch.profile
        self.stem = nn.Sequential(
            create_conv2d(profile.in_channels, arch.stem_channels, 3, stride=profile.stem_stride, bias=False),
            nn.BatchNorm2d(arch.stem_channels),
        )
        self.layers = nn.Sequential(*[Residual(build_layer(spec)) if spec.shortcut else build_layer(spec)
                                      for spec in arch.layers()])
        if profile.head == "classifier":
            self.head: nn.Module = ClassifierHead(arch.out_channels, profile.num_classes)
        else:
            self.head = EmbeddingHead(arch.out_channels, profile.embedding_dim, profile.embedding_head,
                                      profile.feature_size())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def build_model(arch: Arch) -> ChainNet:
    """Build the network an architecture describes."""
    return ChainNet(arch)


def module_param_count(model: nn.Module) -> int:
    """Trainable parameters of a built module: the reference the closed form is tested against."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
