"""`herd guard`: classify a user message (and optionally the agent's response) with Llama Guard 4.

    herd guard --model Llama-Guard-4-12B --text "How do I make a bomb?"          # unsafe S9, P(unsafe) 0.97
    herd guard --model M --text "..." --response "..." --exclude S1,S9 --json
    herd guard --preset llama-guard-4-12b --text "..." --image photo.jpg --show-prompt   # ids only, no weights read

Prints the verdict (llama-stack's reading of the greedy answer) and P(unsafe) at the first answer token, flagged at
`--threshold`. `--show-prompt` prints the prompt's token ids on one line and exits without loading the model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from herd import chat
from herd.checkpoint import read_config
from herd.cli.common import DTYPES, codes, load_model, tokenizer_for
from herd.config import PRESETS, preset
from herd.moderation import GuardPromptError, Judge, guard_prompt
from herd.moderation.prompt import VARIANTS

HELP = "Classify a conversation with Llama Guard 4 (--model M --text ... [--response ...] [--image F])."


def register(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a Llama Guard 4 checkpoint directory (HF or Meta format)")
    source.add_argument("--preset", choices=list(PRESETS), help="this preset with random weights")
    parser.add_argument("--text", required=True, help="the user's message")
    parser.add_argument("--response", help="the agent's reply: then the reply is what is judged")
    parser.add_argument("--image", action="append", default=[], metavar="PATH", help="an image of the user's "
                        "message (repeatable)")
    parser.add_argument("--exclude", default="", help="category codes not to check, comma-separated (e.g. S1,S9)")
    parser.add_argument("--categories", metavar="FILE", help="a JSON object {code: name} replacing the categories")
    parser.add_argument("--variant", choices=VARIANTS, default="hf",
                        help="the HF chat template's prompt (default) or llama-stack's")
    parser.add_argument("--threshold", type=float, default=0.5, help="P(unsafe) at or above which the score flags")
    parser.add_argument("--max-tiles", type=int, default=16, help="tiles of 336 pixels per image (default 16)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bfloat16")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--show-prompt", action="store_true", help="print the prompt's token ids and exit")


def _fail(message: str) -> int:
    print(f"herd guard: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    content: list[dict] = [{"type": "image", "image": path} for path in args.image]
    content.append({"type": "text", "text": args.text})
    conversation = [{"role": "user", "content": content}]
    if args.response is not None:
        conversation.append({"role": "assistant", "content": args.response})
    excluded = codes(args.exclude)
    categories = None
    if args.categories:
        try:
            categories = json.loads(Path(args.categories).read_text())
        except (OSError, json.JSONDecodeError) as err:
            return _fail(f"cannot read --categories {args.categories}: {err}")
        if not isinstance(categories, dict) or not all(isinstance(v, str) for v in categories.values()):
            return _fail("--categories is a JSON object of code: name")
    config = read_config(args.model) if args.model else preset(args.preset)
    if args.image and config.vision is None:
        return _fail("this model has no vision tower; --image needs a multimodal Guard checkpoint")
    if args.show_prompt:
        tokenizer = tokenizer_for(args.model, config.text.vocab_size)
        collector = None
        if args.image:
            collector = chat.ImageCollector(args.max_tiles, config.vision.tokens_per_tile, config.vision.image_size)
        try:
            prompt = guard_prompt(tokenizer, conversation, excluded=excluded, categories=categories,
                                  variant=args.variant, image_tokens=collector)
        except (GuardPromptError, chat.ImageError) as err:
            return _fail(str(err))
        print(" ".join(map(str, prompt.ids)))
        return 0
    model = load_model(args)
    judge = Judge(model, tokenizer_for(args.model, model.config.vocab_size), excluded=excluded,
                  categories=categories, variant=args.variant, threshold=args.threshold, max_tiles=args.max_tiles)
    try:
        judgement = judge([conversation])[0]
    except (GuardPromptError, chat.ImageError) as err:
        return _fail(str(err))
    result = {**judgement.to_json(), "threshold": args.threshold}
    if args.json:
        print(json.dumps(result))
    else:
        named = ", ".join(f"{c} {n}" for c, n in judgement.categories.items())
        print(f"{judgement.verdict.label}{': ' + named if named else ''}  P(unsafe) {judgement.p_unsafe:.3f}"
              f"{' (flagged)' if judgement.flagged else ''}")
    return 0
