"""A real uvicorn on 127.0.0.1: enrol, identify, verify, restart, identify again; and the web page in Chromium."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from tests.serve.conftest import Server

pytestmark = pytest.mark.slow


def enrol_and_identify(url: str, crops: list[bytes]) -> dict:
    assert httpx.post(url + "/v1/subjects", json={"id": "alice"}).status_code == 201
    r = httpx.post(url + "/v1/subjects/alice/faces", files=[("files", ("a.png", crops[0])),
                                                            ("files", ("b.png", crops[1]))])
    assert r.status_code == 201, r.text
    return httpx.post(url + "/v1/identify", files={"image": ("q.png", crops[1])}, data={"top_k": "3"}).json()


def test_enrol_identify_verify_restart_identify_again(exported, tmp_path, crops):
    model, _ = exported
    db = tmp_path / "gallery.sqlite"
    with Server("--model", str(model), "--db", str(db)) as server:
        first = enrol_and_identify(server.url, crops)
        assert first["subject"] == "alice" and not first["unknown"] and first["candidates"][0]["similarity"] > 0.999
        v = httpx.post(server.url + "/v1/verify", files={"image1": ("a.png", crops[0]), "image2": ("b.png", crops[0])})
        assert v.status_code == 200 and v.json()["same_person"] is True
        other = httpx.post(server.url + "/v1/identify", files={"image": ("o.png", crops[7])},
                           data={"threshold": "0.999"}).json()
        assert other["unknown"] is True and other["candidates"][0]["subject"] == "alice"
    with Server("--model", str(model), "--db", str(db)) as restarted:
        again = httpx.post(restarted.url + "/v1/identify", files={"image": ("q.png", crops[1])},
                           data={"top_k": "3"}).json()
        assert again == first  # the gallery survived the restart unchanged
        listing = httpx.get(restarted.url + "/v1/subjects").json()["subjects"]
        assert listing == [{"id": "alice", "name": "alice", "faces": 2}]


def test_a_gallery_of_another_model_stops_the_service_with_a_clear_message(exported, tmp_path, crops):
    model, _ = exported
    db = tmp_path / "gallery.sqlite"
    with Server("--model", str(model), "--db", str(db)) as server:
        enrol_and_identify(server.url, crops)
    import onnx

    other = tmp_path / "other.onnx"
    graph = onnx.load(str(model))
    graph.metadata_props.add(key="note", value="another model")
    onnx.save(graph, str(other))  # another file: another model id (and no card)
    refused = Server("--model", str(other), "--db", str(db), "--threshold", "0.5")
    out = refused.stop() if refused.proc.wait(timeout=60) is not None else ""
    assert refused.proc.returncode == 2 and "embeddings made by another model" in out and "Traceback" not in out


def test_a_model_without_card_needs_a_threshold(exported, tmp_path):
    model, _ = exported
    bare = tmp_path / "bare.onnx"
    shutil.copy(model, bare)
    server = Server("--model", str(bare), "--db", str(tmp_path / "g.sqlite"))
    server.proc.wait(timeout=60)
    out = server.stop()
    assert server.proc.returncode == 2 and "--threshold" in out


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_the_web_page_verifies_enrols_identifies_and_lists_the_gallery_in_chromium(exported, tmp_path, crops):
    """The page in headless Chromium: previews of the chosen photos with the detected box and landmarks drawn, the
    decision with its similarity and the threshold that decided it, and the gallery listed, enrolled into and
    deleted from. Screenshots go to tmp_path, or to $FACENAS_SCREENSHOTS where it is set."""
    import os

    import cv2
    import numpy as np

    from tests.conftest import ORL_SAMPLE
    from tests.serve.conftest import jpeg

    playwright = pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed")
    model, _ = exported
    shots = Path(os.environ.get("FACENAS_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    files = {}
    for i in (0, 1):
        files[i] = tmp_path / f"face{i}.png"
        files[i].write_bytes(crops[i])
    orl = cv2.imread(str(ORL_SAMPLE / "s1" / "1.png"), cv2.IMREAD_GRAYSCALE)
    canvas = np.full((300, 300), 90, np.uint8)
    canvas[40:40 + orl.shape[0] * 2, 60:60 + orl.shape[1] * 2] = cv2.resize(orl, (orl.shape[1] * 2, orl.shape[0] * 2))
    files["photo"] = tmp_path / "photo.jpg"
    files["photo"].write_bytes(jpeg(np.repeat(canvas[:, :, None], 3, 2)))
    with Server("--model", str(model), "--db", str(tmp_path / "g.sqlite")) as server, \
            playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1100, "height": 1400})
        page.on("dialog", lambda dialog: dialog.accept())  # the delete button asks first
        page.goto(server.url + "/")
        page.wait_for_function("document.querySelector('#gallery-result').textContent.includes('empty')")
        page.set_input_files("#verify-image1", str(files["photo"]))
        page.set_input_files("#verify-image2", str(files["photo"]))
        page.wait_for_function("document.querySelector('#verify-preview1').width === 300")  # the preview drawn
        page.click("#verify-run")
        page.wait_for_selector("#verify-result .similarity")
        result = page.text_content("#verify-result")
        assert "Same person" in result and "threshold" in result and "model card" in result, result
        assert "found by mtcnn, aligned on its five landmarks" in page.text_content("#verify-face1")
        # the box (blue) is drawn over the grey photo: blue pixels in the preview
        blue = page.evaluate("""() => { const c = document.querySelector('#verify-preview1');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
            for (let i = 0; i < d.length; i += 4) { if (d[i + 2] > 200 && d[i] < 80) { n++; } } return n; }""")
        assert blue > 100, blue
        page.screenshot(path=str(shots / "page-verify.png"), full_page=True)
        page.fill("#enrol-subject", "alice")
        page.set_input_files("#enrol-image", [str(files[0]), str(files[1])])
        page.click("#enrol-run")
        page.wait_for_function("document.querySelector('#enrol-result').textContent.includes('Enrolled 2')")
        page.wait_for_selector("#gallery-table tr[data-subject='alice']")
        assert page.text_content("#gallery-table tr[data-subject='alice']").startswith("alicealice2")
        assert "empty" not in page.text_content("#gallery-result")
        page.set_input_files("#identify-image", str(files[0]))
        page.click("#identify-run")
        page.wait_for_selector("#identify-result .similarity")
        assert page.text_content("#identify-result").startswith("alice")
        assert "candidate" in page.text_content("#identify-result")
        page.screenshot(path=str(shots / "page-gallery.png"), full_page=True)
        page.click("#gallery-table tr[data-subject='alice'] .delete")
        page.wait_for_function("document.querySelector('#gallery-result').textContent.includes('empty')")
        assert page.query_selector("#gallery-table tr[data-subject='alice']") is None
        browser.close()
    assert (shots / "page-verify.png").stat().st_size > 10_000
