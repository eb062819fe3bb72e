"""Margin softmax on normalised embeddings and class centres (ArcFace, CosFace, insightface's combined margin).

`NormalizedClassifier` owns the class centres and returns cosines; `MarginSoftmax` only rewrites the target
cosine into `cos(m1 * theta + m2) - m3` and scales by `s` (insightface's `CombinedMarginLoss` split from Partial
FC, as arcface_torch does). Everything runs in float32 even under autocast.

Numerical safety: the ArcFace case (m1 = 1) is computed as `cos(theta + m) = cos*cos(m) - sin*sin(m)` without
`arccos`, whose gradient is infinite at +-1. Past theta + m2 > pi the target would stop decreasing with theta
(cos is not monotonic there), so it continues linearly as `cos(theta) - m2 * sin(m2)` (the usual ArcFace "th/mm"
fallback); m1 > 1 uses a clamped `arccos` and SphereFace's monotonic extension `(-1)^k cos(angle) - 2k`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from facenas.errors import ConfigError


class NormalizedClassifier(nn.Module):
    """Class centres W (classes x dim); returns cos(angle) between normalised embeddings and centres."""

    def __init__(self, embedding_dim: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.weight, std=0.01)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            return F.linear(F.normalize(embeddings.float()), F.normalize(self.weight.float()))


class MarginSoftmax(nn.Module):
    """Cosines (B, K) and labels -> logits with the margin applied to each sample's own class."""

    def __init__(self, s: float = 64.0, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0) -> None:
        super().__init__()
        problems = []
        if s <= 0:
            problems.append(f"s = {s} must be > 0")
        if m1 < 1:
            problems.append(f"m1 = {m1} must be >= 1 (SphereFace's multiplicative margin)")
        if not 0 <= m2 < math.pi:
            problems.append(f"m2 = {m2} must lie in [0, pi) (ArcFace's additive angular margin)")
        if not 0 <= m3 < 1:
            problems.append(f"m3 = {m3} must lie in [0, 1) (CosFace's additive cosine margin)")
        if problems:
            raise ConfigError(f"invalid margin (s={s}, m1={m1}, m2={m2}, m3={m3}): " + "; ".join(problems))
        self.s, self.m1, self.m2, self.m3 = s, m1, m2, m3
        # the share of the margins in force (margin warm-up, `margin_ramp`): a tensor, so that changing it neither
        # synchronises with the device nor makes torch.compile recompile; not saved (the step sets it)
        self.register_buffer("ramp", torch.ones(()), persistent=False)

    def set_ramp(self, value: float) -> None:
        """Apply `value` (0 = no margin, a normalised softmax; 1 = the full margins) from the next call on."""
        self.ramp.fill_(value)

    def target(self, cos: torch.Tensor) -> torch.Tensor:
        """cos(m1 * theta + m2) - m3 at the ramp's share of the margins, kept monotonic in theta."""
        ramp = self.ramp.to(cos.dtype)
        out = cos
        if self.m1 == 1.0 and self.m2 > 0:
            m2 = ramp * self.m2
            cos_m, sin_m = torch.cos(m2), torch.sin(m2)
            sin = torch.sqrt((1.0 - cos * cos).clamp_min(1e-12))
            with_margin = cos * cos_m - sin * sin_m
            # past theta + m2 > pi (cos(theta) below cos(pi - m2) = -cos(m2)), the linear fallback
            out = torch.where(cos > -cos_m, with_margin, cos - sin_m * m2)
        elif self.m1 != 1.0:
            # SphereFace's monotonic extension: (-1)^k cos(angle) - 2k with k = floor(angle / pi)
            theta = torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
            angle = (1.0 + ramp * (self.m1 - 1.0)) * theta + ramp * self.m2
            k = torch.floor(angle / math.pi)
            out = (1 - 2 * torch.remainder(k, 2)) * torch.cos(angle) - 2 * k
        return out - ramp * self.m3

    def forward(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosine = cosine.float()
        index = torch.arange(len(labels), device=cosine.device)
        target = self.target(cosine[index, labels])
        logits = cosine.clone()
        logits[index, labels] = target
        return logits * self.s


def margin_ramp(step: int, steps_per_epoch: int, hold_epochs: float, warmup_epochs: float) -> float:
    """Share of the margins in force at a global step: none for `hold_epochs` (a normalised softmax start), then
    growing linearly to all of them over `warmup_epochs` (insightface's remedy for margins that do not converge
    from scratch). A pure function of the step, so a resumed run continues the same ramp."""
    epoch = step / max(steps_per_epoch, 1)
    if epoch < hold_epochs:
        return 0.0
    if warmup_epochs <= 0:
        return 1.0
    return min((epoch - hold_epochs) / warmup_epochs, 1.0)


class MarginHead(nn.Module):
    """Class centres + margin + cross-entropy: what a face model trains against."""

    def __init__(self, embedding_dim: int, num_classes: int, s: float, m1: float, m2: float, m3: float) -> None:
        super().__init__()
        self.classifier = NormalizedClassifier(embedding_dim, num_classes)
        self.margin = MarginSoftmax(s, m1, m2, m3)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, cosines): the cosines (without margin) give the training accuracy."""
        cosine = self.classifier(embeddings)
        return F.cross_entropy(self.margin(cosine, labels), labels), cosine
