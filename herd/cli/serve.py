"""`herd serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) over the continuous-batching engine."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from pathlib import Path

import torch

import herd
from herd.cli.common import DTYPES, add_fast_flag, add_quant_flag, codes, load_model, tokenizer_for
from herd.config import PRESETS
from herd.fast import optimize
from herd.infer import KVPool, Scheduler
from herd.infer.steps import EagerStep, FastDecode
from herd.moderation import selected_categories
from herd.serve.app import State, create_app
from herd.serve.openai import Served
from herd.serve.runner import Runner
from herd.serve.screen import REFUSAL, STAGES, Screen

PROMPT_ROOM = 1024  # the Guard prompt's own tokens (task, category table, question) beyond the conversation

HELP = "Serve a checkpoint (--model) or a random preset (--preset) behind an OpenAI-compatible HTTP API."
log = logging.getLogger("herd")


def register(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="checkpoint directory (HF or Meta format)")
    source.add_argument("--preset", choices=list(PRESETS), help="build this preset with random weights")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=os.environ.get("HERD_API_KEY"),
                        help="require 'Authorization: Bearer KEY' (default: $HERD_API_KEY; none: open)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bfloat16")
    parser.add_argument("--max-slots", type=int, default=8, help="sequences decoded at once (KV slots)")
    parser.add_argument("--max-context", type=int, default=8192, help="positions per sequence, prompt included")
    parser.add_argument("--max-queue", type=int, default=256, help="waiting requests before 429")
    parser.add_argument("--prefill-chunk", type=int, default=512, help="prompt tokens prefilled per step")
    parser.add_argument("--served-model-name", help="the model's name in the API (default: the directory name)")
    parser.add_argument("--max-images-per-prompt", type=int, default=8)
    parser.add_argument("--max-tiles", type=int, default=16, help="tiles of 336 pixels per image")
    parser.add_argument("--allowed-media-dir", type=Path,
                        help="image parts may name local files under this directory (otherwise data URLs only)")
    guard = parser.add_argument_group("screening with Llama Guard 4")
    guard.add_argument("--guard", metavar="M", help="a Llama Guard 4 checkpoint screening chat requests and replies")
    guard.add_argument("--guard-on", choices=["input", "output", "both"], default="both",
                       help="what the guard judges: the request's last message, the reply, or both (default)")
    guard.add_argument("--guard-threshold", type=float, help="flag at P(unsafe) >= this (default: the verdict)")
    guard.add_argument("--guard-exclude", default="", help="category codes the guard does not check, e.g. S6,S8")
    guard.add_argument("--guard-interval", type=int, default=32,
                       help="a streamed reply is held back and released after each screening of this many tokens")
    guard.add_argument("--guard-slots", type=int, default=4, help="the guard's KV slots")
    guard.add_argument("--guard-refusal", default=REFUSAL,
                       help="the reply to a flagged turn ({stage}: request or response; {categories})")
    add_fast_flag(parser)
    add_quant_flag(parser)


def _load(args: argparse.Namespace, state: State) -> None:
    """Load the model, allocate the KV pool and start the engine thread; the server answers 503 until then."""
    try:
        dtype = DTYPES[args.dtype]
        model = load_model(args)
        tokenizer = tokenizer_for(args.model, model.config.vocab_size)
        step = FastDecode(optimize(model)) if args.fast else EagerStep(model)
        context = min(args.max_context, model.config.max_seq_len)
        pool = KVPool(model.config, args.max_slots, context, dtype)
        scheduler = Scheduler(model, pool, step, prefill_chunk=args.prefill_chunk, max_queue=args.max_queue)
        name = args.served_model_name or (Path(args.model).resolve().name if args.model else args.preset)
        served = Served(tokenizer, name, scheduler.limit, tuple(tokenizer.stop_ids), model.vision,
                        args.max_images_per_prompt, args.max_tiles, args.allowed_media_dir)
        if args.guard:
            state.screen = _guard(args, dtype, context)
        state.runner = Runner(scheduler)
        state.served = served
        base = f"http://{args.host}:{args.port}"
        print(f"herd serve: {name} ({args.dtype}) at {base}/v1\n"
              f"  KV pool: {pool.describe()}; queue up to {args.max_queue}\n"
              f"  try: curl {base}/v1/chat/completions -H 'Content-Type: application/json' "
              f"-d '{{\"model\": \"{name}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hi!\"}}]}}'",
              file=sys.stderr, flush=True)
    except Exception as err:  # the server stays up and says why in every answer
        log.exception("herd serve: loading failed")
        state.load_error = f"the model failed to load: {err}"


def _guard(args: argparse.Namespace, dtype: torch.dtype, context: int) -> Screen:
    """The Guard model, its KV pool and engine thread, and the screening settings."""
    model = herd.load(args.guard, dtype=dtype, quantize=args.quant)
    tokenizer = tokenizer_for(args.guard, model.config.vocab_size)
    step = FastDecode(optimize(model)) if args.fast else EagerStep(model)
    guard_context = min(context + PROMPT_ROOM, model.config.max_seq_len)
    pool = KVPool(model.config, args.guard_slots, guard_context, dtype)
    scheduler = Scheduler(model, pool, step, prefill_chunk=args.prefill_chunk, max_queue=args.max_queue)
    served = Served(tokenizer, Path(args.guard).resolve().name, scheduler.limit, tuple(tokenizer.stop_ids),
                    model.vision, args.max_images_per_prompt, args.max_tiles, args.allowed_media_dir)
    stages = frozenset(STAGES if args.guard_on == "both" else (args.guard_on,))
    excluded = tuple(codes(args.guard_exclude))
    selected_categories(excluded)  # an unknown code fails the load, with its name
    print(f"herd serve: guard {served.name} screens {' and '.join(sorted(stages))}; KV pool: {pool.describe()}",
          file=sys.stderr, flush=True)
    return Screen(served, Runner(scheduler), stages, excluded, args.guard_threshold, args.guard_interval,
                  args.guard_refusal)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    if args.max_slots < 1 or args.max_context < 2 or args.max_queue < 0:
        print("herd serve: error: --max-slots >= 1, --max-context >= 2 and --max-queue >= 0", file=sys.stderr)
        return 2
    if args.guard and (args.guard_slots < 1 or args.guard_interval < 1 or not (
            args.guard_threshold is None or 0 <= args.guard_threshold <= 1)):
        print("herd serve: error: --guard-slots >= 1, --guard-interval >= 1 and 0 <= --guard-threshold <= 1",
              file=sys.stderr)
        return 2
    state = State(api_key=args.api_key or None)
    app = create_app(state)
    loader = threading.Thread(target=_load, args=(args, state), name="herd-load", daemon=True)
    loader.start()
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=5)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: object) -> None:
            for runner in state.runners():  # open streams end with an error chunk instead of hanging
                threading.Thread(target=runner.stop, daemon=True).start()
            super().handle_exit(sig, frame)

    server = Server(config)
    try:
        server.run()  # returns on Ctrl-C / SIGTERM, after open streams get their error chunk
    finally:
        for runner in state.runners():
            runner.stop()
    return 0
