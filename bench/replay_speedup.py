"""The authors' ten published search runs, replayed through the speculative scheduler on K simulated workers.

Each run is replayed exactly (every candidate and the final architecture must match the log, whatever K) with
results arriving in the order of the logged wall times, as `facenas replay LOG --workers K` does. For each K it
reports the wall time the run would have taken (`parallel_seconds`) against the logged candidates one after another
(`serial_seconds`), their ratio, and the time spent on work off the path.

    python bench/replay_speedup.py [--workers 1 2 4 8 16]

Prints a table (the README's) and writes bench/results/replay_speedup.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from facenas.search.replay import load_log, replay

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "tests" / "data" / "golden" / "egnas-runs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--runs", default=str(RUNS), help="folder of replay logs (JSON or Searchlog.txt)")
    ap.add_argument("--results", default=str(ROOT / "bench" / "results"))
    opts = ap.parse_args()

    rows = []
    for path in sorted(Path(opts.runs).glob("*.json")):
        log = load_log(path)
        row = {"run": path.stem, "dataset": log.dataset, "candidates": len(log.candidates), "replays": []}
        for k in opts.workers:
            began = time.perf_counter()
            report = replay(log, k)
            if not report.ok:
                raise SystemExit(f"{path.name} on {k} workers diverged: {report.to_dict()}")
            data = report.to_dict()
            row["replays"].append({key: data[key] for key in ("workers", "serial_seconds", "parallel_seconds",
                                                               "speedup", "wasted_seconds", "time_unit")}
                                  | {"replay_s": round(time.perf_counter() - began, 1)})
        rows.append(row)
        cells = "  ".join(f"K={r['workers']}: {r['speedup']:5.2f}x" for r in row["replays"])
        print(f"{row['run']:32s} {row['candidates']:3d} candidates  {cells}", flush=True)

    print()
    print("| run | candidates | serial (h) | " + " | ".join(f"{k} workers" for k in opts.workers) + " |")
    print("|---|---|---|" + "---|" * len(opts.workers))
    for row in rows:
        serial_h = row["replays"][0]["serial_seconds"] / 3600
        cells = " | ".join(f"{r['speedup']:.2f}x" for r in row["replays"])
        print(f"| {row['run'].removeprefix('Search-')} | {row['candidates']} | {serial_h:.2f} | {cells} |")
    lowest = {k: min(r["replays"][i]["speedup"] for r in rows) for i, k in enumerate(opts.workers)}
    waste = {k: max(r["replays"][i]["wasted_seconds"] / r["replays"][i]["serial_seconds"] for r in rows)
             for i, k in enumerate(opts.workers)}
    print("lowest speedup per K:", {k: round(v, 2) for k, v in lowest.items()})
    print("most work off the path (share of the serial time) per K:", {k: round(v, 2) for k, v in waste.items()})
    out = Path(opts.results) / "replay_speedup.json"
    out.write_text(json.dumps({"workers": opts.workers, "runs": rows, "lowest_speedup": lowest,
                               "most_waste_share": waste}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
