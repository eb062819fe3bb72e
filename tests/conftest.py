"""Shared fixtures. The core suite generates its own data; tests that use ../shared/data skip without it."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
REPLAY_DIR = SHARED / "egnas-replay"
REPLAY_LOGS = sorted(REPLAY_DIR.glob("*.json")) if REPLAY_DIR.is_dir() else []


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test saying why."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared/data is only present in the development and CI checkouts)")
    return path


@pytest.fixture
def tiny_config_data() -> dict:
    """A search config on scikit-learn's digits small enough to finish in seconds."""
    return {
        "name": "tiny",
        "seed": 0,
        "data": {"dataset": "digits", "val_fraction": 0.2, "test_fraction": 0.2, "crop_padding": 1, "cutout": 0,
                 "train_subset": 400},
        "search": {"depth": {"min": 3, "max": 5, "start_epochs": 1, "epoch_step": 0},
                   "width": {"max": 8, "min": 4, "step": 2, "epoch_step": 0},
                   "micro": {"epochs": 1}},
        "train": {"batch_size": 64},
        "final": {"epochs": 2},
        "run": {"executor": "inline"},
    }


@pytest.fixture
def tiny_face_config_data() -> dict:
    """A face config small enough that a search, a training run and an evaluation take seconds."""
    return {
        "name": "tiny-faces",
        "task": "faces",
        "seed": 0,
        "faces": {
            "data": {"source": "synthetic", "synthetic": {"identities": 30, "images_per_identity": 5, "seed": 3},
                     "size": 32, "heldout_identities": 10, "heldout_pairs_per_fold": 4},
            "train": {"epochs": 3, "batch_size": 32, "lr": 0.1, "eval_batch_size": 64,
                      "margin": {"loss": "arcface", "s": 16.0, "m2": 0.3}},
        },
        "model": {"stem_stride": 1, "reductions": 3, "embedding_dim": 16, "embedding_head": "gdc"},
        "search": {"depth": {"min": 4, "max": 5, "start_epochs": 1, "epoch_step": 0},
                   "width": {"max": 8, "min": 4, "step": 4, "epoch_step": 0},
                   "micro": {"epochs": 1, "kernel_pass": False}},
        "run": {"executor": "inline"},
    }
