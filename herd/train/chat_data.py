"""Chat data for supervised fine-tuning: conversations rendered in Llama 4's chat format, packed into windows.

- `--data` is a JSONL file (every line `{"messages": [...], "tools": [...]}`, OpenAI style, `tools`
  optional) or a directory holding `train.jsonl` and optionally `val.jsonl`.
- Each conversation is rendered by `herd.chat.render` without a generation prompt. Its loss mask covers
  the assistant's tokens only (content, tool-call text, end token); conversations with no assistant
  token are dropped and counted.
- Packing: each epoch takes the conversations in a seeded order and fills windows of seq_len + 1 tokens
  next-fit. A window's rest is padding: its own document, no loss. A conversation longer than a window
  is cut to the window and counted. Every window carries its documents, so attention stays inside a
  conversation and positions restart at its BOS.
- Sample s of a run is window s of the epochs laid end to end: a pure function of (seed, s), so a
  resumed run needs only its step count, and the global batch is the same for any number of processes.
  Validation packs `val.jsonl` in file order.

Shapes: N windows, S sequence length.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from herd.chat import render
from herd.data.sources import DataError, jsonl_records
from herd.tokenizer import Tokenizer
from herd.train.batches import Batch, EpochOrder, step_samples

log = logging.getLogger("herd")

IMAGE_PARTS = ("image_url", "image")
T = TypeVar("T")


def jsonl_splits(data: str | Path, open_split: Callable[[Path, bool], T], what: str) -> tuple[T, T | None]:
    """`data` as (train, val or None): a JSONL file (training only), or a directory holding train.jsonl and
    optionally val.jsonl; `open_split(path, shuffle)` reads one (validation unshuffled)."""
    path = Path(data)
    if path.is_dir():
        train, val = path / "train.jsonl", path / "val.jsonl"
        if not train.is_file():
            raise DataError(f"{path} has no train.jsonl ({what}: a JSONL file, or a directory with train.jsonl and "
                            "optionally val.jsonl)")
        return open_split(train, True), open_split(val, False) if val.is_file() else None
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist")
    return open_split(path, True), None


def is_chat_data(data: str | Path) -> bool:
    """Whether `data` is chat JSONL (a file, or a directory with train.jsonl) rather than token shards."""
    path = Path(data)
    return path.is_file() or (path / "train.jsonl").is_file()


def chat_splits(data: str | Path, tokenizer: Tokenizer, seq_len: int, seed: int) -> tuple[ChatData, ChatData | None]:
    """The training and (when there is one) validation conversations of `data`."""
    return jsonl_splits(data, lambda path, shuffle: ChatData(path, tokenizer, seq_len, seed, shuffle), "chat data")


def read_conversations(path: Path, key: str = "messages") -> list[dict[str, Any]]:
    """The records of a JSONL file, each checked for a `key` list of messages; errors name the line."""
    out = []
    for number, _, record in jsonl_records(path):
        if not isinstance(record, dict) or not isinstance(record.get(key), list):
            raise DataError(f"{path}:{number}: a record is an object with a `{key}` list of messages")
        out.append(record)
    return out


class ChatData:
    rows_per_sample = 1

    def __init__(self, path: Path, tokenizer: Tokenizer, seq_len: int, seed: int, shuffle: bool = True) -> None:
        self.path, self.seq_len, self.seed, self.shuffle = path, seq_len, seed, shuffle
        self.pad_id = tokenizer.pad_id
        self.ids: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        no_answer = cut = 0
        for number, record in enumerate(read_conversations(path), start=1):
            if any(isinstance(part, dict) and part.get("type") in IMAGE_PARTS
                   for m in record["messages"] if isinstance(m.get("content"), list) for part in m["content"]):
                raise DataError(f"{path}:{number}: image parts in fine-tuning data are not supported yet "
                                "(text and tool calls are)")
            try:
                rendered = render(tokenizer, record["messages"], tools=record.get("tools"),
                                  add_generation_prompt=False)
            except ValueError as err:
                raise DataError(f"{path}:{number}: {err}") from None
            if not any(rendered.loss_mask):
                no_answer += 1
                continue
            if len(rendered) > seq_len + 1:
                cut += 1
            self.ids.append(np.asarray(rendered.ids[: seq_len + 1], dtype=np.int64))
            self.masks.append(np.asarray(rendered.loss_mask[: seq_len + 1], dtype=bool))
        if not self.ids:
            raise DataError(f"{path}: no conversation with an assistant message to learn from")
        if no_answer or cut:
            log.warning("%s: %d conversation(s) without an assistant message dropped, %d cut to %d tokens",
                        path, no_answer, cut, seq_len + 1)
        self._epochs: list[list[list[int]]] = []  # per epoch, its windows as lists of conversation indices

    def __len__(self) -> int:
        return len(self.ids)

    def _pack(self, epoch: int) -> list[list[int]]:
        order = (EpochOrder(len(self.ids), self.seed).permutation(epoch).tolist() if self.shuffle
                 else list(range(len(self.ids))))
        windows: list[list[int]] = []
        current: list[int] = []
        used = 0
        for i in order:
            if current and used + len(self.ids[i]) > self.seq_len + 1:
                windows.append(current)
                current, used = [], 0
            current.append(i)
            used += len(self.ids[i])
        windows.append(current)
        return windows

    def window(self, sample: int) -> list[int]:
        epoch = 0
        while True:
            if epoch == len(self._epochs):
                self._epochs.append(self._pack(epoch))
            if sample < len(self._epochs[epoch]):
                return self._epochs[epoch][sample]
            sample -= len(self._epochs[epoch])
            epoch += 1

    def _batch(self, windows: list[list[int]]) -> Batch:
        n, s = len(windows), self.seq_len
        tokens_NS = np.full((n, s + 1), self.pad_id, dtype=np.int64)
        documents_NS = np.zeros((n, s + 1), dtype=np.int64)
        supervised_NS = np.zeros((n, s + 1), dtype=bool)
        for row, window in enumerate(windows):
            at = 0
            for k, i in enumerate(window):
                ids = self.ids[i]
                tokens_NS[row, at : at + len(ids)] = ids
                documents_NS[row, at : at + len(ids)] = k
                supervised_NS[row, at : at + len(ids)] = self.masks[i]
                at += len(ids)
            documents_NS[row, at:] = len(window)  # the padding: a document of its own, never a target
        # Position t predicts token t + 1, which counts when it is supervised (a conversation's first token,
        # its BOS, never is, so no target crosses into the next conversation).
        return Batch(torch.from_numpy(tokens_NS), torch.from_numpy(documents_NS[:, :-1]),
                     torch.from_numpy(supervised_NS[:, 1:]))

    def micro_batches(self, step: int, batch_size: int, rank: int, world: int, micro: int) -> list[Batch]:
        """This process's micro-batches of optimizer step `step` (as `Batches.micro_batches`)."""
        return [self._batch([self.window(s) for s in r]) for r in step_samples(step, batch_size, rank, world, micro)]

    def validation(self, n: int) -> Batch:
        """The first n windows (all of them when fewer), packed in file order."""
        windows = self._pack(0)
        return self._batch(windows[:n])

    def fingerprint(self) -> dict[str, Any]:
        digest = hashlib.sha256()
        for ids, mask in zip(self.ids, self.masks, strict=True):
            digest.update(ids.tobytes())
            digest.update(mask.tobytes())
        return {"conversations": len(self.ids), "rendered_sha256": digest.hexdigest()}
