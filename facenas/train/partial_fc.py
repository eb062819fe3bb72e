"""Partial FC (insightface's arcface_torch, partial_fc_v2): class centres sharded across the ranks, sampled per step.

With many identities (MS1M: 85,000; WebFace42M: 2 million) the class-centre matrix and its logits dominate memory
and time. Each of the W ranks holds the centres of 1/W of the classes (`World.shard` of the class range). A step
gathers every rank's embeddings and labels (the global batch), and each rank scores them against the positive
classes of its shard plus randomly sampled negatives, `sample_rate` of its shard in all. The softmax runs over the
union of the ranks' sampled classes: its maximum and its normaliser are reduced across the ranks
(collectives that carry gradients, written on all_gather and all_reduce), and the margin is the plain head's
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
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facenas.train.distributed import SINGLE, World
from facenas.train.losses import MarginSoftmax


class _GatherRows(torch.autograd.Function):
    """Every rank's (equal-sized) block of rows, in rank order. Backward: this rank's rows of the gradient summed
    over the ranks, times `scale`.

    Written on `all_gather` and `all_reduce` because gloo has no reduce-scatter (torch's autograd collectives emulate
    it with all-to-all there) and those collectives are deprecated; the summed gradient costs W x the rows of a
    reduce-scatter, small next to the backbone's DDP all-reduce."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, scale: float) -> torch.Tensor:
        import torch.distributed as dist

        ctx.scale, ctx.rows = scale, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows] * ctx.scale, None


class _SumOverRanks(torch.autograd.Function):
    """`all_reduce` (sum) that carries gradients: every rank's input receives the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = tensor.contiguous().clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


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

    def _gather(self, tensor: torch.Tensor, sizes: list[int], scale: float = 1.0) -> torch.Tensor:
        """Every rank's rows, in rank order (shares may differ by one row: padded for the collective); the
        gradient that flows back is multiplied by `scale`."""
        if self.world.size == 1:
            return tensor
        pad = max(sizes) - len(tensor)
        if pad:
            tensor = torch.cat([tensor, tensor.new_zeros((pad, *tensor.shape[1:]))])
        if tensor.requires_grad:
            gathered = _GatherRows.apply(tensor, scale)
        else:
            with torch.no_grad():
                gathered = _GatherRows.apply(tensor, scale)
        blocks = gathered.split(max(sizes))
        return torch.cat([block[:size] for block, size in zip(blocks, sizes)])

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
            all_embeddings = self._gather(embeddings.float(), sizes, scale=float(self.world.size))
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
        return _SumOverRanks.apply(tensor)

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

