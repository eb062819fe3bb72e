"""Classification datasets: the paper's five through torchvision, MNIST idx folders, scikit-learn's digits.

Everything is decoded into `ImageSet` arrays. torchvision reads (and, when asked and online, downloads) CIFAR-10,
CIFAR-100, FashionMNIST, KMNIST and EMNIST-balanced from `root`; nothing is ever downloaded unless asked, and a
missing or unreachable dataset gets an error saying which files to put where. MNIST idx files are parsed here
(a dozen lines, and it lets a folder with only the test files, like ../shared/data/mnist, be used at all).
scikit-learn's digits ship inside scikit-learn, which makes them the embedded default that needs no files.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from facenas.config import DataConfig
from facenas.data.arrays import ImageSet, Splits, make_splits
from facenas.errors import DataError


@dataclass(frozen=True)
class DatasetInfo:
    """What the search space needs to know before any file is read."""

    name: str
    in_channels: int
    num_classes: int
    side: int
    flip: bool  # the paper flips CIFAR and FashionMNIST only (method.md section 4)
    files_hint: str


INFO = {
    "digits": DatasetInfo("digits", 1, 10, 8, False, "bundled with scikit-learn"),
    "mnist-idx": DatasetInfo("mnist-idx", 1, 10, 28, False,
                             "t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz] (and/or train-*)"),
    "mnist": DatasetInfo("mnist", 1, 10, 28, False, "MNIST/raw/ as torchvision lays it out"),
    "cifar10": DatasetInfo("cifar10", 3, 10, 32, True, "cifar-10-batches-py/ or cifar-10-python.tar.gz"),
    "cifar100": DatasetInfo("cifar100", 3, 100, 32, True, "cifar-100-python/ or cifar-100-python.tar.gz"),
    "fashionmnist": DatasetInfo("fashionmnist", 1, 10, 28, True, "FashionMNIST/raw/"),
    "kmnist": DatasetInfo("kmnist", 1, 10, 28, False, "KMNIST/raw/"),
    "emnist-balanced": DatasetInfo("emnist-balanced", 1, 47, 28, False, "EMNIST/raw/ (balanced split)"),
}


def dataset_info(name: str) -> DatasetInfo:
    if name not in INFO:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(INFO)}")
    return INFO[name]


# -- MNIST idx ------------------------------------------------------------------------------------------------

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read one idx file (optionally gzip-compressed); errors name the file and what is wrong."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path}: not an idx file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"{path}: truncated or padded data (expected {expected} bytes for shape {shape}, "
                        f"got {len(raw) - header})")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _find(folder: Path, stem: str) -> Optional[Path]:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def load_mnist_idx(folder: Path) -> tuple[ImageSet, Optional[ImageSet]]:
    """(training pool, test set) from an idx folder; with only one split present it is the pool, test None."""
    if not folder.is_dir():
        raise DataError(f"MNIST idx folder {folder} does not exist; put {INFO['mnist-idx'].files_hint} there")
    sets = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = _find(folder, f"{prefix}-images-idx3-ubyte"), _find(folder, f"{prefix}-labels-idx1-ubyte")
        if images is None:
            continue
        if labels is None:
            raise DataError(f"{folder}: {images.name} has no matching {prefix}-labels-idx1-ubyte[.gz]")
        x, y = read_idx(images), read_idx(labels)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{folder}: {images.name} {x.shape} and {labels.name} {y.shape} do not match")
        sets[split] = ImageSet(np.ascontiguousarray(x[:, None]), y.astype(np.int64), tuple(map(str, range(10))),
                               f"mnist-idx:{split}")
    if not sets:
        raise DataError(f"{folder}: no MNIST idx images found; expected {INFO['mnist-idx'].files_hint}")
    if "train" in sets:
        return sets["train"], sets.get("test")
    return sets["test"], None


# -- scikit-learn digits --------------------------------------------------------------------------------------

def load_digits() -> ImageSet:
    """1,797 8x8 digits with grey levels 0..16, rescaled to 0..255."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return ImageSet(images, bunch.target.astype(np.int64), tuple(map(str, range(10))), "digits")


# -- torchvision ----------------------------------------------------------------------------------------------

def _torchvision_loader(name: str) -> Callable[..., object]:
    from torchvision import datasets

    table: dict[str, Callable[..., object]] = {
        "cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100, "fashionmnist": datasets.FashionMNIST,
        "kmnist": datasets.KMNIST, "mnist": datasets.MNIST,
        "emnist-balanced": lambda **kw: datasets.EMNIST(split="balanced", **kw),
    }
    return table[name]


def _to_imageset(ds: object, name: str) -> ImageSet:
    data = ds.data
    images = np.asarray(data.numpy() if hasattr(data, "numpy") else data, dtype=np.uint8)
    images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    targets = ds.targets
    labels = np.asarray(targets.numpy() if hasattr(targets, "numpy") else targets, dtype=np.int64)
    classes = tuple(str(c) for c in getattr(ds, "classes", range(int(labels.max()) + 1)))
    return ImageSet(np.ascontiguousarray(images), labels, classes, name)


def load_torchvision(name: str, root: Path, download: bool) -> tuple[ImageSet, ImageSet]:
    info = dataset_info(name)
    loader = _torchvision_loader(name)
    out = []
    for train in (True, False):
        try:
            ds = loader(root=str(root), train=train, download=download)
        except RuntimeError as exc:
            if download:
                raise DataError(f"{name}: downloaded files under {root} are unusable ({exc})") from exc
            raise DataError(
                f"{name} is not under {root} ({info.files_hint} expected). Put the files there, or pass "
                f"--download (data.download: true) on a machine with internet access"
            ) from None
        except OSError as exc:  # URLError, socket errors, HTTP errors
            raise DataError(
                f"could not download {name} into {root}: {exc}. This machine may be offline: download the "
                f"dataset elsewhere and put {info.files_hint} under {root}"
            ) from None
        out.append(_to_imageset(ds, f"{name}:{'train' if train else 'test'}"))
    return out[0], out[1]


# -- entry point ----------------------------------------------------------------------------------------------

def load_pools(config: DataConfig) -> tuple[ImageSet, Optional[ImageSet]]:
    """(training pool, official test set or None) for the configured dataset."""
    if config.dataset == "digits":
        return load_digits(), None
    if config.dataset == "mnist-idx":
        return load_mnist_idx(Path(config.root))
    return load_torchvision(config.dataset, Path(config.root), config.download)


@lru_cache(maxsize=2)
def load_splits(config: DataConfig, seed: int) -> Splits:
    """The run's train / validation / test splits; deterministic in (config, seed), cached per process."""
    pool, test = load_pools(config)
    return make_splits(pool, test, protocol=config.protocol, val_fraction=config.val_fraction,
                       test_fraction=config.test_fraction, seed=seed, train_subset=config.train_subset)
