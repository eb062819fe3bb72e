"""insightface RecordIO without mxnet: golden files written by MXNet itself, round trips, corrupt input."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from facenas.data.faces.build import build_rec, write_folder
from facenas.data.faces.images import Preprocess
from facenas.data.faces.recordio import MAGIC, IRHeader, RecordIOReader, RecordIOWriter, pack, read_layout, unpack
from facenas.data.faces.sources import FolderSource, RecordIOSource, materialize
from facenas.data.faces.synthetic import synthetic_faces
from facenas.errors import DataError

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
MAGIC_BYTES = struct.pack("<I", MAGIC)


def test_reads_a_file_written_by_mxnet():
    with RecordIOReader(GOLDEN / "mxnet.rec") as reader:
        layout = read_layout(reader, GOLDEN)
        assert list(layout.image_keys) == [1] and list(layout.labels) == [0]
        header, payload = reader.read(5)  # MXNet split this record where it held the magic word
        assert header.label == 7.0 and payload == MAGIC_BYTES + b"xyzw" + MAGIC_BYTES + b"tail!"
    img = materialize(RecordIOSource(GOLDEN / "mxnet.rec"), None, Preprocess(size=8)).faces.images[0]
    bgr = (np.arange(192).reshape(8, 8, 3) * 3).astype(np.uint8)
    assert np.array_equal(img.transpose(1, 2, 0), bgr[:, :, ::-1])


def test_writer_splits_records_holding_the_magic_word_like_dmlc(tmp_path):
    payloads = [b"plain", MAGIC_BYTES + b"abcd" + MAGIC_BYTES + b"end", b"ab" + MAGIC_BYTES + b"cd", b""]
    with RecordIOWriter(tmp_path / "x.rec") as writer:
        for key, p in enumerate(payloads):
            writer.write(key, pack(IRHeader(0, float(key), key, 0), p))
    raw = (tmp_path / "x.rec").read_bytes()
    # 4 records, the second split in 3 chunks at its two aligned magic words: 6 chunk headers; the third
    # record holds the word at an unaligned offset (24 + 2), which stays in its data
    assert raw.count(MAGIC_BYTES) == 7
    with RecordIOReader(tmp_path / "x.rec") as reader:
        assert [reader.read(k)[1] for k in reader.keys] == payloads


def test_array_labels_are_float32_after_the_header():
    header, body = unpack(pack(IRHeader(0, np.array([1.5, 2.5, 3.5]), 9, 7), b"img"))
    assert header.flag == 3 and header.label.dtype == np.float32 and list(header.label) == [1.5, 2.5, 3.5]
    assert body == b"img" and (header.id, header.id2) == (9, 7)


@pytest.mark.parametrize("channels", [3, 1])
def test_folder_to_rec_round_trip_keeps_pixels_and_labels(tmp_path, channels):
    faces = synthetic_faces(4, 3, seed=5)
    if channels == 1:
        faces = type(faces)(faces.images[:, :1].copy(), faces.labels, faces.identities)
    write_folder(faces, tmp_path / "folder")
    report = build_rec(FolderSource(tmp_path / "folder"), tmp_path / "rec")
    assert (report.images, report.identities) == (12, 4)
    assert (tmp_path / "rec" / "property").read_text() == "4,112,112\n"
    back = materialize(RecordIOSource(tmp_path / "rec"), None, Preprocess(channels=channels)).faces
    assert np.array_equal(back.images, faces.images) and np.array_equal(back.labels, faces.labels)
    with pytest.raises(DataError, match="already exists"):
        build_rec(FolderSource(tmp_path / "folder"), tmp_path / "rec")


def test_corrupt_and_truncated_records_are_named(tmp_path):
    faces = synthetic_faces(2, 2, seed=1)
    write_folder(faces, tmp_path / "f")
    build_rec(FolderSource(tmp_path / "f"), tmp_path / "rec")
    rec = tmp_path / "rec" / "train.rec"
    data = bytearray(rec.read_bytes())
    offsets = [int(line.split("\t")[1]) for line in (tmp_path / "rec" / "train.idx").read_text().splitlines()]
    data[offsets[1]:offsets[1] + 4] = b"\0\0\0\0"
    rec.write_bytes(bytes(data))
    with RecordIOReader(rec) as reader:
        with pytest.raises(DataError, match=r"record 2 at byte \d+ has magic 0x00000000"):
            reader.read(2)
    rec.write_bytes(bytes(data[: offsets[0] + 100]))
    with pytest.raises(DataError, match="truncated"):
        RecordIOReader(rec)
    (tmp_path / "rec" / "train.idx").write_text("1\tx\n")
    with pytest.raises(DataError, match="train.idx:1: expected 'key<TAB>offset'"):
        RecordIOReader(rec)


def test_an_undecodable_image_record_is_named_or_skipped(tmp_path):
    with RecordIOWriter(tmp_path / "train.rec") as writer:
        ok = synthetic_faces(1, 1).images[0].transpose(1, 2, 0)
        from facenas.data.faces.images import encode_image
        writer.write(1, pack(IRHeader(0, 0.0, 1, 0), encode_image(ok)))
        writer.write(2, pack(IRHeader(0, 0.0, 2, 0), b"\xff\xd8\xff garbage"))
    source = RecordIOSource(tmp_path)
    with pytest.raises(DataError, match="record 2: not a decodable image"):
        materialize(source, None, Preprocess())
    result = materialize(source, None, Preprocess(), skip_bad=True)
    assert len(result.faces) == 1 and "record 2" in result.problems[0]
