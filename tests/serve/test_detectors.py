"""Face detectors, on tiny ONNX graphs built here that follow YuNet's and SCRFD's real contracts, so that the real
decoders (OpenCV's FaceDetectorYN, insightface's SCRFD class) run on them.

Each graph is one strided convolution per output: every 32-pixel cell predicts a face of fixed geometry around
itself, and its score is how blue the cell is. A pure-blue square covering exactly one cell of the detector's input
is therefore one face at a known place; making it cyan (green too) makes the face 1.5x larger and less confident, to
tell "largest" from "most confident". Blue, not white, so that handing the detector RGB where it expects BGR finds
nothing. The tests assert boxes and landmarks in the original image's pixels, also when the photo is downscaled.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from facenas.data.faces.synthetic import render
from facenas.errors import FacenasError
from facenas.serve.detectors import (
    YUNET_MODEL,
    Detection,
    DetectionFailed,
    DetectorError,
    FaceDetector,
    detector_kind,
    load_detector,
)
from facenas.serve.errors import NoFaceFound

CELL = 32  # only the stride-32 cells score; the stride-8 and -16 heads are there for the contract
FACE = np.array([80.0, 96.0])  # box width, height of a blue cell's face, centred on the cell
POINTS = np.array([[-17, -12], [17, -12], [0, 6], [-14, 22], [14, 22]], np.float64)  # from the centre
GROW = 0.5  # a cyan cell's face is (1 + GROW) times larger
Row = tuple[float, float, float]  # one output value = alpha + beta_blue * blue + beta_green * green (cell means, 0..1)


# ------------------------------------------------------------------------------------------------ graph builders


def _head(name: str, image: str, stride: int, rows: list[Row], channels: tuple, anchors: int, rank3: bool,
          nodes: list, inits: list) -> onnx.ValueInfoProto:
    """Conv (kernel = stride) -> NHWC -> (cells x anchors, len(rows)): the layout both detectors read.

    `channels` = ((blue channel, scale, offset), (green channel, scale, offset)) with colour = scale * blob + offset,
    since YuNet's blob is raw BGR 0..255 and SCRFD's is RGB normalised to about -1..1."""
    width = len(rows)
    weight = np.zeros((anchors * width, 3, stride, stride), np.float32)
    bias = np.zeros(anchors * width, np.float32)
    (cb, sb, ob), (cg, sg, og) = channels
    for a in range(anchors):
        for j, (alpha, blue, green) in enumerate(rows):
            k = a * width + j
            weight[k, cb] += blue * sb / stride**2
            weight[k, cg] += green * sg / stride**2
            bias[k] = alpha + blue * ob + green * og
    shape = [1, -1, width] if rank3 else [-1, width]
    inits += [numpy_helper.from_array(weight, f"{name}_w"), numpy_helper.from_array(bias, f"{name}_b"),
              numpy_helper.from_array(np.array(shape, np.int64), f"{name}_shape")]
    nodes += [helper.make_node("Conv", [image, f"{name}_w", f"{name}_b"], [f"{name}_conv"], strides=[stride, stride],
                               kernel_shape=[stride, stride]),
              helper.make_node("Transpose", [f"{name}_conv"], [f"{name}_nhwc"], perm=[0, 2, 3, 1]),
              helper.make_node("Reshape", [f"{name}_nhwc", f"{name}_shape"], [name])]
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ([1] if rank3 else []) + [f"{name}_n", width])


def _save(path: Path, nodes: list, inits: list, inputs: list, outputs: list) -> str:
    model = helper.make_model(helper.make_graph(nodes, path.stem, inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def yunet_onnx(path: Path, confidence: float = 1.0) -> str:
    """YuNet's contract (opencv face_detect.cpp): input 'input' (1, 3, H, W) raw BGR; outputs cls/obj/bbox/kps at
    strides 8, 16, 32 of shape (1, cells, 1|1|4|10); score = sqrt(cls * obj); box centre (c + b0, r + b1) * stride,
    size exp(b2|b3) * stride; landmark (k + c|r) * stride."""
    nodes: list = []
    inits: list = []
    outputs = []
    channels = ((0, 1 / 255, 0.0), (1, 1 / 255, 0.0))
    for part in ("cls", "obj", "bbox", "kps"):
        for s in (8, 16, 32):
            if part == "cls":
                rows: list[Row] = [(0.0, 1.0, -0.3) if s == CELL else (0.0, 0.0, 0.0)]
            elif part == "obj":
                rows = [(confidence, 0.0, 0.0)]
            elif part == "bbox":
                rows = [(0.5, 0.0, 0.0), (0.5, 0.0, 0.0), (np.log(FACE[0] / s), 0.0, np.log(1 + GROW)),
                        (np.log(FACE[1] / s), 0.0, np.log(1 + GROW))]
            else:
                rows = [(0.5 + v / s, 0.0, GROW * v / s) for v in POINTS.ravel()]
            outputs.append(_head(f"{part}_{s}", "input", s, rows, channels, 1, True, nodes, inits))
    image = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "height", "width"])
    return _save(path, nodes, inits, [image], outputs)


def scrfd_onnx(path: Path, confidence: float = 1.0, kps: bool = True, rank3: bool = False,
               size: Optional[int] = None) -> str:
    """insightface's SCRFD contract (model_zoo/scrfd.py): input (1, 3, H, W) RGB, (v - 127.5) / 128; 9 outputs
    (6 without landmarks): scores, then boxes, then landmarks, each for strides 8, 16, 32, two anchors per cell, as
    (cells * 2, 1|4|10); distances from the anchor (the cell's top-left corner) in stride units."""
    nodes: list = []
    inits: list = []
    outputs = []
    channels = ((2, 128 / 255, 127.5 / 255), (1, 128 / 255, 127.5 / 255))
    for part in ("score", "bbox", "kps") if kps else ("score", "bbox"):
        for s in (8, 16, 32):
            if part == "score":
                rows: list[Row] = [(0.0, confidence, -0.3 * confidence) if s == CELL else (0.0, 0.0, 0.0)]
            elif part == "bbox":  # left, top, right, bottom distances of a box centred on the cell
                (hw, hh), grow = FACE / 2, GROW / s
                rows = [((hw - s / 2) / s, 0.0, grow * hw), ((hh - s / 2) / s, 0.0, grow * hh),
                        ((hw + s / 2) / s, 0.0, grow * hw), ((hh + s / 2) / s, 0.0, grow * hh)]
            else:
                rows = [(0.5 + v / s, 0.0, GROW * v / s) for v in POINTS.ravel()]
            outputs.append(_head(f"{part}_{s}", "input.1", s, rows, channels, 2, rank3, nodes, inits))
    dims: list = [1, 3, size, size] if size else [1, 3, "?", "?"]
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, dims)
    return _save(path, nodes, inits, [image], outputs)


def other_onnx(path: Path, outputs: int = 1) -> str:
    """Not a detector: a recognition-like graph (1x3x112x112 -> 512) or `outputs` Identity copies of the input."""
    image = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 112, 112])
    if outputs == 1:
        weight = numpy_helper.from_array(np.zeros((512, 3 * 112 * 112), np.float32), "w")
        nodes = [helper.make_node("Flatten", ["input"], ["flat"]),
                 helper.make_node("Gemm", ["flat", "w"], ["embedding"], transB=1)]
        out = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, 512])]
        return _save(path, nodes, [weight], [image], out)
    nodes = [helper.make_node("Identity", ["input"], [f"out{i}"]) for i in range(outputs)]
    out = [helper.make_tensor_value_info(f"out{i}", TensorProto.FLOAT, [1, 3, 112, 112]) for i in range(outputs)]
    return _save(path, nodes, [], [image], out)


# ------------------------------------------------------------------------------------------------ images, truth


def photo(width: int, height: int, cells: list[tuple[int, int, bool]], factor: float = 1.0) -> np.ndarray:
    """A black RGB photo with a marker on each (row, col, cyan) cell of the detector's input, `factor` original
    pixels per input pixel."""
    rgb = np.zeros((height, width, 3), np.uint8)
    side = int(round(CELL * factor))
    for r, c, cyan in cells:
        rgb[r * side:(r + 1) * side, c * side:(c + 1) * side] = (0, 255 if cyan else 0, 255)
    return rgb


def truth(r: int, c: int, cyan: bool = False, factor: float = 1.0) -> tuple[list[int], np.ndarray]:
    """The box (x, y, w, h) and landmarks, in original pixels, of the face the graphs put on cell (r, c)."""
    grow = 1 + GROW if cyan else 1.0
    centre = np.array([c + 0.5, r + 0.5]) * CELL
    size = FACE * grow
    x, y = centre - size / 2
    box = [int(round(v * factor)) for v in (x, y, *size)]
    return box, (centre + POINTS * grow) * factor


def check(found: Detection, box: list[int], points: Optional[np.ndarray]) -> None:
    assert np.abs(np.array(found.box) - box).max() <= 1, (found.box, box)
    if points is None:
        assert found.landmarks is None
    else:
        assert found.landmarks is not None and found.landmarks.shape == (5, 2) and found.landmarks.dtype == np.float64
        assert np.abs(found.landmarks - points).max() <= 1.5, (found.landmarks, points)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("detectors")
    return {"yunet": yunet_onnx(d / "yunet.onnx"), "yunet_weak": yunet_onnx(d / "yunet_weak.onnx", 0.16),
            "scrfd": scrfd_onnx(d / "scrfd.onnx"), "scrfd_weak": scrfd_onnx(d / "scrfd_weak.onnx", 0.4),
            "scrfd_boxes": scrfd_onnx(d / "scrfd_boxes.onnx", kps=False),
            "scrfd_batched": scrfd_onnx(d / "scrfd_batched.onnx", rank3=True),
            "scrfd_128": scrfd_onnx(d / "scrfd_128.onnx", size=128),
            "recognition": other_onnx(d / "recognition.onnx"), "identity9": other_onnx(d / "identity9.onnx", 9)}


# ------------------------------------------------------------------------------------------------ YuNet


def test_yunet_box_and_landmarks_in_place(models: dict[str, str]) -> None:
    """300x200 (not a multiple of 32, so OpenCV pads it): the face is where the graph put it, eyes left to right."""
    det = load_detector(models["yunet"], max_side=640)
    assert (det.kind, det.gives_landmarks) == ("yunet", True)
    found = det.largest(photo(300, 200, [(2, 4, False)]))
    check(found, *truth(2, 4))
    assert found.score == pytest.approx(1.0, abs=1e-3)
    assert found.landmarks[0, 0] < found.landmarks[1, 0] and found.landmarks[3, 0] < found.landmarks[4, 0]


@pytest.mark.parametrize("width,height,max_side,factor", [(1280, 960, 320, 4.0), (1000, 700, 320, 3.125)])
def test_yunet_maps_a_downscaled_photo_back(models: dict[str, str], width: int, height: int, max_side: int,
                                            factor: float) -> None:
    """A photo larger than max_side is detected downscaled; box and landmarks come back in its own pixels."""
    det = load_detector(models["yunet"], max_side=max_side, kind="yunet")
    check(det.largest(photo(width, height, [(3, 5, False)], factor)), *truth(3, 5, factor=factor))


def test_yunet_threshold(models: dict[str, str]) -> None:
    """A face scored 0.4 is no face at the default 0.5, and is found with a threshold of 0.3."""
    img = photo(256, 256, [(2, 2, False)])
    with pytest.raises(NoFaceFound, match="^no face found in the image$"):
        load_detector(models["yunet_weak"]).largest(img)
    found = load_detector(models["yunet_weak"], score_threshold=0.3).largest(img)
    assert found.score == pytest.approx(0.4, abs=1e-3)
    check(found, *truth(2, 2))


def test_yunet_is_thread_safe(models: dict[str, str]) -> None:
    """Threads detecting on photos of different sizes share one cv2 object whose input size is per call."""
    det = load_detector(models["yunet"])
    cases = [(photo(96 + 64 * i, 128 + 32 * i, [(1 + i % 2, 1 + i % 3, False)]), truth(1 + i % 2, 1 + i % 3))
             for i in range(6)]
    errors: list[BaseException] = []

    def work(img: np.ndarray, expected: tuple) -> None:
        try:
            for _ in range(20):
                check(det.largest(img), *expected)
        except BaseException as exc:  # noqa: B036 - reported to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=case) for case in cases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_yunet_runtime_error_is_a_clean_500(models: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A cv2.error while detecting becomes DetectionFailed: status 500, nothing of the server in the message."""
    det = load_detector(models["yunet"])

    class Broken:
        def setInputSize(self, size: tuple) -> None:  # noqa: N802 - cv2's name
            pass

        def detect(self, image: np.ndarray) -> None:
            raise cv2.error("OpenCV(4.14.0) /io/opencv/x.cpp:1: error: (-215:Assertion failed) boom in function 'f'\n")

    monkeypatch.setattr(det, "net", Broken())
    with pytest.raises(DetectionFailed) as info:
        det.largest(photo(64, 64, []))
    assert (info.value.status, info.value.code) == (500, "detection_failed")
    assert info.value.message == "face detection failed on this image"
    assert info.value.reason == "boom"


def test_yunet_graph_opencv_refuses(tmp_path: Path) -> None:
    """YuNet's output names on a graph OpenCV cannot import: one line naming the file, no cv2 traceback."""
    names = [f"{p}_{s}" for p in ("cls", "obj", "bbox", "kps") for s in (8, 16, 32)]
    node = helper.make_node("Foo", ["input"], names, domain="com.example")
    graph = helper.make_graph([node], "odd", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names])
    path = tmp_path / "odd.onnx"
    opsets = [helper.make_opsetid("", 13), helper.make_opsetid("com.example", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    assert detector_kind(str(path)) == "yunet"
    with pytest.raises(DetectorError, match="OpenCV could not load it as a YuNet face detector") as info:
        load_detector(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------ SCRFD


def test_scrfd_box_and_landmarks_in_place(models: dict[str, str]) -> None:
    """insightface's SCRFD decoder on a dynamic-input graph, letterboxed into max_side x max_side, downscaled 2x."""
    det = load_detector(models["scrfd"], max_side=128)
    assert (det.kind, det.gives_landmarks) == ("scrfd", True)
    found = det.largest(photo(256, 192, [(1, 2, False)], factor=2.0))
    check(found, *truth(1, 2, factor=2.0))
    assert found.score == pytest.approx(1.0, abs=1e-3)
    assert found.landmarks[0, 0] < found.landmarks[1, 0]


def test_scrfd_small_photo_and_fixed_input(models: dict[str, str]) -> None:
    """A photo smaller than the input is scaled up by insightface (64x48 -> 128x96), and a graph with a fixed input
    size letterboxes every photo into that size, whatever max_side is: both mapped back to the photo's pixels."""
    check(load_detector(models["scrfd"], max_side=128).largest(photo(64, 48, [(1, 1, False)], factor=0.5)),
          *truth(1, 1, factor=0.5))
    fixed = load_detector(models["scrfd_128"], max_side=640)
    check(fixed.largest(photo(256, 192, [(1, 2, False)], factor=2.0)), *truth(1, 2, factor=2.0))


def test_scrfd_variants(models: dict[str, str]) -> None:
    """Batched outputs (1, N, C) decode the same; a graph without landmark outputs gives boxes only."""
    img, (box, points) = photo(256, 192, [(1, 2, False)], factor=2.0), truth(1, 2, factor=2.0)
    check(load_detector(models["scrfd_batched"], max_side=128).largest(img), box, points)
    boxes = load_detector(models["scrfd_boxes"], max_side=128)
    assert (boxes.kind, boxes.gives_landmarks) == ("scrfd", False)
    check(boxes.largest(img), box, None)


def test_scrfd_threshold(models: dict[str, str]) -> None:
    img = photo(128, 128, [(1, 1, False)])
    with pytest.raises(NoFaceFound, match="^no face found in the image$"):
        load_detector(models["scrfd_weak"], max_side=128).largest(img)
    found = load_detector(models["scrfd_weak"], max_side=128, score_threshold=0.3).largest(img)
    assert found.score == pytest.approx(0.4, abs=1e-3)


def test_scrfd_without_insightface(models: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The service image has no insightface: SCRFD says so and points to YuNet, which still loads."""
    monkeypatch.setitem(sys.modules, "insightface", None)
    with pytest.raises(DetectorError) as info:
        load_detector(models["scrfd"])
    message = str(info.value)
    assert "SCRFD needs the insightface package (`pip install insightface`)" in message
    assert "the service image does not include" in message and YUNET_MODEL in message and "only OpenCV" in message
    assert isinstance(info.value, FacenasError)
    assert load_detector(models["yunet"]).kind == "yunet"


# ------------------------------------------------------------------------------------------------ both


@pytest.mark.parametrize("kind,max_side", [("yunet", 640), ("scrfd", 256)])
def test_largest_face_wins_over_the_most_confident(models: dict[str, str], kind: str, max_side: int) -> None:
    """Two faces: the blue one scores higher, the cyan one is 1.5x larger; the larger is the answer."""
    found = load_detector(models[kind], max_side=max_side).largest(photo(256, 256, [(1, 1, False), (5, 5, True)]))
    check(found, *truth(5, 5, cyan=True))
    assert found.score < 0.9


@pytest.mark.parametrize("kind", ["yunet", "scrfd"])
def test_nothing_to_find(models: dict[str, str], kind: str) -> None:
    """A blank photo, and a red square (blue in RGB order: what a detector fed RGB instead of BGR would see)."""
    det = load_detector(models[kind], max_side=128)
    for img in (np.zeros((128, 128, 3), np.uint8), photo(128, 128, [(1, 1, False)])[..., ::-1].copy()):
        with pytest.raises(NoFaceFound):
            det.largest(img)


def test_kind_inference(models: dict[str, str]) -> None:
    assert detector_kind(models["yunet"]) == "yunet"
    for name in ("scrfd", "scrfd_boxes", "scrfd_batched", "scrfd_128"):
        assert detector_kind(models[name]) == "scrfd"
    assert isinstance(load_detector(models["yunet"], kind="auto"), FaceDetector)


@pytest.mark.parametrize("name", ["recognition", "identity9"])
def test_other_models_are_refused(models: dict[str, str], name: str) -> None:
    """The recognition model (or nine Identity outputs: SCRFD's count, not its shapes) is not a detector."""
    for call in (lambda: detector_kind(models[name]), lambda: load_detector(models[name])):
        with pytest.raises(DetectorError, match="not a face detector this service knows") as info:
            call()
        message = str(info.value)
        assert models[name] in message and "YuNet" in message and "SCRFD" in message and "\n" not in message


def test_forced_kind_must_fit(models: dict[str, str]) -> None:
    """An explicit kind is checked against the graph, not trusted into a crash inside OpenCV or insightface."""
    with pytest.raises(DetectorError, match="not a YuNet face detector: OpenCV needs the outputs"):
        load_detector(models["scrfd"], kind="yunet")
    with pytest.raises(DetectorError, match="not an insightface SCRFD face detector: 12 outputs"):
        load_detector(models["yunet"], kind="scrfd")


def test_bad_files_and_arguments(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.onnx"
    with pytest.raises(DetectorError, match=f"detector file {missing} does not exist"):
        load_detector(str(missing))
    with pytest.raises(DetectorError, match="is not a file"):
        detector_kind(str(tmp_path))
    for content in (b"this is not a model\n", b"", bytes(range(256)) * 4):
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(content)
        with pytest.raises(DetectorError, match=f"{bad}: not an ONNX model"):
            load_detector(str(bad))
    with pytest.raises(DetectorError, match="expected auto, yunet, scrfd, mtcnn or haar"):
        load_detector("haar", kind="retinaface")
    with pytest.raises(DetectorError, match="give 'haar' as the detector"):
        load_detector(str(missing), kind="haar")
    with pytest.raises(DetectorError, match="give 'mtcnn' as the detector"):
        load_detector(str(missing), kind="mtcnn")
    with pytest.raises(DetectorError, match="'mtcnn' is built in; its kind cannot be 'yunet'"):
        load_detector("mtcnn", kind="yunet")
    with pytest.raises(DetectorError, match="expected a number in"):
        load_detector("haar", score_threshold=0)


# ------------------------------------------------------------------------------------------------ Haar


def test_haar_box_or_clean_no_face() -> None:
    """Haar on a synthetic photo (it may not see a drawn face): a box without landmarks, or NoFaceFound."""
    det = load_detector("haar", max_side=640)
    assert (det.kind, det.gives_landmarks) == ("haar", False)
    img, _ = render(77, 70_000, 9, mode="photo")
    try:
        found = det.largest(img)
    except NoFaceFound as exc:
        assert exc.message == "no face found in the image"
    else:
        assert found.landmarks is None and len(found.box) == 4 and all(isinstance(v, int) for v in found.box)
        assert found.score == 1.0
    with pytest.raises(NoFaceFound):
        det.largest(np.zeros((200, 300, 3), np.uint8))


# ------------------------------------------------------------------------------------------------ in the service


def test_the_service_aligns_a_photo_on_the_detectors_landmarks(models: dict[str, str], exported, tmp_path) -> None:
    """--detector with a YuNet model: the answer says which detector found the face and that it was aligned on
    landmarks (the crop is the ArcFace warp of the detected points)."""
    from fastapi.testclient import TestClient

    from facenas.serve.app import create_app
    from tests.serve.conftest import LOCAL, png, settings_for

    model, _ = exported
    settings = settings_for(model, tmp_path / "g.sqlite", detector=models["yunet"])
    with TestClient(create_app(settings), client=LOCAL) as c:
        r = c.post("/v1/embed", files=[("files", ("p.png", png(photo(300, 200, [(2, 4, False)]))))])
        assert r.status_code == 200, r.text
        face = r.json()["embeddings"][0]
        assert face["aligned"] == "detected-landmarks" and face["detector"] == "yunet" and face["note"] is None
        assert np.abs(np.array(face["box"]) - truth(2, 4)[0]).max() <= 1


def test_the_haar_last_resort_says_so_in_the_answer() -> None:
    from facenas.serve.engine import Face

    info = Face(np.zeros((112, 112, 3), np.uint8), [0, 0, 10, 10], "detected-box", "haar").describe()
    assert info["detector"] == "haar" and "last resort" in info["note"] and "--detector" in info["note"]
    assert Face(np.zeros((112, 112, 3), np.uint8), None, "landmarks").describe()["note"] is None


def test_a_missing_detector_package_stops_the_service_in_one_line(models: dict[str, str], exported, tmp_path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from facenas.cli.main import app
    from tests.serve.conftest import free_port

    model, _ = exported
    monkeypatch.setitem(sys.modules, "insightface", None)
    result = CliRunner().invoke(app, ["serve", "--model", str(model), "--db", str(tmp_path / "g.sqlite"),
                                      "--detector", models["scrfd"], "--port", str(free_port())])
    assert result.exit_code != 0 and "SCRFD needs the insightface package" in result.output
    assert "Traceback" not in result.output
