"""Turning one row of logits into the next token: penalties, temperature, top-k, min-p, top-p.

- Order: repetition penalty (prompt and output, HF's rule) → frequency/presence penalties
  (output only, OpenAI's rule) → temperature → top-k → min-p → top-p → draw.
- Top-p follows Meta's reference: drop a token when the mass *before* it already exceeds p,
  so the token that crosses the threshold is kept (spec §8).
- Temperature 0 is greedy (argmax after penalties). Each request draws from its own seeded
  `torch.Generator`, so a seed reproduces its output whatever else is in the batch.
- Log-probabilities are those of the model's own distribution (raw logits), as vLLM reports;
  `sampling_logprob` gives the chosen token's under the distribution it was drawn from (after penalties,
  temperature and the filters), which RL's importance ratios need. `scored_ids` asks for the model's
  log-probabilities of fixed ids at every step (Llama Guard's P(unsafe) reads `safe` and `unsafe`).
- `filter_logits` is the plain full-vocabulary reference. `choose` gets the same result from the
  top candidates: top-k, min-p and top-p only ever keep a prefix of the sorted vocabulary, so a
  `topk` of 1024 (or k) suffices whenever that prefix ends inside it, and it falls back to the full
  sort otherwise. Pure temperature sampling draws over the whole vocabulary with an exponential race.

Shapes: V vocab, N top alternatives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from herd import cpu_kernels


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.6  # Meta's defaults: temperature 0.6, top-p 0.9
    top_p: float = 0.9
    top_k: int = 0  # 0: off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    max_new_tokens: int = 256
    seed: int | None = None
    stop_ids: tuple[int, ...] | None = None  # None: the model's eos ids
    logprobs: int | None = None  # None: none; N: the chosen token's and the top-N alternatives'
    sampling_logprobs: bool = False  # also the chosen token's log-probability under the sampling distribution
    scored_ids: tuple[int, ...] = ()  # ids whose log-probabilities (the model's own) every step reports

    def __post_init__(self) -> None:
        checks = {
            "temperature >= 0": self.temperature >= 0, "0 < top_p <= 1": 0 < self.top_p <= 1,
            "top_k >= 0": self.top_k >= 0, "0 <= min_p <= 1": 0 <= self.min_p <= 1,
            "repetition_penalty > 0": self.repetition_penalty > 0, "max_new_tokens >= 0": self.max_new_tokens >= 0,
            "logprobs >= 0": self.logprobs is None or self.logprobs >= 0,
        }
        failed = [rule for rule, ok in checks.items() if not ok]
        if failed:
            raise ValueError(f"invalid sampling parameters: need {', '.join(failed)}")

    @property
    def plain_greedy(self) -> bool:
        """Greedy with no penalties: the next token is the first largest raw logit."""
        return self.temperature == 0 and self.repetition_penalty == 1.0 and not (self.frequency_penalty or
                                                                                  self.presence_penalty)

    @property
    def reads_logprobs(self) -> bool:
        """Whether each step reports log-probabilities (logprobs, sampling_logprobs or scored_ids)."""
        return self.logprobs is not None or self.sampling_logprobs or bool(self.scored_ids)


def apply_penalties(logits_V: torch.Tensor, p: SamplingParams, seen_ids: torch.Tensor,
                    output_ids: torch.Tensor) -> torch.Tensor:
    """Penalise tokens already present: `seen_ids` (prompt + output) and `output_ids` (output only)."""
    if p.repetition_penalty != 1.0 and seen_ids.numel():
        ids = seen_ids.unique()
        picked = logits_V[ids]
        logits_V = logits_V.clone()
        logits_V[ids] = torch.where(picked > 0, picked / p.repetition_penalty, picked * p.repetition_penalty)
    if (p.frequency_penalty or p.presence_penalty) and output_ids.numel():
        counts_V = torch.bincount(output_ids, minlength=logits_V.shape[0]).to(logits_V.dtype)
        logits_V = logits_V - p.frequency_penalty * counts_V - p.presence_penalty * (counts_V > 0).to(logits_V.dtype)
    return logits_V


def filter_logits(logits_V: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """Temperature-scaled logits with the tokens outside top-k / min-p / top-p set to -inf."""
    logits_V = logits_V / p.temperature
    if 0 < p.top_k < logits_V.shape[0]:
        kth = torch.topk(logits_V, p.top_k).values[-1]
        logits_V = logits_V.masked_fill(logits_V < kth, float("-inf"))
    probs_V = torch.softmax(logits_V, dim=-1)
    if p.min_p > 0:
        logits_V = logits_V.masked_fill(probs_V < p.min_p * probs_V.max(), float("-inf"))
        probs_V = torch.softmax(logits_V, dim=-1)
    if p.top_p < 1.0:
        sorted_V, order_V = torch.sort(probs_V, descending=True)
        drop_sorted_V = (torch.cumsum(sorted_V, dim=-1) - sorted_V) > p.top_p
        drop_V = torch.zeros_like(drop_sorted_V).scatter_(0, order_V, drop_sorted_V)
        logits_V = logits_V.masked_fill(drop_V, float("-inf"))
    return logits_V


CANDIDATES = 1024


def _sample_reference(logits_V: torch.Tensor, p: SamplingParams, generator: torch.Generator | None) -> int:
    probs_V = torch.softmax(filter_logits(logits_V, p), dim=-1)
    return int(torch.multinomial(probs_V, 1, generator=generator))


def argmax(x_V: torch.Tensor) -> int:
    """`int(x_V.argmax())` (the first maximum; a NaN counts as the largest). torch's CPU argmax kernel is not
    vectorised (~0.8 ms for 202K bf16 logits): herd's native one takes a contiguous CPU row (~20 µs), and
    anything else goes by rows (`argmax_by_rows`)."""
    native = cpu_kernels.argmax(x_V)
    return native if native is not None else argmax_by_rows(x_V)


def argmax_by_rows(x_V: torch.Tensor, width: int = 2048) -> int:
    """`int(x_V.argmax())` in torch, about 8x faster on CPU for a vocabulary: its amax is vectorised there. The
    row maxima of a [V / width, width] view pick the row, one short argmax the position."""
    rows = x_V.shape[0] // width
    if rows < 2:
        return int(x_V.argmax())
    split = rows * width
    best_R = x_V[:split].view(rows, width).amax(-1)
    if split < x_V.shape[0]:
        best_R = torch.cat((best_R, x_V[split:].amax().view(1)))
    r = int(best_R.argmax())
    return r * width + int(x_V[r * width : (r + 1) * width].argmax())


def _overflows(logits_V: torch.Tensor, temperature: float) -> bool:
    """Whether a temperature is so small (e.g. 1e-300) that the largest scaled logit is not finite in fp32; its
    limit is greedy decoding, which `choose` then does rather than draw from NaN probabilities."""
    return not bool(torch.isfinite(logits_V.max() / temperature))


def choose(logits_V: torch.Tensor, p: SamplingParams, generator: torch.Generator | None) -> int:
    """The next token from already penalised logits."""
    if p.temperature == 0:
        return argmax(logits_V)
    logits_V = logits_V.float()
    if _overflows(logits_V, p.temperature):
        return argmax(logits_V)
    V = logits_V.shape[0]
    k = p.top_k if 0 < p.top_k < V else V
    if k == V and p.top_p >= 1.0 and p.min_p == 0:  # the whole vocabulary: an exponential race
        noise_V = torch.empty_like(logits_V).exponential_(1.0, generator=generator)
        return argmax(torch.softmax(logits_V / p.temperature, dim=-1) / noise_V)
    if CANDIDATES < k < V:
        return _sample_reference(logits_V, p, generator)
    scaled_V = logits_V / p.temperature
    values_N, ids_N = torch.topk(scaled_V, min(k, CANDIDATES))
    complete = k <= CANDIDATES  # the candidates are the whole top-k set
    probs_N = torch.exp(values_N - torch.logsumexp(values_N if complete else scaled_V, dim=-1))
    n = len(probs_N)
    if p.min_p > 0:
        n = int((probs_N >= p.min_p * probs_N[0]).sum())
        if n == len(probs_N) and not complete:
            return _sample_reference(logits_V, p, generator)
        probs_N = probs_N[:n] / probs_N[:n].sum()
    if p.top_p < 1.0:
        cumulative_N = torch.cumsum(probs_N, dim=-1)
        if float(cumulative_N[-1]) <= p.top_p and not complete and p.min_p == 0:
            return _sample_reference(logits_V, p, generator)  # the crossing token lies further down
        n = int(((cumulative_N - probs_N) <= p.top_p).sum())
    return int(ids_N[torch.multinomial(probs_N[: max(n, 1)], 1, generator=generator)])


def logprobs_of(logits_V: torch.Tensor, token: int, n: int) -> tuple[float, list[tuple[int, float]]]:
    """The chosen token's log-probability and the top-n (token, log-probability) alternatives."""
    logp_V = torch.log_softmax(logits_V.float(), dim=-1)
    top = torch.topk(logp_V, n) if n else None
    alternatives = list(zip(top.indices.tolist(), top.values.tolist(), strict=True)) if top is not None else []
    return float(logp_V[token]), alternatives


def scored_logprobs(logits_V: torch.Tensor, ids: tuple[int, ...]) -> list[float]:
    """The model's log-probabilities of `ids` (raw logits, as `logprobs_of`)."""
    return torch.log_softmax(logits_V.float(), dim=-1)[list(ids)].tolist()


def sampling_logprob(logits_V: torch.Tensor, p: SamplingParams, token: int) -> float:
    """The log-probability of `token` under the distribution `choose` draws from, given penalised logits:
    temperature, top-k, min-p and top-p applied (0 for greedy, which is deterministic)."""
    if p.temperature == 0 or _overflows(logits_V.float(), p.temperature):
        return 0.0  # greedy, as `choose` draws
    return float(torch.log_softmax(filter_logits(logits_V.float(), p), dim=-1)[token])
