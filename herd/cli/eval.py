"""`herd eval TASK`: perplexity, multiple choice, verified answers, a moderation classifier (Llama Guard's per-category
precision / recall / F1), passkey / needle retrieval, and lm-evaluation-harness tasks.

Each subcommand prints a readable table, or with `--json` one JSON object on stdout (the figures, the command
and the checkpoint's fingerprint); progress bars go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

from herd.cli.common import DTYPES, add_answer_flags, add_fast_flag, add_quant_flag, codes, load_with_tokenizer
from herd.config import PRESETS
from herd.data.sources import DataError
from herd.eval import answers, choice, moderation, needle, perplexity
from herd.eval.scoring import Scorer, checkpoint_fingerprint
from herd.fast import optimize

HELP = ("Evaluate a model: perplexity, multiple choice, verified answers (greedy, pass@k), a moderation classifier, "
        "passkey / needle retrieval, lm-eval tasks.")


def _common(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="checkpoint directory (HF or Meta format)")
    source.add_argument("--preset", choices=list(PRESETS), help="this preset with random weights")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    add_quant_flag(parser)
    add_fast_flag(parser)
    parser.add_argument("--batch-tokens", type=int, default=4096, help="tokens per forward (default 4096)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def _grid_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048],
                        help="prompt lengths in tokens (default 256 512 1024 2048)")
    parser.add_argument("--depths", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0],
                        help="needle depths as fractions of the haystack (default 0 .25 .5 .75 1)")
    parser.add_argument("--trials", type=int, default=5, help="keys per cell (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", help="write the grid as a PNG here")


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    p = sub.add_parser("perplexity", help="perplexity of held-out text (HF strided or llama.cpp protocol)")
    _common(p)
    p.add_argument("--data", nargs="+", required=True,
                   help="text/JSONL files, directories, 'stdlib', or a `herd data prepare` directory")
    p.add_argument("--split", default="val", help="the split of a prepared dataset (default val)")
    p.add_argument("--protocol", choices=["strided", "llama.cpp"], default="strided")
    p.add_argument("--window", type=int, default=512, help="strided: tokens per window (default 512)")
    p.add_argument("--stride", type=int, default=None, help="strided: window step (default: window / 2)")
    p.add_argument("--context", type=int, default=512, help="llama.cpp: window size (default 512)")
    p.add_argument("--bins", type=int, default=0, help="strided: also the loss per position bin of the window")
    p.add_argument("--max-tokens", type=int, default=None, help="evaluate at most this many tokens")

    c = sub.add_parser("choice", help="multiple choice by log-likelihood (lm-eval's acc and acc_norm)")
    _common(c)
    c.add_argument("--data", required=True, help='JSONL: {"question": str, "choices": [str, ...], "answer": int}')

    a = sub.add_parser("answers", help="generative accuracy: greedy and pass@k answers checked by a verifier")
    _common(a)
    a.add_argument("--data", required=True, help="chat JSONL; the last assistant message is the reference answer")
    add_answer_flags(a, "", samples=0)
    a.add_argument("--k", type=int, nargs="+", default=None, metavar="K", help="pass@K for each K (default: 1 and N)")
    a.add_argument("--group-by", metavar="FIELD", help="also report per value of this record field (e.g. tier)")

    m = sub.add_parser("moderation", help="a Llama Guard model on labelled conversations: P/R/F1/FPR per category")
    _common(m)
    m.add_argument("--data", required=True, help='JSONL: {"messages": [...], "categories": ["S9"]} ([]: safe), or '
                   '{"text": ..., "label": "safe" | "S9"}')
    m.add_argument("--exclude", default="", help="category codes not to check, comma-separated")
    m.add_argument("--threshold", type=float, help="flag at P(unsafe) >= this (default: the verdict)")
    m.add_argument("--variant", choices=["hf", "llama-stack"], default="hf")
    m.add_argument("--batch", type=int, default=32, help="conversations judged together (default 32)")

    for name, what in (("passkey", "passkey retrieval over filler text"),
                       ("niah", "needle in a haystack of held-out text")):
        g = sub.add_parser(name, help=f"{what}: accuracy by length and depth")
        _common(g)
        _grid_flags(g)
        if name == "niah":
            g.add_argument("--haystack", nargs="+", default=None,
                           help="haystack sources (default: the stdlib documents `herd demo` holds out)")
            g.add_argument("--style", choices=["text", "code"], default="text",
                           help="the needle as an English sentence (RULER's) or as a Python constant")

    h = sub.add_parser("lm-eval", help="lm-evaluation-harness tasks with herd as the model (in-process)")
    _common(h)
    h.add_argument("--tasks", nargs="+", required=True)
    h.add_argument("--include-path", help="a directory of task YAMLs (local tasks; no network needed)")
    h.add_argument("--limit", type=int, default=None, help="items per task")
    h.add_argument("--num-fewshot", type=int, default=None)
    h.add_argument("--max-length", type=int, default=4096, help="context length for scoring (default 4096)")
    h.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    try:
        with torch.no_grad():
            return _run(args)
    except (DataError, ValueError) as err:
        print(f"herd eval {args.task}: error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    model, tokenizer = load_with_tokenizer(args)
    if args.fast:
        optimize(model)
    scorer = Scorer(model, batch_tokens=args.batch_tokens, progress=True)
    start = time.perf_counter()
    table: str
    if args.task == "perplexity":
        sequences = perplexity.read_sequences(args.data, tokenizer, args.split, args.max_tokens)
        if args.protocol == "strided":
            result = perplexity.strided(scorer, sequences, args.window, args.stride or max(1, args.window // 2),
                                        args.bins)
        else:
            result = perplexity.llama_cpp(scorer, sequences, tokenizer.bos_id, args.context)
        figures = result.to_dict()
        processed = sum(len(s) for s in sequences)
        table = _perplexity_table(figures, processed, time.perf_counter() - start)
        figures["tokens_per_second"] = processed / (time.perf_counter() - start)
    elif args.task == "choice":
        result = choice.evaluate(scorer, tokenizer, choice.read_items(args.data))
        figures = result.to_dict()
        table = (f"| items | acc | acc_norm |\n|---:|---:|---:|\n"
                 f"| {figures['items']} | {figures['acc']:.4f} | {figures['acc_norm']:.4f} |")
    elif args.task == "answers":
        from herd.data.filter import Judge

        ks = args.k or sorted({1, args.samples} - {0})
        result = answers.evaluate(Judge(model, tokenizer), args.data, verifier=args.verifier, samples=args.samples,
                                  ks=ks, temperature=args.temperature, seed=args.seed,
                                  max_new_tokens=args.max_new_tokens, group_by=args.group_by)
        figures, table = result.to_dict(), result.table()
    elif args.task == "moderation":
        from herd.infer.engine import Engine
        from herd.infer.steps import FastDecode
        from herd.moderation import Judge

        excluded = codes(args.exclude)
        engine = Engine(model, step=FastDecode(model)) if args.fast else Engine(model)
        judge = Judge(model, tokenizer, excluded=excluded, threshold=args.threshold, variant=args.variant,
                      engine=engine)
        result = moderation.evaluate(judge, moderation.read_items(args.data), batch=args.batch)
        figures, table = result.to_dict(), result.table()
    elif args.task in ("passkey", "niah"):
        task = needle.PASSKEY if args.task == "passkey" else needle.niah_task(needle.held_out_text(args.haystack),
                                                                              args.style)
        grid = needle.run(scorer, tokenizer, task, args.lengths, args.depths, args.trials, args.seed)
        figures = grid.to_dict()
        table = grid.table() + f"\n\naccuracy {grid.overall:.3f} over {len(grid.correct) * grid.trials} trials"
        if args.plot:
            grid.plot(args.plot)
            table += f"; plot: {args.plot}"
    else:
        from herd.eval.harness import HerdLM, evaluate

        lm = HerdLM(model, tokenizer, max_length=args.max_length, batch_tokens=args.batch_tokens)
        results = evaluate(lm, args.tasks, args.include_path, args.limit, args.num_fewshot, args.seed)
        figures = {"results": results["results"], "samples": {task: [
            {"doc_id": s["doc_id"], "resps": s["resps"], "target": s["target"]} for s in samples]
            for task, samples in results.get("samples", {}).items()}}
        table = _lm_eval_table(results["results"])
    figures["seconds"] = time.perf_counter() - start
    record = {"task": args.task, "command": " ".join(args.command_line), "model": args.model or f"preset:{args.preset}",
              "checkpoint_fingerprint": checkpoint_fingerprint(args.model), **figures}
    print(json.dumps(record, default=float) if args.json else table)
    return 0


def _perplexity_table(figures: dict[str, Any], processed: int, seconds: float) -> str:
    setting = (f"window {figures['window']}, stride {figures['stride']}" if figures["protocol"] == "strided"
               else f"windows of {figures['context']}, second halves scored")
    lines = ["| protocol | scored tokens | mean NLL | perplexity | tok/s |", "|---|---:|---:|---:|---:|",
             f"| {figures['protocol']} ({setting}) | {figures['scored_tokens']:,} | {figures['mean_nll']:.4f} | "
             f"{figures['ppl']:.3f} | {processed / seconds:,.0f} |"]
    if figures["position_bins"]:
        lines += ["", "| positions | tokens | mean NLL |", "|---|---:|---:|"]
        lines += [f"| {b['from']}–{b['to']} | {b['tokens']:,} | {b['mean_nll']:.4f} |"
                  for b in figures["position_bins"]]
    return "\n".join(lines)


def _lm_eval_table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| task | metric | value |", "|---|---|---:|"]
    for task, metrics in results.items():
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not key.startswith("alias") and "stderr" not in key:
                lines.append(f"| {task} | {key} | {value:.4f} |")
    return "\n".join(lines)
