"""Does the face search find a better backbone than a random draw or a hand design of the same size?

The search's result, `--random` architectures drawn from the same space at its parameter count (`facenas arch
random`, the baseline NAS papers are held to) and MobileFaceNet scaled to that count (`--backbone-params`), each
trained identically (one train config, `--seeds` seeds each) and verified once on the people neither the search
nor training saw (`faces.data.test_identities`; report.json `test_people`). Each training is a `facenas train`
child process, `--jobs` at a time with `--threads` each; a finished one is not trained again and an interrupted one
resumes from its checkpoint, so the same command continues a killed comparison.

    python bench/face_compare.py --arch runs/search-lfw-dev/best_arch.json \
        -c configs/train/faces-lfw-dev-compare.yaml --face-source ../shared/data/lfw-dev/images

Prints and writes bench/results/face_compare-<config name>.json: every training (test accuracy and its standard
error over the 10 folds, AUC, EER, TAR@FAR, held-out accuracy, wall time), per model the mean and standard error
over seeds, and the search's result against each baseline (difference of means with the standard error of the
difference, Welch).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import numpy as np

from facenas.config import load_config, parse_override
from facenas.models.backbones import backbone_param_count
from facenas.space.arch import Arch
from facenas.space.count import count_params
from facenas.space.sample import sample_archs, space_from_config
from facenas.train.face_job import backbone_spec, retarget

MEASURES = ("accuracy", "auc", "eer")  # of report.json's test_people: accuracy and EER in %, AUC as a fraction


def plan(config_path: str, arch_path: Path, overrides: dict[str, Any], random_count: int, random_seed: int,
         folder: Path, tolerance: float = 0.03) -> tuple[list[dict[str, Any]], int]:
    """The models to train: (label, extra CLI arguments, parameters), and the search result's parameter count."""
    config = load_config(config_path, overrides)
    found = retarget(Arch.from_json(arch_path.read_text()), config)
    target = count_params(found)
    models = [{"label": "search", "args": ["--arch", str(arch_path)], "params": target, "arch": found.short()}]
    space, w = space_from_config(config, found.profile), config.search.width
    # the search's own widths only (as `facenas fidelity` draws): a wider or narrower net is not of its space
    drawn = [a for a in sample_archs(space, target, random_seed, count=40 * (random_count + 1), tolerance=tolerance)
             if a != found and w.min <= a.width <= w.first]
    if len(drawn) < random_count:
        raise SystemExit(f"only {len(drawn)} random architectures at {target:,} parameters (+-{tolerance:.0%}) "
                         f"within widths {w.min}..{w.first}; ask for fewer or widen --tolerance")
    for k, arch in enumerate(drawn[:random_count]):
        path = folder / "archs" / f"random_{random_seed}_{k}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(arch.to_json() + "\n")
        models.append({"label": f"random-{k}", "args": ["--arch", str(path)], "params": count_params(arch),
                       "arch": arch.short()})
    mobile = backbone_spec(load_config(config_path, {**overrides, "model.backbone": "mobilefacenet",
                                                     "model.backbone_params": target}))
    assert mobile is not None
    models.append({"label": "mobilefacenet", "params": backbone_param_count(mobile), "arch": mobile.short(),
                   "args": ["--backbone", "mobilefacenet", "--backbone-params", str(target)]})
    return models, target


def train_one(model: dict[str, Any], seed: int, config_path: str, face_source: Optional[str], sets: list[str],
              folder: Path, threads: int) -> dict[str, Any]:
    """One `facenas train` child (resumed where a checkpoint exists); its report.json with the wall time.

    The test accuracy is 10-fold (thresholds chosen on nine folds), as the field reports LFW; `accuracy_sem` is its
    standard error over folds, i.e. the noise of the pairs, where the spread over seeds is the noise of training."""
    out = folder / model["label"] / f"seed{seed}"
    report_path = out / "report.json"
    if not report_path.exists():
        cmd = [sys.executable, "-m", "facenas.cli.main", "train", "-c", config_path, *model["args"],
               "--seed", str(seed), "--out", str(out), "--set", f"faces.train.threads={threads}"]
        cmd += ["--face-source", face_source] if face_source else []
        cmd += [a for s in sets for a in ("--set", s)]
        if (out / "checkpoints" / "last.pt").exists():
            cmd.append("--resume")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        began = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{model['label']} seed {seed} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        (out / "wall_s.txt").write_text(f"{time.perf_counter() - began:.1f}\n")
        print(f"{model['label']} seed {seed}: done in {time.perf_counter() - began:.0f} s", flush=True)
    report = json.loads(report_path.read_text())
    wall = out / "wall_s.txt"
    test = report["test_people"]
    if test is None:
        raise RuntimeError(f"{report_path}: no test people; set faces.data.test_identities in the config")
    return {"label": model["label"], "seed": seed, "params": report["params"], "macs": report["macs"],
            "arch": report["arch_short"], "epochs": report["epochs"], "pairs": test["pairs"],
            "test": {"accuracy": 100 * test["accuracy"], "accuracy_sem": 100 * test["accuracy_sem"],
                     "auc": test["auc"], "eer": 100 * test["eer"], "tar_at_far": test["tar_at_far"]},
            "heldout_accuracy": report["heldout_accuracy"],
            "wall_s": float(wall.read_text()) if wall.exists() else report["session_wall_s"]}


def mean_se(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    se = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else math.nan
    return {"mean": float(a.mean()), "se": se, "std": float(a.std(ddof=1)) if len(a) > 1 else math.nan,
            "n": int(len(a))}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model: mean and standard error over seeds of each test measure, parameters, wall time."""
    out: dict[str, Any] = {}
    for label in dict.fromkeys(r["label"] for r in runs):
        mine = [r for r in runs if r["label"] == label]
        out[label] = {"arch": mine[0]["arch"], "params": mine[0]["params"], "macs": mine[0]["macs"],
                      "wall_s": mean_se([r["wall_s"] for r in mine]),
                      "heldout_accuracy": mean_se([r["heldout_accuracy"] for r in mine]),
                      **{m: mean_se([r["test"][m] for r in mine]) for m in MEASURES if m in mine[0]["test"]}}
    return out


def against(summary: dict[str, Any], reference: str = "search") -> dict[str, Any]:
    """The reference model minus each other one: difference of means, its standard error (Welch), and z."""
    out: dict[str, Any] = {}
    for label, s in summary.items():
        if label == reference:
            continue
        out[label] = {}
        for m in MEASURES:
            if m in s and m in summary[reference]:
                a, b = summary[reference][m], s[m]
                diff, se = a["mean"] - b["mean"], math.hypot(a["se"], b["se"])
                out[label][m] = {"difference": diff, "se": se, "z": diff / se if se > 0 else math.nan}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", required=True, type=Path, help="the search's best_arch.json")
    parser.add_argument("-c", "--config", required=True, help="the train config every model is trained with")
    parser.add_argument("--face-source", default=None)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--random", type=int, default=3, help="random architectures at the same parameter count")
    parser.add_argument("--random-seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=0.03, help="relative distance of a random architecture's "
                        "parameter count to the search result's")
    parser.add_argument("--jobs", type=int, default=2, help="trainings at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training")
    parser.add_argument("--runs", type=Path, default=None, help="run folder (default runs/compare-<config name>)")
    parser.add_argument("--out", default=None, help="the JSON (default bench/results/face_compare-<name>.json)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key")
    args = parser.parse_args()
    overrides = {"faces.data.source": args.face_source} if args.face_source else {}
    overrides.update(dict(parse_override(text) for text in args.set))
    name = load_config(args.config, overrides).name
    folder = args.runs or Path("runs") / f"compare-{name}"
    models, target = plan(args.config, args.arch, overrides, args.random, args.random_seed, folder, args.tolerance)
    for m in models:
        print(f"{m['label']:14s} {m['params']:>8,} parameters  {m['arch']}", flush=True)
    jobs = [(m, seed) for seed in range(args.seeds) for m in models]
    began = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda job: train_one(job[0], job[1], args.config, args.face_source, args.set, folder,
                                                   args.threads), jobs))
    summary = summarise(runs)
    versus = against(summary)
    print(f"\n{'model':14s} {'params':>8s}  {'test accuracy':>16s}  {'test AUC':>16s}  {'wall s':>10s}")
    for label, s in summary.items():
        print(f"{label:14s} {s['params']:>8,}  {s['accuracy']['mean']:7.2f} +- {s['accuracy']['se']:5.2f}  "
              f"{s['auc']['mean']:7.4f} +- {s['auc']['se']:6.4f}  {s['wall_s']['mean']:7.0f}")
    for label, d in versus.items():
        acc = d["accuracy"]
        print(f"search - {label:14s} accuracy {acc['difference']:+.2f} +- {acc['se']:.2f} (z {acc['z']:+.2f})")
    out = Path(args.out or f"bench/results/face_compare-{name}.json")
    out.write_text(json.dumps({
        "config": args.config, "name": name, "arch": str(args.arch), "target_params": target, "seeds": args.seeds,
        "tolerance": args.tolerance,
        "set": args.set, "jobs": args.jobs, "threads": args.threads, "wall_s": time.perf_counter() - began,
        "models": models, "summary": summary, "search_minus": versus, "runs": runs}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
