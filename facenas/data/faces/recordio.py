"""insightface's RecordIO training sets (`train.rec` + `train.idx` + `property`), read and written without mxnet.

The format (dmlc RecordIO as MXNet writes it):
- `train.idx`: text, one `key<TAB>offset` line per record;
- `train.rec`: chunks of `uint32 magic 0xced7230a | uint32 lrecord | payload | zero padding to 4 bytes`, where
  `lrecord >> 29` is the continuation flag (0 whole record; 1, 2, 3 first, middle, last part of a record that
  was split where its payload held the magic word at a 4-byte boundary; the reader puts the magic word back
  between the parts) and `lrecord & (2**29 - 1)` the part's length;
- a record's payload is MXNet's `IRHeader` (`<IfQQ`: flag, label, id, id2; 24 bytes), then `flag` float32
  labels when `flag > 0`, then the encoded image;
- insightface's conventions: record 0 is a header whose two labels (a, b) say that images are keys 1..a-1 and
  keys a..b-1 are one record per identity, labelled (first key, end key) of its images; `property` is the line
  `classes,height,width`. Without such a header every key is an image (insightface's newer RecBuilder).

The reader checks every magic word, length and header and names the record and the problem; it uses `mmap`, so
opening a multi-gigabyte file costs nothing and images are decoded only when asked for.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from facenas.errors import DataError

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_CHUNK = struct.Struct("<II")
_IR = struct.Struct("<IfQQ")
_LENGTH_MASK = (1 << 29) - 1

Label = Union[float, np.ndarray]


@dataclass(frozen=True)
class IRHeader:
    flag: int
    label: Label
    id: int
    id2: int


def pack(header: IRHeader, payload: bytes) -> bytes:
    """MXNet's `recordio.pack`: a scalar label goes in the header, an array label after it (flag = size)."""
    if isinstance(header.label, np.ndarray) or isinstance(header.label, (list, tuple)):
        labels = np.asarray(header.label, dtype=np.float32)
        return _IR.pack(labels.size, 0.0, header.id, header.id2) + labels.tobytes() + payload
    return _IR.pack(0, float(header.label), header.id, header.id2) + payload


def unpack(record: bytes, where: str = "record") -> tuple[IRHeader, bytes]:
    if len(record) < _IR.size:
        raise DataError(f"{where}: {len(record)} bytes is shorter than the 24-byte IRHeader")
    flag, label, rid, rid2 = _IR.unpack_from(record)
    body = record[_IR.size:]
    if flag > 0:
        if len(body) < 4 * flag:
            raise DataError(f"{where}: header announces {flag} float32 labels but only {len(body)} bytes follow")
        labels = np.frombuffer(body, dtype=np.float32, count=flag).copy()
        return IRHeader(flag, labels, rid, rid2), body[4 * flag:]
    return IRHeader(flag, label, rid, rid2), body


def _read_idx(path: Path) -> dict[int, int]:
    index: dict[int, int] = {}
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the index ({exc})") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        try:
            key, offset = int(parts[0]), int(parts[1])
        except (IndexError, ValueError):
            raise DataError(f"{path}:{number}: expected 'key<TAB>offset', got {line[:60]!r}") from None
        index[key] = offset
    if not index:
        raise DataError(f"{path}: the index is empty")
    return index


class RecordIOReader:
    """Random access to the records of an indexed RecordIO file."""

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path else self.rec_path.with_suffix(".idx")
        if not self.rec_path.is_file():
            raise DataError(f"{self.rec_path} does not exist")
        if not self.idx_path.is_file():
            raise DataError(f"{self.idx_path} does not exist (a .rec needs its .idx; rebuild it with "
                            "`facenas data build-rec`)")
        self.index = _read_idx(self.idx_path)
        self._file = open(self.rec_path, "rb")
        self.size = os.fstat(self._file.fileno()).st_size
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if self.size else None
        bad = [k for k, off in self.index.items() if off < 0 or off + 8 > self.size]
        if bad:
            raise DataError(f"{self.rec_path}: the index points past the end of the file for {len(bad)} keys "
                            f"(first: key {bad[0]}); the .rec is truncated or belongs to another index")

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
        self._file.close()

    def __enter__(self) -> "RecordIOReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict:  # picklable for DataLoader workers: reopen in the worker
        return {"rec_path": self.rec_path, "idx_path": self.idx_path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["rec_path"], state["idx_path"])  # type: ignore[misc]

    @property
    def keys(self) -> list[int]:
        return sorted(self.index)

    def _chunk(self, pos: int, key: int) -> tuple[int, bytes, int]:
        assert self._map is not None
        if pos + 8 > self.size:
            raise DataError(f"{self.rec_path}: record {key} is truncated (header at byte {pos} past the end)")
        magic, lrec = _CHUNK.unpack_from(self._map, pos)
        if magic != MAGIC:
            raise DataError(f"{self.rec_path}: record {key} at byte {pos} has magic {magic:#010x}, not "
                            f"{MAGIC:#010x}; the file is corrupt or the index is wrong")
        length = lrec & _LENGTH_MASK
        end = pos + 8 + length
        if end > self.size:
            raise DataError(f"{self.rec_path}: record {key} is truncated (expected {length} bytes, got "
                            f"{self.size - pos - 8})")
        return lrec >> 29, bytes(self._map[pos + 8:end]), pos + 8 + ((length + 3) & ~3)

    def read_raw(self, key: int) -> bytes:
        if key not in self.index:
            raise DataError(f"{self.rec_path}: no record with key {key}")
        cflag, data, pos = self._chunk(self.index[key], key)
        if cflag == 0:
            return data
        if cflag != 1:
            raise DataError(f"{self.rec_path}: record {key} starts with continuation flag {cflag}")
        parts = [data]
        while True:
            cflag, data, pos = self._chunk(pos, key)
            if cflag not in (2, 3):
                raise DataError(f"{self.rec_path}: record {key} has a broken continuation (flag {cflag})")
            parts.append(data)
            if cflag == 3:
                return _MAGIC_BYTES.join(parts)

    def read(self, key: int) -> tuple[IRHeader, bytes]:
        return unpack(self.read_raw(key), f"{self.rec_path} record {key}")


def _split_on_magic(payload: bytes) -> list[bytes]:
    """Parts of a payload split where the magic word sits at a 4-byte boundary (dmlc's writer does this)."""
    parts, start = [], 0
    for i in range(0, len(payload) - 3, 4):
        if payload[i:i + 4] == _MAGIC_BYTES:
            parts.append(payload[start:i])
            start = i + 4
    parts.append(payload[start:])
    return parts


class RecordIOWriter:
    """Writes an indexed RecordIO file (keys in any order); the index is written on `close`."""

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path else self.rec_path.with_suffix(".idx")
        self._file = open(self.rec_path, "wb")
        self._index: list[tuple[int, int]] = []

    def write(self, key: int, record: bytes) -> None:
        self._index.append((key, self._file.tell()))
        parts = _split_on_magic(record)
        for i, part in enumerate(parts):
            cflag = 0 if len(parts) == 1 else 1 if i == 0 else 3 if i == len(parts) - 1 else 2
            self._file.write(_CHUNK.pack(MAGIC, (cflag << 29) | len(part)))
            self._file.write(part)
            self._file.write(b"\0" * ((4 - len(part) % 4) % 4))

    def close(self) -> None:
        self._file.close()
        with open(self.idx_path, "w") as fh:
            fh.writelines(f"{key}\t{offset}\n" for key, offset in self._index)

    def __enter__(self) -> "RecordIOWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class RecordLayout:
    """Where the images and identities of an insightface RecordIO are."""

    image_keys: np.ndarray
    labels: np.ndarray
    num_classes: int
    image_size: Optional[tuple[int, int]]


def read_property(folder: Path) -> tuple[Optional[int], Optional[tuple[int, int]]]:
    path = folder / "property"
    if not path.is_file():
        return None, None
    try:
        values = [int(v) for v in path.read_text().strip().split(",")]
        return values[0], (values[1], values[2]) if len(values) >= 3 else None
    except (ValueError, IndexError):
        raise DataError(f"{path}: expected 'classes,height,width', got {path.read_text()[:40]!r}") from None


def read_layout(reader: RecordIOReader, folder: Optional[Path] = None) -> RecordLayout:
    """Image keys and their labels, from record 0's header and the identity records, or by reading headers."""
    classes, size = read_property(folder or reader.rec_path.parent)
    header0 = reader.read(0)[0] if 0 in reader.index else None
    if header0 is not None and header0.flag > 0:
        first_identity, end = (int(v) for v in np.asarray(header0.label)[:2])
        keys, labels = [], []
        for label, ident_key in enumerate(range(first_identity, end)):
            start, stop = (int(v) for v in np.asarray(reader.read(ident_key)[0].label)[:2])
            keys.extend(range(start, stop))
            labels.extend([label] * (stop - start))
        image_keys = np.asarray(keys, np.int64)
        label_arr = np.asarray(labels, np.int64)
    else:
        image_keys = np.asarray(reader.keys, np.int64)
        label_arr = np.empty(len(image_keys), np.int64)
        for i, key in enumerate(image_keys):
            header = reader.read(int(key))[0]
            label = header.label
            label_arr[i] = int(np.asarray(label).reshape(-1)[0]) if isinstance(label, np.ndarray) else int(label)
    num = int(label_arr.max()) + 1 if len(label_arr) else 0
    if classes is not None and classes < num:
        raise DataError(f"{reader.rec_path.parent}/property says {classes} classes but labels reach {num - 1}")
    return RecordLayout(image_keys, label_arr, classes or num, size)

