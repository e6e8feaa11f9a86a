"""`herd generate`: stream a completion from a checkpoint or a randomly built preset."""

from __future__ import annotations

import argparse
import sys
import time

import torch

import herd
from herd.config import PRESETS, preset
from herd.engine import Engine
from herd.sampling import SamplingParams

HELP = "Generate from a checkpoint (--model) or a random preset (--preset), streaming the output."
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.6, help="0 is greedy (default 0.6, as Meta's)")
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--top-k", type=int, default=0, help="0 is off")
    parser.add_argument("--min-p", type=float, default=0.0)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--frequency-penalty", type=float, default=0.0)
    parser.add_argument("--presence-penalty", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)


def sampling_params(args: argparse.Namespace, **extra: object) -> SamplingParams:
    return SamplingParams(
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, min_p=args.min_p,
        repetition_penalty=args.repetition_penalty, frequency_penalty=args.frequency_penalty,
        presence_penalty=args.presence_penalty, max_new_tokens=args.max_new_tokens, seed=args.seed, **extra,
    )


def register(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="checkpoint directory (HF or Meta format)")
    source.add_argument("--preset", choices=list(PRESETS), help="build this preset with random weights")
    parser.add_argument("--prompt-ids", default="200000", help="comma-separated prompt token ids")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    add_sampling_flags(parser)


def run(args: argparse.Namespace) -> int:
    dtype = DTYPES[args.dtype]
    if args.model:
        model = herd.load(args.model, dtype=dtype)
    else:
        model = herd.build(preset(args.preset), dtype=dtype, seed=0)
    try:
        prompt = [int(t) for t in args.prompt_ids.split(",") if t.strip()]
        params = sampling_params(args)
    except ValueError as err:
        print(f"herd generate: error: --prompt-ids must be comma-separated integers ({err})", file=sys.stderr)
        return 2
    start = time.perf_counter()
    count = 0
    try:
        for event in Engine(model).stream(prompt, params):
            count += 1
            print(event.token, end=" ", flush=True)
    except ValueError as err:
        print(f"herd generate: error: {err}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    print(f"\n{count} tokens in {elapsed:.2f}s ({count / elapsed:.1f} tokens/s)", file=sys.stderr)
    return 0
