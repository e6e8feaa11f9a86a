"""Reading a `herd data prepare` dataset: one split's shards as a single memory-mapped token stream.

- Everything is checked against manifest.json up front (format, split, every shard's size), so a truncated
  or foreign directory fails at open, not at step 40,000 of a training run.
- Shards are memory-mapped lazily and read-only: opening costs nothing per shard (each map holds a file
  descriptor, and big corpora have many shards), and the page cache is shared by every process reading.
- A TokenShards pickles without its maps (it is reopened on first read), so it can be handed to DataLoader
  workers or spawned processes without copying the data.
"""

from __future__ import annotations

import bisect
import json
import operator
import os
from pathlib import Path
from typing import Any

import numpy as np

from herd.data.prepare import FORMAT, MANIFEST
from herd.data.sources import DataError

__all__ = ["TokenShards", "read_manifest"]

_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


def read_manifest(data_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a prepared dataset; DataError if `data_dir` is not one."""
    path = Path(data_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{data_dir} is not a prepared dataset: no {MANIFEST} (run `herd data prepare`)") from None
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise DataError(f"{path}: format is {found!r}, expected {FORMAT!r}")
    return manifest


class TokenShards:
    """The token stream of one split of a prepared dataset.

    Attributes: `manifest`, `split`, `dtype` (on disk), `n_tokens` (also `len()`), `bos_id`, `eos_id`, `n_words`.
    """

    def __init__(self, data_dir: str | os.PathLike, split: str = "train") -> None:
        self.path = Path(data_dir)
        self.split = split
        self.manifest = read_manifest(self.path)
        where = self.path / MANIFEST
        try:
            splits = self.manifest["splits"]
            known = split in splits
            dtype_name = self.manifest["dtype"]
            tokenizer = self.manifest["tokenizer"]
            self.bos_id, self.eos_id, self.n_words = (int(tokenizer[k]) for k in ("bos_id", "eos_id", "n_words"))
            if known:
                entries = [(str(s["file"]), int(s["tokens"])) for s in splits[split]["shards"]]
                expected_total = int(splits[split]["tokens"])
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"{where}: malformed manifest ({type(err).__name__}: {err})") from None
        if not known:
            raise DataError(f"{self.path}: no split {split!r} (it has {', '.join(map(repr, splits))})")
        if dtype_name not in _DTYPES:
            raise DataError(f"{where}: unsupported dtype {dtype_name!r}")
        self.dtype: np.dtype = _DTYPES[dtype_name]
        self._files: list[Path] = []
        self._starts = [0]  # stream offset of each shard, then the total
        for name, tokens in entries:
            if Path(name).name != name:
                raise DataError(f"{where}: shard name {name!r} is not a plain file name")
            file = self.path / name
            try:
                size = file.stat().st_size
            except OSError as err:
                raise DataError(f"{file}: shard listed in the manifest cannot be read ({err.strerror})") from None
            if size != tokens * self.dtype.itemsize:
                raise DataError(f"{file}: {size} bytes, the manifest says {tokens} {self.manifest['dtype']} tokens "
                                f"({tokens * self.dtype.itemsize} bytes): incomplete or modified")
            self._files.append(file)
            self._starts.append(self._starts[-1] + tokens)
        self.n_tokens: int = self._starts[-1]
        if self.n_tokens != expected_total:
            raise DataError(f"{where}: split {split!r} has {expected_total} tokens but its shards hold {self.n_tokens}")
        self._maps: list[np.ndarray | None] = [None] * len(self._files)

    def __len__(self) -> int:
        return self.n_tokens

    def _map(self, i: int) -> np.ndarray:
        if self._maps[i] is None:
            tokens = self._starts[i + 1] - self._starts[i]
            # np.memmap cannot map an empty file
            self._maps[i] = (np.memmap(self._files[i], dtype=self.dtype, mode="r", shape=(tokens,)) if tokens
                             else np.empty(0, self.dtype))
        return self._maps[i]

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the split's stream as a fresh int64 array, across shards."""
        start, length = operator.index(start), operator.index(length)
        if start < 0 or length < 0 or start + length > self.n_tokens:
            raise IndexError(f"tokens [{start}, {start + length}) are outside [0, {self.n_tokens}) of {self.split!r}")
        out = np.empty(length, np.int64)
        i = bisect.bisect_right(self._starts, start) - 1
        done = 0
        while done < length:
            shard = self._map(i)
            offset = start + done - self._starts[i]
            take = min(length - done, len(shard) - offset)
            out[done:done + take] = shard[offset:offset + take]
            done += take
            i += 1
        return out

    def __getstate__(self) -> dict[str, Any]:
        # Pickling a memmap copies its data; the maps are reopened on demand instead.
        return {**self.__dict__, "_maps": [None] * len(self._files)}

    def __repr__(self) -> str:
        return f"TokenShards({str(self.path)!r}, split={self.split!r}, tokens={self.n_tokens:,}, " \
               f"shards={len(self._files)})"
