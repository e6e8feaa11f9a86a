"""The Llama 4 tokenizer: 200,000 byte-level BPE ranks plus 2,048 special tokens (spec §4.1–4.2),
and compact tokenizers (a small trained BPE vocabulary plus 32 of Llama 4's special tokens) for small models.

- BPE runs on tiktoken over Meta's `tokenizer.model` rank file with the o200k-style split pattern;
  `HFTokenizer` runs the same BPE from an HF `tokenizer.json` (via `tokenizers`) behind the same interface.
- Special tokens have fixed ids 200000 + k (n_words = 202048). The table is built here from the
  Llama 4 naming scheme, not read from the file, so both back ends agree on every id.
- A compact tokenizer (`tokenizer.json` only, see `herd.tokenizer_train`) has n_base BPE tokens and then
  `COMPACT_SPECIAL_NAMES` at n_base + k: Llama 4's names, so the chat format works unchanged, and ids
  that follow from the vocabulary size alone (`compact_special_ids`), so configs need no tokenizer file.
- `encode` never produces a special token: text such as "<|eot|>" is ordinary text. Control tokens
  are added by ids (`special_id`, `bos_id`, ...), which is what the chat format does.
- Long inputs are cut as Meta's reference does (400,000-char pieces, and runs of more than 25,000
  whitespace or non-whitespace characters), so ids match Meta's even for pathological inputs.
- `decode` maps special ids to their names and replaces invalid UTF-8 with U+FFFD; `StreamDecoder`
  emits text token by token without ever splitting a UTF-8 character.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import importlib.resources
import json
import logging
import operator
import os
import re
from collections.abc import Iterable
from pathlib import Path

import tiktoken

logger = logging.getLogger(__name__)

__all__ = [
    "COMPACT_SPECIAL_NAMES", "N_BASE_TOKENS", "N_SPECIAL_TOKENS", "O200K_PATTERN", "SPECIAL_TOKENS", "HFTokenizer",
    "StreamDecoder", "TextStream", "Tokenizer", "TokenizerError", "compact_special_ids", "load_tokenizer",
]

N_BASE_TOKENS = 200_000
N_SPECIAL_TOKENS = 2_048

O200K_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# tiktoken's regex engine can overflow on very long runs (openai/tiktoken#195); Meta cuts the input at
# these limits before BPE, and so do we, so that ids agree with the reference on any input.
MAX_ENCODE_CHARS = 400_000
MAX_RUN_CHARS = 25_000

# Misspellings that HF's conversion writes into tokenizer.json; tolerated, the canonical name is used.
_HF_SPECIAL_ALIASES = {"<|finetune_right_pad_id|>"}


class TokenizerError(RuntimeError):
    """A tokenizer file is missing, unreadable, or not a Llama 4 tokenizer."""


def _special_token_names() -> list[str]:
    """The 2048 special-token names in id order (id = 200000 + index), spec §4.2."""
    def reserved(kind: str, lo: int, hi: int) -> list[str]:
        return [f"<|{kind}reserved_special_token_{i}|>" for i in range(lo, hi + 1)]

    names = ["<|begin_of_text|>", "<|end_of_text|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
             "<|header_start|>", "<|header_end|>", "<|eom|>", "<|eot|>", "<|step|>"]
    names += reserved("text_post_train_", 0, 5)
    names += ["<|python_start|>", "<|python_end|>", "<|finetune_right_pad|>"]
    names += reserved("text_post_train_", 8, 68)  # 6 and 7 are skipped in the released table
    names += ["<|image_start|>", "<|image_end|>", *reserved("vision_", 0, 1), "<|tile_x_separator|>",
              "<|tile_y_separator|>", *reserved("vision_", 2, 5), "<|image|>", *reserved("vision_", 6, 6),
              "<|patch|>", *reserved("vision_", 7, 1047)]
    names += [*reserved("reasoning_", 0, 7), "<|reasoning_thinking_start|>", "<|reasoning_thinking_end|>"]
    names += reserved("", 0, N_SPECIAL_TOKENS - len(names) - 1)
    assert len(names) == N_SPECIAL_TOKENS and len(set(names)) == N_SPECIAL_TOKENS
    return names


SPECIAL_TOKENS: dict[str, int] = {name: N_BASE_TOKENS + k for k, name in enumerate(_special_token_names())}

# The specials of a compact tokenizer, in id order: every named Llama 4 special (so chat, fill-in-the-middle,
# tool and image markup keep their names) and 11 reserved ones for later use, 32 in all.
COMPACT_SPECIAL_NAMES: list[str] = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
    "<|header_start|>", "<|header_end|>", "<|eom|>", "<|eot|>", "<|step|>", "<|python_start|>", "<|python_end|>",
    "<|finetune_right_pad|>", "<|image_start|>", "<|image_end|>", "<|tile_x_separator|>", "<|tile_y_separator|>",
    "<|image|>", "<|patch|>", "<|reasoning_thinking_start|>", "<|reasoning_thinking_end|>",
    *[f"<|reserved_special_token_{i}|>" for i in range(11)],
]
assert len(COMPACT_SPECIAL_NAMES) == 32 and all(name in SPECIAL_TOKENS for name in COMPACT_SPECIAL_NAMES)


def compact_special_ids(vocab_size: int) -> dict[str, int]:
    """Name -> id of the special tokens of a compact tokenizer with `vocab_size` tokens in all:
    the BPE vocabulary is ids 0 .. n_base-1 and special k is n_base + k, n_base = vocab_size - 32.
    E.g. vocab_size 8192: <|begin_of_text|> 8160, <|end_of_text|> 8161, <|eom|> 8167, <|eot|> 8168."""
    n_base = vocab_size - len(COMPACT_SPECIAL_NAMES)
    if n_base < 1:
        raise ValueError(f"vocab_size {vocab_size} leaves no room for BPE tokens next to the "
                         f"{len(COMPACT_SPECIAL_NAMES)} special tokens")
    return {name: n_base + k for k, name in enumerate(COMPACT_SPECIAL_NAMES)}


def _split_for_bpe(text: str, max_chars: int = MAX_ENCODE_CHARS, max_run: int = MAX_RUN_CHARS) -> list[str]:
    """Cut `text` as Meta's encoder does: `max_chars` pieces, then cut every whitespace or non-whitespace
    run longer than `max_run` at multiples of `max_run` from the run's start (runs restart in each piece)."""
    if len(text) <= min(max_run, max_chars):
        return [text]
    out = []
    for start in range(0, len(text), max_chars):
        piece = text[start:start + max_chars]
        cut = 0
        # `\s` in a str pattern is exactly str.isspace(), the test Meta's splitter uses.
        for m in re.finditer(r"\s+|\S+", piece):
            lo, hi = m.span()
            for c in range(lo + max_run, hi, max_run):
                out.append(piece[cut:c])
                cut = c
        out.append(piece[cut:])
    return out


def _without_surrogates(text: str) -> str:
    """Lone surrogates cannot be UTF-8 encoded; like tiktoken, replace them with U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class Tokenizer:
    """Llama 4 tokenizer over a tiktoken rank file (`tokenizer.model`).

    Attributes: `n_words` (202048; for every tokenizer n_base + number of specials), `n_base` (200000:
    ids below are BPE tokens, ids from it on special tokens), `bos_id`, `eos_id`, `pad_id`, `eot_id`,
    `eom_id`, `stop_ids` (end_of_text, eom, eot) and `special` (name -> id for all special tokens).
    """

    def __init__(self, model_path: str | os.PathLike) -> None:
        path = Path(model_path)
        ranks = _read_tiktoken_ranks(path)
        self._bpe = tiktoken.Encoding(name=path.name, pat_str=O200K_PATTERN, mergeable_ranks=ranks,
                                      special_tokens={})
        base: list[bytes] = [b""] * N_BASE_TOKENS
        for token, rank in ranks.items():
            base[rank] = token
        self._init_vocab(base, _LLAMA4_SPECIAL_NAMES, source=path)

    def _init_vocab(self, base: list[bytes], special_names: list[str], source: Path) -> None:
        """Ids 0 .. len(base)-1 are `base`, then special token k is len(base) + k."""
        self.source = source
        self.n_base: int = len(base)
        self.special: dict[str, int] = {name: self.n_base + k for k, name in enumerate(special_names)}
        self._pieces: list[bytes] = base + [name.encode() for name in special_names]
        self.n_words: int = len(self._pieces)
        self.bos_id: int = self.special["<|begin_of_text|>"]
        self.eos_id: int = self.special["<|end_of_text|>"]
        self.pad_id: int = self.special["<|finetune_right_pad|>"]
        self.eom_id: int = self.special["<|eom|>"]
        self.eot_id: int = self.special["<|eot|>"]
        self.stop_ids: tuple[int, ...] = (self.eos_id, self.eom_id, self.eot_id)

    def _encode_pieces(self, pieces: list[str]) -> list[int]:
        ids: list[int] = []
        for piece in pieces:
            ids.extend(self._bpe.encode_ordinary(piece))
        return ids

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of `text`; special-token names inside `text` are encoded as plain text."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        ids = [self.bos_id] if bos else []
        ids += self._encode_pieces(_split_for_bpe(_without_surrogates(text)))
        if eos:
            ids.append(self.eos_id)
        return ids

    def special_id(self, name: str) -> int:
        """Id of a special token by its name, e.g. "<|eot|>" -> 200008."""
        try:
            return self.special[name]
        except KeyError:
            hint = "" if name.startswith("<|") else " (names include the brackets, e.g. '<|eot|>')"
            if name in SPECIAL_TOKENS:
                hint = " (a Llama 4 special token that this compact tokenizer leaves out)"
            raise KeyError(f"{name!r} is not a special token of this tokenizer{hint}") from None

    def is_special(self, token_id: int) -> bool:
        return token_id >= self.n_base

    def _check_ids(self, ids: Iterable[int]) -> list[int]:
        ids = list(map(operator.index, ids))
        if ids and (min(ids) < 0 or max(ids) >= self.n_words):
            bad = next(i for i in ids if not 0 <= i < self.n_words)
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {self.n_words})")
        return ids

    def piece(self, token_id: int) -> bytes:
        """The bytes of one token (a special token's bytes are its UTF-8 name)."""
        return self._pieces[self._check_ids([token_id])[0]]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        pieces = self._pieces
        return b"".join([pieces[i] for i in self._check_ids(ids)])

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; special tokens decode to their names, invalid UTF-8 to U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.source)!r}, n_words={self.n_words})"


class HFTokenizer(Tokenizer):
    """The same tokenizer read from an HF `tokenizer.json` (byte-level BPE), run by `tokenizers`.

    Only the file's pre-tokenizer and BPE model are used: its added tokens and post-processor are
    dropped, so text never turns into special tokens and no BOS is added behind the caller's back.
    The BPE vocabulary (the entries that are not special-token names) must be ids 0 .. n_base-1.
    With n_base = 200000 special ids are the canonical Llama 4 table, and the file's specials are checked
    against it; any other n_base is a compact tokenizer, whose specials must be `COMPACT_SPECIAL_NAMES`
    at n_base + k exactly.
    """

    def __init__(self, json_path: str | os.PathLike) -> None:
        try:
            import tokenizers
        except ImportError as e:
            msg = "reading tokenizer.json needs the `tokenizers` package (pip install tokenizers)"
            raise TokenizerError(msg) from e
        path = Path(json_path)
        spec, base, special_names = _read_hf_json(path)
        self._bpe = tokenizers.Tokenizer.from_str(json.dumps(spec))
        self._bpe.encode_special_tokens = True  # belt and braces: the added tokens are gone already
        self._init_vocab(base, special_names, source=path)

    def _encode_pieces(self, pieces: list[str]) -> list[int]:
        if len(pieces) == 1:
            return self._bpe.encode(pieces[0], add_special_tokens=False).ids
        return [i for enc in self._bpe.encode_batch(pieces, add_special_tokens=False) for i in enc.ids]


class StreamDecoder:
    """Incremental decoding for streaming: `push` returns the text completed by one more token.

    Bytes of an unfinished UTF-8 character are held back until the next token completes them;
    invalid sequences become U+FFFD exactly as in `Tokenizer.decode`. `flush` ends the stream.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._utf8.decode(self.tokenizer.piece(token_id))

    def flush(self) -> str:
        """Text still held back (an unfinished character becomes U+FFFD); the decoder is reset."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text


class TextStream:
    """The text of one generated sequence, streamed, with stop strings cut out.

    `push` returns the text that is safe to show: a tail that could still grow into a stop
    string is held back, and once a stop string appears `stopped` is set and nothing after it
    (nor the stop string itself) is ever returned, as OpenAI-style servers behave.
    """

    def __init__(self, tokenizer: Tokenizer, stop_strings: Iterable[str] = ()) -> None:
        self._decoder = StreamDecoder(tokenizer)
        self._stops = [s for s in stop_strings if s]
        self.text = ""  # everything decoded so far
        self._shown = 0
        self.stopped = False

    def _release(self, upto: int) -> str:
        out, self._shown = self.text[self._shown : upto], max(self._shown, upto)
        return out

    def push(self, token_id: int) -> str:
        if self.stopped:
            return ""
        self.text += self._decoder.push(token_id)
        hits = [i for i in (self.text.find(s, max(0, self._shown - len(s))) for s in self._stops) if i >= 0]
        if hits:
            self.stopped = True
            return self._release(min(hits))
        hold = max((k for s in self._stops for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        return self._release(len(self.text) - hold)

    def flush(self) -> str:
        if self.stopped:
            return ""
        self.text += self._decoder.flush()
        return self._release(len(self.text))


def _read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """Parse and validate a rank file: one `base64(bytes) rank` line per token, ranks 0 .. 199999."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TokenizerError(f"cannot read tokenizer file {path}: {e}") from e
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) != 2:
                raise ValueError
            token, rank = base64.b64decode(fields[0], validate=True), int(fields[1])
        except (ValueError, binascii.Error):
            raise TokenizerError(
                f"{path}: line {n} is not 'base64 rank' ({line[:60]!r}); is this a tiktoken tokenizer.model?"
            ) from None
        if token in ranks or not 0 <= rank < N_BASE_TOKENS:
            raise TokenizerError(f"{path}: line {n}: duplicate token or rank {rank} outside [0, {N_BASE_TOKENS})")
        ranks[token] = rank
    if len(ranks) != N_BASE_TOKENS or len(set(ranks.values())) != N_BASE_TOKENS:
        raise TokenizerError(
            f"{path}: {len(ranks)} distinct ranks, a Llama 4 tokenizer.model has {N_BASE_TOKENS} "
            "(truncated or corrupt?)"
        )
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise TokenizerError(f"{path}: single-byte tokens missing for bytes {missing[:8]}; cannot encode all text")
    return ranks


def _byte_level_alphabet() -> dict[str, int]:
    """The byte-level BPE alphabet (char -> byte): printable Latin-1 bytes stand for themselves, the other
    68 bytes (controls, space, DEL, NBSP, soft hyphen) are shifted to U+0100 onwards in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table = {chr(b): b for b in printable}
    shifted = (b for b in range(256) if b not in table.values())
    table.update({chr(256 + k): b for k, b in enumerate(shifted)})
    return table


def _read_hf_json(path: Path) -> tuple[dict, list[bytes], list[str]]:
    """Load tokenizer.json, check it is a byte-level BPE with Llama 4's or the compact special table, strip
    its added tokens. Returns the spec (model vocabulary = BPE tokens only), the bytes of the BPE tokens
    by id, and the special names in id order."""
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"cannot read tokenizer file {path}: {e}") from e
    model = spec.get("model") if isinstance(spec, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise TokenizerError(f"{path}: not a BPE tokenizer.json (model.type must be 'BPE')")
    decoder = spec.get("decoder") or {}
    if decoder.get("type") != "ByteLevel":
        raise TokenizerError(f"{path}: decoder is {decoder.get('type')!r}, expected a byte-level BPE ('ByteLevel')")
    vocab: dict[str, int] = model["vocab"]
    try:
        added_tokens = [(t["id"], t["content"], t.get("special", True)) for t in spec.get("added_tokens") or []]
    except (KeyError, TypeError, AttributeError):
        raise TokenizerError(f"{path}: malformed added_tokens (each needs 'id' and 'content')") from None
    added = {token_id: name for token_id, name, _ in added_tokens}
    # Specials: every added token, except a non-special one that merely repeats a vocabulary entry (HF's
    # "normal" added tokens), and every vocabulary entry named like one. The rest is the BPE vocabulary.
    specials = {i: name for i, name, special in added_tokens if special or vocab.get(name) != i}
    specials.update({i: name for name, i in vocab.items() if _is_special_name(name)})
    special_names = set(specials.values())
    base_vocab = {tok: i for tok, i in vocab.items() if tok not in special_names}
    highest = max([*vocab.values(), *added], default=0)
    # A file reaching into Llama 4's special range is held to Llama 4's table; compact vocabularies are small.
    if len(base_vocab) == N_BASE_TOKENS or highest >= N_BASE_TOKENS:
        _check_llama4_specials(vocab, added, path)
        model["vocab"] = {tok: i for tok, i in vocab.items() if i < N_BASE_TOKENS}
        base = _hf_base_pieces(model["vocab"], path, llama4=True)
        names = _LLAMA4_SPECIAL_NAMES
    else:
        # Misplaced specials first (they name the culprit), then the BPE vocabulary, then missing specials
        # (a file with none at all is more likely a foreign tokenizer, which the vocabulary checks describe).
        _check_compact_specials(specials, len(base_vocab), path, complete=False)
        model["vocab"] = base_vocab
        base = _hf_base_pieces(base_vocab, path, llama4=False)
        _check_compact_specials(specials, len(base_vocab), path, complete=True)
        names = COMPACT_SPECIAL_NAMES
    spec["added_tokens"] = []
    spec["post_processor"] = None  # HF's template prepends <|begin_of_text|>; the caller decides on BOS
    return spec, base, names


def _is_special_name(name: str) -> bool:
    return name in SPECIAL_TOKENS or name in _HF_SPECIAL_ALIASES


def _check_llama4_specials(vocab: dict[str, int], added: dict[int, str], path: Path) -> None:
    vocab_specials = {i: tok for tok, i in vocab.items() if i >= N_BASE_TOKENS}
    for token_id, name in sorted({**vocab_specials, **added}.items()):
        expected = _SPECIAL_NAMES.get(token_id)
        if name == expected or name in _HF_SPECIAL_ALIASES or vocab.get(name) == token_id < N_BASE_TOKENS:
            continue  # canonical, a known misspelling, or an ordinary vocabulary entry
        if expected is None:
            raise TokenizerError(f"{path}: token {name!r} has id {token_id}, outside Llama 4's table")
        raise TokenizerError(f"{path}: token id {token_id} is {name!r}; Llama 4 has {expected!r} there")


def _check_compact_specials(specials: dict[int, str], n_base: int, path: Path, complete: bool) -> None:
    """The specials of a compact tokenizer must be COMPACT_SPECIAL_NAMES at n_base + k (all of them if `complete`)."""
    expected = {n_base + k: name for k, name in enumerate(COMPACT_SPECIAL_NAMES)}
    layout = f"a compact tokenizer with {n_base} BPE tokens has {COMPACT_SPECIAL_NAMES[0]!r} .. " \
             f"{COMPACT_SPECIAL_NAMES[-1]!r} at ids {n_base} .. {n_base + len(COMPACT_SPECIAL_NAMES) - 1}"
    for token_id, name in sorted(specials.items()):
        want = expected.get(token_id)
        if name == want or (name in _HF_SPECIAL_ALIASES and want == "<|finetune_right_pad|>"):
            continue
        there = f"{want!r} there" if want else "no token there"
        raise TokenizerError(f"{path}: special token {name!r} has id {token_id}; {there} ({layout})")
    missing = [f"{name!r} (id {i})" for i, name in expected.items() if i not in specials]
    if complete and missing:
        raise TokenizerError(f"{path}: special tokens missing: {', '.join(missing[:4])}"
                             f"{' ...' if len(missing) > 4 else ''} ({layout})")


def _hf_base_pieces(vocab: dict[str, int], path: Path, llama4: bool) -> list[bytes]:
    """The bytes of the BPE tokens, which must have ids 0 .. len(vocab)-1 (0 .. 199999 for Llama 4)."""
    n_base = len(vocab)
    if sorted(vocab.values()) != list(range(n_base)) or (llama4 and n_base != N_BASE_TOKENS):
        if llama4:
            raise TokenizerError(
                f"{path}: BPE vocabulary has {len(vocab)} entries, Llama 4 has ids 0 .. {N_BASE_TOKENS - 1}"
            )
        first_gap = next(i for i, j in enumerate(sorted(vocab.values())) if i != j)
        raise TokenizerError(f"{path}: BPE vocabulary has {n_base} entries but not the ids 0 .. {n_base - 1} "
                             f"(first gap or duplicate at id {first_gap})")
    alphabet = _byte_level_alphabet()
    base: list[bytes] = [b""] * n_base
    for token, i in vocab.items():
        try:
            base[i] = bytes(alphabet[ch] for ch in token)
        except KeyError:
            raise TokenizerError(f"{path}: vocabulary entry {token!r} is not in the byte-level alphabet") from None
    # Without a token for every single byte some text cannot be encoded (BPE would silently drop it).
    missing = sorted(set(range(256)) - {piece[0] for piece in base if len(piece) == 1})
    if missing:
        raise TokenizerError(f"{path}: BPE vocabulary has {n_base} entries but no single-byte tokens for bytes "
                             f"{missing[:8]}{' ...' if len(missing) > 8 else ''}; cannot encode all text")
    return base


_SPECIAL_NAMES = {i: name for name, i in SPECIAL_TOKENS.items()}
_LLAMA4_SPECIAL_NAMES = list(SPECIAL_TOKENS)


def _packaged_tokenizer_model() -> Path | None:
    """Meta's tokenizer.model shipped inside the llama-models package, if installed."""
    try:
        resource = importlib.resources.files("llama_models") / "llama4" / "tokenizer.model"
    except ModuleNotFoundError:
        return None
    return Path(str(resource)) if resource.is_file() else None


def _is_json(path: Path) -> bool:
    if path.suffix == ".json":
        return True
    try:
        with open(path, "rb") as f:
            return f.read(64).lstrip().startswith(b"{")
    except OSError:
        return False


def load_tokenizer(path: str | os.PathLike | None = None) -> Tokenizer:
    """Load the Llama 4 tokenizer, or a compact one (a tokenizer.json from `herd.tokenizer_train`).

    `path` is a checkpoint directory (uses `tokenizer.model`, then `original/tokenizer.model`, then
    `tokenizer.json`) or a tokenizer file. With None, or a directory holding none of them, the
    `tokenizer.model` shipped with the `llama_models` package is used (and logged).
    """
    if path is not None:
        p = Path(path)
        if p.is_dir():
            for candidate in (p / "tokenizer.model", p / "original" / "tokenizer.model"):
                if candidate.is_file():
                    return Tokenizer(candidate)
            if (p / "tokenizer.json").is_file():
                return HFTokenizer(p / "tokenizer.json")
            logger.warning("no tokenizer.model or tokenizer.json in %s", p)
        elif p.is_file():
            return HFTokenizer(p) if _is_json(p) else Tokenizer(p)
        else:
            raise TokenizerError(f"tokenizer path {p} does not exist")
    packaged = _packaged_tokenizer_model()
    if packaged is None:
        where = "" if path is None else f" in {path}"
        raise TokenizerError(
            f"no tokenizer found{where}: pass a checkpoint directory or a tokenizer.model / tokenizer.json path, "
            "or install llama-models, which ships Meta's Llama 4 tokenizer.model"
        )
    logger.info("using the Llama 4 tokenizer.model shipped with llama_models: %s", packaged)
    return Tokenizer(packaged)
