"""The post-training demo: `herd sft`, `herd data filter`, `herd data pairs`, `herd dpo` and `herd distill` on this
machine, from `herd demo`'s pretrained model; the figures of docs/POSTTRAINING.md.

    python benchmarks/posttrain_demo.py              # every stage, cached under $HERD_CACHE/posttrain
    python benchmarks/posttrain_demo.py --report     # the tables, from what has run

Every stage is a herd command, printed before it runs; a stage whose output exists is skipped, so an interrupted
run continues where it stopped.

- The task: addition in chat form, `What is 3 4 7 + 5 8 9?` → `9 3 6`, digits spaced because the demo's BPE
  (trained on Python sources) splits numbers irregularly. Four tiers: 1 a 2–4 digit number plus one digit without
  a carry, 2 the same with carries, 3 a 3–4 digit number plus a 2-digit one, 4 two 4-digit numbers with at
  least two carries. Train (1,000 per tier), judge (500 per tier),
  pair-mining (250 per tier) and held-out (100 per tier) problems are disjoint.
- SFT: all of the training set for S steps, against its easy-dropped half (`herd data filter`, judged by an SFT
  of the base model on the judge set, as long as SFT-all's, so it has never seen the problems it judges: pass
  rate of 4 samples plus answer NLL) for S/2 steps, and the matched control, all of it for S/2 steps. Seeds
  change the data order.
- DPO: pairs mined from the SFT model's own answers on the pair set, against the matched control: the same steps
  of continued SFT on the same questions with their references.
- Distillation: a herd-50m teacher pretrained on the demo's stdlib shards, a herd-10m student from scratch,
  forward KL with α 0.5 (fixed, and the confidence rule) against cross-entropy only, at equal tokens.
- Held-out: greedy accuracy and pass@1 / pass@8 (`herd eval answers`), per tier; the students' held-out stdlib
  loss (`herd eval perplexity`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from herd.files import cache_dir, write_text_atomic

HERD = [sys.executable, "-m", "herd"]
SEEDS = (0, 1)
SFT_STEPS = 200
DPO_STEPS = 60
DISTILL_STEPS = 100
TIERS = {1: "+ 1 digit, no carry", 2: "+ 1 digit, carries", 3: "+ 2 digits", 4: "4 + 4 digits, 2+ carries"}
SPLITS = {"train": 1000, "judge": 500, "pairs": 250, "heldout": 100}  # problems per tier
SFT_FLAGS = ["--seq-len", "256", "--batch-size", "16", "--lr", "3e-3", "--warmup-steps", "10", "--eval-every", "1000",
             "--ckpt-every", "1000", "--no-progress"]
TEACHER_FLAGS = ["--model", "herd-50m", "--seq-len", "256", "--batch-size", "16", "--steps", "400", "--lr", "3e-3",
                 "--warmup-steps", "40", "--weight-decay", "0.1", "--eval-every", "100", "--eval-batches", "4",
                 "--ckpt-every", "50", "--log-every", "25", "--no-progress"]
STUDENT_FLAGS = ["--model", "herd-10m", "--seq-len", "256", "--batch-size", "16", "--lr", "3e-3", "--warmup-steps",
                 "20", "--weight-decay", "0.1", "--eval-every", "1000", "--ckpt-every", "50", "--no-progress"]


def spaced(n: int) -> str:
    return " ".join(str(n))


def carries(a: int, b: int) -> int:
    count = carry = 0
    while a or b:
        carry = int(a % 10 + b % 10 + carry >= 10)
        count += carry
        a, b = a // 10, b // 10
    return count


def _tier_problem(tier: int, rng: random.Random) -> tuple[int, int]:
    """Tier 1: a 2–4 digit number plus one digit, no carry; 2: the same with a carry; 3: a 3–4 digit number plus
    a 2-digit one; 4: two 4-digit numbers with at least two carries."""
    while True:
        if tier in (1, 2):
            a, b = rng.randrange(10, 10_000), rng.randrange(1, 10)
        elif tier == 3:
            a, b = rng.randrange(100, 10_000), rng.randrange(10, 100)
        else:
            a, b = rng.randrange(1000, 10_000), rng.randrange(1000, 10_000)
        c = carries(a, b)
        if (tier == 1 and c == 0) or (tier == 2 and c > 0) or tier == 3 or (tier == 4 and c >= 2):
            return a, b


def write_tasks(root: Path, seed: int = 0) -> dict[str, Path]:
    """The four disjoint splits as chat JSONL, each record with its tier, operands and carries."""
    rng = random.Random(seed)
    seen: set[tuple[int, int]] = set()
    lines: dict[str, list[str]] = {name: [] for name in SPLITS}
    for tier in TIERS:
        for name, n in SPLITS.items():
            for _ in range(n):
                a, b = _tier_problem(tier, rng)
                while (a, b) in seen:
                    a, b = _tier_problem(tier, rng)
                seen.add((a, b))
                record = {"messages": [{"role": "user", "content": f"What is {spaced(a)} + {spaced(b)}?"},
                                       {"role": "assistant", "content": spaced(a + b)}],
                          "tier": tier, "a": a, "b": b, "carries": carries(a, b)}
                lines[name].append(json.dumps(record) + "\n")
    paths = {}
    for name, split in lines.items():
        rng.shuffle(split)
        paths[name] = root / "tasks" / f"{name}.jsonl"
        if not paths[name].exists():
            paths[name].parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(paths[name], "".join(split))
    return paths


def herd(*args: str | Path, output: Path | None = None) -> None:
    """Run a herd command (printed first); with `output`, its stdout goes to that file, atomically."""
    command = [*HERD, *map(str, args)]
    print("$ herd " + shlex.join(command[len(HERD):]), file=sys.stderr, flush=True)
    result = subprocess.run(command, check=True, stdout=subprocess.PIPE if output else None, text=True)
    if output:
        write_text_atomic(output, result.stdout)


def done(path: Path) -> bool:
    return path.exists()


def base_model() -> Path:
    model = cache_dir() / "demo" / "run" / "model"
    if not (model / "training.json").exists():
        herd("demo")
    return model


def answers(model: Path, heldout: Path, out: Path | None = None, seed: int = 0) -> None:
    """Held-out greedy accuracy and pass@k of `model`, written to `out` (default: beside the model's run)."""
    out = out or model.parent / "answers.json"
    if not done(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        herd("eval", "answers", "--model", model, "--data", heldout, "--verifier", "exact", "--samples", "8", "--k",
             "1", "8", "--group-by", "tier", "--max-new-tokens", "16", "--seed", str(seed), "--json", output=out)


def sft(root: Path, name: str, init: Path, data: Path, steps: int, seed: int) -> Path:
    run = root / name
    if not done(run / "model" / "training.json"):
        herd("sft", "--init-from", init, "--data", data, "--out", run, "--steps", str(steps), "--seed", str(seed),
             *SFT_FLAGS)
    return run / "model"


def sft_stage(root: Path, tasks: dict[str, Path], base: Path) -> None:
    """Each model is scored on the held-out set as soon as it is trained."""
    answers(base, tasks["heldout"], root / "base-eval" / "answers.json")
    answers(sft(root, "sft-all-0", base, tasks["train"], SFT_STEPS, 0), tasks["heldout"])
    judge = sft(root, "judge", base, tasks["judge"], SFT_STEPS, 0)  # as skilled as SFT-all, but on other problems
    answers(judge, tasks["heldout"])
    filtered = root / "filtered"
    if not done(filtered / "train.jsonl"):
        herd("data", "filter", tasks["train"], "--judge", judge, "--out", filtered, "--signals", "pass_rate", "nll",
             "--samples", "4", "--verifier", "exact", "--max-new-tokens", "16", "--drop-easy-fraction", "0.5")
    for seed in SEEDS:
        arms = {f"sft-all-{seed}": (tasks["train"], SFT_STEPS),
                f"sft-all-half-{seed}": (tasks["train"], SFT_STEPS // 2),
                f"sft-hard-half-{seed}": (filtered / "train.jsonl", SFT_STEPS // 2)}
        for name, (data, steps) in arms.items():
            answers(sft(root, name, base, data, steps, seed), tasks["heldout"])


def dpo_stage(root: Path, tasks: dict[str, Path], policy: Path) -> dict[str, Path]:
    pairs = root / "pairs.jsonl"
    if not done(pairs):
        herd("data", "pairs", tasks["pairs"], "--model", policy, "--out", pairs, "--samples", "4",
             "--verifier", "exact", "--max-new-tokens", "16")
    models = {}
    for seed in SEEDS:
        for name, extra in ((f"dpo-{seed}", []), (f"dpo-rpo-{seed}", ["--nll-weight", "1.0"])):
            run = root / name
            if not done(run / "model" / "training.json"):
                herd("dpo", "--init-from", policy, "--data", pairs, "--out", run, "--steps", str(DPO_STEPS), "--seed",
                     str(seed), "--seq-len", "64", "--batch-size", "32", "--lr", "1e-4", "--beta", "0.1",
                     "--warmup-steps", "5", "--eval-every", "1000", "--ckpt-every", "1000", "--no-progress", *extra)
            models[name] = run / "model"
        # The matched control: as many steps of SFT on the same questions, their references as answers.
        models[f"dpo-control-{seed}"] = sft(root, f"dpo-control-{seed}", policy, tasks["pairs"], DPO_STEPS, seed)
    return models


def distill_stage(root: Path) -> dict[str, Path]:
    data = cache_dir() / "demo" / "data"
    teacher = root / "teacher-50m"
    if not done(teacher / "model" / "training.json"):
        herd("train", "--data", data, "--out", teacher, *TEACHER_FLAGS, *(["--resume"] if teacher.exists() else []))
    kd = ["distill", "--teacher", teacher / "model"]
    arms = {"ce": ["train"], "kd-fixed": [*kd, "--alpha", "0.5"],
            "kd-confidence": [*kd, "--alpha", "1.0", "--alpha-rule", "confidence"]}
    models = {"teacher": teacher / "model"}
    for name, command in arms.items():
        run = root / f"student-{name}"
        if not done(run / "model" / "training.json"):
            herd(*command, "--data", data, "--out", run, "--steps", str(DISTILL_STEPS), *STUDENT_FLAGS,
                 *(["--resume"] if run.exists() else []))
        models[f"student-{name}"] = run / "model"
    for model in models.values():
        out = model.parent / "perplexity.json"
        if not done(out):
            herd("eval", "perplexity", "--model", model, "--data", data, "--split", "val", "--window", "256",
                 "--stride", "256", "--json", output=out)
    return models


def report(root: Path) -> str:
    """The tables of docs/POSTTRAINING.md from the stages' outputs."""
    def figures(name: str) -> dict[str, Any] | None:
        path = root / name / "answers.json"
        return json.loads(path.read_text()) if path.exists() else None

    def row(label: str, names: list[str]) -> str | None:
        found = [f for f in map(figures, names) if f]
        if not found:
            return None
        def mean(get: Any) -> str:
            values = [get(f) for f in found]
            avg = sum(values) / len(values)
            spread = f" ± {(max(values) - min(values)) / 2:.3f}" if len(values) > 1 else ""
            return f"{avg:.3f}{spread}"
        tiers = [mean(lambda f, t=t: f["groups"][str(t)]["pass_at"]["pass@8"]) for t in TIERS]
        overall = [mean(lambda f: f["overall"]["greedy"]), mean(lambda f: f["overall"]["pass_at"]["pass@1"]),
                   mean(lambda f: f["overall"]["pass_at"]["pass@8"])]
        return f"| {label} | {len(found)} | " + " | ".join([*overall, *tiers]) + " |"

    head = ("| model | seeds | greedy | pass@1 | pass@8 | " + " | ".join(f"tier {t} pass@8" for t in TIERS) + " |\n"
            "|---|---:|---:|---:|---:|" + "---:|" * len(TIERS))
    sft_rows = [row("base (herd demo)", ["base-eval"]), row("judge (SFT on the judge set, S steps)", ["judge"]),
                row(f"SFT all, S = {SFT_STEPS} steps", [f"sft-all-{s}" for s in SEEDS]),
                row(f"SFT all, S/2 = {SFT_STEPS // 2} (matched control)", [f"sft-all-half-{s}" for s in SEEDS]),
                row(f"SFT filtered hard half, S/2 = {SFT_STEPS // 2}", [f"sft-hard-half-{s}" for s in SEEDS])]
    dpo_rows = [row("SFT all (the DPO start)", ["sft-all-0"]),
                row(f"+ DPO, {DPO_STEPS} steps", [f"dpo-{s}" for s in SEEDS]),
                row(f"+ DPO with the chosen side's NLL (RPO, weight 1), {DPO_STEPS} steps",
                    [f"dpo-rpo-{s}" for s in SEEDS]),
                row(f"+ SFT, {DPO_STEPS} steps (matched control)", [f"dpo-control-{s}" for s in SEEDS])]
    parts = ["## SFT", head, *[r for r in sft_rows if r], "", "## DPO", head, *[r for r in dpo_rows if r]]
    parts += ["", "## Distillation", "| model | held-out stdlib NLL | perplexity |", "|---|---:|---:|"]
    for name in ("teacher-50m", "student-ce", "student-kd-fixed", "student-kd-confidence"):
        path = root / name / "perplexity.json"
        if path.exists():
            f = json.loads(path.read_text())
            parts.append(f"| {name} | {f['mean_nll']:.4f} | {f['ppl']:.2f} |")
    filtered = root / "filtered" / "scores.jsonl"
    if filtered.exists():
        records = [json.loads(line) for line in filtered.read_text().splitlines()]
        tiers = [json.loads(line)["tier"] for line in (root / "tasks" / "train.jsonl").read_text().splitlines()]
        kept = {t: sum(r["kept"] for r, tier in zip(records, tiers, strict=True) if tier == t) for t in TIERS}
        parts += ["", "## What the filter kept", "| tier | kept of 1,000 |", "|---|---:|"]
        parts += [f"| {t} ({TIERS[t]}) | {kept[t]} |" for t in TIERS]
    return "\n".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", action="store_true", help="print the tables from what has run, and stop")
    parser.add_argument("--stages", nargs="+", default=["sft", "dpo", "distill"], choices=["sft", "dpo", "distill"])
    args = parser.parse_args()
    root = Path(os.environ.get("HERD_POSTTRAIN_DIR", cache_dir() / "posttrain"))
    root.mkdir(parents=True, exist_ok=True)
    if not args.report:
        tasks = write_tasks(root)
        base = base_model()
        if "sft" in args.stages:
            sft_stage(root, tasks, base)
        if "dpo" in args.stages:
            for model in dpo_stage(root, tasks, root / "sft-all-0" / "model").values():
                answers(model, tasks["heldout"])
        if "distill" in args.stages:
            distill_stage(root)
    print(report(root))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
