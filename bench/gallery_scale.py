"""How the serving gallery (facenas/serve/gallery.py) scales to 10,000 and 100,000 enrolled faces.

For each gallery size N (random L2-normalised float32 embeddings, `--dim` 512 as the service's models), in a
fresh SQLite file in a temporary folder:

1. Enrolment, through the gallery's API as the service does it: `create_subject` for N / `--faces-per-subject`
   subjects, then one `enrol` call (one SQLite transaction, synchronous=FULL) per face, round-robin over the
   subjects. The gallery has `faiss_min_faces` 50,000 here, so at 100k identification switches to faiss
   half-way (the service's default is the matrix throughout). Reported: faces/s overall, and over the first and
   the last 10% of the per-face calls (the matrix grows by doubling, so their ratio should stay near 1 as N
   grows), with the slowest calls (a doubling copy shows up there). On 2 cores per-face enrolment runs at a
   few thousand faces/s, so 100k per-face calls take well under a minute; where that is too slow (a slow disk:
   each commit is an fsync), `--per-face-limit L` enrols the first L faces one per call and the rest in batches
   of `--batch` faces per call, and the two rates are reported apart.
2. Restart: the gallery is closed and opened again on the file (rebuilt from SQLite): once with the plain
   matrix engine (faiss_min_faces above N) and once with faiss (faiss_min_faces = 1, where faiss imports; skipped
   with a note where it does not). The seconds to open are the restart cost of each engine.
3. Identification on each reopened gallery: `--queries` queries, half random vectors and half noisy copies of
   enrolled embeddings (cosine about 0.9 to their source) whose subject must come back top-1 (the hit rate),
   top_k 5; p50/p99/mean/max milliseconds.
4. The same queries while another thread enrols one face per call continuously into the same gallery: identify
   p50/p99 under enrolment (identification takes its snapshot under a lock held for microseconds and should not
   wait for enrolment's SQLite transactions), and the enroller's rate meanwhile. The enroller adds its faces to a
   subject of its own, deleted afterwards (`delete_subject`, timed), so both engines are measured at size N.
5. A few batched enrolments (`--batch` faces per call) on the last gallery.

    python bench/gallery_scale.py [--sizes 10000 100000] [--dim 512] [--queries 300] [--per-face-limit 0]

Prints a table and saves JSON to bench/results/gallery_scale.json (`--out`). About 2-3 minutes for both sizes on
2 cores (1.5 GB resident at most); latencies vary with other load on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from facenas import __version__  # noqa: E402
from facenas.serve.gallery import Gallery  # noqa: E402

MODEL_ID = "0" * 64  # any fixed model id: the bench never embeds an image
SERVICE_FAISS_MIN_FACES = 50_000  # faiss from this size on while enrolling (the service's default is the matrix)
NEVER = 10**12  # faiss_min_faces above any size: the plain matrix engine
ENROLLER = "concurrent-enroller"  # the subject the concurrent enroller adds faces to


def normalised(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def faiss_version() -> str | None:
    try:
        import faiss
    except ImportError:
        return None
    return getattr(faiss, "__version__", "unknown")


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def enrol_all(gallery: Gallery, subjects: list[str], embeddings: np.ndarray, per_face_limit: int,
              batch: int) -> tuple[dict, list[int]]:
    """Per-face `enrol` calls (all of them, or the first `per_face_limit`), then batches for the rest."""
    n = len(embeddings)
    per_face = n if per_face_limit <= 0 else min(n, per_face_limit)
    owners = [i % len(subjects) for i in range(per_face)]  # index into subjects, per face
    stamps = np.empty(per_face + 1)
    stamps[0] = time.perf_counter()
    for i in range(per_face):
        gallery.enrol(subjects[i % len(subjects)], embeddings[i:i + 1])
        stamps[i + 1] = time.perf_counter()
    calls = np.diff(stamps)
    tenth = max(1, per_face // 10)
    first, last = stamps[tenth] - stamps[0], stamps[-1] - stamps[-1 - tenth]
    slowest = np.argsort(calls)[::-1][:5]
    out = {"per_face_calls": per_face, "per_face_seconds": float(stamps[-1] - stamps[0]),
           "per_face_rate": rate(per_face, stamps[-1] - stamps[0]),
           "first_10pct_rate": rate(tenth, first), "last_10pct_rate": rate(tenth, last),
           "last_over_first": float(first / last) if last > 0 else None,
           "call_ms_p50": float(np.percentile(calls, 50) * 1e3), "call_ms_p99": float(np.percentile(calls, 99) * 1e3),
           "slowest_calls": [{"faces_before": int(i), "ms": float(calls[i] * 1e3)} for i in slowest]}
    rest = n - per_face
    if rest:
        began = time.perf_counter()
        for k, start in enumerate(range(per_face, n, batch)):
            gallery.enrol(subjects[k % len(subjects)], embeddings[start:start + batch])
            owners.extend([k % len(subjects)] * len(embeddings[start:start + batch]))
        seconds = time.perf_counter() - began
        out["batched"] = {"faces": rest, "batch": batch, "seconds": seconds, "rate": rate(rest, seconds)}
    return out, owners


def make_queries(rng: np.random.Generator, embeddings: np.ndarray, owners: list[str], count: int,
                 noise: float) -> tuple[np.ndarray, list[str | None]]:
    """Half random vectors (no expected match), half noisy copies of enrolled faces (their subject expected)."""
    copies = count // 2
    picks = rng.choice(len(embeddings), copies, replace=False)
    noisy = embeddings[picks] + noise * normalised(rng, copies, embeddings.shape[1])
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    queries = np.concatenate([noisy, normalised(rng, count - copies, embeddings.shape[1])])
    expected = [owners[int(i)] for i in picks] + [None] * (count - copies)
    order = rng.permutation(count)
    return queries[order], [expected[i] for i in order]


def identify_all(gallery: Gallery, queries: np.ndarray, expected: list[str | None], top_k: int) -> dict:
    seconds, hits, copies, top_random = [], 0, 0, []
    for query, want in zip(queries, expected):
        began = time.perf_counter()
        matches = gallery.identify(query, top_k)
        seconds.append(time.perf_counter() - began)
        if want is not None:
            copies += 1
            hits += bool(matches) and matches[0].subject == want
        elif matches:
            top_random.append(matches[0].similarity)
    ms = np.array(seconds) * 1e3
    return {"queries": len(queries), "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "max_ms": float(ms.max()), "hit_rate": hits / copies if copies else None,
            "noisy_copies": copies, "random_top1_similarity_mean": statistics.mean(top_random) if top_random else None}


def identify_while_enrolling(gallery: Gallery, queries: np.ndarray, expected: list[str | None], top_k: int,
                             dim: int, seed: int) -> dict:
    """The enroller adds random faces to a subject of its own, deleted afterwards (timed: `delete_subject`
    compacts the matrix), so the next engine is measured at the same size."""
    stop, counts, errors = threading.Event(), [0], []
    extra = normalised(np.random.default_rng(seed), 4096, dim)
    gallery.create_subject(ENROLLER)

    def enroller() -> None:
        try:
            i = 0
            while not stop.is_set():
                gallery.enrol(ENROLLER, extra[i % len(extra):i % len(extra) + 1])
                i += 1
                counts[0] = i
        except Exception as exc:  # reported, not swallowed
            errors.append(repr(exc))

    thread = threading.Thread(target=enroller, daemon=True)
    size_before = gallery.size
    thread.start()
    time.sleep(0.2)  # the enroller is running before the first query
    enrolled_before, began = counts[0], time.perf_counter()
    result = identify_all(gallery, queries, expected, top_k)
    seconds, enrolled = time.perf_counter() - began, counts[0] - enrolled_before
    stop.set()
    thread.join()
    size_after = gallery.size
    began = time.perf_counter()
    gallery.delete_subject(ENROLLER)
    delete_seconds = time.perf_counter() - began
    result.update({"enrolled_meanwhile": enrolled, "enrol_rate_meanwhile": rate(enrolled, seconds),
                   "size_before": size_before, "size_after": size_after, "enroller_errors": errors,
                   "delete_enroller_faces": size_after - size_before, "delete_subject_seconds": delete_seconds,
                   "size_after_delete": gallery.size})
    return result


def reopen(path: Path, dim: int, faiss_min_faces: int) -> tuple[Gallery, float]:
    began = time.perf_counter()
    gallery = Gallery(path, MODEL_ID, dim, faiss_min_faces=faiss_min_faces)
    return gallery, time.perf_counter() - began


def bench_size(n: int, args: argparse.Namespace, folder: Path, has_faiss: bool) -> dict:
    rng = np.random.default_rng(args.seed + n)
    path = folder / f"gallery-{n}.db"
    subjects = [f"subject-{i:06d}" for i in range(max(1, n // args.faces_per_subject))]
    embeddings = normalised(rng, n, args.dim)
    gallery = Gallery(path, MODEL_ID, args.dim, faiss_min_faces=SERVICE_FAISS_MIN_FACES)
    began = time.perf_counter()
    for subject in subjects:
        gallery.create_subject(subject)
    subject_seconds = time.perf_counter() - began
    print(f"[{n}] {len(subjects)} subjects in {subject_seconds:.1f} s; enrolling ...", flush=True)
    enrolment, owners = enrol_all(gallery, subjects, embeddings, args.per_face_limit, args.batch)
    enrolment.update({"subjects": len(subjects), "create_subject_seconds": subject_seconds,
                      "create_subject_rate": rate(len(subjects), subject_seconds),
                      "faiss_min_faces": gallery.faiss_min_faces, "engine_at_end": gallery.engine})
    gallery.close()
    queries, expected = make_queries(rng, embeddings, [subjects[i] for i in owners], args.queries, args.noise)
    del embeddings
    engines = {}
    for engine, threshold in [("matrix", NEVER), ("faiss", 1)]:
        if engine == "faiss" and not has_faiss:
            engines["faiss"] = {"skipped": "faiss does not import here"}
            continue
        print(f"[{n}] {engine}: reopening, identifying ...", flush=True)
        size = sqlite3.connect(path).execute("SELECT COUNT(*) FROM faces").fetchone()[0]
        gallery, open_seconds = reopen(path, args.dim, threshold)
        used = gallery.engine
        identify_all(gallery, queries[:10], expected[:10], args.top_k)  # warm-up
        idle = identify_all(gallery, queries, expected, args.top_k)
        busy = identify_while_enrolling(gallery, queries, expected, args.top_k, args.dim, args.seed + 7)
        engines[engine] = {"engine_used": used, "faces_at_open": size, "restart_seconds": open_seconds,
                           "identify": idle, "identify_while_enrolling": busy}
        last = gallery
        if engine == "matrix" and has_faiss:
            gallery.close()
    began = time.perf_counter()
    extra = normalised(rng, args.batch * args.batch_calls, args.dim)
    for k in range(args.batch_calls):
        last.enrol(subjects[k % len(subjects)], extra[k * args.batch:(k + 1) * args.batch])
    seconds = time.perf_counter() - began
    batched = {"engine": last.engine, "calls": args.batch_calls,
               "batch": args.batch, "faces": len(extra), "seconds": seconds, "rate": rate(len(extra), seconds),
               "size_after": last.size}
    last.close()
    return {"size": n, "enrolment": enrolment, "engines": engines, "batched_enrol_at_size": batched,
            "db_mb": sum(p.stat().st_size for p in folder.glob(f"gallery-{n}.db*")) / 2**20}


def fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def print_table(results: list[dict]) -> None:
    print()
    print(f"{'faces':>7} | {'per-face enrol/s':>16} {'first10%':>8} {'last10%':>8} {'last/first':>10} "
          f"{'max call ms':>11} | {'batched/s':>9} | {'engine':>6} {'restart s':>9} {'id p50':>7} {'id p99':>7} "
          f"{'mean':>6} {'hit':>5} | {'busy p50':>8} {'busy p99':>8} {'enrol/s':>7}")
    for r in results:
        e = r["enrolment"]
        batched = e.get("batched", r["batched_enrol_at_size"])["rate"]
        for i, (name, eng) in enumerate(r["engines"].items()):
            left = (f"{r['size']:>7} | {e['per_face_rate']:>16.0f} {e['first_10pct_rate']:>8.0f} "
                    f"{e['last_10pct_rate']:>8.0f} {fmt(e['last_over_first'], '.2f'):>10} "
                    f"{e['slowest_calls'][0]['ms']:>11.1f} | {batched:>9.0f}") if i == 0 else \
                f"{'':>7} | {'':>16} {'':>8} {'':>8} {'':>10} {'':>11} | {'':>9}"
            if "skipped" in eng:
                print(f"{left} | {name:>6} skipped: {eng['skipped']}")
                continue
            a, b = eng["identify"], eng["identify_while_enrolling"]
            print(f"{left} | {eng['engine_used']:>6} {eng['restart_seconds']:>9.2f} {a['p50_ms']:>7.2f} "
                  f"{a['p99_ms']:>7.2f} {a['mean_ms']:>6.2f} {fmt(a['hit_rate'], '.0%'):>5} | {b['p50_ms']:>8.2f} "
                  f"{b['p99_ms']:>8.2f} {b['enrol_rate_meanwhile']:>7.0f}")
    print("per-face: one enrol call (one SQLite transaction) per face; batched: "
          f"{results[0]['batched_enrol_at_size']['batch']} faces per call; id: identify top_k 5, ms; "
          "busy: identify while another thread enrols one face per call; hit: noisy copies found top-1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--faces-per-subject", type=int, default=10, help="subjects = size / this")
    ap.add_argument("--per-face-limit", type=int, default=0,
                    help="enrol only this many faces one per call, the rest in batches (0: every face per call)")
    ap.add_argument("--batch", type=int, default=1000, help="faces per batched enrol call")
    ap.add_argument("--batch-calls", type=int, default=5, help="batched enrol calls timed at the end of each size")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--noise", type=float, default=0.5, help="norm of the noise added to the enrolled copies")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tmp", default=None, help="folder for the temporary galleries (default: the system's)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "gallery_scale.json"))
    args = ap.parse_args()
    has_faiss = faiss_version() is not None
    if not has_faiss:
        print("faiss does not import here: only the plain matrix engine is measured")
    began = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="gallery-scale-", dir=args.tmp) as tmp:
        for n in args.sizes:
            results.append(bench_size(n, args, Path(tmp), has_faiss))
    wall = time.perf_counter() - began
    print_table(results)
    print(f"total {wall:.0f} s")
    result = {"benchmark": "gallery_scale", "sizes": args.sizes, "dim": args.dim, "faiss_available": has_faiss,
              "faiss_used": has_faiss and any(e.get("engine_used") == "faiss" for r in results
                                              for e in r["engines"].values()),
              "settings": {k: v for k, v in vars(args).items() if k not in ("out", "tmp")},
              "enrolment_faiss_min_faces": SERVICE_FAISS_MIN_FACES, "results": results, "wall_seconds": wall,
              "machine": {"python": platform.python_version(), "platform": platform.platform(),
                          "cpu_count": os.cpu_count(), "numpy": np.__version__, "faiss": faiss_version(),
                          "sqlite": sqlite3.sqlite_version},
              "facenas_version": __version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
