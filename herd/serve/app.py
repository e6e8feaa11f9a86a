"""The HTTP app of `herd serve` (FastAPI): routes, authentication, errors and metrics around the engine
thread. The OpenAI translation itself is in `herd.serve.openai`.

- `GET /`: a chat page (`chat.html`, plain HTML and JavaScript: streaming replies, image upload, a system
  prompt, a stop button).
- `POST /v1/chat/completions`, `POST /v1/completions` (streamed as server-sent events when asked),
  `POST /v1/moderations` (Llama Guard 4: the verdict and P(unsafe) in OpenAI's moderation shape),
  `GET /v1/models`, `GET /health` (503 while the model loads), `GET /metrics` (Prometheus),
  `POST /tokenize`, `POST /detokenize`, `GET /tokenizer_info` (vLLM's field names; lm-eval's remote
  tokenizer uses them).
- Every error is OpenAI's body `{"error": {"message", "type", "param", "code"}}`: 400 for invalid values
  (validation errors included, never a stack trace), 401 without the API key, 404 for an unknown model
  or route, 413 past the body limit, 429 with Retry-After when the queue is full, 503 while loading.
- A client that disconnects aborts its request: streams through the cancelled response, plain requests
  through a disconnect check while they wait.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from herd import chat
from herd.infer.scheduler import QueueFull, TokenEvent
from herd.moderation import Judgement, judged_ids
from herd.serve import openai as oa
from herd.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    ModerationRequest,
    TokenizeRequest,
    error_body,
)
from herd.serve.runner import Closed, Runner
from herd.serve.screen import GuardUnavailable, Screen, judge

log = logging.getLogger("herd")


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.type, self.param, self.headers = status, type_, param, headers


class Metrics:
    """Prometheus metrics in a registry of the app's own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.running = Gauge("herd_requests_running", "Sequences holding a KV slot", registry=r)
        self.waiting = Gauge("herd_requests_waiting", "Requests waiting for a slot", registry=r)
        self.slots_used = Gauge("herd_kv_slots_used", "KV slots in use", registry=r)
        self.slots_total = Gauge("herd_kv_slots_total", "KV slots in the pool", registry=r)
        buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
        self.ttft = Histogram("herd_time_to_first_token_seconds", "Time to first token", buckets=buckets, registry=r)
        self.itl = Histogram("herd_inter_token_latency_seconds", "Time between tokens of a sequence",
                             buckets=buckets, registry=r)
        self.e2e = Histogram("herd_e2e_request_latency_seconds", "Request latency", buckets=buckets, registry=r)
        self.prompt_tokens = Counter("herd_prompt_tokens", "Prompt tokens of finished requests", registry=r)
        self.generation_tokens = Counter("herd_generation_tokens", "Generated tokens", registry=r)
        self.requests = Counter("herd_requests", "Requests answered, by status", ["status"], registry=r)
        self.guard_checks = Counter("herd_guard_checks", "Chat turns the guard model judged, by stage and outcome",
                                    ["stage", "outcome"], registry=r)


@dataclass
class State:
    """What the routes share: the model once loaded, the engine thread, settings and metrics."""

    served: oa.Served | None = None
    runner: Runner | None = None
    api_key: str | None = None
    max_body: int = 32 * 2**20
    metrics: Metrics = field(default_factory=Metrics)
    load_error: str | None = None
    screen: Screen | None = None  # `--guard`: Llama Guard 4 screening chat

    def runners(self) -> list[Runner]:
        """The engine threads running: the served model's, and the guard's with `--guard`."""
        return [r for r in (self.runner, self.screen.runner if self.screen else None) if r is not None]

    def ready(self) -> tuple[oa.Served, Runner]:
        if self.served is None or self.runner is None:
            raise ApiError(503, self.load_error or "the model is loading", "service_unavailable")
        return self.served, self.runner


_OPEN = ("/health", "/metrics", "/", "/docs", "/openapi.json")


class Guard:
    """The body limit, then the API key, as plain ASGI middleware: a request it lets through, and its
    response, pass untouched. (Starlette's `@app.middleware("http")` would carry every streamed chunk
    through a memory stream and a task switch of its own: ~0.1 ms a token on a busy event loop.)"""

    def __init__(self, app: ASGIApp, state: State) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refused = self.refusal(Headers(scope=scope), scope["path"])
            if refused is not None:
                await _error(refused)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, headers: Headers, path: str) -> ApiError | None:
        state = self.state
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > state.max_body):
            return ApiError(413, f"the request body exceeds {state.max_body:,} bytes")
        authorized = headers.get("authorization", "") == f"Bearer {state.api_key}"
        if state.api_key and path not in _OPEN and not authorized:
            return ApiError(401, "a valid API key is needed (Authorization: Bearer KEY)", "authentication_error")
        return None


def create_app(state: State) -> FastAPI:
    app = FastAPI(title="herd serve", description="An OpenAI-compatible server for Llama 4", version="1")
    app.state.herd = state

    app.add_middleware(Guard, state=state)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return _error(err)

    @app.exception_handler(oa.BadRequest)
    async def bad_request(request: Request, err: oa.BadRequest) -> JSONResponse:
        return _error(ApiError(400, str(err), param=err.param))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid request")
        return _error(ApiError(400, message, param=where or None))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return _error(ApiError(err.status_code, str(err.detail), kind))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("herd serve: unexpected error on %s", request.url.path)
        return _error(ApiError(500, "internal server error", "server_error"))

    page = (Path(__file__).with_name("chat.html")).read_text()

    @app.get("/", include_in_schema=False)
    async def chat_page() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> Response:
        state.ready()
        return Response(status_code=200)

    @app.get("/metrics")
    async def metrics() -> Response:
        m = state.metrics
        if state.runner is not None:
            scheduler = state.runner.scheduler
            m.running.set(scheduler.n_running)
            m.waiting.set(scheduler.n_waiting)
            m.slots_used.set(scheduler.pool.slots - scheduler.pool.n_free)
            m.slots_total.set(scheduler.pool.slots)
        return Response(generate_latest(m.registry), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        served, _ = state.ready()
        return {"object": "list", "data": [{"id": served.name, "object": "model", "created": served.created,
                                            "owned_by": "herd", "max_model_len": served.context}]}

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        served, _ = state.ready()
        _check_model(served, body.model)
        if (body.prompt is None) == (body.messages is None):
            raise ApiError(400, "give exactly one of prompt and messages")
        if body.messages is not None:
            try:
                ids = chat.render(served.tokenizer, body.messages, add_generation_prompt=body.add_generation_prompt,
                                  image_tokens=lambda part: []).ids
            except Exception as err:  # a malformed message is the client's to fix
                raise ApiError(400, f"invalid messages: {err}", param="messages") from None
        else:
            ids = [served.tokenizer.bos_id] if body.add_special_tokens else []
            ids += oa.encode_with_specials(served.tokenizer, body.prompt)
        return {"tokens": ids, "count": len(ids), "max_model_len": served.context}

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> dict[str, Any]:
        served, _ = state.ready()
        return oa.tokenizer_info(served.tokenizer, served.context)

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> dict[str, Any]:
        served, _ = state.ready()
        _check_model(served, body.model)
        bad = [t for t in body.tokens if not 0 <= t < served.tokenizer.n_words]
        if bad:
            raise ApiError(400, f"token ids {bad[:5]} outside the vocabulary", param="tokens")
        return {"prompt": served.tokenizer.decode(body.tokens)}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        served, runner = state.ready()
        _check_model(served, body.model)
        ids, images = await run_in_threadpool(oa.chat_prompt, body, served)
        constraint = await run_in_threadpool(oa.chat_constraint, body, served)
        top = (body.top_logprobs or 0) if body.logprobs else None
        params = oa.sampling(body, served, len(ids), body.max_completion_tokens or body.max_tokens, top)
        meta = {"id": oa.new_id("chatcmpl"), "created": int(time.time()), "model": served.name}
        screen = state.screen
        if screen is not None and "input" in screen.stages:
            judgement = await _guarded(state, screen.check(body.messages), "input")
            if judgement.flagged:
                return _refused(screen, judgement, meta, body, len(ids))
        output_screen = screen if screen is not None and "output" in screen.stages else None
        stop = oa.stop_strings(body.stop)
        stop_fn = oa.stop_callback(served.tokenizer, stop, body.n)
        request_id, queue = _submit(state, runner, ids, params, images, stop_fn, body.n, constraint)
        outputs = oa.choices(served.tokenizer, body.n, stop)
        tools = bool(body.tools) and body.tool_choice != "none"
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _sse(_chat_stream(state, runner, request_id, queue, outputs, meta, len(ids), tools, body.logprobs,
                                     include_usage, body.messages if output_screen else None))
        await _collect(state, runner, request, request_id, queue, outputs, len(ids))
        messages = [oa.chat_message(served.tokenizer, c, tools) for c in outputs]
        flags: list[Judgement | None] = [None] * len(outputs)
        if output_screen is not None:
            flags = list(await asyncio.gather(*(_guarded(state, output_screen.check(body.messages, m), "output")
                                                for m, _ in messages)))
        result, guard = [], None
        for c, (message, reason), flag in zip(outputs, messages, flags, strict=True):
            choice: dict[str, Any] = {"index": c.index, "message": message, "finish_reason": reason, "logprobs": None}
            if flag is not None and flag.flagged:
                choice["message"] = {"role": "assistant", "content": output_screen.refusal_text(flag, "output")}
                choice["finish_reason"], guard = "content_filter", output_screen.report(flag, "output")
            elif body.logprobs:
                choice["logprobs"] = {"content": [oa.chat_logprob(served.tokenizer, e) for e in c.events]}
            result.append(choice)
        generated = sum(len(c.token_ids) for c in outputs)
        return JSONResponse({**meta, "object": "chat.completion", "choices": result,
                             "usage": oa.usage(len(ids), generated), **({"guard": guard} if guard else {})})

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        served, runner = state.ready()
        _check_model(served, body.model)
        if body.suffix:
            raise ApiError(400, "suffix is not supported", param="suffix")
        prompts = oa.completion_prompts(body, served.tokenizer)
        for ids in prompts:  # before any scoring forward: ids in the vocabulary, a prompt that fits the context
            try:
                runner.scheduler.check(ids)
            except ValueError as err:
                raise ApiError(400, str(err), param="prompt") from None
        stop = oa.stop_strings(body.stop)
        params = [oa.sampling(body, served, len(ids), body.max_tokens, body.logprobs) for ids in prompts]
        meta = {"id": oa.new_id("cmpl"), "created": int(time.time()), "model": served.name}
        if body.stream:
            if body.echo or len(prompts) > 1:
                raise ApiError(400, "streamed completions take one prompt and no echo", param="stream")
            if body.max_tokens == 0:
                raise ApiError(400, "a streamed completion needs max_tokens >= 1", param="max_tokens")
            request_id, queue = _submit(state, runner, prompts[0], params[0], None,
                                        oa.stop_callback(served.tokenizer, stop, body.n), body.n)
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            outputs = oa.choices(served.tokenizer, body.n, stop)
            return _sse(_completion_stream(state, runner, request_id, queue, outputs, meta, len(prompts[0]),
                                           include_usage))
        scored = []
        if body.echo and body.logprobs is not None:
            for ids in prompts:
                future = runner.call(lambda model, ids=ids: oa.prompt_logprobs(model, ids, body.logprobs))
                scored.append(await asyncio.wrap_future(future))
        result, generated = [], 0
        per_prompt = [oa.choices(served.tokenizer, body.n, stop) for _ in prompts]
        if body.max_tokens:  # every prompt queued at once, so that the batch decodes together
            submitted = []
            try:
                for p, ids in enumerate(prompts):
                    stop_fn = oa.stop_callback(served.tokenizer, stop, body.n)
                    submitted.append(_submit(state, runner, ids, params[p], None, stop_fn, body.n))
            except ApiError:
                for request_id, _ in submitted:
                    runner.abort(request_id)
                raise
            await asyncio.gather(*(_collect(state, runner, request, request_id, queue, per_prompt[p], len(prompts[p]))
                                   for p, (request_id, queue) in enumerate(submitted)))
        for p, (ids, outputs) in enumerate(zip(prompts, per_prompt, strict=True)):
            prompt_text = served.tokenizer.decode(ids) if body.echo else ""  # so that text_offset matches tokens
            for c in outputs:
                generated += len(c.token_ids)
                choice: dict[str, Any] = {"index": p * body.n + c.index, "text": prompt_text + c.shown,
                                          "finish_reason": "length" if c.finish_reason == "length" else "stop",
                                          "logprobs": None}
                if body.logprobs is not None:
                    lp = oa.legacy_logprobs(served.tokenizer, c.token_ids, [e.logprob for e in c.events],
                                            [dict(e.top_logprobs or []) for e in c.events], len(prompt_text))
                    if body.echo:
                        echoed = oa.legacy_logprobs(served.tokenizer, ids, *scored[p])
                        lp = {k: echoed[k] + lp[k] for k in lp}
                    choice["logprobs"] = lp
                result.append(choice)
        prompt_tokens = sum(len(ids) for ids in prompts)
        return JSONResponse({**meta, "object": "text_completion", "choices": result,
                             "usage": oa.usage(prompt_tokens, generated)})

    @app.post("/v1/moderations")
    async def moderations(body: ModerationRequest, request: Request) -> Response:
        """Llama Guard 4 over each input (the served model should be a Guard checkpoint): the greedy verdict and
        P(unsafe), in OpenAI's moderation shape (`herd.serve.openai.moderation_result`)."""
        served, runner = state.ready()
        _check_model(served, body.model)
        results = []
        for content in oa.moderation_inputs(body):
            conversation = [{"role": "user", "content": content}]
            prompt, images = await run_in_threadpool(oa.moderation_prompt, conversation, served)
            try:
                runner.scheduler.check(judged_ids(served.tokenizer, prompt), images or None)
            except ValueError as err:
                raise ApiError(400, str(err), param="input") from None
            judgement = await _guarded(state, judge(runner, served, prompt, images))
            results.append(oa.moderation_result(prompt, judgement))
        return JSONResponse({"id": oa.new_id("modr"), "model": served.name, "results": results})

    return app


def _error(err: ApiError) -> JSONResponse:
    return JSONResponse(error_body(str(err), err.type, err.param, err.status), status_code=err.status,
                        headers=err.headers)


def _check_model(served: oa.Served, name: str | None) -> None:
    if name is not None and name != served.name:
        raise ApiError(404, f"the model {name!r} does not exist; this server serves {served.name!r}",
                       "not_found_error", "model")


def _submit(state: State, runner: Runner, ids: list[int], params: Any, images: Any, stop_fn: Any,
            n: int, constraint: Any = None) -> tuple[int, asyncio.Queue]:
    try:
        return runner.submit(ids, params, images=images or None, stop_fn=stop_fn, n=n, constraint=constraint)
    except QueueFull as err:
        state.metrics.requests.labels("429").inc()
        raise ApiError(429, str(err), "rate_limit_error", headers={"Retry-After": "1"}) from None
    except ValueError as err:
        raise ApiError(400, str(err)) from None
    except RuntimeError as err:
        raise ApiError(503, str(err), "service_unavailable") from None


async def _guarded(state: State, check: Awaitable[Judgement], stage: str | None = None) -> Judgement:
    """A judgement, with the guard's failures as API errors; counted in the metrics under `stage`."""
    try:
        judgement = await check
    except QueueFull as err:
        state.metrics.requests.labels("429").inc()
        raise ApiError(429, f"the guard model's queue is full: {err}", "rate_limit_error",
                       headers={"Retry-After": "1"}) from None
    except GuardUnavailable as err:
        raise ApiError(503, str(err), "service_unavailable") from None
    except ValueError as err:
        if isinstance(err, oa.BadRequest):
            raise
        raise ApiError(400, str(err)) from None
    if stage is not None:
        state.metrics.guard_checks.labels(stage, "flagged" if judgement.flagged else "passed").inc()
    return judgement


def _refused(screen: Screen, judgement: Judgement, meta: dict[str, Any], body: ChatCompletionRequest,
             prompt_tokens: int) -> Response:
    """The answer to a chat request the guard flagged: the refusal as every choice's message, finish_reason
    `content_filter`, nothing generated; streamed as a stream of its own when the request asked for one."""
    text, guard = screen.refusal_text(judgement, "input"), screen.report(judgement, "input")
    if not body.stream:
        choices = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "content_filter",
                    "logprobs": None} for i in range(body.n)]
        return JSONResponse({**meta, "object": "chat.completion", "choices": choices,
                             "usage": oa.usage(prompt_tokens, 0), "guard": guard})

    async def events() -> AsyncIterator[dict[str, Any] | str]:
        chunk = {**meta, "object": "chat.completion.chunk", "guard": guard}
        for i in range(body.n):
            for delta, reason in (({"role": "assistant", "content": ""}, None), ({"content": text}, None),
                                  ({}, "content_filter")):
                yield {**chunk, "choices": [{"index": i, "delta": delta, "finish_reason": reason, "logprobs": None}]}
        if body.stream_options and body.stream_options.include_usage:
            yield {**meta, "object": "chat.completion.chunk", "choices": [], "usage": oa.usage(prompt_tokens, 0)}
        yield "[DONE]"

    return _sse(events())


class _Timing:
    """First-token, inter-token and end-to-end latencies of one request, into the metrics."""

    def __init__(self, metrics: Metrics, prompt_tokens: int) -> None:
        self.metrics, self.start, self.last = metrics, time.perf_counter(), None
        metrics.prompt_tokens.inc(prompt_tokens)

    def token(self) -> None:
        now = time.perf_counter()
        if self.last is None:
            self.metrics.ttft.observe(now - self.start)
        else:
            self.metrics.itl.observe(now - self.last)
        self.last = now
        self.metrics.generation_tokens.inc()

    def done(self, status: str) -> None:
        self.metrics.e2e.observe(time.perf_counter() - self.start)
        self.metrics.requests.labels(status).inc()


async def _next(queue: asyncio.Queue, request: Request) -> TokenEvent | Closed | None:
    """The next item of a request's queue, or None once the client has gone."""
    get = asyncio.ensure_future(queue.get())
    while True:
        done, _ = await asyncio.wait({get}, timeout=0.2)
        if done:
            return get.result()
        if await request.is_disconnected():
            get.cancel()
            return None


async def _collect(state: State, runner: Runner, request: Request, request_id: int, queue: asyncio.Queue,
                   outputs: list[oa.Choice], prompt_tokens: int) -> None:
    timing, pending = _Timing(state.metrics, prompt_tokens), len(outputs)
    try:
        while pending:
            item = await _next(queue, request)
            if item is None:
                timing.done("disconnected")
                return
            if isinstance(item, Closed):
                raise ApiError(503, item.reason, "service_unavailable")
            timing.token()
            outputs[item.sample].add(item)
            pending -= item.finish_reason is not None
        timing.done("200")
    finally:
        (runner.abort if pending else runner.release)(request_id)


def _sse(events: AsyncIterator[dict[str, Any] | str]) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        async for event in events:
            yield f"data: {event if isinstance(event, str) else json.dumps(event, ensure_ascii=False)}\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _chat_stream(state: State, runner: Runner, request_id: int, queue: asyncio.Queue, outputs: list[oa.Choice],
                       meta: dict[str, Any], prompt_tokens: int, tools: bool, logprobs: bool,
                       include_usage: bool, screened: list[dict[str, Any]] | None = None,
                       ) -> AsyncIterator[dict[str, Any] | str]:
    """A chat completion's server-sent events. With `screened` (the request's messages, when the guard screens
    output), each sample's chunks are held until the reply so far passes the guard, checked every
    `screen.interval` tokens and at the end; a flagged reply ends with the refusal and `content_filter`."""
    served, pending, screen = state.served, len(outputs), state.screen if screened is not None else None
    timing = _Timing(state.metrics, prompt_tokens)
    held: list[list[dict[str, Any]]] = [[] for _ in outputs]  # chunks not yet released, per sample
    unchecked = [0] * len(outputs)  # tokens since the last screening, per sample
    filtered: set[int] = set()

    def chunk(index: int, delta: dict[str, Any], reason: str | None = None, lp: Any = None) -> dict[str, Any]:
        choice = {"index": index, "delta": delta, "finish_reason": reason, "logprobs": lp}
        return {**meta, "object": "chat.completion.chunk", "choices": [choice]}

    async def screened_out(c: oa.Choice, message: dict[str, Any]) -> list[dict[str, Any]]:
        """The refusal's chunks when the guard flags `message` as sample c's reply; else none."""
        judgement = await _guarded(state, screen.check(screened, message), "output")
        if not judgement.flagged:
            return []
        filtered.add(c.index)
        held[c.index].clear()
        refusal = chunk(c.index, {"content": screen.refusal_text(judgement, "output")})
        return [refusal, {**chunk(c.index, {}, "content_filter"), "guard": screen.report(judgement, "output")}]

    try:
        for c in outputs:
            yield chunk(c.index, {"role": "assistant", "content": ""})
        while pending:
            item = await queue.get()
            if isinstance(item, Closed):
                yield {"error": {"message": item.reason, "type": "server_error", "param": None, "code": 503}}
                timing.done("closed")
                return
            timing.token()
            c = outputs[item.sample]
            text = c.add(item)
            pending -= item.finish_reason is not None
            if c.index in filtered:
                continue
            out: list[dict[str, Any]] = []
            lp = {"content": [oa.chat_logprob(served.tokenizer, item)]} if logprobs else None
            if not tools and (text or lp):
                out.append(chunk(c.index, {"content": text}, lp=lp))
            if item.finish_reason is not None:
                message, reason = oa.chat_message(served.tokenizer, c, tools)
                if tools:  # calls are known only at the end: the message's content, then each call whole
                    if message.get("content"):
                        out.append(chunk(c.index, {"content": message["content"]}))
                    for i, call in enumerate(message.get("tool_calls", [])):
                        out.append(chunk(c.index, {"tool_calls": [{"index": i, **call}]}))
                out.append(chunk(c.index, {}, reason))
            if screen is None:
                for event in out:
                    yield event
                continue
            held[c.index] += out
            unchecked[c.index] += 1
            if item.finish_reason is None and unchecked[c.index] < screen.interval:
                continue
            unchecked[c.index] = 0
            final = item.finish_reason is not None
            draft = oa.chat_message(served.tokenizer, c, tools)[0] if final else {"role": "assistant",
                                                                                  "content": c.shown}
            refusal = await screened_out(c, draft)
            for event in refusal or held[c.index]:
                yield event
            held[c.index].clear()
            if len(filtered) == len(outputs):
                break  # every sample refused: the rest is not generated
        if include_usage:
            generated = sum(len(c.token_ids) for c in outputs)
            yield {**meta, "object": "chat.completion.chunk", "choices": [],
                   "usage": oa.usage(prompt_tokens, generated)}
        yield "[DONE]"
        timing.done("200")
    finally:
        (runner.abort if pending else runner.release)(request_id)


async def _completion_stream(state: State, runner: Runner, request_id: int, queue: asyncio.Queue,
                             outputs: list[oa.Choice], meta: dict[str, Any], prompt_tokens: int,
                             include_usage: bool) -> AsyncIterator[dict[str, Any] | str]:
    pending, timing = len(outputs), _Timing(state.metrics, prompt_tokens)

    def chunk(index: int, text: str, reason: str | None = None) -> dict[str, Any]:
        return {**meta, "object": "text_completion",
                "choices": [{"index": index, "text": text, "finish_reason": reason, "logprobs": None}]}

    try:
        while pending:
            item = await queue.get()
            if isinstance(item, Closed):
                yield {"error": {"message": item.reason, "type": "server_error", "param": None, "code": 503}}
                return
            timing.token()
            c = outputs[item.sample]
            text = c.add(item)
            if item.finish_reason is not None:
                pending -= 1
                yield chunk(c.index, text, "length" if item.finish_reason == "length" else "stop")
            elif text:
                yield chunk(c.index, text)
        if include_usage:
            generated = sum(len(c.token_ids) for c in outputs)
            yield {**meta, "object": "text_completion", "choices": [], "usage": oa.usage(prompt_tokens, generated)}
        yield "[DONE]"
        timing.done("200")
    finally:
        (runner.abort if pending else runner.release)(request_id)
