"""Difficulty filtering for fine-tuning data: a judge model scores every conversation, the easy ones go.

Llama 4's SFT dropped more than half of its data as "easy" by a Llama judge. Here the judge is any herd
checkpoint and the data `herd sft`'s chat JSONL. In each conversation the last assistant message is the
reference answer and everything before it the question.

Signals, each a difficulty (higher is harder), chosen with `signals`:
- `nll`: the answer's mean token NLL given the question, under the judge.
- `ifd`: instruction-following difficulty (Li et al. 2023, "From quantity to quality"):
  NLL(answer | question) / NLL(answer alone). Near 1 or above, the question does not help the judge
  predict the answer. "Alone" means after the assistant header only.
- `pass_rate`: k seeded samples per question at `temperature`, each checked by a verifier against the
  reference. The difficulty is 1 − c/n. The unbiased pass@k estimator, 1 − C(n−c, k)/C(n, k), is
  recorded too.
- `rubric`: the judge is asked, greedily, to rate the task from 1 to 10, and the first integer of its reply
  is taken (for chat checkpoints that can follow it; `null` when it gives none).

Each signal becomes a percentile over the items (ties share their mean rank; a missing value is the
median). The difficulty is the mean of those percentiles.
- `drop_easy_fraction` f drops the ⌊f·n⌋ easiest items, ties going by input order.
- `keep_band` (lo, hi) keeps the items whose difficulty percentile lies in [lo, hi].

Output: `OUT/train.jsonl` holds the kept lines byte for byte, in input order. `OUT/scores.jsonl` holds one
record per input line: its signals, difficulty, percentile and whether it was kept. Both are written
atomically, and a seed fixes every byte.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from math import comb
from pathlib import Path
from typing import Any

from herd.chat import parse_assistant, render
from herd.data.sources import DataError, jsonl_records
from herd.files import write_text_atomic
from herd.tokenizer import Tokenizer

log = logging.getLogger("herd")

SIGNALS = ("nll", "ifd", "pass_rate", "rubric")
RUBRIC = ("Rate how difficult the following task is for a language model, from 1 (trivial) to 10 (very hard). "
          "Reply with the number only.\n\nTask:\n{task}")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")

Verifier = Callable[[str, str], bool]


def _normalise(text: str) -> str:
    return " ".join(text.strip().lower().split()).rstrip(".")


def _first_number(text: str) -> float | None:
    found = NUMBER.search(text.replace(",", ""))
    return float(found.group()) if found else None


def exact(output: str, reference: str) -> bool:
    """The output equals the reference up to case, surrounding and repeated whitespace, and a final period."""
    return _normalise(output) == _normalise(reference)


def number(output: str, reference: str) -> bool:
    """The first number in the output equals the first number in the reference (commas ignored)."""
    want = _first_number(reference)
    return want is not None and _first_number(output) == want


CODE_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)
PYTHON_MIN_CHARS = 40


def python_code(output: str, reference: str = "", min_chars: int = PYTHON_MIN_CHARS) -> bool:
    """The output (or its first fenced code block) parses as Python (`ast.parse`), and its code holds at least
    `min_chars` non-blank characters once comments and bare string or constant statements (docstrings) are dropped
    (measured on `ast.unparse`); the reference is not read. Counting the raw text instead lets a policy earn the
    reward with comment lines alone (an RL run on the demo model found that in 30 steps)."""
    import ast
    import warnings

    block = CODE_BLOCK.search(output)
    code = block.group(1) if block else output
    try:
        with warnings.catch_warnings():  # invalid escape sequences and the like are the code's, not ours
            warnings.simplefilter("ignore")
            tree = ast.parse(code)
            tree.body = [node for node in tree.body
                         if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]
            text = ast.unparse(tree)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return len("".join(text.split())) >= min_chars


VERIFIERS: dict[str, Verifier] = {"exact": exact, "number": number, "arithmetic": number, "python": python_code}


def load_verifier(name: str) -> Verifier:
    """A built-in verifier (`exact`; `number` or `arithmetic`: the first number; `python[:MIN_CHARS]`: valid Python
    of at least MIN_CHARS characters, 40 by default) or `module:function` taking (output, reference) -> bool or a
    float reward."""
    if name in VERIFIERS:
        return VERIFIERS[name]
    module, _, attr = name.partition(":")
    if module == "python" and attr.isdigit():
        return functools.partial(python_code, min_chars=int(attr))
    if not attr:
        raise DataError(f"verifier {name!r} is neither {' nor '.join(VERIFIERS)} nor module:function")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise DataError(f"cannot load verifier {name!r}: {err}") from None


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimator from n samples of which c passed (Chen et al. 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def split_item(record: dict[str, Any], where: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(question messages, the reference answer: the last assistant message)."""
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict) \
            or messages[-1].get("role") != "assistant":
        raise DataError(f"{where}: a conversation to score ends with the assistant's reference answer")
    return messages[:-1], messages[-1]


def read_items(path: str | Path) -> tuple[list[str], list[tuple[list[dict[str, Any]], dict[str, Any]]]]:
    """The non-blank lines of a chat JSONL file as read, and each one's (question, reference answer)."""
    lines, items = [], []
    for number, line, record in jsonl_records(Path(path)):
        lines.append(line)
        items.append(split_item(record if isinstance(record, dict) else {}, f"{path}:{number}"))
    return lines, items


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content", "")
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def percentiles(values: Sequence[float | None]) -> list[float]:
    """Each value's rank in [0, 1] (ties share their mean rank; None is the median, 0.5)."""
    present = sorted((v, i) for i, v in enumerate(values) if v is not None and not math.isnan(v))
    out = [0.5] * len(values)
    if len(present) < 2:
        return out
    start = 0
    while start < len(present):
        end = start
        while end + 1 < len(present) and present[end + 1][0] == present[start][0]:
            end += 1
        rank = (start + end) / 2 / (len(present) - 1)
        for _, i in present[start : end + 1]:
            out[i] = rank
        start = end + 1
    return out


class Judge:
    """A herd model scoring questions and answers (`herd.eval.scoring.Scorer`) and sampling answers (`Engine`)."""

    def __init__(self, model: Any, tokenizer: Tokenizer, *, progress: bool = False, batch_tokens: int = 4096) -> None:
        from herd.eval.scoring import Scorer
        from herd.infer import Engine

        self.model, self.tokenizer = model, tokenizer
        self.scorer = Scorer(model, batch_tokens=batch_tokens, progress=progress)
        self.engine = Engine(model)

    def answer_nll(self, items: Sequence[tuple[list[dict], dict]], with_question: bool) -> list[float]:
        """Mean token NLL of each answer (content and end token), given its question or the header alone."""
        requests = []
        for question, answer in items:
            context = question if with_question else []
            prompt = render(self.tokenizer, context, add_generation_prompt=True).ids
            full = render(self.tokenizer, [*context, answer], add_generation_prompt=False).ids
            requests.append((full, len(prompt)))
        scored = self.scorer.score(requests, desc="answers" if with_question else "answers alone")
        return [-s.total / max(len(s.logprobs), 1) for s in scored]

    def samples(self, questions: Sequence[list[dict]], n: int, temperature: float, seed: int,
                max_new_tokens: int) -> list[list[str]]:
        """n sampled answers (their content) per question; sample j of every question draws with seed + j."""
        from herd.infer import SamplingParams

        prompts = [render(self.tokenizer, q, add_generation_prompt=True).ids for q in questions]
        out: list[list[str]] = [[] for _ in questions]
        for j in range(n):
            params = SamplingParams(temperature=temperature, top_p=1.0, seed=seed + j, max_new_tokens=max_new_tokens)
            for i, completion in enumerate(self.engine.generate(prompts, params)):
                out[i].append(message_text({"content": parse_assistant(self.tokenizer, completion.token_ids).content}))
        return out

    def rubric(self, questions: Sequence[list[dict]]) -> list[float | None]:
        from herd.infer import SamplingParams

        prompts = []
        for question in questions:
            task = "\n".join(message_text(m) for m in question if m.get("role") in ("user", "system"))
            prompts.append(render(self.tokenizer, [{"role": "user", "content": RUBRIC.format(task=task)}]).ids)
        replies = self.engine.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=6))
        scores = []
        for reply in replies:
            value = _first_number(self.tokenizer.decode(reply.token_ids))
            scores.append(value if value is not None and 1 <= value <= 10 else None)
        return scores


def filter_file(data: str | Path, judge: Judge, out: str | Path, *, signals: Sequence[str] = ("nll",),
                drop_easy_fraction: float | None = None, keep_band: tuple[float, float] | None = None,
                samples: int = 4, pass_k: int | None = None, temperature: float = 0.8, max_new_tokens: int = 64,
                verifier: str = "exact", seed: int = 0) -> dict[str, Any]:
    """Score every conversation of `data` (chat JSONL) with `judge`, keep per the rule, write OUT/train.jsonl
    and OUT/scores.jsonl. Returns counts."""
    unknown = [s for s in signals if s not in SIGNALS]
    if unknown or not signals:
        raise DataError(f"signals must be among {', '.join(SIGNALS)}, got {', '.join(signals) or 'none'}")
    if (drop_easy_fraction is None) == (keep_band is None):
        raise DataError("pass exactly one of --drop-easy-fraction F or --keep-band LO HI")
    if drop_easy_fraction is not None and not 0 <= drop_easy_fraction < 1:
        raise DataError("--drop-easy-fraction must be in [0, 1)")
    if keep_band is not None and not 0 <= keep_band[0] <= keep_band[1] <= 1:
        raise DataError("--keep-band needs 0 <= LO <= HI <= 1")
    lines, items = read_items(data)
    if not items:
        raise DataError(f"{data}: no conversations")

    records: list[dict[str, Any]] = [{"index": i} for i in range(len(items))]
    columns: dict[str, list[float | None]] = {}
    if "nll" in signals or "ifd" in signals:
        nll = judge.answer_nll(items, with_question=True)
        if "nll" in signals:
            columns["nll"] = list(nll)
        if "ifd" in signals:
            alone = judge.answer_nll(items, with_question=False)
            columns["ifd"] = [a / b if b > 0 else None for a, b in zip(nll, alone, strict=True)]
    if "pass_rate" in signals:
        check = load_verifier(verifier)
        answers = judge.samples([q for q, _ in items], samples, temperature, seed, max_new_tokens)
        k = pass_k or samples
        passes = []
        for record, outputs, (_, reference) in zip(records, answers, items, strict=True):
            c = sum(bool(check(output, message_text(reference))) for output in outputs)
            record.update(passed=c, samples=samples, **{f"pass@{k}": round(pass_at_k(samples, c, k), 6)})
            passes.append(1.0 - c / samples)
        columns["pass_rate"] = passes
    if "rubric" in signals:
        columns["rubric"] = judge.rubric([q for q, _ in items])

    ranks = [percentiles(values) for values in columns.values()]
    difficulty = [sum(r[i] for r in ranks) / len(ranks) for i in range(len(items))]
    percentile = percentiles(difficulty)
    if drop_easy_fraction is not None:
        order = sorted(range(len(items)), key=lambda i: (difficulty[i], i))
        dropped = set(order[: math.floor(drop_easy_fraction * len(items))])
        kept = [i not in dropped for i in range(len(items))]
    else:
        lo, hi = keep_band  # type: ignore[misc]
        kept = [lo <= p <= hi for p in percentile]
    for i, record in enumerate(records):
        record.update({name: None if values[i] is None else round(values[i], 6) for name, values in columns.items()})
        record.update(difficulty=round(difficulty[i], 6), percentile=round(percentile[i], 6), kept=kept[i])

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "scores.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    write_text_atomic(out / "train.jsonl", "".join(line if line.endswith("\n") else line + "\n"
                                                   for line, keep in zip(lines, kept, strict=True) if keep))
    return {"items": len(items), "kept": sum(kept), "signals": list(columns)}
