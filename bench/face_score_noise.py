"""How noisy is a face candidate's score? Several architectures x several seeds, every measure at once.

For each (architecture, seed) one proxy training run; after every epoch the held-out people are embedded once and
scored both ways: today's score (10-fold accuracy on balanced pairs, `heldout_pairs_per_fold` per fold) and every
measure of `facenas/train/face_score.py` on every genuine pair with as many impostor pairs. The spread over seeds of
one architecture is the noise a search decision has to beat; the spread of the architectures' means is the signal.
Reported per score (measure x pairs x epoch reduction): per-architecture mean and std over seeds, the pooled
within-architecture std, and signal / noise = std of the architecture means / pooled std.

    python bench/face_score_noise.py -c configs/search/faces-lfw-dev.yaml \
        --face-source ../shared/data/lfw-dev/images --seeds 5 --epochs 3

Writes bench/results/face_score_noise-<config name>.json (every run's per-epoch values included).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from facenas.config import FaceScoreConfig, load_config, parse_override
from facenas.data.faces.splits import load_face_splits
from facenas.search.noise import spread
from facenas.space.arch import Arch
from facenas.train.evaluators import face_profile, setup_torch
from facenas.train.face_score import make_scorer
from facenas.train.faces import fit_face, new_run, steps_per_epoch

ARCHS = [  # (width, depth, ops, kernels): plain, mixed, wider-and-shallower; about 30-60k parameters
    (16, 6, [0] * 6, [3] * 6),
    (12, 8, [0, 1, 0, 0, 1, 0, 0, 0], [3, 3, 5, 3, 3, 3, 5, 3]),
    (16, 5, [1, 0, 0, 1, 0], [3] * 5),
]
REDUCTIONS = {"max": lambda v: max(v), "last": lambda v: v[-1], "mean_last2": lambda v: float(np.mean(v[-2:]))}


def run_one(config: Any, arch: Arch, seed: int, epochs: int) -> dict[str, Any]:
    device = setup_torch(config)
    cfg, data = config.faces.train, config.faces.data
    splits = load_face_splits(data, config.seed)
    scorers = {
        "balanced": make_scorer(splits.heldout, FaceScoreConfig(pairs="balanced"), per_fold=data.heldout_pairs_per_fold,
                                folds=data.pair_folds, seed=config.seed, batch_size=cfg.eval_batch_size),
        "all": make_scorer(splits.heldout, FaceScoreConfig(pairs="all"), per_fold=data.heldout_pairs_per_fold,
                           folds=data.pair_folds, seed=config.seed, batch_size=cfg.eval_batch_size),
    }

    def both(embedder: Any) -> dict[str, float]:
        return {f"{name}.{k}": v for name, scorer in scorers.items() for k, v in scorer(embedder).items()}

    began = time.perf_counter()
    run = new_run(arch, splits.train.num_identities, cfg, epochs=epochs,
                  steps_per_epoch=steps_per_epoch(len(splits.train), cfg.batch_size), seed=seed, device=device,
                  preprocess=splits.preprocess.to_dict())
    history = fit_face(run, splits.train, cfg=cfg, augment=data.augment, epochs=epochs, seed=seed, device=device,
                       scorer=both, score_measure="balanced.accuracy")
    per_epoch = {key[len("heldout_"):]: [e.extra[key] for e in history]
                 for key in history[0].extra if key.startswith("heldout_")}
    return {"arch": arch.short(), "seed": seed, "seconds": time.perf_counter() - began,
            "train_acc": [e.train_acc for e in history], "train_loss": [e.train_loss for e in history],
            "per_epoch": per_epoch, "pairs": {k: int(len(s.index.issame)) for k, s in scorers.items()},
            "splits": splits.summary()}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Every (pairs.measure, epoch reduction): spread over seeds per architecture (facenas.search.noise)."""
    archs = list(dict.fromkeys(r["arch"] for r in runs))
    out: dict[str, Any] = {}
    for key in runs[0]["per_epoch"]:
        if key.endswith("xnorm"):
            continue
        for reduction, fn in REDUCTIONS.items():
            s = spread({a: [fn(r["per_epoch"][key]) for r in runs if r["arch"] == a] for a in archs})
            out[f"{key}/{reduction}"] = {**asdict(s), "signal_to_noise": s.signal_to_noise}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", required=True, help="a search config, or 'demo' for the demo's")
    parser.add_argument("--face-source", default=None)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--archs", type=int, default=len(ARCHS))
    parser.add_argument("--arch", action="append", default=[],
                        help="WIDTH:DEPTH:OPS:KERNELS, e.g. 8:7:1010100:3333333 (repeatable; replaces the defaults)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key")
    args = parser.parse_args()
    overrides = {"faces.data.source": args.face_source} if args.face_source else {}
    overrides.update(dict(parse_override(text) for text in args.set))
    if args.config == "demo":  # the demo's own search config (facenas/demo.py), with the overrides applied
        from facenas.config import apply_overrides, parse_config
        from facenas.demo import SEARCH

        config = parse_config(apply_overrides(json.loads(json.dumps(SEARCH)), overrides), "demo")
    else:
        config = load_config(args.config, overrides)
    profile = face_profile(config)
    runs = []
    chosen = [(int(w), int(d), [int(c) for c in o], [int(c) for c in k])
              for w, d, o, k in (spec.split(":") for spec in args.arch)] or ARCHS[:args.archs]
    for width, depth, ops, kernels in chosen:
        for seed in range(args.seeds):
            result = run_one(config, Arch(width, depth, ops, kernels, profile), seed, args.epochs)
            runs.append(result)
            print(f"{result['arch']} seed {seed}: {result['seconds']:.0f} s, today's score "
                  f"{max(result['per_epoch']['balanced.accuracy']):.2f}, all-pairs AUC "
                  f"{result['per_epoch']['all.auc'][-1]:.2f}", flush=True)
    summary = summarise(runs)
    ranked = sorted(summary.items(), key=lambda kv: -(kv[1]["signal_to_noise"] or 0))
    for key, s in ranked:
        print(f"{key:28s} pooled std {s['pooled_std']:6.3f}  arch-mean std {s['arch_mean_std']:6.3f}  "
              f"S/N {s['signal_to_noise'] or 0:5.2f}")
    out = Path(args.out or f"bench/results/face_score_noise-{config.name}.json")
    out.write_text(json.dumps({"config": args.config, "name": config.name, "epochs": args.epochs, "set": args.set,
                               "archs": [list(a) for a in chosen],
                               "seeds": args.seeds, "summary": summary, "runs": runs}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
