"""The proxy's face sets are decoded once per run and memory-mapped by every process that trains a candidate."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np

from facenas.config import parse_config
from facenas.data.faces.cache import decoded_once
from facenas.data.faces.splits import load_face_splits
from facenas.data.faces.synthetic import synthetic_faces


def _sets():
    faces = synthetic_faces(4, 3, seed=1, size=16)
    return {"train": (faces, ["bad.jpg: unreadable"])}


def _decode_counting(log: Path):
    def decode():
        with log.open("a") as fh:
            fh.write("decoded\n")
        return _sets()
    return decode


def _worker(root: str, log: str, out: "multiprocessing.Queue") -> None:
    sets = decoded_once(Path(root), {"k": 1}, _decode_counting(Path(log)))
    out.put(int(sets["train"][0].images.sum()))


def test_the_first_caller_decodes_and_every_caller_maps_the_files(tmp_path):
    log = tmp_path / "log"
    first = decoded_once(tmp_path / "cache", {"k": 1}, _decode_counting(log))
    second = decoded_once(tmp_path / "cache", {"k": 1}, _decode_counting(log))
    assert log.read_text().count("decoded") == 1
    faces, problems = second["train"]
    expected = _sets()["train"][0]
    assert isinstance(faces.images, np.memmap) and not faces.images.flags.writeable
    np.testing.assert_array_equal(faces.images, expected.images)
    np.testing.assert_array_equal(faces.labels, expected.labels)
    assert faces.identities == expected.identities and problems == ["bad.jpg: unreadable"]
    assert first["train"][0].sources == expected.sources
    decoded_once(tmp_path / "cache", {"k": 2}, _decode_counting(log))  # another key: its own folder
    assert log.read_text().count("decoded") == 2 and len(list((tmp_path / "cache").glob("faces-*/"))) == 2


def test_processes_starting_together_decode_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(tmp_path / "cache"), str(tmp_path / "log"), out))
             for _ in range(3)]
    for p in procs:
        p.start()
    sums = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert (tmp_path / "log").read_text().count("decoded") == 1  # the others waited on the lock, then mapped
    assert len(set(sums)) == 1
    assert not list((tmp_path / "cache").glob(".*.tmp"))  # nothing half-written left behind


def test_cached_splits_equal_freshly_decoded_ones(tmp_path, tiny_face_config_data):
    cfg = parse_config(tiny_face_config_data)
    data = cfg.faces.data.model_copy(update={"test_identities": 4})
    fresh = load_face_splits(data, 0)
    for _ in range(2):  # decoded, then mapped
        cached = load_face_splits(data, 0, cache=tmp_path / "cache")
        load_face_splits.cache_clear()
    np.testing.assert_array_equal(cached.train.images, fresh.train.images)
    np.testing.assert_array_equal(cached.pairs.images, fresh.pairs.images)
    np.testing.assert_array_equal(cached.test_pairs.issame, fresh.test_pairs.issame)
    assert cached.description == fresh.description and isinstance(cached.train.images, np.memmap)


def test_mapped_faces_embed_without_torch_warning_about_read_only_memory(tmp_path):
    import warnings

    import torch

    from facenas.evaluate.verify import TorchEmbedder

    sets = decoded_once(tmp_path, {"k": 1}, _sets)
    images = sets["train"][0].images[:4]
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # each candidate process would print it once
        assert TorchEmbedder(model, 16, 3).embed(images).shape == (4, 4)
