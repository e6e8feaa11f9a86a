"""Token-id generation by full re-computation: correct for any model, with no cache to get wrong.

This is the plain reference that the cached engine (chunk-ring KV cache, chunked prefill) is
tested against; it costs O(S²) over a generation, so it is for short outputs and tests.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from herd.model import Transformer


@torch.no_grad()
def generate_ids(
    model: Transformer,
    prompt_ids: list[int],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    seed: int | None = None,
    stop_ids: tuple[int, ...] = (),
) -> Iterator[int]:
    """Yield up to `max_new_tokens` new token ids; greedy when temperature is 0, else sampled."""
    if not prompt_ids:
        raise ValueError("the prompt must hold at least one token id")
    vocab = model.config.vocab_size
    bad = [t for t in prompt_ids if not 0 <= t < vocab]
    if bad:
        raise ValueError(f"prompt token id(s) {bad[:5]} outside the vocabulary [0, {vocab})")
    device = model.output.weight.device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    tokens_BS = torch.tensor([prompt_ids], device=device)
    for _ in range(max_new_tokens):
        logits_V = model(tokens_BS, last_only=True)[0, -1].float()
        if temperature > 0:
            probs_V = torch.softmax(logits_V / temperature, dim=-1)
            token = int(torch.multinomial(probs_V, 1, generator=generator))
        else:
            token = int(logits_V.argmax())
        yield token
        if token in stop_ids:
            return
        tokens_BS = torch.cat((tokens_BS, tokens_BS.new_tensor([[token]])), dim=1)
