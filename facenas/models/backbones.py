"""Hand-designed face backbones, the baselines a searched architecture is compared with.

MobileFaceNet and iResNet-18 / iResNet-50 follow insightface's arcface_torch definitions
(`recognition/arcface_torch/backbones/mobilefacenet.py` and `iresnet.py`): same blocks, channels, strides, heads
and initialisation, so that at width 1, 112x112 and 512-d they have the reference's parameter counts. `timm:<name>`
is any timm model's feature trunk followed by facenas's embedding head. All are trained by the same trainer,
evaluated by the same evaluator and exported under the same ONNX contract as the searched chain; what tells them
apart is a `BackboneSpec`, a frozen value that `model.pt` stores so that the file alone rebuilds the network.

Two changes to the originals, both neutral at width 1 and 112x112:

* a width multiplier scales every channel count (rounded to an even number, at least 8), so a baseline can be
  matched to a searched network's parameter budget (`match_width`) about as finely as the search moves its own
  width (one channel at a time); even counts keep MobileFaceNet's grouped 3x3 convolution at its 2 channels per
  group (64 groups of 128 channels at width 1). Rounding to multiples of 8, as MobileNets do, would move
  iResNet's flatten-FC head, most of its parameters at small widths, in steps of 4 % and more;
* `stem_stride` is the stride of the first reduction: 2 as in the originals for 112x112 faces, 1 for the search's
  half-resolution proxy (56x56), so that the body sees the same 56 -> 28 -> 14 -> 7 maps either way and has the
  same parameters. For MobileFaceNet that is the stride of the stem convolution. iResNet's stem convolution has
  stride 1 in the original and its first reduction is the first block of layer1, which then does not stride; its
  1x1 projection shortcut is kept (at stride 1) so that the parameters and the state dict do not change. timm
  models keep their own stems (`stem_stride` is not used for them).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Optional

import torch
from torch import nn

from facenas.config import ModelConfig
from facenas.errors import ArchError
from facenas.models.chain import module_param_count
from facenas.models.layers import EmbeddingHead

BACKBONE_FORMAT = "facenas.backbone/1"
#: The hand-designed backbones by name (the config validates against the same tuple).
BACKBONES: tuple[str, ...] = ModelConfig.BACKBONES
TIMM_PREFIX = "timm:"
#: "gdc" / "pool": facenas's embedding head (`EmbeddingHead`); "fc": iResNet's own BN -> flatten -> FC -> BN.
BACKBONE_HEADS = ("gdc", "pool", "fc")
#: The head each network has in arcface_torch (MobileFaceNet's GDC is exactly facenas's "gdc" head).
NATIVE_HEADS = {"mobilefacenet": "gdc", "iresnet18": "fc", "iresnet50": "fc"}
IRESNET_LAYERS = {"iresnet18": (2, 2, 2, 2), "iresnet50": (3, 4, 14, 3)}
CHANNEL_DIVISOR = 2
MIN_CHANNELS = 8


@dataclass(frozen=True)
class BackboneSpec:
    """A hand-designed network as a value: what `build_backbone` builds and what a face checkpoint stores.

    `embedding_head` None means the network's own head: GDC for MobileFaceNet and timm models, BN -> flatten ->
    FC -> BN for iResNet (arcface_torch's).
    """

    name: str
    width: float = 1.0
    in_channels: int = 3
    input_size: int = 112
    embedding_dim: int = 512
    embedding_head: Optional[str] = None
    stem_stride: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise ArchError(f"a backbone name must be a string, got {self.name!r}")
        problems = []
        if self.is_timm:
            if not self.timm_name:
                problems.append(f"{self.name!r} names no timm model; write timm:<name>, e.g. timm:resnet18")
            if self.width != 1.0:
                problems.append(f"a width multiplier ({self.width}) applies to {', '.join(BACKBONES)} only; choose "
                                "the timm variant of the size you need (e.g. mobilenetv3_small_050)")
        elif self.name not in BACKBONES:
            problems.append(f"unknown backbone {self.name!r}; valid: {', '.join(BACKBONES)} or timm:<name>")
        if isinstance(self.width, bool) or not isinstance(self.width, (int, float)) or not math.isfinite(self.width) \
                or self.width <= 0:
            problems.append(f"width must be a number > 0, got {self.width!r}")
        if self.in_channels not in (1, 3):
            problems.append(f"in_channels must be 1 (grey) or 3 (colour), got {self.in_channels}")
        if self.input_size < 16:
            problems.append(f"input_size must be >= 16, got {self.input_size}")
        if self.embedding_dim < 1:
            problems.append(f"embedding_dim must be >= 1, got {self.embedding_dim}")
        if self.stem_stride not in (1, 2):
            problems.append(f"stem_stride must be 1 or 2, got {self.stem_stride}")
        head = self.embedding_head or NATIVE_HEADS.get(self.name, "gdc")
        allowed = BACKBONE_HEADS if self.name.startswith("iresnet") else ("gdc", "pool")
        if head not in allowed:
            problems.append(f"embedding_head of {self.name} must be one of {', '.join(allowed)}, got {head!r}")
        if problems:
            raise ArchError("invalid backbone: " + "; ".join(problems))
        object.__setattr__(self, "width", float(self.width))
        object.__setattr__(self, "embedding_head", head)

    @property
    def is_timm(self) -> bool:
        return self.name.startswith(TIMM_PREFIX)

    @property
    def timm_name(self) -> str:
        return self.name[len(TIMM_PREFIX):] if self.is_timm else ""

    def feature_size(self) -> int:
        """Side of the last feature map of the built-in backbones: the first reduction, then three more."""
        side = -(-self.input_size // self.stem_stride)
        for _ in range(3):
            side = -(-side // 2)
        return side

    def short(self) -> str:
        stem = "" if self.is_timm else f" s{self.stem_stride}"
        return (f"{self.name} x{self.width:g} {self.input_size}px{stem} {self.in_channels}ch "
                f"{self.embedding_dim}d {self.embedding_head}")

    def to_dict(self) -> dict[str, Any]:
        return {"format": BACKBONE_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BackboneSpec":
        if not isinstance(data, dict):
            raise ArchError(f"a backbone must be an object, got {type(data).__name__}")
        if data.get("format", BACKBONE_FORMAT) != BACKBONE_FORMAT:
            raise ArchError(f"unsupported backbone format {data.get('format')!r}; expected {BACKBONE_FORMAT!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"format"})
        if unknown:
            raise ArchError(f"unknown backbone keys {unknown}; valid keys are {sorted(known)}")
        if "name" not in data:
            raise ArchError("a backbone needs a name")
        return cls(**{k: v for k, v in data.items() if k != "format"})


def scaled(channels: int, width: float) -> int:
    """`channels * width` rounded to an even number (at least 8): monotone in the width, exact at width 1."""
    return max(MIN_CHANNELS, int(round(channels * width / CHANNEL_DIVISOR)) * CHANNEL_DIVISOR)


# -- MobileFaceNet (arcface_torch `get_mbf`: scale 2, blocks (1, 4, 6, 2)) -----------------------------------------

class ConvBNPReLU(nn.Sequential):
    """Convolution (no bias) -> BN -> PReLU: arcface_torch's `ConvBlock`."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> None:
        super().__init__(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(c_out), nn.PReLU(c_out))


class InvertedBottleneck(nn.Module):
    """1x1 expand -> 3x3 depthwise (carries the stride) -> 1x1 linear projection: arcface_torch's `DepthWise`.

    The residual blocks of a stage add their input; the strided block that opens a stage does not.
    """

    def __init__(self, c_in: int, c_out: int, expand: int, stride: int, residual: bool) -> None:
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBNPReLU(c_in, expand, 1),
            ConvBNPReLU(expand, expand, 3, stride, groups=expand),
            nn.Conv2d(expand, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x)
        return x + y if self.residual else y


#: (output channels, expansion of the strided block, residual blocks, their expansion), at arcface_torch's scale 2.
MBF_STAGES = ((128, 128, 4, 128), (256, 256, 6, 256), (256, 512, 2, 256))
MBF_STEM = 128
MBF_SEP = 512


def _mobilefacenet(spec: BackboneSpec) -> tuple[nn.Module, nn.Module]:
    w = spec.width
    c = scaled(MBF_STEM, w)
    layers: list[nn.Module] = [ConvBNPReLU(spec.in_channels, c, 3, spec.stem_stride),
                               ConvBNPReLU(c, c, 3, 1, groups=c // 2)]
    for out, expand_down, blocks, expand in MBF_STAGES:
        o = scaled(out, w)
        layers.append(InvertedBottleneck(c, o, scaled(expand_down, w), 2, residual=False))
        layers.extend(InvertedBottleneck(o, o, scaled(expand, w), 1, residual=True) for _ in range(blocks))
        c = o
    sep = scaled(MBF_SEP, w)
    layers.append(ConvBNPReLU(c, sep, 1))
    head = EmbeddingHead(sep, spec.embedding_dim, spec.embedding_head or "gdc", spec.feature_size())
    return nn.Sequential(*layers), head


def _init_mobilefacenet(model: nn.Module) -> None:
    """arcface_torch's `_initialize_weights`: Kaiming (fan out) convolutions and linears, BN at identity."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# -- iResNet (arcface_torch `iresnet18` / `iresnet50`) ------------------------------------------------------------

class IBasicBlock(nn.Module):
    """BN -> 3x3 conv -> BN -> PReLU -> 3x3 conv (carries the stride) -> BN, plus the (projected) input."""

    def __init__(self, c_in: int, c_out: int, stride: int, project: bool) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.prelu = nn.PReLU(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.downsample: Optional[nn.Module] = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)) if project else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return y + (self.downsample(x) if self.downsample is not None else x)


class IResNetHead(nn.Module):
    """BN2d -> flatten -> Linear (with bias) -> BatchNorm1d whose scale is frozen at 1: arcface_torch's iResNet head.

    The flatten keeps every position of the final map (512 x 7 x 7 at 112x112), which is where most of iResNet's
    parameters outside the body are. arcface_torch's dropout defaults to 0 and is left out.
    """

    def __init__(self, channels: int, embedding_dim: int, feature_size: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels * feature_size * feature_size, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim)
        self.features.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.fc(torch.flatten(self.bn(x), 1)))


IRESNET_PLANES = (64, 128, 256, 512)


def _iresnet(spec: BackboneSpec) -> tuple[nn.Module, nn.Module]:
    w = spec.width
    c = scaled(64, w)
    layers: list[nn.Module] = [nn.Conv2d(spec.in_channels, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.PReLU(c)]
    for stage, (planes, blocks) in enumerate(zip(IRESNET_PLANES, IRESNET_LAYERS[spec.name])):
        o = scaled(planes, w)
        stride = spec.stem_stride if stage == 0 else 2
        stage_blocks = [IBasicBlock(c, o, stride, project=True)]
        stage_blocks.extend(IBasicBlock(o, o, 1, project=False) for _ in range(blocks - 1))
        layers.append(nn.Sequential(*stage_blocks))
        c = o
    if spec.embedding_head == "fc":
        head: nn.Module = IResNetHead(c, spec.embedding_dim, spec.feature_size())
    else:
        head = EmbeddingHead(c, spec.embedding_dim, spec.embedding_head or "gdc", spec.feature_size())
    return nn.Sequential(*layers), head


def _init_iresnet(model: nn.Module) -> None:
    """arcface_torch's: convolutions N(0, 0.1), BN at identity (the embedding BN's scale stays 1)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.1)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# -- timm ---------------------------------------------------------------------------------------------------------

def check_timm_name(spec: BackboneSpec) -> None:
    """An unknown timm model is an error naming it (and the closest names timm has), before any data is read."""
    if not spec.is_timm:
        return
    import timm

    name = spec.timm_name
    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:5]
        raise ArchError(f"timm does not know a model {name!r}" + (f"; similar: {', '.join(close)}" if close else ""))


def _timm(spec: BackboneSpec) -> tuple[nn.Module, nn.Module]:
    """timm's feature trunk (no classifier, no pooling) and facenas's embedding head sized by a dry run."""
    import timm

    check_timm_name(spec)
    name = spec.timm_name
    body = timm.create_model(name, pretrained=False, num_classes=0, global_pool="", in_chans=spec.in_channels)
    was_training = body.training
    body.eval()
    try:
        with torch.no_grad():
            features = body(torch.zeros(1, spec.in_channels, spec.input_size, spec.input_size))
    except Exception as exc:  # noqa: BLE001 - a model that cannot take this input is a user-facing error
        raise ArchError(f"timm:{name} cannot run on {spec.input_size}x{spec.input_size} inputs: "
                        f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None
    body.train(was_training)
    if features.ndim != 4 or features.shape[2] != features.shape[3]:
        raise ArchError(f"timm:{name} gives features of shape {tuple(features.shape)}, not a square (N, C, H, W) "
                        "map; facenas's embedding head needs a convolutional feature map")
    head = EmbeddingHead(int(features.shape[1]), spec.embedding_dim, spec.embedding_head or "gdc",
                         int(features.shape[2]))
    return body, head


# -- the network ---------------------------------------------------------------------------------------------------

class FaceBackbone(nn.Module):
    """A backbone's trunk and embedding head, with the spec that built it; the interface of `ChainNet`."""

    def __init__(self, spec: BackboneSpec, initialise: bool = True) -> None:
        super().__init__()
        self.spec = spec
        if spec.is_timm:
            self.body, self.head = _timm(spec)
        elif spec.name == "mobilefacenet":
            self.body, self.head = _mobilefacenet(spec)
            if initialise:
                _init_mobilefacenet(self)
        else:
            self.body, self.head = _iresnet(spec)
            if initialise:
                _init_iresnet(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def build_backbone(spec: BackboneSpec) -> FaceBackbone:
    """Build the network a backbone spec describes (an unknown timm name is an `ArchError` naming it)."""
    return FaceBackbone(spec)


def backbone_param_count(spec: BackboneSpec) -> int:
    """Trainable parameters of the built network, built on the meta device: no memory, and no initialisation."""
    with torch.device("meta"):
        return module_param_count(FaceBackbone(spec, initialise=False))


def match_width(name: str, params: int, *, in_channels: int = 3, input_size: int = 112, embedding_dim: int = 512,
                embedding_head: Optional[str] = None, stem_stride: int = 2, low: float = 1 / 64,
                high: float = 8.0) -> float:
    """The width multiplier whose built network's parameter count is closest to `params`.

    The count is monotone in the width (channels round to even numbers), so bisection brackets the target
    between two channel configurations, stopping once they are neighbours or within 0.1 % of the target of each
    other (closer than that does not matter for a comparison at equal size), and the closer one wins; the width
    returned is the shortest decimal that builds the same network.
    """
    if name.startswith(TIMM_PREFIX):
        raise ArchError(f"{name}: a width multiplier applies to {', '.join(BACKBONES)} only")
    if params < 1:
        raise ArchError(f"the parameter target must be >= 1, got {params}")
    base = BackboneSpec(name, 1.0, in_channels, input_size, embedding_dim, embedding_head, stem_stride)
    cache: dict[float, int] = {}

    def count(width: float) -> int:
        if width not in cache:
            cache[width] = backbone_param_count(replace(base, width=width))
        return cache[width]

    if count(low) > params:
        raise ArchError(f"{name} has {count(low):,} parameters at its smallest width ({low:g}); a target of "
                        f"{params:,} is below that")
    if count(high) < params:
        raise ArchError(f"{name} has {count(high):,} parameters at width {high:g}; a target of {params:,} is above "
                        "that")
    lo, hi = low, high
    while hi - lo > 1e-5 and count(hi) - count(lo) > params * 1e-3:
        mid = (lo + hi) / 2
        if count(mid) < params:
            lo = mid
        else:
            hi = mid
    best = min((hi, lo), key=lambda w: abs(count(w) - params))
    for digits in range(1, 7):
        short = round(best, digits)
        if short > 0 and count(short) == count(best):
            return short
    return best


def count_macs_module(model: nn.Module, input_size: int, channels: int) -> int:
    """Multiply-accumulates of one forward pass of one `channels` x `input_size` x `input_size` image, measured.

    torch's `FlopCounterMode` counts the FLOPs of convolutions and matrix products, two per multiply-accumulate, so
    MACs = FLOPs / 2; BN, activations, additions and pooling are not counted, as in `facenas.space.count`'s closed
    form for the chain and in the usual MAC figures. The model is measured in eval mode and left as it was.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.zeros(1, channels, input_size, input_size, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def params_for_budget(spec: BackboneSpec, params: int) -> BackboneSpec:
    """`spec` at the width whose parameter count is closest to `params`."""
    width = match_width(spec.name, params, in_channels=spec.in_channels, input_size=spec.input_size,
                        embedding_dim=spec.embedding_dim, embedding_head=spec.embedding_head,
                        stem_stride=spec.stem_stride)
    return replace(spec, width=width)


__all__ = ["BACKBONES", "BackboneSpec", "FaceBackbone", "backbone_param_count", "build_backbone", "check_timm_name",
           "count_macs_module", "match_width", "params_for_budget", "scaled"]
