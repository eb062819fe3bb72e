"""Does the search's latency of a candidate equal `facenas export`'s latency of the exported model? (issue 20)

The search times a candidate on its deployment target without writing anything (`arch_latency`: the net exported
in memory as `facenas export` would write it, timed on onnxruntime); `facenas export` times the file it wrote
(`export_onnx(..., target=...)`, the same `onnx_latency`). For five architectures of the lfw-dev face space, drawn
with `facenas.space.sample` at three parameter counts (at the two larger ones the most separable and the most
convolutional draw, so that nets of one size but different operations are among them), each is saved as
`facenas train` saves a model, then the two measurements alternate `--rounds` times, so that the machine's load
drifts over both alike. Per architecture and side, the round least disturbed by the machine's other work (the
lowest median: other processes only ever add time) gives the median latency and its spread (interquartile range);
then their difference, and whether it lies within the larger spread. Every round is in the JSON. Prints a table,
saves JSON.

    nice python bench/latency_agreement.py [--config configs/search/faces-lfw-dev.yaml] [--rounds 3]
        [--threads 1] [--batch 1] [--repeats 50] [--seed 0]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._results import save_results  # noqa: E402
from facenas.config import TargetConfig, load_config  # noqa: E402
from facenas.export.latency import arch_latency, arch_model  # noqa: E402
from facenas.export.onnx import export_onnx  # noqa: E402
from facenas.space.arch import Arch  # noqa: E402
from facenas.space.count import count_macs, count_params  # noqa: E402
from facenas.space.sample import sample_archs, space_from_config  # noqa: E402
from facenas.train.evaluators import face_profile  # noqa: E402

#: Parameter counts drawn at: one architecture at the first, the most separable and the most convolutional at each
#: of the others.
SIZES = (100_000, 300_000, 800_000)
DRAWS = 60  # per size, to choose from


def conv_share(arch: Arch) -> float:
    return sum(arch.ops) / arch.depth


def choose(config_path: Path, seed: int) -> list[Arch]:
    """Five architectures of the config's face space, spread over sizes and operations."""
    config = load_config(config_path)
    space = space_from_config(config, face_profile(config))
    chosen = []
    for i, size in enumerate(SIZES):
        draws = sorted(sample_archs(space, size, seed, count=DRAWS), key=conv_share)
        chosen += [draws[len(draws) // 2]] if i == 0 else [draws[0], draws[-1]]
    return chosen


def save_checkpoint(arch: Arch, path: Path) -> None:
    """As `facenas train` saves `model.pt` (untrained weights: latency does not depend on them)."""
    size, channels = arch.profile.input_size, arch.profile.in_channels
    model = arch_model(arch, seed=1)  # other weights than the search's measurement draws (seed 0)
    torch.save({"format": "facenas.face-model/1", "arch": arch.to_dict(), "model": model.state_dict(),
                "preprocess": {"size": size, "channels": channels, "mean": 127.5, "std": 127.5}}, path)


def compare(arch: Arch, target: TargetConfig, rounds: int, folder: Path) -> dict[str, Any]:
    checkpoint, out = folder / "model.pt", folder / "model.onnx"
    save_checkpoint(arch, checkpoint)
    search, export = [], []
    for _ in range(rounds):
        search.append(arch_latency(arch, target).to_dict())
        report = export_onnx(checkpoint, out, target=target)
        export.append(report.latency)
    side = {}
    for name, runs in (("search", search), ("export", export)):
        best = min(runs, key=lambda r: r["median_ms"])
        side[name] = {"median_ms": best["median_ms"], "spread_ms": best["spread_ms"],
                      "median_of_rounds_ms": statistics.median(r["median_ms"] for r in runs), "rounds": runs}
    difference = side["export"]["median_ms"] - side["search"]["median_ms"]
    tolerance = max(side["search"]["spread_ms"], side["export"]["spread_ms"])
    return {"arch": arch.short(), "params": count_params(arch), "macs": count_macs(arch),
            "conv_share": conv_share(arch), **side, "difference_ms": difference,
            "within_spread": abs(difference) <= tolerance}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "search" / "faces-lfw-dev.yaml")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the two measurements per arch")
    parser.add_argument("--threads", type=int, default=1, help="search.target.threads")
    parser.add_argument("--batch", type=int, default=1, help="search.target.batch")
    parser.add_argument("--repeats", type=int, default=50, help="search.target.repeats")
    parser.add_argument("--seed", type=int, default=0, help="seed of the architecture draws")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latency_agreement.json")
    args = parser.parse_args()
    target = TargetConfig(threads=args.threads, batch=args.batch, repeats=args.repeats)
    torch.set_num_threads(1)  # exporting leaves the other cores to onnxruntime's timing on a shared machine
    results = []
    archs = choose(args.config, args.seed)
    width = max(len(a.short()) for a in archs)
    print(f"{'architecture':<{width}} {'params':>9} {'MMACs':>7} {'conv':>5} {'search ms':>16} {'export ms':>16} "
          f"{'diff ms':>8}  within spread", flush=True)
    for arch in archs:
        with tempfile.TemporaryDirectory() as tmp:
            r = compare(arch, target, args.rounds, Path(tmp))
        results.append(r)
        s, e = r["search"], r["export"]
        print(f"{r['arch']:<{width}} {r['params']:>9,} {r['macs'] / 1e6:>7.1f} {r['conv_share']:>5.2f} "
              f"{s['median_ms']:>8.3f} ±{s['spread_ms']:<6.3f} {e['median_ms']:>8.3f} ±{e['spread_ms']:<6.3f} "
              f"{r['difference_ms']:>+8.3f}  {'yes' if r['within_spread'] else 'NO'}", flush=True)
    agree = sum(r["within_spread"] for r in results)
    print(f"{agree} of {len(results)} architectures: the search's latency equals the exported model's within the "
          f"measured spread (each side's least disturbed of {args.rounds} alternating rounds; spread = interquartile "
          f"range of {args.repeats} timed calls, threads {args.threads}, batch {args.batch})")
    save_results(args.out, {"benchmark": "latency_agreement", "config": str(args.config), "seed": args.seed,
                            "rounds": args.rounds, "target": target.model_dump(), "agree": agree,
                            "results": results})


if __name__ == "__main__":
    main()
