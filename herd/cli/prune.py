"""`herd prune SRC --to-dense --out DST`: a Scout-shaped MoE checkpoint becomes a dense one whose FFN is each layer's
shared expert (routed experts and routers dropped), in herd's HF format, with the tokenizer copied beside it; see
`herd.moderation.prune`."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import herd
from herd.cli.common import DTYPES
from herd.config import ConfigError
from herd.moderation.prune import ATTENTION, prune_to_dense

HELP = "Prune a Scout-shaped MoE checkpoint to a dense model of its shared experts (--to-dense), as Llama Guard 4."
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="the MoE checkpoint (HF or Meta format)")
    parser.add_argument("--to-dense", action="store_true", required=True,
                        help="keep each layer's shared expert as its FFN (the only pruning there is)")
    parser.add_argument("--out", required=True, help="the directory to write")
    parser.add_argument("--attention", choices=ATTENTION, default="guard",
                        help="guard: Llama Guard 4's layout (RoPE everywhere, no chunks; default); keep: the "
                             "source's (the MoE model exactly, with its routed experts at zero)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bfloat16")


def run(args: argparse.Namespace) -> int:
    model = herd.load(args.source, dtype=DTYPES[args.dtype])
    try:
        dense = prune_to_dense(model, args.attention)
    except ConfigError as err:
        print(f"herd prune: error: {err}", file=sys.stderr)
        return 2
    del model
    herd.save(dense, args.out)
    for name in TOKENIZER_FILES:
        if (Path(args.source) / name).is_file():
            shutil.copyfile(Path(args.source) / name, Path(args.out) / name)
    params = sum(p.numel() for p in dense.parameters())
    print(f"wrote {args.out}: dense, {dense.config.n_layers} layers of FFN width {dense.config.ffn_dim}, "
          f"{params / 1e9:.2f}B parameters")
    return 0
