"""Scout → Guard pruning: a model whose every layer is MoE becomes a dense model whose FFN is each layer's shared
expert; the routed experts and the routers are dropped (how Meta made Llama Guard 4 from pre-trained Scout).

- The dense FFN is the shared expert itself (its w1, w3, w2), so with `attention="keep"` the pruned model computes
  exactly what the MoE model computes when its routed experts are zero.
- `attention="guard"` (default) takes Llama Guard 4's attention layout from the `llama-guard-4-12b` preset: RoPE on
  every layer, no chunked attention, its context length. From Scout's config that gives the Guard config exactly.
- Models with dense layers between MoE ones (Maverick) are refused: their dense FFNs are wider than the shared
  experts, and one dense width is what the Guard architecture has.
"""

from __future__ import annotations

import torch

from herd.config import ConfigError, TextConfig, preset
from herd.model import Transformer

ATTENTION = ("guard", "keep")


def dense_config(text: TextConfig, attention: str = "guard") -> TextConfig:
    """The pruned model's text config."""
    if attention not in ATTENTION:
        raise ConfigError(f"attention must be one of {', '.join(ATTENTION)}, got {attention!r}")
    if not text.n_experts:
        raise ConfigError("the model is dense already: nothing to prune")
    if not all(text.is_moe_layer(layer) for layer in range(text.n_layers)):
        raise ConfigError(f"only a model whose every layer is MoE (Scout-shaped) prunes to one dense width; this "
                          f"one has MoE every {text.moe_layer_step} layers")
    out = text.replace(n_experts=0, ffn_dim=text.expert_dim, moe_layer_step=1, router_bias=False)
    if attention == "guard":
        guard = preset("llama-guard-4-12b").text
        out = out.replace(nope_layer_interval=guard.nope_layer_interval,
                          attention_chunk_size=guard.attention_chunk_size, max_seq_len=guard.max_seq_len)
    return out


@torch.no_grad()
def prune_to_dense(model: Transformer, attention: str = "guard") -> Transformer:
    """A new dense model (same dtype and device) with the shared experts as FFNs; `model` is left as it is."""
    text = dense_config(model.config, attention)
    weight = model.tok_embeddings.weight
    with torch.device("meta"):
        dense = Transformer(text, model.vision.config if model.vision is not None else None)
    state = {}
    for name, tensor in model.state_dict().items():
        if ".feed_forward." in name:
            if ".feed_forward.shared_expert." not in name:
                continue  # routed experts, router, router bias
            name = name.replace(".feed_forward.shared_expert.", ".feed_forward.")
        state[name] = tensor
    expected = dense.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ConfigError(f"pruning left missing {missing[:3]} and unexpected {extra[:3]} tensors")
    dense.load_state_dict(state, assign=True)
    dense.init_buffers()
    return dense.to(device=weight.device, dtype=weight.dtype).eval()
