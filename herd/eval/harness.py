"""herd as an lm-evaluation-harness model: `HerdLM` answers lm-eval's three request kinds in-process.

- `loglikelihood` (lm-eval's `TemplateLM` splits context and continuation; `_loglikelihood_tokens` scores
  them with `herd.eval.scoring.Scorer`, as `herd eval choice` does, so both give the same numbers),
- `loglikelihood_rolling` (perplexity tasks: lm-eval's own disjoint rolling windows of `max_length`),
- `generate_until` (herd's `Engine`, continuous batching, cut at the first `until` string).

`evaluate` runs tasks through `lm_eval.simple_evaluate`, with `include_path` for local task YAMLs. lm-eval is
imported only here, so herd does not need it unless this module is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lm_eval.api.model import TemplateLM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from torch import nn
from tqdm import tqdm

from herd.eval.scoring import Scorer
from herd.infer.engine import Engine
from herd.infer.sampling import SamplingParams
from herd.tokenizer import TextStream, Tokenizer


class HerdLM(TemplateLM):
    """A loaded herd model and its tokenizer behind lm-eval's `LM` interface."""

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, *, max_length: int = 4096, batch_tokens: int = 4096,
                 engine: Engine | None = None, max_gen_toks: int = 256) -> None:
        super().__init__()
        self.model, self.tokenizer_ = model, tokenizer
        self._max_length = max_length
        self.max_gen_toks = max_gen_toks
        self.scorer = Scorer(model, batch_tokens=batch_tokens)
        self._engine = engine

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer_.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.tokenizer_.bos_id

    @property
    def max_length(self) -> int:
        return self._max_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """The text's ids, after BOS unless `add_special_tokens` is False (as Llama tokenizers in HF do)."""
        return self.tokenizer_.encode(string, bos=add_special_tokens is not False)

    def tok_decode(self, tokens: Sequence[int], **kwargs: Any) -> str:
        return self.tokenizer_.decode(tokens)

    def _loglikelihood_tokens(self, requests: list[tuple[tuple[str, str], list[int], list[int]]],
                              disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        scorer_requests = []
        for _, context_ids, continuation_ids in requests:
            if not continuation_ids:
                raise ValueError("lm-eval sent an empty continuation")
            tokens = (context_ids + continuation_ids)[-self.max_length :]  # left-truncated, as HF's LM does
            scorer_requests.append((tokens, len(tokens) - len(continuation_ids)))
        self.scorer.progress = not disable_tqdm
        scored = self.scorer.score(scorer_requests, desc="loglikelihood")
        out = [(s.total, s.is_greedy) for s in scored]
        for (pair, _, _), answer in zip(requests, out, strict=True):
            self.cache_hook.add_partial("loglikelihood", pair, answer)
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        windows, owner = [], []
        for i, request in enumerate(requests):
            (string,) = request.args
            ids = self.tok_encode(string, add_special_tokens=False)
            for context, continuation in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=ids, prefix_token=self.prefix_token_id, max_seq_len=self.max_length, context_len=1)):
                windows.append((context + continuation, len(context)))
                owner.append(i)
        self.scorer.progress = not disable_tqdm
        totals = [0.0] * len(requests)
        for i, s in zip(owner, self.scorer.score(windows, desc="loglikelihood_rolling"), strict=True):
            totals[i] += s.total
        for request, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        if self._engine is None:
            self._engine = Engine(self.model)
        out = []
        for request in tqdm(requests, desc="generate_until", disable=disable_tqdm):
            context, gen_kwargs = request.args
            out.append(self._generate(context, dict(gen_kwargs)))
            self.cache_hook.add_partial("generate_until", request.args, out[-1])
        return out

    def _generate(self, context: str, kwargs: dict[str, Any]) -> str:
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
        temperature = float(kwargs.pop("temperature", 0.0)) if kwargs.pop("do_sample", False) else 0.0
        params = SamplingParams(temperature=temperature, top_p=float(kwargs.pop("top_p", 1.0)),
                                max_new_tokens=max_new, seed=kwargs.pop("seed", 1234))
        prompt = self.tok_encode(context)[-max(1, self.max_length - max_new) :]
        stream = TextStream(self.tokenizer_, until)

        def stop(_row: int, token: int) -> bool:
            stream.push(token)
            return stream.stopped

        (completion,) = self._engine.generate([prompt], params, stop_fn=stop)
        text = self.tokenizer_.decode(completion.token_ids)
        cuts = [i for i in (text.find(s) for s in until) if i >= 0]
        return text[: min(cuts)] if cuts else text


def evaluate(lm: HerdLM, tasks: list[str], include_path: str | None = None, limit: int | None = None,
             num_fewshot: int | None = None, seed: int = 0) -> dict[str, Any]:
    """lm-eval's results dict for `tasks` (names, including those defined in `include_path`'s YAMLs)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    return simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit, num_fewshot=num_fewshot,
                           random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
                           log_samples=True)
