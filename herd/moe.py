"""Mixture of experts (spec §2): a top-k sigmoid router, routed SwiGLU experts, a shared expert.

- Router: logits = x·Rᵀ, top-k on raw logits, score = sigmoid(logit) computed in fp32 and cast.
- The score multiplies the expert *input*: out = Shared(x) + Σ_k Expert_k(score_k · x).
- Optional selection bias (`router_bias`, aux-loss-free balancing): top-k on logits + bias, while the
  score stays sigmoid(logit), so the bias steers load without entering the output.
- `sparse` (default) groups tokens by expert and runs each expert only on its own tokens;
  `dense` runs every token through every expert with zero scores elsewhere, as both
  references do. They are mathematically equal (SwiGLU(0) = 0) and tested equal.

Shapes: T tokens, D model dim, E experts, F expert hidden, A token-expert assignments (T·k).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from herd.ffn import FeedForward


def _top(logits_TE: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest logits and their experts. Top-1 (Llama 4) is a max, which torch.compile fuses into the
    surrounding kernel; `topk` is an external call that splits the compiled decode step at every MoE layer."""
    if k == 1:
        return logits_TE.max(dim=-1, keepdim=True)
    return torch.topk(logits_TE, k, dim=-1)


class Experts(nn.Module):
    """E SwiGLU experts stored input-major, as HF does: w13 [E, D, 2F] (gate | up), w2 [E, F, D]."""

    def __init__(self, n_experts: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.w13 = nn.Parameter(torch.empty(n_experts, dim, 2 * hidden))
        self.w2 = nn.Parameter(torch.empty(n_experts, hidden, dim))

    @property
    def n_experts(self) -> int:
        return self.w13.shape[0]

    def expert(self, e: int, x_TD: torch.Tensor) -> torch.Tensor:
        gate_TF, up_TF = (x_TD @ self.w13[e]).chunk(2, dim=-1)
        return (F.silu(gate_TF) * up_TF) @ self.w2[e]

    # Token counts per expert are data: compiled, every new pattern of counts would recompile. Under
    # torch.compile this dispatch stays eager and the rest of the block is compiled around it.
    @torch.compiler.disable
    def sparse(self, x_TD: torch.Tensor, experts_TK: torch.Tensor, scores_TK: torch.Tensor) -> torch.Tensor:
        """Each expert computes only the tokens routed to it; outputs are summed per token."""
        T, k = experts_TK.shape
        if T * k == 1:  # one token, one expert (decode at batch 1): nothing to group
            return self.expert(int(experts_TK), x_TD * scores_TK)
        order_A = torch.argsort(experts_TK.flatten(), stable=True)
        token_A = order_A // k
        counts_E = torch.bincount(experts_TK.flatten(), minlength=self.n_experts)
        out_AD = self.grouped(x_TD[token_A] * scores_TK.flatten()[order_A, None], counts_E)
        if k == 1:  # every token has exactly one row: a permutation, no accumulation needed
            return out_AD.new_empty(T, out_AD.shape[1]).index_copy_(0, token_A, out_AD)
        return out_AD.new_zeros(T, out_AD.shape[1]).index_add_(0, token_A, out_AD)

    def grouped(self, xs_AD: torch.Tensor, counts_E: torch.Tensor) -> torch.Tensor:
        """Rows sorted by expert (`counts_E[e]` rows for expert e, in order) through their experts. This
        loop reads the counts on the host (a device sync on a GPU); subclasses may keep them on the device."""
        if torch.is_grad_enabled() and self.w13.requires_grad:
            return self._grouped_for_training(xs_AD, counts_E)
        out_AD = torch.empty_like(xs_AD)
        start = 0
        for e, count in enumerate(counts_E.tolist()):
            if count:
                out_AD[start : start + count] = self.expert(e, xs_AD[start : start + count])
                start += count
        return out_AD

    def _grouped_for_training(self, xs_AD: torch.Tensor, counts_E: torch.Tensor) -> torch.Tensor:
        """`grouped` under autograd. The stacked weights are unbound once, so their gradient is one stack of
        the experts' gradients. Indexing `w13[e]` per expert would zero-fill a full [E, …] tensor per expert in
        the backward: 16 experts × 3 weights × 67 MB per layer on the benchmark model, a third of its step."""
        w13_E, w2_E = self.w13.unbind(0), self.w2.unbind(0)
        outs, start = [], 0
        for e, count in enumerate(counts_E.tolist()):
            if count:
                gate_TF, up_TF = (xs_AD[start : start + count] @ w13_E[e]).chunk(2, dim=-1)
                outs.append((F.silu(gate_TF) * up_TF) @ w2_E[e])
                start += count
        return torch.cat(outs) if outs else xs_AD.new_empty(0, self.w2.shape[-1])

    def dense(self, x_TD: torch.Tensor, experts_TK: torch.Tensor, scores_TK: torch.Tensor) -> torch.Tensor:
        """Reference path: every token through every expert, scaled by a zero score where not routed."""
        E = self.n_experts
        scores_TE = torch.zeros(x_TD.shape[0], E, dtype=x_TD.dtype, device=x_TD.device)
        scores_TE.scatter_(1, experts_TK, scores_TK)
        x_ETD = x_TD[None] * scores_TE.T[..., None]
        gate_ETF, up_ETF = torch.bmm(x_ETD, self.w13).chunk(2, dim=-1)
        return torch.bmm(F.silu(gate_ETF) * up_ETF, self.w2).sum(dim=0)


class MoE(nn.Module):
    def __init__(self, dim: int, hidden: int, n_experts: int, top_k: int = 1, router_bias: bool = False) -> None:
        super().__init__()
        self.top_k = top_k
        self.router = nn.Linear(dim, n_experts, bias=False)
        self.register_buffer("router_bias", torch.zeros(n_experts) if router_bias else None)
        self.experts = Experts(n_experts, dim, hidden)
        self.shared_expert = FeedForward(dim, hidden)
        self.impl = "sparse"  # or "dense", the reference path
        # Called as observer(moe, logits_TE, experts_TK) on every forward; training uses it for load
        # statistics and balance losses, so the model itself knows nothing of them.
        self.observer: Callable[[MoE, torch.Tensor, torch.Tensor], None] | None = None

    def route(self, x_TD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The chosen experts [T, k] and their sigmoid scores [T, k] in the activation dtype."""
        logits_TE = self.router(x_TD)
        if self.router_bias is None:
            top_TK, experts_TK = _top(logits_TE, self.top_k)
        else:
            experts_TK = _top(logits_TE + self.router_bias.to(logits_TE.dtype), self.top_k)[1]
            top_TK = logits_TE.gather(-1, experts_TK)
        if self.observer is not None:
            self.observer(self, logits_TE, experts_TK)
        return experts_TK, torch.sigmoid(top_TK.float()).to(x_TD.dtype)

    def forward(self, x_BSD: torch.Tensor) -> torch.Tensor:
        x_TD = x_BSD.reshape(-1, x_BSD.shape[-1])
        experts_TK, scores_TK = self.route(x_TD)
        routed = self.experts.dense if self.impl == "dense" else self.experts.sparse
        out_TD = self.shared_expert(x_TD) + routed(x_TD, experts_TK, scores_TK)
        return out_TD.view_as(x_BSD)
