"""`herd tokenize`: the token ids (and pieces) of a text, or of a chat given as a JSON messages file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from herd import chat
from herd.cli.common import tokenizer_for
from herd.tokenizer import TokenizerError, load_tokenizer

HELP = "Show the token ids of a text or of a chat (--chat FILE.json), to inspect prompts."


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="checkpoint directory or tokenizer file (default: llama-models' tokenizer)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="text to encode ('-' reads stdin)")
    source.add_argument("--chat", metavar="FILE", help='JSON file: a list of messages, or {"messages", "tools"}')
    parser.add_argument("--bos", action="store_true", help="with --text: prepend <|begin_of_text|>")
    parser.add_argument("--pieces", action="store_true", help="one token per line with its text piece")
    parser.add_argument("--no-generation-prompt", action="store_true", help="with --chat: no assistant header")
    parser.add_argument("--max-tiles", type=int, default=16, help="with --chat: tiles per image (default 16)")


def _fail(message: str) -> int:
    print(f"herd tokenize: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    try:
        tokenizer = load_tokenizer(args.model) if args.model else tokenizer_for(None, 1 << 30)
    except TokenizerError as err:
        return _fail(str(err))
    mask: list[bool] | None = None
    if args.chat:
        try:
            spec = json.loads(Path(args.chat).read_text())
        except (OSError, json.JSONDecodeError) as err:
            return _fail(f"cannot read {args.chat}: {err}")
        messages, tools = (spec, None) if isinstance(spec, list) else (spec.get("messages"), spec.get("tools"))
        if not isinstance(messages, list):
            return _fail(f"{args.chat}: expected a list of messages or an object with 'messages'")
        try:
            rendered = chat.render(tokenizer, messages, tools=tools, image_tokens=chat.ImageCollector(args.max_tiles),
                                   add_generation_prompt=not args.no_generation_prompt)
        except (ValueError, KeyError, TypeError) as err:  # ImageError is a ValueError
            return _fail(f"{args.chat}: {err}")
        ids, mask = rendered.ids, rendered.loss_mask
    else:
        text = sys.stdin.read() if args.text == "-" else args.text
        ids = tokenizer.encode(text, bos=args.bos)
    if not args.pieces:
        print(" ".join(map(str, ids)))
    else:
        for i, token in enumerate(ids):
            trained = "  [loss]" if mask is not None and mask[i] else ""
            print(f"{token:>7}  {tokenizer.piece(token)!r}{trained}")
    print(f"{len(ids)} tokens", file=sys.stderr)
    return 0
