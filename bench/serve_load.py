"""A bounded load test of `/v1/verify` on loopback, side by side with a plain onnxruntime loop (the ceiling).

1. Export a face model of the demo's size (the demo's trained model where `runs/demo/train/model.pt` exists,
   else freshly initialised weights: speed does not depend on them) and start `facenas serve` on 127.0.0.1.
2. Several client threads post pairs of aligned 112x112 PNG crops to `/v1/verify` for a fixed time; requests/s,
   p50/p99 latency, errors and the CPU time of both processes per request are recorded. The clients use
   http.client with prebuilt bodies: they share the cores with the service, so they should cost little.
3. In this process, a plain loop decodes the same PNG pairs and computes their embeddings with onnxruntime (one
   batch of two per pair): the most a single process could do without HTTP, multipart parsing, checks and JSON.

Service and ceiling alternate `--repeats` times, the service once per worker count (`--workers 1,2`: one server
each, all started first); prints each pair and the mean ratio per worker count with its standard error, and saves
JSON to bench/results/serve_load.json.

    python bench/serve_load.py [--seconds 20] [--clients 4] [--repeats 3] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

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


def multipart(a: bytes, b: bytes, boundary: str = "facenas-bench-boundary") -> tuple[bytes, str]:
    """The body of a /v1/verify request, built once: the load generator should spend the shared cores on sending,
    not on encoding."""
    parts = []
    for name, data in (("image1", a), ("image2", b)):
        parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}.png\"\r\n"
                     "Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def load(url: str, pairs: list[tuple[bytes, bytes]], seconds: float, clients: int) -> dict:
    """Closed-loop clients (each sends its next request when the last answer arrives) on keep-alive connections,
    with the standard library's http.client and prebuilt bodies: a light generator, since it shares the cores with
    the service. Records its own CPU time, so its share of the machine is in the figures."""
    import http.client
    from urllib.parse import urlsplit

    host, port = urlsplit(url).hostname, urlsplit(url).port
    bodies = [multipart(a, b) for a, b in pairs]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(k: int) -> None:
        connection = http.client.HTTPConnection(host, port, timeout=30)
        i = k
        while time.perf_counter() < stop_at:
            body, content_type = bodies[i % len(bodies)]
            began = time.perf_counter()
            try:
                connection.request("POST", "/v1/verify", body=body, headers={"Content-Type": content_type})
                response = connection.getresponse()
                response.read()
                key = None if response.status == 200 else str(response.status)
            except (OSError, http.client.HTTPException) as exc:
                key = type(exc).__name__
                connection.close()
                connection = http.client.HTTPConnection(host, port, timeout=30)
            elapsed = time.perf_counter() - began
            with lock:
                if key is None:
                    latencies.append(elapsed)
                else:
                    errors[key] = errors.get(key, 0) + 1
            i += clients
        connection.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    cpu, began = time.process_time(), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu
    lat = sorted(latencies)
    return {"requests": len(lat), "errors": errors, "seconds": wall, "requests_per_second": len(lat) / wall,
            "p50_ms": 1000 * statistics.median(lat) if lat else None,
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None,
            "client_cpu_ms_per_request": 1000 * cpu / max(len(lat), 1)}


def process_cpu_seconds(pid: int) -> Optional[float]:
    """User + system CPU seconds of a process and its children alive now (the workers of `--workers N`; Linux
    /proc), or None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except (OSError, ValueError, IndexError):
        return None
    return total + sum(process_cpu_seconds(int(child)) or 0.0 for child in children)


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
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="alternating service and ceiling runs")
    parser.add_argument("--workers", default="1", help="comma-separated worker counts of the service, e.g. 1,2")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve_load.json")
    args = parser.parse_args()
    from contextlib import ExitStack

    from tests.serve.conftest import Server  # the same helper the end-to-end tests use

    counts = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        model = make_model(Path(tmp))
        pairs = encoded_pairs()
        runs: dict[int, list[dict]] = {w: [] for w in counts}
        servers = {w: stack.enter_context(Server("--model", str(model), "--db", str(Path(tmp) / f"g{w}.sqlite"),
                                                 "--threshold", "0.5", "--rate-limit", "0", "--log-level", "warning",
                                                 "--workers", str(w))) for w in counts}
        for server in servers.values():
            load(server.url, pairs, 2.0, args.clients)  # warm-up
        for _ in range(args.repeats):  # side by side, alternating: the machine's drift hits every configuration
            for w, server in servers.items():
                cpu = process_cpu_seconds(server.proc.pid)
                service = load(server.url, pairs, args.seconds, args.clients)
                if cpu is not None:
                    service["server_cpu_ms_per_request"] = (1000 * (process_cpu_seconds(server.proc.pid) - cpu)
                                                            / max(service["requests"], 1))
                plain = ceiling(model, pairs, args.seconds)
                runs[w].append({"service": service, "ceiling": plain,
                                "ratio": service["requests_per_second"] / plain["pairs_per_second"]})
                print(f"service /v1/verify, {w} worker(s): {service['requests_per_second']:7.1f} req/s  p50 "
                      f"{service['p50_ms']:.1f} ms  p99 {service['p99_ms']:.1f} ms  errors "
                      f"{sum(service['errors'].values())}  ({args.clients} clients)   plain onnxruntime: "
                      f"{plain['pairs_per_second']:7.1f} pairs/s   ratio {runs[w][-1]['ratio']:.2f}", flush=True)
    summary = {}
    for w in counts:
        ratios = [r["ratio"] for r in runs[w]]
        sem = statistics.stdev(ratios) / len(ratios) ** 0.5 if len(ratios) > 1 else 0.0
        summary[str(w)] = {"ratio": statistics.mean(ratios), "ratio_sem": sem, "ratios": ratios, "runs": runs[w]}
        print(f"service / ceiling, {w} worker(s): {statistics.mean(ratios):.2f} +- {sem:.2f} (s.e. over "
              f"{len(ratios)} alternating runs; the load generator shares the {os.cpu_count()} cores)")
    first = summary[str(counts[0])]
    result = {"benchmark": "serve_load", "clients": args.clients, "seconds": args.seconds, "repeats": args.repeats,
              "ratio": first["ratio"], "ratio_sem": first["ratio_sem"], "ratios": first["ratios"],
              "runs": first["runs"], "workers": summary,
              "machine": {"python": platform.python_version(), "platform": platform.platform(),
                          "cpus": os.cpu_count()},
              "facenas_version": __version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
