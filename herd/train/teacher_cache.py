"""A teacher's next-token distributions precomputed as top-k into shards, for `herd distill --teacher-topk K`.

Meta distilled from Behemoth forward passes on new data; here the teacher runs once over the token windows a
distillation run will read, and the student trains against the stored top-k, without the teacher in memory.

- Keys: the pretraining windows are aligned (`herd.train.batches`: window w is tokens w·S … w·S + S), so a
  window's teacher distributions are the same whichever run, seed or step reads it. An entry is
  (split, window index); a run computes only the windows it lacks, so several students (seeds, arms) can share
  one cache (`--teacher-cache DIR`) and a run with every window present never loads the teacher.
- Values: per target position, the teacher's k most likely ids (int32) and their log-probabilities under the
  full softmax at τ = 1 (fp32), [windows, S, k].
- Files: `manifest.json` (what the entries depend on: teacher, data, S, k, precision; a different one is an
  error naming the difference) and `part-*.safetensors`, each a run of windows of one split written atomically
  (an interrupted precompute keeps its finished parts).

Shapes: N windows, S sequence length, K top-k, V vocabulary.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F

from herd.config import ConfigError
from herd.files import write_text_atomic


class TopKCache:
    def __init__(self, directory: str | os.PathLike, key: dict[str, Any]) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        manifest = self.dir / "manifest.json"
        if manifest.exists():
            saved = json.loads(manifest.read_text())
            changed = [f"{k}: {saved.get(k)!r} there, {v!r} here" for k, v in key.items() if saved.get(k) != v]
            if changed:
                raise ConfigError(f"the teacher cache {self.dir} holds other distributions ({'; '.join(changed)}); "
                                  "pass another --teacher-cache")
        else:
            write_text_atomic(manifest, json.dumps(key, indent=1, sort_keys=True) + "\n")
        self._files: dict[str, Any] = {}
        self.index: dict[tuple[str, int], tuple[str, int]] = {}
        self.refresh()

    def refresh(self) -> None:
        """Index the parts on disk (those other processes wrote too)."""
        for path in sorted(self.dir.glob("part-*.safetensors")):
            if path.name in self._files:
                continue
            f = safe_open(path, "pt")
            self._files[path.name] = f
            split = f.metadata()["split"]
            for row, window in enumerate(f.get_tensor("windows").tolist()):
                self.index[(split, window)] = (path.name, row)

    def missing(self, split: str, windows: Sequence[int]) -> list[int]:
        return sorted({w for w in windows if (split, w) not in self.index})

    def write(self, split: str, windows: Sequence[int], ids_NSK: torch.Tensor, logps_NSK: torch.Tensor) -> None:
        windows_N = torch.tensor(list(windows), dtype=torch.int64)
        name = f"part-{split}-{hashlib.sha256(windows_N.numpy().tobytes()).hexdigest()[:16]}.safetensors"
        tmp = self.dir / f".{name}.tmp"
        save_file({"windows": windows_N, "ids": ids_NSK.to(torch.int32).contiguous(),
                   "logps": logps_NSK.float().contiguous()}, tmp, metadata={"split": split})
        os.replace(tmp, self.dir / name)
        self.refresh()

    def read(self, split: str, windows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored (ids [N, S, K] int64, log-probabilities [N, S, K] fp32) of these windows."""
        ids, logps = [], []
        for w in windows:
            found = self.index.get((split, w))
            if found is None:
                raise KeyError(f"the teacher cache {self.dir} has no {split} window {w}")
            name, row = found
            f = self._files[name]
            ids.append(f.get_slice("ids")[row : row + 1])
            logps.append(f.get_slice("logps")[row : row + 1])
        return torch.cat(ids).long(), torch.cat(logps)


@torch.no_grad()
def topk_logps(teacher: nn.Module, tokens_NS: torch.Tensor, documents_NS: torch.Tensor | None, k: int,
               bfloat16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's top-k next-token ids and log-probabilities [N, S - 1, K] for windows of S tokens."""
    inputs_NS = tokens_NS[:, :-1]
    with torch.autocast(inputs_NS.device.type, torch.bfloat16, enabled=bfloat16):
        logits_NSV = teacher(inputs_NS, documents_BS=documents_NS)
    logps_NSK, ids_NSK = F.log_softmax(logits_NSV.float(), dim=-1).topk(k, dim=-1)
    return ids_NSK, logps_NSK
