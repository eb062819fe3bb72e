"""`.bin` files (including Python 2 pickles), LFW's pairs.txt, and pairs drawn from identities."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest

from facenas.data.faces.build import write_folder
from facenas.data.faces.images import Preprocess, encode_image
from facenas.data.faces.pairs import (
    load_pair_images,
    parse_pairs,
    read_bin,
    read_bin_raw,
    sample_pairs,
    write_bin,
    write_pairs,
)
from facenas.data.faces.synthetic import synthetic_faces
from facenas.errors import DataError


def test_bin_round_trip_keeps_pixels_and_flags(tmp_path):
    faces = synthetic_faces(3, 4, seed=3)
    images = faces.images[:8]
    issame = [True, False, True, False]
    write_bin(tmp_path / "x.bin", images, issame)
    back = read_bin(tmp_path / "x.bin")
    assert np.array_equal(back.images, images) and list(back.issame) == issame


def python2_pickle(bins: list[bytes], issame: list[bool]) -> bytes:
    """The opcodes Python 2 writes for (list of str, list of bool) with protocol 2: str is BINSTRING."""
    out = b"\x80\x02]q\x00("
    for b in bins:
        out += b"T" + struct.pack("<I", len(b)) + b
    out += b"e]q\x01(" + b"".join(b"\x88" if s else b"\x89" for s in issame) + b"e\x86q\x02."
    return out


def test_reads_python2_pickles(tmp_path):
    imgs = [encode_image(i.transpose(1, 2, 0), ".png") for i in synthetic_faces(1, 4).images]
    path = tmp_path / "py2.bin"
    path.write_bytes(python2_pickle(imgs, [True, False]))
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(path.read_bytes())  # what a naive Python 3 reader hits
    bins, issame = read_bin_raw(path)
    assert bins == imgs and list(issame) == [True, False]
    assert read_bin(path).images.shape == (4, 3, 112, 112)


@pytest.mark.parametrize("content, message", [
    (b"\x80\x02]q\x00(T\xff\xff", "not a readable verification pickle"),
    (pickle.dumps({"a": 1}), "expected a pickled \\(bins, issame_list\\) pair"),
    (pickle.dumps(([b"a", b"b", b"c"], [True, False])), "3 images for 2 pairs"),
])
def test_broken_bins_are_explained(tmp_path, content, message):
    path = tmp_path / "bad.bin"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_bin_raw(path)


def test_a_bin_with_a_corrupt_image_names_it(tmp_path):
    good = encode_image(synthetic_faces(1, 1).images[0].transpose(1, 2, 0))
    path = tmp_path / "x.bin"
    write_bin(path, [good, b"\x89PNG broken"], [True])
    with pytest.raises(DataError, match=r"x.bin image 1: not a decodable image"):
        read_bin(path)


def make_mini_lfw(tmp_path, folds=2, per_fold=3):
    faces = synthetic_faces(8, 3, seed=4, mode="photo")
    faces = type(faces)(faces.images, faces.labels, tuple(f"Person_{i}" for i in range(8)), faces.landmarks)
    write_folder(faces, tmp_path / "lfw", fmt=".jpg")
    pairs = []
    for f in range(folds):
        pairs += [(f"Person_{(f + k) % 8}", 1, f"Person_{(f + k) % 8}", 2 + k % 2) for k in range(per_fold)]
        pairs += [(f"Person_{k}", 1, f"Person_{k + 4}", 3) for k in range(per_fold)]
    write_pairs(tmp_path / "pairs.txt", pairs, folds, per_fold)
    return faces


def test_pairs_txt_parsing_on_a_miniature_lfw(tmp_path):
    make_mini_lfw(tmp_path)
    text = (tmp_path / "pairs.txt").read_text().splitlines()
    assert text[0] == "2\t3" and text[1] == "Person_0\t1\t2" and text[4] == "Person_0\t1\tPerson_4\t3"
    pairs = parse_pairs(tmp_path / "pairs.txt", tmp_path / "lfw")
    assert list(pairs.issame) == [True] * 3 + [False] * 3 + [True] * 3 + [False] * 3
    assert list(pairs.folds) == [0] * 6 + [1] * 6
    assert pairs.left[0].name == "Person_0_0001.jpg" and pairs.right[3].name == "Person_4_0003.jpg"
    loaded = load_pair_images(pairs, Preprocess(size=112, crop_fraction=0.5))
    assert loaded.images.shape == (24, 3, 112, 112) and list(loaded.folds) == list(pairs.folds)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("2\t3", "2 4", 1), "announces 16 pair lines, found 12"),
    (lambda t: t.replace("Person_0\t1\t2", "Person_0\t1\t9", 1), "image .*Person_0_0009.jpg does not exist"),
    (lambda t: t.replace("Person_0\t1\t2", "Person_0\t1", 1), "expected a matched 'name n1 n2' pair"),
    (lambda t: "ten 300\n" + t.split("\n", 1)[1], "expected the header"),
])
def test_bad_pairs_files_are_explained(tmp_path, edit, message):
    make_mini_lfw(tmp_path)
    path = tmp_path / "pairs.txt"
    path.write_text(edit(path.read_text()))
    with pytest.raises(DataError, match=message):
        parse_pairs(path, tmp_path / "lfw")


def test_sampled_pairs_are_balanced_and_identity_disjoint_across_folds():
    labels = np.repeat(np.arange(40), 5)
    index = sample_pairs(labels, 10, folds=10, seed=1)
    assert index.issame.sum() == (~index.issame).sum() == 100
    assert np.all(labels[index.a[index.issame]] == labels[index.b[index.issame]])
    assert np.all(labels[index.a[~index.issame]] != labels[index.b[~index.issame]])
    fold_ids = [set(labels[np.r_[index.a[index.folds == f], index.b[index.folds == f]]]) for f in range(10)]
    assert all(not (fold_ids[i] & fold_ids[j]) for i in range(10) for j in range(i + 1, 10))
    again = sample_pairs(labels, 10, folds=10, seed=1)
    assert np.array_equal(again.a, index.a)


def test_few_identities_fall_back_to_contiguous_folds():
    labels = np.repeat(np.arange(10), 10)  # ORL's ten held-out people
    index = sample_pairs(labels, 30, folds=10, seed=0)
    assert len(index.a) == 600 and index.issame.mean() == 0.5 and np.bincount(index.folds).tolist() == [60] * 10
