"""MoE load balancing during training, attached to a built model from outside.

- Auxiliary-loss-free balancing (DeepSeek-V3 style): each MoE layer has a per-expert bias added to
  the router logits for expert *selection* only; after every optimizer step the bias of an expert
  that took more than the mean load goes down by `rate`, one that took less goes up. The bias is
  a buffer, not a parameter: no gradient reaches it, and the expert's output weight stays
  sigmoid(logit) without the bias.
- Optional auxiliary loss (Switch style) on the normalised sigmoid affinities:
  E · Σ_e f_e · p_e per layer, f_e the fraction of assignments to e and p_e its mean affinity.
- Load statistics per step (summed over micro-batches and processes): the max/mean load ratio
  averaged over layers, and the number of (layer, expert) pairs that got no token.

Counting is per layer and per micro-batch, overwritten rather than added, so that the
recomputation of activation checkpointing does not count a forward twice.

Shapes: T tokens, E experts, K experts per token.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from herd.model import Transformer
from herd.moe import MoE


class RouterBalance:
    def __init__(self, model: Transformer, bias_rate: float, aux_loss_coef: float) -> None:
        self.layers: list[MoE] = [m for m in model.modules() if isinstance(m, MoE)]
        self.bias_rate, self.aux_loss_coef = bias_rate, aux_loss_coef
        if bias_rate and any(m.router_bias is None for m in self.layers):
            raise ValueError("router bias balancing needs a model built with router_bias=True")
        self._index = {id(m): i for i, m in enumerate(self.layers)}
        n_experts = self.layers[0].router.out_features if self.layers else 0
        self.load_LE = torch.zeros(len(self.layers), n_experts, dtype=torch.float64)
        self._pending: dict[int, torch.Tensor] = {}
        self._aux: dict[int, torch.Tensor] = {}
        for m in self.layers:
            m.observer = self._observe

    def _observe(self, moe: MoE, logits_TE: torch.Tensor, experts_TK: torch.Tensor) -> None:
        if not torch.is_grad_enabled():  # evaluation and generation do not count
            return
        layer, E = self._index[id(moe)], logits_TE.shape[-1]
        counts_E = torch.bincount(experts_TK.flatten(), minlength=E)
        self._pending[layer] = counts_E.detach().to("cpu", torch.float64)
        if self.aux_loss_coef:
            affinity_TE = torch.sigmoid(logits_TE.float())
            affinity_TE = affinity_TE / affinity_TE.sum(-1, keepdim=True)
            fraction_E = counts_E.float() / experts_TK.numel()
            self._aux[layer] = E * (fraction_E * affinity_TE.mean(0)).sum()

    def aux_loss(self) -> torch.Tensor | None:
        """coef · Σ_layers balance loss of the forward just run (None when the loss is off)."""
        if not self.aux_loss_coef or not self._aux:
            return None
        total = torch.stack(list(self._aux.values())).sum()
        self._aux.clear()
        return self.aux_loss_coef * total

    def end_micro_batch(self) -> None:
        for layer, counts_E in self._pending.items():
            self.load_LE[layer] += counts_E
        self._pending.clear()

    @torch.no_grad()
    def end_step(self, all_reduce: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        """Sum the step's load over processes, nudge the selection biases, return the statistics."""
        if not self.layers:
            return {}
        load_LE = all_reduce(self.load_LE.float()).double()
        self.load_LE.zero_()
        mean_L1 = load_LE.mean(-1, keepdim=True)
        if self.bias_rate:
            for layer, moe in enumerate(self.layers):
                bias_E = moe.router_bias
                bias_E += (self.bias_rate * torch.sign(mean_L1[layer] - load_LE[layer])).to(bias_E)
        ratio_L = load_LE.max(-1).values / mean_L1[:, 0].clamp_min(1e-9)
        return {"load_max_mean": round(float(ratio_L.mean()), 4), "dead_experts": int((load_LE == 0).sum())}

    def detach(self) -> None:
        for m in self.layers:
            m.observer = None
