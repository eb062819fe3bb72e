"""The HTTP API through FastAPI's TestClient: every endpoint, and clear 4xx for bad input."""

from __future__ import annotations

import json
import logging
import struct
import zlib

import numpy as np
import pytest

from tests.conftest import ORL_SAMPLE
from tests.serve.conftest import LOCAL, jpeg, png, settings_for


def test_embed_one_or_more_images(client, crops):
    r = client.post("/v1/embed", files=[("files", ("a.png", crops[0])), ("files", ("b.png", crops[1]))])
    assert r.status_code == 200, r.text
    body = r.json()
    vectors = np.array([e["embedding"] for e in body["embeddings"]])
    assert vectors.shape == (2, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert body["embeddings"][0]["aligned"] == "crop" and len(body["model"]) == 64


def test_verify_uses_the_card_threshold_or_the_requested_one(client, crops):
    r = client.post("/v1/verify", files={"image1": ("a.png", crops[0]), "image2": ("a2.png", crops[0])})
    body = r.json()
    assert r.status_code == 200 and body["similarity"] == pytest.approx(1.0, abs=1e-5) and body["same_person"]
    assert body["threshold_source"] == "model card: best accuracy on synthetic calibration pairs"
    assert body["far"] is None
    r = client.post("/v1/verify", files={"image1": ("a.png", crops[0]), "image2": ("b.png", crops[4])},
                    data={"threshold": "0.9999"})
    assert r.json()["threshold"] == 0.9999 and r.json()["threshold_source"] == "request"
    assert r.json()["same_person"] is False


def test_landmarks_align_a_photo(client, crops, photo):
    data, lmk = photo
    r = client.post("/v1/verify", files={"image1": ("p.png", data), "image2": ("b.png", crops[0])},
                    data={"landmarks1": json.dumps(lmk)})
    assert r.status_code == 200 and r.json()["faces"][0] == {
        "box": None, "aligned": "landmarks", "detector": None, "note": None,
        "landmarks": np.round(np.asarray(lmk, float), 1).tolist()}  # the client's points, given back
    r = client.post("/v1/verify", files={"image1": ("p.png", data), "image2": ("b.png", crops[0])},
                    data={"landmarks1": "[[1, 2]]"})
    assert r.status_code == 422 and "five [x, y] pairs" in r.json()["error"]["message"]


def test_no_face_is_a_clear_422(client, crops):
    flat = png(np.full((200, 200, 3), 128, np.uint8))
    r = client.post("/v1/verify", files={"image1": ("f.png", flat), "image2": ("b.png", crops[0])})
    assert r.status_code == 422 and r.json()["error"]["code"] == "no_face_found"


def test_upload_errors_name_the_upload_field(client, crops):
    """A client sending two or more images must learn which one had no face (or was bad), in words and a field."""
    flat = png(np.full((200, 200, 3), 128, np.uint8))
    client.post("/v1/subjects", json={"id": "nf"})
    for path, files, field in [
        ("/v1/verify", {"image1": ("a.png", crops[0]), "image2": ("f.png", flat)}, "image2"),
        ("/v1/verify", {"image1": ("f.png", flat), "image2": ("a.png", crops[0])}, "image1"),
        ("/v1/embed", [("files", ("a.png", crops[0])), ("files", ("f.png", flat))], "files[1]"),
        ("/v1/identify", {"image": ("f.png", flat)}, "image"),
        ("/v1/subjects/nf/faces", [("files", ("f.png", flat))], "files[0]"),
    ]:
        r = client.post(path, files=files)
        error = r.json()["error"]
        assert r.status_code == 422 and error["code"] == "no_face_found", (path, error)
        assert error["field"] == field and error["message"].startswith(f"{field}: "), (path, error)
    r = client.post("/v1/verify", files={"image1": ("a.png", crops[0]), "image2": ("x.png", b"not an image")})
    assert r.json()["error"]["code"] == "invalid_image" and r.json()["error"]["field"] == "image2"
    assert client.get("/openapi.json").json()["components"]["schemas"]["ErrorDetail"]["properties"]["field"]


@pytest.mark.parametrize("detector, aligned", [("mtcnn", "detected-landmarks"), ("haar", "detected-box")])
def test_a_real_face_in_a_photo_is_found_and_aligned(exported, tmp_path, crops, detector, aligned):
    """The default detector (MTCNN, shipped weights) aligns on five landmarks; Haar, the last resort, on a box and
    says so."""
    import cv2

    orl = cv2.imread(str(ORL_SAMPLE / "s1" / "1.png"), cv2.IMREAD_GRAYSCALE)
    canvas = np.full((300, 300), 90, np.uint8)
    canvas[60:60 + orl.shape[0] * 2, 80:80 + orl.shape[1] * 2] = cv2.resize(orl, (orl.shape[1] * 2, orl.shape[0] * 2))
    from fastapi.testclient import TestClient

    from facenas.serve.app import create_app

    default = {} if detector == "mtcnn" else {"detector": detector}
    settings = settings_for(exported[0], tmp_path / "g.sqlite", **default)
    with TestClient(create_app(settings), client=LOCAL) as client:
        r = client.post("/v1/verify", files={"image1": ("p.jpg", jpeg(np.repeat(canvas[:, :, None], 3, 2))),
                                             "image2": ("b.png", crops[0])})
    assert r.status_code == 200, r.text
    face = r.json()["faces"][0]
    x, y, w, h = face["box"]
    assert (face["aligned"], face["detector"]) == (aligned, detector)
    assert (face["note"] is None) == (detector == "mtcnn") == (face["landmarks"] is not None)
    if face["landmarks"]:  # the detector's points, inside its box
        points = np.array(face["landmarks"])
        assert ((points >= [x, y]) & (points <= [x + w, y + h])).all()
    assert 60 <= x + w / 2 <= 280 and 60 <= y + h / 2 <= 290  # inside the pasted face


def test_gallery_endpoints(client, crops):
    assert client.post("/v1/identify", files={"image": ("q.png", crops[0])}).json()["unknown"] is True
    assert client.post("/v1/subjects", json={"id": "alice", "name": "Alice"}).status_code == 201
    assert client.post("/v1/subjects", json={"id": "alice"}).status_code == 409
    assert client.post("/v1/subjects", json={"id": "bad id/with slash"}).status_code == 422
    assert client.post("/v1/subjects/bob/faces", files=[("files", ("a.png", crops[0]))]).status_code == 404
    r = client.post("/v1/subjects/alice/faces", files=[("files", ("a.png", crops[0])), ("files", ("b.png", crops[1]))])
    assert r.status_code == 201 and len(r.json()["face_ids"]) == 2
    client.post("/v1/subjects", json={"id": "carol"})
    client.post("/v1/subjects/carol/faces", files=[("files", ("c.png", crops[6]))])
    r = client.post("/v1/identify", files={"image": ("q.png", crops[0])}, data={"top_k": "2"}).json()
    assert r["subject"] == "alice" and not r["unknown"] and [c["subject"] for c in r["candidates"]][0] == "alice"
    assert r["candidates"][0]["similarity"] == pytest.approx(1.0, abs=1e-5) and len(r["candidates"]) == 2
    r = client.post("/v1/identify", files={"image": ("q.png", crops[4])}, data={"threshold": "0.9999"}).json()
    assert r["unknown"] is True and r["subject"] is None
    listing = client.get("/v1/subjects").json()["subjects"]
    assert listing == [{"id": "alice", "name": "Alice", "faces": 2}, {"id": "carol", "name": "carol", "faces": 1}]
    assert client.delete("/v1/subjects/alice").status_code == 204
    assert client.delete("/v1/subjects/alice").status_code == 404
    assert [s["id"] for s in client.get("/v1/subjects").json()["subjects"]] == ["carol"]


def big_png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height but carries almost no data (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("name, payload, status, code", [
    ("garbage", b"\x00\xff\x13 random bytes \x99" * 10, 422, "invalid_image"),
    ("text", b"just a text file\nwith lines\n", 422, "invalid_image"),
    ("empty", b"", 422, "invalid_image"),
    ("1x1", "tiny", 422, "invalid_image"),
    ("bomb", "bomb", 413, "image_too_large"),
    ("truncated jpeg", "truncated", 422, "invalid_image"),
])
def test_bad_images_are_clear_4xx(client, crops, name, payload, status, code):
    if payload == "tiny":
        payload = png(np.zeros((1, 1, 3), np.uint8))
    elif payload == "bomb":
        payload = big_png_header(20_000, 20_000)
    elif payload == "truncated":
        payload = jpeg(np.random.default_rng(0).integers(0, 255, (112, 112, 3), dtype=np.uint8))[:600]
    r = client.post("/v1/verify", files={"image1": ("x", payload), "image2": ("b.png", crops[0])})
    body = r.json()
    assert r.status_code == status and body["error"]["code"] == code, body
    assert "image1" in body["error"]["message"] and "Traceback" not in r.text and "/" not in body["error"]["message"]


@pytest.mark.parametrize("files, data, fields", [
    ({"image1": ("a.png", b"x")}, {}, "image2"),
    ({"image": ("a.png", b"x")}, {"top_k": "0"}, "top_k"),
    ({"image1": ("a.png", b"x"), "image2": ("b.png", b"x")}, {"threshold": "5"}, "threshold"),
])
def test_wrong_fields_name_the_field(client, files, data, fields):
    path = "/v1/identify" if "image" in files else "/v1/verify"
    r = client.post(path, files=files, data=data)
    assert r.status_code == 422 and fields in r.json()["error"]["message"]


def test_upload_size_limit(exported, tmp_path):
    from fastapi.testclient import TestClient

    from facenas.serve.app import create_app
    from tests.serve.conftest import LOCAL, settings_for

    model, _ = exported
    with TestClient(create_app(settings_for(model, tmp_path / "g.sqlite", max_upload_bytes=50_000)),
                    client=LOCAL) as c:
        big = png(np.random.default_rng(1).integers(0, 255, (300, 300, 3), dtype=np.uint8))
        r = c.post("/v1/embed", files=[("files", ("big.png", big))])
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_a_streamed_body_over_the_limit_is_a_413_too(exported, tmp_path):
    """Without Content-Length (chunked) the limit is found while the body streams in: still the 413 it is (not the
    400 FastAPI makes of a body that failed to parse), with the request's id."""
    from fastapi.testclient import TestClient

    from facenas.serve.app import create_app
    from tests.serve.conftest import LOCAL, settings_for

    model, _ = exported
    boundary = "b0undary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"x.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()

    def chunks():
        yield head
        for _ in range(20):
            yield b"\0" * 8192

    with TestClient(create_app(settings_for(model, tmp_path / "g.sqlite", max_upload_bytes=50_000)),
                    client=LOCAL) as c:
        r = c.post("/v1/embed", content=chunks(), headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert r.json()["error"]["request_id"] == r.headers["x-request-id"]


def test_health_metrics_schema_and_page(client, crops):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"ready": True}
    client.post("/v1/verify", files={"image1": ("a.png", crops[0]), "image2": ("b.png", b"nope")})
    client.post("/v1/subjects", json={"id": "x"})
    text = client.get("/metrics").text
    assert 'facenas_requests_total{method="POST",route="/v1/verify",status="422"} 1.0' in text
    assert "facenas_request_seconds_bucket" in text and 'facenas_errors_total{code="invalid_image"} 1.0' in text
    assert "facenas_gallery_subjects 1.0" in text and "facenas_gallery_faces 0.0" in text
    schema = client.get("/openapi.json").json()
    assert {"/v1/embed", "/v1/verify", "/v1/subjects", "/v1/subjects/{subject_id}", "/v1/subjects/{subject_id}/faces",
            "/v1/identify"} <= set(schema["paths"])
    page = client.get("/")
    assert page.status_code == 200 and "verify-run" in page.text and "identify-run" in page.text
    info = client.get("/v1/model").json()
    assert info["embedding_size"] == 32 and info["card"]["threshold"]["chosen_on"] == "synthetic calibration pairs"
    assert info["verify"]["far"] is None and info["identify"]["far"] == 0.1  # the lowest FAR the card records


def test_metrics_label_every_route_by_its_template(client):
    """FastAPI's own routes (schema, docs) are real routes; only requests no route matches are "unmatched"."""
    for path in ("/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect"):
        assert client.get(path).status_code == 200, path
    assert client.get("/no/such/page-7f3a").status_code == 404
    assert client.delete("/v1/subjects/ghost").status_code == 404  # a real route's 404 keeps its template
    text = client.get("/metrics").text
    for route in ("/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect"):
        assert f'facenas_requests_total{{method="GET",route="{route}",status="200"}} 1.0' in text, route
    assert 'facenas_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    assert 'facenas_requests_total{method="DELETE",route="/v1/subjects/{subject_id}",status="404"} 1.0' in text
    assert "page-7f3a" not in text and "ghost" not in text  # no raw paths: the labels stay bounded
    unmatched = [line for line in text.splitlines() if line.startswith("facenas_requests_total{")
                 and 'route="unmatched"' in line]
    assert unmatched and all('status="404"' in line for line in unmatched)


def test_unexpected_errors_leak_nothing(client, monkeypatch, crops, caplog):
    """The client gets a bare 500 (no message, path or traceback in body or headers); the operator's log gets the
    cause."""
    from facenas.serve import engine

    def boom(*a, **k):
        raise RuntimeError("secret internal path /srv/models/x.onnx")

    monkeypatch.setattr(engine.FaceEngine, "face", boom)
    from fastapi.testclient import TestClient  # a client that turns server errors into responses
    raw = TestClient(client.app, raise_server_exceptions=False, client=("127.0.0.1", 1))
    with caplog.at_level(logging.ERROR, logger="facenas.serve"):
        r = raw.post("/v1/verify", files={"image1": ("a.png", crops[0]), "image2": ("b.png", crops[1])},
                     headers={"x-request-id": "client-trace-42"})
    assert r.status_code == 500 and r.json() == {"error": {"code": "internal", "message": "internal error",
                                                           "request_id": "client-trace-42"}}
    assert r.headers["x-request-id"] == "client-trace-42"
    assert not any("secret" in f"{k}: {v}" or "srv" in v for k, v in r.headers.items())
    logged = [rec for rec in caplog.records if rec.name == "facenas.serve" and rec.exc_info]
    assert logged and "secret internal path" in str(logged[0].exc_info[1])
    assert "/v1/verify" in logged[0].getMessage() and "request_id=client-trace-42" in logged[0].getMessage()


def test_the_service_runs_without_pytorch(exported, tmp_path):
    """A deployed service needs onnxruntime, not PyTorch: nothing on its path imports torch."""
    import subprocess
    import sys

    model, _ = exported
    code = (
        "import sys, numpy as np, cv2\n"
        "from fastapi.testclient import TestClient\n"
        "from facenas.serve.app import create_app\n"
        "from facenas.serve.settings import ServeSettings\n"
        f"s = ServeSettings(model={str(model)!r}, db={str(tmp_path / 'g.sqlite')!r})\n"
        "png = cv2.imencode('.png', np.full((160, 160, 3), 90, np.uint8))[1].tobytes()\n"
        "lmk = '[[58, 71], [93, 71], [76, 91], [61, 112], [90, 112]]'\n"
        "with TestClient(create_app(s), client=('127.0.0.1', 1)) as c:\n"
        "    r = c.post('/v1/verify', files={'image1': ('a', png), 'image2': ('b', png)},\n"
        "               data={'landmarks1': lmk, 'landmarks2': lmk})\n"
        "    assert r.status_code == 200, r.text\n"
        "print('torch' in sys.modules, 'insightface' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_crops_are_embedded_on_the_loop_and_photos_in_the_decoding_threads(client, monkeypatch, crops, photo):
    """An aligned 112x112 crop costs about a millisecond: it skips the hops to the decoding threads and the batcher;
    a photo (detection, alignment) takes them."""
    from facenas.serve import engine
    from facenas.serve.engine import crop_sized

    hops = []
    submit = engine.FaceEngine.submit_faces
    monkeypatch.setattr(engine.FaceEngine, "submit_faces", lambda self, faces: hops.append(len(faces))
                        or submit(self, faces))
    r = client.post("/v1/verify", files={"image1": ("a.png", crops[0]), "image2": ("b.png", crops[1])})
    assert r.status_code == 200 and hops == []
    image, points = photo
    r = client.post("/v1/embed", files={"files": ("p.png", image)}, data={"landmarks": json.dumps([points])})
    assert r.status_code == 200 and r.json()["embeddings"][0]["aligned"] == "landmarks" and hops == [1]
    assert crop_sized(crops[0]) and not crop_sized(image) and not crop_sized(b"not an image")
