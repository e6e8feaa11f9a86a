"""Retrieval from long context: passkey (Mohtashami & Jaggi, 2023) and needle-in-a-haystack (RULER's single
needle), as an accuracy grid of prompt length × needle depth.

- **passkey**: a task line, repeated filler sentences, "The pass key is 71432. Remember it. 71432 is the pass
  key." at the chosen depth, more filler, then "What is the pass key? The pass key is".
- **niah**: a haystack of real text (held-out documents of the stdlib by default: those `herd data prepare`
  puts in the val split, so a model trained on the stdlib has not seen them), "The special magic number is
  71432." placed at a line boundary near the chosen depth, then the question.

Every prompt is built to exactly `length` tokens (BOS included). A trial is correct when greedy decoding would
produce the key: each of its tokens is the model's top-1 given the prompt and the key's earlier tokens, which
one forward over prompt + key decides (the same test as generating and comparing, at prefill speed). Keys and
haystack offsets come from `seed`, so a grid is the same on every run.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from herd.data.prepare import split_hash
from herd.data.sources import STDLIB, read_document, resolve
from herd.eval.scoring import Scorer
from herd.tokenizer import Tokenizer

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
PASSKEY_TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
                "I will quiz you about the important information there.\n")
NIAH_TASK = "Some special magic numbers are hidden within the following text. Make sure to memorize them.\n"
HELD_OUT = 0.02  # the val fraction of `herd demo`'s data


@dataclass
class Task:
    """One retrieval task's text: the instruction, the needle and question for a key, and the haystack."""

    name: str
    instruction: str
    needle: str  # with {key}
    question: str
    haystack: str  # repeated or cut to length


PASSKEY = Task("passkey", PASSKEY_TASK, "\nThe pass key is {key}. Remember it. {key} is the pass key.\n",
               "\nWhat is the pass key? The pass key is", FILLER)


def niah_task(haystack: str, style: str = "text") -> Task:
    """The needle task over `haystack`: RULER's English needle, or (`style="code"`) the same key as a Python
    constant asked for by an assert, for models that have only seen code."""
    if style == "code":
        return Task("niah-code", "# Some magic numbers are hidden in the following code. Remember them.\n",
                    "\nMAGIC_NUMBER = {key}\n", "\nassert MAGIC_NUMBER ==", haystack)
    if style != "text":
        raise ValueError(f"unknown needle style {style!r}; use text or code")
    return Task("niah", NIAH_TASK, "\nThe special magic number is {key}.\n",
                "\nWhat is the special magic number mentioned in the text above? The special magic number is",
                haystack)


def held_out_text(inputs: list[str] | None = None, fraction: float = HELD_OUT, max_chars: int = 4_000_000,
                  split: str = "val") -> str:
    """Documents of `inputs` (default: the stdlib) that a `herd data prepare --val-fraction fraction` run puts in
    `split` ("val": the held-out ones; "train": the rest), joined by blank lines, up to `max_chars`."""
    if split not in ("val", "train"):
        raise ValueError(f"unknown split {split!r}; use val or train")
    threshold = math.floor(fraction * 2**64)
    texts, total = [], 0
    for path in resolve(inputs or [STDLIB]):
        for text in read_document(path):
            if (split_hash(text) < threshold) == (split == "val"):
                texts.append(text)
                total += len(text)
                if total >= max_chars:
                    return "\n\n".join(texts)
    if not texts:
        raise ValueError(f"no {split} documents in {' '.join(inputs or [STDLIB])} at fraction {fraction}")
    return "\n\n".join(texts)


@dataclass
class Grid:
    task: str
    lengths: list[int]
    depths: list[float]
    trials: int
    seed: int
    correct: dict[tuple[int, float], int]
    logprob: dict[tuple[int, float], float]  # mean log-probability of the key per cell

    def accuracy(self, length: int, depth: float) -> float:
        return self.correct[length, depth] / self.trials

    def by_length(self, length: int) -> float:
        return sum(self.correct[length, d] for d in self.depths) / (self.trials * len(self.depths))

    @property
    def overall(self) -> float:
        return sum(self.correct.values()) / (self.trials * len(self.lengths) * len(self.depths))

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "lengths": self.lengths, "depths": self.depths, "trials": self.trials,
                "seed": self.seed, "accuracy": self.overall,
                "by_length": {str(n): self.by_length(n) for n in self.lengths},
                "grid": [{"length": n, "depth": d, "accuracy": self.accuracy(n, d), "key_logprob": self.logprob[n, d]}
                         for n in self.lengths for d in self.depths]}

    def table(self) -> str:
        head = "| length \\ depth | " + " | ".join(f"{100 * d:.0f}%" for d in self.depths) + " | all |"
        lines = [head, "|---:|" + "---:|" * (len(self.depths) + 1)]
        for n in self.lengths:
            cells = " | ".join(f"{self.accuracy(n, d):.2f}" for d in self.depths)
            lines.append(f"| {n:,} | {cells} | {self.by_length(n):.2f} |")
        return "\n".join(lines)

    def plot(self, path: str | Path) -> None:
        from herd.train.metap import pyplot

        plt = pyplot()
        fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(self.depths), 1.0 + 0.45 * len(self.lengths)))
        values = [[self.accuracy(n, d) for d in self.depths] for n in self.lengths]
        image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(self.depths)), [f"{100 * d:.0f}%" for d in self.depths])
        ax.set_yticks(range(len(self.lengths)), [f"{n:,}" for n in self.lengths])
        ax.set_xlabel("needle depth")
        ax.set_ylabel("prompt length (tokens)")
        ax.set_title(f"{self.task}: accuracy over {self.trials} trials per cell")
        for i, row in enumerate(values):
            for j, value in enumerate(row):
                ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=8)
        fig.colorbar(image, ax=ax)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def _answer_ids(tokenizer: Tokenizer, question: str, key: str) -> list[int]:
    """The key's tokens as they follow the question (" 71432" split where the tokenizer splits it there)."""
    whole, head = tokenizer.encode(question + " " + key), tokenizer.encode(question)
    if whole[: len(head)] != head:  # the key merged into the question's last token: encode it alone
        return tokenizer.encode(" " + key)
    return whole[len(head) :]


def build(tokenizer: Tokenizer, task: Task, hay_ids: list[int], length: int, depth: float, key: str,
          rng: random.Random) -> tuple[list[int], list[int]]:
    """(prompt ids of exactly `length` tokens, key ids) for one trial; the haystack (`task.haystack` encoded)
    starts at a seeded offset."""
    head = [tokenizer.bos_id, *tokenizer.encode(task.instruction)]
    needle = tokenizer.encode(task.needle.format(key=key))
    question = tokenizer.encode(task.question)
    room = length - len(head) - len(needle) - len(question)
    if room < 0:
        raise ValueError(f"{task.name}: a prompt of {length} tokens is too short for the task "
                         f"(it needs {length - room} without any haystack)")
    hay = _cut(hay_ids, room, rng)
    at = _line_boundary(tokenizer, hay, round(depth * len(hay)))
    return head + hay[:at] + needle + hay[at:] + question, _answer_ids(tokenizer, task.question, key)


def _cut(ids: list[int], n: int, rng: random.Random) -> list[int]:
    if not ids:
        raise ValueError("the haystack text is empty")
    if len(ids) >= n + 1:
        start = rng.randrange(len(ids) - n + 1)
        return ids[start : start + n]
    return (ids * (n // len(ids) + 1))[:n]  # a short haystack (the passkey filler) repeats


def _line_boundary(tokenizer: Tokenizer, hay: list[int], at: int, reach: int = 64) -> int:
    """The index just after the nearest token ending a line at or before `at` (within `reach`), else `at`."""
    for i in range(at, max(0, at - reach), -1):
        if tokenizer.piece(hay[i - 1]).endswith(b"\n"):
            return i
    return at


def run(scorer: Scorer, tokenizer: Tokenizer, task: Task, lengths: list[int], depths: list[float],
        trials: int = 5, seed: int = 0) -> Grid:
    """The accuracy grid: `trials` seeded keys per (length, depth) cell."""
    if not lengths or not depths or trials < 1:
        raise ValueError("need at least one length, one depth and one trial")
    if any(not 0.0 <= d <= 1.0 for d in depths):
        raise ValueError(f"depths are fractions in [0, 1], got {depths}")
    hay_ids = tokenizer.encode(task.haystack)
    requests, cells = [], []
    for n in lengths:
        for d in depths:
            for t in range(trials):
                rng = random.Random(f"{seed}/{task.name}/{n}/{d}/{t}")
                key = str(rng.randrange(10_000, 100_000))
                prompt, answer = build(tokenizer, task, hay_ids, n, d, key, rng)
                requests.append((prompt + answer, len(prompt)))
                cells.append((n, d))
    scored = scorer.score(requests, desc=task.name)
    correct = {(n, d): 0 for n in lengths for d in depths}
    logprob = {(n, d): 0.0 for n in lengths for d in depths}
    for cell, s in zip(cells, scored, strict=True):
        correct[cell] += s.is_greedy
        logprob[cell] += s.total / trials
    return Grid(task.name, lengths, depths, trials, seed, correct, logprob)
