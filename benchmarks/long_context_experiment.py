"""Does iRoPE extend the context? Pretrain a ladder model at 256 tokens, mid-train it at 1K then 4K, and test
retrieval and loss up to 4× the longest trained length, against the same model without mid-training, without
the attention temperature, and an all-RoPE baseline given the same mid-training (docs/LONG_CONTEXT.md).

    .venv/bin/herd demo                                          # once: the demo's tokenizer and stdlib shards
    .venv/bin/python benchmarks/long_context_experiment.py      # every stage, skipping those already done
    .venv/bin/python benchmarks/long_context_experiment.py --report --plots docs/long_context   # its tables, plots

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
import math
import os
import random
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import herd
from herd.config import preset
from herd.eval import needle
from herd.files import cache_dir, write_text_atomic
from herd.tokenizer import load_tokenizer

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


def retrieval_docs(out: Path, tokenizer_path: Path, n_docs: int, seed: int = 1) -> None:
    """`n_docs` passkey and code-needle documents (half each) as JSONL, 128 to 4,096 tokens (log-uniform), keys
    and depths seeded, the code haystack from the stdlib's *training* documents (the evaluation's is held out)."""
    tokenizer = load_tokenizer(tokenizer_path)
    train_code = needle.held_out_text(max_chars=3_000_000, split="train")[:3_000_000]
    tasks = [(needle.PASSKEY, tokenizer.encode(needle.FILLER)),
             (needle.niah_task(train_code, "code"), tokenizer.encode(train_code))]
    rng = random.Random(seed)
    lines = []
    for i in range(n_docs):
        task, hay_ids = tasks[i % 2]
        length = round(math.exp(rng.uniform(math.log(128), math.log(4096))))
        key = str(rng.randrange(10_000, 100_000))
        prompt, answer = needle.build(tokenizer, task, hay_ids, length, rng.random(), key, rng)
        lines.append(json.dumps({"text": tokenizer.decode(prompt[1:] + answer)}))
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "retrieval.jsonl", "\n".join(lines) + "\n")


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


ARMS = {"a": "(a) iRoPE, 256 continued", "b": "(b) iRoPE, 1K then 4K", "c": "(c) = (b), no temperature",
        "d": "(d) all-RoPE, 1K then 4K"}
NAMES = {"pre-irope": "iRoPE, pretrained only", "pre-rope": "all-RoPE, pretrained only", **ARMS,
         **{"r" + k: v.replace(")", "+r)", 1) for k, v in ARMS.items()}}
BASELINE = {n: "pre-rope" if n in ("pre-rope", "d", "rd") else "pre-irope" for n in NAMES}


def report(results: Path) -> None:
    """The experiment's tables, from the `herd eval --json` records under `results`."""
    def load(name: str, kind: str) -> dict | None:
        path = results / f"{name}-{kind}.json"
        return json.loads(path.read_text()) if path.exists() else None

    short = {n: rec for n in NAMES if (rec := load(n, "short"))}
    names = list(short)
    print("Short context: validation loss of the pretraining data at 256 tokens (windows of 256, all scored)\n")
    print("| model | mean NLL | vs its pretrained model |\n|---|---:|---:|")
    for n, rec in short.items():
        nll, base = rec["mean_nll"], short.get(BASELINE[n])
        delta = f"{nll - base['mean_nll']:+.4f}" if base and BASELINE[n] != n else "–"
        print(f"| {NAMES[n]} | {nll:.4f} | {delta} |")
    long = {n: rec for n in names if (rec := load(n, "long"))}
    if long:
        bins = next(iter(long.values()))["position_bins"]
        print("\nLong context: mean NLL of the long-document validation split by position in a 16,384-token window\n")
        print("| model | " + " | ".join(f"{b['from']:,}–{b['to']:,}" for b in bins) + " | all |")
        print("|---|" + "---:|" * (len(bins) + 1))
        for n, rec in long.items():
            cells = " | ".join(f"{b['mean_nll']:.2f}" for b in rec["position_bins"])
            print(f"| {NAMES[n]} | {cells} | {rec['mean_nll']:.3f} |")
    for kind, title in (("passkey", "Passkey"), ("niah-code", "Needle in held-out stdlib code")):
        grids = {n: rec for n in names if (rec := load(n, kind))}
        if not grids:
            continue
        lengths = next(iter(grids.values()))["lengths"]
        for metric, what in (("accuracy", "accuracy (every key token greedy)"),
                             ("key_logprob", "log-probability of the whole key, mean over trials and depths")):
            print(f"\n{title}: {what} by prompt length, over all depths\n")
            print("| model | " + " | ".join(f"{n:,}" for n in lengths) + " |")
            print("|---|" + "---:|" * len(lengths))
            for n, rec in grids.items():
                if metric == "accuracy":
                    cells = [rec["by_length"][str(length)] for length in lengths]
                else:
                    cells = [sum(c["key_logprob"] for c in rec["grid"] if c["length"] == length)
                             / sum(1 for c in rec["grid"] if c["length"] == length) for length in lengths]
                print(f"| {NAMES[n]} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")


def plots(results: Path, out: Path) -> None:
    """Two figures for docs/LONG_CONTEXT.md: the long validation loss by position, and the key's
    log-probability by prompt length in both retrieval tasks, one line per model."""
    from herd.train.metap import pyplot

    plt = pyplot()
    out.mkdir(parents=True, exist_ok=True)
    records = {(n, kind): json.loads(path.read_text()) for n in NAMES for kind in ("long", "passkey", "niah-code")
               if (path := results / f"{n}-{kind}.json").exists()}
    style = {n: "--" if BASELINE[n] == "pre-rope" else "-" for n in NAMES}  # all-RoPE dashed
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5))
    base = records.get(("pre-irope", "long"))
    for n in NAMES:
        if (rec := records.get((n, "long"))):
            bins = rec["position_bins"]
            centres = [(b["from"] + b["to"]) / 2 for b in bins]
            axes[0].plot(centres, [b["mean_nll"] for b in bins], style[n], marker=".", label=NAMES[n])
            if base:  # the same text at every position for every model: the difference removes its noise
                axes[1].plot(centres, [b["mean_nll"] - a["mean_nll"] for b, a in zip(bins, base["position_bins"],
                                                                                       strict=True)],
                             style[n], marker=".", label=NAMES[n])
    for ax in axes:
        ax.axvline(4096, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("position in the window (bins of 1,024; dotted: the mid-training length)")
    axes[0].set_ylabel("mean NLL (nats)")
    axes[0].set_title("Long-document validation loss by position")
    axes[1].set_ylabel("NLL minus iRoPE-pretrained's NLL (nats)")
    axes[1].set_title("The same, against the iRoPE model before mid-training")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    fig.savefig(out / "nll_by_position.png", dpi=110)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, (kind, title) in zip(axes, (("passkey", "passkey in filler"), ("niah-code", "key in held-out code")),
                                 strict=True):
        for n in NAMES:
            if (rec := records.get((n, kind))):
                lengths = rec["lengths"]
                means = [sum(c["key_logprob"] for c in rec["grid"] if c["length"] == length)
                         / sum(1 for c in rec["grid"] if c["length"] == length) for length in lengths]
                ax.plot(lengths, means, style[n], marker=".", label=NAMES[n])
        ax.axhline(-5 * math.log(10), color="grey", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("prompt length (tokens)")
        ax.set_title(title)
    axes[0].set_ylabel("log p(5-digit key), mean over depths and trials")
    axes[0].text(256, -5 * math.log(10) + 0.3, "uniform over 5 digits", fontsize=8, color="grey")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "key_logprob_by_length.png", dpi=110)
    plt.close(fig)
    print(f"plots in {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=cache_dir() / "long-context")
    parser.add_argument("--trials", default="3")
    parser.add_argument("--retrieval-docs", type=int, default=1500,
                        help="synthetic retrieval documents in the second mix's arms (0: only the plain mix)")
    parser.add_argument("--report", action="store_true", help="print the results' tables (markdown) and stop")
    parser.add_argument("--plots", type=Path, help="with --report: write its two figures (PNG) here too")
    args = parser.parse_args()
    root = args.root
    if args.report:
        report(root / "results")
        if args.plots:
            plots(root / "results", args.plots)
        return
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
    mixes = {"": root / "long-data"}
    if args.retrieval_docs:
        mixes["r"] = root / "long-data-r"
        if not (mixes["r"] / "manifest.json").exists():
            retrieval_docs(root / "retrieval", tokenizer, args.retrieval_docs)
            sh(*HERD, "data", "prepare", root / "joined", root / "retrieval", "--out", mixes["r"], "--tokenizer",
               tokenizer, "--val-fraction", "0.05", "--no-progress", "--overwrite")
    for mix, data in mixes.items():
        for arm, stages in STAGES.items():
            start = pre["rope" if arm == "d" else "irope"]
            for k, (seq, batch, steps) in enumerate(stages):
                start = train(root / f"arm-{mix}{arm}-{k}-{seq}", "--init-from", start, "--data", data,
                              "--seq-len", str(seq), "--batch-size", str(batch), "--steps", str(steps), *MID)
            models[mix + arm] = start
        models[mix + "c"] = without_temperature(models[mix + "b"], root / f"arm-{mix}c-model")

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
