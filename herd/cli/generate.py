"""`herd generate`: stream a completion of a text prompt (or of token ids) from a checkpoint or a preset."""

from __future__ import annotations

import argparse
import sys
import time

from herd import chat
from herd.cli.common import (
    DTYPES,
    add_fast_flag,
    add_quant_flag,
    add_sampling_flags,
    engine_for,
    image_collector,
    load_model,
    sampling_params,
    tokenizer_for,
)
from herd.config import PRESETS
from herd.image import ImageError
from herd.model import Transformer
from herd.tokenizer import TextStream, Tokenizer

HELP = "Stream a completion from a checkpoint (--model) or a random preset (--preset)."


def register(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="checkpoint directory (HF or Meta format)")
    source.add_argument("--preset", choices=list(PRESETS), help="build this preset with random weights")
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", help="prompt text")
    prompt.add_argument("--prompt-ids", help="comma-separated prompt token ids (prints ids, needs no tokenizer)")
    parser.add_argument("--image", action="append", default=[], metavar="PATH",
                        help="an image before the prompt text (repeatable; needs a multimodal checkpoint)")
    parser.add_argument("--max-tiles", type=int, default=16, help="tiles of 336 pixels per image (default 16)")
    parser.add_argument("--chat", action="store_true", help="wrap --prompt as one user turn of the chat format")
    parser.add_argument("--system", help="with --chat: a system message")
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    add_fast_flag(parser)
    add_quant_flag(parser)
    add_sampling_flags(parser)


def _fail(message: str) -> int:
    print(f"herd generate: error: {message}", file=sys.stderr)
    return 2


def _prompt(args: argparse.Namespace, model: Transformer, tokenizer: Tokenizer | None,
            images: chat.ImageCollector | None) -> list[int]:
    """Prompt ids: given ids, the text (images first) raw or as one chat turn, or a lone BOS."""
    if args.prompt_ids is not None:
        try:
            return [int(t) for t in args.prompt_ids.split(",") if t.strip()]
        except ValueError:
            raise ValueError(f"--prompt-ids must be comma-separated integers, got {args.prompt_ids!r}") from None
    if args.prompt is None:
        return [model.config.bos_id if model.config.bos_id < model.config.vocab_size else 0]
    image_parts = [{"type": "image", "image": path} for path in args.image]
    if args.chat:
        messages = [{"role": "system", "content": args.system}] if args.system else []
        user = {"role": "user", "content": [*image_parts, {"type": "text", "text": args.prompt}]}
        return chat.render(tokenizer, [*messages, user], image_tokens=images).ids
    layouts = [i for part in image_parts for i in images(part)]
    return [tokenizer.bos_id, *layouts, *tokenizer.encode(args.prompt)]


def run(args: argparse.Namespace) -> int:
    if args.chat and args.prompt is None:
        return _fail("--chat needs --prompt TEXT")
    if args.image and args.prompt is None:
        return _fail("--image needs --prompt TEXT")
    model = load_model(args)
    if args.image and model.vision is None:
        return _fail("--image needs a multimodal checkpoint (this model has no vision tower)")
    tokenizer = tokenizer_for(args.model, model.config.vocab_size) if args.prompt is not None else None
    images = image_collector(model, args.max_tiles)
    try:
        prompt = _prompt(args, model, tokenizer, images)
    except (ImageError, ValueError) as err:
        return _fail(str(err))
    try:
        params = sampling_params(args)
    except ValueError as err:
        return _fail(str(err))
    engine = engine_for(model, args)
    text = TextStream(tokenizer, args.stop) if tokenizer is not None else None
    count, start = 0, time.perf_counter()
    try:
        pixels = [images.pixels] if images is not None and images.pixels else None
        for event in engine.stream(prompt, params, images=pixels):
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
