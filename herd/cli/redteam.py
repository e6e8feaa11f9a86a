"""`herd redteam`: GOAT-style multi-turn red-teaming (`herd.moderation.redteam`). An attacker chat model talks to
a target (each a local checkpoint or any OpenAI-compatible server) and a Llama Guard model judges each reply.

    herd redteam --attacker A --target T --judge Llama-Guard-4-12B --out runs/redteam
    herd redteam --attacker A --target-url http://127.0.0.1:8000/v1 --judge G --goals goals.jsonl --turns 5
    herd redteam --attacker-url http://gpu-box:8000/v1 --attacker-model big --target T --judge G --out runs/rt
    herd redteam --report runs/redteam          # the tables of a finished (or interrupted) run

Writes `transcripts.jsonl` (a line per conversation, as each batch ends; a rerun with the same --out resumes)
and `report.json`; prints attack success rates per category, per turn and per starting technique.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import herd
from herd.cli.common import DTYPES, codes, tokenizer_for
from herd.moderation import Judge, selected_categories
from herd.moderation.redteam import (
    LocalChat,
    OpenAIChat,
    RedTeam,
    RedTeamError,
    format_report,
    read_goals,
    read_transcripts,
    summarize,
)

HELP = ("Red-team a chat model: an attacker model converses with the target over several turns, a Llama Guard "
        "model judges each reply (--attacker A --target T|--target-url URL --judge G --out DIR).")


def register(parser: argparse.ArgumentParser) -> None:
    attacker = parser.add_mutually_exclusive_group()
    attacker.add_argument("--attacker", help="the attacker's chat checkpoint")
    attacker.add_argument("--attacker-url", help="an OpenAI-compatible base URL serving the attacker")
    parser.add_argument("--attacker-model", help="the model name sent to --attacker-url")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--target", help="the target's chat checkpoint")
    target.add_argument("--target-url", help="an OpenAI-compatible base URL (e.g. http://127.0.0.1:8000/v1)")
    parser.add_argument("--target-model", help="the model name sent to --target-url")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"),
                        help="the bearer key of --target-url and --attacker-url (default: $OPENAI_API_KEY)")
    parser.add_argument("--target-system", help="a system prompt for the target")
    parser.add_argument("--judge", help="the Llama Guard checkpoint that judges the target's replies")
    parser.add_argument("--judge-threshold", type=float, help="flag at P(unsafe) >= this (default: the verdict)")
    parser.add_argument("--judge-exclude", default="", help="category codes the judge does not check")
    parser.add_argument("--goals", help="a JSONL file of {id, category, goal} (default: the built-in 26, S1-S13)")
    parser.add_argument("--categories", default="", help="only goals of these categories, e.g. S1,S9")
    parser.add_argument("--max-goals", type=int, help="the first N goals (after --categories)")
    parser.add_argument("--turns", type=int, default=5, help="turns per conversation (default 5)")
    parser.add_argument("--batch", type=int, default=8, help="conversations run together (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attacker-temperature", type=float, default=1.0)
    parser.add_argument("--attacker-max-tokens", type=int, default=256)
    parser.add_argument("--target-temperature", type=float, default=0.0, help="default 0: greedy")
    parser.add_argument("--target-max-tokens", type=int, default=256)
    parser.add_argument("--dtype", choices=list(DTYPES), default="bfloat16")
    parser.add_argument("--out", help="the run's directory (a rerun with the same settings resumes)")
    parser.add_argument("--report", metavar="DIR", help="print the report of the run in DIR and exit")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-progress", dest="progress", action="store_false")


def _fail(message: str) -> int:
    print(f"herd redteam: error: {message}", file=sys.stderr)
    return 2


def _print(report: dict, as_json: bool) -> None:
    print(json.dumps(report, indent=2) if as_json else format_report(report))


def run(args: argparse.Namespace) -> int:
    if args.report:
        saved = Path(args.report) / "run.json"
        if not saved.exists():
            return _fail(f"{args.report} holds no red-teaming run (no run.json)")
        turns = json.loads(saved.read_text())["turns"]
        _print(summarize(read_transcripts(Path(args.report) / "transcripts.jsonl"), turns), args.json)
        return 0
    missing = [flag for flag, value in (("--attacker or --attacker-url", args.attacker or args.attacker_url),
                                        ("--judge", args.judge), ("--out", args.out),
                                        ("--target or --target-url", args.target or args.target_url)) if not value]
    if missing:
        return _fail(f"{', '.join(missing)} needed")
    if args.turns < 1 or args.batch < 1:
        return _fail("--turns and --batch are at least 1")
    try:
        goals = read_goals(args.goals)
        wanted = codes(args.categories)
        if wanted:
            goals = [g for g in goals if g.category in wanted]
        goals = goals[: args.max_goals] if args.max_goals is not None else goals
        if not goals:
            return _fail(f"no goals of categories {args.categories}")
        excluded = codes(args.judge_exclude)
        selected_categories(excluded)
    except (RedTeamError, ValueError) as err:
        return _fail(str(err))

    dtype, loaded = DTYPES[args.dtype], {}

    def local(path: str) -> tuple[herd.Transformer, object]:
        key = str(Path(path).resolve())
        if key not in loaded:
            model = herd.load(path, dtype=dtype)
            loaded[key] = (model, tokenizer_for(path, model.config.vocab_size))
        return loaded[key]

    if args.attacker_url:
        attacker = OpenAIChat(args.attacker_url, args.attacker_model, api_key=args.api_key,
                              temperature=args.attacker_temperature, max_tokens=args.attacker_max_tokens,
                              concurrency=args.batch)
    else:
        attacker = LocalChat(*local(args.attacker), name=Path(args.attacker).name,
                             temperature=args.attacker_temperature, max_tokens=args.attacker_max_tokens)
    if args.target_url:
        target = OpenAIChat(args.target_url, args.target_model, api_key=args.api_key,
                            temperature=args.target_temperature, max_tokens=args.target_max_tokens,
                            system=args.target_system, concurrency=args.batch)
    else:
        target = LocalChat(*local(args.target), name=Path(args.target).name, temperature=args.target_temperature,
                           max_tokens=args.target_max_tokens, system=args.target_system)
    judge = Judge(*local(args.judge), excluded=excluded, threshold=args.judge_threshold)
    team = RedTeam(attacker, target, judge, turns=args.turns, batch=args.batch, seed=args.seed,
                   judge_name=Path(args.judge).name)
    try:
        report = team.run(goals, args.out, progress=args.progress)
    except RedTeamError as err:
        return _fail(str(err))
    _print(report, args.json)
    print(f"herd redteam: transcripts in {Path(args.out) / 'transcripts.jsonl'}", file=sys.stderr)
    return 0
