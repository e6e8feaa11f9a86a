"""`herd metap`: the MetaP parametrization's tools: the coordinate check, the LR sweep behind the
transfer claims, and the transfer of a tuned proxy's hyperparameters to a target preset."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from herd.config import PRESETS, ConfigError, preset

HELP = "MetaP hyperparameter transfer: coord-check, sweep, transfer (see docs/METAP.md)."


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="metap_command", required=True, metavar="SUBCOMMAND")
    cc = sub.add_parser("coord-check", help="activation size against width for both parametrizations (PNG)")
    cc.add_argument("--out", required=True, help="directory for results.json and coord_check.png")
    cc.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    cc.add_argument("--depth", type=int, default=2)
    cc.add_argument("--steps", type=int, default=6)
    cc.add_argument("--lr", type=float, default=1e-2)
    cc.add_argument("--vocab", type=int, default=1024, help="vocabulary of the random-token batch")
    cc.add_argument("--data", help="a prepared dataset instead of random tokens")
    cc.add_argument("--base", default="herd-10m", help="the proxy preset metap is relative to")

    sw = sub.add_parser("sweep", help="train every (parametrization, width, depth, LR, batch, tokens) point")
    sw.add_argument("--data", required=True, help="a dataset from `herd data prepare` (e.g. stdlib)")
    sw.add_argument("--out", required=True, help="sweep directory (resumable: finished points are kept)")
    sw.add_argument("--parametrizations", nargs="+", default=["standard", "metap"])
    sw.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512])
    sw.add_argument("--depths", type=int, nargs="+", default=[2])
    sw.add_argument("--lrs", type=float, nargs="+", default=[2 ** -k for k in range(5, 12)])
    sw.add_argument("--batch-sizes", type=int, nargs="+", default=[16])
    sw.add_argument("--tokens", type=int, nargs="+", default=[2_000_000], help="training tokens per point")
    sw.add_argument("--seq-len", type=int, default=128)
    sw.add_argument("--base", default="herd-10m")
    sw.add_argument("--across", choices=["width", "depth", "batch", "tokens"], default="width",
                    help="the axis the report compares the optimal LR along (rerun with the same grid to re-report)")

    tr = sub.add_parser("transfer", help="a tuned proxy's hyperparameters -> per-group settings for a target")
    tr.add_argument("--to", required=True, help="target preset (e.g. herd-1.5b)")
    tr.add_argument("--base", default="herd-10m", help="the proxy the hyperparameters were tuned on")
    tr.add_argument("--lr", type=float, required=True)
    tr.add_argument("--weight-decay", type=float, default=0.1)
    tr.add_argument("--init-std", type=float, default=0.02)
    tr.add_argument("--batch-size", type=int, help="target global batch (sequences), with --base-batch-size")
    tr.add_argument("--base-batch-size", type=int, help="the proxy's global batch")
    tr.add_argument("--batch-rule", choices=["constant", "sqrt"], default="constant",
                    help="LR across batch sizes: unchanged (measured in docs/METAP.md) or Adam's textbook "
                         "√(batch ratio)")


def _fail(message: str) -> int:
    print(f"herd metap: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    try:
        if args.metap_command == "coord-check":
            return _coord_check(args)
        if args.metap_command == "sweep":
            return _sweep(args)
        return _transfer(args)
    except (ConfigError, ValueError) as err:
        return _fail(str(err))


def _coord_check(args: argparse.Namespace) -> int:
    from herd.train.coord_check import coord_check, growth

    results = coord_check(args.out, args.widths, depth=args.depth, steps=args.steps, lr=args.lr, vocab=args.vocab,
                          data=args.data, base=args.base)
    layers = [k for k in results["runs"]["metap"][str(args.widths[0])][0] if k != "loss"]
    print(f"activation growth from width {args.widths[0]} to {args.widths[-1]} after {args.steps - 1} updates "
          f"(1.0 is flat):")
    for p in results["runs"]:
        print(f"  {p:<9} " + "  ".join(f"{layer} ×{growth(results, p, layer):.3g}" for layer in layers))
    print(f"plot: {args.out}/coord_check.png")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from herd.data.shards import TokenShards
    from herd.train.sweep import points, sweep

    vocab = TokenShards(args.data, "train").n_words
    grid = points(args.parametrizations, args.widths, args.depths, args.lrs, args.batch_sizes, args.tokens)
    across = "batch_size" if args.across == "batch" else args.across
    sweep(args.out, args.data, grid, base=args.base, seq_len=args.seq_len, vocab_size=vocab, across=across)
    print(Path(args.out, "results.md").read_text())
    print(f"plot: {args.out}/sweep.png")
    return 0


def _transfer(args: argparse.Namespace) -> int:
    from herd.model import Transformer
    from herd.train import metap

    if args.to not in PRESETS:
        return _fail(f"unknown target preset {args.to!r}")
    lr = args.lr
    if (args.batch_size is None) != (args.base_batch_size is None):
        return _fail("--batch-size and --base-batch-size go together")
    scaled = bool(args.batch_size) and args.batch_rule == "sqrt" and args.batch_size != args.base_batch_size
    if scaled:
        lr *= math.sqrt(args.batch_size / args.base_batch_size)  # Adam's square-root rule below the critical batch
    target = preset(args.to).text
    with torch.device("meta"):
        model = Transformer(target)
    plan = metap.rules(model, "metap", args.init_std, args.base)
    base = metap.base_config(args.base)
    print(f"{args.base} (dim {base.dim}, {base.n_layers} layers) -> {args.to} (dim {target.dim}, "
          f"{target.n_layers} layers): width ×{target.dim / base.dim:g}, depth ×{target.n_layers / base.n_layers:g}")
    batch_note = ""
    if scaled:
        batch_note = f" (√-scaled from {args.lr:g} for batch {args.base_batch_size} -> {args.batch_size})"
    elif args.batch_size:
        batch_note = f" (unchanged for batch {args.base_batch_size} -> {args.batch_size}: see docs/METAP.md)"
    print(f"base LR {lr:.4g}" + batch_note
          + f", weight decay {args.weight_decay:g}, init std {args.init_std:g}\n")
    print(f"| {'group':<40} | {'init std':>10} | {'LR':>10} | {'weight decay':>12} |")
    print(f"|{'-' * 42}|{'-' * 12}|{'-' * 12}|{'-' * 14}|")
    seen = set()
    for name, rule in plan.items():
        label = _label(name)
        if label in seen:
            continue
        seen.add(label)
        decay = 0.0 if rule.group == "norm" else args.weight_decay / rule.lr_scale
        std = "1 (ones)" if rule.group == "norm" else f"{rule.init_std:.3g}"
        print(f"| {label:<40} | {std:>10} | {lr * rule.lr_scale:>10.3g} | {decay:>12.3g} |")
    print(f"\nherd train --model {args.to} --lr {lr:.4g} --weight-decay {args.weight_decay:g} "
          f"--init-std {args.init_std:g} --metap-base {args.base}   (metap is the default parametrization)")
    return 0


def _label(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[2:]) if parts[0] == "layers" else name
