"""Preference pairs for DPO: a prompt and two completions, rendered in Llama 4's chat format.

- `--data` is a JSONL file (every line `{"prompt": [...], "chosen": [...], "rejected": [...]}`: OpenAI-style
  message lists, TRL's conversational preference format; a completion may also be a plain string, one
  assistant message) or a directory holding `train.jsonl` and optionally `val.jsonl`.
- Each side is the prompt and the completion rendered together (`herd.chat.render`, no generation prompt);
  the counted targets are the completion's assistant tokens only, never the prompt's. A side longer than
  seq_len + 1 tokens is cut; a pair left with a side without counted tokens is dropped (both counted in a
  warning).
- A batch holds rows chosen_0, rejected_0, chosen_1, … padded to seq_len + 1, with each row's reference
  log-probability once `reference_N2` is set (`herd.train.objectives.reference_logps`).
- Sample s of a run is pair s of the epochs laid end to end, each epoch a seeded order: a pure function of
  (seed, s), as for pretraining. Validation takes `val.jsonl` in file order.

Shapes: N rows, S sequence length, P pairs.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from herd.chat import render
from herd.data.sources import DataError
from herd.tokenizer import Tokenizer
from herd.train.batches import Batch, EpochOrder, step_samples
from herd.train.chat_data import jsonl_splits, read_conversations

log = logging.getLogger("herd")


def pair_splits(data: str | Path, tokenizer: Tokenizer, seq_len: int, seed: int) -> tuple[PairData, PairData | None]:
    """The training and (when there is one) validation pairs of `data`."""
    return jsonl_splits(data, lambda path, shuffle: PairData(path, tokenizer, seq_len, seed, shuffle),
                        "preference data")


def _completion(value: Any, where: str, key: str) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        return value
    raise DataError(f"{where}: `{key}` is a list of messages or a string")


class PairData:
    rows_per_sample = 2

    def __init__(self, path: Path, tokenizer: Tokenizer, seq_len: int, seed: int, shuffle: bool = True) -> None:
        self.path, self.seq_len, self.seed, self.shuffle = path, seq_len, seed, shuffle
        self.pad_id = tokenizer.pad_id
        self.ids: list[tuple[np.ndarray, np.ndarray]] = []  # per pair: chosen, rejected ids
        self.masks: list[tuple[np.ndarray, np.ndarray]] = []
        cut = dropped = 0
        for number, record in enumerate(read_conversations(path, key="prompt"), start=1):
            where = f"{path}:{number}"
            sides = []
            try:
                prompt_len = len(render(tokenizer, record["prompt"], add_generation_prompt=False))
                for key in ("chosen", "rejected"):
                    if key not in record:
                        raise DataError(f"{where}: no `{key}`")
                    rendered = render(tokenizer, [*record["prompt"], *_completion(record[key], where, key)],
                                      add_generation_prompt=False)
                    mask = np.asarray(rendered.loss_mask, dtype=bool)
                    mask[:prompt_len] = False
                    cut += len(rendered) > seq_len + 1
                    sides.append((np.asarray(rendered.ids[: seq_len + 1], dtype=np.int64), mask[: seq_len + 1]))
            except ValueError as err:
                if isinstance(err, DataError):
                    raise
                raise DataError(f"{where}: {err}") from None
            if not all(mask.any() for _, mask in sides):
                dropped += 1
                continue
            self.ids.append((sides[0][0], sides[1][0]))
            self.masks.append((sides[0][1], sides[1][1]))
        if not self.ids:
            raise DataError(f"{path}: no pair with assistant tokens on both sides")
        if cut or dropped:
            log.warning("%s: %d side(s) cut to %d tokens, %d pair(s) without completion tokens dropped",
                        path, cut, seq_len + 1, dropped)
        self._order = EpochOrder(len(self.ids), seed)
        self.reference_N2: torch.Tensor | None = None  # per pair: the reference's log p(chosen), log p(rejected)

    def __len__(self) -> int:
        return len(self.ids)

    def _pair(self, sample: int) -> int:
        return self._order(sample) if self.shuffle else sample % len(self.ids)

    def batch(self, pairs: list[int]) -> Batch:
        """Rows chosen, rejected for each of `pairs` (indices into this data), padded to seq_len + 1."""
        n, s = 2 * len(pairs), self.seq_len
        tokens_NS = np.full((n, s + 1), self.pad_id, dtype=np.int64)
        counted_NS = np.zeros((n, s + 1), dtype=bool)
        for p, pair in enumerate(pairs):
            for side in range(2):
                ids, mask = self.ids[pair][side], self.masks[pair][side]
                tokens_NS[2 * p + side, : len(ids)] = ids
                counted_NS[2 * p + side, : len(ids)] = mask
        reference_N = None if self.reference_N2 is None else self.reference_N2[pairs].flatten()
        return Batch(torch.from_numpy(tokens_NS), None, torch.from_numpy(counted_NS[:, 1:]), reference_N, group=2)

    def micro_batches(self, step: int, batch_size: int, rank: int, world: int, micro: int) -> list[Batch]:
        """This process's micro-batches of optimizer step `step`, `micro` pairs each."""
        return [self.batch([self._pair(s) for s in r]) for r in step_samples(step, batch_size, rank, world, micro)]

    def validation(self, n: int) -> Batch:
        return self.batch(list(range(min(n, len(self.ids)))))

    def all_pairs(self, size: int) -> list[Batch]:
        """Every pair in file order, `size` pairs a batch (for the reference's log-probabilities)."""
        return [self.batch(list(range(i, min(i + size, len(self.ids))))) for i in range(0, len(self.ids), size)]

    def fingerprint(self) -> dict[str, Any]:
        digest = hashlib.sha256()
        for (c, r), (cm, rm) in zip(self.ids, self.masks, strict=True):
            for array in (c, r, cm, rm):
                digest.update(array.tobytes())
        return {"pairs": len(self.ids), "rendered_sha256": digest.hexdigest()}
