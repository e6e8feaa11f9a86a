"""On-policy distillation data (GKD, Agarwal et al. 2024): the student answers the questions, the teacher grades
every token of the answers, so the student learns on the states it visits itself rather than the data's.

A wrapper over chat data (`herd.train.chat_data.ChatData`): in each step, each micro-batch is, with probability
`fraction` (GKD's λ; drawn from the seed, the step and the micro-batch, so a resumed run redraws the same), made
on-policy. Its packed windows keep their conversations, but each conversation's final answer is replaced by the
student's own sample (temperature `temperature`, at most `max_new_tokens`, seeded the same way) and only those
sampled tokens count. The batch is marked `on_policy`, which `Distill` reads: there, the targets are the student's
own tokens, not the truth, so the loss is the divergence from the teacher alone. Other micro-batches are the
data's as they are.

The student samples with herd's engine on the model being trained (in eval mode, without gradients), so this
runs on one process: a sharded model cannot generate.

Shapes: N rows, S sequence length.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from herd.infer.engine import Engine
from herd.infer.sampling import SamplingParams
from herd.train.batches import Batch, step_samples
from herd.train.chat_data import ChatData, pack_rows


def _last_answer_start(mask: np.ndarray) -> int:
    """Where the conversation's last supervised run (its final answer) begins."""
    supervised = np.flatnonzero(mask)
    gaps = np.flatnonzero(np.diff(supervised) > 1)
    return int(supervised[gaps[-1] + 1] if len(gaps) else supervised[0])


class OnPolicy:
    rows_per_sample = 1

    def __init__(self, data: ChatData, fraction: float, temperature: float, max_new_tokens: int, seed: int) -> None:
        self.data, self.fraction, self.temperature = data, fraction, temperature
        self.max_new_tokens, self.seed = max_new_tokens, seed
        self.seq_len, self.pad_id = data.seq_len, data.pad_id
        self.prompts = [ids[: _last_answer_start(mask)] for ids, mask in zip(data.ids, data.masks, strict=True)]
        self.policy: nn.Module | None = None  # the model being trained, set by the trainer

    def __len__(self) -> int:
        return len(self.data)

    def _draw(self, step: int, rank: int, micro_batch: int) -> tuple[float, int]:
        """(the on-policy coin, the sampling seed) of one micro-batch."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step * 4_099 + rank * 131 + micro_batch)
        return float(torch.rand((), generator=generator)), int(torch.randint(1 << 31, (), generator=generator))

    def micro_batches(self, step: int, batch_size: int, rank: int, world: int, micro: int) -> list[Batch]:
        out = []
        for m, samples in enumerate(step_samples(step, batch_size, rank, world, micro)):
            coin, seed = self._draw(step, rank, m)
            windows = [self.data.window(s) for s in samples]
            out.append(self._sampled(windows, seed) if coin < self.fraction else self.data.batch(windows))
        return out

    @torch.no_grad()
    def _sampled(self, windows: list[list[int]], seed: int) -> Batch:
        """The windows' conversations with the student's answers, packed as the data packs them."""
        if self.policy is None:
            raise RuntimeError("on-policy batches need the policy: set OnPolicy.policy to the model being trained")
        conversations = [i for window in windows for i in window]
        was_training = self.policy.training
        params = SamplingParams(temperature=self.temperature, top_p=1.0, seed=seed, max_new_tokens=self.max_new_tokens)
        completions = Engine(self.policy).generate([self.prompts[i].tolist() for i in conversations], params)
        self.policy.train(was_training)
        answers = dict(zip(conversations, (c.token_ids for c in completions), strict=True))
        rows = []
        for window in windows:
            row = []
            for i in window:
                prompt, answer = self.prompts[i], np.asarray(answers[i], dtype=np.int64)
                row.append((np.concatenate([prompt, answer]), np.arange(len(prompt) + len(answer)) >= len(prompt)))
            rows.append(row)
        batch = pack_rows(rows, self.seq_len, self.pad_id)  # only the sampled answers count
        batch.on_policy = True
        return batch

    def validation(self, n: int) -> Batch:
        return self.data.validation(n)

    def fingerprint(self) -> dict[str, Any]:
        return self.data.fingerprint()
