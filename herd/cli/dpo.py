"""`herd dpo`: direct preference optimisation of a checkpoint on preference pairs (JSONL of `prompt`,
`chosen`, `rejected` message lists), against a frozen reference whose log-probabilities are computed once;
the flags and outputs of `herd train`."""

from __future__ import annotations

import argparse

from herd.cli import train
from herd.train.config import TrainConfig

HELP = "Preference-tune a checkpoint with DPO (--init-from MODEL --data pairs.jsonl [--beta 0.1])."

# TRL's DPO defaults where they apply (β 0.1, LR 1e-6 for large models; small ones move at 1e-5..1e-4),
# router balancing off (a checkpoint's learned bias is kept, frozen), no weight decay.
BASE = TrainConfig(objective="dpo", router_bias_rate=0.0, weight_decay=0.0, lr=5e-5, warmup_steps=10, steps=100,
                   seq_len=1024, batch_size=8, eval_every=50, ckpt_every=50, out="runs/dpo")


def register(parser: argparse.ArgumentParser) -> None:
    fixed = ("objective", "model", "vocab_size", "document_masking", *train.DISTILL_FIELDS)
    train.register(parser, BASE, fixed=fixed)


def run(args: argparse.Namespace) -> int:
    return train.run(args)
