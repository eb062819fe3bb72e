"""Image folders, alignment and channels, the synthetic generator, and `inspect`."""

from __future__ import annotations

import numpy as np
import pytest

from facenas.data.faces.build import build_rec, write_folder
from facenas.data.faces.images import Preprocess, prepare
from facenas.data.faces.inspect import inspect_path
from facenas.data.faces.pairs import write_bin, write_pairs
from facenas.data.faces.sources import FolderSource, materialize, open_source
from facenas.data.faces.synthetic import render, synthetic_faces
from facenas.errors import DataError
from tests.conftest import ORL_SAMPLE


def test_synthetic_faces_are_deterministic_and_varied():
    a = synthetic_faces(3, 4, seed=7)
    b = synthetic_faces(3, 4, seed=7)
    assert np.array_equal(a.images, b.images) and a.landmarks.shape == (12, 5, 2)
    assert not np.array_equal(a.images[0], a.images[1])  # two images of one identity differ
    img, _ = render(7, 1, 2)
    assert np.array_equal(img, a.images[6].transpose(1, 2, 0))  # any image can be regenerated alone
    assert not np.array_equal(synthetic_faces(3, 4, seed=8).images, a.images)


def test_photo_mode_landmarks_align_onto_the_arcface_template():
    from insightface.utils.face_align import arcface_dst

    img, lmk = render(0, 2, 3, mode="photo")
    assert img.shape == (250, 250, 3)
    aligned = prepare(img, Preprocess(size=112), lmk)
    assert aligned.shape == (3, 112, 112)
    # the aligned eyes land where the template puts them: the eye rows are darker than the cheeks below
    eye_row = int(round(arcface_dst[0, 1]))
    assert aligned[:, eye_row - 2:eye_row + 3].mean() != aligned[:, eye_row + 12:eye_row + 17].mean()


def test_grey_and_colour_channels():
    faces = synthetic_faces(1, 1)
    rgb = faces.images[0].transpose(1, 2, 0)
    assert prepare(rgb, Preprocess(channels=1)).shape == (1, 112, 112)
    grey = rgb[:, :, 0]
    out = prepare(grey, Preprocess(channels=3, size=56))
    assert out.shape == (3, 56, 56) and np.array_equal(out[0], out[2])


def test_folder_errors_name_the_problem(tmp_path):
    write_folder(synthetic_faces(2, 2), tmp_path / "f")
    (tmp_path / "f" / "empty_person").mkdir()
    with pytest.raises(DataError, match="empty_person: identity folder has no images"):
        FolderSource(tmp_path / "f")
    source = FolderSource(tmp_path / "f", skip_empty=True)
    assert len(source.identities) == 2 and "empty_person" in source.problems[0]
    bad = next((tmp_path / "f").glob("*/*.png"))
    bad.write_bytes(bad.read_bytes()[:50])
    with pytest.raises(DataError, match=f"{bad.name}: not a decodable image"):
        materialize(source, None, Preprocess())
    result = materialize(source, None, Preprocess(), skip_bad=True)
    assert len(result.faces) == 3 and bad.name in result.problems[0]


def test_orl_faces_load_as_grey_or_colour():
    source = open_source(ORL_SAMPLE)
    assert len(source.identities) == 12 and len(source) == 120
    faces = materialize(source, np.arange(20), Preprocess(size=112, channels=1)).faces
    assert faces.images.shape == (20, 1, 112, 112) and faces.num_identities == 2


def test_inspect_every_format(tmp_path):
    faces = synthetic_faces(3, 4, seed=1)
    write_folder(faces, tmp_path / "folder")
    report = inspect_path(tmp_path / "folder")
    assert report["format"] == "image-folder" and report["images"] == 12 and report["identities"] == 3
    assert report["sizes"] == {"112x112": 12} and report["channels"] == {"3": 12} and report["problems"] == []
    build_rec(FolderSource(tmp_path / "folder"), tmp_path / "rec")
    report = inspect_path(tmp_path / "rec")
    assert report["format"] == "recordio" and report["images"] == 12 and report["property"]["classes"] == 3
    write_bin(tmp_path / "x.bin", faces.images[:4], [True, False])
    report = inspect_path(tmp_path / "x.bin")
    assert (report["format"], report["pairs"], report["matched"]) == ("bin", 2, 1)
    write_pairs(tmp_path / "pairs.txt", [("synthetic_00000", 1, "synthetic_00000", 2),
                                         ("synthetic_00001", 1, "synthetic_00002", 2)], 1, 1)
    report = inspect_path(tmp_path / "folder", pairs=tmp_path / "pairs.txt")
    assert (report["format"], report["pairs"], report["identities"]) == ("lfw", 2, 3)
    corrupt = next((tmp_path / "folder").glob("*/*.png"))
    corrupt.write_bytes(b"GIF89a nonsense")
    report = inspect_path(tmp_path / "folder")
    assert len(report["problems"]) == 1 and corrupt.name in report["problems"][0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [112, 224, 128])
def test_alignment_is_identical_to_insightfaces_norm_crop(dtype, size):
    import warnings

    from insightface.utils import face_align

    from facenas.data.faces.align import ARCFACE_TEMPLATE, estimate_norm, norm_crop

    assert np.array_equal(ARCFACE_TEMPLATE, face_align.arcface_dst)
    for identity in range(8):
        img, lmk = render(2, identity, identity, mode="photo")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs_m = face_align.estimate_norm(lmk.astype(dtype), size)
            theirs = face_align.norm_crop(img, lmk.astype(dtype), size)
        assert np.array_equal(estimate_norm(lmk.astype(dtype), size), theirs_m)
        assert np.array_equal(norm_crop(img, lmk.astype(dtype), size), theirs)
