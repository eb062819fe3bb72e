"""Profiles of the search space for the tasks facenas runs."""

from __future__ import annotations

from facenas.space.arch import Profile


def classification_profile(in_channels: int, num_classes: int, image_side: int, *, stem_stride: int = 1,
                           reductions: int = 2, shortcut: bool = False) -> Profile:
    """The paper's profile for a classification dataset; `image_side` is the evaluation size (for MACs)."""
    return Profile(in_channels=in_channels, num_classes=num_classes, stem_stride=stem_stride,
                   reductions=reductions, head="classifier", input_size=image_side, shortcut=shortcut)
