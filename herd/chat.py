"""The Llama 4 chat format: OpenAI-style messages -> token ids and loss mask, model output -> message and tool calls.

One module for generation, training and the server (spec §4.3–4.4):

- Layout as Meta's reference: <|begin_of_text|>, then per message <|header_start|> role <|header_end|> "\\n\\n"
  content end-token, each piece encoded separately (BPE never merges across the boundaries). Role "tool" is
  written `ipython`. <|eom|> ends tool results and assistant messages with tool calls (or stop_reason
  "end_of_message"); <|eot|> ends the rest. The assistant header is appended to prime generation.
- `loss_mask` is True exactly on assistant content (tool-call text included) and the assistant's end token.
- `tools` (OpenAI function specs) become a block in the system prompt in Meta's zero-shot style (our own
  wording); past tool calls are written back as `python_list`, `json` or `function_tag` text.
- Deliberate differences from Meta: several python_list calls are written as ONE list (what the model
  emits; Meta writes one list per call), and python_list values are valid Python literals (strings
  escaped, dicts as dict literals) where Meta pastes strings into quotes unescaped.
- `parse_assistant` never raises on model output: anything that looks like a call but does not parse
  stays plain content. Arguments are parsed with `json` and `ast.literal_eval` only, never `eval`.
"""

from __future__ import annotations

import ast
import json
import operator
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from herd.image import ImageError, preprocess
from herd.tokenizer import Tokenizer

__all__ = [
    "BUILTIN_TOOLS", "TOOL_FORMATS", "AssistantMessage", "Rendered", "ToolCall", "format_tool_calls",
    "parse_assistant", "render", "tool_prompt",
]

Role = Literal["system", "user", "assistant", "tool", "ipython"]
ToolFormat = Literal["python_list", "json", "function_tag"]
StopReason = Literal["end_of_turn", "end_of_message", "out_of_tokens"]

ROLES = ("system", "user", "assistant", "tool", "ipython")
TOOL_FORMATS = ("python_list", "json", "function_tag")
# Meta's built-in tools are called as `name.call(query="...")`; code_interpreter is raw python code.
BUILTIN_TOOLS = ("brave_search", "wolfram_alpha", "photogen")
CODE_INTERPRETER = "code_interpreter"
IMAGE_PART_TYPES = ("image_url", "image")

ImageTokens = Callable[[dict], list[int]]


@dataclass
class Rendered:
    ids: list[int]
    loss_mask: list[bool]  # same length as ids

    def __len__(self) -> int:
        return len(self.ids)


def _new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=_new_call_id, compare=False)

    def to_openai(self) -> dict[str, Any]:
        args = json.dumps(self.arguments, ensure_ascii=False)
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": args}}


@dataclass
class AssistantMessage:
    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    stop_reason: StopReason = "end_of_turn"

    @property
    def finish_reason(self) -> str:
        """OpenAI's finish_reason: "tool_calls", "stop" or "length"."""
        if self.tool_calls:
            return "tool_calls"
        return "length" if self.stop_reason == "out_of_tokens" else "stop"

    def to_openai(self) -> dict[str, Any]:
        """An OpenAI-style assistant message (content is None when there are only tool calls)."""
        msg: dict[str, Any] = {"role": "assistant", "content": self.content or (None if self.tool_calls else "")}
        if self.tool_calls:
            msg["tool_calls"] = [c.to_openai() for c in self.tool_calls]
        return msg


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------

def render(
    tokenizer: Tokenizer,
    messages: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    tool_format: ToolFormat = "python_list",
    image_tokens: ImageTokens | None = None,
) -> Rendered:
    """Token ids and loss mask of a dialog, starting with <|begin_of_text|>.

    `image_tokens(part)` gives the ids of an image content part (the vision front end supplies it).
    """
    if tool_format not in TOOL_FORMATS:
        raise ValueError(f"tool_format must be one of {TOOL_FORMATS}, got {tool_format!r}")
    messages = list(messages)
    if tools:
        messages = _with_tool_prompt(messages, tools, tool_format)
    out = Rendered([tokenizer.bos_id], [False])
    for i, message in enumerate(messages):
        try:
            _render_message(tokenizer, message, tool_format, image_tokens, out)
        except (AttributeError, KeyError, TypeError, ValueError) as e:  # a message of the wrong shape
            raise ValueError(f"messages[{i}]: {e}") from e
    if add_generation_prompt:
        _extend(out, _header(tokenizer, "assistant"), False)
    return out


def _extend(out: Rendered, ids: list[int], train: bool) -> None:
    out.ids += ids
    out.loss_mask += [train] * len(ids)


def _header(tokenizer: Tokenizer, role: str) -> list[int]:
    return [tokenizer.special["<|header_start|>"], *tokenizer.encode(role), tokenizer.special["<|header_end|>"],
            *tokenizer.encode("\n\n")]


def _render_message(
    tokenizer: Tokenizer, message: dict[str, Any], tool_format: ToolFormat, image_tokens: ImageTokens | None,
    out: Rendered,
) -> None:
    if not isinstance(message, dict):
        raise TypeError(f"a message is a dict with 'role' and 'content', got {type(message).__name__}")
    role = message.get("role")
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
    is_assistant = role == "assistant"
    _extend(out, _header(tokenizer, "ipython" if role == "tool" else role), False)
    _render_content(tokenizer, message.get("content"), is_assistant, image_tokens, out)
    if role == "user" and message.get("context"):  # RAG context, as in Meta's reference
        _extend(out, tokenizer.encode("\n\n"), False)
        _render_content(tokenizer, message["context"], False, image_tokens, out)

    calls = [_as_tool_call(c) for c in message.get("tool_calls") or []]
    if calls and not is_assistant:
        raise ValueError(f"only assistant messages carry tool_calls (role {role!r})")
    for text in format_tool_calls(calls, tool_format):
        _extend(out, tokenizer.encode(text), True)

    stop_reason = message.get("stop_reason")
    if stop_reason is not None and stop_reason not in ("end_of_turn", "end_of_message", "out_of_tokens"):
        raise ValueError(f"unknown stop_reason {stop_reason!r}")
    eom = role in ("tool", "ipython") or (is_assistant and (bool(calls) or stop_reason == "end_of_message"))
    _extend(out, [tokenizer.eom_id if eom else tokenizer.eot_id], is_assistant)


def _render_content(
    tokenizer: Tokenizer, content: Any, train: bool, image_tokens: ImageTokens | None, out: Rendered
) -> None:
    if content is None:
        return
    for part in [content] if isinstance(content, (str, dict)) else content:
        if isinstance(part, str):
            _extend(out, tokenizer.encode(part), train)
        elif isinstance(part, dict) and part.get("type") == "text":
            _extend(out, tokenizer.encode(part["text"]), train)
        elif isinstance(part, dict) and part.get("type") in IMAGE_PART_TYPES:
            if image_tokens is None:
                raise ValueError("an image content part needs the `image_tokens` hook (a vision model)")
            _extend(out, list(image_tokens(part)), False)  # image tokens are inputs, never predicted
        else:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise ValueError(f"unsupported content part {kind!r}; expected text, image_url or image")


def _as_tool_call(call: ToolCall | dict[str, Any]) -> ToolCall:
    """A ToolCall from an OpenAI-style `tool_calls` entry (arguments as a JSON string or a dict)."""
    if isinstance(call, ToolCall):
        return call
    if not isinstance(call, dict):
        raise TypeError(f"a tool call is a dict, got {type(call).__name__}")
    fn = call.get("function", call)
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"tool call without a function name: {call!r}")
    args = fn.get("arguments", fn.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            raise ValueError(f"tool call {name!r}: arguments are not valid JSON ({e})") from None
    if not isinstance(args, dict):
        raise ValueError(f"tool call {name!r}: arguments must be a JSON object, got {type(args).__name__}")
    return ToolCall(name, args, call.get("id") or _new_call_id())


def format_tool_calls(calls: Sequence[ToolCall], tool_format: ToolFormat = "python_list") -> list[str]:
    """The text of past tool calls as the model writes them; each string is encoded separately."""
    texts: list[str] = []
    pending: list[str] = []  # python_list calls are gathered into one list
    for call in calls:
        if call.name in BUILTIN_TOOLS and "query" in call.arguments:
            text = f"{call.name}.call(query={_py_literal(str(call.arguments['query']))})"
        elif call.name == CODE_INTERPRETER and "code" in call.arguments:
            text = str(call.arguments["code"])
        elif tool_format == "python_list":
            args = ", ".join(f"{k}={_py_literal(v)}" for k, v in call.arguments.items())
            pending.append(f"{call.name}({args})")
            continue
        elif tool_format == "json":
            text = json.dumps({"type": "function", "name": call.name, "parameters": call.arguments})
        elif tool_format == "function_tag":
            text = f"<function={call.name}>{json.dumps(call.arguments)}</function>"
        else:
            raise ValueError(f"tool_format must be one of {TOOL_FORMATS}, got {tool_format!r}")
        if pending:
            texts.append(f"[{', '.join(pending)}]")
            pending = []
        texts.append(text)
    if pending:
        texts.append(f"[{', '.join(pending)}]")
    return texts


def _py_literal(value: Any) -> str:
    """A Python literal for a JSON-like value, readable back with ast.literal_eval."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON string escapes are valid Python escapes
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return f"[{', '.join(_py_literal(v) for v in value)}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_py_literal(str(k))}: {_py_literal(v)}" for k, v in value.items()) + "}"
    raise ValueError(f"tool-call argument of type {type(value).__name__} is not JSON-like")


# Our own wording of Meta's zero-shot tool instructions (prompt_format.md, "Zero shot function calling").
_TOOL_INTRO = """\
You are an expert in composing functions. You can answer from your own knowledge, or call functions from \
the list below when one fits the request.
Follow these rules:
- Only call functions that appear in the list; never invent one. If no listed function fits, answer \
from your own knowledge or say that you do not have access to that information.
- Call a function only when every required parameter is known; otherwise ask the user for what is missing.
- A reply is either function calls or text, never both, and a call is never explained.
- When a function result arrives, answer the user briefly in plain language using it; do not repeat it verbatim.
"""

_TOOL_CALL_SYNTAX = {
    "python_list": (
        "To call functions, reply with only a Python list of calls with keyword arguments, for example:\n"
        '[func_name1(param1=value1, param2=value2), func_name2(param="value")]'
    ),
    "json": (
        "To call a function, reply with only a JSON object of the form "
        '{"name": function name, "parameters": dictionary of argument names and values}.'
    ),
    "function_tag": (
        "To call a function, reply with only the call on one line in the form "
        '<function=function_name>{"param": "value"}</function>'
    ),
}


def tool_prompt(tools: Sequence[dict[str, Any]], tool_format: ToolFormat = "python_list") -> str:
    """The tool block added to the system prompt: instructions, then the functions as a JSON list."""
    functions = []
    for tool in tools:
        fn = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ValueError(f"a tool is {{'type': 'function', 'function': {{'name': ...}}}}, got {tool!r}")
        functions.append({"name": fn["name"], "description": fn.get("description", ""),
                          "parameters": fn.get("parameters", {"type": "object", "properties": {}})})
    return (f"{_TOOL_INTRO}\n{_TOOL_CALL_SYNTAX[tool_format]}\n\n"
            f"Here is a list of functions in JSON format that you can invoke.\n\n"
            f"{json.dumps(functions, indent=4, ensure_ascii=False)}")


def _with_tool_prompt(messages: list[dict], tools: Sequence[dict], tool_format: ToolFormat) -> list[dict]:
    """Append the tool block to the system message (or open with a system message holding it)."""
    if tool_format not in _TOOL_CALL_SYNTAX:
        raise ValueError(f"tool_format must be one of {TOOL_FORMATS}, got {tool_format!r}")
    block = tool_prompt(tools, tool_format)
    if messages and isinstance(messages[0], dict) and messages[0].get("role") == "system":
        system, rest = messages[0], messages[1:]
        text = _plain_text(system.get("content"))
        return [{**system, "content": f"{text}\n\n{block}" if text else block}, *rest]
    return [{"role": "system", "content": block}, *messages]


def _plain_text(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = [content] if isinstance(content, dict) else content
    if not all(isinstance(p, str) or (isinstance(p, dict) and p.get("type") == "text") for p in parts):
        raise ValueError("with tools, the system message must be text only")
    return "".join(p if isinstance(p, str) else p["text"] for p in parts)


# --------------------------------------------------------------------------------------------------
# Parsing model output
# --------------------------------------------------------------------------------------------------

_ASSISTANT_HEADER = "<|header_start|>assistant<|header_end|>\n\n"
_STOP_STRINGS = (("<|eot|>", "end_of_turn"), ("<|eom|>", "end_of_message"), ("<|end_of_text|>", "end_of_turn"))


def parse_assistant(tokenizer: Tokenizer, output: str | Sequence[int]) -> AssistantMessage:
    """The assistant message in generated text or ids (spec §4.4 decoding). Never raises on model output.

    Order: strip an assistant header; <|python_start|> marks code; a trailing <|eot|>/<|eom|> sets
    stop_reason (neither: "out_of_tokens"); then <function=NAME>{json}</function>, JSON
    {"name", "parameters"|"arguments"}, a python list [f(a=1), g()], the built-in X.call(query=...);
    python-tagged output that is none of these is a code_interpreter call.
    """
    if isinstance(output, str):
        text, stop_reason, python = _split_text(output)
    else:
        text, stop_reason, python = _split_ids(tokenizer, [operator.index(t) for t in output])
    return _parse_content(text, stop_reason, python)


def _split_text(text: str) -> tuple[str, StopReason, bool]:
    text = text.strip(" ")
    if text.startswith(_ASSISTANT_HEADER):
        text = text[len(_ASSISTANT_HEADER):]
    python = text.startswith("<|python_start|>")
    if python:
        text = text[len("<|python_start|>"):].replace("<|python_end|>", "")
    stop_reason: StopReason = "out_of_tokens"
    for tag, reason in _STOP_STRINGS:
        if text.endswith(tag):
            text, stop_reason = text[:-len(tag)], reason
            break
    return text, stop_reason, python


def _split_ids(tokenizer: Tokenizer, ids: list[int]) -> tuple[str, StopReason, bool]:
    """Like _split_text, but on token ids, so literal "<|eot|>" text in the output stays text."""
    header = _header(tokenizer, "assistant")
    if ids[:len(header)] == header:
        ids = ids[len(header):]
    stop_reason: StopReason = "out_of_tokens"
    for k, token in enumerate(ids):
        if token in tokenizer.stop_ids:  # the engine stops at the first one; ignore anything after it
            stop_reason = "end_of_message" if token == tokenizer.eom_id else "end_of_turn"
            ids = ids[:k]
            break
    python_start, python_end = tokenizer.special["<|python_start|>"], tokenizer.special["<|python_end|>"]
    python = bool(ids) and ids[0] == python_start
    if python:
        ids = [t for t in ids[1:] if t != python_end]
    return tokenizer.decode(ids), stop_reason, python


class _NotACall(Exception):
    """Raised inside the parsers when text is not a well-formed call."""


def _parse_content(content: str, stop_reason: StopReason, python: bool) -> AssistantMessage:
    for parser in (_function_tag_calls, _json_calls, _python_list_calls, _builtin_calls):
        try:
            calls, rest = parser(content)
        except (_NotACall, RecursionError):  # RecursionError: absurdly nested literals
            continue
        return AssistantMessage(rest, calls, stop_reason)
    if python:
        return AssistantMessage("", [ToolCall(CODE_INTERPRETER, {"code": content})], stop_reason)
    return AssistantMessage(content, [], stop_reason)


_FUNCTION_TAG = re.compile(r"<function=([A-Za-z_][\w.\-]*)>")
_JSON = json.JSONDecoder()


def _function_tag_calls(content: str) -> tuple[list[ToolCall], str]:
    """`<function=NAME>{json}</function>` calls; text around the tags is kept as content."""
    calls, kept, pos = [], [], 0
    for m in _FUNCTION_TAG.finditer(content):
        if m.start() < pos:
            continue  # inside the arguments of the previous call
        kept.append(content[pos:m.start()])
        args, pos = _tag_arguments(content, m.end())
        calls.append(ToolCall(m.group(1), args))
    if not calls:
        raise _NotACall
    kept.append(content[pos:])
    return calls, "".join(kept).strip()


def _tag_arguments(content: str, start: int) -> tuple[dict[str, Any], int]:
    """The argument object after a <function=NAME> tag and where the call ends (after </function>)."""
    close = "</function>"
    start = len(content) - len(content[start:].lstrip())
    try:
        args, end = _JSON.raw_decode(content, start)
    except (ValueError, RecursionError):
        # Some outputs write a Python dict (single quotes); accept a literal up to </function>.
        end = content.find(close, start)
        if end < 0:
            raise _NotACall from None
        args = _literal(content[start:end].strip())
    if not isinstance(args, dict):
        raise _NotACall
    after = len(content) - len(content[end:].lstrip())
    if content.startswith(close, after):
        end = after + len(close)
    return _jsonable(args), end


_CALL_KEYS = {"type", "name", "parameters", "arguments", "id"}


def _json_calls(content: str) -> tuple[list[ToolCall], str]:
    """One or more JSON call objects (or a JSON list of them), and nothing else."""
    s = content.strip()
    if not s.startswith(("{", "[")):
        raise _NotACall
    objects, pos = [], 0
    try:
        while pos < len(s):
            obj, pos = _JSON.raw_decode(s, pos)
            objects.append(obj)
            while pos < len(s) and s[pos] in " \t\r\n;,":
                pos += 1
    except (ValueError, RecursionError):
        raise _NotACall from None
    if len(objects) == 1 and isinstance(objects[0], list):
        objects = objects[0]
    if not objects:
        raise _NotACall
    return [_json_call(obj) for obj in objects], ""


def _json_call(obj: Any) -> ToolCall:
    if isinstance(obj, dict) and isinstance(obj.get("function"), dict) and obj.get("type", "function") == "function":
        obj = {**obj["function"], "id": obj.get("id")}  # OpenAI's {"type": "function", "function": {...}}
    # Require the call shape so that ordinary JSON answers ({"name": "Bob", "age": 3}) stay content.
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        raise _NotACall
    if not obj.keys() <= _CALL_KEYS:
        raise _NotACall
    if "parameters" not in obj and "arguments" not in obj and obj.get("type") != "function":
        raise _NotACall
    args = obj.get("parameters", obj.get("arguments", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except (ValueError, RecursionError):
            raise _NotACall from None
    if not isinstance(args, dict):
        raise _NotACall
    call_id = obj.get("id")
    return ToolCall(obj["name"], _jsonable(args), call_id if isinstance(call_id, str) and call_id else _new_call_id())


def _python_list_calls(content: str) -> tuple[list[ToolCall], str]:
    """`[f(a=1, b="x"), g()]`: keyword arguments with literal values only."""
    s = content.strip()
    if not (s.startswith("[") and s.endswith("]")):
        raise _NotACall
    try:
        tree = ast.parse(s, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise _NotACall from None
    if not isinstance(tree.body, ast.List) or not tree.body.elts:
        raise _NotACall
    calls = []
    for node in tree.body.elts:
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.args:
            raise _NotACall
        args = {}
        for kw in node.keywords:
            if kw.arg is None:  # **kwargs
                raise _NotACall
            args[kw.arg] = _literal(kw.value)
        calls.append(ToolCall(node.func.id, _jsonable(args)))
    return calls, ""


_BUILTIN_CALL = re.compile(
    r"\b(" + "|".join(BUILTIN_TOOLS) + r")\.call\(\s*query\s*=\s*(\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*')\s*\)"
)


def _builtin_calls(content: str) -> tuple[list[ToolCall], str]:
    """`brave_search.call(query="...")` and the other built-ins, anywhere in the text."""
    calls, kept, pos = [], [], 0
    for m in _BUILTIN_CALL.finditer(content):
        try:
            query = _literal(m.group(2))
        except _NotACall:
            query = m.group(2)[1:-1]
        calls.append(ToolCall(m.group(1), {"query": str(query)}))
        kept.append(content[pos:m.start()])
        pos = m.end()
    if not calls:
        raise _NotACall
    kept.append(content[pos:])
    return calls, "".join(kept).strip()


def _literal(source: str | ast.AST) -> Any:
    try:
        return ast.literal_eval(source)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise _NotACall from None


def _jsonable(value: Any) -> Any:
    """Check a parsed value is JSON-like (tuples become lists); anything else is not a call."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise _NotACall
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _jsonable(v) for k, v in value.items()}
    raise _NotACall


def image_layout(rows: int, cols: int, tokens_per_tile: int = 144) -> list[int]:
    """The ids of one image in the prompt (spec §3.8): a single tile is
    `<|image_start|><|image|>` + patches + `<|image_end|>`; R×C tiles put `<|tile_x_separator|>`
    between the tiles of a row and `<|tile_y_separator|>` after each row, then `<|image|>` and
    the thumbnail's patches."""
    start, end, x_sep, y_sep, image, patch = 200080, 200081, 200084, 200085, 200090, 200092
    patches = [patch] * tokens_per_tile
    if rows * cols == 1:
        return [start, image, *patches, end]
    ids = [start]
    for _ in range(rows):
        for c in range(cols):
            ids += patches + ([x_sep] if c < cols - 1 else [])
        ids.append(y_sep)
    return [*ids, image, *patches, end]


class ImageCollector:
    """An `image_tokens` hook for `render`: preprocesses each image part (OpenAI-style
    `{"type": "image_url", "image_url": {"url": ...}}` with a data URL or a local path, or
    `{"type": "image", "image": path | bytes | PIL image}`), keeps its pixel tiles in prompt
    order for the model, and returns its token layout."""

    def __init__(self, max_tiles: int = 16, tokens_per_tile: int = 144, tile: int = 336) -> None:
        self.max_tiles, self.tokens_per_tile, self.tile = max_tiles, tokens_per_tile, tile
        self.pixels: list[Any] = []  # one [tiles, 3, tile, tile] tensor per image

    def __call__(self, part: dict[str, Any]) -> list[int]:
        source = part.get("image_url", part.get("image"))
        if isinstance(source, dict):
            source = source.get("url")
        if source is None:
            raise ImageError(f"image part without an image: {sorted(part)}")
        processed = preprocess(source, max_tiles=self.max_tiles, tile=self.tile)
        self.pixels.append(processed.pixels_TCHW)
        return image_layout(processed.rows, processed.cols, self.tokens_per_tile)
