"""The main job on embedded data (`facenas demo`, what `tools/demo.sh` runs).

1. A face search on the synthetic faces (facenas/data/faces/synthetic.py), at proxy budgets scaled to finish in a
   few minutes on a CPU: half resolution, stride-1 stem, ArcFace, verification pairs of 20 held-out identities.
2. Final training of the architecture found, at 112x112 with a stride-2 stem (the body sees the same feature map
   sizes, so the found body transfers unchanged).
3. LFW-protocol evaluation on a synthetic LFW: "photographs" of identities that never appear in training or search,
   250x250 with the face anywhere, aligned with their five landmarks, 10 folds in a pairs.txt.
4. A summary: architecture, parameters, MACs, accuracies, times.

Everything is seeded; re-running resumes the search and the training where they stopped (or finds them done).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Optional

from facenas.config import Config, parse_config, to_yaml
from facenas.data.faces.build import write_folder
from facenas.data.faces.pairs import pairs_txt_rows, sample_pairs, write_pairs
from facenas.data.faces.synthetic import synthetic_faces
from facenas.search.run import SearchEvents, search_from_config

SEARCH = {
    "name": "demo-search", "task": "faces", "seed": 0,
    "faces": {
        "data": {"source": "synthetic", "synthetic": {"identities": 100, "images_per_identity": 10, "seed": 0},
                 "size": 56, "heldout_identities": 20, "heldout_pairs_per_fold": 30},
        "train": {"batch_size": 64, "lr": 0.1, "margin": {"loss": "arcface"}},
    },
    "model": {"stem_stride": 1, "reductions": 3, "embedding_dim": 128, "embedding_head": "gdc"},
    "search": {"depth": {"min": 4, "max": 8, "start_epochs": 1, "epoch_step": 1},
               "width": {"max": 16, "min": 8, "step": 4, "epoch_step": 1},
               "micro": {"epochs": 1}},
}
TRAIN = {
    "name": "demo-train", "task": "faces", "seed": 0,
    "faces": {
        "data": {"source": "synthetic", "synthetic": {"identities": 100, "images_per_identity": 10, "seed": 0},
                 "size": 112, "heldout_identities": 20, "heldout_pairs_per_fold": 30},
        "train": {"epochs": 12, "batch_size": 64, "lr": 0.1, "warmup_epochs": 0.5, "margin": {"loss": "arcface"}},
    },
    "model": {"stem_stride": 2, "reductions": 3, "embedding_dim": 128, "embedding_head": "gdc"},
}
BENCHMARK_FIRST_IDENTITY = 100_000  # far from the training identities 0..99
BENCHMARK_IDENTITIES, BENCHMARK_IMAGES, BENCHMARK_PAIRS_PER_FOLD = 40, 6, 30


def write_synthetic_lfw(root: Path, seed: int = 0) -> tuple[Path, Path, Path]:
    """An LFW-style directory of held-out synthetic identities, its pairs.txt and a landmarks file."""
    lfw, pairs_file, landmarks_file = root / "lfw", root / "pairs.txt", root / "landmarks.txt"
    if pairs_file.exists() and landmarks_file.exists():
        return lfw, pairs_file, landmarks_file
    faces = synthetic_faces(BENCHMARK_IDENTITIES, BENCHMARK_IMAGES, seed=seed, mode="photo",
                            first_identity=BENCHMARK_FIRST_IDENTITY)
    paths = write_folder(faces, lfw, fmt=".jpg")
    assert faces.landmarks is not None
    lines = [f"{p.relative_to(lfw).as_posix()} " + " ".join(f"{v:.2f}" for v in lmk.reshape(-1))
             for p, lmk in zip(paths, faces.landmarks)]
    landmarks_file.write_text("\n".join(lines) + "\n")
    index = sample_pairs(faces.labels, BENCHMARK_PAIRS_PER_FOLD, folds=10, seed=seed)
    names = [faces.identities[label] for label in faces.labels]
    rows = pairs_txt_rows(index, names, [int(p.stem.rsplit("_", 1)[1]) for p in paths])
    write_pairs(pairs_file, rows, 10, BENCHMARK_PAIRS_PER_FOLD)
    return lfw, pairs_file, landmarks_file


def run_demo(out: str | Path, *, resume: bool = True, events: Optional[SearchEvents] = None,
             log: Callable[[str], Any] = print) -> dict[str, Any]:
    from facenas.evaluate.run import PairSource, evaluate_model
    from facenas.space.arch import Arch
    from facenas.train.face_job import train_faces

    out = Path(out)
    began = time.perf_counter()
    search_cfg: Config = parse_config({**SEARCH, "run": {"out": str(out / "search"), "resume": resume}})
    log("[1/3] face search on synthetic faces (drawn faces, not photographs)")
    search = search_from_config(search_cfg, events=events)
    searched = time.perf_counter()
    log(f"      found {search.result.arch.short()} in {searched - began:.0f} s ({len(search.records)} candidates)")

    train_cfg: Config = parse_config({**TRAIN, "run": {"out": str(out / "train"), "resume": resume}})
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "train" / "config.yaml").write_text(to_yaml(train_cfg))
    log(f"[2/3] final training at 112x112 for {train_cfg.faces.train.epochs} epochs")
    report = train_faces(Arch.from_dict(search.summary["arch"]), train_cfg)
    trained = time.perf_counter()

    log("[3/3] LFW-protocol evaluation on held-out synthetic identities")
    lfw, pairs, landmarks = write_synthetic_lfw(out / "benchmark")
    evaluation = evaluate_model(report["model"], [PairSource("synthetic-lfw", lfw_dir=lfw, pairs=pairs)],
                                landmarks=landmarks, json_out=out / "eval.json", plot=out / "roc.png")
    lfw_result = evaluation["sets"]["synthetic-lfw"]
    done = time.perf_counter()
    summary = {
        "note": "synthetic faces (drawn, not photographs): a smoke test of the whole pipeline, not a face benchmark",
        "architecture": report["arch_short"], "params": report["params"], "macs_112": report["macs"],
        "search": {"candidates": len(search.records), "seconds": round(searched - began, 1),
                   "macro_depth": search.result.macro_depth, "macro_width": search.result.macro_width},
        "training": {"epochs": report["epochs"], "heldout_accuracy": report["heldout_accuracy"],
                     "seconds": round(trained - searched, 1)},
        "lfw_protocol": {"pairs": lfw_result["pairs"], "accuracy": lfw_result["accuracy"],
                         "accuracy_std": lfw_result["accuracy_std"], "eer": lfw_result["eer"],
                         "auc": lfw_result["auc"], "tar_at_far": lfw_result["tar_at_far"],
                         "seconds": round(done - trained, 1)},
        "total_seconds": round(done - began, 1),
        "outputs": {"search": str(out / "search"), "model": report["model"], "eval": str(out / "eval.json"),
                    "roc": str(out / "roc.png")},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
