"""Data-parallel training with torch's own launcher (torchrun) and DistributedDataParallel.

`facenas train --gpus N` starts `torchrun --standalone --nproc_per_node N` on this machine; on several machines
run `torchrun --nnodes ... -m facenas.cli.main train ...` yourself. Each process reads `RANK`, `WORLD_SIZE` and
`LOCAL_RANK` from the launcher, joins the process group (NCCL on GPUs, gloo on CPUs) and trains its share.

How the work is shared, so that any world size trains the *same* run:
- the global batch is the single-process batch (`faces.train.batch_size`, in the same seeded order); rank r of W
  takes the r-th contiguous share of its positions (`World.shard`), read and augmented by that rank's DataLoader;
- each rank's mean loss is weighted by (its samples x W / the batch's samples), so DDP's gradient average is the
  mean over the global batch exactly, also when the shares differ by one sample;
- rank 0 alone evaluates and writes checkpoints, logs and reports; a checkpoint holds the unwrapped weights and
  the global step, so a run resumes from it on any number of processes.
What differs from one process: BatchNorm normalises each rank's share with its own statistics (as in
insightface's arcface_torch), so runs agree within a tolerance, not to the bit (tests/train/test_ddp.py).

Process-group set-up and the launcher are torch's; nothing here talks to other machines itself.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch

from facenas.config import Config
from facenas.data.faces.augment import rank_share
from facenas.errors import ConfigError

LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, start: int, end: int) -> tuple[int, int]:
        """This rank's contiguous share of positions [start, end): sizes differ by at most one."""
        return rank_share(start, end, self.rank, self.size)

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over the ranks, in place (itself with one process)."""
        if self.size > 1:
            torch.distributed.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.size > 1:
            torch.distributed.barrier()


SINGLE = World()


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher setting its variables)."""
    return all(k in os.environ for k in LAUNCHER_ENV)


def world_from_env() -> World:
    if not launched():
        return SINGLE
    return World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))


def rank_device(world: World, device: torch.device) -> torch.device:
    """A rank's device: on CUDA the GPU of its local rank (any index in the config is replaced)."""
    if device.type == "cuda" and world.size > 1:
        return torch.device("cuda", world.local_rank)
    return device


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[World]:
    """Join the launcher's process group for the run (NCCL on CUDA, gloo on CPU) and leave it afterwards."""
    world = world_from_env()
    if world.size == 1 or torch.distributed.is_initialized():
        yield world
        return
    if device.type == "cuda":
        if torch.cuda.device_count() <= world.local_rank:
            raise ConfigError(f"rank {world.rank} needs GPU {world.local_rank}, but this machine has "
                              f"{torch.cuda.device_count()}; start at most that many processes per machine")
        torch.cuda.set_device(world.local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend)
    try:
        yield world
        # every rank done with its collectives before any tears its connections down (gloo aborts a process whose
        # peer closes mid-transfer); after an error torchrun stops the others instead
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def check_world(world: World, batch_size: int) -> None:
    if world.size > 1 and batch_size < 2 * world.size:
        raise ConfigError(f"batch_size {batch_size} is too small for {world.size} processes: each needs at least 2 "
                          "samples per step (BatchNorm); raise faces.train.batch_size or start fewer processes")


def torchrun_command(nproc: int, args: list[str], python: Optional[str] = None) -> list[str]:
    """The command that runs `facenas <args>` on `nproc` processes of this machine through torchrun."""
    return [python or sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "facenas.cli.main", *args]


def launch_local(config: Config, arch: Optional[Path], *, verbose: bool = False) -> int:
    """`facenas train --gpus N`: run the training on N local processes through torchrun; returns its exit code.

    The processes read the launcher's resolved config (`<run dir>/launch.yaml`), so every flag and `--set`
    reaches them as given. On CUDA there must be N GPUs; on a CPU device the processes share the cores over gloo.
    """
    from facenas.config import to_yaml
    from facenas.train.core import resolve_device

    nproc = config.faces.train.gpus
    device = resolve_device(config.faces.train.device)
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise ConfigError(f"--gpus {nproc} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    out = config.out_dir()
    out.mkdir(parents=True, exist_ok=True)
    resolved = out / "launch.yaml"
    resolved.write_text(to_yaml(config))
    args = ["train", "--config", str(resolved), *(["--arch", str(arch)] if arch is not None else []),
            *(["--verbose"] if verbose else [])]
    env = dict(os.environ)
    if device.type == "cpu" and "OMP_NUM_THREADS" not in env:  # share the cores instead of oversubscribing them
        threads = config.faces.train.threads or max(1, (os.cpu_count() or 1) // nproc)
        env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.run(torchrun_command(nproc, args), env=env, check=False).returncode
