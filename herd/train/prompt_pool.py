"""The prompts an RL run draws from, and the difficulty filter that keeps it on the ones it can learn from.

- Prompt sets: chat JSONL files, each with a weight and a reward (a verifier, `herd.data.filter.load_verifier`).
  A record is a conversation; when its last message is the assistant's, that message is the reference answer the
  verifier compares with, and the rest is the prompt. Each step takes prompts from every set in proportion to the
  weights (largest remainders), so batches mix capabilities.
- Each set is read in a seeded order, epoch after epoch; a cursor per set says where the next prompts come from.
- Pass rates: every group the policy samples (G answers to one prompt) measures that prompt's pass rate, the
  fraction of answers with full reward (≥ 1). The newest measurement replaces older ones, and a periodic profile
  (every `profile_every` steps) measures a slice of the pool with the current policy, so prompts that left the band
  come back when the policy changes.
- Band: with `band` (lo, hi), a prompt whose measured rate p is outside lo < p < hi is skipped (too hard or too
  easy); an unmeasured prompt is taken. `occupancy()` counts the pool below, inside and above the band.
- Curriculum: with `curriculum` naming a numeric record field (e.g. a tier), the levels unlock from the easiest
  over the first `curriculum_fraction` of the run, so hardness grows.
- `state_dict()` holds the cursors and measurements, so a resumed run draws the same prompts.

Shapes: P prompts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from herd.chat import render
from herd.data.filter import Verifier, load_verifier, message_text
from herd.data.sources import DataError, jsonl_records
from herd.tokenizer import Tokenizer
from herd.train.batches import EpochOrder


@dataclass
class PromptSet:
    path: str
    weight: float
    reward: str
    prompts: list[list[int]] = field(default_factory=list)  # rendered, ending with the assistant header
    references: list[str] = field(default_factory=list)
    levels: list[float] = field(default_factory=list)
    verifier: Verifier | None = None


def parse_sets(data: str, reward: str) -> list[tuple[str, float, str]]:
    """`PATH[:WEIGHT][,PATH[:WEIGHT]…]` and `REWARD[,REWARD…]` (one for all sets, or one per set) as
    (path, weight, reward) triples."""
    entries = [e.strip() for e in data.split(",") if e.strip()]
    rewards = [r.strip() for r in reward.split(",") if r.strip()] or ["exact"]
    if len(rewards) not in (1, len(entries)):
        raise DataError(f"{len(entries)} prompt sets but {len(rewards)} rewards: give one reward, or one per set")
    out = []
    for i, entry in enumerate(entries):
        path, sep, weight = entry.rpartition(":")
        if not sep or not _is_number(weight):
            path, weight = entry, "1"
        if float(weight) <= 0:
            raise DataError(f"prompt set {path}: the weight must be > 0, got {weight}")
        out.append((path, float(weight), rewards[i if len(rewards) > 1 else 0]))
    if not out:
        raise DataError("no prompts: pass --data FILE.jsonl (or FILE:WEIGHT,FILE:WEIGHT for a mixture)")
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_set(path: str, weight: float, reward: str, tokenizer: Tokenizer, max_prompt: int,
             curriculum: str = "") -> PromptSet:
    """A prompt set from chat JSONL; a prompt longer than `max_prompt` tokens is an error naming its line."""
    out = PromptSet(path, weight, reward, verifier=load_verifier(reward))
    if not Path(path).is_file():
        raise DataError(f"prompt set {path}: no such file")
    for number, _, record in jsonl_records(Path(path)):
        messages = record.get("messages") if isinstance(record, dict) else None
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise DataError(f"{path}:{number}: a prompt is a record with a non-empty list of `messages`")
        reference = ""
        if messages[-1].get("role") == "assistant":
            reference, messages = message_text(messages[-1]), messages[:-1]
        if not messages:
            raise DataError(f"{path}:{number}: the conversation holds no prompt before its reference answer")
        ids = render(tokenizer, messages, add_generation_prompt=True).ids
        if len(ids) > max_prompt:
            raise DataError(f"{path}:{number}: the prompt has {len(ids)} tokens; at most {max_prompt} fit "
                            "seq_len - max_new_tokens")
        level = 0.0
        if curriculum:
            value = record.get(curriculum)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise DataError(f"{path}:{number}: the curriculum field {curriculum!r} must be a number, got {value!r}")
            level = float(value)
        out.prompts.append(ids)
        out.references.append(reference)
        out.levels.append(level)
    if not out.prompts:
        raise DataError(f"prompt set {path} holds no prompts")
    return out


def quotas(weights: list[float], total: int) -> list[int]:
    """`total` split in proportion to `weights` by largest remainders (ties to the earlier set)."""
    shares = [w / sum(weights) * total for w in weights]
    out = [math.floor(s) for s in shares]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(shares[i] - out[i]), i))
    for i in by_remainder[: total - sum(out)]:
        out[i] += 1
    return out


class PromptPool:
    def __init__(self, sets: list[PromptSet], seed: int, band: tuple[float, float] | None = None,
                 curriculum: bool = False, curriculum_fraction: float = 0.5) -> None:
        self.sets, self.band, self.seed = sets, band, seed
        self.curriculum, self.curriculum_fraction = curriculum, curriculum_fraction
        self.offsets = np.cumsum([0] + [len(s.prompts) for s in sets]).tolist()
        self.orders = [EpochOrder(len(s.prompts), seed + 7919 * i) for i, s in enumerate(sets)]
        self.cursors = [0] * len(sets)
        self.rates: dict[int, float] = {}  # global prompt index -> newest measured pass rate
        self.profile_cursor = 0
        self.levels = sorted({lvl for s in sets for lvl in s.levels})

    def __len__(self) -> int:
        return self.offsets[-1]

    def locate(self, prompt: int) -> tuple[PromptSet, int]:
        i = int(np.searchsorted(self.offsets, prompt, side="right")) - 1
        return self.sets[i], prompt - self.offsets[i]

    def unlocked(self, step: int, steps: int) -> float:
        """The hardest curriculum level open at `step` (every level without a curriculum)."""
        if not self.curriculum or len(self.levels) < 2:
            return math.inf
        progress = min(1.0, step / max(1.0, self.curriculum_fraction * steps))
        return self.levels[min(len(self.levels) - 1, int(progress * (len(self.levels) - 1) + 1e-9))]

    def _eligible(self, prompt: int, level: float, ceiling: float) -> bool:
        if level > ceiling:
            return False
        rate = self.rates.get(prompt)
        return rate is None or self.band is None or self.band[0] < rate < self.band[1]

    def candidates(self, step: int, steps: int, per_step: int, rounds: int) -> tuple[list[list[int]], list[int]]:
        """For one step: each set's candidate prompts (global indices, in order; `rounds` × its quota, the extras
        replacing groups that dynamic sampling drops) and each set's quota of groups. Advances the cursors."""
        ceiling = self.unlocked(step, steps)
        want = quotas([s.weight for s in self.sets], per_step)
        out = []
        for i, (prompt_set, n) in enumerate(zip(self.sets, want, strict=True)):
            picked: list[int] = []
            scanned, size = 0, len(prompt_set.prompts)
            while len(picked) < n * rounds and scanned < size:  # one pass over the order at most: no repeats
                local = self.orders[i](self.cursors[i])
                self.cursors[i] += 1
                scanned += 1
                prompt = self.offsets[i] + local
                if prompt not in picked and self._eligible(prompt, prompt_set.levels[local], ceiling):
                    picked.append(prompt)
            if not picked and n:  # nothing in band: the set's next open prompts regardless of it, rather than stall
                for j in range(size):
                    local = self.orders[i](self.cursors[i] + j)
                    prompt = self.offsets[i] + local
                    if prompt_set.levels[local] <= ceiling and prompt not in picked:
                        picked.append(prompt)
                    if len(picked) == n * rounds:
                        break
                self.cursors[i] += n * rounds
            out.append(picked)
        return out, want

    def profile_slice(self, size: int) -> list[int]:
        """The next `size` prompts of the whole pool to re-measure (all of it when `size` is 0), in rotation."""
        n = len(self)
        size = n if size <= 0 else min(size, n)
        out = [(self.profile_cursor + j) % n for j in range(size)]
        self.profile_cursor = (self.profile_cursor + size) % n
        return out

    def update(self, tried: list[dict[str, Any]]) -> None:
        """Newest pass rates from sampled groups: each {"prompt", "passed", "n"}."""
        for group in tried:
            self.rates[int(group["prompt"])] = group["passed"] / max(group["n"], 1)

    def occupancy(self) -> dict[str, int]:
        """How many prompts are below, inside and above the band, and how many are unmeasured."""
        counts = {"below": 0, "inside": 0, "above": 0, "unmeasured": len(self) - len(self.rates)}
        lo, hi = self.band or (-math.inf, math.inf)
        for rate in self.rates.values():
            counts["below" if rate <= lo else "above" if rate >= hi else "inside"] += 1
        return counts

    def state_dict(self) -> dict[str, Any]:
        return {"cursors": list(self.cursors), "rates": {str(k): v for k, v in sorted(self.rates.items())},
                "profile_cursor": self.profile_cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cursors = [int(c) for c in state["cursors"]]
        self.rates = {int(k): float(v) for k, v in state["rates"].items()}
        self.profile_cursor = int(state["profile_cursor"])

    def fingerprint(self) -> dict[str, Any]:
        return {"sets": [{"path": str(Path(s.path).resolve()), "weight": s.weight, "reward": s.reward,
                          "prompts": len(s.prompts)} for s in self.sets]}
