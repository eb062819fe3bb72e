"""Shared fixtures. The suite generates its own data or reads the small real files under tests/data/golden."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from facenas.data.faces.pairs import pairs_from_faces
from facenas.data.faces.synthetic import synthetic_faces
from facenas.models import build_model
from facenas.space.arch import Arch, Profile

ROOT = Path(__file__).resolve().parents[1]
# Small real files shipped with the tests (tests/data/golden/README.md), so that every test runs on any clone.
GOLDEN = ROOT / "tests" / "data" / "golden"
REPLAY_LOGS = sorted((GOLDEN / "egnas-replay").glob("*.json"))  # two of the authors' search runs
TIMED_RUNS = sorted((GOLDEN / "egnas-runs").glob("*.json"))  # ten authors' runs with their time stamps
assert len(REPLAY_LOGS) == 2, "tests/data/golden/egnas-replay/ must hold the authors' two search logs"
ORL_SAMPLE = GOLDEN / "orl-sample"  # 12 real ORL subjects x 10 images
MNIST_SAMPLE = GOLDEN / "mnist-sample"  # the first 1,000 MNIST test images, IDX format


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


# -- face models for the export and service tests ------------------------------------------------------------


def save_face_model(path, *, channels=3, size=112, stem_stride=2, width=6, seed=0):
    profile = Profile(in_channels=channels, stem_stride=stem_stride, reductions=3, head="embedding",
                      embedding_dim=32, input_size=size)
    arch = Arch(width, 5, [0, 1, 0, 0, 0], [3, 3, 5, 3, 3], profile)
    torch.manual_seed(seed)
    model = build_model(arch).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.8, 1.2)
    torch.save({"format": "facenas.face-model/1", "arch": arch.to_dict(), "model": model.state_dict(),
                "preprocess": {"size": size, "channels": channels, "mean": 127.5, "std": 127.5}}, path)
    return arch


@pytest.fixture(scope="session")
def calibration_pairs():
    faces = synthetic_faces(24, 4, seed=21, first_identity=40_000)
    return pairs_from_faces(faces, 6, folds=10, seed=0, name="calib")


@pytest.fixture(scope="session")
def trained_face_model(tmp_path_factory):
    """A small face model really trained on synthetic faces (56x56, stride-1 stem): embeddings that discriminate."""
    from facenas.config import parse_config
    from facenas.train.evaluators import face_profile
    from facenas.train.face_job import train_faces

    folder = tmp_path_factory.mktemp("trained")
    cfg = parse_config({
        "name": "service-model", "task": "faces", "seed": 0,
        "faces": {"data": {"source": "synthetic", "synthetic": {"identities": 40, "images_per_identity": 6, "seed": 5},
                           "size": 56, "heldout_identities": 10, "heldout_pairs_per_fold": 5},
                  "train": {"epochs": 5, "batch_size": 32, "lr": 0.1, "margin": {"loss": "arcface", "s": 16.0}}},
        "model": {"stem_stride": 1, "reductions": 3, "embedding_dim": 32},
        "run": {"out": str(folder)},
    })
    train_faces(Arch(8, 5, [0, 1, 0, 0, 0], [3, 3, 5, 3, 3], face_profile(cfg)), cfg)
    return folder / "model.pt"


@pytest.fixture(scope="session")
def exported(tmp_path_factory, trained_face_model, calibration_pairs):
    """The trained model exported with a card (threshold chosen on synthetic pairs)."""
    from facenas.export.onnx import export_onnx

    folder = tmp_path_factory.mktemp("exported")
    report = export_onnx(trained_face_model, folder / "model.onnx", calibration=calibration_pairs,
                         calibration_name="synthetic calibration pairs")
    return folder / "model.onnx", report
