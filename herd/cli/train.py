"""`herd train`: pretrain a model on shards from `herd data prepare`; under torchrun, data-parallel
with FSDP2. Every TrainConfig field is a flag; `--config FILE.json` sets a base the flags override."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from herd.config import ConfigError
from herd.train.config import TrainConfig

# Flags only distillation reads (hidden from the other post-training commands).
DISTILL_FIELDS = ("teacher", "soft_loss", "jsd_beta", "temperature", "alpha", "alpha_rule", "alpha_end", "teacher_topk",
                  "teacher_cache", "on_policy", "sample_temperature", "max_new_tokens")

# Flags only RL reads (hidden from the other training commands).
RL_FIELDS = ("group_size", "loss_type", "clip_low", "clip_high", "scale_rewards", "kl_coef", "old_logps", "is_cap",
             "reward", "dynamic_sampling", "dynamic_rounds", "pass_band", "profile_every", "profile_prompts",
             "curriculum", "curriculum_fraction", "max_staleness", "sync_every", "rollout_workers", "fast_rollouts")

HELP = "Pretrain a Llama-4-architecture model (use torchrun --nproc-per-node N for data parallel)."


def register(parser: argparse.ArgumentParser, base: TrainConfig | None = None,
             fixed: tuple[str, ...] = ()) -> None:
    """Every TrainConfig field as a flag (but `fixed` ones), with `base`'s values as the defaults shown."""
    parser.add_argument("--config", metavar="FILE", help="JSON file of TrainConfig fields (flags override it)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    defaults = base or TrainConfig()
    if defaults.objective != "rl":
        fixed = (*fixed, *RL_FIELDS)
    parser.set_defaults(train_base=defaults, train_fixed=fixed)
    for field in dataclasses.fields(TrainConfig):
        if field.name in fixed:
            continue
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        if isinstance(default, bool):
            parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"(default {default})")
        else:
            parser.add_argument(flag, dest=field.name, type=type(default), default=None, help=f"(default {default})")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    base: TrainConfig = getattr(args, "train_base", None) or TrainConfig()
    fixed = getattr(args, "train_fixed", ())
    if args.config:
        base = base.replace(**{k: v for k, v in TrainConfig.file_values(args.config).items() if k not in fixed})
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in fixed]
    flags = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    return base.replace(**flags)


def run(args: argparse.Namespace) -> int:
    from herd.data.sources import DataError
    from herd.train import train
    from herd.train.checkpoints import ResumeError

    # A process that torchrun restarted (--max-restarts) continues from the run's last checkpoint.
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    try:
        summary = train(config_from_args(args), resume=args.resume or restarted, progress=not args.no_progress)
    except (ConfigError, DataError, ResumeError, ValueError) as err:
        print(f"herd {args.command}: error: {err}", file=sys.stderr)
        return 2
    if summary.get("is_main"):
        val, loss = summary.get("val_loss"), summary.get("loss")
        print(f"trained {summary['steps']} steps ({summary['tokens']:,} tokens)"
              + (f"; final loss {loss:.4f}" if loss is not None else "; already complete, nothing to resume")
              + (f", validation loss {val:.4f}" if val is not None else "")
              + f"\nmodel: {summary['model_dir']}  (herd generate --model {summary['model_dir']} --prompt ...)")
    return 0
