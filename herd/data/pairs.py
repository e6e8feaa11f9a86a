"""On-policy preference pairs for `herd dpo`: the model answers each question k times, a verifier sorts them.

The input is `herd sft`'s chat JSONL. In each conversation the last assistant message is the reference
answer and everything before it the question.
- Each question gets `samples` seeded answers (sample j draws with seed + j) from the model.
- Each answer is checked against the reference (`herd.data.filter` verifiers).
- The chosen side is the first answer that passes. When none passes, the reference answer is chosen
  instead, unless `reference_fallback` is off. The rejected side is the first answer that fails.
- A question whose answers all pass carries no preference and is skipped, counted.

The output is `{"prompt", "chosen", "rejected"}` lines, written atomically and byte-identical for a seed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from herd.data.filter import Judge, load_verifier, message_text, read_items
from herd.data.sources import DataError
from herd.files import write_text_atomic


def mine_pairs(data: str | Path, judge: Judge, out: str | Path, *, samples: int = 4, temperature: float = 0.8,
               max_new_tokens: int = 64, verifier: str = "exact", seed: int = 0,
               reference_fallback: bool = True) -> dict[str, Any]:
    """Write preference pairs mined from `judge`'s own answers to the questions of `data`; returns counts."""
    if samples < 1:
        raise DataError("--samples must be >= 1")
    _, items = read_items(data)
    check = load_verifier(verifier)
    answers = judge.samples([q for q, _ in items], samples, temperature, seed, max_new_tokens)
    lines, counts = [], {"questions": len(items), "pairs": 0, "all_passed": 0, "reference_chosen": 0}
    for (question, reference), outputs in zip(items, answers, strict=True):
        passed = [bool(check(output, message_text(reference))) for output in outputs]
        failing = [o for o, ok in zip(outputs, passed, strict=True) if not ok]
        if not failing:
            counts["all_passed"] += 1
            continue
        if any(passed):
            chosen = outputs[passed.index(True)]
        elif reference_fallback:
            chosen = message_text(reference)
            counts["reference_chosen"] += 1
        else:
            continue
        lines.append(json.dumps({"prompt": question, "chosen": [{"role": "assistant", "content": chosen}],
                                 "rejected": [{"role": "assistant", "content": failing[0]}]}) + "\n")
        counts["pairs"] += 1
    write_text_atomic(Path(out), "".join(lines))
    return counts
