"""`herd data`: build training datasets. `herd data prepare INPUTS --out DIR` tokenizes text, code and JSONL
into token shards that `herd train` reads."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from herd.cli.common import add_answer_flags
from herd.data.filter import SIGNALS
from herd.data.prepare import DEFAULT_SHARD_TOKENS, prepare
from herd.data.sources import DataError
from herd.tokenizer import TokenizerError

HELP = "Prepare training data: tokenize text, code and JSONL into memory-mapped token shards."

_PREPARE_HELP = ("Tokenize INPUTS into DIR: train/val token shards and manifest.json. An input is a file, a directory "
                 "(searched recursively for text, code and .jsonl files), a glob (quote it; ** recurses), or "
                 "'stdlib' for this Python's standard library. JSONL lines contribute their \"text\" field.")


_FILTER_HELP = ("Score each conversation of FILE with a judge model (the answer's NLL, instruction-following "
                "difficulty, pass rate of sampled answers under a verifier, or a 1-10 rubric) and keep the hard ones: "
                "DIR/train.jsonl holds the kept lines, DIR/scores.jsonl every item's scores.")

_PAIRS_HELP = ("Sample K answers per question of FILE from MODEL, check them against the reference with a verifier, "
               "and write DPO pairs: chosen the first answer that passes (or the reference), rejected the first that "
               "fails. Questions every answer passes are skipped.")

_JOIN_HELP = ("Write one text file per package of INPUTS (the files of a first-level subdirectory concatenated, each "
              "after a '# file: path' line) and one per top-level file, into DIR: long documents mixed with short "
              "ones, for long-context training; tokenize DIR with `herd data prepare`.")


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    p = sub.add_parser("prepare", help="tokenize text into token shards", description=_PREPARE_HELP)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="file, directory, glob, or 'stdlib'")
    p.add_argument("--out", required=True, metavar="DIR", help="dataset directory to create")
    p.add_argument("--tokenizer", metavar="PATH",
                   help="tokenizer.model / tokenizer.json or a checkpoint directory (default: Llama 4's tokenizer)")
    p.add_argument("--val-fraction", type=float, default=0.005, metavar="F",
                   help="share of documents for validation, chosen by a hash of their text (default 0.005; 0: none)")
    p.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, metavar="N",
                   help=f"tokens per shard file (default {DEFAULT_SHARD_TOKENS:,})")
    p.add_argument("--workers", type=int, default=None, metavar="N", help="tokenizer processes (default: all CPUs)")
    p.add_argument("--on-error", choices=("skip", "stop"), default="skip",
                   help="a bad file (unreadable, not UTF-8, bad JSONL): skip and list it (default) or stop")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it is an existing dataset")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    j = sub.add_parser("join", help="join each package's files into one long document (long-context data)",
                       description=_JOIN_HELP)
    j.add_argument("inputs", nargs="+", metavar="INPUT", help="directory or 'stdlib'")
    j.add_argument("--out", required=True, metavar="DIR", help="directory of text files to create")
    j.add_argument("--hold-out", type=float, default=0.0, metavar="F",
                   help="leave out the files `herd data prepare --val-fraction F` holds out (default 0: none)")
    j.add_argument("--no-progress", action="store_true", help="no progress bar")
    f = sub.add_parser("filter", help="score chat data's difficulty with a judge model and drop the easy part",
                       description=_FILTER_HELP)
    f.add_argument("data", metavar="FILE", help="chat JSONL (herd sft's format; the last message is the answer)")
    f.add_argument("--judge", required=True, metavar="MODEL", help="the judge: any herd checkpoint")
    f.add_argument("--out", required=True, metavar="DIR", help="writes DIR/train.jsonl and DIR/scores.jsonl")
    f.add_argument("--signals", nargs="+", default=["nll"], choices=SIGNALS, help="difficulty signals (default nll)")
    keep = f.add_mutually_exclusive_group(required=True)
    keep.add_argument("--drop-easy-fraction", type=float, metavar="F", help="drop the easiest F of the items")
    keep.add_argument("--keep-band", type=float, nargs=2, metavar=("LO", "HI"),
                      help="keep the items whose difficulty percentile is in [LO, HI]")
    add_answer_flags(f, "pass_rate: ")
    f.add_argument("--pass-k", type=int, default=None, metavar="K", help="pass_rate: also record pass@K (default N)")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    m = sub.add_parser("pairs", help="mine preference pairs for herd dpo from a model's own sampled answers",
                       description=_PAIRS_HELP)
    m.add_argument("data", metavar="FILE", help="chat JSONL (the last message is the reference answer)")
    m.add_argument("--model", required=True, metavar="MODEL", help="the policy that answers (a herd checkpoint)")
    m.add_argument("--out", required=True, metavar="FILE", help="the pairs' JSONL")
    add_answer_flags(m, "")
    m.add_argument("--no-reference-fallback", action="store_true",
                   help="skip questions no answer passes (default: the reference answer is chosen)")


def _fail(message: str) -> int:
    print(f"herd data: error: {message}", file=sys.stderr)
    return 2


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'s' * (n != 1)}"


def _run_prepare(args: argparse.Namespace) -> int:
    try:
        manifest = prepare(args.inputs, args.out, args.tokenizer, val_fraction=args.val_fraction,
                           shard_tokens=args.shard_tokens, workers=args.workers, on_error=args.on_error,
                           overwrite=args.overwrite, progress=not args.no_progress)
    except (DataError, TokenizerError) as err:
        return _fail(str(err))
    skipped = len(manifest["skipped"])
    print(f"{_count(manifest['files'], 'file')}, {_count(manifest['documents']['total'], 'document')}"
          + (f", {_count(skipped, 'file')} skipped (listed in manifest.json)" if skipped else "") + f" -> {args.out}")
    for name, split in manifest["splits"].items():
        print(f"  {name:<5} {split['tokens']:>15,} tokens  {_count(split['documents'], 'document'):>20}  "
              f"{_count(len(split['shards']), 'shard')}")
    return 0


def _run_join(args: argparse.Namespace) -> int:
    from herd.data.join import join_packages

    try:
        counts = join_packages(args.inputs, args.out, args.hold_out, progress=not args.no_progress)
    except DataError as err:
        return _fail(str(err))
    print(f"{_count(counts['files'], 'file')} ({counts['held_out']:,} held out) -> "
          f"{_count(counts['documents'], 'document')} in {args.out}: {counts['packages']:,} joined packages, "
          f"{counts['characters']:,} characters, the longest {counts['largest']:,}")
    return 0


def _judge(path: str, progress: bool = False) -> Any:
    import herd
    from herd.data.filter import Judge
    from herd.tokenizer import load_tokenizer

    return Judge(herd.load(path), load_tokenizer(path), progress=progress)


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    return dict(samples=args.samples, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                verifier=args.verifier, seed=args.seed)


def _run_filter(args: argparse.Namespace) -> int:
    from herd.data.filter import filter_file

    try:
        counts = filter_file(args.data, _judge(args.judge, not args.no_progress), args.out, signals=args.signals,
                             drop_easy_fraction=args.drop_easy_fraction,
                             keep_band=tuple(args.keep_band) if args.keep_band else None, pass_k=args.pass_k,
                             **_sampling(args))
    except (DataError, TokenizerError) as err:
        return _fail(str(err))
    print(f"kept {counts['kept']:,} of {_count(counts['items'], 'conversation')} by {', '.join(counts['signals'])} "
          f"-> {args.out}/train.jsonl (scores in {args.out}/scores.jsonl)")
    return 0


def _run_pairs(args: argparse.Namespace) -> int:
    from herd.data.pairs import mine_pairs

    try:
        counts = mine_pairs(args.data, _judge(args.model), args.out,
                            reference_fallback=not args.no_reference_fallback, **_sampling(args))
    except (DataError, TokenizerError) as err:
        return _fail(str(err))
    print(f"{counts['pairs']:,} pairs from {_count(counts['questions'], 'question')} -> {args.out} "
          f"({counts['all_passed']:,} all passed, skipped; {counts['reference_chosen']:,} with the reference chosen)")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.data_command == "pairs":
        return _run_pairs(args)
    if args.data_command == "filter":
        return _run_filter(args)
    if args.data_command == "prepare":
        return _run_prepare(args)
    if args.data_command == "join":
        return _run_join(args)
    raise AssertionError(f"unknown data command {args.data_command!r}")  # argparse only allows the above
