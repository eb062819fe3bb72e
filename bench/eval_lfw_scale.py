"""`facenas eval` at LFW's full size: 13,233 images of 5,749 people, 6,000 pairs in 10 folds.

Writes a synthetic LFW of that shape (250x250 JPEGs with a landmarks file; 4,069 people with one image and 1,680
with several, as in LFW), then times the evaluation of a model on it and records the peak memory. The model is
the demo's (`runs/demo/train/model.pt`) where it exists, else a freshly initialised one of the demo's size.
Prints and saves JSON to bench/results/eval_lfw_scale.json.

    python bench/eval_lfw_scale.py [--model PATH] [--root /tmp/facenas-lfw-scale]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

from facenas import __version__
from facenas.data.faces.pairs import pairs_txt_rows, sample_pairs, write_pairs
from facenas.data.faces.synthetic import render
from facenas.evaluate.run import PairSource, evaluate_model
from facenas.models import build_model
from facenas.space.arch import Arch, Profile

ROOT = Path(__file__).resolve().parents[1]
PEOPLE, SINGLE, IMAGES, PAIRS_PER_FOLD = 5749, 4069, 13233, 300


def write_lfw(root: Path) -> tuple[Path, Path, Path]:
    lfw, pairs_file, landmarks_file = root / "lfw", root / "pairs.txt", root / "landmarks.txt"
    if pairs_file.exists():
        return lfw, pairs_file, landmarks_file
    import cv2

    rng = np.random.default_rng(0)
    counts = np.ones(PEOPLE, int)
    counts[SINGLE:] = 2
    extra = IMAGES - counts.sum()
    counts[SINGLE:] += np.bincount(rng.integers(0, PEOPLE - SINGLE, extra), minlength=PEOPLE - SINGLE)
    labels, lines, numbers = [], [], []
    for person, count in enumerate(counts):
        name = f"Person_{person:05d}"
        (lfw / name).mkdir(parents=True, exist_ok=True)
        for n in range(1, count + 1):
            img, lmk = render(0, 500_000 + person, n, mode="photo")
            cv2.imwrite(str(lfw / name / f"{name}_{n:04d}.jpg"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            lines.append(f"{name}/{name}_{n:04d}.jpg " + " ".join(f"{v:.2f}" for v in lmk.reshape(-1)))
            labels.append(person)
            numbers.append(n)
    landmarks_file.write_text("\n".join(lines) + "\n")
    labels_arr = np.asarray(labels)
    index = sample_pairs(labels_arr, PAIRS_PER_FOLD, folds=10, seed=0)
    rows = pairs_txt_rows(index, [f"Person_{k:05d}" for k in labels_arr], numbers)
    write_pairs(pairs_file, rows, 10, PAIRS_PER_FOLD)
    return lfw, pairs_file, landmarks_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "runs" / "demo" / "train" / "model.pt")
    parser.add_argument("--root", type=Path, default=Path("/tmp/facenas-lfw-scale"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "eval_lfw_scale.json")
    args = parser.parse_args()
    began = time.perf_counter()
    lfw, pairs, landmarks = write_lfw(args.root)
    written = time.perf_counter() - began
    model = args.model
    if not model.exists():
        profile = Profile(in_channels=3, stem_stride=2, reductions=3, head="embedding", embedding_dim=128,
                          input_size=112)
        arch = Arch.uniform(8, 8, profile)
        torch.manual_seed(0)
        model = args.root / "random_model.pt"
        torch.save({"arch": arch.to_dict(), "model": build_model(arch).state_dict()}, model)
    images = sum(1 for _ in lfw.glob("*/*.jpg"))
    start = time.perf_counter()
    report = evaluate_model(model, [PairSource("lfw", lfw_dir=lfw, pairs=pairs)], landmarks=landmarks)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    r = report["sets"]["lfw"]
    result = {"benchmark": "eval_lfw_scale", "lfw_images": images, "people": PEOPLE, "pairs": r["pairs"],
              "images_embedded": r["images"], "eval_seconds": seconds, "peak_rss_mb": peak_mb,
              "dataset_write_seconds": written, "accuracy": r["accuracy"], "model": str(model),
              "machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "platform": platform.platform()},
              "facenas_version": __version__}
    print(f"{images} images on disk, {r['pairs']} pairs ({r['images']} pair images) evaluated in {seconds:.1f} s; "
          f"peak RSS {peak_mb:.0f} MB; accuracy {r['accuracy'] * 100:.2f}%")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
