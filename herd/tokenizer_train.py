"""Train a compact byte-level BPE tokenizer with Llama 4's special tokens reserved by name.

- Same design as Llama 4's tokenizer, only smaller: the o200k split pattern, then byte-level BPE over
  UTF-8 bytes, so every string encodes (all 256 bytes are in the initial alphabet) and `HFTokenizer`
  runs the result exactly like Llama 4's own tokenizer.json.
- Layout: BPE tokens are ids 0 .. n_base-1 (the trainer gets no special tokens, so none sits among
  them), then `COMPACT_SPECIAL_NAMES` at n_base + k, n_base = vocab_size - 32. The ids follow from
  vocab_size alone (`herd.tokenizer.compact_special_ids`) and the chat format works unchanged.
- Training text is cut with the encoder's own `_split_for_bpe` (and lone surrogates replaced), so the
  trainer sees the same pieces that encoding later does.
- A corpus too small to learn the requested vocabulary is an error, not a silently smaller vocabulary:
  the model's embedding size is fixed by vocab_size and special ids must land where configs expect them.
- tokenizer.json is written atomically (temporary file in the same directory, then os.replace), so a
  crash never leaves a half-written tokenizer next to a checkpoint.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from herd.tokenizer import COMPACT_SPECIAL_NAMES, O200K_PATTERN, HFTokenizer, _split_for_bpe, _without_surrogates

__all__ = ["tokenizer_json_path", "train_tokenizer"]

N_BYTES = 256


def tokenizer_json_path(out: str | os.PathLike) -> Path:
    """Where a tokenizer goes for `out`: `out` itself if it ends in .json, else `out`/tokenizer.json."""
    path = Path(out)
    return path if path.suffix == ".json" and not path.is_dir() else path / "tokenizer.json"


def _pieces(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"training texts must be str, got {type(text).__name__}")
        yield from _split_for_bpe(_without_surrogates(text))


def train_tokenizer(texts: Iterable[str], vocab_size: int, out: str | os.PathLike, *, min_frequency: int = 2,
                    progress: bool = True) -> HFTokenizer:
    """Train a byte-level BPE of `vocab_size` tokens in all (32 of them special) on `texts`, write it to
    `out` (a tokenizer.json path, or a directory for `out`/tokenizer.json) and return it loaded back.

    Raises ValueError if vocab_size leaves no room for merges (it must exceed 32 + 256) or if the corpus
    is too small to learn vocab_size - 32 BPE tokens at `min_frequency`.
    """
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as BPETokenizer

    n_special = len(COMPACT_SPECIAL_NAMES)
    if vocab_size <= n_special + N_BYTES:
        raise ValueError(f"vocab_size must be more than {n_special + N_BYTES} ({n_special} special tokens and "
                         f"{N_BYTES} single bytes), got {vocab_size}")
    n_base = vocab_size - n_special
    tok = BPETokenizer(models.BPE())
    # Split first (isolated keeps every character: the pattern's matches and anything between them), then map
    # bytes to the byte-level alphabet without GPT-2's own regex, as HF's Llama 4 tokenizer.json does.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(O200K_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=n_base, min_frequency=min_frequency, show_progress=progress,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(_pieces(texts), trainer=trainer)
    learned = tok.get_vocab_size(with_added_tokens=False)
    if learned < n_base:
        raise ValueError(f"corpus too small: learned {learned} of {n_base} tokens; "
                         "use a smaller --vocab-size or more text")
    if learned != n_base:  # the trainer stops at vocab_size; anything else is a library change to catch early
        raise RuntimeError(f"BPE trainer returned {learned} tokens, asked for {n_base}")
    # Added after training so that they get ids n_base + k, in COMPACT_SPECIAL_NAMES order.
    tok.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in COMPACT_SPECIAL_NAMES])
    wrong = [name for k, name in enumerate(COMPACT_SPECIAL_NAMES) if tok.token_to_id(name) != n_base + k]
    if wrong:  # e.g. a special name learned as a BPE token, which the split pattern should make impossible
        raise RuntimeError(f"special tokens did not get ids {n_base}+k: {wrong[:4]}")

    path = tokenizer_json_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(tok.to_str(pretty=True))
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would make the tokenizer unreadable to other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return HFTokenizer(path)
