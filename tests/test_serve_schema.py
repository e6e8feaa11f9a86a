"""schemathesis over `herd serve`'s own OpenAPI schema, in process: whatever it generates for each route, the
server answers without a 5xx."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

import herd
from herd.config import preset
from herd.infer import EagerStep, KVPool, Scheduler
from herd.serve.app import State, create_app
from herd.serve.openai import Served
from herd.serve.runner import Runner
from herd.tokenizer import load_tokenizer

TOKENIZER = Path(__file__).resolve().parents[1] / ".." / "shared" / "llama4" / "tokenizer.model"


@pytest.fixture(scope="module")
def api():
    assert TOKENIZER.exists(), f"the shared tokenizer is missing: {TOKENIZER} (CI keeps ../shared beside the repo)"
    model = herd.build(preset("debug"), seed=0)
    tokenizer = load_tokenizer(TOKENIZER)
    scheduler = Scheduler(model, KVPool(model.config, 2, 96, torch.float32), EagerStep(model), max_queue=16)
    state = State()
    state.served = Served(tokenizer, "debug", scheduler.limit, tuple(tokenizer.stop_ids), model.vision,
                          max_images=1, max_tiles=1)
    state.runner = Runner(scheduler)
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
            response = case.call()
            assert response.status_code < 500, (case.method, case.path, case.body, response.text[:300])

        no_5xx()
