"""Generative accuracy: a model answers held-out questions, a verifier checks each answer against the reference.

The input is chat JSONL as for `herd sft` and `herd data filter`: in each conversation the last assistant message
is the reference answer and everything before it the question. Figures:
- `greedy`: the fraction of questions whose greedy answer passes.
- `pass@k` for each k in `ks` (k ≤ n): the unbiased estimator over n seeded samples per question at `temperature`
  (sample j draws with seed + j), averaged over questions; `mean_pass` is the per-sample pass rate.
- With `group_by`, the same per value of that field of the records (e.g. a difficulty tier), in sorted order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from herd.data.filter import Judge, load_verifier, message_text, pass_at_k, split_item
from herd.data.sources import DataError, jsonl_records


@dataclass
class Figures:
    items: int = 0
    greedy: float = 0.0
    mean_pass: float | None = None
    pass_at: dict[str, float] = field(default_factory=dict)  # "pass@k" -> value


@dataclass
class AnswerResult:
    samples: int
    temperature: float
    verifier: str
    overall: Figures
    groups: dict[str, Figures]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        ks = list(self.overall.pass_at)
        head = "| group | items | greedy |" + "".join(f" {k} |" for k in ks)
        lines = [head, "|---|---:|---:|" + "---:|" * len(ks)]
        for name, f in [*self.groups.items(), ("all", self.overall)]:
            lines.append(f"| {name} | {f.items} | {f.greedy:.3f} |" + "".join(f" {f.pass_at[k]:.3f} |" for k in ks))
        return "\n".join(lines)


def read_questions(path: str | Path, group_by: str | None = None) -> tuple[list[tuple[list[dict], dict]], list[str]]:
    """Each conversation's (question, reference) and its group (the `group_by` field as text, "" without)."""
    items, groups = [], []
    for number, _, record in jsonl_records(Path(path)):
        record = record if isinstance(record, dict) else {}
        items.append(split_item(record, f"{path}:{number}"))
        if group_by is not None and group_by not in record:
            raise DataError(f"{path}:{number}: no field {group_by!r} to group by")
        groups.append(str(record.get(group_by, "")) if group_by else "")
    if not items:
        raise DataError(f"{path}: no conversations")
    return items, groups


def _figures(greedy: Sequence[bool], passed: Sequence[int], samples: int, ks: Sequence[int]) -> Figures:
    n = len(greedy)
    f = Figures(items=n, greedy=sum(greedy) / n)
    if samples:
        f.mean_pass = sum(passed) / (n * samples)
        f.pass_at = {f"pass@{k}": sum(pass_at_k(samples, c, k) for c in passed) / n for k in ks}
    return f


def _natural(name: str) -> tuple[int, float, str]:
    """Numbers in numeric order, before other names."""
    try:
        return 0, float(name), name
    except ValueError:
        return 1, 0.0, name


def evaluate(judge: Judge, path: str | Path, *, verifier: str = "exact", samples: int = 0,
             ks: Sequence[int] = (1,), temperature: float = 0.8, seed: int = 0, max_new_tokens: int = 64,
             group_by: str | None = None) -> AnswerResult:
    """Greedy accuracy and, with `samples` > 0, pass@k of `judge`'s model on the questions of `path`."""
    bad = [k for k in ks if not 1 <= k <= max(samples, 1)]
    if samples and bad:
        raise DataError(f"pass@k needs 1 <= k <= samples ({samples}), got {', '.join(map(str, bad))}")
    items, groups = read_questions(path, group_by)
    check = load_verifier(verifier)
    questions = [q for q, _ in items]
    references = [message_text(r) for _, r in items]
    greedy = [bool(check(out[0], ref)) for out, ref in
              zip(judge.samples(questions, 1, 0.0, seed, max_new_tokens), references, strict=True)]
    passed = [0] * len(items)
    if samples:
        outputs = judge.samples(questions, samples, temperature, seed, max_new_tokens)
        passed = [sum(bool(check(o, ref)) for o in outs) for outs, ref in zip(outputs, references, strict=True)]
    ks = list(ks) if samples else []
    by_group = {}
    if group_by:
        for name in sorted(set(groups), key=_natural):
            chosen = [i for i, g in enumerate(groups) if g == name]
            by_group[name] = _figures([greedy[i] for i in chosen], [passed[i] for i in chosen], samples, ks)
    return AnswerResult(samples, temperature, verifier, _figures(greedy, passed, samples, ks), by_group)
