"""Which face training recipe trains every architecture of the space? Train the same architectures under each.

A face search can only rank architectures if each of them trains under the proxy's recipe: on lfw-dev, ArcFace
(s 32, m 0.4, lr 0.1) left 7 of 12 architectures below 15 % train accuracy after 12 epochs (the deep ones with many
full convolutions), so the score measured whether a net happened to converge (issue 19). This bench trains a list
of architectures under named recipes (a recipe is a set of config overrides, kept in a YAML file such as
`configs/experiments/face-recipes.yaml`) through the search's own evaluator, with the same training seed for an
architecture under every recipe (paired comparisons), and records per epoch the train accuracy and loss, plus the
held-out score at the end.

    python bench/face_recipes.py -c configs/experiments/faces-lfw-dev-first-recipe.yaml \\
        --face-source ../shared/data/lfw-dev/images \\
        --recipes configs/experiments/face-recipes.yaml --recipe arcface --recipe margin-warmup \\
        --arch "D12 C13 ops 001010101100 k 353353553555" --epochs 8 --jobs 2

Resumable: every finished training is written to the JSON (atomically) at once, keyed by recipe, architecture, seed
and budget; a second call trains only what is missing (or what ran under other overrides of the same recipe name).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import numpy as np
import yaml

from facenas.config import load_config, parse_override
from facenas.search.evaluator import make_task
from facenas.search.executor import CandidateFailed, SubprocessExecutor
from facenas.space.arch import Arch
from facenas.space.count import count_macs, count_params
from facenas.train.metrics import TRAINED_BELOW, train_and_score


def read_recipes(path: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """name -> {"about": text, "set": {dotted key: value}}, for the names asked (all where none are)."""
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: expected a mapping of recipe names to {{about, set}}")
    missing = [n for n in names if n not in data]
    if missing:
        raise SystemExit(f"{path} has no recipe {', '.join(missing)}; it has {', '.join(data)}")
    return {n: {"about": data[n].get("about", ""), "set": dict(data[n].get("set") or {})} for n in (names or data)}


def train_seed(seed: int, arch: str) -> int:
    """The same seed for an architecture under every recipe: differences between recipes are paired."""
    return int(np.random.SeedSequence([seed, zlib.crc32(arch.encode())]).generate_state(1)[0])


def _num(x: Any) -> Optional[float]:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def run_key(recipe: str, arch: str, seed: int, epochs: int) -> str:
    return f"{recipe} | {arch} | seed {seed} | {epochs} epochs"


def train_one(config: Any, arch: Arch, epochs: int, seed: int, threads: int) -> dict[str, Any]:
    """One training through the search's evaluator in a child process: per-epoch curves and the final score."""
    evaluator, _ = make_task(config)
    evaluator = evaluator.placed(threads=threads)
    began = time.perf_counter()
    try:
        metrics = SubprocessExecutor(preload=("torch", type(evaluator).__module__)).run(
            evaluator, arch, epochs, seed=seed)
    except CandidateFailed as failure:
        return {"status": "failed", "error": failure.error.splitlines()[0], "wall_s": time.perf_counter() - began,
                "score": None, "train_acc": None, "epochs_curve": []}
    last = metrics.epochs[-1]
    return {"status": "finished", "error": None, "wall_s": time.perf_counter() - began,
            "score": _num(metrics.score), "train_acc": _num(last.train_acc), "best_train": _num(metrics.best_train),
            "measures": {k: _num(v) for k, v in last.extra.items()},
            "epochs_curve": [{"train_acc": _num(e.train_acc), "train_loss": _num(e.train_loss), "lr": e.lr,
                              "seconds": e.seconds} for e in metrics.epochs]}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True, help="the search's YAML config")
    parser.add_argument("--face-source", help="faces.data.source")
    parser.add_argument("--recipes", type=Path, default=Path("configs/experiments/face-recipes.yaml"))
    parser.add_argument("--recipe", action="append", default=[], help="a recipe name (repeat; default: all)")
    parser.add_argument("--table", action="store_true", help="print the table of --out's runs and train nothing")
    parser.add_argument("--arch", action="append", default=[],
                        help="an architecture's short form, e.g. 'D12 C13 ops 001010101100 k 353353553555'")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=1, help="training seeds per architecture and recipe")
    parser.add_argument("--jobs", type=int, default=2, help="trainings at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key, all recipes")
    parser.add_argument("--out", type=Path, default=None, help="JSON (default bench/results/face_recipes-<name>.json)")
    args = parser.parse_args(argv)

    if args.table:
        summarise(json.loads(args.out.read_text()) if args.out else {"runs": {}})
        return 0
    if not args.arch:
        parser.error("give at least one --arch (or --table)")
    recipes = read_recipes(args.recipes, args.recipe)
    common = dict(parse_override(s) for s in args.set)
    if args.face_source:
        common["faces.data.source"] = args.face_source
    base = load_config(args.config, common)
    common.setdefault("run.out", str(Path("runs") / f"{base.name}-recipes"))  # one decoded-set cache for all
    out = args.out or Path("bench/results") / f"face_recipes-{base.name}.json"
    data: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {"config": args.config, "runs": {}}
    data["recipes"] = {**data.get("recipes", {}), **recipes}
    lock = threading.Lock()

    jobs = []
    for name, recipe in recipes.items():
        config = load_config(args.config, {**common, **recipe["set"]})
        _, profile = make_task(config)
        for text in args.arch:
            arch = Arch.parse_short(text, profile)
            for seed in range(args.seeds):
                key = run_key(name, arch.short(), seed, args.epochs)
                done = data["runs"].get(key)
                if done and done["set"] == recipe["set"] and done["status"] == "finished":
                    continue
                jobs.append((key, name, recipe, config, arch, seed))
    print(f"{len(jobs)} trainings to run ({len(data['runs'])} in {out})", flush=True)

    def work(job: tuple[Any, ...]) -> None:
        key, name, recipe, config, arch, seed = job
        run = train_one(config, arch, args.epochs, train_seed(seed, arch.short()), args.threads)
        run.update(recipe=name, set=recipe["set"], arch=arch.short(), depth=arch.depth, width=arch.width,
                   conv_layers=sum(arch.ops), params=count_params(arch), macs=count_macs(arch), seed=seed,
                   epochs=args.epochs)
        with lock:
            data["runs"][key] = run
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_text(json.dumps(data, indent=1) + "\n")
            os.replace(tmp, out)
        score = "failed: " + str(run["error"]) if run["score"] is None else f"score {run['score']:.1f}"
        curve = " ".join(f"{e['train_acc']:.0f}" for e in run["epochs_curve"])
        print(f"{key}: train {curve} | {score} ({run['wall_s']:.0f} s)", flush=True)

    with ThreadPoolExecutor(max(args.jobs, 1)) as pool:
        list(pool.map(work, jobs))
    summarise(data)
    return 0


def table(runs: list[dict[str, Any]]) -> str:
    """Markdown: a row per recipe, a column per architecture (depth, width, full convolutions, parameters), each cell
    the final train accuracy / held-out score; a run below 50 % train accuracy is in bold, its score says nothing."""
    recipes = list(dict.fromkeys(r["recipe"] for r in runs))
    archs = sorted({(r["depth"], r["arch"].removesuffix(" +res")) for r in runs})
    cells: dict[tuple[str, str], list[dict[str, Any]]] = {}
    heads = {}
    for r in runs:
        plain = r["arch"].removesuffix(" +res")
        cells.setdefault((plain, r["recipe"]), []).append(r)
        heads[plain] = f"D{r['depth']} C{r['width']}, {r['conv_layers']} convs, {r['params'] / 1e3:.0f}k"
    lines = ["| recipe | " + " | ".join(heads[a] for _, a in archs) + " |", "|---|" + "---|" * len(archs)]
    for name in recipes:
        row = [name]
        for _, arch in archs:
            done = [r for r in cells.get((arch, name), []) if r["status"] == "finished"]
            if not done:
                failed = cells.get((arch, name))
                row.append(f"failed ({failed[0]['error']})" if failed else "")
                continue
            row.append(train_and_score(float(np.mean([r["train_acc"] or 0.0 for r in done])),
                                       float(np.mean([r["score"] for r in done]))))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def summarise(data: dict[str, Any]) -> None:
    """Per recipe: how many runs ended below 50 % train accuracy, and the mean final train accuracy and score."""
    by_recipe: dict[str, list[dict[str, Any]]] = {}
    for run in data["runs"].values():
        by_recipe.setdefault(run["recipe"], []).append(run)
    print(table(list(data["runs"].values())))
    for name, runs in by_recipe.items():
        train = [r["train_acc"] or 0.0 for r in runs]
        scores = [r["score"] for r in runs if r["score"] is not None]
        below = sum(t < TRAINED_BELOW for t in train)
        print(f"{name:28s} {len(runs):3d} runs, {below} below {TRAINED_BELOW:.0f} % train accuracy, "
              f"mean train {np.mean(train):5.1f} %, mean score {np.mean(scores) if scores else float('nan'):5.1f}")


if __name__ == "__main__":
    sys.exit(main())
