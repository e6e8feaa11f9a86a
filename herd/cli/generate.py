"""`herd generate`: continue a prompt of token ids with a checkpoint or a randomly built preset."""

from __future__ import annotations

import argparse
import sys
import time

import torch

import herd
from herd.config import PRESETS, preset
from herd.generate import generate_ids

HELP = "Generate token ids from a checkpoint (--model) or a random preset (--preset)."
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def register(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="checkpoint directory (HF or Meta format)")
    source.add_argument("--preset", choices=list(PRESETS), help="build this preset with random weights")
    parser.add_argument("--prompt-ids", default="200000", help="comma-separated prompt token ids")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")


def run(args: argparse.Namespace) -> int:
    dtype = DTYPES[args.dtype]
    if args.model:
        model = herd.load(args.model, dtype=dtype)
    else:
        model = herd.build(preset(args.preset), dtype=dtype, seed=args.seed)
    try:
        prompt = [int(t) for t in args.prompt_ids.split(",") if t.strip()]
    except ValueError:
        print(f"herd generate: error: --prompt-ids must be comma-separated integers, got {args.prompt_ids!r}",
              file=sys.stderr)
        return 2
    start = time.perf_counter()
    new = []
    try:
        for token in generate_ids(model, prompt, args.max_new_tokens, temperature=args.temperature, seed=args.seed,
                                  stop_ids=model.config.eos_ids):
            new.append(token)
            print(token, end=" ", flush=True)
    except ValueError as err:
        print(f"herd generate: error: {err}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    print(f"\n{len(new)} tokens in {elapsed:.2f}s ({len(new) / elapsed:.1f} tokens/s)", file=sys.stderr)
    return 0
