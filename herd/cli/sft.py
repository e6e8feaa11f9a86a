"""`herd sft`: supervised fine-tuning of a checkpoint on chat conversations (JSONL of OpenAI-style
`messages`), the loss on the assistant's tokens only; the flags and outputs of `herd train`."""

from __future__ import annotations

import argparse

from herd.cli import train
from herd.train.config import TrainConfig

HELP = "Fine-tune a checkpoint on chat data (--init-from MODEL --data chat.jsonl; loss on assistant tokens)."

# Post-training defaults: router balancing off (a checkpoint's learned bias is kept, frozen), no weight decay,
# a short warmup, and an LR for continuing a trained model rather than starting one.
BASE = TrainConfig(objective="sft", router_bias_rate=0.0, weight_decay=0.0, lr=1e-4, warmup_steps=10, steps=200,
                   seq_len=1024, eval_every=50, ckpt_every=50, out="runs/sft")


def register(parser: argparse.ArgumentParser) -> None:
    fixed = ("objective", "model", "vocab_size", "document_masking", *train.DISTILL_FIELDS, "beta", "nll_weight",
             "reference")
    train.register(parser, BASE, fixed=fixed)


def run(args: argparse.Namespace) -> int:
    return train.run(args)
