"""`herd plan PRESET|PATH`: does a model fit in memory with a weight format, a context and a number of slots?"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from herd.checkpoint import read_config, read_quantization
from herd.cli.common import DTYPES, add_quant_groups_flags, quant_groups
from herd.config import PRESETS, ModelConfig, preset
from herd.plan import Plan, largest_context, largest_slots, machine_memory, plan
from herd.quant import SCHEMES

HELP = "Does a model fit? Weights, KV cache and activations for a format, context and slot count."
UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20,
         "GIB": 2**30, "TIB": 2**40}


def memory_size(text: str) -> int:
    """Bytes of '24GB', '80 GiB', '1.5TB' or a plain number of bytes."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).upper() not in UNITS:
        raise argparse.ArgumentTypeError(f"not a memory size: {text!r} (e.g. 24GB, 80GiB)")
    return int(float(match.group(1)) * UNITS[match.group(2).upper()])


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="PRESET|PATH", help=f"a preset ({', '.join(PRESETS)}) or checkpoint directory")
    parser.add_argument("--quant", choices=list(SCHEMES), default=None, help="weight format (default: --dtype)")
    add_quant_groups_flags(parser)
    parser.add_argument("--dtype", choices=list(DTYPES), default="bfloat16", help="activations and kept weights")
    parser.add_argument("--context", type=int, default=8192, help="positions per KV slot (default 8192)")
    parser.add_argument("--slots", type=int, default=1, help="KV slots, i.e. sequences served at once (default 1)")
    parser.add_argument("--prefill-chunk", type=int, default=512)
    parser.add_argument("--budget", type=memory_size, default=None,
                        help="memory to fit in, e.g. 24GB or 80GiB (default: this machine's memory)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def _gb(n: int) -> str:
    return f"{n / 1e9:,.2f} GB" if n >= 1e8 else f"{n / 1e6:,.1f} MB"


def _config(name: str) -> tuple[ModelConfig, dict | None]:
    if name in PRESETS:
        return preset(name), None
    return read_config(Path(name)), read_quantization(Path(name))


def run(args: argparse.Namespace) -> int:
    config, stored = _config(args.model)
    quant, groups = args.quant, quant_groups(args)
    if stored:  # a checkpoint `herd quantize` wrote: what it holds
        quant, groups = stored["scheme"], stored["groups"]
    total_memory, available = machine_memory()
    budget = args.budget or total_memory
    kwargs = dict(quant=quant, groups=groups, dtype=DTYPES[args.dtype], prefill_chunk=args.prefill_chunk)
    p: Plan = plan(config, context=args.context, slots=args.slots, **kwargs)
    context = largest_context(config, budget, slots=args.slots, **kwargs)
    slots = largest_slots(config, budget, context=args.context, **kwargs)
    fits = p.total <= budget
    fmt = f"{quant} ({', '.join(groups)})" if quant else args.dtype
    if args.json:
        print(json.dumps({"model": args.model, "format": quant or args.dtype, "groups": list(groups),
                          "dtype": args.dtype, "context": args.context, "slots": args.slots,
                          "weights": p.weights, "weight_bytes": p.weight_bytes, "kv_bytes": p.kv,
                          "activation_bytes": p.activations, "decode_head_bytes": p.decode_head,
                          "total_bytes": p.total, "budget_bytes": budget,
                          "fits": fits, "largest_context": context, "largest_slots": slots}))
        return 0
    print(f"{args.model}: {fmt}, {args.slots} slot(s) x {args.context:,} positions")
    print("\n| part | bytes |\n|---|---:|")
    for name, n in p.weights.items():
        if n:
            print(f"| weights: {name} | {_gb(n)} |")
    print(f"| **weights** | **{_gb(p.weight_bytes)}** |")
    print(f"| KV cache ({args.slots} x {args.context:,}, {args.dtype}) | {_gb(p.kv)} |")
    print(f"| activations (estimate: a {min(args.prefill_chunk, args.context)}-token prefill piece, logits) "
          f"| {_gb(p.activations)} |")
    if p.decode_head:
        print(f"| the decode step's packed copy of the bf16 LM head | {_gb(p.decode_head)} |")
    print(f"| **total** | **{_gb(p.total)}** |")
    source = "--budget" if args.budget else f"this machine's memory; {_gb(available)} available now"
    verdict = "fits" if fits else "does NOT fit"
    print(f"\n{verdict} in {_gb(budget)} ({source}).")
    print(f"largest context at {args.slots} slot(s): {context:,}" if context else
          f"no context fits at {args.slots} slot(s): the weights alone take {_gb(p.weight_bytes)}")
    if slots:
        print(f"most slots at {args.context:,} positions: {slots}")
    if not fits and not quant:
        for name in SCHEMES:
            if plan(config, **(kwargs | {"quant": name, "groups": groups}), context=args.context,
                    slots=args.slots).total <= budget:
                print(f"with --quant {name} it would fit.")
                break
    return 0
