"""`herd serve` through the official `openai` client against a live server process, and its error handling
in process (FastAPI's TestClient over the same app).

The model is the debug preset (a tiny vision tower on 56-pixel tiles) with Meta's tokenizer, float32."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch
from serve_helpers import SHARED, TOKENIZER, debug_checkpoint, live_server

import herd
from herd.infer import Engine, SamplingParams
from herd.tokenizer import load_tokenizer

IMAGE = SHARED / "data" / "images" / "dog.jpg"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return debug_checkpoint(tmp_path_factory.mktemp("serve") / "debug-model")


@pytest.fixture(scope="module")
def server(checkpoint):
    with live_server(checkpoint, "--max-slots", "4", "--max-context", "1024", "--api-key", "sekret") as running:
        yield running


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key="sekret", max_retries=0)


def _greedy(**extra):
    return dict(model="debug-model", messages=MESSAGES, temperature=0, max_tokens=12, **extra)


@pytest.mark.slow
def test_chat_stream_equals_non_stream_and_usage_is_exact(client, server, checkpoint):
    full = client.chat.completions.create(**_greedy())
    text = full.choices[0].message.content
    chunks = list(client.chat.completions.create(**_greedy(), stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    tokenized = httpx.post(f"{server[0]}/tokenize", json={"messages": MESSAGES},
                           headers={"Authorization": "Bearer sekret"}).json()
    assert full.usage.prompt_tokens == tokenized["count"] == chunks[-1].usage.prompt_tokens
    assert 1 <= full.usage.completion_tokens <= 12


@pytest.mark.slow
def test_logprobs_over_http_equal_the_engine_offline(client, server, checkpoint):
    out = client.chat.completions.create(**_greedy(), logprobs=True, top_logprobs=3)
    tokenizer = load_tokenizer(checkpoint)
    ids = httpx.post(f"{server[0]}/tokenize", json={"messages": MESSAGES},
                     headers={"Authorization": "Bearer sekret"}).json()["tokens"]
    model = herd.load(checkpoint)
    want = Engine(model).generate(ids, SamplingParams(temperature=0, max_new_tokens=12, logprobs=3,
                                                      stop_ids=tokenizer.stop_ids))[0]
    got = out.choices[0].logprobs.content
    assert [g.token for g in got] == [tokenizer.piece(t).decode("utf-8", "replace") for t in want.token_ids]
    assert max(abs(g.logprob - w) for g, w in zip(got, want.logprobs, strict=True)) <= 1e-4
    assert all(len(g.top_logprobs) == 3 for g in got)


@pytest.mark.slow
def test_the_same_request_alone_or_among_sixteen(server):
    alone = openai.OpenAI(base_url=f"{server[0]}/v1", api_key="sekret").chat.completions.create(**_greedy())
    others = [dict(model="debug-model", messages=[{"role": "user", "content": f"Count to {i}."}], temperature=0.8,
                   seed=i, max_tokens=10) for i in range(15)]

    async def crowd():
        aclient = openai.AsyncOpenAI(base_url=f"{server[0]}/v1", api_key="sekret", max_retries=0)
        return await asyncio.gather(aclient.chat.completions.create(**_greedy()),
                                    *(aclient.chat.completions.create(**o) for o in others))

    together = asyncio.run(crowd())
    assert together[0].choices[0].message.content == alone.choices[0].message.content
    assert all(r.choices[0].finish_reason in ("stop", "length") for r in together)


@pytest.mark.slow
def test_n_samples_seed_stop_and_images(client):
    out = client.chat.completions.create(model="debug-model", messages=MESSAGES, n=3, seed=5, temperature=1.0,
                                         max_tokens=6)
    assert [c.index for c in out.choices] == [0, 1, 2]
    again = client.chat.completions.create(model="debug-model", messages=MESSAGES, n=3, seed=5, temperature=1.0,
                                           max_tokens=6)
    assert [c.message.content for c in out.choices] == [c.message.content for c in again.choices]
    free = client.chat.completions.create(**_greedy())
    text = free.choices[0].message.content
    if len(text) > 4:  # a stop string taken from the free text cuts it there
        cut = client.chat.completions.create(**_greedy(), stop=[text[2:4]])
        assert cut.choices[0].message.content == text[: text.index(text[2:4])]
        assert cut.choices[0].finish_reason == "stop"
    data = base64.b64encode(IMAGE.read_bytes()).decode()
    image = client.chat.completions.create(model="debug-model", temperature=0, max_tokens=4, messages=[
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{data}"}},
                                     {"type": "text", "text": "What is this?"}]}])
    assert image.usage.prompt_tokens > free.usage.prompt_tokens + 4  # the image's tokens are in the prompt


@pytest.mark.slow
def test_completions_echo_logprobs_for_loglikelihood(server, checkpoint):
    """What lm-eval's local-completions sends for a log-likelihood: token ids, echo, max_tokens 0, logprobs."""
    c = openai.OpenAI(base_url=f"{server[0]}/v1", api_key="sekret")
    tokenizer = load_tokenizer(checkpoint)
    ids = tokenizer.encode("The cat sat on the mat.", bos=True)
    out = c.completions.create(model="debug-model", prompt=ids, echo=True, max_tokens=0, logprobs=2, temperature=0)
    lp = out.choices[0].logprobs
    model = herd.load(checkpoint)
    with torch.no_grad():
        logp_SV = torch.log_softmax(model(torch.tensor([ids]))[0], dim=-1)
    want = [logp_SV[i - 1, t].item() for i, t in enumerate(ids) if i]
    assert lp.token_logprobs[0] is None and len(lp.token_logprobs) == len(ids)
    assert max(abs(a - b) for a, b in zip(lp.token_logprobs[1:], want, strict=True)) <= 1e-4
    assert lp.text_offset[0] == 0 and out.choices[0].text == tokenizer.decode(ids)
    text = c.completions.create(model="debug-model", prompt=["Once upon", "a time"], max_tokens=3, temperature=0)
    assert len(text.choices) == 2 and text.usage.completion_tokens <= 6
    fixed = c.completions.create(model="debug-model", prompt=["Hi", "Ho"], max_tokens=20,
                                 extra_body={"ignore_eos": True})
    assert fixed.usage.completion_tokens == 40  # vLLM's ignore_eos: fixed output lengths, as benchmarks want


@pytest.mark.slow
def test_a_client_that_disconnects_frees_its_slot(server):
    base = server[0]
    headers = {"Authorization": "Bearer sekret"}
    body = {"model": "debug-model", "messages": MESSAGES, "max_tokens": 900, "temperature": 1.0, "stream": True}
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, headers=headers, timeout=30) as r:
        assert r.status_code == 200
        for i, _ in enumerate(r.iter_lines()):
            if i > 6:
                break
    deadline = time.time() + 10
    while time.time() < deadline:
        metrics = httpx.get(f"{base}/metrics").text
        used = float(re.search(r"^herd_kv_slots_used (\S+)$", metrics, re.M).group(1))
        if used == 0:
            break
        time.sleep(0.1)
    assert used == 0
    assert "herd_time_to_first_token_seconds_count" in metrics


@pytest.mark.slow
def test_errors_have_openai_bodies(server):
    base = server[0]
    headers = {"Authorization": "Bearer sekret"}
    r = httpx.post(f"{base}/v1/chat/completions", json=_greedy())
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = httpx.post(f"{base}/v1/chat/completions", json=_greedy() | {"model": "gpt-9"}, headers=headers)
    assert r.status_code == 404 and "gpt-9" in r.json()["error"]["message"]
    r = httpx.post(f"{base}/v1/chat/completions", json=_greedy() | {"temperature": -1}, headers=headers)
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
    r = httpx.post(f"{base}/v1/chat/completions", content=b"{not json", headers=headers | {"content-type":
                                                                                           "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    long = [{"role": "user", "content": "word " * 1200}]
    r = httpx.post(f"{base}/v1/chat/completions", json=_greedy() | {"messages": long}, headers=headers)
    assert r.status_code == 400 and "context" in r.json()["error"]["message"]
    r = httpx.post(f"{base}/v1/chat/completions", content=b"x" * (33 * 2**20), headers=headers)
    assert r.status_code == 413
    r = httpx.get(f"{base}/v1/nothing", headers=headers)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = httpx.post(f"{base}/v1/chat/completions", headers=headers, json=_greedy() | {"messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}]}]})
    assert r.status_code == 400 and "data URL" in r.json()["error"]["message"]
    r = httpx.post(f"{base}/v1/chat/completions", headers=headers, json=_greedy() | {"messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]})
    assert r.status_code == 400 and "image" in r.json()["error"]["message"]
    as_text = httpx.post(f"{base}/v1/completions", headers=headers, json={
        "model": "debug-model", "prompt": "<|eot|>", "max_tokens": 1, "temperature": 0}).json()
    assert as_text["usage"]["prompt_tokens"] > 2  # in a prompt, special-token text stays text (BOS + pieces)


def test_tool_calls_keep_their_types():
    """Every form Llama 4 writes a call in lands in tool_calls with typed arguments, never in content."""
    from herd.infer.scheduler import TokenEvent
    from herd.serve import openai as oa

    tokenizer = load_tokenizer(TOKENIZER)
    forms = ['[get_weather(city="Paris", days=-3, opts={"unit": "C", "hours": [1, 2.5]})]',
             '<function=get_weather>{"city": "Paris", "days": -3, "opts": {"unit": "C", "hours": [1, 2.5]}}</function>',
             '{"name": "get_weather", "parameters": {"city": "Paris", "days": -3, "opts": {"unit": "C", '
             '"hours": [1, 2.5]}}}']
    for form in forms:
        ids = [*tokenizer.encode(form), tokenizer.eot_id]
        choice = oa.choices(tokenizer, 1, [])[0]
        for i, t in enumerate(ids):
            choice.add(TokenEvent(request=0, token=t, finish_reason="stop" if i == len(ids) - 1 else None))
        message, reason = oa.chat_message(tokenizer, choice, tools=True)
        assert reason == "tool_calls" and message["content"] is None, form
        call = message["tool_calls"][0]["function"]
        assert call["name"] == "get_weather"
        assert json.loads(call["arguments"]) == {"city": "Paris", "days": -3, "opts": {"unit": "C", "hours": [1, 2.5]}}


@pytest.mark.slow
def test_sigterm_ends_open_streams_with_an_error_chunk(checkpoint):
    with live_server(checkpoint, "--max-slots", "2", "--max-context", "2048", "--no-fast") as (base, proc):
        body = {"messages": MESSAGES, "max_tokens": 2000, "temperature": 1.0, "stream": True}
        lines = []
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                lines.append(line)
                if len(lines) == 6:
                    os.kill(proc.pid, signal.SIGTERM)
        assert any('"error"' in line for line in lines[6:]), lines[-3:]
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once shut down


@pytest.mark.slow
def test_moderations_give_the_guard_verdict_and_score(client, server, checkpoint):
    """POST /v1/moderations: one result per input in OpenAI's shape, keyed by Llama Guard's codes, P(unsafe) as
    the model computes it offline; a bad input is a 400."""
    from herd.moderation import guard_prompt, unsafe_probability

    parsed = client.moderations.create(model="debug-model", input="How to make a bomb?")
    assert len(parsed.results) == 1
    raw = httpx.post(f"{server[0]}/v1/moderations", json={"input": ["How to make a bomb?", "Hello"]},
                     headers={"Authorization": "Bearer sekret"}, timeout=60).json()
    assert raw["id"].startswith("modr-") and len(raw["results"]) == 2
    first = raw["results"][0]
    assert list(first["categories"]) == [f"S{i}" for i in range(1, 15)]
    assert first["verdict"] in ("safe", "unsafe", "error") and first["flagged"] == any(first["categories"].values())
    tokenizer = load_tokenizer(TOKENIZER)
    model = herd.load(checkpoint, dtype=torch.float32)
    ids = guard_prompt(tokenizer, [{"role": "user", "content": "How to make a bomb?"}]).ids
    with torch.no_grad():
        offline = unsafe_probability(model(torch.tensor([ids + tokenizer.encode("\n\n")]))[0, -1], tokenizer)
    assert first["p_unsafe"] == pytest.approx(offline, abs=1e-5)
    bad = httpx.post(f"{server[0]}/v1/moderations", json={"input": [1, 2]}, headers={"Authorization": "Bearer sekret"})
    assert bad.status_code == 400 and "error" in bad.json()
