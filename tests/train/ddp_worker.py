"""Process bodies for the DDP tests: each runs `fit_face` as one rank of a gloo group (spawned by the tests)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from facenas.config import parse_config
from facenas.data.faces.splits import load_face_splits
from facenas.space.arch import Arch
from facenas.train.distributed import SINGLE, process_group, world_from_env
from facenas.train.evaluators import face_profile
from facenas.train.faces import FaceRun, fit_face, new_run, steps_per_epoch
from facenas.train.final import FileCheckpoint


class Crash(Exception):
    pass


class Linear(nn.Module):
    """A network without BatchNorm: with it a rank's share trains exactly as its part of the global batch."""

    def __init__(self, side: int, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * side * side, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def build_run(cfg, splits, epochs: int, linear: bool, width: int, world=SINGLE) -> FaceRun:
    arch = Arch.uniform(width, 4, face_profile(cfg))
    run = new_run(arch, splits.train.num_identities, cfg.faces.train, epochs=epochs,
                  steps_per_epoch=steps_per_epoch(len(splits.train), cfg.faces.train.batch_size), seed=0,
                  device=torch.device("cpu"), preprocess={}, world=world)
    if linear:
        from timm.optim import create_optimizer_v2
        from timm.scheduler import CosineLRScheduler

        torch.manual_seed(0)
        run.model = Linear(cfg.faces.data.size, cfg.model.embedding_dim)
        params = list(run.model.parameters()) + list(run.head.parameters())
        run.optimizer = create_optimizer_v2(params, opt="momentum", lr=cfg.faces.train.lr, momentum=0.9,
                                            weight_decay=5e-4, filter_bias_and_bn=False)
        run.scheduler = CosineLRScheduler(run.optimizer, t_initial=100, t_in_epochs=False)
    return run


def train_rank(rank: int, world_size: int, port: int, cfg_data: dict, out: str, epochs: int,
               crash_at: Optional[tuple[int, int]] = None, resume: bool = False, linear: bool = False,
               width: int = 4, keep: bool = False) -> None:
    """Rank `rank` of `world_size`: train, checkpoint to `out/last.pt` (rank 0), save the weights to `out`;
    `crash_at` (epoch, step) stops the run there (with `keep`, its weights are saved as a finished run's)."""
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    cfg = parse_config(cfg_data)
    splits = load_face_splits(cfg.faces.data, cfg.seed, stream=cfg.faces.train.stream == "on")
    with process_group(torch.device("cpu")) as world:
        assert world == world_from_env() and world.size == world_size
        run = build_run(cfg, splits, epochs, linear, width, world)
        checkpoint = FileCheckpoint(Path(out) / "last.pt", {"test": 1}, resume)
        state = checkpoint.load()
        if state is not None:
            run.load_state_dict(state)

        def crash(r: FaceRun, values: dict) -> None:
            if crash_at is not None and (r.epoch, r.epoch_step) == crash_at:
                raise Crash  # on every rank at the same step, as a killed job stops them all

        try:
            fit_face(run, splits.train, cfg=cfg.faces.train, augment=cfg.faces.data.augment, epochs=epochs, seed=0,
                     device=torch.device("cpu"), on_step=crash, checkpoint=checkpoint, world=world)
        except Crash:
            if not keep:
                return
        shared = run.shared_state()  # every rank: Partial FC gathers its shards
        if world.is_main:
            torch.save({"model": run.model.state_dict(), "head": shared["head"],
                        "losses": [e.train_loss for e in run.history]}, Path(out) / "weights.pt")
