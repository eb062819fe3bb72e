"""What each search candidate spends on its data: decoding the proxy's face sets itself, against mapping the run's
decoded-once cache (`run.cache`, facenas/data/faces/cache.py).

Every candidate runs in a fresh process; this bench starts `--repeats` fresh processes per side, each loading the
face splits of a search config as a candidate does, and reports the wall time of the load and the process's
maximum resident set. The cached side runs after one process has filled the cache.

    python bench/face_cache.py [-c configs/search/faces-lfw-dev.yaml] [--face-source DIR] [--repeats 3]

Prints and writes bench/results/face_cache.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LFW_DEV = ROOT.parent / "shared" / "data" / "lfw-dev" / "images"


def child(config: str, source: str, cache: str) -> None:
    """One candidate's load (run in a fresh process): prints seconds and max RSS as JSON."""
    from facenas.config import load_config
    from facenas.data.faces.splits import load_face_splits

    cfg = load_config(config)
    data = cfg.faces.data.model_copy(update={"source": source}) if source else cfg.faces.data
    began = time.perf_counter()
    splits = load_face_splits(data, cfg.seed, cache=Path(cache) if cache else None)
    seconds = time.perf_counter() - began
    touched = int(splits.train.images.sum(dtype="int64") % 7)  # read every page, as an epoch does
    print(json.dumps({"seconds": seconds, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "train_images": len(splits.train), "touched": touched}))


def run_child(args: argparse.Namespace, cache: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", args.config, args.face_source or "", cache],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:5])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", default="configs/search/faces-lfw-dev.yaml")
    ap.add_argument("--face-source", default=str(LFW_DEV) if LFW_DEV.exists() else None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="runs/bench-face-cache")
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "face_cache.json"))
    args = ap.parse_args()
    cache = Path(args.out) / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    first = run_child(args, str(cache.resolve()))  # fills the cache
    sides = {"decoded by each candidate": [run_child(args, "") for _ in range(args.repeats)],
             "mapped from the run's cache": [run_child(args, str(cache.resolve())) for _ in range(args.repeats)]}
    summary = {}
    for name, rows in sides.items():
        seconds = [r["seconds"] for r in rows]
        summary[name] = {"seconds": seconds, "mean_s": statistics.mean(seconds),
                         "sd_s": statistics.stdev(seconds) if len(seconds) > 1 else 0.0,
                         "max_rss_mb": [r["max_rss_mb"] for r in rows]}
        print(f"{name:30s} {summary[name]['mean_s']:7.2f} s +- {summary[name]['sd_s']:.2f}  "
              f"max RSS {max(summary[name]['max_rss_mb']):.0f} MB")
    ratio = summary["decoded by each candidate"]["mean_s"] / summary["mapped from the run's cache"]["mean_s"]
    print(f"mapping is {ratio:.1f}x faster per candidate; the first process decoded and wrote in "
          f"{first['seconds']:.2f} s")
    result = {"benchmark": "face_cache", "config": args.config, "face_source": args.face_source,
              "train_images": first["train_images"], "first_fill_s": first["seconds"], "sides": summary,
              "speedup": ratio, "cache_mb": sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) / 2**20,
              "cores": os.cpu_count(), "python": platform.python_version(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    Path(args.results).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
