"""Entry point of the `herd` command."""

from __future__ import annotations

import argparse
import logging
import sys

from herd.checkpoint import CheckpointError
from herd.cli import (
    chat,
    data,
    demo,
    distill,
    dpo,
    eval,
    generate,
    guard,
    info,
    metap,
    plan,
    prune,
    quantize,
    redteam,
    rl,
    serve,
    sft,
    tokenize,
    tokenizer,
    train,
)
from herd.config import ConfigError
from herd.quant import QuantError
from herd.tokenizer import TokenizerError

COMMANDS = {
    "demo": demo, "info": info, "generate": generate, "chat": chat, "tokenize": tokenize, "tokenizer": tokenizer,
    "data": data, "train": train, "sft": sft, "dpo": dpo, "distill": distill, "rl": rl, "metap": metap, "serve": serve,
    "quantize": quantize, "plan": plan, "eval": eval, "guard": guard, "prune": prune, "redteam": redteam,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="herd", description="The Llama 4 herd in plain PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        module.register(sub.add_parser(name, help=module.HELP, description=module.HELP))
    args = parser.parse_args(argv)
    args.command_line = ["herd", *(sys.argv[1:] if argv is None else argv)]
    logging.basicConfig(level=logging.INFO, format="herd: %(message)s")
    try:
        return COMMANDS[args.command].run(args) or 0
    except (CheckpointError, ConfigError, QuantError, TokenizerError) as err:
        print(f"herd {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
