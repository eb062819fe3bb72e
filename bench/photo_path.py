"""One exported model on the test people of lfw-dev, through the service's photo path and through pre-cropped faces.

The benchmark number of a model is measured on crops made before the model sees them; a service user uploads
photos. This compares, on the same pairs of the people nobody trained with (`faces.data.test_identities` of the
config, the split `facenas train` reports on):

- pre-cropped: the photos aligned offline (the config's landmarks file, ArcFace template, 112x112 RGB) and given to
  the ONNX model, as a benchmark (.bin, `facenas eval`) does;
- photo path, per detector (`--detectors mtcnn,haar`): each raw photo through the service's own code, the
  `FaceEngine` that `facenas serve` runs (decode the upload, find the largest face, align, embed), in process: the
  HTTP layer does not touch the pixels.

Embeddings without flips (the service does not flip). Reports 10-fold accuracy (the LFW protocol), ROC AUC and
TAR at FAR 1e-2 for each path, the photos where no face was found (their pairs count as wrong decisions at every
threshold: a service answers 422 there), and saves JSON.

    python bench/photo_path.py --model runs/faces-lfw-dev-aligned/model.onnx \\
        -c configs/train/faces-lfw-dev-aligned.yaml --face-source ../shared/data/lfw-dev/images
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._results import save_results  # noqa: E402


def report(emb: np.ndarray, pairs, missing: np.ndarray) -> dict:
    """Verification figures of embeddings (2 per pair); pairs with a missing face score -inf similarity for a
    genuine pair and +inf for an impostor pair: always wrong."""
    from facenas.evaluate.metrics import verification_report

    a, b = emb[0::2], emb[1::2]
    dist = np.sum((a - b) ** 2, axis=1)  # unit vectors: 2 - 2 cos
    lost = missing[0::2] | missing[1::2]
    dist = np.where(lost, np.where(pairs.issame, 4.0 + 1e-3, -1e-3), dist)
    r = verification_report(dist, pairs.issame, pairs.folds)
    out = {k: v for k, v in r.to_dict().items() if k != "roc"}
    out["pairs_lost"] = int(lost.sum())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="the exported ONNX (with its card)")
    parser.add_argument("-c", "--config", required=True, help="the training config (its data split and landmarks)")
    parser.add_argument("--face-source", default=None)
    parser.add_argument("--detectors", default="mtcnn,haar")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "photo_path-lfw-dev.json")
    args = parser.parse_args()

    from facenas.config import load_config
    from facenas.data.faces.splits import load_face_splits
    from facenas.evaluate.metrics import l2_normalize
    from facenas.serve.engine import FaceEngine, decode_upload
    from facenas.serve.errors import NoFaceFound
    from facenas.serve.settings import ServeSettings

    overrides = {"faces.data.source": args.face_source} if args.face_source else {}
    config = load_config(args.config, overrides)
    data = config.faces.data.model_copy(update={"size": 112, "channels": 3})  # the ONNX contract's input
    pairs = load_face_splits(data, config.seed).test_pairs
    if pairs is None:
        raise SystemExit(f"{args.config} keeps no test people (faces.data.test_identities)")
    if len(pairs.sources) != len(pairs.images):
        raise SystemExit("the test pairs do not name their photos; use an image folder source")
    results = {}
    began = time.perf_counter()
    engine = FaceEngine(ServeSettings(model=str(args.model), threshold=0.5, detector="haar"))
    pre = l2_normalize(engine.embed_crops(pairs.images.transpose(0, 2, 3, 1)))
    results["pre-cropped"] = report(pre, pairs, np.zeros(len(pre), bool))
    engine.close()
    print(f"pre-cropped ({len(pairs.issame)} pairs of {len(set(pairs.sources))} photos): accuracy "
          f"{100 * results['pre-cropped']['accuracy']:.2f} %, AUC {results['pre-cropped']['auc']:.4f}", flush=True)
    for detector in args.detectors.split(","):
        engine = FaceEngine(ServeSettings(model=str(args.model), threshold=0.5, detector=detector))
        crops, missing, how = [], [], {}
        for path in pairs.sources:
            rgb = decode_upload(Path(path).read_bytes(), engine.settings)
            try:
                face = engine.face(rgb, None)
            except NoFaceFound:
                crops.append(np.zeros((112, 112, 3), np.uint8))
                missing.append(True)
                continue
            crops.append(face.crop)
            missing.append(False)
            how[face.aligned] = how.get(face.aligned, 0) + 1
        emb = l2_normalize(engine.embed_crops(np.stack(crops)))
        engine.close()
        lost = np.asarray(missing)
        results[f"photo path, {detector}"] = {**report(emb, pairs, lost), "photos_without_face": int(lost.sum()),
                                              "aligned": how}
        r = results[f"photo path, {detector}"]
        print(f"photo path, {detector:5s}: accuracy {100 * r['accuracy']:.2f} %, AUC {r['auc']:.4f} ({r['pairs_lost']} "
              f"pairs with a photo without a face; {how})", flush=True)
    save_results(args.out, {"benchmark": "photo_path", "model": str(args.model), "config": args.config,
                            "pairs": len(pairs.issame), "photos": len(set(pairs.sources)), "results": results,
                            "seconds": time.perf_counter() - began})


if __name__ == "__main__":
    main()
