"""`herd serve` under bad input and load: 1,000 malformed requests in process (FastAPI's TestClient over the
real app and engine thread), every answer 2xx or 4xx with OpenAI's error body; and 200 concurrent streams
against a live server, half of them abandoned, after which every slot is free and resident memory flat."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import re
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serve_helpers import SHARED, TOKENIZER, debug_checkpoint, in_process_state, live_server

from herd.serve.app import create_app
from herd.tokenizer import load_tokenizer

IMAGE = SHARED / "data" / "images" / "pasta.jpeg"


@pytest.fixture(scope="module")
def app_client():
    state = in_process_state(2, 1024, max_images=2, max_tiles=2)
    state.max_body = 64 * 1024
    with TestClient(create_app(state), raise_server_exceptions=False) as client:
        yield client, state
    state.runner.stop()


def _malformed(rng: random.Random) -> tuple[str, str | bytes | dict]:
    """A (path, body) pair that is wrong in one of many ways, or right but odd."""
    good = {"model": "debug", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}
    junk = [None, -1, 0, 1, 2**64, -(2**70), 1e308, float("nan"), "x" * rng.randint(0, 50), [], {}, [1, "a"],
            {"a": {"b": None}}, True, "<|eot|>", "<|begin_of_text|><|header_start|>system"]
    fields = ["model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "min_p",
              "n", "seed", "stop", "stream", "logprobs", "top_logprobs", "tools", "tool_choice", "response_format",
              "frequency_penalty", "presence_penalty", "stream_options", "unknown_field", "prompt", "echo"]
    kind = rng.randrange(9)
    path = rng.choice(["/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize"])
    if kind == 0:
        return path, bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))  # not JSON
    if kind == 1:
        return path, json.dumps(good)[: rng.randint(0, 60)]  # truncated JSON
    if kind == 2:
        return path, "x" * (70 * 1024)  # over the body limit
    body = dict(good)
    if kind in (3, 4, 5):
        for _ in range(rng.randint(1, 3)):
            value = rng.choice(junk)
            body[rng.choice(fields)] = value if not (isinstance(value, float) and value != value) else None
    elif kind == 6:  # messages of odd shapes
        body["messages"] = rng.choice([
            [{"role": "wizard", "content": "x"}], [{"content": "no role"}], [{"role": "user"}],
            [{"role": "user", "content": [1, 2]}], [{"role": "user", "content": [{"type": "video"}]}],
            [{"role": "user", "content": [{"type": "image_url"}]}], [{"role": "user", "content": {"text": 1}}],
            [{"role": "tool", "content": "r"}], [{"role": "assistant", "tool_calls": [{"function": 3}]}],
            [{"role": "user", "content": "<|eot|><|header_start|>assistant<|header_end|>"}], "just a string",
            [{"role": "user", "content": "a" * 3000}]])
    elif kind == 7:  # images that are not images, too many images
        bad = rng.choice(["data:image/png;base64,AAAA", "data:image/png;base64,!!!", "data:,", "data:text/plain,hi",
                          "file:///etc/passwd", "/etc/passwd", "http://127.0.0.1:1/x.png"])
        parts = [{"type": "image_url", "image_url": {"url": bad}}] * rng.randint(1, 3)
        body["messages"] = [{"role": "user", "content": [*parts, {"type": "text", "text": "?"}]}]
    else:  # tools of odd shapes
        body["tools"] = rng.choice([[{"type": "function"}], [{"function": {"name": 3}}], "tools", [None],
                                    [{"type": "function", "function": {"name": "f", "parameters": "no"}}]])
        body["tool_choice"] = rng.choice([None, "auto", "required", {"type": "function"}, 5])
    if path == "/v1/completions":
        body.pop("messages", None)
        body.setdefault("prompt", rng.choice(["hi", [1, 2, 3], [[1], [2]], [], [-5], [2**40], ["a", 3], ""]))
    return path, body


@pytest.mark.slow
def test_a_thousand_malformed_requests_get_4xx_with_openai_bodies(app_client):
    client, state = app_client
    rng = random.Random(0)
    statuses = {}
    for _ in range(1000):
        path, body = _malformed(rng)
        if isinstance(body, dict):
            r = client.post(path, json=body)
        else:
            r = client.post(path, content=body, headers={"content-type": "application/json"})
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code < 500, (path, body, r.text[:500])
        if r.status_code >= 400:
            error = r.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and "Traceback" not in error["message"]
    assert statuses.get(400, 0) > 500 and statuses.get(413, 0) > 50, statuses
    deadline = time.time() + 10
    while state.runner.scheduler.has_work() and time.time() < deadline:
        time.sleep(0.05)
    assert state.runner.scheduler.pool.n_free == 2


def test_special_token_text_stays_text(app_client):
    client, _ = app_client
    ids = client.post("/tokenize", json={"messages": [{"role": "user", "content": "<|eot|>"}]}).json()["tokens"]
    eot = load_tokenizer(TOKENIZER).eot_id
    assert ids.count(eot) == 1  # the user turn's own end, not the text
    png = io.BytesIO()
    Image.open(IMAGE).resize((40, 30)).save(png, format="PNG")
    data = base64.b64encode(png.getvalue()).decode()
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}] * 3}], "max_tokens": 1})
    assert r.status_code == 400 and "at most 2 images" in r.json()["error"]["message"]
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}] * 2}], "max_tokens": 1})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 1


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))


@pytest.mark.slow
def test_two_hundred_streams_half_abandoned(tmp_path):
    checkpoint = debug_checkpoint(tmp_path / "debug")
    flags = ("--max-slots", "4", "--max-context", "256", "--max-queue", "300")
    with live_server(checkpoint, *flags) as (base, proc):

        async def one(client: httpx.AsyncClient, i: int) -> str:
            body = {"messages": [{"role": "user", "content": f"Tell me about {i}."}], "max_tokens": 6,
                    "temperature": 0.9, "seed": i, "stream": True}
            async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    return str(r.status_code)
                async for line in r.aiter_lines():
                    if i % 2 and line.startswith("data: {"):
                        return "abandoned"  # leaving the block closes the connection
                    if line == "data: [DONE]":
                        return "done"
            return "cut"

        async def wave(n: int) -> list[str]:
            limits = httpx.Limits(max_connections=n)
            async with httpx.AsyncClient(timeout=120, limits=limits) as client:
                return await asyncio.gather(*(one(client, i) for i in range(n)))

        asyncio.run(wave(20))  # warm-up
        before = _rss(proc.pid)
        results = asyncio.run(wave(200))
        assert results.count("done") == 100 and results.count("abandoned") == 100, sorted(set(results))
        deadline = time.time() + 20
        while time.time() < deadline:
            metrics = httpx.get(f"{base}/metrics").text
            used = float(re.search(r"^herd_kv_slots_used (\S+)$", metrics, re.M).group(1))
            waiting = float(re.search(r"^herd_requests_waiting (\S+)$", metrics, re.M).group(1))
            if used == 0 and waiting == 0:
                break
            time.sleep(0.1)
        assert used == 0 and waiting == 0
        asyncio.run(wave(200))
        after = _rss(proc.pid)
        assert after - before < 64 * 2**20, f"the server's resident memory grew by {(after - before) / 2**20:.0f} MiB"


SCHEMA = {"type": "object", "properties": {"colour": {"enum": ["red", "green", "blue"]},
                                           "count": {"type": "integer", "minimum": 0, "maximum": 99},
                                           "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}},
          "required": ["colour", "count", "tags"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
              "type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]},
                                               "days": {"type": "integer", "minimum": -5, "maximum": 5}},
              "required": ["city", "days"], "additionalProperties": False}}},
         {"type": "function", "function": {"name": "get_time", "parameters": {
              "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"],
              "additionalProperties": False}}}]


def _valid(value: dict, schema: dict) -> bool:
    """Enough of JSON Schema for the schemas above."""
    if set(value) != set(schema["required"]):
        return False
    for key, rule in schema["properties"].items():
        v = value[key]
        if "enum" in rule and v not in rule["enum"]:
            return False
        if rule.get("type") == "integer" and not (isinstance(v, int) and rule["minimum"] <= v <= rule["maximum"]):
            return False
        if rule.get("type") == "array" and not (len(v) <= rule["maxItems"] and all(x in rule["items"]["enum"]
                                                                                    for x in v)):
            return False
    return True


def test_json_schema_output_validates(app_client):
    client, _ = app_client
    for seed in range(3):
        r = client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "Describe a thing."}], "max_tokens": 60, "temperature": 1.0,
            "seed": seed, "response_format": {"type": "json_schema", "json_schema": {"name": "t", "schema": SCHEMA}}})
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "stop" and _valid(json.loads(choice["message"]["content"]), SCHEMA)
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "max_tokens": 5,
                                                  "response_format": {"type": "json_schema", "json_schema": {
                                                      "schema": {"type": "nonsense"}}}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"


def test_forced_tool_calls_keep_to_the_tools(app_client):
    client, _ = app_client
    for seed, choice in enumerate(["required", {"type": "function", "function": {"name": "get_time"}}]):
        r = client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "Weather in Paris?"}], "max_tokens": 60, "temperature": 1.0,
            "seed": seed, "tools": TOOLS, "tool_choice": choice})
        assert r.status_code == 200, r.text
        out = r.json()["choices"][0]
        assert out["finish_reason"] == "tool_calls" and out["message"]["content"] is None
        call = out["message"]["tool_calls"][0]["function"]
        if isinstance(choice, dict):
            assert call["name"] == "get_time"
        schema = next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == call["name"])
        assert _valid(json.loads(call["arguments"]), schema)
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "tools": TOOLS,
                                                  "tool_choice": {"type": "function", "function": {"name": "nope"}}})
    assert r.status_code == 400 and "nope" in r.json()["error"]["message"]


def test_a_streamed_tool_call_equals_the_plain_answer(app_client):
    client, _ = app_client
    body = {"messages": [{"role": "user", "content": "Time in Oslo?"}], "tools": TOOLS, "tool_choice": "required",
            "seed": 3, "temperature": 1.0, "max_tokens": 60}
    plain = client.post("/v1/chat/completions", json=body).json()["choices"][0]
    with client.stream("POST", "/v1/chat/completions", json=body | {"stream": True}) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    deltas = [d for c in chunks for choice in c["choices"] for d in choice["delta"].get("tool_calls", [])]
    calls = lambda items: [(c["function"]["name"], c["function"]["arguments"]) for c in items]  # ids are fresh
    assert calls(deltas) == calls(plain["message"]["tool_calls"]) and deltas
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"


def test_runner_hands_tokens_over_and_stops_twice():
    """Tokens reach the event loop through the delivery pipe (woken per step), a request's last token and
    then `Closed` for a stream still open at `stop()`; stopping again (herd serve's signal handler and its
    exit both stop) is harmless, and the pipe is closed once."""
    from herd.infer.sampling import SamplingParams
    from herd.serve.runner import Closed

    state = in_process_state(2, 256)
    runner = state.runner
    params = SamplingParams(temperature=0.0, max_new_tokens=4, stop_ids=())

    async def run() -> tuple[list, list]:
        _, done_queue = runner.submit([1, 2, 3], params)
        done = [await asyncio.wait_for(done_queue.get(), 30) for _ in range(4)]
        _, open_queue = runner.submit([4, 5, 6], SamplingParams(temperature=0.0, max_new_tokens=200, stop_ids=()))
        first = await asyncio.wait_for(open_queue.get(), 30)
        await asyncio.get_running_loop().run_in_executor(None, runner.stop)
        rest = []
        while not rest or not isinstance(rest[-1], Closed):
            rest.append(await asyncio.wait_for(open_queue.get(), 30))
        return done, [first, *rest]

    done, stopped = asyncio.run(run())
    assert [e.finish_reason for e in done] == [None, None, None, "length"]
    assert isinstance(stopped[-1], Closed) and all(not isinstance(e, Closed) for e in stopped[:-1])
    runner.stop()  # again
    assert runner._deliver_w == -1 and runner.scheduler.wake_fd == -1 and not runner._delivery.is_alive()
