"""`herd serve --guard`: Llama Guard 4 screening chat requests and replies. In process over the real app, engine
threads and a random Guard-shaped model (thresholds 0 and 1 make its decision certain), and end to end through
`herd serve --guard` and the official client."""

from __future__ import annotations

import base64
import json
from contextlib import contextmanager

import httpx
import pytest
from fastapi.testclient import TestClient
from serve_helpers import SHARED, debug_checkpoint, in_process_screen, in_process_state, live_server

from herd.moderation import guard_conversation
from herd.serve.app import create_app

ASK = {"model": "debug", "messages": [{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": "How do I make a bomb?"}],
       "max_tokens": 12, "temperature": 0}


@pytest.fixture(scope="module")
def app():
    state = in_process_state(2, 1024)
    with TestClient(create_app(state), raise_server_exceptions=False) as client:
        yield client, state
    state.runner.stop()


def _events(response: httpx.Response) -> list[dict]:
    lines = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


@contextmanager
def _screened(state, **settings):
    """The app's state with a Guard screen of these settings, for the block."""
    state.screen = in_process_screen(state, **settings)
    try:
        yield
    finally:
        state.screen.runner.stop()
        state.screen = None


def test_a_passing_guard_changes_nothing(app) -> None:
    client, state = app
    state.screen = None
    plain = client.post("/v1/chat/completions", json=ASK).json()
    with _screened(state, threshold=1.0, interval=3):
        guarded = client.post("/v1/chat/completions", json=ASK).json()
        streamed = _events(client.post("/v1/chat/completions", json={**ASK, "stream": True}))
    assert guarded["choices"] == plain["choices"] and "guard" not in guarded
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in streamed)
    assert text == plain["choices"][0]["message"]["content"]
    assert streamed[-1]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    metrics = client.get("/metrics").text
    assert 'herd_guard_checks_total{outcome="passed",stage="input"} 2.0' in metrics
    assert 'herd_guard_checks_total{outcome="passed",stage="output"}' in metrics


def test_a_flagged_request_is_refused_before_generation(app) -> None:
    client, state = app
    with _screened(state, stages=frozenset({"input"}), threshold=0.0):
        answer = client.post("/v1/chat/completions", json={**ASK, "n": 2}).json()
        streamed = _events(client.post("/v1/chat/completions", json={**ASK, "stream": True,
                                                                     "stream_options": {"include_usage": True}}))
    assert [c["finish_reason"] for c in answer["choices"]] == ["content_filter"] * 2
    assert answer["choices"][0]["message"]["content"].startswith("I can't help with that: the request was flagged")
    assert answer["usage"]["completion_tokens"] == 0
    assert answer["guard"]["stage"] == "input" and answer["guard"]["flagged"] and answer["guard"]["model"] == "guard"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in streamed if e["choices"])
    assert text == answer["choices"][0]["message"]["content"]
    assert streamed[-2]["choices"][0]["finish_reason"] == "content_filter" and streamed[-1]["usage"]


def test_a_flagged_reply_is_replaced_and_never_streamed(app) -> None:
    client, state = app
    with _screened(state, stages=frozenset({"output"}), threshold=0.0, interval=4):
        answer = client.post("/v1/chat/completions", json=ASK).json()
        streamed = _events(client.post("/v1/chat/completions", json={**ASK, "stream": True}))
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "content_filter" and answer["guard"]["stage"] == "output"
    assert choice["message"]["content"].startswith("I can't help with that: the response was flagged")
    assert answer["usage"]["completion_tokens"] > 0  # the reply was generated, then judged
    deltas = [e["choices"][0]["delta"] for e in streamed]
    assert [d.get("content") for d in deltas if d.get("content")] == [choice["message"]["content"]]
    last = streamed[-1]
    assert last["choices"][0]["finish_reason"] == "content_filter" and last["guard"]["stage"] == "output"


@pytest.mark.slow
def test_herd_serve_guard_end_to_end(tmp_path) -> None:
    """`herd serve --guard M` with the official client: a flagged request comes back as the refusal, with
    finish_reason content_filter; a bad --guard-exclude code keeps the server unhealthy with the reason."""
    openai = pytest.importorskip("openai")
    checkpoint = debug_checkpoint(tmp_path / "model")
    guard = debug_checkpoint(tmp_path / "guard")
    with live_server(checkpoint, "--max-slots", "2", "--max-context", "512", "--guard", str(guard),
                     "--guard-threshold", "0", "--guard-exclude", "S6") as (base, _):
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="none")
        reply = client.chat.completions.create(model="model", messages=ASK["messages"], max_tokens=8)
        assert reply.choices[0].finish_reason == "content_filter"
        assert reply.choices[0].message.content.startswith("I can't help with that")
        assert reply.model_extra["guard"]["stage"] == "input"
        stream = client.chat.completions.create(model="model", messages=ASK["messages"], max_tokens=8, stream=True)
        reasons = [c.choices[0].finish_reason for c in stream if c.choices]
        assert reasons[-1] == "content_filter"


def test_the_guard_sees_the_requests_image(app) -> None:
    """An image in the chat request reaches the Guard's prompt: its tiles and S14 dropped, as the template does."""
    client, state = app
    data = base64.b64encode((SHARED / "data" / "images" / "dog.jpg").read_bytes()).decode()
    image = {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{data}"}}
    ask = {**ASK, "messages": [{"role": "user", "content": [image, {"type": "text", "text": "What is this?"}]}]}
    with _screened(state, stages=frozenset({"input"}), threshold=0.0):
        prompt, images = state.screen._prompt(guard_conversation(ask["messages"]))
        vision = state.screen.served.vision
        answer = client.post("/v1/chat/completions", json=ask).json()
    assert len(images) == 1 and "S14" not in prompt.categories
    assert prompt.ids.count(vision.config.patch_token_id) == images[0].shape[0] * vision.tokens_per_tile
    assert answer["choices"][0]["finish_reason"] == "content_filter" and "S14" not in answer["guard"]["categories"]
