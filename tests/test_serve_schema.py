"""schemathesis over `herd serve`'s own OpenAPI schema, in process: whatever it generates for each route, the
server answers without a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from serve_helpers import in_process_state

from herd.serve.app import create_app


@pytest.fixture(scope="module")
def api():
    state = in_process_state(2, 96, max_images=1, max_tiles=1)
    app = create_app(state)
    with TestClient(app):
        yield schemathesis.openapi.from_asgi("/openapi.json", app)
    state.runner.stop()


@pytest.mark.slow
def test_no_input_gets_a_server_error(api):
    operations = [result.ok() for result in api.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize"}
    for operation in operations:

        @given(operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def no_5xx(case):
            # a valid batch of 24 prompts x 16 tokens through 2 eager slots takes ~10 s, schemathesis's
            # default read timeout: the check is the status, so give the answer time to come
            response = case.call(timeout=120)
            assert response.status_code < 500, (case.method, case.path, case.body, response.text[:300])

        no_5xx()
