"""`herd distill`: train a student (from scratch or `--init-from`) on token shards against a teacher's
next-token distributions plus the data's tokens; the flags and outputs of `herd train`."""

from __future__ import annotations

import argparse

from herd.cli import train
from herd.train.config import TrainConfig

HELP = ("Distil a teacher into a student on token shards (--teacher MODEL --data DIR; "
        "--soft-loss forward_kl|reverse_kl|jsd, --alpha-rule fixed|linear|confidence).")

BASE = TrainConfig(objective="distill", out="runs/distill")


def register(parser: argparse.ArgumentParser) -> None:
    train.register(parser, BASE, fixed=("objective", "beta", "nll_weight", "reference"))


def run(args: argparse.Namespace) -> int:
    return train.run(args)
