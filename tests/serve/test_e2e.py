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
def test_the_web_page_verifies_enrols_and_identifies_in_chromium(exported, tmp_path, crops):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed")
    model, _ = exported
    files = {}
    for i in (0, 1, 2, 7):
        files[i] = tmp_path / f"face{i}.png"
        files[i].write_bytes(crops[i])
    with Server("--model", str(model), "--db", str(tmp_path / "g.sqlite")) as server, \
            playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page()
        page.goto(server.url + "/")
        page.set_input_files("#verify-image1", str(files[0]))
        page.set_input_files("#verify-image2", str(files[0]))
        page.click("#verify-run")
        page.wait_for_selector("#verify-result .similarity")
        assert "Same person" in page.text_content("#verify-result")
        page.fill("#enrol-subject", "alice")
        page.set_input_files("#enrol-image", str(files[0]))
        page.click("#enrol-run")
        page.wait_for_function("document.querySelector('#enrol-result').textContent.includes('Enrolled')")
        page.set_input_files("#identify-image", str(files[0]))
        page.click("#identify-run")
        page.wait_for_selector("#identify-result .similarity")
        assert page.text_content("#identify-result").startswith("alice")
        page.screenshot(path=str(Path(tmp_path) / "page.png"))
        browser.close()
