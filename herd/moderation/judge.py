"""Llama Guard 4 as a judge: conversations in, verdicts and P(unsafe) out, from one generation per conversation.

- The judged ids are the Guard prompt and the `\\n\\n` the model writes first (the HF template stops at the
  assistant header; Meta's chat format, which llama-stack's variant runs through, puts the blank line in the
  prompt). So the first generated token is the verdict word, and its step's log-probabilities of `safe` and
  `unsafe` (`SamplingParams.scored_ids`) give P(unsafe) with no second forward: `verdict.unsafe_score` is
  the plain reference it is tested against.
- `judgement_of` reads one finished generation (the engine's, or `herd serve`'s engine thread's events);
  `Judge` runs conversations through an `Engine` of its own, batched, and the engine's prefix cache keeps
  the category table across calls.
- Flagged: the verdict (llama-stack's reading: unsafe with at least one code not excluded), or with a
  threshold, P(unsafe) at or above it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from herd import chat
from herd.infer.engine import Engine
from herd.infer.sampling import SamplingParams
from herd.moderation.prompt import GuardPrompt, fitted, guard_prompt
from herd.moderation.verdict import FIRST, Verdict, parse_verdict, verdict_ids
from herd.tokenizer import Tokenizer

ANSWER_TOKENS = 16  # "unsafe\nS1,S2,..." fits; a longer answer is an error either way


@dataclass
class Judgement:
    verdict: Verdict
    p_unsafe: float
    flagged: bool
    answer: str  # the model's text after the first blank line
    categories: dict[str, str] = field(default_factory=dict)  # flagged codes and their names

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict.label, "categories": self.categories, "p_unsafe": round(self.p_unsafe, 6),
                "flagged": self.flagged, "answer": self.answer,
                **({"error": self.verdict.error} if self.verdict.error else {})}


def judged_ids(tokenizer: Tokenizer, prompt: GuardPrompt) -> list[int]:
    """What the model reads: the prompt and the blank line it writes first."""
    return [*prompt.ids, *tokenizer.encode(FIRST)]


def answer_params(tokenizer: Tokenizer) -> SamplingParams:
    """Greedy, short, stopping at the end of turn, scoring `safe` and `unsafe` at every step."""
    return SamplingParams(temperature=0.0, max_new_tokens=ANSWER_TOKENS, stop_ids=tuple(tokenizer.stop_ids),
                          scored_ids=verdict_ids(tokenizer))


def judgement_of(tokenizer: Tokenizer, prompt: GuardPrompt, answer_ids: Sequence[int], first_scored: Sequence[float],
                 excluded: Sequence[str] = (), threshold: float | None = None) -> Judgement:
    """The judgement of one generation: `answer_ids` after `judged_ids`, `first_scored` the log-probabilities of
    (safe, unsafe) at its first step."""
    answer = tokenizer.decode([t for t in answer_ids if t not in tokenizer.stop_ids])
    verdict = parse_verdict(answer, list(prompt.categories), excluded)
    p_unsafe = float(torch.softmax(torch.tensor(list(first_scored), dtype=torch.float64), dim=0)[1])
    flagged = (not verdict.safe and not verdict.error) if threshold is None else p_unsafe >= threshold
    names = {code: prompt.categories[code] for code in verdict.categories if code in prompt.categories}
    return Judgement(verdict, p_unsafe, flagged, answer, names if not verdict.error else {})


class Judge:
    """A Guard model judging conversations (OpenAI-style messages, alternating user / assistant; the last
    message is the one judged), batched through an engine of its own."""

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, *, excluded: Sequence[str] = (),
                 categories: dict[str, str] | None = None, variant: str = "hf", threshold: float | None = None,
                 max_tiles: int = 16, engine: Engine | None = None) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.excluded, self.categories, self.variant = list(excluded), categories, variant
        self.threshold, self.max_tiles = threshold, max_tiles
        self.engine = engine or Engine(model)

    def prompt(self, conversation: Sequence[dict[str, Any]]) -> tuple[GuardPrompt, list[torch.Tensor]]:
        """The Guard prompt of a conversation and its images' pixel tiles (raises GuardPromptError, ImageError)."""
        vision = getattr(self.model, "vision", None)
        collector = None
        if vision is not None:
            collector = chat.ImageCollector(self.max_tiles, vision.tokens_per_tile, vision.config.image_size)
        prompt = guard_prompt(self.tokenizer, conversation, excluded=self.excluded, categories=self.categories,
                              variant=self.variant, image_tokens=collector)
        return prompt, list(collector.pixels) if collector is not None else []

    def __call__(self, conversations: Sequence[Sequence[dict[str, Any]]]) -> list[Judgement]:
        """The judgement of each conversation's last message; a conversation too long for the model's context
        loses its oldest exchanges first."""
        limit = self.model.config.max_seq_len - ANSWER_TOKENS
        fits = lambda made: len(judged_ids(self.tokenizer, made[0])) <= limit
        prompts = [fitted(c, self.prompt, fits) for c in conversations]
        if not prompts:
            return []
        images = [pixels or None for _, pixels in prompts]
        done = self.engine.generate([judged_ids(self.tokenizer, p) for p, _ in prompts], answer_params(self.tokenizer),
                                    images=images)
        return [judgement_of(self.tokenizer, prompt, c.token_ids, c.scored[0], self.excluded, self.threshold)
                for (prompt, _), c in zip(prompts, done, strict=True)]
