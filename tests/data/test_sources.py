from __future__ import annotations

import gzip
import math
import struct

import numpy as np
import pytest

from facenas.config import DataConfig
from facenas.data.arrays import ImageSet, make_splits, stratified_split
from facenas.data.sources import load_digits, load_mnist_idx, load_splits, load_torchvision, read_idx
from facenas.errors import DataError
from tests.conftest import MNIST_SAMPLE


def write_idx(path, array: np.ndarray, gz: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    labels = np.repeat(np.arange(10), 3).astype(np.uint8)
    suffix = ".gz" if gz else ""
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images, gz)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labels, gz)
    pool, test = load_mnist_idx(tmp_path)
    assert test is None and pool.images.shape == (30, 1, 28, 28)
    assert np.array_equal(pool.images[:, 0], images) and np.array_equal(pool.labels, labels)


def test_truncated_and_foreign_idx_files_are_named(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    write_idx(path, np.zeros((5, 28, 28)))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: truncated or padded data"):
        read_idx(path)
    other = tmp_path / "x.gz"
    other.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="x.gz: cannot read"):
        read_idx(other)
    png = tmp_path / "y"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(DataError, match="not an idx file"):
        read_idx(png)


def test_missing_labels_and_empty_folders(tmp_path):
    with pytest.raises(DataError, match="no MNIST idx images found"):
        load_mnist_idx(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((5, 28, 28)))
    with pytest.raises(DataError, match="no matching t10k-labels"):
        load_mnist_idx(tmp_path)


def test_real_mnist_idx_files():
    pool, test = load_mnist_idx(MNIST_SAMPLE)
    assert test is None and pool.images.shape == (1000, 1, 28, 28)
    assert np.bincount(pool.labels).tolist() == [85, 126, 116, 107, 110, 87, 87, 99, 89, 94]
    assert pool.labels[:5].tolist() == [7, 2, 1, 0, 4]  # MNIST's famous first test digits
    assert 30 < pool.images.mean() < 37  # MNIST's mean pixel is 33.3 (0.1307 x 255)


def test_digits_are_embedded():
    digits = load_digits()
    assert digits.images.shape == (1797, 1, 8, 8) and digits.images.max() == 255


def test_torchvision_dataset_missing_offline_is_explained(tmp_path):
    with pytest.raises(DataError, match="kmnist is not under .*Put the files there, or pass --download"):
        load_torchvision("kmnist", tmp_path, download=False)


def test_download_failure_is_explained(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    def offline(*a, **k):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tvu, "download_url", offline)
    monkeypatch.setattr(tvu, "download_and_extract_archive", offline)
    with pytest.raises(DataError, match="could not download fashionmnist .* may be offline"):
        load_torchvision("fashionmnist", tmp_path, download=True)


def make_set(n_per_class: int = 20, classes: int = 5) -> ImageSet:
    labels = np.repeat(np.arange(classes), n_per_class)
    images = np.arange(len(labels), dtype=np.uint8)[:, None, None, None].repeat(4, 2).repeat(4, 3)
    return ImageSet(images, labels, tuple(map(str, range(classes))), "toy")


def test_holdout_splits_are_stratified_disjoint_and_seeded():
    data = make_set()
    s1 = make_splits(data, None, protocol="holdout", val_fraction=0.25, test_fraction=0.2, seed=1)
    s2 = make_splits(data, None, protocol="holdout", val_fraction=0.25, test_fraction=0.2, seed=1)
    ids = [set(s.images[:, 0, 0, 0].tolist()) for s in (s1.train, s1.val, s1.test)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert sum(map(len, ids)) == 100
    assert np.array_equal(s1.val.images, s2.val.images)
    assert (np.bincount(s1.test.labels) == 4).all() and (np.bincount(s1.val.labels) == 4).all()
    assert "holdout" == s1.protocol and "test untouched" in s1.description
    s3 = make_splits(data, None, protocol="holdout", val_fraction=0.25, test_fraction=0.2, seed=2)
    assert not np.array_equal(s1.val.images, s3.val.images)


def test_paper_protocol_scores_on_the_test_split():
    data, test = make_set(), make_set(4)
    s = make_splits(data, test, protocol="paper", val_fraction=0.1, test_fraction=0.2, seed=0)
    assert s.val is s.test and len(s.train) == 100 and "authors' protocol" in s.description


def test_train_subset_keeps_class_balance():
    s = make_splits(make_set(40), None, protocol="holdout", val_fraction=0.2, test_fraction=0.2, seed=0,
                    train_subset=50)
    assert len(s.train) == 50 and (np.bincount(s.train.labels) == 10).all()


def test_stratified_split_needs_two_per_class():
    with pytest.raises(DataError, match="at least 2 images of every class"):
        stratified_split(np.array([0, 0, 1]), 0.5, 0)


def test_load_splits_is_cached_and_deterministic():
    cfg = DataConfig(dataset="digits")
    assert load_splits(cfg, 0) is load_splits(cfg, 0)
    assert len(load_splits(cfg, 0).test) == math.ceil(1797 * 0.2)  # scikit-learn rounds the test share up


@pytest.mark.parametrize("name, folder, prefix, classes", [
    ("kmnist", "KMNIST", "{split}", 10),
    ("fashionmnist", "FashionMNIST", "{split}", 10),
    ("emnist-balanced", "EMNIST", "emnist-balanced-{split2}", 47),
])
def test_torchvision_layouts_are_read_into_uint8_arrays(tmp_path, name, folder, prefix, classes):
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    sizes = {"train": 3 * classes, "t10k": classes}
    for split, n in sizes.items():
        stem = prefix.format(split=split, split2="train" if split == "train" else "test")
        write_idx(raw / f"{stem}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{stem}-labels-idx1-ubyte", np.arange(n) % classes)
    train, test = load_torchvision(name, tmp_path, download=False)
    assert train.images.shape == (sizes["train"], 1, 28, 28) and train.images.dtype == np.uint8
    assert test.images.shape == (classes, 1, 28, 28) and len(train.classes) == classes
    assert np.array_equal(np.bincount(train.labels), np.full(classes, 3))
