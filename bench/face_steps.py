"""Face training steps per second: `fit_face` streaming a RecordIO with 0/N DataLoader workers, against the bare
steps of the same network on tensors already on the device (the limit).

Writes a RecordIO of generated 112x112 faces (JPEG, as insightface's sets are), then for each worker count trains a
fresh run of a searched-space network (or `--backbone`) for `--steps` steps after `--warmup` untimed ones (over
as many epochs as that takes), and times them (the clock stops after a device synchronisation). The bare line
runs the same model, margin head and optimiser on one batch already on the device. Precision and layout follow
the config's `auto` (fp16 and channels-last on CUDA, fp32 on the CPU) unless given.

    python bench/face_steps.py [--device cuda] [--workers 0,4,8] [--steps 60] [--batch-size 128]

Prints and writes bench/results/face_steps.json (or --results).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from stream_memory import write_rec  # noqa: E402  (the same generated RecordIO as the memory bench)

from facenas import __version__  # noqa: E402
from facenas.config import parse_config  # noqa: E402


class _Enough(Exception):
    pass


def _sync(device: torch.device) -> None:
    """Wait for the GPU's queued work, so a clock reads what ran (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def face_config(rec: Path, args: argparse.Namespace, workers: int):
    model = {"stem_stride": 2, "reductions": 3, "embedding_dim": 128, "embedding_head": "gdc"}
    if args.backbone:
        model["backbone"] = args.backbone
    return parse_config({
        "name": "face-steps", "task": "faces", "seed": 0, "model": model,
        "faces": {"data": {"source": str(rec), "size": 112, "heldout_identities": 20, "min_images_per_identity": 2},
                  "train": {"batch_size": args.batch_size, "device": args.device, "workers": workers,
                            "precision": args.precision, "channels_last": args.channels_last, "stream": "on",
                            "compile": args.compile}},
    })


def timed_steps(cfg, args: argparse.Namespace) -> dict:
    """Train `warmup` + `steps` steps of a fresh run; images per second over the timed steps."""
    from facenas.data.faces.splits import load_face_splits
    from facenas.space.arch import Arch
    from facenas.train.evaluators import face_profile
    from facenas.train.face_job import backbone_spec
    from facenas.train.faces import fit_face, new_run, steps_per_epoch

    device = torch.device(args.device)
    splits = load_face_splits(cfg.faces.data, cfg.seed, stream=True)
    train = cfg.faces.train
    backbone = backbone_spec(cfg)
    arch = None if backbone is not None else Arch.uniform(args.width, args.depth, face_profile(cfg))
    per_epoch = steps_per_epoch(len(splits.train), train.batch_size)
    epochs = -(-(args.warmup + args.steps) // per_epoch)  # as many epochs as the timed steps need
    run = new_run(arch, splits.train.num_identities, train, epochs=epochs, steps_per_epoch=per_epoch, seed=0,
                  device=device, preprocess={}, backbone=backbone)
    marks: dict[str, float] = {}

    def on_step(r, values) -> None:
        if r.global_step == args.warmup:
            _sync(device)
            marks["start"] = time.perf_counter()
        if r.global_step == args.warmup + args.steps:
            _sync(device)
            marks["end"] = time.perf_counter()
            raise _Enough

    try:
        fit_face(run, splits.train, cfg=train, augment=cfg.faces.data.augment, epochs=epochs, seed=0,
                 device=device, on_step=on_step)
    except _Enough:
        pass
    seconds = marks["end"] - marks["start"]
    return {"steps": args.steps, "seconds": seconds, "steps_per_second": args.steps / seconds,
            "images_per_second": args.steps * train.batch_size / seconds, "run": run}


def bare_steps(cfg, run, args: argparse.Namespace) -> dict:
    """The same model, head and optimiser on one uint8 batch already on the device: the limit of the step."""
    from facenas.train.core import Stepper, autocast, use_channels_last
    from facenas.train.faces import FaceObjective, face_precision

    device = torch.device(args.device)
    train = cfg.faces.train
    precision = face_precision(train, device)
    memory_format = (torch.channels_last if use_channels_last(run.model, device, train.channels_last, precision)
                     else torch.contiguous_format)
    objective = FaceObjective(run.model, run.head, autocast(device, precision), memory_format)
    stepper = Stepper(run.optimizer, run.scaler, train.grad_clip)
    images = torch.randint(0, 256, (train.batch_size, 3, 112, 112), dtype=torch.uint8, device=device)
    labels = torch.randint(0, run.head.classifier.weight.shape[0], (train.batch_size,), device=device)
    run.model.train()
    for k in range(args.warmup + args.steps):
        if k == args.warmup:
            _sync(device)
            began = time.perf_counter()
        loss, _ = objective(images, labels)
        stepper(loss)
    _sync(device)
    seconds = time.perf_counter() - began
    return {"steps": args.steps, "seconds": seconds, "steps_per_second": args.steps / seconds,
            "images_per_second": args.steps * train.batch_size / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--workers", default="0,2", help="comma-separated DataLoader worker counts")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--width", type=int, default=32, help="searched-space chain: width")
    ap.add_argument("--depth", type=int, default=12, help="searched-space chain: depth")
    ap.add_argument("--backbone", default=None, help="a hand-designed backbone instead, e.g. mobilefacenet")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    ap.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"))
    ap.add_argument("--compile", default="off", choices=("off", "default", "reduce-overhead", "max-autotune"))
    ap.add_argument("--identities", type=int, default=200)
    ap.add_argument("--per-identity", type=int, default=30)
    ap.add_argument("--out", default="runs/bench-face-steps", help="folder for the generated RecordIO")
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "face_steps.json"))
    args = ap.parse_args()

    rec = Path(args.out) / "rec"
    if not (rec / "train.rec").exists():
        write_rec(rec, args.identities, args.per_identity)
    rows, run = [], None
    for workers in (int(w) for w in args.workers.split(",")):
        cfg = face_config(rec, args, workers)
        row = timed_steps(cfg, args)
        run = row.pop("run")
        rows.append({"workers": workers, **row})
        print(f"workers {workers:2d}: {row['steps_per_second']:7.2f} steps/s  {row['images_per_second']:8.0f} img/s",
              flush=True)
    bare = bare_steps(face_config(rec, args, 0), run, args)
    print(f"bare      : {bare['steps_per_second']:7.2f} steps/s  {bare['images_per_second']:8.0f} img/s")
    for row in rows:
        row["of_bare"] = row["steps_per_second"] / bare["steps_per_second"]
    device = torch.device(args.device)
    result = {
        "benchmark": "face_steps", "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "batch_size": args.batch_size, "network": args.backbone or f"chain C{args.width} D{args.depth}",
        "precision": args.precision, "channels_last": args.channels_last, "compile": args.compile,
        "images": args.identities * args.per_identity, "streamed": rows, "bare": bare,
        "torch_threads": torch.get_num_threads(), "cores": os.cpu_count(),
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()},
        "facenas_version": __version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
