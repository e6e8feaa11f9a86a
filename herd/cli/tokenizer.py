"""`herd tokenizer train`: a compact byte-level BPE tokenizer for small models, trained on text files.

- Inputs go through `herd.data.sources` (files, directories, globs, the name "stdlib"), the same reader
  the training data uses, so the tokenizer is fitted to the text the model will see.
- A file that cannot be read is skipped with a warning rather than ending a long run; no text at all,
  or too little for the requested vocabulary, is an error.
- `--max-chars` caps the training text (whole documents, the last one cut) so that memory and time stay
  bounded on large inputs; BPE statistics settle long before 50 M characters.
- The special ids printed are those configs get from `herd.tokenizer.compact_special_ids(vocab_size)`.
"""

from __future__ import annotations

import argparse
import sys

from herd.data import sources
from herd.tokenizer import TokenizerError
from herd.tokenizer_train import tokenizer_json_path, train_tokenizer

HELP = "Train a small byte-level BPE tokenizer with Llama 4's special tokens (herd tokenizer train INPUTS --out)."



def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="tokenizer_command", required=True, metavar="SUBCOMMAND")
    train = sub.add_parser("train", help="train a tokenizer.json on text files",
                           description="Train a byte-level BPE tokenizer.json: vocab-size - 32 BPE tokens, then "
                                       "32 of Llama 4's special tokens (<|begin_of_text|> first).")
    train.add_argument("inputs", nargs="+", metavar="INPUT",
                       help="text files, directories, globs, or 'stdlib' (Python's standard library source)")
    train.add_argument("--out", required=True, metavar="PATH",
                       help="tokenizer.json path, or a directory (PATH/tokenizer.json)")
    train.add_argument("--vocab-size", type=int, default=8192,
                       help="tokens in all, the 32 special ones included (default 8192)")
    train.add_argument("--min-frequency", type=int, default=2,
                       help="a merge must occur at least this often (default 2)")
    train.add_argument("--max-chars", type=int, default=50_000_000,
                       help="cap on the training text in characters (default 50,000,000)")


def _fail(message: str) -> int:
    print(f"herd tokenizer: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    if args.tokenizer_command != "train":  # argparse only lets "train" through; a guard for new subcommands
        return _fail(f"unknown subcommand {args.tokenizer_command!r}")
    if args.max_chars <= 0:
        return _fail(f"--max-chars must be positive, got {args.max_chars}")
    if args.min_frequency < 1:
        return _fail(f"--min-frequency must be at least 1, got {args.min_frequency}")
    try:
        texts = sources.read_corpus(args.inputs, args.max_chars)
    except ValueError as err:  # DataError from resolve: nothing matches an input
        return _fail(str(err))
    if not any(texts):
        return _fail(f"no text in {' '.join(args.inputs)}")
    path = tokenizer_json_path(args.out)
    try:
        tok = train_tokenizer(texts, args.vocab_size, path, min_frequency=args.min_frequency,
                              progress=sys.stderr.isatty())
    except (ValueError, OSError, TokenizerError) as err:
        return _fail(str(err))
    print(f"wrote {path}: {tok.n_words} tokens ({tok.n_base} BPE + {len(tok.special)} special)")
    print(f"special ids: bos {tok.bos_id}, eos {tok.eos_id}, eom {tok.eom_id}, eot {tok.eot_id}, pad {tok.pad_id}")
    return 0
