"""Moderation with Llama Guard 4: its prompt (`prompt`), its answer and score (`verdict`)."""

from herd.moderation.prompt import CATEGORIES, GuardPrompt, GuardPromptError, guard_prompt, selected_categories
from herd.moderation.verdict import Verdict, parse_verdict, unsafe_probability, unsafe_score

__all__ = ["CATEGORIES", "GuardPrompt", "GuardPromptError", "Verdict", "guard_prompt", "parse_verdict",
           "selected_categories", "unsafe_probability", "unsafe_score"]
