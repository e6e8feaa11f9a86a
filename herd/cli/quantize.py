"""`herd quantize SRC --scheme int8|int8-g128|int4|int4-g128 --out DST`: write a quantized checkpoint that
`herd.load` reads back as it was written (codes and scales bit for bit)."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

import herd
from herd.cli.common import DTYPES, add_quant_groups_flags, quant_groups
from herd.quant import SCHEMES

log = logging.getLogger("herd")
HELP = "Quantize a checkpoint's weights (int8 / int4) into a new checkpoint directory."
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json", "chat_template.json", "preprocessor_config.json")


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SRC", help="checkpoint directory (HF or Meta format)")
    parser.add_argument("--scheme", choices=list(SCHEMES), required=True,
                        help="int8: groups of 32 (as Q8_0); int8-g128: groups of 128 (8%% fewer bytes); "
                             "int4: groups of 32; int4-g128: Meta's int4_mixed groups")
    parser.add_argument("--out", required=True, metavar="DST", help="directory to write (HF safetensors layout)")
    add_quant_groups_flags(parser)
    parser.add_argument("--dtype", choices=list(DTYPES), default=None,
                        help="dtype of the weights left unquantized (default: as stored)")


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors")) + sum(f.stat().st_size for f in path.glob("*.pth"))


def run(args: argparse.Namespace) -> int:
    source, out = Path(args.source), Path(args.out)
    if out.resolve() == source.resolve():
        print(f"herd quantize: --out must differ from the source ({source})", file=sys.stderr)
        return 2
    groups = quant_groups(args)
    start = time.perf_counter()
    log.info("reading %s, quantizing %s to %s ...", source, ", ".join(groups), args.scheme)
    model = herd.load(source, dtype=DTYPES[args.dtype] if args.dtype else None, quantize=args.scheme,
                      quantize_groups=groups)
    herd.save(model, out)
    copied = [name for name in TOKENIZER_FILES if (source / name).exists()]
    for name in copied:
        shutil.copyfile(source / name, out / name)
    before, after = _size(source), _size(out)
    print(f"herd quantize: {source} ({before / 1e6:,.1f} MB) -> {out} ({after / 1e6:,.1f} MB, {args.scheme}: "
          f"{', '.join(groups)}) in {time.perf_counter() - start:.1f}s"
          + (f"; copied {', '.join(copied)}" if copied else ""), file=sys.stderr)
    return 0
