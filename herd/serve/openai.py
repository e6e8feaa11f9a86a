"""The OpenAI translation, as pure functions: request bodies to engine inputs, engine outputs to response
bodies. No HTTP here (that is `herd.serve.app`), no model calls (that is the engine).

- Chat: messages (text and `image_url` parts) and tools are rendered by `herd.chat.render`; images are
  data URLs, or files under the server's allowed directory, never fetched from the network.
- Sampling fields left out take the model's defaults (`SamplingParams`); `max_tokens` defaults to the
  rest of the context. Stop strings end a sample through the scheduler's stop callback (a `TextStream`
  in the engine thread); the response text is cut by a second `TextStream` fed the same tokens.
- Generated ids become the assistant message through `herd.chat.parse_assistant`: tool calls in any of
  Llama 4's forms land in `tool_calls` with their argument types kept, never in `content`.
- `tool_choice` 'required' or a named function, and `response_format` json_object / json_schema, constrain
  decoding with llguidance (`herd.infer.guided`): the call, or the JSON, parses by construction.
- Log-probabilities: chat's `logprobs.content` list; completions' legacy arrays (`tokens`,
  `token_logprobs`, `top_logprobs`, `text_offset`), with the prompt's when `echo` is set.
"""

from __future__ import annotations

import functools
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from herd import chat
from herd.image import ImageError
from herd.infer.guided import Constraint, guided_tokenizer, schema_of, tool_call_schema
from herd.infer.sampling import SamplingParams
from herd.infer.scheduler import TokenEvent
from herd.moderation import GuardPrompt, GuardPromptError, Judgement, guard_prompt
from herd.serve.protocol import ChatCompletionRequest, CompletionRequest, ModerationRequest, Sampling
from herd.tokenizer import TextStream, Tokenizer


class BadRequest(ValueError):
    """A request the server refuses with 400; `param` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass
class Served:
    """What the translation needs to know about the model being served."""

    tokenizer: Tokenizer
    name: str
    context: int  # positions a sequence may reach
    eos_ids: tuple[int, ...]
    vision: Any = None  # the model's VisionModel, or None
    max_images: int = 8
    max_tiles: int = 16
    media_dir: Path | None = None  # local image files allowed only under it
    created: int = field(default_factory=lambda: int(time.time()))


def _image_part(part: dict[str, Any], media_dir: Path | None) -> dict[str, Any]:
    """An image part whose source is a data URL, or a file under `media_dir`; anything else is refused."""
    source = part.get("image_url", part.get("image"))
    url = source.get("url") if isinstance(source, dict) else source
    if not isinstance(url, str) or not url:
        raise BadRequest("an image part needs image_url.url (a data URL)", "messages")
    if url.startswith("data:"):
        return part
    if url.startswith(("http://", "https://")):
        raise BadRequest("image URLs are not fetched: send the image as a data URL", "messages")
    path = Path(url.removeprefix("file://"))
    if media_dir is None or not path.resolve().is_relative_to(media_dir.resolve()):
        raise BadRequest("local image files are allowed only under --allowed-media-dir", "messages")
    return {"type": "image_url", "image_url": {"url": str(path.resolve())}}


def _image_hook(served: Served, param: str, what: str) -> tuple[chat.ImageCollector | None,
                                                                Callable[[dict[str, Any]], list[int]]]:
    """The collector of a request's images (None for a text-only model) and the `image_tokens` hook that feeds it,
    refusing images a text-only model cannot take and more than `served.max_images` per `what`."""
    collector = None
    if served.vision is not None:
        collector = chat.ImageCollector(served.max_tiles, served.vision.tokens_per_tile,
                                        served.vision.config.image_size)
    count = 0

    def image_tokens(part: dict[str, Any]) -> list[int]:
        nonlocal count
        count += 1
        if collector is None:
            raise BadRequest("this model takes no images (no vision tower)", param)
        if count > served.max_images:
            raise BadRequest(f"at most {served.max_images} images per {what}", param)
        return collector(_image_part(part, served.media_dir))

    return collector, image_tokens


def chat_prompt(req: ChatCompletionRequest, served: Served) -> tuple[list[int], list[torch.Tensor]]:
    """The prompt ids and the images' pixel tiles of a chat request."""
    tools = req.tools if req.tool_choice != "none" else None
    for tool in tools or []:
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(
                tool.get("function"), dict) or not isinstance(tool["function"].get("name"), str):
            raise BadRequest("each tool must be {'type': 'function', 'function': {'name': ..., ...}}", "tools")
    collector, image_tokens = _image_hook(served, "messages", "prompt")
    try:
        rendered = chat.render(served.tokenizer, req.messages, tools=tools, image_tokens=image_tokens)
    except BadRequest:
        raise
    except ImageError as err:
        raise BadRequest(f"invalid image: {err}", "messages") from None
    except Exception as err:  # any malformed message or tool structure is the client's to fix
        cause = err.__cause__
        if isinstance(cause, BadRequest):
            raise cause from None
        if isinstance(cause, ImageError):
            raise BadRequest(f"invalid image: {cause}", "messages") from None
        raise BadRequest(f"invalid messages or tools: {err}", "messages") from None
    return rendered.ids, list(collector.pixels) if collector is not None else []


def _named_tool(tool_choice: str | dict[str, Any] | None) -> tuple[bool, str | None]:
    """Whether `tool_choice` forces a call, and the function it names (None: any)."""
    if tool_choice in (None, "auto", "none"):
        return False, None
    if tool_choice == "required":
        return True, None
    fn = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise BadRequest("tool_choice is 'auto', 'none', 'required' or {'type': 'function', 'function': "
                         "{'name': ...}}", "tool_choice")
    return True, fn["name"]


def chat_constraint(req: ChatCompletionRequest, served: Served) -> Callable[[], Constraint] | None:
    """The grammar a chat request's output must follow, as a factory of per-sample states: a tool call when
    `tool_choice` is 'required' or names a function, JSON under `response_format`; None when free."""
    forced, name = _named_tool(req.tool_choice)
    try:
        if forced:
            if not req.tools:
                raise BadRequest("tool_choice asks for a call but no tools were given", "tool_choice")
            schema = tool_call_schema(req.tools, name)
        else:
            schema = schema_of(req.response_format or {})
        if schema is None:
            return None
        guided = guided_tokenizer(served.tokenizer)
        grammar = guided.json_schema(schema)
    except BadRequest:
        raise
    except (ValueError, TypeError, KeyError) as err:
        raise BadRequest(str(err), "tool_choice" if forced else "response_format") from None
    return lambda: guided.constraint(grammar)


def stop_strings(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > 16:
        raise BadRequest("at most 16 stop strings", "stop")
    return [s for s in stops if s]


def sampling(req: Sampling, served: Served, prompt_len: int, max_tokens: int | None,
             logprobs: int | None) -> SamplingParams:
    """The engine's sampling parameters for a request with a prompt of `prompt_len` tokens."""
    room = served.context - prompt_len
    if room < 1 and max_tokens != 0:
        raise BadRequest(f"the prompt has {prompt_len} tokens; the context holds {served.context}", "messages")
    if max_tokens is not None and max_tokens > room:
        raise BadRequest(f"max_tokens {max_tokens} plus the prompt's {prompt_len} tokens exceed the context of "
                         f"{served.context}", "max_tokens")
    fields: dict[str, Any] = {
        "max_new_tokens": room if max_tokens is None else max_tokens, "seed": req.seed,
        "frequency_penalty": req.frequency_penalty, "presence_penalty": req.presence_penalty,
        "repetition_penalty": req.repetition_penalty, "logprobs": logprobs,
        "stop_ids": () if req.ignore_eos else served.eos_ids,
    }
    for name in ("temperature", "top_p", "min_p"):
        if getattr(req, name) is not None:
            fields[name] = getattr(req, name)
    if req.top_k is not None:
        fields["top_k"] = max(req.top_k, 0)
    try:
        return SamplingParams(**fields)
    except ValueError as err:
        raise BadRequest(str(err)) from None


def stop_callback(tokenizer: Tokenizer, stop: list[str], n: int) -> Callable[[int, int], bool] | None:
    """The scheduler's `stop_fn` for stop strings: one `TextStream` per sample, in the engine thread."""
    if not stop:
        return None
    streams = [TextStream(tokenizer, stop) for _ in range(n)]

    def stop_fn(sample: int, token: int) -> bool:
        streams[sample].push(token)
        return streams[sample].stopped

    return stop_fn


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _token_text(tokenizer: Tokenizer, token: int) -> str:
    return tokenizer.piece(token).decode("utf-8", errors="replace")


def chat_logprob(tokenizer: Tokenizer, event: TokenEvent) -> dict[str, Any]:
    """One entry of chat's `logprobs.content`."""

    def entry(token: int, logprob: float) -> dict[str, Any]:
        return {"token": _token_text(tokenizer, token), "logprob": logprob, "bytes": list(tokenizer.piece(token))}

    out = entry(event.token, event.logprob)
    out["top_logprobs"] = [entry(t, lp) for t, lp in event.top_logprobs or []]
    return out


@dataclass
class Choice:
    """One sample's output as it accumulates: its ids, events, and the text a client is shown (stop strings
    cut, a tail that may still become one held back, control tokens such as <|eot|> left out)."""

    index: int
    text: TextStream
    control: frozenset[int]
    token_ids: list[int] = field(default_factory=list)
    events: list[TokenEvent] = field(default_factory=list)
    shown: str = ""
    finish_reason: str | None = None

    def add(self, event: TokenEvent) -> str:
        """Record a token; returns the text it releases."""
        self.token_ids.append(event.token)
        self.events.append(event)
        self.finish_reason = event.finish_reason or self.finish_reason
        released = self.text.push(event.token) if event.token not in self.control else ""
        if event.finish_reason is not None:
            released += self.text.flush()
        self.shown += released
        return released


def choices(tokenizer: Tokenizer, n: int, stop: list[str]) -> list[Choice]:
    control = frozenset(range(tokenizer.n_base, tokenizer.n_words))  # special tokens sit at the top
    return [Choice(i, TextStream(tokenizer, stop), control) for i in range(n)]


def chat_message(tokenizer: Tokenizer, choice: Choice, tools: bool) -> tuple[dict[str, Any], str]:
    """The assistant message of a finished chat sample and its OpenAI finish_reason. With tools, calls in
    any of Llama 4's forms become `tool_calls`; a sample cut by a stop string stays plain text."""
    message = chat.AssistantMessage(choice.shown)
    if tools and not choice.text.stopped:
        message = chat.parse_assistant(tokenizer, choice.token_ids)
    reason = "length" if choice.finish_reason == "length" else "stop"
    if message.tool_calls:
        reason = "tool_calls"
    return message.to_openai(), reason


@functools.lru_cache(maxsize=4)
def _specials_pattern(tokenizer: Tokenizer) -> re.Pattern:
    return re.compile("|".join(re.escape(n) for n in sorted(tokenizer.special, key=len, reverse=True)))


def encode_with_specials(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of `text` in which special-token names become their ids, as vLLM's /tokenize does (clients
    such as lm-eval's remote tokenizer read the BOS and EOS ids that way). Prompts of the completion
    endpoints never go through this: there, special-token text stays text."""
    ids, start = [], 0
    for match in _specials_pattern(tokenizer).finditer(text):
        ids += tokenizer.encode(text[start : match.start()]) if match.start() > start else []
        ids.append(tokenizer.special[match.group()])
        start = match.end()
    return ids + (tokenizer.encode(text[start:]) if start < len(text) else [])


def tokenizer_info(tokenizer: Tokenizer, context: int) -> dict[str, Any]:
    """vLLM's /tokenizer_info fields that clients read: the special tokens' text and the context length."""
    return {"tokenizer_class": "herd.Tokenizer", "bos_token": "<|begin_of_text|>", "eos_token": "<|eot|>",
            "pad_token": "<|finetune_right_pad|>", "model_max_length": context, "vocab_size": tokenizer.n_words}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_prompts(req: CompletionRequest, tokenizer: Tokenizer) -> list[list[int]]:
    """The ids of each prompt of a completions request (text gets <|begin_of_text|>, ids are kept)."""
    p = req.prompt
    if isinstance(p, str):
        prompts = [tokenizer.encode(p, bos=True)]
    elif p and all(isinstance(x, int) for x in p):
        prompts = [list(p)]
    elif p and all(isinstance(x, str) for x in p):
        prompts = [tokenizer.encode(x, bos=True) for x in p]
    elif p and all(isinstance(x, list) for x in p):
        prompts = [list(x) for x in p]
    else:
        raise BadRequest("prompt must be a string, a list of strings, a list of token ids or a list of lists",
                         "prompt")
    if not prompts or any(not ids for ids in prompts):
        raise BadRequest("every prompt must hold at least one token", "prompt")
    if len(prompts) > 256:
        raise BadRequest("at most 256 prompts per request", "prompt")
    return prompts


def prompt_logprobs(model: Any, ids: Sequence[int], n: int) -> tuple[list[float | None], list[dict[int, float] | None]]:
    """Each prompt token's log-probability given the tokens before it (None for the first) and the top-n
    alternatives there: one forward over the prompt, run in the engine thread."""
    tokens_1S = torch.tensor([list(ids)], device=model.tok_embeddings.weight.device)
    logp_SV = torch.log_softmax(model(tokens_1S)[0].float(), dim=-1)
    chosen = logp_SV[:-1].gather(1, tokens_1S[0, 1:, None])[:, 0].tolist()
    tops: list[dict[int, float] | None] = [None]
    if n:
        values, indices = logp_SV[:-1].topk(n, dim=-1)
        tops += [dict(zip(i, v, strict=True)) for i, v in zip(indices.tolist(), values.tolist(), strict=True)]
    else:
        tops += [{} for _ in chosen]
    return [None, *chosen], tops


def legacy_logprobs(tokenizer: Tokenizer, ids: Sequence[int], logprobs: Sequence[float | None],
                    tops: Sequence[dict[int, float] | None], offset: int = 0) -> dict[str, list]:
    """Completions' `logprobs` object for a run of tokens whose text starts at character `offset`."""
    tokens, offsets, top = [], [], []
    for token, alternatives in zip(ids, tops, strict=True):
        text = _token_text(tokenizer, token)
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
        top.append(None if alternatives is None else {_token_text(tokenizer, t): lp for t, lp in alternatives.items()})
    return {"tokens": tokens, "token_logprobs": list(logprobs), "top_logprobs": top, "text_offset": offsets}


def moderation_inputs(req: ModerationRequest) -> list[str | list[dict[str, Any]]]:
    """Each input of a moderation request as a user message's content."""
    if isinstance(req.input, str):
        return [req.input]
    if all(isinstance(item, str) for item in req.input):
        return list(req.input)
    if all(isinstance(item, dict) for item in req.input):
        return [list(req.input)]
    raise BadRequest("input is a string, a list of strings, or a list of text and image_url parts", "input")


def moderation_prompt(conversation: list[dict[str, Any]], served: Served,
                      excluded: Sequence[str] = ()) -> tuple[GuardPrompt, list[torch.Tensor]]:
    """Llama Guard 4's prompt for a conversation (one input of /v1/moderations is a user message), and its images'
    pixel tiles."""
    collector, image_tokens = _image_hook(served, "input", "input")
    try:
        prompt = guard_prompt(served.tokenizer, conversation, excluded=excluded, image_tokens=image_tokens)
    except BadRequest:
        raise
    except ImageError as err:
        raise BadRequest(f"invalid image: {err}", "input") from None
    except GuardPromptError as err:
        raise BadRequest(str(err), "input") from None
    return prompt, list(collector.pixels) if collector is not None else []


def moderation_result(prompt: GuardPrompt, judgement: Judgement) -> dict:
    """OpenAI's moderation result for one input, keyed by Llama Guard's category codes. `flagged` and the
    per-category booleans are the greedy verdict (llama-stack's reading); each flagged category's score is
    P(unsafe) at the first answer token, the others 0. `verdict` and `p_unsafe` are herd's extras."""
    flagged = set(judgement.categories) if judgement.flagged else set()
    p_unsafe = round(judgement.p_unsafe, 6)
    return {"flagged": bool(flagged), "categories": {code: code in flagged for code in prompt.categories},
            "category_scores": {code: p_unsafe if code in flagged else 0.0 for code in prompt.categories},
            "category_names": dict(prompt.categories), "verdict": judgement.verdict.label, "p_unsafe": p_unsafe}
