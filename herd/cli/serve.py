"""`herd serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) over the continuous-batching engine."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from pathlib import Path

from herd.cli.common import DTYPES, add_fast_flag, add_quant_flag, load_model, tokenizer_for
from herd.config import PRESETS
from herd.fast import optimize
from herd.infer import KVPool, Scheduler
from herd.infer.steps import EagerStep, FastDecode
from herd.serve.app import State, create_app
from herd.serve.openai import Served
from herd.serve.runner import Runner

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


def run(args: argparse.Namespace) -> int:
    import uvicorn

    if args.max_slots < 1 or args.max_context < 2 or args.max_queue < 0:
        print("herd serve: error: --max-slots >= 1, --max-context >= 2 and --max-queue >= 0", file=sys.stderr)
        return 2
    state = State(api_key=args.api_key or None)
    app = create_app(state)
    loader = threading.Thread(target=_load, args=(args, state), name="herd-load", daemon=True)
    loader.start()
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=5)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: object) -> None:
            if state.runner is not None:  # open streams end with an error chunk instead of hanging
                threading.Thread(target=state.runner.stop, daemon=True).start()
            super().handle_exit(sig, frame)

    server = Server(config)
    try:
        server.run()  # returns on Ctrl-C / SIGTERM, after open streams get their error chunk
    finally:
        if state.runner is not None:
            state.runner.stop()
    return 0
