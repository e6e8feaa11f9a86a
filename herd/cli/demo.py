"""`herd demo`: train a small Llama-4-architecture model on the Python standard library (cached
after the first run), then print its validation loss and sampled continuations."""

from __future__ import annotations

import argparse

HELP = "Train herd-10m on the Python standard library (first run: minutes; then cached) and sample from it."


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the demo's 400)")
    parser.add_argument("--retrain", action="store_true", help="train again even when a cached model exists")
    parser.add_argument("--samples", type=int, default=3, help="prompts to continue (default 3)")


def run(args: argparse.Namespace) -> int:
    from herd.demo import run_demo

    result = run_demo(steps=args.steps, retrain=args.retrain, samples=args.samples)
    print(f"\nherd-10m after {result['steps']} steps ({result['tokens']:,} tokens, "
          f"{result['train_seconds'] / 60:.1f} min of training)")
    print(f"validation loss {result['val_loss']:.3f} nats/token (perplexity {result['perplexity']:.1f}) over "
          f"{result['val_tokens']:,} held-out tokens; unigram baseline {result['unigram_baseline']:.3f}")
    for prompt, text in result["samples"]:
        print("\n----- " + repr(prompt) + " -----")
        print(prompt + text)
    model = result["model_dir"]
    print("\n-----\nThe model is cached in " + model + ". Continue it yourself:")
    print(f"  herd generate --model {model} --prompt 'def fibonacci(n):' --max-new-tokens 80")
    print(f"  herd chat --model {model}    (a base model: it continues code, it was not taught to chat)")
    return 0
