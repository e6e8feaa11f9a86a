"""Does iRoPE extend the context? Pretrain a ladder model at 256 tokens, mid-train it at 1K then 4K, and test
retrieval and loss up to 4× the longest trained length, against the same model without mid-training, without
the attention temperature, and an all-RoPE baseline given the same mid-training (docs/LONG_CONTEXT.md).

    .venv/bin/herd demo                                          # once: the demo's tokenizer and stdlib shards
    .venv/bin/python benchmarks/long_context_experiment.py      # every stage, skipping those already done

Every stage is a `herd` command (printed before it runs) writing under --root; a finished stage is skipped, so
a killed run continues where it stopped. Arms (the same mid-training token budget each):
- (a) iRoPE, no long mid-training: continued at 256 tokens on the long-document mix.
- (b) iRoPE mid-trained at 1K, then 4K (document masking, the long-document mix).
- (c) = (b) with the attention temperature turned off at inference (its config edited, same weights).
- (d) all-RoPE (no NoPE layers, no chunking) pretrained and mid-trained as (b).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import herd
from herd.config import preset
from herd.files import cache_dir

DEMO = cache_dir() / "demo"
HERD = [sys.executable, "-m", "herd"]
PRETRAIN = ["--seq-len", "256", "--batch-size", "16", "--steps", "300", "--lr", "3e-3", "--warmup-steps", "30",
            "--eval-every", "100", "--ckpt-every", "50", "--document-masking"]
MID = ["--lr", "1e-3", "--warmup-steps", "10", "--eval-every", "50", "--ckpt-every", "25", "--document-masking",
       "--eval-batches", "2"]
STAGES = {  # name: [(seq_len, batch, steps)], the same 819,200 tokens each
    "a": [(256, 16, 200)],
    "b": [(1024, 4, 100), (4096, 1, 100)],
    "d": [(1024, 4, 100), (4096, 1, 100)],
}
LENGTHS = ["256", "512", "1024", "2048", "4096", "8192", "16384"]


def sh(*cmd: str | Path, out: Path | None = None) -> None:
    line = " ".join(shlex.quote(str(c)) for c in cmd).replace(sys.executable + " -m herd", "herd")
    print(f"$ {line}", flush=True)
    if out is None:
        subprocess.run([str(c) for c in cmd], check=True)
    else:
        with open(out, "w") as f:
            subprocess.run([str(c) for c in cmd], check=True, stdout=f)


def configs(root: Path) -> dict[str, Path]:
    """The two architectures as config-only checkpoints (`herd train --model DIR` reads the config)."""
    base = preset("herd-10m").text.replace(attention_chunk_size=64, floor_scale=64.0)
    shapes = {"irope": base, "rope": base.replace(nope_layer_interval=None, attention_chunk_size=None)}
    out = {}
    for name, text in shapes.items():
        path = root / f"config-{name}"
        if not (path / "config.json").exists():
            herd.save(herd.build(text, seed=0), path)
        out[name] = path
    return out


def train(out: Path, *flags: str | Path) -> Path:
    if not (out / "model" / "training.json").exists():
        sh(*HERD, "train", *flags, "--out", out, "--no-progress", *(["--resume"] if out.exists() else []))
    return out / "model"


def without_temperature(model: Path, out: Path) -> Path:
    """`model` with attention temperature tuning off: its config edited, its weights linked."""
    if not out.exists():
        out.mkdir(parents=True)
        for f in model.iterdir():
            if f.name != "config.json":
                os.symlink(f.resolve(), out / f.name)
        config = json.loads((model / "config.json").read_text())
        (config.get("text_config", config))["attn_temperature_tuning"] = False
        (out / "config.json").write_text(json.dumps(config, indent=1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=cache_dir() / "long-context")
    parser.add_argument("--trials", default="3")
    args = parser.parse_args()
    root = args.root
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = DEMO / "tokenizer.json"
    if not (DEMO / "data" / "manifest.json").exists():
        sys.exit("run `herd demo` first: it makes the tokenizer and the stdlib shards")
    if not (root / "long-data" / "manifest.json").exists():
        shutil.rmtree(root / "joined", ignore_errors=True)
        sh(*HERD, "data", "join", "stdlib", "--out", root / "joined", "--hold-out", "0.02", "--no-progress")
        sh(*HERD, "data", "prepare", root / "joined", "--out", root / "long-data", "--tokenizer", tokenizer,
           "--val-fraction", "0.05", "--no-progress", "--overwrite")
    shapes = configs(root)
    pre = {name: train(root / f"pre-{name}", "--model", path, "--data", DEMO / "data", *PRETRAIN)
           for name, path in shapes.items()}
    models = {"pre-irope": pre["irope"], "pre-rope": pre["rope"]}
    for arm, stages in STAGES.items():
        start = pre["rope" if arm == "d" else "irope"]
        for k, (seq, batch, steps) in enumerate(stages):
            start = train(root / f"arm-{arm}-{k}-{seq}", "--init-from", start, "--data", root / "long-data",
                          "--seq-len", str(seq), "--batch-size", str(batch), "--steps", str(steps), *MID)
        models[arm] = start
    models["c"] = without_temperature(models["b"], root / "arm-c-model")

    results = root / "results"
    results.mkdir(exist_ok=True)
    for name, model in models.items():
        common = ["--model", model, "--json"]
        runs = {
            "short": ["perplexity", "--data", DEMO / "data", "--window", "256", "--stride", "256"],
            "long": ["perplexity", "--data", root / "long-data", "--window", "16384", "--stride", "16384",
                     "--bins", "16", "--batch-tokens", "16384"],
            "passkey": ["passkey", "--lengths", *LENGTHS, "--trials", args.trials, "--batch-tokens", "16384",
                        "--plot", results / f"{name}-passkey.png"],
            "niah-code": ["niah", "--style", "code", "--lengths", *LENGTHS, "--trials", args.trials,
                          "--batch-tokens", "16384", "--plot", results / f"{name}-niah-code.png"],
        }
        for kind, flags in runs.items():
            target = results / f"{name}-{kind}.json"
            if not target.exists():
                sh(*HERD, "eval", *flags, *common, out=target.with_suffix(".tmp"))
                target.with_suffix(".tmp").rename(target)
    print(f"results in {results}")


if __name__ == "__main__":
    main()
