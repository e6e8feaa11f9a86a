"""herd.tokenizer against Meta's reference tokenizer (llama_models.llama4.tokenizer) and spec §4.1–4.2.

The tokenizer file comes from the shared checkout (../shared/llama4/tokenizer.model) and from the
installed llama_models package; a missing file fails the test with a message, it never skips.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
import re
import shutil
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from herd.tokenizer import (
    N_BASE_TOKENS,
    O200K_PATTERN,
    SPECIAL_TOKENS,
    HFTokenizer,
    StreamDecoder,
    Tokenizer,
    TokenizerError,
    _split_for_bpe,
    load_tokenizer,
)

SHARED_MODEL = Path(__file__).resolve().parents[1] / ".." / "shared" / "llama4" / "tokenizer.model"


def _require(path: Path | None, what: str) -> Path:
    if path is None or not path.is_file():
        pytest.fail(f"{what} not found at {path}: the tokenizer tests need Meta's Llama 4 tokenizer.model")
    return path


def _packaged_model() -> Path:
    try:
        import llama_models
    except ImportError:
        pytest.fail("llama_models is not installed (pip install -e '.[dev]'); it ships Meta's tokenizer.model")
    return _require(Path(llama_models.__file__).parent / "llama4" / "tokenizer.model", "llama_models tokenizer")


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer(_require(SHARED_MODEL, "shared tokenizer.model"))


@pytest.fixture(scope="module")
def meta():
    from llama_models.llama4.tokenizer import Tokenizer as MetaTokenizer

    return MetaTokenizer(_require(SHARED_MODEL, "shared tokenizer.model"))


# --- a few MB of mixed-script text, deterministic --------------------------------------------------

_SCRIPTS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿßœŠŽ",
    "αβγδεζηθικλμνξοπρστυφχψωΑΒΓΔ",
    "абвгдежзийклмнопрстуфхцчшщъыьэюяАБВГД",
    "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年",
    "あいうえおかきくけこアイウエオカキクケコ",
    "가나다라마바사아자차카타파하한국어",
    "ابتثجحخدذرزسشصضطظعغفقكلمنهوي",
    "אבגדהוזחטיכלמנסעפצקרשת",
    "अआइईउऊऋएऐओऔकखगघङचछजझञटठडढणतथदधनपफबभमयरलवशषसह्ािीुूेैोौं",
    "กขฃคฅฆงจฉชซฌญฎฏฐฑฒณดตถทธนบปผฝพฟภมยรลวศษสหฬอฮะัาำิีึืุู",
    "0123456789٠١٢٣٤٥٦٧٨٩",
    ".,;:!?'\"()[]{}<>/\\|@#$%^&*-_=+~`",
]
_EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "❤️", "🧑🏿‍🚀", "🏳️‍🌈", "✨", "🤖", "e\u0301", "a\u0308"]
_SPACES = [" ", " ", " ", "  ", "\t", "\n", "\n\n", "\r\n", "\u00a0", "\u3000", "\u2028", "   \n", " \t ", "\n   "]
_EXTRAS = ["<|eot|>", "<|begin_of_text|>", "<|header_start|>", "'s", "'LL", "n't", "http://x.y/z?a=1", "1234567"]


def _random_word(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.08:
        return rng.choice(_EMOJI)
    if r < 0.12:
        return rng.choice(_EXTRAS)
    if r < 0.16:  # any code point but surrogates
        return "".join(chr(rng.choice([rng.randrange(0x20, 0xD800), rng.randrange(0xE000, 0x110000)]))
                       for _ in range(rng.randint(1, 4)))
    alphabet = rng.choice(_SCRIPTS)
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))


@functools.cache
def corpus(n_docs: int = 1500, seed: int = 0) -> tuple[str, ...]:
    """~2.5 MB in documents of 200–3000 characters."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        parts, n = [], 0
        target = rng.randint(200, 3000)
        while n < target:
            w = _random_word(rng) + rng.choice(_SPACES)
            parts.append(w)
            n += len(w)
        docs.append("".join(parts))
    return tuple(docs)


# --- the files -------------------------------------------------------------------------------------

def test_tokenizer_files_are_metas():
    for path in (_require(SHARED_MODEL, "shared tokenizer.model"), _packaged_model()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest.startswith("d0bdbaf5") and digest.endswith("ed6ed"), (path, digest)  # spec §4.1


def test_packaged_and_shared_agree(tok):
    packaged = load_tokenizer(_packaged_model())
    text = corpus()[0]
    assert packaged.encode(text) == tok.encode(text)


# --- special tokens --------------------------------------------------------------------------------

def test_special_table_matches_meta(tok, meta):
    assert tok.special == meta.special_tokens
    assert tok.n_words == meta.n_words == 202_048


def test_special_ids(tok):
    s = tok.special
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (200000, 200001, 200018)
    assert tok.stop_ids == (200001, 200007, 200008)
    assert (tok.eom_id, tok.eot_id) == (200007, 200008)
    assert s["<|header_start|>"] == 200005 and s["<|header_end|>"] == 200006
    assert s["<|python_start|>"] == 200016 and s["<|python_end|>"] == 200017
    assert s["<|text_post_train_reserved_special_token_5|>"] == 200015
    assert s["<|text_post_train_reserved_special_token_8|>"] == 200019
    assert s["<|text_post_train_reserved_special_token_68|>"] == 200079
    assert "<|text_post_train_reserved_special_token_6|>" not in s
    assert (s["<|image_start|>"], s["<|image_end|>"]) == (200080, 200081)
    assert (s["<|tile_x_separator|>"], s["<|tile_y_separator|>"]) == (200084, 200085)
    assert (s["<|image|>"], s["<|patch|>"]) == (200090, 200092)
    assert s["<|vision_reserved_special_token_1047|>"] == 201133
    assert s["<|reasoning_thinking_start|>"] == 201142 and s["<|reasoning_thinking_end|>"] == 201143
    assert s["<|reserved_special_token_0|>"] == 201144
    assert s["<|reserved_special_token_903|>"] == 202047
    assert sorted(s.values()) == list(range(200000, 202048))
    assert tok.special_id("<|patch|>") == 200092
    assert tok.n_base == 200000 and tok.is_special(200000) and not tok.is_special(199999)


def test_special_id_unknown(tok):
    with pytest.raises(KeyError, match="not a special token of this tokenizer"):
        tok.special_id("<|eot_id|>")  # Llama 3's name
    with pytest.raises(KeyError, match="include the brackets"):
        tok.special_id("eot")


def test_special_token_text_is_plain_text(tok, meta):
    assert tok.encode("<|eot|>") == [40, 104, 81, 359, 159276]  # spec §4.1
    text = " ".join(SPECIAL_TOKENS)
    ids = tok.encode(text)
    assert max(ids) < N_BASE_TOKENS
    assert ids == meta.encode(text, bos=False, eos=False)
    assert tok.decode(ids) == text


# --- exact ids (spec §4.3) -------------------------------------------------------------------------

def test_spec_ids(tok):
    assert tok.encode("user") == [1556]
    assert tok.encode("assistant") == [140680]
    assert tok.encode("system") == [15651]
    assert tok.encode("ipython") == [607, 6934]
    assert tok.encode("\n\n") == [368]
    assert tok.encode("You are a helpful assistant") == [4662, 583, 262, 19933, 43910]
    assert tok.encode("Hi") == [25181]
    assert tok.encode("\nHi") == [198, 25181]
    assert tok.encode("\n\n\nHi") == [2946, 25181]
    assert tok.encode("Hi", bos=True, eos=True) == [200000, 25181, 200001]
    assert tok.encode("") == []
    assert tok.piece(0) == b"\xc0"  # rank 0 is byte 0xC0, not o200k's "!"


def test_matches_meta_on_corpus(tok, meta):
    for doc in corpus()[:300]:
        assert tok.encode(doc) == meta.encode(doc, bos=False, eos=False), doc[:80]
    whole = "".join(corpus())
    assert len(whole) > 2_000_000
    assert tok.encode(whole) == meta.encode(whole, bos=False, eos=False)


# --- decoding --------------------------------------------------------------------------------------

def test_round_trip_corpus(tok):
    for doc in corpus():
        assert tok.decode(tok.encode(doc)) == doc


@settings(max_examples=300, database=None, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text())
def test_round_trip_hypothesis(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_decode_specials_and_invalid_bytes(tok):
    assert tok.decode([200000, 25181, 200008]) == "<|begin_of_text|>Hi<|eot|>"
    assert tok.piece(200008) == b"<|eot|>"
    assert tok.decode([0]) == "\ufffd"  # a lone 0xC0 byte
    assert tok.decode([0, 25181]) == "\ufffdHi"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([202048])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.piece(-1)


def test_surrogates_are_replaced(tok):
    assert tok.encode("a\ud800b") == tok.encode("a\ufffdb")


def test_encode_rejects_non_str(tok):
    with pytest.raises(TypeError):
        tok.encode(b"bytes")


# --- streaming -------------------------------------------------------------------------------------

def test_stream_decoder_reassembles_without_replacement_chars(tok):
    split_chars = 0
    for doc in corpus()[:400]:
        ids = tok.encode(doc)
        stream = StreamDecoder(tok)
        chunks = [stream.push(i) for i in ids]
        assert all("\ufffd" not in c for c in chunks)
        assert "".join(chunks) + stream.flush() == doc
        split_chars += sum(1 for i in ids if _incomplete_utf8(tok.piece(i)))
    assert split_chars > 100  # the corpus really has characters split across tokens


def _incomplete_utf8(piece: bytes) -> bool:
    try:
        piece.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def test_stream_decoder_holds_partial_character(tok):
    ids = [i for i in tok.encode("\U0001f9ff") if _incomplete_utf8(tok.piece(i))]
    assert ids, "expected the nazar amulet emoji to need several byte-level tokens"
    stream = StreamDecoder(tok)
    out = [stream.push(i) for i in tok.encode("\U0001f9ff")]
    assert out[-1] == "\U0001f9ff" and all(c == "" for c in out[:-1])
    assert stream.flush() == ""


@settings(max_examples=200, database=None, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.integers(0, 202_047), max_size=40))
def test_stream_decoder_equals_decode_on_any_ids(tok, ids):
    stream = StreamDecoder(tok)
    assert "".join(stream.push(i) for i in ids) + stream.flush() == tok.decode(ids)


# --- long inputs -----------------------------------------------------------------------------------

def test_split_is_str_isspace():
    every = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)
    assert "".join(re.findall(r"\s", every)) == "".join(c for c in every if c.isspace())


@settings(max_examples=300, database=None, deadline=None)
@given(st.text(alphabet="ab \n\u3000", max_size=60), st.integers(1, 6), st.integers(1, 20))
def test_split_matches_meta(text, max_run, max_chars):
    from llama_models.llama4.tokenizer import Tokenizer as MetaTokenizer

    want = [piece for i in range(0, len(text), max_chars)
            for piece in MetaTokenizer._split_whitespaces_or_nonwhitespaces(text[i:i + max_chars], max_run)]
    got = _split_for_bpe(text, max_chars=max_chars, max_run=max_run)
    assert [p for p in got if p] == [p for p in want if p]


def test_pathological_inputs(tok, meta):
    for text in ["a" * 5_000_000, " " * 2_000_000]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
    mixed = ("x" * 30_000 + " " * 27_000 + "\u4e00" * 26_000) * 6  # runs straddle the 25k and 400k cuts
    assert tok.encode(mixed) == meta.encode(mixed, bos=False, eos=False)


# --- tokenizer.json (HF) variant -------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_json(tmp_path_factory) -> Path:
    """tokenizer.json written by transformers' own tiktoken conversion, with HF's Llama 4 extras:
    specials 200000–201133 only, the misspelled pad token, and a post-processor that prepends BOS."""
    from tokenizers import AddedToken, processors
    from transformers.convert_slow_tokenizer import TikTokenConverter

    names = [name for name, i in SPECIAL_TOKENS.items() if i <= 201133]
    hf = TikTokenConverter(vocab_file=str(_require(SHARED_MODEL, "shared tokenizer.model")), pattern=O200K_PATTERN,
                           extra_special_tokens=names).converted()
    hf.add_special_tokens([AddedToken("<|finetune_right_pad_id|>", special=True)])
    hf.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 200000)]),
    ])
    assert hf.encode("Hi <|eot|>").ids == [200000, 25181, 220, 200008]  # what HF itself does
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    hf.save(str(path))
    return path


@pytest.fixture(scope="module")
def hf_tok(hf_json) -> HFTokenizer:
    return HFTokenizer(hf_json)


@pytest.mark.slow
def test_hf_same_interface_and_table(hf_tok, tok):
    assert hf_tok.special == tok.special and hf_tok.n_words == tok.n_words and hf_tok.n_base == tok.n_base
    assert (hf_tok.bos_id, hf_tok.eos_id, hf_tok.pad_id, hf_tok.stop_ids) == (
        tok.bos_id, tok.eos_id, tok.pad_id, tok.stop_ids)
    assert all(hf_tok.piece(i) == tok.piece(i) for i in range(0, tok.n_words, 97))


@pytest.mark.slow
def test_hf_same_ids(hf_tok, tok):
    assert hf_tok.encode("<|eot|>") == [40, 104, 81, 359, 159276]
    assert hf_tok.encode("Hi", bos=True) == [200000, 25181]  # BOS only when asked
    text = " ".join(SPECIAL_TOKENS)
    assert hf_tok.encode(text) == tok.encode(text)
    for doc in corpus()[:500]:
        assert hf_tok.encode(doc) == tok.encode(doc), doc[:80]
    mixed = ("x" * 30_000 + " " * 27_000 + "y") * 3
    assert hf_tok.encode(mixed) == tok.encode(mixed)
    ids = tok.encode(corpus()[1])
    assert hf_tok.decode([*ids, 200008]) == tok.decode([*ids, 200008])


@pytest.mark.slow
def test_load_tokenizer_picks_tokenizer_json(hf_json, tmp_path, monkeypatch):
    (tmp_path / "tokenizer.json").symlink_to(hf_json)
    (tmp_path / "hf.bin").symlink_to(hf_json)  # sniffed as JSON despite the name
    # The dispatch alone (hf_tok covers loading), without reading the 28 MB file again:
    monkeypatch.setattr("herd.tokenizer.HFTokenizer", lambda path: ("hf", path))
    assert load_tokenizer(tmp_path) == ("hf", tmp_path / "tokenizer.json")
    assert load_tokenizer(tmp_path / "tokenizer.json") == ("hf", tmp_path / "tokenizer.json")
    assert load_tokenizer(tmp_path / "hf.bin") == ("hf", tmp_path / "hf.bin")


def test_hf_wrong_special_is_an_error(tmp_path):
    spec = {"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "decoder": {"type": "ByteLevel"},
            "added_tokens": [{"id": 200008, "content": "<|eot_id|>", "special": True}]}
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(TokenizerError, match=r"200008 is '<\|eot_id\|>'; Llama 4 has '<\|eot\|>'"):
        load_tokenizer(path)
    spec["added_tokens"] = []
    path.write_text(json.dumps(spec))
    with pytest.raises(TokenizerError, match="vocabulary has 1 entries"):
        load_tokenizer(path)
    spec["decoder"] = {"type": "Metaspace"}
    path.write_text(json.dumps(spec))
    with pytest.raises(TokenizerError, match="byte-level"):
        load_tokenizer(path)
    path.write_text("{not json")
    with pytest.raises(TokenizerError, match="cannot read"):
        load_tokenizer(path)


# --- load_tokenizer --------------------------------------------------------------------------------

def test_load_tokenizer_locations(tmp_path, caplog):
    shared = _require(SHARED_MODEL, "shared tokenizer.model")
    with caplog.at_level(logging.INFO, logger="herd.tokenizer"):
        default = load_tokenizer()
    assert default.source.samefile(_packaged_model())
    assert "shipped with llama_models" in caplog.text

    (tmp_path / "original").mkdir()
    shutil.copy(shared, tmp_path / "original" / "tokenizer.model")
    assert load_tokenizer(tmp_path).source == tmp_path / "original" / "tokenizer.model"
    shutil.copy(shared, tmp_path / "tokenizer.model")
    assert load_tokenizer(str(tmp_path)).source == tmp_path / "tokenizer.model"

    empty = tmp_path / "empty"
    empty.mkdir()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="herd.tokenizer"):
        fallback = load_tokenizer(empty)
    assert fallback.source.samefile(_packaged_model())
    assert "no tokenizer.model or tokenizer.json" in caplog.text


def test_load_tokenizer_errors(tmp_path, monkeypatch):
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")

    lines = _require(SHARED_MODEL, "shared tokenizer.model").read_bytes().splitlines()
    truncated = tmp_path / "truncated.model"
    truncated.write_bytes(b"\n".join(lines[:1000]))
    with pytest.raises(TokenizerError, match=r"1000 distinct ranks.*200000"):
        load_tokenizer(truncated)

    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"\n".join([*lines[:5], b"not-base64!! 5", *lines[6:]]))
    with pytest.raises(TokenizerError, match="line 6 is not 'base64 rank'"):
        load_tokenizer(garbage)

    binary = tmp_path / "weights.model"
    binary.write_bytes(bytes(range(256)) * 10)
    with pytest.raises(TokenizerError, match="not 'base64 rank'"):
        load_tokenizer(binary)

    # Without llama_models installed and without a path there is nothing to fall back on.
    monkeypatch.setitem(sys.modules, "llama_models", None)
    with pytest.raises(TokenizerError, match=r"no tokenizer found.*install llama-models"):
        load_tokenizer()
    with pytest.raises(TokenizerError, match=f"no tokenizer found in {re.escape(str(tmp_path))}"):
        load_tokenizer(tmp_path)
