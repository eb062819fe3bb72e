"""`facenas data landmarks`: a landmarks file for a folder of photos, resumable, read back by the folder source."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from facenas.cli.main import app
from facenas.data.faces.detect import write_landmarks
from facenas.data.faces.images import Preprocess, prepare
from facenas.data.faces.sources import FolderSource, read_landmarks_file
from tests.conftest import ORL_SAMPLE

POINTS = np.array([[30, 40], [60, 40], [45, 55], [33, 70], [57, 70]], np.float64)


def photo_folder(root, people=2, each=3):
    for p in range(people):
        (root / f"person{p}").mkdir(parents=True)
        for k in range(each):
            img = np.full((90, 90, 3), 40 * p + 10 * k, np.uint8)
            cv2.imwrite(str(root / f"person{p}" / f"{k}.png"), img)
    return root


def test_landmarks_are_written_resumably_and_read_back(tmp_path):
    root = photo_folder(tmp_path / "photos")
    (root / "person1" / "2.png").write_bytes(b"not an image")
    calls = []

    def find(rgb):
        return None if rgb[0, 0, 0] == 10 else POINTS + rgb[0, 0, 0]  # person0/1.png: no face

    def killed_at_the_second(rgb):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed in the middle of a photo
        return find(rgb)

    out = tmp_path / "landmarks.txt"
    with pytest.raises(KeyboardInterrupt):
        write_landmarks(root, out, killed_at_the_second)
    assert list(read_landmarks_file(out, root)) == ["person0/0.png"]  # the finished photo is kept
    report = write_landmarks(root, out, find)
    table = read_landmarks_file(out, root)
    assert sorted(table) == ["person0/0.png", "person0/2.png", "person1/0.png", "person1/1.png"]
    assert np.allclose(table["person1/1.png"], POINTS + 50)
    r = report.to_dict()
    assert (r["already_in_file"], r["found"], r["no_face"], r["unreadable"]) == (
        1, 3, ["person0/1.png"], ["person1/2.png"])
    assert r["found_rate"] == pytest.approx(4 / 5)
    again = write_landmarks(root, out, lambda rgb: POINTS)  # only the photo without a face is tried again
    assert again.found == 1 and again.already == 4 and len(read_landmarks_file(out, root)) == 5


def test_cli_aligns_real_faces_for_the_folder_source(tmp_path):
    root = tmp_path / "orl"
    for subject in ("s1", "s2"):
        shutil.copytree(ORL_SAMPLE / subject, root / subject)
    out = tmp_path / "landmarks.txt"
    result = CliRunner().invoke(app, ["data", "landmarks", str(root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = read_landmarks_file(out, root)
    photos = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    assert len(table) >= len(photos) - 1 and "faces found in" in result.output  # ORL faces are frontal
    for points in table.values():
        eyes, nose, mouth = points[:2], points[2], points[3:]
        assert eyes[0, 0] < eyes[1, 0] and eyes[:, 1].max() < nose[1] < mouth[:, 1].min()
    source = FolderSource(root, landmarks_file=out)
    first = next(i for i in range(len(source)) if source.landmarks(i) is not None)
    crop = prepare(source.load(first), Preprocess(size=112, channels=3), source.landmarks(first))
    assert crop.shape == (3, 112, 112) and crop.std() > 10
    haar = CliRunner().invoke(app, ["data", "landmarks", str(root), "--out", str(out), "--detector", "haar"])
    assert haar.exit_code != 0 and "without landmarks" in haar.output
