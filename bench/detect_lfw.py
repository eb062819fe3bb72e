"""Face detection and alignment on real photographs: the service's detectors over every lfw-dev photo.

For each detector (`--detectors mtcnn,haar`, as `facenas serve --detector` loads them) and each photo: is a face
found, does it come with the five landmarks that alignment needs, is it the photo's subject (LFW photos are centred
on their subject: the box's centre lies within the central third of the photo, and for landmarks, both eyes above
the nose above the mouth), and how long detection takes. Prints the rates and saves JSON.

    python bench/detect_lfw.py [--images ../shared/data/lfw-dev/images] [--detectors mtcnn,haar] [--limit N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._results import save_results  # noqa: E402
from facenas.serve.detectors import load_detector  # noqa: E402
from facenas.serve.errors import NoFaceFound  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def upright(points: np.ndarray) -> bool:
    """Eyes above the nose above the mouth, in insightface's order (smaller x first in each pair)."""
    eyes, nose, mouth = points[:2], points[2], points[3:]
    return bool(eyes[0, 0] < eyes[1, 0] and mouth[0, 0] < mouth[1, 0]
                and eyes[:, 1].max() < nose[1] < mouth[:, 1].min())


def run(detector_name: str, photos: list[Path]) -> dict:
    detector = load_detector(detector_name)
    found = landmarks = centred = upright_faces = unreadable = 0
    times = []
    misses = []
    for path in photos:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            unreadable += 1
            continue
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        began = time.perf_counter()
        try:
            face = detector.largest(rgb)
        except NoFaceFound:
            misses.append(str(path.relative_to(path.parents[1])))
            continue
        finally:
            times.append(time.perf_counter() - began)
        found += 1
        h, w = rgb.shape[:2]
        x, y, bw, bh = face.box
        centred += abs(x + bw / 2 - w / 2) < w / 6 and abs(y + bh / 2 - h / 2) < h / 6
        if face.landmarks is not None:
            landmarks += 1
            upright_faces += upright(face.landmarks)
    n = len(photos) - unreadable
    return {"detector": detector_name, "photos": n, "unreadable": unreadable, "found": found,
            "found_rate": found / n, "with_landmarks_rate": landmarks / n, "centred_rate": centred / n,
            "upright_landmarks_rate": upright_faces / n,
            "ms_per_photo_median": 1000 * statistics.median(times), "ms_per_photo_mean": 1000 * statistics.mean(times),
            "misses": misses[:50]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "data" / "lfw-dev" / "images")
    parser.add_argument("--detectors", default="mtcnn,haar")
    parser.add_argument("--limit", type=int, default=None, help="every k-th photo so that at most this many run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "detect_lfw_dev.json")
    args = parser.parse_args()
    if not args.images.is_dir():
        raise SystemExit(f"no photo folder at {args.images} (lfw-dev lives in ../shared/data/lfw-dev/images)")
    photos = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if args.limit:
        photos = photos[::max(1, len(photos) // args.limit)][:args.limit]
    results = []
    for name in args.detectors.split(","):
        r = run(name, photos)
        results.append(r)
        print(f"{name:6s} {r['photos']} photos: face found {100 * r['found_rate']:.2f} %, with five landmarks "
              f"{100 * r['with_landmarks_rate']:.2f} % (upright {100 * r['upright_landmarks_rate']:.2f} %), centred "
              f"on the subject {100 * r['centred_rate']:.2f} %; {r['ms_per_photo_median']:.1f} ms per photo "
              f"(median, {os.environ.get('OMP_NUM_THREADS', 'all')} threads)", flush=True)
    save_results(args.out, {"benchmark": "detect_lfw", "images": str(args.images), "results": results})


if __name__ == "__main__":
    main()
