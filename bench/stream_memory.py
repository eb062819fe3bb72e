"""Peak memory and throughput of `facenas train` on a large RecordIO: streamed (0 and N workers) against in memory.

Writes a RecordIO of `--identities` x `--per-identity` generated 112x112 faces (JPEG, as insightface's sets are;
rendered one at a time, never all in memory), then trains one epoch of a small searched-space network on it three
ways, each a fresh `facenas train` under `/usr/bin/time -v`:
- streamed, DataLoader in the training process (`faces.train.workers=0`);
- streamed, `--workers` DataLoader processes;
- decoded into memory first (`faces.train.stream=off`), as before streaming: the decoded set alone is
  N x 112 x 112 x 3 bytes.
For each: the maximum resident set of the largest process (`/usr/bin/time -v`), the peak of the whole process tree's
proportional set size (PSS, sampled every 0.2 s from /proc: shared pages counted once), wall time and training
images per second (the epoch's own time, from metrics.csv).

    python bench/stream_memory.py [--identities 2000 --per-identity 30 --workers 2]

Prints and writes bench/results/stream_memory.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def write_rec(folder: Path, identities: int, per_identity: int, seed: int = 0) -> int:
    from facenas.data.faces.images import encode_image
    from facenas.data.faces.recordio import IRHeader, RecordIOWriter, pack
    from facenas.data.faces.synthetic import render

    folder.mkdir(parents=True, exist_ok=True)
    key = 1
    with RecordIOWriter(folder / "train.rec") as writer:
        for identity in range(identities):
            for index in range(per_identity):
                image, _ = render(seed, identity, index, size=112)
                writer.write(key, pack(IRHeader(0, float(identity), key, 0), encode_image(image, ".jpg", 95)))
                key += 1
    (folder / "property").write_text(f"{identities},112,112\n")
    return key - 1


def tree_pss(root_pid: int) -> int:
    """PSS (bytes) of a process and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            match = re.search(r"^Pss:\s+(\d+) kB", Path(f"/proc/{pid}/smaps_rollup").read_text(), re.M)
        except OSError:
            continue
        total += int(match[1]) * 1024 if match else 0
    return total


def train(label: str, rec: Path, arch: Path, out: Path, sets: list[str]) -> dict[str, Any]:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "facenas.cli.main", "train", "--arch", str(arch),
           "-c", "configs/train/faces-synthetic.yaml", "--face-source", str(rec), "--out", str(out), "--device", "cpu",
           "--set", "faces.data.test_identities=0", "--set", "faces.data.max_images_per_identity=null",
           "--set", "faces.data.size=112", "--set", "faces.data.heldout_identities=20",
           "--set", "faces.data.min_images_per_identity=2", "--set", "faces.train.epochs=1",
           "--set", "faces.train.batch_size=128", "--set", "faces.train.eval_every=1", *sets]
    print(f"[{label}] {' '.join(cmd[3:])}", flush=True)
    began = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            peak[0] = max(peak[0], tree_pss(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    done.set()
    sampler.join()
    wall = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"[{label}] failed:\n{stdout[-2000:]}\n{stderr[-3000:]}")
    max_rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)[1])
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    report = json.loads((out / "report.json").read_text())
    images = report["data"]["train_images"]
    epoch_s = float(rows[0]["seconds"])
    result = {"label": label, "sets": sets, "wall_s": round(wall, 1), "max_rss_gb": round(max_rss_kb / 2**20, 3),
              "peak_tree_pss_gb": round(peak[0] / 2**30, 3), "train_images": images, "epoch_s": round(epoch_s, 1),
              "images_per_s": round(images / epoch_s, 1)}
    print(f"[{label}] {result}", flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--identities", type=int, default=2000)
    ap.add_argument("--per-identity", type=int, default=30)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="runs/bench-stream", help="folder for the RecordIO and the runs")
    ap.add_argument("--results", default=str(ROOT / "bench" / "results"))
    opts = ap.parse_args()

    out = Path(opts.out)
    rec = out / "rec"
    if not (rec / "train.rec").exists():
        began = time.perf_counter()
        n = write_rec(rec, opts.identities, opts.per_identity)
        print(f"wrote {n:,} faces to {rec} in {time.perf_counter() - began:.0f} s "
              f"({(rec / 'train.rec').stat().st_size / 2**20:.0f} MiB)", flush=True)
    n = opts.identities * opts.per_identity
    arch = out / "arch.json"
    from facenas.config import Config
    from facenas.space.arch import Arch
    from facenas.train.evaluators import face_profile

    profile = face_profile(Config.model_validate({"task": "faces", "faces": {"data": {"size": 112}}}))
    arch.write_text(Arch.uniform(8, 4, profile).to_json())
    runs = [
        train("stream, 0 workers", rec, arch, out / "stream0", ["--set", "faces.train.workers=0"]),
        train(f"stream, {opts.workers} workers", rec, arch, out / f"stream{opts.workers}",
              ["--set", f"faces.train.workers={opts.workers}"]),
        train("in memory", rec, arch, out / "memory", ["--set", "faces.train.stream=off"]),
    ]
    result = {"images": n, "decoded_set_gb": round(n * 112 * 112 * 3 / 2**30, 3), "cpu_count": os.cpu_count(),
              "runs": runs}
    path = Path(opts.results) / "stream_memory.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
