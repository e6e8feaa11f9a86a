"""herd.chat against Meta's reference ChatFormat (llama_models.llama4.chat_format) and spec §4.3–4.4.

Meta's chat_format imports its image preprocessing, which imports torchvision; torchvision is not a
dependency here, so it is replaced by empty stand-in modules while chat_format is imported (only the
image transforms use it, and no image is encoded by Meta's side in these tests).
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from herd.chat import AssistantMessage, Rendered, ToolCall, format_tool_calls, parse_assistant, render, tool_prompt
from herd.tokenizer import Tokenizer

SHARED_MODEL = Path(__file__).resolve().parents[1] / ".." / "shared" / "llama4" / "tokenizer.model"
FAST = settings(database=None, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    if not SHARED_MODEL.is_file():
        pytest.fail(f"Meta's Llama 4 tokenizer.model not found at {SHARED_MODEL}")
    return Tokenizer(SHARED_MODEL)


@pytest.fixture(scope="module")
def meta():
    """Meta's ChatFormat over Meta's Tokenizer, plus its datatypes module."""
    stubs = {}
    try:
        import torchvision  # noqa: F401
    except ImportError:
        for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
            stubs[name] = types.ModuleType(name)
            stubs[name].__path__ = []
        stubs["torchvision"].transforms = stubs["torchvision.transforms"]
        stubs["torchvision.transforms"].functional = stubs["torchvision.transforms.functional"]
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)
    try:
        from llama_models import datatypes
        from llama_models.llama4.chat_format import ChatFormat
        from llama_models.llama4.tokenizer import Tokenizer as MetaTokenizer
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return ChatFormat(MetaTokenizer(SHARED_MODEL)), datatypes


def _meta_ids(meta, messages: list[dict], tool_format: str) -> list[int]:
    """Meta's ids for OpenAI-style messages (Meta always appends the assistant header)."""
    chat_format, dt = meta
    raw = []
    for m in messages:
        calls = []
        for c in m.get("tool_calls") or []:
            args = c["function"]["arguments"]
            args = json.loads(args) if isinstance(args, str) else args
            calls.append(dt.ToolCall(call_id=c.get("id", "x"), tool_name=c["function"]["name"], arguments=args))
        content = m.get("content") or ""
        if isinstance(content, list):
            content = [dt.RawTextItem(text=p["text"]) for p in content]
        stop = dt.StopReason(m["stop_reason"]) if m.get("stop_reason") else None
        role = "tool" if m["role"] == "ipython" else m["role"]
        raw.append(dt.RawMessage(role=role, content=content, context=m.get("context"), tool_calls=calls,
                                 stop_reason=stop))
    return chat_format.encode_dialog_prompt(raw, dt.ToolPromptFormat(tool_format)).tokens


def _call(name: str, args: dict, call_id: str = "c1", as_string: bool = True) -> dict:
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": json.dumps(args) if as_string else args}}


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get weather info for places",
    "parameters": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}}}

DIALOGS: dict[str, list[dict]] = {
    "spec": [{"role": "system", "content": "You are a helpful assistant"}, {"role": "user", "content": "Hi"}],
    "multi_turn": [
        {"role": "user", "content": "Answer who are you in the form of jeopardy?"},
        {"role": "assistant", "content": '"What is a helpful assistant?"'},
        {"role": "user", "content": "And in French?\n\n"},
    ],
    "parts_and_unicode": [
        {"role": "system", "content": [{"type": "text", "text": "Sé breve. "}, {"type": "text", "text": "简洁 😀"}]},
        {"role": "user", "content": "\nHi <|eot|> <|header_start|>assistant"},  # leading newline, special text
        {"role": "assistant", "content": "  spaces\tand\r\nnewlines  "},
    ],
    "tool_round": [
        {"role": "system", "content": "You are a helpful assistant"},
        {"role": "user", "content": "What is the weather in SF?"},
        {"role": "assistant", "content": None, "tool_calls": [_call("get_weather", {"city": "San Francisco"})]},
        {"role": "tool", "tool_call_id": "c1", "content": '"25 C"'},
        {"role": "assistant", "content": "It is 25 C in San Francisco."},
        {"role": "user", "content": "Thanks"},
    ],
    "typed_arguments": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": "", "tool_calls": [_call(
            "search", {"q": "llama 4", "n": 3, "x": 0.5, "exact": True, "lang": None, "tags": ["a", "b"]},
            as_string=False)]},
        {"role": "ipython", "content": [{"type": "text", "text": "[1, 2]"}]},
    ],
    "content_and_call": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "Let me check. ", "tool_calls": [_call("get_weather", {"city": "Paris"})]},
    ],
    "builtins": [
        {"role": "user", "content": "look up things"},
        {"role": "assistant", "content": None, "tool_calls": [_call("brave_search", {"query": "llama 4 release"})]},
        {"role": "tool", "content": "April 2025"},
        {"role": "assistant", "content": None, "tool_calls": [_call("wolfram_alpha", {"query": "2+2"})]},
        {"role": "tool", "content": "4"},
        {"role": "assistant", "content": None, "tool_calls": [_call("photogen", {"query": "a llama"})]},
        {"role": "tool", "content": "<image>"},
        {"role": "assistant", "content": None, "tool_calls": [_call("code_interpreter", {"code": "print(1+1)"})]},
        {"role": "tool", "content": "2"},
    ],
    "multiple_calls": [
        {"role": "user", "content": "SF and Seattle"},
        {"role": "assistant", "content": None, "tool_calls": [
            _call("get_weather", {"city": "SF"}, "a"), _call("get_weather", {"city": "Seattle"}, "b")]},
        {"role": "tool", "content": "1"},
        {"role": "tool", "content": "2"},
    ],
    "end_of_message_and_context": [
        {"role": "user", "content": "Summarise", "context": "Some retrieved passage."},
        {"role": "assistant", "content": "Partial answer", "stop_reason": "end_of_message"},
    ],
}


# --- rendering against Meta ------------------------------------------------------------------------

def test_spec_example_ids(tok):
    r = render(tok, DIALOGS["spec"])
    assert r.ids == [200000, 200005, 15651, 200006, 368, 4662, 583, 262, 19933, 43910, 200008,
                     200005, 1556, 200006, 368, 25181, 200008, 200005, 140680, 200006, 368]
    assert r.loss_mask == [False] * 21 and len(r) == 21


@pytest.mark.parametrize("name", [n for n in DIALOGS if n != "multiple_calls"])
@pytest.mark.parametrize("tool_format", ["python_list", "json", "function_tag"])
def test_render_matches_meta(tok, meta, name, tool_format):
    messages = DIALOGS[name]
    want = _meta_ids(meta, messages, tool_format)
    assert render(tok, messages, tool_format=tool_format).ids == want
    header = 4  # <|header_start|> assistant <|header_end|> "\n\n"
    assert render(tok, messages, tool_format=tool_format, add_generation_prompt=False).ids == want[:-header]


@pytest.mark.parametrize("tool_format", ["json", "function_tag"])
def test_render_multiple_calls_matches_meta(tok, meta, tool_format):
    messages = DIALOGS["multiple_calls"]
    assert render(tok, messages, tool_format=tool_format).ids == _meta_ids(meta, messages, tool_format)


def test_render_multiple_python_list_calls_as_one_list(tok, meta):
    # Deliberate difference: one list, as the model writes it; Meta writes [f(..)][f(..)].
    text = tok.decode(render(tok, DIALOGS["multiple_calls"]).ids)
    assert '[get_weather(city="SF"), get_weather(city="Seattle")]<|eom|>' in text
    assert tok.decode(_meta_ids(meta, DIALOGS["multiple_calls"], "python_list")).count("][") == 1


def test_python_list_values_are_literals():
    texts = format_tool_calls([ToolCall("f", {"s": 'say "hi"\n', "d": {"k": [1, None]}, "t": (1, 2), "b": False})])
    assert texts == ['[f(s="say \\"hi\\"\\n", d={"k": [1, None]}, t=[1, 2], b=False)]']
    with pytest.raises(ValueError, match="not JSON-like"):
        format_tool_calls([ToolCall("f", {"x": {1, 2}})])


# --- loss mask -------------------------------------------------------------------------------------

def _trained(tok: Tokenizer, r: Rendered) -> list[int]:
    return [i for i, m in zip(r.ids, r.loss_mask, strict=True) if m]


def test_loss_mask_covers_assistant_content_and_end_token(tok):
    r = render(tok, DIALOGS["tool_round"], add_generation_prompt=False)
    assert len(r.ids) == len(r.loss_mask)
    want = [*tok.encode('[get_weather(city="San Francisco")]'), tok.eom_id,
            *tok.encode("It is 25 C in San Francisco."), tok.eot_id]
    assert _trained(tok, r) == want
    assert r.loss_mask[0] is False  # BOS
    with_prompt = render(tok, DIALOGS["tool_round"])
    assert with_prompt.loss_mask[len(r.ids):] == [False] * 4  # the generation-prompt header


def test_loss_mask_spans_are_contiguous(tok):
    r = render(tok, DIALOGS["multi_turn"])
    header = [200005, 140680, 200006, 368]
    start = next(k for k in range(len(r.ids)) if r.ids[k:k + 4] == header) + 4
    end = start + len(tok.encode('"What is a helpful assistant?"')) + 1
    assert r.loss_mask == [False] * start + [True] * (end - start) + [False] * (len(r.ids) - end)
    assert r.ids[end - 1] == tok.eot_id


# --- tools in the system prompt --------------------------------------------------------------------

@pytest.mark.parametrize("tool_format", ["python_list", "json", "function_tag"])
def test_tools_go_into_the_system_prompt(tok, tool_format):
    block = tool_prompt([WEATHER_TOOL], tool_format)
    assert '"name": "get_weather"' in block and '"description": "Get weather info for places"' in block
    syntax = {"python_list": "[func_name1(param1=value1", "json": '{"name": function name, "parameters"',
              "function_tag": "<function=function_name>"}[tool_format]
    assert syntax in block

    with_system = render(tok, DIALOGS["spec"], tools=[WEATHER_TOOL], tool_format=tool_format)
    manual = [{"role": "system", "content": f"You are a helpful assistant\n\n{block}"}, DIALOGS["spec"][1]]
    assert with_system.ids == render(tok, manual).ids

    without_system = render(tok, DIALOGS["spec"][1:], tools=[WEATHER_TOOL], tool_format=tool_format)
    assert without_system.ids == render(tok, [{"role": "system", "content": block}, DIALOGS["spec"][1]]).ids
    assert not any(without_system.loss_mask)


def test_bad_tools(tok):
    with pytest.raises(ValueError, match="a tool is"):
        render(tok, DIALOGS["spec"], tools=[{"type": "function"}])
    with pytest.raises(ValueError, match="system message must be text only"):
        render(tok, [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
               tools=[WEATHER_TOOL])


# --- images and errors -----------------------------------------------------------------------------

def test_image_parts_use_the_hook(tok):
    image = [200080, 200090, *[200092] * 3, 200081]
    seen = []

    def hook(part: dict) -> list[int]:
        seen.append(part["type"])
        return image

    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:..."}},
                                             {"type": "text", "text": "Describe"}, {"type": "image"}]}]
    r = render(tok, messages, image_tokens=hook)
    assert seen == ["image_url", "image"]
    assert r.ids == [200000, 200005, 1556, 200006, 368, *image, *tok.encode("Describe"), *image, 200008,
                     200005, 140680, 200006, 368]
    assert not any(r.loss_mask)
    with pytest.raises(ValueError, match=r"messages\[0\]: an image content part needs the `image_tokens` hook"):
        render(tok, messages)


def test_render_errors(tok):
    with pytest.raises(ValueError, match=r"messages\[1\]: unknown role 'bot'"):
        render(tok, [{"role": "user", "content": "x"}, {"role": "bot", "content": "y"}])
    with pytest.raises(ValueError, match="arguments are not valid JSON"):
        render(tok, [{"role": "assistant", "content": None, "tool_calls": [_call("f", {}) | {
            "function": {"name": "f", "arguments": "{oops"}}]}])
    with pytest.raises(ValueError, match="only assistant messages carry tool_calls"):
        render(tok, [{"role": "user", "content": "x", "tool_calls": [_call("f", {})]}])
    with pytest.raises(ValueError, match="unsupported content part 'audio'"):
        render(tok, [{"role": "user", "content": [{"type": "audio"}]}])
    with pytest.raises(ValueError, match="tool_format must be one of"):
        render(tok, DIALOGS["spec"], tool_format="xml")


# --- parsing model output --------------------------------------------------------------------------

def _calls(msg: AssistantMessage) -> list[tuple[str, dict]]:
    return [(c.name, c.arguments) for c in msg.tool_calls]


@pytest.mark.parametrize(("text", "calls", "content"), [
    ('[get_weather(city="San Francisco", metric="celsius")]', [("get_weather", {"city": "San Francisco",
                                                                                "metric": "celsius"})], ""),
    ("[get_user_info(user_id=7890, special='black'), ping()]",
     [("get_user_info", {"user_id": 7890, "special": "black"}), ("ping", {})], ""),
    ('[f(a=[1, 2.5, None], b={"k": (True, "x")})]', [("f", {"a": [1, 2.5, None], "b": {"k": [True, "x"]}})], ""),
    ('<function=trending_songs>{"n": 10}</function>', [("trending_songs", {"n": 10})], ""),
    ('<function=f>{"q": {"nested": [1, {"x": "}"}]}}</function>', [("f", {"q": {"nested": [1, {"x": "}"}]}})], ""),
    ("<function=f>{'a': 'single quotes'}</function>", [("f", {"a": "single quotes"})], ""),
    ('Sure. <function=a>{}</function> <function=b>{"x": 1}</function> Done.',
     [("a", {}), ("b", {"x": 1})], "Sure.   Done."),
    ('{"type": "function", "name": "f", "parameters": {"a": 1}}', [("f", {"a": 1})], ""),
    ('{"name": "f", "arguments": "{\\"a\\": 1}"}', [("f", {"a": 1})], ""),
    ('[{"name": "f", "parameters": {}}, {"name": "g", "parameters": {"x": "y"}}]', [("f", {}), ("g", {"x": "y"})], ""),
    ('{"type": "function", "function": {"name": "f", "arguments": "{}"}}', [("f", {})], ""),
    ('brave_search.call(query="llama 4")', [("brave_search", {"query": "llama 4"})], ""),
    ("Checking: wolfram_alpha.call(query='2+2')", [("wolfram_alpha", {"query": "2+2"})], "Checking:"),
    ('photogen.call(query="a \\"quoted\\" llama")', [("photogen", {"query": 'a "quoted" llama'})], ""),
])
def test_parse_formats(tok, text, calls, content):
    for suffix, reason in (("<|eot|>", "end_of_turn"), ("<|eom|>", "end_of_message"), ("", "out_of_tokens")):
        msg = parse_assistant(tok, text + suffix)
        assert (_calls(msg), msg.content, msg.stop_reason) == (calls, content, reason)
        from_ids = parse_assistant(tok, [*tok.encode(text), tok.special_id(suffix)] if suffix else tok.encode(text))
        assert (_calls(from_ids), from_ids.content, from_ids.stop_reason) == (calls, content, reason)


@pytest.mark.parametrize("text", [
    "[get_weather(city=]", "[get_weather('SF')]", "[f(**kw)]", "[os.system(cmd='ls')]", "[f(a=__import__('os'))]",
    "[f(a=1e999)]", "[f(a={1, 2})]", "[f(a=b'x')]", "[f(a=1j)]", "[1, 2, 3]", "[]", "[f(a=1)] trailing", "[" * 5000,
    "[" * 300 + "]" * 300, "<function=f>{", "<function=f>[1]</function>", "<function=f>{'a': x}</function>",
    "<function=bad name>{}</function>", '{"name": "Bob", "age": 3}', '{"name": 1, "parameters": {}}',
    '{"name": "f", "parameters": [1]}', '{"name": "f", "parameters": {"x": NaN}}', '{"name": "f"', "{" * 5000,
    'brave_search.call(query="unterminated)', 'google.call(query="x")', "just some text", "",
    '{"name": "f", "arguments": "{not json"}',
])
def test_parse_malformed_is_content(tok, text):
    msg = parse_assistant(tok, text + "<|eot|>")
    assert msg.tool_calls == [] and msg.content == text and msg.stop_reason == "end_of_turn"
    assert msg.to_openai() == {"role": "assistant", "content": text}


def test_parse_python_tag_and_header(tok):
    msg = parse_assistant(tok, "<|python_start|>import math\nprint(math.pi)<|python_end|><|eom|>")
    assert _calls(msg) == [("code_interpreter", {"code": "import math\nprint(math.pi)"})]
    assert msg.stop_reason == "end_of_message" and msg.content == ""
    msg = parse_assistant(tok, "<|header_start|>assistant<|header_end|>\n\n<|python_start|>[f(x=1)]<|python_end|>")
    assert _calls(msg) == [("f", {"x": 1})] and msg.stop_reason == "out_of_tokens"
    header = render(tok, [], add_generation_prompt=True).ids[1:]
    ids = [*header, tok.special_id("<|python_start|>"), *tok.encode("x = 1"), tok.special_id("<|python_end|>"),
           tok.eom_id]
    assert _calls(parse_assistant(tok, ids)) == [("code_interpreter", {"code": "x = 1"})]


def test_parse_ids_are_structural(tok):
    literal = parse_assistant(tok, tok.encode("Type <|eot|>"))  # text that spells a stop token is text
    assert literal.content == "Type <|eot|>" and literal.stop_reason == "out_of_tokens"
    after_stop = parse_assistant(tok, [*tok.encode("Hello"), tok.eot_id, *tok.encode("junk"), tok.eom_id])
    assert after_stop.content == "Hello" and after_stop.stop_reason == "end_of_turn"
    assert parse_assistant(tok, [*tok.encode("Hi"), tok.eos_id]).stop_reason == "end_of_turn"


def test_parse_agrees_with_meta_on_single_calls(tok, meta):
    chat_format, dt = meta
    outputs = [
        '[get_weather(city="San Francisco", metric="celsius")]<|eot|>',
        '<function=trending_songs>{"n": 10, "genre": "jazz"}</function><|eot|>',
        '{"type": "function", "name": "f", "parameters": {"a": [1, 2]}}<|eom|>',
        'brave_search.call(query="llama 4")<|eom|>',
        "<|python_start|>print(1)<|python_end|><|eom|>",
        "The answer is 42.<|eot|>",
        "A partial answ",
    ]
    for text in outputs:
        want = chat_format.decode_assistant_message_from_content(text, dt.StopReason.out_of_tokens)
        got = parse_assistant(tok, text)
        want_calls = [(c.tool_name if isinstance(c.tool_name, str) else c.tool_name.value, c.arguments)
                      for c in want.tool_calls]
        assert (_calls(got), got.content, got.stop_reason) == (want_calls, want.content, want.stop_reason.value)


@pytest.mark.parametrize("tool_format", ["python_list", "json", "function_tag"])
def test_render_then_parse_round_trip(tok, tool_format):
    calls = [_call("get_weather", {"city": "São Paulo", "days": 3, "units": ["C", "F"]}, "a"),
             _call("get_time", {"tz": "America/Sao_Paulo"}, "b")]
    if tool_format != "python_list":
        calls = calls[:1]  # Meta's json and function_tag formats parse back one call per message
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": None, "tool_calls": calls}]
    r = render(tok, messages, tool_format=tool_format, add_generation_prompt=False)
    msg = parse_assistant(tok, _trained(tok, r))
    assert msg.stop_reason == "end_of_message"
    assert [c.to_openai()["function"] for c in msg.tool_calls] == [
        {"name": c["function"]["name"], "arguments": json.dumps(json.loads(c["function"]["arguments"]),
                                                                ensure_ascii=False)} for c in calls]
    # and the parsed message renders back to the same ids
    again = render(tok, [messages[0], msg.to_openai()], tool_format=tool_format, add_generation_prompt=False)
    assert again.ids == r.ids


def test_to_openai(tok):
    msg = parse_assistant(tok, '[f(a=1)]<|eot|>')
    out = msg.to_openai()
    assert out["role"] == "assistant" and out["content"] is None and msg.finish_reason == "tool_calls"
    (call,) = out["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_") and call["function"] == {
        "name": "f", "arguments": '{"a": 1}'}
    assert parse_assistant(tok, "Hi<|eot|>").finish_reason == "stop"
    assert parse_assistant(tok, "Hi").finish_reason == "length"


# --- never raises ----------------------------------------------------------------------------------

_FRAGMENTS = ["[", "]", "(", ")", "{", "}", "f", "g", "=", ",", ":", '"', "'", "\\", " ", "\n", "1", "1e999",
              "None", "**", "x.y", "name", '"name"', '"parameters"', '"arguments"', '"type"', '"function"',
              "<function=f>", "</function>", "<|python_start|>", "<|python_end|>", "<|eot|>", "<|eom|>",
              "brave_search.call(query=", "<|header_start|>assistant<|header_end|>\n\n", "NaN", "\x00", "😀"]


def _check_message(msg: AssistantMessage) -> None:
    assert isinstance(msg.content, str)
    assert msg.stop_reason in ("end_of_turn", "end_of_message", "out_of_tokens")
    json.dumps(msg.to_openai())  # arguments are JSON-serialisable


@settings(FAST, max_examples=400)
@given(st.one_of(st.text(), st.lists(st.sampled_from(_FRAGMENTS), max_size=30).map("".join)))
def test_parse_never_raises_on_text(tok, text):
    _check_message(parse_assistant(tok, text))


@settings(FAST, max_examples=300)
@given(st.lists(st.one_of(st.integers(0, 202_047), st.sampled_from([200001, 200005, 200007, 200008, 200016,
                                                                  200017, 58, 60, 2, 7, 1])), max_size=60))
def test_parse_never_raises_on_ids(tok, ids):
    _check_message(parse_assistant(tok, ids))
