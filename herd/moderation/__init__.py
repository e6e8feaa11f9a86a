"""Moderation with Llama Guard 4: its prompt (`prompt`), its answer and score (`verdict`), and the model as a judge
(`judge`)."""

from herd.moderation.judge import Judge, Judgement, judged_ids, judgement_of
from herd.moderation.prompt import (
    CATEGORIES,
    GuardPrompt,
    GuardPromptError,
    guard_conversation,
    guard_prompt,
    selected_categories,
)
from herd.moderation.verdict import Verdict, parse_verdict, unsafe_probability, unsafe_score

__all__ = ["CATEGORIES", "GuardPrompt", "GuardPromptError", "Judge", "Judgement", "Verdict", "guard_conversation",
           "guard_prompt", "judged_ids", "judgement_of", "parse_verdict", "selected_categories", "unsafe_probability",
           "unsafe_score"]
