"""Partial FC (insightface's arcface_torch, partial_fc_v2): class centres sharded across the ranks, sampled per step.

With many identities (MS1M: 85,000; WebFace42M: 2 million) the class-centre matrix and its logits dominate memory
and time. Each of the W ranks holds the centres of 1/W of the classes (`World.shard` of the class range). A step
gathers every rank's embeddings and labels (the global batch), and each rank scores them against the positive
classes of its shard plus randomly sampled negatives, `sample_rate` of its shard in all. The softmax runs over the
union of the ranks' sampled classes: its maximum and its normaliser are reduced across the ranks
(`torch.distributed.nn.functional`, whose collectives carry gradients), and the margin is the plain head's
(`MarginSoftmax`).

Gradients, exactly those of the global batch's mean loss: every rank computes that loss and back-propagates a W-th
of it, so the reductions' backward sums give each shard its own centres' gradient; the gathered embeddings'
gradient comes back to their rank summed over the shards (all-gather's backward) and is multiplied by W before
DDP averages the backbone over the ranks. Gradient clipping uses the norm over the whole model, the shards'
squares summed across the ranks (`Stepper`). With one process and `sample_rate` 1 this is the plain margin head.

The sampled negatives come from a generator seeded by (seed, step, rank), so a resumed run samples as the
uninterrupted one. Checkpoints hold the whole matrix (gathered), so a run resumes on any number of processes.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facenas.train.distributed import SINGLE, World
from facenas.train.losses import MarginSoftmax

# torch 2.14 marks its autograd collectives deprecated in favour of a private module; they are the public API that
# carries gradients through all_gather / all_reduce, so they are used, without a warning at every step.
warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional", category=FutureWarning)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient multiplied by `factor` (the world size, undoing DDP's average)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


def class_centres(num_classes: int, embedding_dim: int, seed: int) -> torch.Tensor:
    """The initial centres of all classes, from the seed alone: every world size starts from the same matrix."""
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 0xFC]).generate_state(1)[0]))
    return torch.randn(num_classes, embedding_dim, generator=generator) * 0.01


class PartialFC(nn.Module):
    """This rank's shard of the class centres, and the sampled margin softmax over the global batch."""

    def __init__(self, embedding_dim: int, num_classes: int, margin: MarginSoftmax, *, sample_rate: float = 1.0,
                 world: World = SINGLE, seed: int = 0) -> None:
        super().__init__()
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate {sample_rate} must lie in (0, 1]")
        self.world, self.seed, self.sample_rate = world, seed, sample_rate
        self.num_classes = num_classes
        self.lo, self.hi = world.shard(0, num_classes)
        self.weight = nn.Parameter(class_centres(num_classes, embedding_dim, seed)[self.lo:self.hi].clone())
        self.margin = margin

    @property
    def shard_size(self) -> int:
        return self.hi - self.lo

    def _gather(self, tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """Every rank's rows, in rank order (shares may differ by one row: padded for the collective)."""
        if self.world.size == 1:
            return tensor
        from torch.distributed.nn.functional import all_gather

        pad = max(sizes) - len(tensor)
        if pad:
            tensor = torch.cat([tensor, tensor.new_zeros((pad, *tensor.shape[1:]))])
        parts = all_gather(tensor) if tensor.requires_grad else _plain_gather(tensor)
        return torch.cat([part[:size] for part, size in zip(parts, sizes)])

    def _sample(self, labels: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(sampled class indices in this shard, each label's column among them or -1)."""
        local = labels - self.lo
        mine = (local >= 0) & (local < self.shard_size)
        if self.sample_rate >= 1:
            index = torch.arange(self.shard_size, device=labels.device)
        else:
            positive = torch.unique(local[mine])
            count = max(int(math.ceil(self.sample_rate * self.shard_size)), len(positive))
            generator = torch.Generator(device="cpu").manual_seed(
                int(np.random.SeedSequence([self.seed, step, self.world.rank, 0x5A]).generate_state(1)[0]))
            score = torch.rand(self.shard_size, generator=generator).to(labels.device)
            score[positive] = 2.0  # positives are always kept
            index = torch.topk(score, count).indices.sort().values
        column = torch.full_like(labels, -1)
        column[mine] = torch.searchsorted(index, local[mine])
        return index, column

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, *, global_size: int, step: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the global batch's mean loss, how many of this rank's samples the sampled centres classify right).

        `embeddings`/`labels` are this rank's share of a global batch of `global_size` samples."""
        sizes = [hi - lo for lo, hi in (World(r, self.world.size).shard(0, global_size)
                                        for r in range(self.world.size))]
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            scaled = _ScaleGrad.apply(embeddings.float(), float(self.world.size))
            all_embeddings = self._gather(scaled, sizes)
            all_labels = self._gather(labels, sizes)
            index, column = self._sample(all_labels, step)
            cosine = F.linear(F.normalize(all_embeddings), F.normalize(self.weight[index].float()))
            rows = torch.nonzero(column >= 0).squeeze(1)
            logits = cosine.clone()
            logits[rows, column[rows]] = self.margin.target(cosine[rows, column[rows]])
            logits = logits * self.margin.s
            # softmax over the union of the ranks' sampled classes
            top = logits.detach().max(dim=1).values
            top = self._reduce(top, "max")
            total = self._reduce(torch.exp(logits - top[:, None]).sum(dim=1), "sum")
            target = torch.zeros(len(all_labels), device=logits.device)
            target = target.index_put((rows,), logits[rows, column[rows]] - top[rows])
            target = self._reduce(target, "sum")
            loss = (torch.log(total) - target).mean() / self.world.size
            # right where the true class's cosine is the largest of the sampled ones (no margin)
            best = self._reduce(cosine.detach().max(dim=1).values, "max")
            true = torch.zeros(len(all_labels), device=cosine.device).index_put(
                (rows,), cosine.detach()[rows, column[rows]])
            true = self._reduce(true, "sum")
            start = sum(sizes[:self.world.rank])
            mine = slice(start, start + sizes[self.world.rank])
            correct = (true[mine] >= best[mine]).sum()
        return loss, correct

    def _reduce(self, tensor: torch.Tensor, op: str) -> torch.Tensor:
        if self.world.size == 1:
            return tensor
        import torch.distributed as dist

        if op == "max":  # no gradient: a constant shift of the logits
            tensor = tensor.clone()
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
            return tensor
        from torch.distributed.nn.functional import all_reduce

        return all_reduce(tensor)

    def full_weight(self) -> torch.Tensor:
        """All classes' centres, gathered from the shards (a collective: every rank calls it)."""
        return self.gather_rows(self.weight.detach())

    def gather_rows(self, shard: torch.Tensor) -> torch.Tensor:
        """A per-class tensor of this shard (the centres, their momentum) gathered over every class."""
        sizes = [hi - lo for lo, hi in (World(r, self.world.size).shard(0, self.num_classes)
                                        for r in range(self.world.size))]
        return self._gather(shard, sizes)

    def load_full_weight(self, weight: torch.Tensor) -> None:
        if weight.shape[0] != self.num_classes:
            raise ValueError(f"a checkpoint with {weight.shape[0]} class centres for a run of {self.num_classes}")
        with torch.no_grad():
            self.weight.copy_(weight[self.lo:self.hi])


def _plain_gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    import torch.distributed as dist

    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return parts
