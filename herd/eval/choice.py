"""Multiple choice by log-likelihood, the way lm-evaluation-harness scores `multiple_choice` tasks.

An item is `{"question": str, "choices": [str, ...], "answer": int}` (one JSON object per line). The question
is the context and each choice a continuation, scored as `" " + choice` (lm-eval's target delimiter) unless
the choice already starts with whitespace. The prediction is the choice with the highest summed
log-probability (`acc`), or the highest per character of the choice (`acc_norm`, lm-eval's length
normalization).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from herd.data.sources import DataError
from herd.eval.scoring import Scorer, encode_pair
from herd.tokenizer import Tokenizer


@dataclass
class ChoiceResult:
    items: list[dict[str, Any]]  # per item: loglikelihoods, greedy flags, pred, pred_norm, answer

    @property
    def acc(self) -> float:
        return sum(item["pred"] == item["answer"] for item in self.items) / len(self.items)

    @property
    def acc_norm(self) -> float:
        return sum(item["pred_norm"] == item["answer"] for item in self.items) / len(self.items)

    def to_dict(self) -> dict[str, Any]:
        return {"items": len(self.items), "acc": self.acc, "acc_norm": self.acc_norm, "per_item": self.items}


def read_items(path: str | Path) -> list[dict[str, Any]]:
    """The items of a JSONL file, checked; DataError naming the line of the first bad one."""
    items = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read: {err}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as err:
            raise DataError(f"{path}:{n}: not JSON: {err}") from None
        problem = _problem(item)
        if problem:
            raise DataError(f"{path}:{n}: {problem}")
        items.append(item)
    if not items:
        raise DataError(f"{path}: no items")
    return items


def _problem(item: Any) -> str | None:
    if not isinstance(item, dict):
        return "an item must be a JSON object with question, choices and answer"
    if not isinstance(item.get("question"), str):
        return '"question" must be a string'
    choices = item.get("choices")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        return '"choices" must be a list of at least two non-empty strings'
    answer = item.get("answer")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        return f'"answer" must be an index into the {len(choices)} choices, got {answer!r}'
    return None


def continuation(choice: str) -> str:
    return choice if choice[:1].isspace() else " " + choice


def evaluate(scorer: Scorer, tokenizer: Tokenizer, items: list[dict[str, Any]]) -> ChoiceResult:
    requests = []
    for item in items:
        for choice in item["choices"]:
            context_ids, continuation_ids = encode_pair(tokenizer, item["question"], continuation(choice))
            requests.append((context_ids + continuation_ids, len(context_ids)))
    scored = scorer.score(requests, desc="choices")
    out = []
    at = 0
    for item in items:
        n = len(item["choices"])
        mine = scored[at : at + n]
        lls = [s.total for s in mine]
        per_char = [ll / len(c) for ll, c in zip(lls, item["choices"], strict=True)]
        out.append({"answer": item["answer"], "loglikelihoods": lls, "greedy": [s.is_greedy for s in mine],
                    "pred": max(range(n), key=lls.__getitem__), "pred_norm": max(range(n), key=per_char.__getitem__)})
        at += n
    return ChoiceResult(out)
