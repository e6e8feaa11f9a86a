"""Reading Llama Guard 4's answer, as llama-stack's safety provider decides, plus a score from the logits.

- Text: leading and trailing whitespace and a trailing `<|eot|>` are dropped. `safe` is safe. `unsafe` followed by a
  line of comma-separated codes is unsafe with those codes. Codes the prompt did not list make the answer an
  error (llama-stack: "unexpected response"), as does any other text. An unsafe answer whose codes are all excluded
  is reported safe.
- Score: P(unsafe) at the first answer token. The model first writes `\\n\\n`, so the score is read after the prompt
  and those tokens: p(unsafe) / (p(safe) + p(unsafe)) of the next-token distribution. Neither anchor exposes it; a
  threshold on it trades recall for false positives (`herd guard --threshold`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from herd.tokenizer import Tokenizer

UNSAFE = re.compile(r"^unsafe\s*\n(.*)$", re.DOTALL)
FIRST = "\n\n"  # what the model writes before its verdict


@dataclass
class Verdict:
    safe: bool
    categories: list[str] = field(default_factory=list)  # violated codes (unsafe only)
    error: str = ""  # set when the answer is neither form, or names codes the prompt did not list

    @property
    def label(self) -> str:
        return "error" if self.error else "safe" if self.safe else "unsafe"


def parse_verdict(text: str, listed: Sequence[str], excluded: Sequence[str] = ()) -> Verdict:
    """The verdict of the model's answer `text`; `listed` are the codes its prompt listed."""
    answer = text.strip().removesuffix("<|eot|>").strip()
    if answer == "safe":
        return Verdict(True)
    match = UNSAFE.match(answer)
    if not match:
        return Verdict(False, error=f"unexpected response: {answer[:80]!r}")
    codes = [code.strip() for code in match.group(1).split(",") if code.strip()]
    unknown = [code for code in codes if code not in listed]
    if unknown or not codes:
        return Verdict(False, codes, error=f"unexpected response: unknown code(s) {', '.join(unknown) or '(none)'}")
    flagged = [code for code in codes if code not in set(excluded)]
    return Verdict(not flagged, flagged)


def verdict_ids(tokenizer: Tokenizer) -> tuple[int, int]:
    """The ids of `safe` and `unsafe`: single tokens in Llama 4's vocabulary; where a smaller vocabulary splits a
    word (the demo's BPE writes `un` `safe`), its first token stands for it."""
    safe, unsafe = (tokenizer.encode(word)[0] for word in ("safe", "unsafe"))
    if safe == unsafe:
        raise ValueError("this tokenizer starts 'safe' and 'unsafe' with the same token; P(unsafe) cannot be read")
    return safe, unsafe


def unsafe_probability(logits_V: torch.Tensor, tokenizer: Tokenizer) -> float:
    """p(unsafe) / (p(safe) + p(unsafe)) from the logits of the first answer token."""
    safe, unsafe = verdict_ids(tokenizer)
    pair = torch.stack([logits_V[safe], logits_V[unsafe]]).float()
    return float(torch.softmax(pair, dim=0)[1])


@torch.no_grad()
def unsafe_score(model: torch.nn.Module, tokenizer: Tokenizer, prompt_ids: Sequence[int],
                 pixels: Sequence[torch.Tensor] | None = None) -> float:
    """P(unsafe) of a Guard prompt (`unsafe_probability`): one forward over the prompt and the `\\n\\n` the model
    writes first, its images' pixel tiles in `pixels`."""
    ids_1S = torch.tensor([[*prompt_ids, *tokenizer.encode(FIRST)]], device=model.tok_embeddings.weight.device)
    return unsafe_probability(model(ids_1S, pixels=list(pixels) if pixels else None)[0, -1], tokenizer)
