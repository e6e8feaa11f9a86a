"""Constrained decoding with llguidance: each step's logits masked to the tokens a grammar (JSON Schema, Lark)
still allows, so the output parses by construction.

- `GuidedTokenizer(tokenizer)` gives llguidance herd's vocabulary (the BPE pieces, the special tokens, Llama
  4's split pattern), built once per tokenizer (~1.5 s for Llama 4's 202K ids) and shared by every request.
- `Constraint` follows one sequence: `mask(logits_V)` sets disallowed ids to -inf; `advance(token)` feeds the
  sampled token and says whether the grammar is complete (the sequence then ends with "stop"). Once the
  grammar accepts, the stop tokens are allowed too; after an error only they are.
- JSON is compact (no free whitespace between tokens): a model cannot pad forever.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import torch

from herd.tokenizer import O200K_PATTERN, Tokenizer


class GuidedTokenizer:
    def __init__(self, tokenizer: Tokenizer) -> None:
        import llguidance

        self.tokenizer = tokenizer
        encoder = {tokenizer.piece(i): i for i in range(tokenizer.n_base)}
        self.ll = llguidance.LLTokenizer.from_tiktoken(
            encoder=encoder, special_tokens=dict(tokenizer.special), pattern=O200K_PATTERN,
            eos_token=list(tokenizer.stop_ids), n_vocab=tokenizer.n_words)

    def json_schema(self, schema: dict[str, Any]) -> str:
        """A grammar for JSON documents valid under `schema`; ValueError when the schema is not usable."""
        import llguidance

        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
        except Exception as err:  # llguidance's own message says what it cannot take
            raise ValueError(f"unusable JSON schema: {err}") from None
        message = llguidance.LLMatcher.validate_grammar(grammar)
        if message:
            raise ValueError(f"unusable JSON schema: {message}")
        return grammar

    def constraint(self, grammar: str) -> Constraint:
        return Constraint(self, grammar)


@functools.lru_cache(maxsize=4)
def guided_tokenizer(tokenizer: Tokenizer) -> GuidedTokenizer:
    return GuidedTokenizer(tokenizer)


class Constraint:
    """One sequence's grammar state; see the module doc."""

    def __init__(self, guided: GuidedTokenizer, grammar: str) -> None:
        import llguidance
        import llguidance.torch

        self._lg = llguidance.torch
        self.matcher = llguidance.LLMatcher(guided.ll, grammar)
        self.bitmask = llguidance.torch.allocate_token_bitmask(1, guided.ll.vocab_size)
        self.stop_ids = list(guided.tokenizer.stop_ids)

    def mask(self, logits_V: torch.Tensor) -> torch.Tensor:
        out_1V = logits_V.float().clone()[None]
        if self.matcher.is_error():
            allowed = out_1V[0, self.stop_ids].clone()
            out_1V.fill_(float("-inf"))
            out_1V[0, self.stop_ids] = allowed
            return out_1V[0]
        self._lg.fill_next_token_bitmask(self.matcher, self.bitmask, 0)
        self._lg.apply_token_bitmask_inplace(out_1V, self.bitmask)
        return out_1V[0]

    def advance(self, token: int) -> bool:
        """Consume a sampled token; True when the grammar admits nothing more."""
        if token in self.stop_ids:
            return True
        self.matcher.consume_token(token)
        return self.matcher.is_stopped() or self.matcher.is_error()


def tool_call_schema(tools: list[dict[str, Any]], name: str | None = None) -> dict[str, Any]:
    """A JSON Schema for one call `{"name": ..., "parameters": {...}}` of the tools (or of the tool `name`),
    the JSON form Llama 4 writes calls in and `herd.chat.parse_assistant` reads."""
    options = []
    for tool in tools:
        fn = tool["function"]
        if name is not None and fn["name"] != name:
            continue
        parameters = fn.get("parameters") or {"type": "object"}
        options.append({"type": "object", "properties": {"name": {"const": fn["name"]}, "parameters": parameters},
                        "required": ["name", "parameters"], "additionalProperties": False})
    if not options:
        raise ValueError(f"tool_choice names {name!r}, which is not among the tools")
    return options[0] if len(options) == 1 else {"anyOf": options}


def schema_of(response_format: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON Schema a `response_format` asks for (None for plain text)."""
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise ValueError("response_format json_schema needs json_schema.schema (an object)")
        json.dumps(schema)
        return schema
    raise ValueError(f"response_format type {kind!r} is not one of text, json_object, json_schema")
