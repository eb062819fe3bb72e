"""A real search on one worker and on several: the same path and best_arch.json, and what the workers save.

Runs `facenas search` (each a fresh process, its own run directory) on the same config as:
- serial, all the machine's threads in one candidate (what a user gets without --workers);
- serial on one thread per candidate (the numerics of a worker, to check identity against);
- `--workers N` local child processes (the threads split between them);
- `--executor ray` on a local Ray cluster of the machine's CPUs, one CPU per candidate (skipped without Ray).
Then compares each run's path (the on-path candidates of its journal: index, architecture, epochs, score) and
best_arch.json with the serial one-thread run's, and reports wall times and their ratios.

    python bench/parallel_search.py -c configs/search/digits.yaml --workers 2

Prints and writes bench/results/parallel_search-<config name>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def path_of(run_dir: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(run_dir / "journal.sqlite") as db:
        return db.execute("SELECT idx, phase, arch, epochs, status, score FROM candidates WHERE on_path = 1 AND "
                          "status IN ('finished', 'failed') ORDER BY idx").fetchall()


def work_of(run_dir: Path) -> dict[str, Any]:
    with sqlite3.connect(run_dir / "journal.sqlite") as db:
        rows = db.execute("SELECT status, on_path, COUNT(*), SUM(wall_s) FROM candidates GROUP BY 1, 2").fetchall()
    return {f"{status}{'' if on_path else ' off path'}": {"candidates": n, "wall_s": round(w or 0.0, 1)}
            for status, on_path, n, w in rows}


def run(label: str, config: str, out: Path, args: list[str], threads: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "facenas.cli.main", "search", "-c", config, "--out", str(out), "--device", "cpu",
           *args]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    print(f"[{label}] {' '.join(cmd[3:])}", flush=True)
    began = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"[{label}] failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    print(f"[{label}] {wall:.1f} s, found {summary['arch_short']}", flush=True)
    return {"label": label, "args": args, "wall_s": round(wall, 2), "arch_short": summary["arch_short"],
            "candidates": summary["candidates"], "best_arch": json.loads((out / "best_arch.json").read_text()),
            "path": path_of(out), "work": work_of(out)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--config", default="configs/search/digits.yaml")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="the machine's threads to share")
    ap.add_argument("--out", default="runs/bench-parallel", help="folder for the run directories")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray run")
    ap.add_argument("--results", default=str(ROOT / "bench" / "results"))
    opts = ap.parse_args()

    out = Path(opts.out)
    if out.exists():
        raise SystemExit(f"{out} exists; remove it or pass another --out (each run starts a fresh search)")
    per_worker = max(1, opts.threads // opts.workers)
    runs = [
        run("serial", opts.config, out / "serial", ["--set", f"train.threads={opts.threads}"], opts.threads),
        run("serial-1-thread", opts.config, out / "serial-1-thread", ["--set", "train.threads=1"], 1),
        run(f"{opts.workers}-workers", opts.config, out / "workers",
            ["--workers", str(opts.workers), "--set", f"train.threads={opts.threads}"], per_worker),
    ]
    try:
        import ray  # noqa: F401

        has_ray = True
    except ImportError:
        has_ray = False
    if has_ray and not opts.no_ray:
        runs.append(run("ray", opts.config, out / "ray",
                        ["--executor", "ray", "--set", f"run.ray.num_cpus={opts.threads}",
                         "--set", f"run.ray.cpus_per_candidate={per_worker}"], per_worker))
    reference = runs[1]
    serial = runs[0]
    for r in runs:
        r["same_path_as_serial_1_thread"] = r["path"] == reference["path"]
        r["same_best_arch_as_serial_1_thread"] = r["best_arch"] == reference["best_arch"]
        r["speedup_vs_serial"] = round(serial["wall_s"] / r["wall_s"], 3)
        r["speedup_vs_serial_1_thread"] = round(reference["wall_s"] / r["wall_s"], 3)
    result = {"config": opts.config, "threads": opts.threads, "workers": opts.workers, "cpu_count": os.cpu_count(),
              "runs": [{k: v for k, v in r.items() if k != "path"} | {"path_length": len(r["path"])} for r in runs]}
    for r in runs:
        print(f"{r['label']:>16}: {r['wall_s']:7.1f} s  x{r['speedup_vs_serial']:.2f} vs serial, "
              f"x{r['speedup_vs_serial_1_thread']:.2f} vs serial 1-thread; same path "
              f"{r['same_path_as_serial_1_thread']}, same best_arch {r['same_best_arch_as_serial_1_thread']}; "
              f"work {r['work']}")
    name = Path(opts.config).stem
    path = Path(opts.results) / f"parallel_search-{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
