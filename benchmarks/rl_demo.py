"""The online RL demo: `herd rl` on this machine, from the post-training demo's SFT model; the figures of the RL
section of docs/POSTTRAINING.md.

    python benchmarks/rl_demo.py              # every stage, cached under $HERD_CACHE/posttrain/rl
    python benchmarks/rl_demo.py --report     # the tables, from what has run

Every stage is a herd command, printed before it runs; a stage whose output exists is skipped.

- arith: RL on the hard tiers of the addition task (tiers 2 and 3 of `posttrain_demo.py`: carries, and 2-digit
  addends, where SFT-all answers 6% and 0.6% right), from SFT-all (seed 0), exact-match reward, 8 answers per prompt.
  Arms: with the difficulty filter (pass-rate band 0 < p < 0.9, dynamic sampling, a profile of 64 prompts every 25
  steps), without it (plain GRPO: every group trained, none replaced), and the matched control, continued SFT on the
  same problems with their reference answers for the same wall time as the filtered arm. Two seeds each; held-out
  greedy, pass@1 and pass@8 per tier (`herd eval answers`, as in the post-training demo).
- async: the same filtered RL for 30 steps, synchronous on one process against 1 learner + 1 and + 2 rollout workers
  under torchrun (staleness 1 and 2): samples per second and the learner's time not training.
- python: RL with the "valid Python" reward (`python:40`) on `herd demo`'s pretrained model, asked in chat for
  functions; the held-out prompts' pass rate, and the held-out stdlib loss before and after (how far the policy
  moved from the pretrained model).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import posttrain_demo as post

from herd.files import cache_dir, write_text_atomic

SEEDS = (0, 1)
STEPS = 150
ASYNC_STEPS = 30
PYTHON_STEPS = 60
RL_FLAGS = ["--group-size", "8", "--batch-size", "64", "--max-new-tokens", "12", "--seq-len", "64", "--lr", "2e-4",
            "--clip-high", "0.28", "--ckpt-every", "50", "--no-progress"]
FILTER = ["--pass-band", "0,0.9", "--profile-every", "25", "--profile-prompts", "64"]
CONTROL_FLAGS = [*post.SFT_FLAGS, "--lr", "3e-4", "--schedule", "constant", "--warmup-steps", "0"]
PYTHON_FLAGS = ["--group-size", "8", "--batch-size", "32", "--max-new-tokens", "96", "--seq-len", "160", "--lr",
                "2e-4", "--clip-high", "0.28", "--reward", "python:40", "--ckpt-every", "20", "--no-progress"]
VERBS = ["parse", "load", "save", "format", "count", "merge", "split", "check", "build", "read", "write", "sort"]
NOUNS = ["config", "header", "lines", "tokens", "records", "paths", "names", "items", "values", "options", "entries",
         "rows"]


def seconds(run: Path) -> float:
    return json.loads((run / "model" / "training.json").read_text())["seconds"]


def hard_tiers(root: Path, train: Path) -> Path:
    out = root / "tasks" / "tiers23.jsonl"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        lines = [line for line in train.read_text().splitlines() if json.loads(line)["tier"] in (2, 3)]
        write_text_atomic(out, "".join(line + "\n" for line in lines))
    return out


def rl(run: Path, init: Path, data: Path, steps: int, seed: int, *flags: str) -> Path:
    if not post.done(run / "model" / "training.json"):
        post.herd("rl", "--init-from", init, "--data", data, "--out", run, "--steps", str(steps), "--seed", str(seed),
                  *flags, *(["--resume"] if (run / "checkpoints").exists() else []))
    return run / "model"


def arith_stage(root: Path) -> None:
    posttrain = root.parent
    tasks = post.write_tasks(posttrain)
    start = post.sft(posttrain, "sft-all-0", post.base_model(), tasks["train"], post.SFT_STEPS, 0)
    post.answers(start, tasks["heldout"])
    data = hard_tiers(root, tasks["train"])
    sft_step_s = seconds(posttrain / "sft-all-0") / post.SFT_STEPS
    for seed in SEEDS:
        filtered = rl(root / f"rl-filtered-{seed}", start, data, STEPS, seed, *RL_FLAGS, *FILTER)
        post.answers(filtered, tasks["heldout"])
        plain = rl(root / f"rl-plain-{seed}", start, data, STEPS, seed, *RL_FLAGS, "--no-dynamic-sampling")
        post.answers(plain, tasks["heldout"])
        control = root / f"sft-control-{seed}"
        if not post.done(control / "model" / "training.json"):
            steps = max(1, round(seconds(root / f"rl-filtered-{seed}") / sft_step_s))
            post.herd("sft", "--init-from", start, "--data", data, "--out", control, "--steps", str(steps), "--seed",
                      str(seed), *CONTROL_FLAGS)
        post.answers(control / "model", tasks["heldout"])


def async_stage(root: Path) -> None:
    posttrain = root.parent
    start = posttrain / "sft-all-0" / "model"
    data = hard_tiers(root, posttrain / "tasks" / "train.jsonl")
    flags = [*RL_FLAGS, *FILTER, "--steps", str(ASYNC_STEPS), "--seed", "0", "--init-from", str(start), "--data",
             str(data)]
    arms = {"sync": (1, []), "async-1": (2, ["--rollout-workers", "1", "--max-staleness", "1"]),
            "async-2": (3, ["--rollout-workers", "2", "--max-staleness", "2"])}
    for name, (nproc, extra) in arms.items():
        run = root / f"speed-{name}"
        if post.done(run / "model" / "training.json"):
            continue
        if nproc == 1:
            post.herd("rl", *flags, *extra, "--out", run)
            continue
        os.environ["OMP_NUM_THREADS"] = "1"  # one thread per process: the machine has two cores
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
                   "-m", "herd", "rl", *flags, *extra, "--out", str(run)]
        print("$ OMP_NUM_THREADS=1 torchrun --standalone --nproc-per-node", nproc, "-m herd rl ...", file=sys.stderr)
        import subprocess

        subprocess.run(command, check=True)
        del os.environ["OMP_NUM_THREADS"]


def python_prompts(root: Path) -> tuple[Path, Path]:
    """Requests for small functions in chat form; 300 to train on and 100 held out (an empty reference answer: the
    reward reads only the output)."""
    rng = random.Random(0)
    records = []
    while len(records) < 400:
        verb, noun, arg = rng.choice(VERBS), rng.choice(NOUNS), rng.choice(NOUNS)
        text = f"Write a Python function {verb}_{noun} that takes {arg} and returns the {noun}."
        records.append({"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": ""}]})
    paths = root / "tasks" / "python-train.jsonl", root / "tasks" / "python-heldout.jsonl"
    for path, part in zip(paths, (records[:300], records[300:]), strict=True):
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in part))
    return paths


def python_stage(root: Path) -> None:
    base = post.base_model()
    train, heldout = python_prompts(root)
    model = rl(root / "rl-python", base, train, PYTHON_STEPS, 0, *PYTHON_FLAGS)
    stdlib = cache_dir() / "demo" / "data"
    for name, path in (("base", base), ("rl-python", model)):
        out = root / f"python-{name}.json"
        if not post.done(out):
            post.herd("eval", "answers", "--model", path, "--data", heldout, "--verifier", "python:40", "--samples",
                      "8", "--k", "1", "8", "--max-new-tokens", "96", "--temperature", "1.0", "--json", output=out)
        out = root / f"stdlib-{name}.json"
        if not post.done(out):
            post.herd("eval", "perplexity", "--model", path, "--data", stdlib, "--split", "val", "--window", "256",
                      "--stride", "256", "--json", output=out)


def _log(run: Path) -> list[dict[str, Any]]:
    path = run / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def report(root: Path) -> str:
    def figures(run: Path) -> dict[str, Any] | None:
        path = run / "answers.json"
        return json.loads(path.read_text()) if path.exists() else None

    def mean(values: list[float], digits: int = 3) -> str:
        avg = sum(values) / len(values)
        return f"{avg:.{digits}f}" + (f" ± {(max(values) - min(values)) / 2:.{digits}f}" if len(values) > 1 else "")

    def row(label: str, runs: list[Path]) -> str | None:
        found = [f for f in map(figures, runs) if f]
        if not found:
            return None
        cells = [mean([f["overall"]["greedy"] for f in found])]
        cells += [mean([f["overall"]["pass_at"][k] for f in found]) for k in ("pass@1", "pass@8")]
        cells += [mean([f["groups"][str(t)]["pass_at"]["pass@1"] for f in found]) for t in (2, 3)]
        cells += [mean([f["groups"][str(t)]["pass_at"]["pass@8"] for f in found]) for t in (2, 3)]
        wall = [json.loads((r / "model" / "training.json").read_text())["seconds"] for r in runs
                if (r / "model" / "training.json").exists()]
        return f"| {label} | {len(found)} | " + " | ".join(cells) + f" | {mean(wall, 0) if wall else '—'} |"

    head = ("| model | seeds | greedy | pass@1 | pass@8 | tier 2 pass@1 | tier 3 pass@1 | tier 2 pass@8 "
            "| tier 3 pass@8 | train s |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = [row("SFT all (the start)", [root.parent / "sft-all-0"]),
            row(f"+ RL with the difficulty filter, {STEPS} steps", [root / f"rl-filtered-{s}" for s in SEEDS]),
            row(f"+ RL without it (plain GRPO), {STEPS} steps", [root / f"rl-plain-{s}" for s in SEEDS]),
            row("+ SFT for the filtered arm's wall time (matched control)", [root / f"sft-control-{s}" for s in SEEDS])]
    parts = ["## RL on the hard tiers", head, *[r for r in rows if r]]

    curves = ["", "## Training curves (means over steps 1-10 and the last 10; reward over every sampled answer)",
              "| run | reward, first 10 | reward, last 10 | entropy, first 10 | entropy, last 10 "
              "| groups kept per step | answers sampled per step |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name in [f"rl-filtered-{s}" for s in SEEDS] + [f"rl-plain-{s}" for s in SEEDS]:
        log = _log(root / name)
        if log:
            first, last = log[:10], log[-10:]
            def avg(rows: list[dict[str, Any]], key: str) -> str:
                values = [r[key] for r in rows if key in r]
                return f"{sum(values) / len(values):.3f}" if values else "—"

            curves.append(f"| {name} | {avg(first, 'reward')} | {avg(last, 'reward')} | {avg(first, 'entropy')} | "
                          f"{avg(last, 'entropy')} | "
                          f"{sum(r['groups_kept'] for r in log) / len(log):.1f} | "
                          f"{8 * sum(r['groups_kept'] + r['groups_dropped'] for r in log) / len(log):.0f} |")
    parts += curves

    speed = ["", "## Asynchronous rollouts", "| arm | processes | samples/s | learner time not training | wall s |",
             "|---|---:|---:|---:|---:|"]
    for name, procs in (("sync", 1), ("async-1", 2), ("async-2", 3)):
        run = root / f"speed-{name}"
        log = _log(run)
        if log and (run / "model" / "training.json").exists():
            wall = seconds(run)
            speed.append(f"| {name} | {procs} | {log[-1]['samples_per_s']:.1f} | "
                         f"{log[-1]['idle_s'] / wall:.0%} | {wall:.0f} |")
    parts += speed

    py = ["", "## Valid-Python reward on the pretrained demo model",
          "| model | held-out pass@1 | pass@8 | held-out stdlib NLL |", "|---|---:|---:|---:|"]
    for name in ("base", "rl-python"):
        a, p = root / f"python-{name}.json", root / f"stdlib-{name}.json"
        if a.exists() and p.exists():
            fa, fp = json.loads(a.read_text()), json.loads(p.read_text())
            py.append(f"| {name} | {fa['overall']['pass_at']['pass@1']:.3f} | {fa['overall']['pass_at']['pass@8']:.3f} "
                      f"| {fp['mean_nll']:.4f} |")
    parts += py
    return "\n".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", action="store_true", help="print the tables from what has run, and stop")
    parser.add_argument("--stages", nargs="+", default=["arith", "async", "python"],
                        choices=["arith", "async", "python"])
    args = parser.parse_args()
    root = cache_dir() / "posttrain" / "rl"
    if not args.report:
        root.mkdir(parents=True, exist_ok=True)
        stages = {"arith": arith_stage, "async": async_stage, "python": python_stage}
        for stage in args.stages:
            stages[stage](root)
    print(report(root))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
