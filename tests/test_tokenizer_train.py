"""herd.tokenizer_train and compact tokenizers: layout of the ids, round trips, file checks, chat, CLI.

One tokenizer of 1024 tokens is trained per module on ~400 KB of this Python's standard library source
(well under a second); the held-out file that measures compression is not part of that corpus.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from herd.chat import parse_assistant, render
from herd.cli.main import main
from herd.tokenizer import (
    COMPACT_SPECIAL_NAMES,
    SPECIAL_TOKENS,
    HFTokenizer,
    StreamDecoder,
    TokenizerError,
    compact_special_ids,
    load_tokenizer,
)
from herd.tokenizer_train import _pieces, tokenizer_json_path, train_tokenizer

VOCAB = 1024
N_BASE = VOCAB - 32
STDLIB = Path(os.__file__).parent
HELD_OUT = STDLIB / "typing.py"
FAST = settings(max_examples=200, database=None, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _stdlib_texts(max_chars: int) -> list[str]:
    texts, n = [], 0
    for path in sorted(STDLIB.glob("*.py")):
        if path != HELD_OUT and n < max_chars:
            texts.append(path.read_text(encoding="utf-8"))
            n += len(texts[-1])
    return texts


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return _stdlib_texts(400_000)


@pytest.fixture(scope="module")
def tok_dir(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compact")
    train_tokenizer(corpus, VOCAB, out, progress=False)
    return out


@pytest.fixture(scope="module")
def tok(tok_dir) -> HFTokenizer:
    return HFTokenizer(tok_dir / "tokenizer.json")


# --- the special table -----------------------------------------------------------------------------

def test_compact_special_names():
    assert len(COMPACT_SPECIAL_NAMES) == len(set(COMPACT_SPECIAL_NAMES)) == 32
    # Llama 4's names in Llama 4's order: the named specials, then the first 11 generic reserved ones.
    assert sorted(COMPACT_SPECIAL_NAMES, key=SPECIAL_TOKENS.__getitem__) == COMPACT_SPECIAL_NAMES
    assert not any("reserved" in name for name in COMPACT_SPECIAL_NAMES[:21])
    assert COMPACT_SPECIAL_NAMES[21:] == [f"<|reserved_special_token_{i}|>" for i in range(11)]


def test_compact_special_ids():
    ids = compact_special_ids(8192)
    assert ids["<|begin_of_text|>"] == 8160 and ids["<|finetune_right_pad|>"] == 8172
    assert (ids["<|end_of_text|>"], ids["<|eom|>"], ids["<|eot|>"]) == (8161, 8167, 8168)
    assert sorted(ids.values()) == list(range(8160, 8192))
    with pytest.raises(ValueError, match="no room"):
        compact_special_ids(32)


def test_trained_layout(tok, tok_dir):
    assert (tok.n_words, tok.n_base) == (VOCAB, N_BASE)
    assert tok.special == compact_special_ids(VOCAB)
    assert (tok.bos_id, tok.eos_id, tok.eom_id, tok.eot_id, tok.pad_id) == (992, 993, 999, 1000, 1004)
    assert tok.stop_ids == (993, 999, 1000)
    assert tok.is_special(N_BASE) and not tok.is_special(N_BASE - 1)
    assert tok.piece(tok.eot_id) == b"<|eot|>" and tok.decode([tok.bos_id]) == "<|begin_of_text|>"
    with pytest.raises(KeyError, match="leaves out"):
        tok.special_id("<|text_post_train_reserved_special_token_0|>")
    with pytest.raises(KeyError, match="not a special token of this tokenizer"):
        tok.special_id("<|eot_id|>")
    spec = json.loads((tok_dir / "tokenizer.json").read_text())
    assert sorted(spec["model"]["vocab"].values()) == list(range(N_BASE))
    assert [(t["id"], t["content"], t["special"]) for t in spec["added_tokens"]] == [
        (N_BASE + k, name, True) for k, name in enumerate(COMPACT_SPECIAL_NAMES)]
    assert [p.name for p in tok_dir.iterdir()] == ["tokenizer.json"]  # no temporary file left behind


# --- encoding --------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "", "x", "def f(x):\n    return x  # ok\n", "héllo wörld", "数据 データ 데이터", "😀👍🏽👨‍👩‍👧‍👦🇫🇷",
    "\x00\x01\x7f\u0080\u00a0\u00ad\uffff\U0010ffff", "\r\n\t \u2028\u3000", "a" * 30_000 + " " * 26_000 + "b",
])
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert max(ids, default=0) < N_BASE


@FAST
@given(st.text())
def test_round_trip_hypothesis(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_round_trip_corpus_and_stream(tok, corpus):
    for doc in corpus[:4]:
        ids = tok.encode(doc)
        assert tok.decode(ids) == doc
        stream = StreamDecoder(tok)
        assert "".join(stream.push(i) for i in ids) + stream.flush() == doc


def test_surrogates_are_replaced(tok):
    assert tok.encode("a\ud800b") == tok.encode("a\ufffdb")


def test_compresses_python_source(tok):
    source = HELD_OUT.read_text(encoding="utf-8")
    n_bytes = len(source.encode())
    assert len(tok.encode(source)) < 0.5 * n_bytes  # ~0.40 with 1024 tokens (a byte-level BPE is 1.0 untrained)


def test_special_names_are_plain_text(tok):
    for text in ["<|eot|>", " ".join(COMPACT_SPECIAL_NAMES), "<|header_start|>assistant<|header_end|>"]:
        ids = tok.encode(text)
        assert not any(tok.is_special(i) for i in ids) and tok.decode(ids) == text
    assert tok.encode("Hi", bos=True, eos=True) == [tok.bos_id, *tok.encode("Hi"), tok.eos_id]


def test_training_text_is_cut_like_encoding():
    assert [len(p) for p in _pieces(["a" * 60_000, "b\ud800"])] == [25_000, 25_000, 10_000, 2]
    assert list(_pieces(["b\ud800"])) == ["b\ufffd"]


# --- loading and checking files --------------------------------------------------------------------

def test_load_tokenizer_picks_tokenizer_json(tok, tok_dir):
    loaded = load_tokenizer(tok_dir)
    assert isinstance(loaded, HFTokenizer) and loaded.source == tok_dir / "tokenizer.json"
    assert loaded.special == tok.special and loaded.encode("import os\n") == tok.encode("import os\n")


def _edited(tok_dir: Path, tmp_path: Path, edit) -> Path:
    spec = json.loads((tok_dir / "tokenizer.json").read_text())
    edit(spec)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec))
    return path


def _set_added(spec: dict, token_id: int, content: str) -> None:
    next(t for t in spec["added_tokens"] if t["id"] == token_id)["content"] = content


def _swap_eom_eot(spec: dict) -> None:
    _set_added(spec, 999, "<|eot|>")
    _set_added(spec, 1000, "<|eom|>")


def _drop_vocab_entry(spec: dict) -> None:
    vocab = spec["model"]["vocab"]
    del vocab[next(t for t, i in vocab.items() if i == 500)]


@pytest.mark.parametrize(("edit", "message"), [
    (lambda s: _set_added(s, 1000, "<|eot_id|>"), r"'<\|eot_id\|>' has id 1000; '<\|eot\|>' there"),
    (_swap_eom_eot, r"'<\|eot\|>' has id 999; '<\|eom\|>' there"),
    (lambda s: s["added_tokens"].append({"id": 1024, "content": "<|extra|>", "special": True}),
     r"'<\|extra\|>' has id 1024; no token there"),
    (lambda s: s["model"]["vocab"].update({"<|eot|>": 5}), r"'<\|eot\|>' has id 5; no token there"),
    (lambda s: s["added_tokens"].pop(), r"missing: '<\|reserved_special_token_10\|>' \(id 1023\)"),
    (lambda s: s.update(added_tokens=[]), r"missing: '<\|begin_of_text\|>' \(id 992\)"),
    (_drop_vocab_entry, r"'<\|begin_of_text\|>' has id 992; '<\|end_of_text\|>' there"),
])
def test_bad_compact_files(tok_dir, tmp_path, edit, message):
    with pytest.raises(TokenizerError, match=message):
        load_tokenizer(_edited(tok_dir, tmp_path, edit))


def test_bad_compact_vocabulary(tok_dir, tmp_path):
    def gap(spec):  # id 500 moved past the end: still 992 BPE tokens, so the specials are in place
        _drop_vocab_entry(spec)
        spec["model"]["vocab"]["zzzz"] = 2000
    with pytest.raises(TokenizerError, match=r"992 entries but not the ids 0 \.\. 991 \(first gap .* at id 500\)"):
        load_tokenizer(_edited(tok_dir, tmp_path, gap))

    def no_byte(spec):  # the single byte "A" replaced by a token of its own
        vocab = spec["model"]["vocab"]
        vocab["AAAAAAA"] = vocab.pop("A")
    with pytest.raises(TokenizerError, match=r"no single-byte tokens for bytes \[65\]"):
        load_tokenizer(_edited(tok_dir, tmp_path, no_byte))


# --- training errors -------------------------------------------------------------------------------

def test_corpus_too_small(tmp_path):
    with pytest.raises(ValueError, match=r"corpus too small: learned \d+ of 992 tokens; use a smaller --vocab-size"):
        train_tokenizer(["hello world, hello world"], VOCAB, tmp_path / "t", progress=False)
    with pytest.raises(ValueError, match="more than 288"):
        train_tokenizer(["hello"], 288, tmp_path / "t", progress=False)
    assert not (tmp_path / "t").exists()


def test_out_is_a_json_path(tmp_path):
    assert tokenizer_json_path(tmp_path) == tmp_path / "tokenizer.json"
    assert tokenizer_json_path(tmp_path / "new") == tmp_path / "new" / "tokenizer.json"
    tok = train_tokenizer(_stdlib_texts(50_000), 300, tmp_path / "sub" / "small.json", progress=False)
    assert tok.source == tmp_path / "sub" / "small.json" and tok.n_words == 300 and tok.bos_id == 268


# --- chat ------------------------------------------------------------------------------------------

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get weather info for places",
    "parameters": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}}}


@pytest.mark.parametrize("tool_format", ["python_list", "json", "function_tag"])
def test_chat_with_tools(tok, tool_format):
    call = {"id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": "San Francisco"})}}
    messages = [
        {"role": "system", "content": "You are a helpful assistant"},
        {"role": "user", "content": "What is the weather in SF? <|eot|>"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": '"25 C"'},
        {"role": "assistant", "content": "It is 25 C in San Francisco."},
    ]
    r = render(tok, messages, tools=[WEATHER_TOOL], tool_format=tool_format, add_generation_prompt=False)
    s = tok.special
    assert r.ids[0] == tok.bos_id and r.ids.count(s["<|header_start|>"]) == 5
    assert r.ids.count(tok.eot_id) == 3 and r.ids.count(tok.eom_id) == 2  # the call and the tool result
    text = tok.decode(r.ids)
    assert text.startswith("<|begin_of_text|><|header_start|>system<|header_end|>\n\n")
    assert "get_weather" in text and "<|header_start|>ipython<|header_end|>" in text
    assert "What is the weather in SF? <|eot|><|eot|>" in text  # the user's literal text, then the real token

    # The trained spans are the assistant turns; each parses back into the message it was rendered from.
    spans, current = [], []
    for token, trained in zip(r.ids, r.loss_mask, strict=True):
        if trained:
            current.append(token)
            if token in tok.stop_ids:
                spans.append(current)
                current = []
    assert len(spans) == 2
    first, second = (parse_assistant(tok, span) for span in spans)
    assert [(c.name, c.arguments) for c in first.tool_calls] == [("get_weather", {"city": "San Francisco"})]
    assert first.stop_reason == "end_of_message"
    assert second.content == "It is 25 C in San Francisco." and second.stop_reason == "end_of_turn"
    assert parse_assistant(tok, tok.decode(spans[0])).tool_calls == first.tool_calls
    header = render(tok, [], add_generation_prompt=True).ids[1:]
    assert parse_assistant(tok, header + spans[0]).tool_calls == first.tool_calls


# --- herd tokenizer train --------------------------------------------------------------------------

def _cli(argv: list[str]) -> int:
    return main(["tokenizer", *argv])


def test_cli_train(tmp_path, capsys, caplog):
    src = tmp_path / "src"
    src.mkdir()
    for path in sorted(STDLIB.glob("*.py"))[:12]:
        (src / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    (src / "__bad.py").write_bytes(b"x = '\xff'\n")  # not UTF-8: skipped with a warning
    out = tmp_path / "tok"
    with caplog.at_level(logging.INFO, logger="herd"):
        assert _cli(["train", str(src), "--out", str(out), "--vocab-size", "512", "--max-chars", "100000"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out / 'tokenizer.json'}: 512 tokens (480 BPE + 32 special)" in printed
    assert "bos 480, eos 481, eom 487, eot 488, pad 492" in printed
    assert re.search(r"skipping .*bad\.py.*invalid UTF-8", caplog.text)
    assert "--max-chars cap" in caplog.text
    assert load_tokenizer(out).special == compact_special_ids(512)


@pytest.mark.parametrize(("argv", "message"), [
    (["{src}", "--vocab-size", "4096"], r"corpus too small: learned \d+ of 4064 tokens"),
    (["{src}", "--vocab-size", "100"], "more than 288"),
    (["{src}/nothing-here"], "no such file or directory"),
    (["{src}/empty.txt"], "no text in"),
    (["{src}", "--max-chars", "0"], "--max-chars must be positive"),
])
def test_cli_errors(tmp_path, capsys, argv, message):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text("print('hello world')\n" * 50)
    (src / "empty.txt").write_text("  \n")
    argv = [a.format(src=src) for a in argv]
    assert _cli(["train", *argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("herd tokenizer: error: ") and re.search(message, err), err
    assert not (tmp_path / "out").exists()
