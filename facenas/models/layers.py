"""The two searched operations, wrapped pre-activation style (ReLU -> op -> BN), and the heads.

Convolutions come from timm's `create_conv2d`, whose static "same" padding for odd kernels (k // 2 at stride 1
and 2) is exactly the authors' padding, so a padding or export quirk is fixed in one place. The pre-activation
order and the affine BatchNorm follow method.md section 1.
"""

from __future__ import annotations

import torch
from timm.layers import create_conv2d
from torch import nn

from facenas.space.arch import OP_CONV, OP_SEPARABLE, LayerSpec


class SeparableConv(nn.Sequential):
    """ReLU -> depthwise k x k (carries the stride) -> pointwise 1x1 -> BN."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            create_conv2d(c_in, c_in, kernel, stride=stride, depthwise=True, bias=False),
            create_conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )


class PlainConv(nn.Sequential):
    """ReLU -> standard k x k convolution (carries the stride) -> BN."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            create_conv2d(c_in, c_out, kernel, stride=stride, bias=False),
            nn.BatchNorm2d(c_out),
        )


#: Operation id (as stored in `Arch.ops`) -> module class.
OPS: dict[int, type[nn.Module]] = {OP_SEPARABLE: SeparableConv, OP_CONV: PlainConv}


def build_layer(spec: LayerSpec) -> nn.Module:
    return OPS[spec.op](spec.c_in, spec.c_out, spec.kernel, spec.stride)


class ClassifierHead(nn.Module):
    """Global average pooling -> Linear(channels -> classes): the paper's head."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))


class EmbeddingHead(nn.Module):
    """[global depthwise conv + BN | global average pool] -> Linear (no bias) -> BatchNorm1d.

    The GDC variant is MobileFaceNet's: a depthwise convolution whose kernel covers the whole final feature map
    keeps the spatial weighting that plain pooling throws away, which matters for aligned faces.
    """

    def __init__(self, channels: int, embedding_dim: int, kind: str, feature_size: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "gdc":
            self.reduce: nn.Module = nn.Sequential(
                nn.Conv2d(channels, channels, feature_size, groups=channels, bias=False),
                nn.BatchNorm2d(channels),
            )
        else:
            self.reduce = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, embedding_dim, bias=False)
        self.bn = nn.BatchNorm1d(embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(torch.flatten(self.reduce(x), 1)))
