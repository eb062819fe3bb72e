"""Fuzzing the service: schemathesis against its OpenAPI schema on a live uvicorn, and hypothesis on uploads.

Whatever arrives, the answer is a 4xx or a success, never a 5xx.
"""

from __future__ import annotations

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from tests.serve.conftest import Server, png

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live_schema(exported, tmp_path_factory):
    model, _ = exported
    with Server("--model", str(model), "--db", str(tmp_path_factory.mktemp("fuzz") / "g.sqlite"),
                "--rate-limit", "0") as server:
        yield schemathesis.openapi.from_url(server.url + "/openapi.json")


def test_no_request_from_the_schema_makes_a_server_error(live_schema):
    """Every operation of the OpenAPI schema, with schemathesis-generated requests against a live uvicorn.

    (Driven through hypothesis directly: schemathesis's pytest plugin does not load under this pytest version.)
    """
    operations = [result.ok() for result in live_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/verify", "/v1/embed", "/v1/identify", "/v1/subjects"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=[not_a_server_error])

        run()


IMAGE_FIELDS = {"/v1/verify": ("image1", "image2"), "/v1/identify": ("image",), "/v1/embed": ("files",)}
VALID = png(np.full((112, 112, 3), 120, np.uint8))


@pytest.fixture(scope="module")
def fuzz_client(exported, tmp_path_factory):
    from fastapi.testclient import TestClient

    from facenas.serve.app import create_app
    from tests.serve.conftest import LOCAL, settings_for

    model, _ = exported
    app = create_app(settings_for(model, tmp_path_factory.mktemp("fuzz2") / "g.sqlite", rate_limit_per_minute=0))
    with TestClient(app, client=LOCAL, raise_server_exceptions=False) as c:
        yield c


@given(path=st.sampled_from(sorted(IMAGE_FIELDS)), blob=st.binary(max_size=4096),
       header=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"BM", b"GIF89a", b"RIFF\0\0\0\0WEBP"]),
       form=st.dictionaries(st.sampled_from(["threshold", "top_k", "landmarks", "landmarks1", "landmarks2", "junk"]),
                            st.text(max_size=40), max_size=3))
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_random_uploads_never_make_a_server_error(fuzz_client, path, blob, header, form):
    files = [(field, ("x.bin", header + blob)) for field in IMAGE_FIELDS[path]]
    if path == "/v1/verify":
        files[1] = ("image2", ("ok.png", VALID))
    r = fuzz_client.post(path, files=files, data=form)
    assert r.status_code < 500, (r.status_code, r.text)
    assert r.status_code == 200 or "error" in r.json()
