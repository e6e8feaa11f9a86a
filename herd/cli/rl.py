"""`herd rl`: online RL of a checkpoint on prompts with a verifier reward (GRPO / DAPO / Dr. GRPO losses), the
difficulty filter and the asynchronous rollout workers of `herd.train.rl_data`; the flags and outputs of
`herd train`.

    herd rl --init-from MODEL --data prompts.jsonl --reward exact --group-size 8 --batch-size 64
    torchrun --nproc-per-node 3 -m herd rl ... --rollout-workers 2 --max-staleness 1   # 1 learner, 2 samplers
"""

from __future__ import annotations

import argparse

from herd.cli import train
from herd.train.config import TrainConfig

HELP = ("Online RL of a checkpoint on prompts with a verifier (--init-from MODEL --data prompts.jsonl --reward "
        "exact|number|python|module:function; under torchrun, --rollout-workers W sample asynchronously).")

# TRL GRPOTrainer's defaults where they apply (ε 0.2, β 0, 8 answers per prompt, group-scaled rewards), DAPO's token
# mean and dynamic sampling, router balancing off (a checkpoint's learned bias is kept, frozen), no weight decay,
# an LR for continuing a small trained model.
BASE = TrainConfig(objective="rl", router_bias_rate=0.0, weight_decay=0.0, lr=1e-5, warmup_steps=0,
                   schedule="constant", steps=100, seq_len=512, batch_size=64, max_new_tokens=128,
                   sample_temperature=1.0, eval_every=1_000_000, ckpt_every=20, log_every=1, out="runs/rl")


def register(parser: argparse.ArgumentParser) -> None:
    fixed = ("objective", "model", "vocab_size", "document_masking", "beta", "nll_weight", "teacher", "soft_loss",
             "jsd_beta", "temperature", "alpha", "alpha_rule", "alpha_end", "teacher_topk", "teacher_cache",
             "on_policy", "eval_batches", "eval_every")
    train.register(parser, BASE, fixed=fixed)


def run(args: argparse.Namespace) -> int:
    return train.run(args)
