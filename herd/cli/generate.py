"""`herd generate`: stream a completion of a text prompt (or of token ids) from a checkpoint or a preset."""

from __future__ import annotations

import argparse
import sys
import time

import herd
from herd import chat
from herd.cli.common import DTYPES, add_sampling_flags, sampling_params, tokenizer_for
from herd.config import PRESETS, preset
from herd.engine import Engine
from herd.tokenizer import TextStream

HELP = "Stream a completion from a checkpoint (--model) or a random preset (--preset)."


def register(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="checkpoint directory (HF or Meta format)")
    source.add_argument("--preset", choices=list(PRESETS), help="build this preset with random weights")
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", help="prompt text")
    prompt.add_argument("--prompt-ids", help="comma-separated prompt token ids (prints ids, needs no tokenizer)")
    parser.add_argument("--chat", action="store_true", help="wrap --prompt as one user turn of the chat format")
    parser.add_argument("--system", help="with --chat: a system message")
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    add_sampling_flags(parser)


def _fail(message: str) -> int:
    print(f"herd generate: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    if args.chat and args.prompt is None:
        return _fail("--chat needs --prompt TEXT")
    if args.model:
        model = herd.load(args.model, dtype=DTYPES[args.dtype])
    else:
        model = herd.build(preset(args.preset), dtype=DTYPES[args.dtype], seed=0)
    tokenizer = tokenizer_for(args.model, model.config.vocab_size) if args.prompt is not None else None
    if args.prompt_ids is not None:
        try:
            prompt = [int(t) for t in args.prompt_ids.split(",") if t.strip()]
        except ValueError:
            return _fail(f"--prompt-ids must be comma-separated integers, got {args.prompt_ids!r}")
        tokenizer = None
    elif args.prompt is None:
        prompt = [model.config.bos_id if model.config.bos_id < model.config.vocab_size else 0]
        tokenizer = None
    elif args.chat:
        messages = ([{"role": "system", "content": args.system}] if args.system else [])
        prompt = chat.render(tokenizer, [*messages, {"role": "user", "content": args.prompt}]).ids
    else:
        prompt = tokenizer.encode(args.prompt, bos=True)
    try:
        params = sampling_params(args)
    except ValueError as err:
        return _fail(str(err))
    text = TextStream(tokenizer, args.stop) if tokenizer is not None else None
    count, start = 0, time.perf_counter()
    try:
        for event in Engine(model).stream(prompt, params):
            count += 1
            if text is None:
                print(event.token, end=" ", flush=True)
            elif event.token not in model.config.eos_ids:
                print(text.push(event.token), end="", flush=True)
                if text.stopped:
                    break
    except ValueError as err:
        return _fail(str(err))
    if text is not None:
        print(text.flush(), end="")
    elapsed = time.perf_counter() - start
    print(f"\n[{len(prompt)} prompt tokens, {count} new tokens in {elapsed:.2f}s: {count / elapsed:.1f} tokens/s]",
          file=sys.stderr)
    return 0
