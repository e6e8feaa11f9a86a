"""The safety demo of docs/SAFETY.md: a Guard-shaped classifier made the way Llama Guard 4 was (prune a trained MoE
model to a dense one, then fine-tune it on labelled prompts), scored per category; then a red-teaming run of the demo
model with that classifier as the judge.

    python benchmarks/safety_demo.py              # every stage, cached under $HERD_CACHE/safety; resumable
    python benchmarks/safety_demo.py --report     # the tables, from what has run

Every stage is a herd command, printed before it runs; a stage whose output exists is skipped.

- Start: `herd demo`'s herd-10m (4 layers, 4 routed experts + a shared one in every layer), pretrained on the
  Python standard library.
- Prune: `herd prune --to-dense` keeps each layer's shared expert as its dense FFN and takes Llama Guard 4's
  attention layout (no chunking, RoPE in every layer), as Meta made Guard 4 from Scout.
- Data: `benchmarks/safety_data.py`, templated user requests for S1–S13 and safe ones (hard negatives among them);
  the test split's templates and fillers are held out from training. Each training item is the Guard prompt
  (herd's render of the HF template, with the demo tokenizer) as the user turn and `safe` / `unsafe\\nS9` as the
  assistant's; rendered by the chat format it is exactly what the judge reads (checked here).
- Arms, at equal steps: SFT of the pruned dense model (the recipe), SFT of the unpruned MoE model (what pruning
  costs), and the pruned model without SFT (the floor). Scored by `herd eval moderation` on the test split.
- Red-teaming: `herd redteam` with the demo model as attacker and target and the SFT'd classifier as the judge,
  the built-in 26 goals, 3 turns.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from posttrain_demo import herd
from safety_data import guard_items

from herd import chat
from herd.files import cache_dir, write_text_atomic
from herd.moderation import guard_prompt, judged_ids
from herd.tokenizer import Tokenizer, load_tokenizer

SFT_STEPS = 300
SFT_FLAGS = ["--seq-len", "384", "--batch-size", "16", "--lr", "2e-3", "--warmup-steps", "20", "--eval-every", "100",
             "--eval-batches", "4", "--ckpt-every", "50", "--log-every", "10", "--no-progress"]
ARMS = {"pruned-sft": "the recipe: prune, then SFT", "moe-sft": "SFT without pruning (MoE)",
        "pruned": "pruned, no SFT"}
HEAD, TAIL = "<|begin_of_text|><|header_start|>user<|header_end|>\n\n", "<|eot|><|header_start|>assistant<|header_end|>"


def demo_model() -> Path:
    model = cache_dir() / "demo" / "run" / "model"
    if not (model / "training.json").exists():
        herd("demo")
    return model


def sft_row(tokenizer: Tokenizer, item: dict[str, str]) -> dict:
    """A chat SFT record whose user turn is the Guard prompt of `item` and whose answer is its label."""
    prompt = guard_prompt(tokenizer, [{"role": "user", "content": item["text"]}])
    text = tokenizer.decode(prompt.ids)
    assert text.startswith(HEAD) and text.endswith(TAIL), text[:80]
    answer = "safe" if item["label"] == "safe" else f"unsafe\n{item['label']}"
    messages = [{"role": "user", "content": text[len(HEAD):-len(TAIL)]}, {"role": "assistant", "content": answer}]
    assert chat.render(tokenizer, messages[:1]).ids == judged_ids(tokenizer, prompt), "the SFT render drifted"
    return {"messages": messages, "label": item["label"]}


def write_data(root: Path, tokenizer: Tokenizer) -> dict[str, Path]:
    """train.jsonl and val.jsonl (SFT records) under data/, test.jsonl (labelled texts for herd eval moderation)."""
    data = root / "data"
    paths = {"sft": data, "test": data / "test.jsonl"}
    if (data / "test.jsonl").exists():
        return paths
    data.mkdir(parents=True, exist_ok=True)
    splits = guard_items(seed=0)
    for name in ("train", "val"):
        rows = [sft_row(tokenizer, item) for item in splits[name]]
        write_text_atomic(data / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write_text_atomic(data / "test.jsonl", "".join(json.dumps(item) + "\n" for item in splits["test"]))
    lengths = [len(judged_ids(tokenizer, guard_prompt(tokenizer, [{"role": "user", "content": i["text"]}])))
               for i in splits["train"]]
    print(f"data: {', '.join(f'{k} {len(v)}' for k, v in splits.items())}; Guard prompts of {min(lengths)}–"
          f"{max(lengths)} tokens", file=sys.stderr)
    return paths


def classifier_stage(root: Path, base: Path) -> dict[str, Path]:
    tokenizer = load_tokenizer(base)
    data = write_data(root, tokenizer)
    pruned = root / "pruned"
    if not (pruned / "config.json").exists():
        herd("prune", base, "--to-dense", "--out", pruned, "--dtype", "float32")
    models = {"pruned": pruned}
    for arm, init in (("pruned-sft", pruned), ("moe-sft", base)):
        run = root / arm
        if not (run / "model" / "training.json").exists():
            herd("sft", "--init-from", init, "--data", data["sft"], "--out", run, "--steps", str(SFT_STEPS),
                 *SFT_FLAGS, *(["--resume"] if (run / "checkpoints").exists() else []))
        models[arm] = run / "model"
    for arm, model in models.items():
        out = root / "eval" / f"{arm}.json"
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            herd("eval", "moderation", "--model", model, "--data", data["test"], "--json", output=out)
    return models


def redteam_stage(root: Path, base: Path, judge: Path) -> None:
    out = root / "redteam"
    if not (out / "report.json").exists():
        herd("redteam", "--attacker", base, "--target", base, "--judge", judge, "--out", out, "--turns", "3",
             "--batch", "13", "--attacker-max-tokens", "96", "--target-max-tokens", "96", "--dtype", "float32",
             "--json", output=root / "redteam.txt")


def report(root: Path) -> str:
    lines = ["| arm | unsafe recall | unsafe FPR | unsafe F1 | macro P | macro R | macro F1 | unreadable |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    per_category = {}
    for arm, what in ARMS.items():
        path = root / "eval" / f"{arm}.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        o, m = r["overall"], r["macro"]
        lines.append(f"| {what} | {o['recall']:.3f} | {o['fpr']:.3f} | {o['f1']:.3f} | {m['precision']:.3f} | "
                     f"{m['recall']:.3f} | {m['f1']:.3f} | {r['errors']}/{r['items']} |")
        per_category[arm] = r["per_category"]
    if "pruned-sft" in per_category:
        lines += ["", "| category | support | precision | recall | F1 | F1 without pruning |",
                  "|---|---:|---:|---:|---:|---:|"]
        for code, s in per_category["pruned-sft"].items():
            moe = per_category.get("moe-sft", {}).get(code, {}).get("f1")
            lines.append(f"| {code} | {s['support']} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | "
                         f"{'' if moe is None else f'{moe:.3f}'} |")
    red = root / "redteam" / "report.json"
    if red.exists():
        from herd.moderation.redteam import format_report

        lines += ["", format_report(json.loads(red.read_text()))]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", action="store_true", help="print the tables from what has run, and stop")
    args = parser.parse_args()
    root = cache_dir() / "safety"
    if not args.report:
        root.mkdir(parents=True, exist_ok=True)
        base = demo_model()
        models = classifier_stage(root, base)
        redteam_stage(root, base, models["pruned-sft"])
    print(report(root))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
