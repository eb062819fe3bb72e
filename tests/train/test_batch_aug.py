"""Batched augmentation must do what the authors' per-sample torchvision pipeline does."""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.functional as TF

from facenas.data.batch_aug import AugmentSpec, BatchAugment, channel_stats


def spec(**kw) -> AugmentSpec:
    base = dict(crop_size=32, padding=4, flip=False, cutout=0, mean=(0.5,), std=(0.25,))
    return AugmentSpec(**{**base, **kw})


def images(b=6, c=1, side=28, seed=0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(1, 256, (b, c, side, side), dtype=np.uint8))


def test_crop_matches_torchvision_pad_then_crop():
    x = images()
    aug = BatchAugment(spec(), 28, torch.device("cpu"))
    gen = torch.Generator().manual_seed(5)
    out = aug(x, gen)
    gen = torch.Generator().manual_seed(5)
    oy = torch.randint(0, 5, (6,), generator=gen)
    ox = torch.randint(0, 5, (6,), generator=gen)
    for i in range(6):
        padded = TF.pad(x[i], [4])  # zero fill, as RandomCrop(32, padding=4)
        want = padded[:, oy[i]:oy[i] + 32, ox[i]:ox[i] + 32].float()
        assert torch.allclose(out[i], (want / 255 - 0.5) / 0.25, atol=1e-6)


def test_cutout_zeroes_a_square_on_the_normalised_image():
    x = images(b=32, side=32)
    aug = BatchAugment(spec(padding=0, cutout=16), 32, torch.device("cpu"))
    out = aug(x, torch.Generator().manual_seed(0))
    zeros = (out == 0).sum(dim=(1, 2, 3))
    assert zeros.max() == 256  # a full 16x16 hole when the centre is far from the border
    assert (zeros > 0).all() and (zeros <= 256).all()


def test_flip_flips_about_half():
    x = images(b=400, side=8)
    aug = BatchAugment(spec(crop_size=8, padding=0, flip=True), 8, torch.device("cpu"))
    out = aug(x, torch.Generator().manual_seed(1))
    plain = aug.normalize(x)
    flipped = (out == plain.flip(3)).flatten(1).all(1) & ~(out == plain).flatten(1).all(1)
    assert 150 < int(flipped.sum()) < 250


def test_same_generator_state_same_batch_and_eval_is_plain_normalisation():
    x = images()
    aug = BatchAugment(spec(cutout=8, flip=True), 28, torch.device("cpu"))
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert torch.allclose(aug.normalize(x), (x.float() / 255 - 0.5) / 0.25, atol=1e-6)


def test_channel_stats():
    x = np.stack([np.zeros((4, 4)), np.full((4, 4), 255)])[None].repeat(3, 0).astype(np.uint8)
    mean, std = channel_stats(x)
    assert mean == (0.0, 1.0) and std[0] > 0
