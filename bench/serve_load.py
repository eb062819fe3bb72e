"""A bounded load test of `/v1/verify` on loopback, side by side with a plain onnxruntime loop (the ceiling).

1. Export a face model of the demo's size (the demo's trained model where `runs/demo/train/model.pt` exists,
   else freshly initialised weights: speed does not depend on them) and start `facenas serve` on 127.0.0.1.
2. Several client threads post pairs of aligned 112x112 PNG crops to `/v1/verify` for a fixed time; requests/s,
   p50/p99 latency and errors are recorded.
3. In this process, a plain loop decodes the same PNG pairs and computes their embeddings with onnxruntime (one
   batch of two per pair): the most a single process could do without HTTP, multipart parsing, checks and JSON.

Prints the table and the ratio, and saves JSON to bench/results/serve_load.json.

    python bench/serve_load.py [--seconds 30] [--clients 4]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from facenas import __version__  # noqa: E402
from facenas.data.faces.synthetic import synthetic_faces  # noqa: E402


def make_model(folder: Path) -> Path:
    import torch

    from facenas.export.onnx import export_onnx
    from facenas.models import build_model
    from facenas.space.arch import Arch, Profile

    checkpoint = ROOT / "runs" / "demo" / "train" / "model.pt"
    if not checkpoint.exists():
        profile = Profile(in_channels=3, stem_stride=2, reductions=3, head="embedding", embedding_dim=128,
                          input_size=112)
        arch = Arch(8, 8, [0, 1, 1, 1, 1, 0, 0, 0], [3, 5, 5, 3, 3, 3, 3, 3], profile)
        torch.manual_seed(0)
        checkpoint = folder / "model.pt"
        torch.save({"arch": arch.to_dict(), "model": build_model(arch).state_dict()}, checkpoint)
    export_onnx(checkpoint, folder / "model.onnx")
    return folder / "model.onnx"


def encoded_pairs(count: int = 32) -> list[tuple[bytes, bytes]]:
    faces = synthetic_faces(count, 2, seed=3, first_identity=800_000)
    png = [cv2.imencode(".png", cv2.cvtColor(img.transpose(1, 2, 0), cv2.COLOR_RGB2BGR))[1].tobytes()
           for img in faces.images]
    return [(png[2 * i], png[2 * i + 1]) for i in range(count)]


def load(url: str, pairs: list[tuple[bytes, bytes]], seconds: float, clients: int) -> dict:
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(k: int) -> None:
        with httpx.Client(timeout=30) as http:
            i = k
            while time.perf_counter() < stop_at:
                a, b = pairs[i % len(pairs)]
                began = time.perf_counter()
                try:
                    r = http.post(url + "/v1/verify", files={"image1": ("a.png", a), "image2": ("b.png", b)})
                    key = None if r.status_code == 200 else str(r.status_code)
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                elapsed = time.perf_counter() - began
                with lock:
                    if key is None:
                        latencies.append(elapsed)
                    else:
                        errors[key] = errors.get(key, 0) + 1
                i += clients

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    lat = sorted(latencies)
    return {"requests": len(lat), "errors": errors, "seconds": wall, "requests_per_second": len(lat) / wall,
            "p50_ms": 1000 * statistics.median(lat) if lat else None,
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None}


def ceiling(model: Path, pairs: list[tuple[bytes, bytes]], seconds: float) -> dict:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    done, began, i = 0, time.perf_counter(), 0
    while time.perf_counter() - began < seconds:
        a, b = pairs[i % len(pairs)]
        imgs = [cv2.cvtColor(cv2.imdecode(np.frombuffer(x, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                for x in (a, b)]
        batch = (np.stack(imgs).transpose(0, 3, 1, 2).astype(np.float32) - 127.5) / 127.5
        emb = session.run(None, {"data": batch})[0]
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        float(emb[0] @ emb[1])
        done += 1
        i += 1
    wall = time.perf_counter() - began
    return {"pairs": done, "seconds": wall, "pairs_per_second": done / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve_load.json")
    args = parser.parse_args()
    from tests.serve.conftest import Server  # the same helper the end-to-end tests use

    with tempfile.TemporaryDirectory() as tmp:
        model = make_model(Path(tmp))
        pairs = encoded_pairs()
        with Server("--model", str(model), "--db", str(Path(tmp) / "g.sqlite"), "--threshold", "0.5",
                    "--rate-limit", "0", "--log-level", "warning") as server:
            load(server.url, pairs, 2.0, args.clients)  # warm-up
            service = load(server.url, pairs, args.seconds, args.clients)
        plain = ceiling(model, pairs, args.seconds)
    ratio = service["requests_per_second"] / plain["pairs_per_second"]
    print(f"service /v1/verify : {service['requests_per_second']:7.1f} req/s  p50 {service['p50_ms']:.1f} ms  "
          f"p99 {service['p99_ms']:.1f} ms  errors {sum(service['errors'].values())}  ({args.clients} clients)")
    print(f"plain onnxruntime  : {plain['pairs_per_second']:7.1f} pairs/s (decode + embed, one process)")
    print(f"service / ceiling  : {ratio:.2f}")
    result = {"benchmark": "serve_load", "clients": args.clients, "seconds": args.seconds, "service": service,
              "ceiling": plain, "ratio": ratio,
              "machine": {"python": platform.python_version(), "platform": platform.platform()},
              "facenas_version": __version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
