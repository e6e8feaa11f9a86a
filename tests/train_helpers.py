"""Shared set-up for the training tests: a small deterministic corpus prepared with the Llama 4
tokenizer, and `herd train` runs in this process or in a subprocess (for SIGKILL tests)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

from herd.data.prepare import prepare
from herd.tokenizer_train import train_tokenizer
from herd.train import TrainConfig, read_log, train

WORDS = [
    "def", "class", "return", "import", "self", "value", "items", "index", "total", "result", "append", "range",
    "len", "print", "for", "in", "if", "else", "while", "None", "True", "False", "yield", "with", "as", "open",
    "path", "name", "data", "key",
]


def synthetic_corpus(directory: Path, n_files: int = 12, seed: int = 0) -> Path:
    """Python-looking files from a seeded generator: the same bytes on every machine."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        lines = []
        for _ in range(120):
            indent = "    " * rng.randint(0, 2)
            lines.append(indent + " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8))))
        (directory / f"module_{i:02d}.py").write_text("\n".join(lines) + "\n")
    return directory


def prepared_data(root: Path, vocab_size: int | None = None) -> Path:
    """The synthetic corpus tokenized with Llama 4's tokenizer, or with a compact one trained on it."""
    corpus = synthetic_corpus(root / "corpus")
    tokenizer = None
    if vocab_size:
        tokenizer = str(root / "tokenizer.json")
        texts = (f.read_text() for f in sorted(corpus.iterdir()))
        train_tokenizer(texts, vocab_size, tokenizer, progress=False)
    out = root / f"data-{vocab_size or 'llama4'}"
    if not (out / "manifest.json").exists():
        prepare([str(corpus)], out, tokenizer, val_fraction=0.2, workers=1, progress=False)
    return out


def debug_config(data: Path, out: Path, **changes: object) -> TrainConfig:
    """The debug preset on short sequences (with `vocab_size=` the data's compact vocabulary)."""
    base = dict(model="debug", data=str(data), out=str(out), seq_len=32, batch_size=4, steps=10, lr=3e-3,
                warmup_steps=2, eval_every=5, eval_batches=1, ckpt_every=5, log_every=5, seed=0)
    return TrainConfig(**(base | changes))


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in read_log(out / "log.jsonl")]


def run_in_process(config: TrainConfig, resume: bool = False) -> dict:
    return train(config, resume=resume, progress=False)


def accepted_fields(command: str) -> set[str]:
    """The TrainConfig fields `herd COMMAND` takes as flags."""
    import argparse
    import importlib

    parser = argparse.ArgumentParser()
    importlib.import_module(f"herd.cli.{command}").register(parser)
    return {action.dest for action in parser._actions}


def cli_args(config: TrainConfig, command: str = "train") -> list[str]:
    args = []
    accepted = accepted_fields(command)
    for key, value in config.to_dict().items():
        if key not in accepted:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        else:
            args += [flag, str(value)]
    return args


def run_cli(config: TrainConfig, *extra: str, fault: str | None = None, nproc: int = 1, command: str = "train",
            restarts: int = 0) -> subprocess.CompletedProcess:
    """`herd train` (or `command`) in a fresh process (or under torchrun, restarting failed processes up to `restarts`
    times), optionally killed by HERD_FAULT."""
    env = {k: v for k, v in os.environ.items() if k != "HERD_FAULT"} | {"OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), *filter(None, [env.get("PYTHONPATH")])])
    if fault:
        env["HERD_FAULT"] = fault
    if nproc == 1:
        cmd = [sys.executable, "-m", "herd", command, "--no-progress", *cli_args(config, command), *extra]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--standalone",
               "--max-restarts", str(restarts), "-m", "herd", command, "--no-progress", *cli_args(config, command),
               *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def chat_model(root: Path, seed: int, vocab_size: int = 320) -> Path:
    """A random debug model beside the compact test tokenizer of `prepared_data(root, vocab_size)` (its chat
    specials included), saved in root/model-SEED: a starting point for the post-training tests."""
    import shutil

    import herd
    from herd.config import preset
    from herd.tokenizer import load_tokenizer

    prepared_data(root, vocab_size)
    tokenizer = load_tokenizer(root / "tokenizer.json")
    text = preset("debug").text.replace(vocab_size=vocab_size, bos_id=tokenizer.bos_id, eos_ids=tokenizer.stop_ids,
                                        pad_id=tokenizer.pad_id)
    path = root / f"model-{seed}"
    herd.save(herd.build(text, seed=seed), path)
    shutil.copyfile(root / "tokenizer.json", path / "tokenizer.json")
    return path


def write_jsonl(path: Path, records: list) -> Path:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
