"""A moderation classifier (Llama Guard) against labelled conversations: precision, recall, F1 and false-positive
rate per category, as Meta reports Llama Guard (threshold-free, from the model's text output), and overall.

- Data: JSONL, each line `{"messages": [...], "categories": ["S9"]}` (an empty list: safe), or a user's text
  alone as `{"text": "..."}` with `"label": "safe" | "S9" | ["S1", "S9"]`. The last message is the one judged.
- Per category c, an item is positive when it is labelled c, predicted positive when the verdict is unsafe and
  names c. Overall: labelled unsafe (any code) against flagged. Macro: the mean over categories with at
  least one positive item. A verdict the parser calls an error names no category (it is flagged overall only
  with a threshold), and is counted.

Shapes: none (conversations in, counts out).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from herd.data.sources import DataError
from herd.moderation.judge import Judge, Judgement


@dataclass
class Labelled:
    messages: list[dict[str, Any]]
    categories: frozenset[str]


def read_items(path: str | Path) -> list[Labelled]:
    """The labelled conversations of a JSONL file."""
    items = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            messages = row["messages"] if "messages" in row else [{"role": "user", "content": row["text"]}]
            label = row.get("categories", row.get("label"))
            codes = [] if label in (None, "safe") else [label] if isinstance(label, str) else list(label)
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(f"{path}:{n}: an item is {{\"messages\": [...], \"categories\": [...]}} or "
                            f"{{\"text\": ..., \"label\": ...}}: {err}") from None
        items.append(Labelled(messages, frozenset(str(c) for c in codes)))
    if not items:
        raise DataError(f"{path}: no items")
    return items


def _scores(pairs: list[tuple[bool, bool]]) -> dict[str, float | int]:
    """Support, precision, recall, F1 and false-positive rate of (labelled, predicted) pairs."""
    tp, fp, fn, tn = (pairs.count(k) for k in ((True, True), (False, True), (True, False), (False, False)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"support": tp + fn, "precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
            "fpr": round(fp / (fp + tn), 4) if fp + tn else 0.0}


@dataclass
class ModerationResult:
    items: int
    errors: int  # verdicts that were neither safe nor unsafe with listed codes
    overall: dict[str, float | int]
    per_category: dict[str, dict[str, float | int]]
    macro: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"items": self.items, "errors": self.errors, "overall": self.overall, "macro": self.macro,
                "per_category": self.per_category}

    def table(self) -> str:
        lines = ["| category | support | precision | recall | F1 | FPR |", "|---|---:|---:|---:|---:|---:|"]
        for code, s in self.per_category.items():
            lines.append(f"| {code} | {s['support']} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | "
                         f"{s['fpr']:.3f} |")
        m, o = self.macro, self.overall
        lines.append(f"| macro | | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['fpr']:.3f} |")
        lines.append(f"| unsafe (any) | {o['support']} | {o['precision']:.3f} | {o['recall']:.3f} | {o['f1']:.3f} | "
                     f"{o['fpr']:.3f} |")
        return "\n".join(lines) + f"\n\n{self.items} items, {self.errors} unreadable verdicts"


Judging = Callable[[list[list[dict[str, Any]]]], list[Judgement]]  # a Judge, or anything called like one


def evaluate(judge: Judge | Judging, items: Sequence[Labelled], batch: int = 32,
             progress: bool = True) -> ModerationResult:
    """Judge every item (in batches) and count."""
    predicted: list[frozenset[str]] = []  # the categories named, when flagged
    flagged: list[bool] = []
    errors = 0
    with tqdm(total=len(items), desc="judging", unit="item", disable=not progress) as bar:
        for start in range(0, len(items), batch):
            for j in judge([item.messages for item in items[start:start + batch]]):
                errors += bool(j.verdict.error)
                predicted.append(frozenset(j.categories) if j.flagged else frozenset())
                flagged.append(j.flagged)
            bar.update(min(batch, len(items) - start))
    codes = sorted({c for item in items for c in item.categories} | {c for p in predicted for c in p},
                   key=lambda c: (len(c), c))
    per_category = {}
    for code in codes:
        per_category[code] = _scores([(code in item.categories, code in p)
                                      for item, p in zip(items, predicted, strict=True)])
    overall = _scores([(bool(item.categories), f) for item, f in zip(items, flagged, strict=True)])
    scored = [s for s in per_category.values() if s["support"]]
    macro = {key: round(sum(s[key] for s in scored) / len(scored), 4) if scored else 0.0
             for key in ("precision", "recall", "f1", "fpr")}
    return ModerationResult(len(items), errors, overall, per_category, macro)
