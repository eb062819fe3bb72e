"""The training core both trainers share: device and precision choices, the optimiser step, running sums, resume.

The classification proxy (`classify.py`) and face training (`faces.py`) differ in their data and their loss; the
step itself is the same and lives here, so the two cannot drift apart:

- `Stepper` runs one optimiser step: backward through the AMP scaler, unscale, clip, step, update.
- `RunningSums` keeps an epoch's loss sum, correct count and sample count *on the device*: a step never waits
  for the GPU. The host reads them every `check_every` steps to stop a diverged run (`NonFiniteLossError` naming
  the steps), at log intervals and at the end of the epoch; under DDP they are summed over the ranks there.
- `rng_state` / `restore_rng` and the scaler's state go into both trainers' checkpoints.
- `compiled` applies `torch.compile` where the config asks for it.
"""

from __future__ import annotations

import contextlib
from typing import Any, Optional, Protocol

import torch
from torch import nn

from facenas.errors import ConfigError, NonFiniteLossError
from facenas.train.distributed import SINGLE, World

CHECK_EVERY = 16  # steps between finiteness checks (each one is a host-device sync on a GPU)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {name!r} but CUDA is not available on this machine; use cpu or auto")
    return device


def autocast(device: torch.device, precision: str) -> Any:
    """The autocast context for a precision name (fp32: none)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision = fp16 needs a CUDA device; use bf16 on the CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def use_channels_last(model: nn.Module, device: torch.device, setting: str, precision: str) -> bool:
    """Measured on a Xeon with oneDNN: NHWC is 1.2-1.6x faster from width 16 up and slower below it."""
    if setting != "auto":
        return setting == "on"
    if device.type == "cuda":
        return precision != "fp32"
    arch = getattr(model, "arch", None)
    return arch is not None and arch.width >= 16


def compiled(module: nn.Module, mode: str) -> nn.Module:
    """`torch.compile(module, mode=...)` unless `mode` is "off". The compiled module shares the parameters, so the
    optimiser, checkpoints and evaluation keep using the plain one."""
    if mode == "off":
        return module
    return torch.compile(module, mode=None if mode == "default" else mode)  # type: ignore[return-value]


class Checkpointer(Protocol):
    def load(self) -> Optional[dict[str, Any]]: ...

    def save(self, state: dict[str, Any]) -> None: ...


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Optional[dict[str, Any]]) -> None:
    if not state:
        return
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


class Stepper:
    """One optimiser step: backward through the AMP scaler (a no-op scaler in fp32/bf16), unscale, clip the
    gradient norm, step, update the scale. Nothing here reads a value back to the host.

    `sharded` parameters (Partial FC's class centres) differ between the ranks: the clipping norm is then taken
    over the whole model, their squares summed across the ranks, so every rank scales its gradients alike."""

    def __init__(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, grad_clip: float, *,
                 world: World = SINGLE, sharded: tuple[nn.Parameter, ...] = ()) -> None:
        self.optimizer, self.scaler, self.grad_clip, self.world = optimizer, scaler, grad_clip, world
        self.params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        ids = {id(p) for p in sharded}
        self.sharded = [p for p in self.params if id(p) in ids] if world.size > 1 else []
        self.replicated = [p for p in self.params if id(p) not in ids] if self.sharded else self.params

    def __call__(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        if self.sharded:
            grads = [p.grad for p in self.replicated if p.grad is not None]
            shard = [p.grad for p in self.sharded if p.grad is not None]
            squares = nn.utils.get_total_norm(grads) ** 2 if grads else torch.zeros(())
            shard_squares = nn.utils.get_total_norm(shard) ** 2 if shard else torch.zeros_like(squares)
            norm = torch.sqrt(squares + self.world.all_sum(shard_squares.to(squares.device)))
            nn.utils.clip_grads_with_norm_(self.params, self.grad_clip, norm)
        else:
            nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()


class RunningSums:
    """An epoch's loss sum, correct predictions and samples, accumulated on the device.

    `check(epoch, step)` reads one number every `check_every` steps (the sum of the losses since the last check,
    summed over the ranks) and raises `NonFiniteLossError` on every rank alike when it is not finite, so no rank
    is left waiting for the others.
    """

    def __init__(self, device: torch.device, world: World = SINGLE, *, check_every: int = CHECK_EVERY,
                 start: Optional[dict[str, float]] = None, first_step: int = 0) -> None:
        self.device, self.world, self.check_every = device, world, check_every
        start = start or {}
        self.loss_sum = torch.tensor(float(start.get("loss_sum", 0.0)), dtype=torch.float64, device=device)
        self.correct = torch.tensor(int(start.get("correct", 0)), dtype=torch.long, device=device)
        self.seen = torch.tensor(int(start.get("seen", 0)), dtype=torch.long, device=device)
        self._window = torch.zeros((), dtype=torch.float64, device=device)
        self._since = 0
        self._first_step = first_step

    def add(self, loss: torch.Tensor, correct: torch.Tensor, n: int) -> None:
        """`loss` is the batch's mean loss over its `n` samples (a device scalar, not read here)."""
        total = loss.detach().double() * n
        self.loss_sum += total
        self._window += total
        self.correct += correct
        self.seen += n

    def check(self, epoch: int, step: int, *, force: bool = False) -> None:
        """Every `check_every` calls (or now, with `force`): stop if the loss of the steps since the last check
        was not finite."""
        self._since += 1
        if not force and self._since < self.check_every:
            return
        window = self.world.all_sum(self._window.clone())
        if not torch.isfinite(window):
            first = self._first_step
            where = f"step {step + 1}" if first == step else f"steps {first + 1}-{step + 1}"
            raise NonFiniteLossError(f"training loss became {float(window)} at epoch {epoch + 1}, {where}")
        self._window.zero_()
        self._since = 0
        self._first_step = step + 1

    def totals(self) -> dict[str, float]:
        """The sums over every rank (a collective under DDP: every rank calls it at the same step)."""
        packed = self.world.all_sum(torch.stack([self.loss_sum, self.correct.double(), self.seen.double()]))
        loss_sum, correct, seen = packed.tolist()
        return {"loss_sum": loss_sum, "correct": int(round(correct)), "seen": int(round(seen))}
