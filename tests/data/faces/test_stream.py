"""Streaming training faces: the in-memory trainer's batches, to the pixel, from any number of workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facenas.config import Config, FaceAugmentConfig, FaceTrainConfig
from facenas.data.faces.augment import augment_batch, batch_bounds, epoch_order, make_augment
from facenas.data.faces.build import build_rec
from facenas.data.faces.images import Preprocess
from facenas.data.faces.sources import ArraySource, RecordIOSource, materialize
from facenas.data.faces.stream import EpochBatches, FaceStream, stream_loader
from facenas.data.faces.synthetic import synthetic_faces
from facenas.errors import DataError
from facenas.space.arch import Arch
from facenas.train.evaluators import face_profile
from facenas.train.faces import fit_face, new_run, steps_per_epoch

PREP = Preprocess(size=32, channels=3)


@pytest.fixture(scope="module")
def rec_source(tmp_path_factory):
    """A RecordIO set of 6 identities x 5 synthetic faces at 32x32 (PNG: lossless)."""
    faces = synthetic_faces(6, 5, seed=3, size=32)
    out = tmp_path_factory.mktemp("rec")
    build_rec(ArraySource(faces), out, fmt=".png")
    return RecordIOSource(out)


def in_memory_batches(faces, augment, seed, epoch, batch_size):
    transform = make_augment(augment, faces.images.shape[1])
    order = epoch_order(len(faces), seed, epoch)
    for start, end in batch_bounds(len(faces), batch_size):
        positions = np.arange(start, end)
        yield augment_batch(transform, faces.images[order[positions]], seed, epoch, positions), \
            faces.labels[order[positions]]


def test_a_streamed_item_is_the_materialized_item(rec_source):
    faces = materialize(rec_source, None, PREP).faces
    stream = FaceStream(rec_source, np.arange(len(rec_source)), faces.labels, PREP)
    for i in (0, 7, len(stream) - 1):
        image, label = stream[(0, i, i)]
        assert np.array_equal(image, faces.images[i]) and label == faces.labels[i]


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_batches_are_the_in_memory_batches(rec_source, workers):
    faces = materialize(rec_source, None, PREP).faces
    augment = FaceAugmentConfig()
    stream = FaceStream(rec_source, np.arange(len(rec_source)), faces.labels, PREP, augment=augment, seed=9)
    batches = EpochBatches(len(stream), 8, seed=9)
    loader = stream_loader(stream, batches, workers=workers, prefetch=2)
    for epoch in (0, 3):  # persistent workers see the sampler's new epoch
        batches.set_epoch(epoch)
        streamed = list(loader)
        expected = list(in_memory_batches(faces, augment, 9, epoch, 8))
        assert len(streamed) == len(expected) == steps_per_epoch(len(faces), 8)
        for (images, labels), (want_images, want_labels) in zip(streamed, expected):
            assert images.dtype == torch.uint8 and np.array_equal(images.numpy(), want_images)
            assert np.array_equal(labels.numpy(), want_labels)
    batches.set_epoch(1, start_step=2)  # a resume inside an epoch starts at its step
    assert len(list(loader)) == steps_per_epoch(len(faces), 8) - 2


def test_training_streamed_equals_training_from_memory(rec_source):
    faces = materialize(rec_source, None, PREP).faces
    cfg = FaceTrainConfig(batch_size=10, lr=0.05, device="cpu", precision="fp32", workers=2, prefetch=2)
    arch = Arch.uniform(8, 3, face_profile(Config.model_validate({"task": "faces", "faces": {"data": {"size": 32}}})))
    histories = []
    for train in (faces, FaceStream(rec_source, np.arange(len(rec_source)), faces.labels, PREP)):
        run = new_run(arch, faces.num_identities, cfg, epochs=2, steps_per_epoch=steps_per_epoch(len(faces), 10),
                      seed=4, device=torch.device("cpu"), preprocess=PREP.to_dict())
        histories.append(fit_face(run, train, cfg=cfg, augment=FaceAugmentConfig(), epochs=2, seed=4,
                                  device=torch.device("cpu")))
    memory, streamed = histories
    for a, b in zip(memory, streamed):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-5) and a.train_acc == pytest.approx(b.train_acc)


def test_a_bad_record_is_named_from_a_worker(tmp_path):
    from facenas.data.faces.images import encode_image
    from facenas.data.faces.recordio import IRHeader, RecordIOWriter, pack

    ok = synthetic_faces(1, 1, size=32).images[0].transpose(1, 2, 0)
    with RecordIOWriter(tmp_path / "train.rec") as writer:
        writer.write(1, pack(IRHeader(0, 0.0, 1, 0), encode_image(ok)))
        writer.write(2, pack(IRHeader(0, 1.0, 2, 0), b"\xff\xd8\xff garbage"))
    source = RecordIOSource(tmp_path)
    stream = FaceStream(source, np.arange(2), np.array([0, 1]), PREP)
    loader = stream_loader(stream, EpochBatches(2, 2, seed=0), workers=1, prefetch=1)
    with pytest.raises(DataError, match="record 2: not a decodable image"):
        list(loader)
