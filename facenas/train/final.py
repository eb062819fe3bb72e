"""Final training of a found architecture (method.md section 4): same optimiser and augmentation, long budget.

Results go to `<run dir>/final/`: a checkpoint after every `final.checkpoint_every` epochs (model, optimiser and
history: with per-epoch seeded batches this is everything needed to continue exactly), an `epochs.csv`, the
trained weights with the architecture and preprocessing inside (`model.pt`), and `report.json`, which says which
protocol the validation accuracy was measured under and gives the test accuracy of the final weights.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from facenas import __version__
from facenas.config import EXECUTION_KEYS, Config
from facenas.data.batch_aug import BatchAugment
from facenas.data.sources import load_splits
from facenas.errors import ConfigError, TrainingError
from facenas.models import build_model
from facenas.models.checkpoint import first_line, load_checkpoint
from facenas.space.arch import Arch
from facenas.space.count import count_macs, count_params
from facenas.train.classify import evaluate, fit_classifier, to_device
from facenas.train.evaluators import augment_spec, profile_for_config, setup_torch
from facenas.train.metrics import EpochMetrics


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Write to a temporary file and rename, so a kill never leaves a half-written checkpoint."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class FileCheckpoint:
    """The checkpoint of one training run; refuses a file written for another architecture or config."""

    def __init__(self, path: Path, identity: dict[str, Any], resume: bool) -> None:
        self.path = path
        self.identity = identity
        self.resume = resume

    def load(self) -> Optional[dict[str, Any]]:
        if not self.resume or not self.path.exists():
            return None
        try:
            state = load_checkpoint(self.path)
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
            raise TrainingError(f"{self.path}: unreadable checkpoint ({first_line(exc)}); delete it to start over"
                                ) from exc
        if state.get("identity") != self.identity:
            raise TrainingError(f"{self.path} belongs to another architecture or configuration; use another --out")
        return state

    def save(self, state: dict[str, Any]) -> None:
        atomic_torch_save({**state, "identity": self.identity}, self.path)


def train_final(arch: Arch, config: Config, *, on_epoch: Optional[Callable[[EpochMetrics], None]] = None
                ) -> dict[str, Any]:
    expected = profile_for_config(config)
    if (arch.profile.in_channels, arch.profile.num_classes) != (expected.in_channels, expected.num_classes):
        raise ConfigError(
            f"the architecture expects {arch.profile.in_channels} input channels and {arch.profile.num_classes} "
            f"classes, but {config.data.dataset} has {expected.in_channels} and {expected.num_classes}")
    out = config.out_dir() / "final"
    out.mkdir(parents=True, exist_ok=True)
    device = setup_torch(config)
    # `data.train_subset` sizes the search's proxy; final training uses the whole training split.
    splits = load_splits(config.data.model_copy(update={"train_subset": None}), config.seed)
    spec = augment_spec(config.data, splits.train)
    augment = BatchAugment(spec, splits.train.side, device)
    identity = {"arch": arch.to_dict(), "epochs": config.final.epochs, "seed": config.seed,
                "data": config.data.model_dump(mode="json", exclude={"root", "download"}),
                "train": config.train.model_dump(mode="json", exclude=set(EXECUTION_KEYS))}
    checkpoint = FileCheckpoint(out / "checkpoint.pt", identity, config.run.resume)
    every = config.final.checkpoint_every

    class _Every:
        def load(self) -> Optional[dict[str, Any]]:
            return checkpoint.load()

        def save(self, state: dict[str, Any]) -> None:
            done = len(state["history"])
            if done % every == 0 or done == config.final.epochs:
                checkpoint.save(state)

    torch.manual_seed(config.seed)
    model = build_model(arch)
    began = time.perf_counter()
    history = fit_classifier(model, splits.train, splits.val, cfg=config.train, augment=augment,
                             epochs=config.final.epochs, seed=config.seed, device=device, on_epoch=on_epoch,
                             checkpoint=_Every())
    x_test, y_test = to_device(splits.test, device)
    test_acc, test_loss = evaluate(model, x_test, y_test, augment, config.train.eval_batch_size)
    with (out / "epochs.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(history[0].to_dict()))
        writer.writeheader()
        writer.writerows(e.to_dict() for e in history)
    atomic_torch_save({"arch": arch.to_dict(), "state_dict": model.state_dict(), "preprocess": spec.to_dict(),
                       "facenas_version": __version__}, out / "model.pt")
    best = max(history, key=lambda e: e.val_acc)
    report = {
        "arch": arch.to_dict(), "arch_short": arch.short(), "params": count_params(arch), "macs": count_macs(arch),
        "dataset": config.data.dataset, "protocol": config.data.protocol, "splits": splits.summary(),
        "epochs": len(history), "seed": config.seed,
        "best_val_acc": best.val_acc, "best_val_epoch": best.epoch + 1, "final_val_acc": history[-1].val_acc,
        "test_acc": test_acc, "test_loss": test_loss,
        "note": ("protocol 'paper': validation is the test split, so best_val_acc is the authors' best-epoch test "
                 "accuracy" if config.data.protocol == "paper" else
                 "protocol 'holdout': test_acc is measured once, on weights never selected by the test split"),
        "session_wall_s": time.perf_counter() - began, "facenas_version": __version__,
        "report": str(out / "report.json"),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
