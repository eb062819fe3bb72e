"""Parser for the `Searchlog.txt` files the authors' search code wrote.

It produces the same structure as `../shared/data/egnas-replay/*.json` (args, candidates with curves, final),
so `facenas replay` takes either. A candidate is a "MODEL DETAILS" block followed by "Training Model...", its
per-epoch `train_acc`/`valid_acc` lines and the closing "Best Validation Accuracy"; the blocks the authors' code
prints between phases without training anything are skipped. numpy wraps long op/kernel arrays over several lines;
such continuation lines carry no timestamp and are joined to the message they continue.
"""

from __future__ import annotations

import re
from typing import Any, Optional

from facenas.errors import DataError

_STAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} ")
_PHASES = (("RUNNING DEPTH SEARCH", "depth"), ("RUNNING WIDTH SEARCH", "width"),
           ("RUNNING OPERATION SEARCH", "ops"), ("RUNNING KERNEL SEARCH", "kernels"))
_DEPTH_WIDTH = re.compile(r"^Model Depth (\d+) Model Width (\d+)$")
_LAYERS = re.compile(r"^Model Layers \[([\d\s]*)\]\s*Model Kernels \[([\d\s]*)\]$")
_EPOCHS = re.compile(r"^(?:Training epochs|Total number of epochs) ([\d.]+)$")
_PARAMS = re.compile(r"^Model Parameters = ([\d.]+)MB$")
_FLOAT = r"(-?[\d.]+(?:e[+-]?\d+)?)"


def _messages(text: str) -> list[tuple[str, str]]:
    """Log lines -> (time stamp, message), continuation lines joined to the message before them."""
    messages: list[tuple[str, str]] = []
    for line in text.splitlines():
        stamp = _STAMP.match(line)
        if stamp:
            messages.append((stamp.group().strip(), line[stamp.end():].strip()))
        elif messages and line.strip():
            messages[-1] = (messages[-1][0], f"{messages[-1][1]} {line.strip()}")
    return messages


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split()]


def parse_search_log(text: str, source: str = "<log>") -> dict[str, Any]:
    """`Searchlog.txt` -> {"args", "candidates", "final"} in the egnas-replay JSON layout."""
    args: Optional[str] = None
    phase: Optional[str] = None
    details: dict[str, Any] = {}
    current: Optional[dict[str, Any]] = None
    candidates: list[dict[str, Any]] = []
    final: dict[str, Any] = {}
    in_final = False
    for stamp, msg in _messages(text):
        if msg.startswith("Arguments = "):
            args = msg[len("Arguments = "):]
            continue
        for marker, name in _PHASES:
            if msg.startswith(marker):
                phase = name
        if msg.startswith("FINAL DISCOVERED ARCHITECTURE"):
            in_final = True
        if m := _DEPTH_WIDTH.match(msg):
            details.update(depth=int(m[1]), width=int(m[2]))
            if in_final:
                final.update(depth=int(m[1]), micro_width=int(m[2]))
        elif m := _LAYERS.match(msg):
            details.update(ops=_ints(m[1]), kernels=_ints(m[2]))
            if in_final:
                final.update(ops=_ints(m[1]), kernels=_ints(m[2]))
        elif m := _EPOCHS.match(msg):
            details["epochs"] = int(float(m[1]))
        elif m := _PARAMS.match(msg):
            details["params_m"] = float(m[1])
        elif msg.startswith("Training Model..."):
            if phase is None:
                raise DataError(f"{source}: a candidate is trained before any search phase starts")
            missing = {"depth", "width", "ops", "kernels", "epochs", "params_m"} - set(details)
            if missing:
                raise DataError(f"{source}: candidate {len(candidates)} lacks {', '.join(sorted(missing))}")
            current = {"phase": phase, **{k: details[k] for k in ("depth", "width", "ops", "kernels", "epochs",
                                                                 "params_m")}, "train_curve": [], "val_curve": [],
                       "started": stamp}
        elif current is not None and (m := re.match(rf"^train_acc {_FLOAT}$", msg)):
            current["train_curve"].append(float(m[1]))
        elif current is not None and (m := re.match(rf"^valid_acc {_FLOAT}$", msg)):
            current["val_curve"].append(float(m[1]))
        elif current is not None and (m := re.match(rf"^Best Training Accuracy {_FLOAT}$", msg)):
            current["best_train"] = float(m[1])
        elif current is not None and (m := re.match(rf"^Best Validation Accuracy {_FLOAT}$", msg)):
            current["best_val"] = float(m[1])
            current["ended"] = stamp  # with "started": the candidate's wall time, for `replay --workers`
            if len(current["val_curve"]) != current["epochs"]:
                raise DataError(f"{source}: candidate {len(candidates)} logged {len(current['val_curve'])} epochs "
                                f"of {current['epochs']}")
            candidates.append(current)
            current = None
        elif m := re.match(r"^Discovered Final Depth (\d+)$", msg):
            final["macro_depth"] = int(m[1])
        elif m := re.match(r"^Discovered Final Width (\d+)$", msg):
            final["macro_width"] = int(m[1])
        elif m := re.match(r"^Discovered Final Epochs (\d+)$", msg):
            final.setdefault("macro_epochs", int(m[1]))
        elif m := re.match(r"^Total Search Time: (\d+)s$", msg):
            final["search_seconds"] = int(m[1])
    if args is None:
        raise DataError(f"{source}: no 'Arguments = Namespace(...)' line; is this an authors' Searchlog.txt?")
    if current is not None:
        raise DataError(f"{source}: the log ends in the middle of candidate {len(candidates)} (truncated?)")
    if not candidates:
        raise DataError(f"{source}: no candidates found")
    return {"args": args, "candidates": candidates, "final": final}
