"""The paper's augmentation, applied to whole batches of uint8 tensors on the training device.

Random crop with zero padding, optional horizontal flip, normalisation, then cutout on the normalised image,
exactly as the authors' per-sample torchvision pipeline does (method.md section 4), but as a few tensor ops per
batch. The per-sample PIL route (and albumentations, which is per-sample too) would spend more time preparing
images than a small candidate spends training on them; the faces pipeline, where images are large and varied,
uses albumentations instead.

All random draws come from the generator passed in (on the CPU), so a batch is a pure function of its images
and the generator state, on every device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from facenas.errors import ConfigError


@dataclass(frozen=True)
class AugmentSpec:
    crop_size: int
    padding: int
    flip: bool
    cutout: int
    mean: tuple[float, ...]  # per channel, in [0, 1]
    std: tuple[float, ...]

    def to_dict(self) -> dict[str, object]:
        return {"crop_size": self.crop_size, "padding": self.padding, "flip": self.flip, "cutout": self.cutout,
                "mean": list(self.mean), "std": list(self.std)}


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] of uint8 (N, C, H, W) images (computed from the training split)."""
    x = images.astype(np.float64) / 255.0
    mean = x.mean(axis=(0, 2, 3))
    std = x.std(axis=(0, 2, 3))
    return tuple(float(m) for m in mean), tuple(float(max(s, 1e-6)) for s in std)


class BatchAugment:
    """Train-time augmentation and eval-time normalisation of uint8 batches."""

    def __init__(self, spec: AugmentSpec, image_side: int, device: torch.device) -> None:
        if spec.crop_size > image_side + 2 * spec.padding:
            raise ConfigError(f"crop size {spec.crop_size} exceeds the padded image side "
                              f"{image_side + 2 * spec.padding}; lower data.crop_size or raise data.crop_padding")
        self.spec = spec
        self.device = device
        channels = len(spec.mean)
        self._shift = torch.tensor(spec.mean, device=device).view(1, channels, 1, 1) * 255.0
        self._scale = 1.0 / (torch.tensor(spec.std, device=device).view(1, channels, 1, 1) * 255.0)
        self._arange = torch.arange(spec.crop_size, device=device)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 -> float, (x / 255 - mean) / std."""
        return (x.float() - self._shift) * self._scale

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        spec = self.spec
        b, _, h, w = x.shape
        size, pad = spec.crop_size, spec.padding
        if pad:
            x = F.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, h + 2 * pad - size + 1, (b,), generator=generator).to(self.device)
        ox = torch.randint(0, w + 2 * pad - size + 1, (b,), generator=generator).to(self.device)
        rows = (oy[:, None] + self._arange)[:, :, None]
        cols = (ox[:, None] + self._arange)[:, None, :]
        batch = torch.arange(b, device=self.device)[:, None, None]
        x = x.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # (B, C, size, size)
        if spec.flip:
            flip = (torch.rand(b, generator=generator) < 0.5).to(self.device)
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        x = self.normalize(x)
        if spec.cutout:
            half = spec.cutout // 2
            cy = torch.randint(0, size, (b,), generator=generator).to(self.device)
            cx = torch.randint(0, size, (b,), generator=generator).to(self.device)
            in_rows = (self._arange >= (cy - half).clamp(0, size)[:, None]) & (
                self._arange < (cy + half).clamp(0, size)[:, None])
            in_cols = (self._arange >= (cx - half).clamp(0, size)[:, None]) & (
                self._arange < (cx + half).clamp(0, size)[:, None])
            hole = in_rows[:, :, None] & in_cols[:, None, :]
            x = x.masked_fill(hole[:, None], 0.0)
        return x
