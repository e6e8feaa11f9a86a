"""`herd demo`: train the smallest ladder model on the Python standard library, then sample from it.

- Three cached stages under the cache directory (`$HERD_CACHE`, else `$XDG_CACHE_HOME/herd`, else
  `~/.cache/herd`), each skipped when its output is already complete: a byte-level BPE tokenizer
  of 8,192 ids trained on the stdlib sources; the stdlib tokenized into shards; `herd-10m`
  trained for a few minutes on 2 CPU cores.
- The result is the model's cross-entropy over every window of the held-out split (not the trainer's
  periodic sample), judged against the unigram baseline on the same tokens: predicting each one by
  its training-set frequency alone.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

import herd
from herd.data.prepare import prepare
from herd.data.shards import TokenShards
from herd.data.sources import read_corpus
from herd.files import cache_dir
from herd.infer.engine import Engine
from herd.infer.sampling import SamplingParams
from herd.tokenizer import load_tokenizer
from herd.tokenizer_train import train_tokenizer
from herd.train import TrainConfig, train
from herd.train.evaluate import split_loss, target_tokens

log = logging.getLogger("herd")

# One optimizer step is 16 × 256 tokens; at ~3,300 tokens/s on 2 cores, 400 steps take about 8 minutes.
DEMO_CONFIG = TrainConfig(
    model="herd-10m", seq_len=256, batch_size=16, steps=400, lr=3e-3, warmup_steps=40, min_lr_ratio=0.1,
    schedule="cosine", weight_decay=0.1, eval_every=100, eval_batches=4, ckpt_every=50, log_every=25,
)
PROMPTS = ("import os\n", "def read_lines(path):\n", "class Stack:\n    def __init__(self):\n",
           "for i in range(", "    # Return the")
VOCAB_SIZE = 8192


def _tokenizer(root: Path) -> Path:
    path = root / "tokenizer.json"
    if not path.exists():
        log.info("[1/3] training a %d-token BPE tokenizer on the Python standard library", VOCAB_SIZE)
        train_tokenizer(read_corpus(["stdlib"], 50_000_000), VOCAB_SIZE, path)
    return path


def _data(root: Path, tokenizer: Path) -> Path:
    out = root / "data"
    if not (out / "manifest.json").exists():
        log.info("[2/3] tokenizing the Python standard library into %s", out)
        prepare(["stdlib"], out, str(tokenizer), val_fraction=0.02, overwrite=True)
    return out


def unigram_baseline(data: Path, seq_len: int) -> float:
    """Cross-entropy (nats/token) of the training set's add-one-smoothed token frequencies over the
    validation tokens the model is scored on."""
    train_tokens, val_tokens = TokenShards(data, "train"), TokenShards(data, "val")
    counts = np.zeros(train_tokens.n_words, dtype=np.float64)
    step = 1 << 22
    for start in range(0, len(train_tokens), step):
        counts += np.bincount(train_tokens.read(start, min(step, len(train_tokens) - start)),
                              minlength=len(counts))
    log_p = np.log((counts + 1) / (counts.sum() + len(counts)))
    return float(-log_p[target_tokens(val_tokens, seq_len)].mean())


def run_demo(steps: int | None = None, retrain: bool = False, samples: int = 3) -> dict[str, Any]:
    """Train (or reuse) the demo model and return its figures and sample continuations."""
    root = cache_dir() / "demo"
    root.mkdir(parents=True, exist_ok=True)
    config = DEMO_CONFIG.replace(out=str(root / "run"), steps=steps or DEMO_CONFIG.steps)
    model_dir = root / "run" / "model"
    summary_file = model_dir / "training.json"
    data = _data(root, _tokenizer(root))
    config = config.replace(data=str(data))
    if retrain or not _same_run(root / "run", config, finished=True):
        resume = not retrain and _same_run(root / "run", config, finished=False)
        if not resume:
            shutil.rmtree(root / "run", ignore_errors=True)
        log.info("[3/3] training %s for %d steps (%s tokens)%s; checkpoints in %s", config.model, config.steps,
                 f"{config.steps * config.batch_size * config.seq_len:,}", ", resuming" if resume else "",
                 root / "run")
        train(config, resume=resume)
    summary = json.loads(summary_file.read_text())
    model = herd.load(model_dir)
    val_loss, val_tokens = split_loss(model, TokenShards(data, "val"), config.seq_len)
    baseline = unigram_baseline(data, config.seq_len)
    tokenizer = load_tokenizer(model_dir)
    engine = Engine(model)
    params = SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=64, seed=0, stop_ids=(tokenizer.eos_id,))
    prompts = PROMPTS[:samples]
    completions = engine.generate([[tokenizer.bos_id, *tokenizer.encode(p)] for p in prompts], params)
    return {
        "model_dir": str(model_dir), "val_loss": val_loss, "val_tokens": val_tokens, "unigram_baseline": baseline,
        "steps": summary["steps"], "tokens": summary["tokens"], "train_seconds": summary["seconds"],
        "samples": [(p, tokenizer.decode(c.token_ids)) for p, c in zip(prompts, completions, strict=True)],
        "perplexity": math.exp(val_loss),
    }


def _same_run(run: Path, config: TrainConfig, finished: bool) -> bool:
    """Whether `run` holds a run of exactly this config (and, with `finished`, its final model). A field that
    TrainConfig gained after the run was written counts at its default, as a resume counts it."""
    try:
        saved = json.loads((run / "config.json").read_text())["train"]
    except (OSError, ValueError, KeyError):
        return False
    return {**TrainConfig().to_dict(), **saved} == config.to_dict() and (
        not finished or (run / "model" / "training.json").exists())
