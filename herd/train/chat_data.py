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
- Images: with a checkpoint that has a vision tower (`images`, its tile settings), user messages may hold
  `image_url` parts (a data URL, or a local path, relative to the JSONL file's directory) or `image` parts
  (a path), as `herd.chat.ImageCollector` reads them: no network. Each image's token layout is rendered in
  place (inputs, never targets). Its pixels are decoded again when a batch needs them (not kept in memory),
  and a batch carries each row's images in token order. A conversation with images must fit a window
  whole: a cut could split an image's tokens.
- Sample s of a run is window s of the epochs laid end to end: a pure function of (seed, s), so a
  resumed run needs only its step count, and the global batch is the same for any number of processes.
  Validation packs `val.jsonl` in file order.

Shapes: N windows, S sequence length.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from herd.chat import ImageCollector, render
from herd.config import VisionConfig
from herd.data.sources import DataError, jsonl_records
from herd.tokenizer import Tokenizer
from herd.train.batches import Batch, EpochOrder, step_samples

log = logging.getLogger("herd")

T = TypeVar("T")


def _resolved(part: dict[str, Any], base: Path) -> dict[str, Any]:
    """An image part whose local path (not a data or file URL) is made absolute against `base`."""
    key = "image_url" if "image_url" in part else "image"
    source = part.get(key)
    url = source.get("url") if isinstance(source, dict) else source
    if not isinstance(url, str) or ":" in url.split("/")[0] or Path(url).is_absolute():
        return part
    absolute = str(base / url)
    return {**part, key: {**source, "url": absolute} if isinstance(source, dict) else absolute}


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


@dataclass(frozen=True)
class ImageSpec:
    """How a vision tower takes images: tiles per image at most, tokens per tile, the tile's side in pixels."""

    max_tiles: int
    tokens_per_tile: int
    tile: int

    @classmethod
    def of(cls, vision: VisionConfig) -> ImageSpec:
        per_tile = int((vision.image_size // vision.patch_size) ** 2 * vision.pixel_shuffle_ratio**2)
        return cls(vision.max_tiles, per_tile, vision.image_size)


def chat_splits(data: str | Path, tokenizer: Tokenizer, seq_len: int, seed: int,
                images: ImageSpec | None = None) -> tuple[ChatData, ChatData | None]:
    """The training and (when there is one) validation conversations of `data`."""
    return jsonl_splits(data, lambda path, shuffle: ChatData(path, tokenizer, seq_len, seed, shuffle, images),
                        "chat data")


def read_conversations(path: Path, key: str = "messages") -> list[dict[str, Any]]:
    """The records of a JSONL file, each checked for a `key` list of messages; errors name the line."""
    out = []
    for number, _, record in jsonl_records(path):
        if not isinstance(record, dict) or not isinstance(record.get(key), list):
            raise DataError(f"{path}:{number}: a record is an object with a `{key}` list of messages")
        out.append(record)
    return out


def pack_rows(rows: list[list[tuple[np.ndarray, np.ndarray]]], seq_len: int, pad_id: int) -> Batch:
    """Rows of conversations, each (ids, loss mask), laid end to end in windows of seq_len + 1 (a conversation cut
    to the room left), each its own document; the rest of a row is padding, a document of its own."""
    n, s = len(rows), seq_len
    tokens_NS = np.full((n, s + 1), pad_id, dtype=np.int64)
    documents_NS = np.zeros((n, s + 1), dtype=np.int64)
    supervised_NS = np.zeros((n, s + 1), dtype=bool)
    for row, conversations in enumerate(rows):
        at = 0
        for k, (ids, mask) in enumerate(conversations):
            take = min(len(ids), s + 1 - at)
            tokens_NS[row, at : at + take] = ids[:take]
            documents_NS[row, at : at + take] = k
            supervised_NS[row, at : at + take] = mask[:take]
            at += take
        documents_NS[row, at:] = len(conversations)
    # Position t predicts token t + 1, which counts when it is supervised (a conversation's first token, its BOS,
    # never is, so no target crosses into the next conversation).
    return Batch(torch.from_numpy(tokens_NS), torch.from_numpy(documents_NS[:, :-1]),
                 torch.from_numpy(supervised_NS[:, 1:]))


class ChatData:
    rows_per_sample = 1

    def __init__(self, path: Path, tokenizer: Tokenizer, seq_len: int, seed: int, shuffle: bool = True,
                 images: ImageSpec | None = None) -> None:
        self.path, self.seq_len, self.seed, self.shuffle, self.spec = path, seq_len, seed, shuffle, images
        self.pad_id = tokenizer.pad_id
        self.ids: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        self.images: list[list[dict[str, Any]]] = []  # per conversation, its image parts (paths resolved)
        no_answer = cut = 0
        for number, record in enumerate(read_conversations(path), start=1):
            parts: list[dict[str, Any]] = []
            try:
                rendered = render(tokenizer, record["messages"], tools=record.get("tools"),
                                  add_generation_prompt=False, image_tokens=self._image_hook(parts, path))
            except ValueError as err:
                raise DataError(f"{path}:{number}: {err}") from None
            if not any(rendered.loss_mask):
                no_answer += 1
                continue
            if len(rendered) > seq_len + 1:
                if parts:
                    raise DataError(f"{path}:{number}: the conversation's {len(rendered):,} tokens, its images' "
                                    f"included, exceed a window of {seq_len + 1:,}; a cut could split an image "
                                    "(raise --seq-len)")
                cut += 1
            self.images.append(parts)
            self.ids.append(np.asarray(rendered.ids[: seq_len + 1], dtype=np.int64))
            self.masks.append(np.asarray(rendered.loss_mask[: seq_len + 1], dtype=bool))
        if not self.ids:
            raise DataError(f"{path}: no conversation with an assistant message to learn from")
        if no_answer or cut:
            log.warning("%s: %d conversation(s) without an assistant message dropped, %d cut to %d tokens",
                        path, no_answer, cut, seq_len + 1)
        self._epochs: list[list[list[int]]] = []  # per epoch, its windows as lists of conversation indices

    @property
    def has_images(self) -> bool:
        return any(self.images)

    def _image_hook(self, parts: list[dict[str, Any]], path: Path) -> Callable[[dict], list[int]]:
        """`render`'s image hook: the part's token layout; the part, its path made absolute, kept in `parts`."""
        def hook(part: dict[str, Any]) -> list[int]:
            if self.spec is None:
                raise ValueError("an image part needs a checkpoint with a vision tower (this one is text-only)")
            part = _resolved(part, path.parent)
            parts.append(part)
            return ImageCollector(self.spec.max_tiles, self.spec.tokens_per_tile, self.spec.tile)(part)
        return hook

    def pixels(self, i: int) -> list[torch.Tensor]:
        """Conversation i's images as pixel tiles, one [tiles, 3, tile, tile] tensor each, in prompt order."""
        if not self.images[i]:
            return []
        assert self.spec is not None
        collector = ImageCollector(self.spec.max_tiles, self.spec.tokens_per_tile, self.spec.tile)
        for part in self.images[i]:
            collector(part)
        return collector.pixels

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

    def batch(self, windows: list[list[int]]) -> Batch:
        """These windows (each a list of conversation indices) as a batch."""
        batch = pack_rows([[(self.ids[i], self.masks[i]) for i in window] for window in windows], self.seq_len,
                          self.pad_id)
        if self.has_images:
            batch.images_N = [[p for i in window for p in self.pixels(i)] for window in windows]
        return batch

    def micro_batches(self, step: int, batch_size: int, rank: int, world: int, micro: int) -> list[Batch]:
        """This process's micro-batches of optimizer step `step` (as `Batches.micro_batches`)."""
        return [self.batch([self.window(s) for s in r]) for r in step_samples(step, batch_size, rank, world, micro)]

    def validation(self, n: int) -> Batch:
        """The first n windows (all of them when fewer), packed in file order."""
        windows = self._pack(0)
        return self.batch(windows[:n])

    def fingerprint(self) -> dict[str, Any]:
        digest = hashlib.sha256()
        for ids, mask, parts in zip(self.ids, self.masks, self.images, strict=True):
            digest.update(ids.tobytes())
            digest.update(mask.tobytes())
            if parts:
                digest.update(json.dumps(parts, sort_keys=True, default=str).encode())
        return {"conversations": len(self.ids), "rendered_sha256": digest.hexdigest()}
