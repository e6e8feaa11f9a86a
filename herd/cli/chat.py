"""`herd chat`: an interactive terminal chat with streaming replies.

- History is kept as OpenAI-style messages and rendered by `herd.chat` each turn.
- Input: a line is a message; a line ending in a backslash continues on the next line, and a
  line of three double quotes opens or closes a multi-line block.
- Commands: /image PATH attaches an image to the next message, /reset clears the history
  (keeping --system), /exit (or Ctrl-D) leaves.
- Ctrl-C during a reply stops that reply (its text so far stays in the history); at the prompt
  it clears the line. The session goes on either way.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from herd import chat
from herd.cli.common import (
    DTYPES,
    add_fast_flag,
    add_quant_flag,
    add_sampling_flags,
    engine_for,
    image_collector,
    load_with_tokenizer,
    sampling_params,
)
from herd.image import ImageError, preprocess
from herd.tokenizer import StreamDecoder

HELP = "Chat with a checkpoint in the terminal (streaming, history, /reset, /exit)."
PROMPT, CONTINUE = ">>> ", "... "


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint directory (HF or Meta format)")
    parser.add_argument("--system", help="system message")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bfloat16")
    parser.add_argument("--max-tiles", type=int, default=16, help="tiles of 336 pixels per image (default 16)")
    add_fast_flag(parser)
    add_quant_flag(parser)
    add_sampling_flags(parser, max_new_tokens=1024)


def read_message() -> str | None:
    """One user message from stdin; None at end of input. Ctrl-C clears what was typed."""
    lines: list[str] = []
    block = False
    while True:
        try:
            line = input(CONTINUE if lines else PROMPT)
        except EOFError:
            return None
        except KeyboardInterrupt:
            print()
            lines, block = [], False
            continue
        if line.strip() == '"""':
            block = not block
            if not block:
                return "\n".join(lines)
            continue
        if block:
            lines.append(line)
        elif line.endswith("\\"):
            lines.append(line[:-1])
        else:
            return "\n".join([*lines, line])


@contextmanager
def interruptible() -> Iterator[threading.Event]:
    """Ctrl-C inside the block raises KeyboardInterrupt where Python is and also sets the yielded
    event, which the caller checks between tokens: Python drops an exception raised inside a
    weakref callback or `__del__` (and prints "Exception ignored in ..."), and torch's compiler
    runs many of those. Such a dropped interrupt is not printed."""
    pressed = threading.Event()

    def handler(signum: int, frame: object) -> None:
        pressed.set()
        raise KeyboardInterrupt

    def unraisable(info: sys.UnraisableHookArgs) -> None:
        if not (info.exc_type and issubclass(info.exc_type, KeyboardInterrupt)):
            previous_hook(info)

    previous, previous_hook = signal.signal(signal.SIGINT, handler), sys.unraisablehook
    sys.unraisablehook = unraisable
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = previous_hook


def run(args: argparse.Namespace) -> int:
    model, tokenizer = load_with_tokenizer(args)
    engine = engine_for(model, args)
    params = sampling_params(args)
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict] = list(system)
    pending: list[dict] = []  # image parts for the next user message
    print("herd chat: /image PATH attaches an image, /reset clears the history, /exit leaves; Ctrl-C stops a reply.",
          file=sys.stderr)
    while True:
        text = read_message()
        if text is None or text.strip() in ("/exit", "/quit"):
            print()
            return 0
        if text.strip() == "/reset":
            history, pending = list(system), []
            print("(history cleared)")
            continue
        if text.strip().startswith("/image"):
            path = text.strip().removeprefix("/image").strip()
            if model.vision is None:
                print("herd chat: this model has no vision tower", file=sys.stderr)
            elif not path:
                print("herd chat: usage: /image PATH", file=sys.stderr)
            else:
                try:
                    preprocess(path, max_tiles=args.max_tiles)  # fail now, not at the next message
                    pending.append({"type": "image", "image": path})
                    print(f"(image attached: {path})")
                except ImageError as err:
                    print(f"herd chat: {err}", file=sys.stderr)
            continue
        if not text.strip():
            continue
        history.append({"role": "user", "content": [*pending, {"type": "text", "text": text}] if pending else text})
        pending = []
        images = image_collector(model, args.max_tiles)
        try:
            prompt = chat.render(tokenizer, history, image_tokens=images).ids
        except ImageError as err:  # e.g. an attached file that has since gone
            print(f"herd chat: {err}", file=sys.stderr)
            history.pop()
            continue
        pixels = [images.pixels] if images is not None and images.pixels else None
        decoder, ids = StreamDecoder(tokenizer), []
        try:
            with interruptible() as ctrl_c:
                for event in engine.stream(prompt, params, images=pixels):
                    if ctrl_c.is_set():
                        raise KeyboardInterrupt
                    ids.append(event.token)
                    if event.token in model.config.eos_ids:
                        break
                    print(decoder.push(event.token), end="", flush=True)
                print(decoder.flush())
        except KeyboardInterrupt:
            print("\n(stopped)")
        except ValueError as err:  # e.g. the conversation outgrew the context
            print(f"\nherd chat: error: {err}; use /reset", file=sys.stderr)
            history.pop()
            continue
        history.append(chat.parse_assistant(tokenizer, ids).to_openai())
