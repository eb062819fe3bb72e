"""The main job on embedded data (`facenas demo`, what `tools/demo.sh` runs).

1. A face search on the synthetic faces (facenas/data/faces/synthetic.py), at proxy budgets scaled to finish in a
   few minutes on a CPU: half resolution, stride-1 stem, ArcFace, verification pairs of 20 held-out identities.
2. Final training of the architecture found, at 112x112 with a stride-2 stem (the body sees the same feature map
   sizes, so the found body transfers unchanged).
3. LFW-protocol evaluation on a synthetic LFW: "photographs" of identities that never appear in training or search,
   250x250 with the face anywhere, aligned with their five landmarks, 10 folds in a pairs.txt.
4. A summary: architecture, parameters, MACs, accuracies, times; and a few aligned 112x112 crops of the held-out
   identities (`aligned/`), to try the service with (`facenas serve`, README).

Everything is seeded; re-running resumes the search and the training where they stopped. A stage that finished is
not run again: its outputs and its timing (`stages.json`) stay as they were.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Optional

from facenas.config import Config, parse_config
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
        # as configs/search/faces-lfw-dev.yaml: ROC AUC on every genuine pair of the held-out people, last epoch
        "score": {"metric": "auc", "pairs": "all", "reduce": "last"},
    },
    "model": {"stem_stride": 1, "reductions": 3, "embedding_dim": 128, "embedding_head": "gdc"},
    # Micro candidates train half the macro budget (3 epochs for a D7 C8 macro net), where one epoch left the first
    # design's score at chance (51-55 %). Rules in standard errors of the AUC's measured std over seeds at that
    # budget (6.6 points; bench/results/face_score_noise-demo-micro-3epochs-nowarmup.json).
    "search": {"depth": {"min": 4, "max": 8, "start_epochs": 1, "epoch_step": 1},
               "width": {"max": 16, "min": 8, "step": 4, "epoch_step": 1},
               "micro": {"epochs": 1, "macro_fraction": 0.5},
               "noise": {"std": 6.6, "depth_gain_z": 1.0, "depth_drop_z": 1.0, "width_tolerance_z": 0.5,
                         "micro_gain_z": 1.0}},
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
ALIGNED_IDENTITIES, ALIGNED_PER_IDENTITY = 3, 2
STAGES_FILE = "stages.json"


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


def write_aligned_crops(lfw: Path, landmarks_file: Path, out: Path) -> list[Path]:
    """A few held-out photos aligned with their landmarks onto the ArcFace template, as the service expects them:
    `<identity>_<k>.png`, 112x112 RGB."""
    from facenas.data.faces.images import encode_image, norm_crop, read_image
    from facenas.data.faces.sources import read_landmarks_file

    table = read_landmarks_file(landmarks_file, lfw)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for folder in sorted(p for p in lfw.iterdir() if p.is_dir())[:ALIGNED_IDENTITIES]:
        for k, photo in enumerate(sorted(folder.iterdir())[:ALIGNED_PER_IDENTITY]):
            crop = norm_crop(read_image(photo), table[photo.relative_to(lfw).as_posix()], 112)
            path = out / f"{folder.name}_{k}.png"
            path.write_bytes(encode_image(crop, ".png"))
            paths.append(path)
    return paths


def _remove_outputs(out: Path) -> None:
    """Start over: remove what an earlier demo wrote there (and nothing else)."""
    import shutil

    for name in ("search", "train", "benchmark", "aligned"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in (STAGES_FILE, "summary.json", "eval.json", "roc.png"):
        (out / name).unlink(missing_ok=True)


class _Stages:
    """`stages.json`: each finished stage with its seconds and result, so that a resumed demo skips it."""

    def __init__(self, path: Path, resume: bool) -> None:
        self.path = path
        self.done: dict[str, Any] = json.loads(path.read_text()) if resume and path.exists() else {}

    def finish(self, name: str, seconds: float, result: dict[str, Any]) -> dict[str, Any]:
        self.done[name] = {"seconds": round(seconds, 1), "result": result}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.done, indent=2) + "\n")
        tmp.replace(self.path)
        return self.done[name]


def run_demo(out: str | Path, *, resume: bool = True, events: Optional[SearchEvents] = None,
             log: Callable[[str], Any] = print) -> dict[str, Any]:
    from facenas.evaluate.run import PairSource, evaluate_model
    from facenas.space.arch import Arch
    from facenas.train.face_job import train_faces

    out = Path(out)
    if not resume:
        _remove_outputs(out)
    stages = _Stages(out / STAGES_FILE, resume)
    log("[1/3] face search on synthetic faces (drawn faces, not photographs)")
    search = stages.done.get("search")
    if search is None:
        began = time.perf_counter()
        search_cfg: Config = parse_config({**SEARCH, "run": {**SEARCH.get("run", {}), "out": str(out / "search"),
                                                             "resume": resume}})
        run = search_from_config(search_cfg, events=events)
        search = stages.finish("search", time.perf_counter() - began, {
            "arch": run.summary["arch"], "arch_short": run.summary["arch_short"], "candidates": len(run.records),
            "macro_depth": run.result.macro_depth, "macro_width": run.result.macro_width})
    log(f"      found {search['result']['arch_short']} in {search['seconds']:.0f} s "
        f"({search['result']['candidates']} candidates)")

    train_cfg: Config = parse_config({**TRAIN, "run": {"out": str(out / "train"), "resume": resume}})
    log(f"[2/3] final training at 112x112 for {train_cfg.faces.train.epochs} epochs")
    training = stages.done.get("training")
    if training is None:
        began = time.perf_counter()
        report = train_faces(Arch.from_dict(search["result"]["arch"]), train_cfg)
        training = stages.finish("training", time.perf_counter() - began, {
            k: report[k] for k in ("arch_short", "params", "macs", "epochs", "heldout_accuracy", "model")})
    report = training["result"]

    log("[3/3] LFW-protocol evaluation on held-out synthetic identities")
    evaluation = stages.done.get("evaluation")
    if evaluation is None:
        began = time.perf_counter()
        lfw, pairs, landmarks = write_synthetic_lfw(out / "benchmark")
        result = evaluate_model(report["model"], [PairSource("synthetic-lfw", lfw_dir=lfw, pairs=pairs)],
                                landmarks=landmarks, json_out=out / "eval.json", plot=out / "roc.png")
        crops = write_aligned_crops(lfw, landmarks, out / "aligned")
        lfw_result = result["sets"]["synthetic-lfw"]
        evaluation = stages.finish("evaluation", time.perf_counter() - began, {
            **{k: lfw_result[k] for k in ("pairs", "accuracy", "accuracy_std", "eer", "auc", "tar_at_far")},
            "aligned_crops": [str(p) for p in crops]})
    lfw_summary = {k: v for k, v in evaluation["result"].items() if k != "aligned_crops"}
    summary = {
        "note": "synthetic faces (drawn, not photographs): a smoke test of the whole pipeline, not a face benchmark",
        "architecture": report["arch_short"], "params": report["params"], "macs_112": report["macs"],
        "search": {"candidates": search["result"]["candidates"], "seconds": search["seconds"],
                   "macro_depth": search["result"]["macro_depth"], "macro_width": search["result"]["macro_width"]},
        "training": {"epochs": report["epochs"], "heldout_accuracy": report["heldout_accuracy"],
                     "seconds": training["seconds"]},
        "lfw_protocol": {**lfw_summary, "seconds": evaluation["seconds"]},
        "total_seconds": round(search["seconds"] + training["seconds"] + evaluation["seconds"], 1),
        "outputs": {"search": str(out / "search"), "model": report["model"], "eval": str(out / "eval.json"),
                    "roc": str(out / "roc.png"), "aligned_crops": str(out / "aligned")},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
