"""Meta's reference Llama 4 text model (``llama_models.llama4.model.Transformer``) as a CPU float32 oracle.

Test helper, not a test file. Typical use::

    params = meta_params(**MAVERICK_LIKE)
    model = build_meta_model(params, seed=0)
    want_BSV = meta_logits(model, tokens_BS)
    write_meta_checkpoint(model, tmp_path, params, n_shards=2)
    # ... load tmp_path through herd's Meta loader and compare logits with want_BSV

- Model parallel is fairscale at world size 1 over a single-process gloo group (an in-memory
  ``HashStore``, no file or port), set up once per process by ``init_model_parallel``.
- Meta calls ``.cuda()`` on the KV caches in ``Attention.__init__``; ``build_meta_model`` makes
  ``torch.Tensor.cuda`` a no-op only while the model is constructed and restores it afterwards.
- Weights are random and seeded (``torch.Generator``), independent of the global RNG.
- ``write_meta_checkpoint`` writes the released on-disk layout (fused ``wqkv``, flattened experts,
  ``mlp.fc1_weight``, ...), i.e. what Meta's load-state-dict pre-hooks convert *from*, sharded
  per model-parallel rank as in spec §6.1.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

# Tiny Scout-like base: MoE in every layer, QK norm, Llama-3 rope scaling (16/1 via ModelArgs defaults),
# iRoPE with a NoPE layer at l=3, chunk 8 and temperature tuning that changes q from position 3 on.
# Sizes: head_dim 64/4 = 16; expert F = 128 and dense Fd = 224 (both even, and different on purpose).
_BASE_PARAMS: dict[str, Any] = {
    "dim": 64,
    "n_layers": 4,
    "n_heads": 4,
    "n_kv_heads": 2,
    "vocab_size": 256,
    "multiple_of": 32,
    "ffn_dim_multiplier": 1.2,
    "ffn_exp": 4.0,
    "norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "use_scaled_rope": True,
    "nope_layer_interval": 4,
    "attention_chunk_size": 8,
    "use_qk_norm": True,
    "attn_temperature_tuning": True,
    "floor_scale": 4.0,
    "attn_scale": 0.1,
    "moe_args": {
        "num_experts": 4,
        "capacity_factor": 1.0,
        "auto_scale_F": True,
        "top_k": 1,
        "interleave_moe_layer_step": 1,
    },
    "max_seq_len": 64,
    "max_batch_size": 4,
}

# Presets: pass as ``meta_params(**PRESET)``; further keyword overrides can follow.
SCOUT_LIKE: dict[str, Any] = {}
"""MoE every layer, QK norm on RoPE layers, scaled rope 16/1 (the base params unchanged)."""

MAVERICK_LIKE: dict[str, Any] = {
    "use_qk_norm": False,
    "use_scaled_rope": False,
    "moe_args": {
        "num_experts": 8,
        "capacity_factor": 1.0,
        "auto_scale_F": True,
        "top_k": 1,
        "interleave_moe_layer_step": 2,
    },
}
"""Dense FFN on layers 0, 2 and MoE on 1, 3 (interleave step 2); no QK norm, no rope scaling."""

DENSE_LIKE: dict[str, Any] = {"moe_args": None, "use_qk_norm": False, "use_scaled_rope": False}
"""No MoE at all: every layer a SwiGLU FFN of width Fd."""

# Keys that a real params.json does not hold: Meta's Llama4.build passes them as keyword arguments
# next to ``**params`` (a duplicate would be a TypeError), so write_meta_checkpoint leaves them out.
_RUNTIME_KEYS = ("max_seq_len", "max_batch_size")

WEIGHT_STD = 0.08
ROUTER_STD = 0.2
NORM_STD = 0.1


def meta_params(**overrides: Any) -> dict[str, Any]:
    """A tiny params.json dict in Meta's ``ModelArgs`` schema.

    Overrides replace top-level keys whole (``moe_args`` included; ``moe_args=None`` gives a dense
    model). Presets: ``SCOUT_LIKE`` (the default), ``MAVERICK_LIKE``, ``DENSE_LIKE``.
    """
    params = copy.deepcopy(_BASE_PARAMS)
    params.update(copy.deepcopy(overrides))
    return params


def init_model_parallel() -> None:
    """Initialise torch.distributed (gloo, world size 1) and fairscale model parallel; idempotent."""
    import fairscale.nn.model_parallel.initialize as fs_init
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    if dist.get_world_size() != 1:
        raise RuntimeError(f"meta_oracle needs world size 1, torch.distributed has {dist.get_world_size()}")
    if not fs_init.model_parallel_is_initialized():
        with contextlib.redirect_stdout(io.StringIO()):  # fairscale prints three banner lines
            fs_init.initialize_model_parallel(1)


@contextlib.contextmanager
def _cpu_float32_no_cuda() -> Iterator[None]:
    """Float32 CPU defaults and ``Tensor.cuda`` returning self, restored on exit."""
    had_own = "cuda" in torch.Tensor.__dict__
    saved_cuda = torch.Tensor.__dict__.get("cuda")
    saved_dtype = torch.get_default_dtype()

    def _no_cuda(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self

    torch.Tensor.cuda = _no_cuda  # type: ignore[method-assign]
    torch.set_default_dtype(torch.float32)
    try:
        with torch.device("cpu"):
            yield
    finally:
        torch.set_default_dtype(saved_dtype)
        if had_own:
            torch.Tensor.cuda = saved_cuda  # type: ignore[method-assign]
        else:
            del torch.Tensor.cuda


@torch.no_grad()
def _randomize_(model: nn.Module, seed: int) -> None:
    """Seeded random weights: norms 1 + 0.1·N(0,1), router N(0, 0.2²), everything else N(0, 0.08²)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        if name.endswith("norm.weight"):  # attention_norm, ffn_norm and the final norm
            p.copy_(1.0 + NORM_STD * noise)
        elif name.endswith("router_DE"):
            p.copy_(ROUTER_STD * noise)
        else:
            p.copy_(WEIGHT_STD * noise)


def build_meta_model(params: dict[str, Any], seed: int = 0) -> nn.Module:
    """Meta's reference text ``Transformer`` in float32 on CPU with seeded random weights, in eval mode."""
    from llama_models.llama4.args import ModelArgs
    from llama_models.llama4.model import Transformer

    if params.get("vision_args") is not None:
        raise ValueError("meta_oracle is text only: vision_args must be None")
    init_model_parallel()
    args = ModelArgs(**params)
    with _cpu_float32_no_cuda():
        model = Transformer(args)
    _randomize_(model, seed)
    return model.eval()


def meta_logits(model: nn.Module, tokens_BS: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
    """Float32 logits [B, S, V] of Meta's forward (a prefill at ``start_pos`` 0 by default).

    The model keeps a KV cache: ``start_pos > 0`` is only valid for a single-token decode step
    (S == 1) after a prefill of the same batch, and Meta's decode applies no chunked mask at all.
    """
    from llama_models.llama4.datatypes import TransformerInput

    bsz, seqlen = tokens_BS.shape
    args = model.args
    if start_pos > 0 and seqlen != 1:
        raise ValueError("Meta's prefill mask is S x S: only start_pos 0 or a one-token decode is valid")
    if bsz > args.max_batch_size or start_pos + seqlen > args.max_seq_len:
        raise ValueError(f"B={bsz}, end={start_pos + seqlen} exceed max_batch_size/max_seq_len of the model")
    out = model(TransformerInput(tokens=tokens_BS.long(), tokens_position=start_pos))
    return out.logits.float().clone()  # clone outside inference mode: a normal tensor


def _rank_slice(t: torch.Tensor, n: int, r: int, dim: int) -> torch.Tensor:
    """Rank r's part of t along dim, as a compact copy (torch.save writes whole storages of views)."""
    if t.shape[dim] % n:
        raise ValueError(f"dim {dim} of shape {tuple(t.shape)} does not divide into {n} shards")
    return t.chunk(n, dim=dim)[r].contiguous().clone()


def _extra_state(kind: str) -> Any:
    if kind == "bytesio":
        return io.BytesIO(b"\x00fp8-meta")
    return torch.empty(0, dtype=torch.uint8)


def _rank_state_dict(
    sd: dict[str, torch.Tensor], args: Any, n: int, r: int, extra_state: str
) -> dict[str, Any]:
    """On-disk state dict of MP rank r out of n, from Meta's in-memory state dict."""
    out: dict[str, Any] = {
        "tok_embeddings.weight": _rank_slice(sd["tok_embeddings.weight"], n, r, 0),
        "norm.weight": sd["norm.weight"].clone(),
        "output.weight": _rank_slice(sd["output.weight"], n, r, 0),
    }
    for i in range(args.n_layers):
        p = f"layers.{i}."
        q, k, v = (_rank_slice(sd[f"{p}attention.{w}.weight"], n, r, 0) for w in ("wq", "wk", "wv"))
        out[f"{p}attention.wqkv.weight"] = torch.cat([q, k, v], dim=0)
        out[f"{p}attention.wqkv.layer_norm_weight"] = sd[f"{p}attention_norm.weight"].clone()
        out[f"{p}attention.wo.weight"] = _rank_slice(sd[f"{p}attention.wo.weight"], n, r, 1)
        if extra_state != "none":
            out[f"{p}attention.wqkv._extra_state"] = _extra_state(extra_state)
            out[f"{p}attention.wo._extra_state"] = _extra_state(extra_state)
        f = f"{p}feed_forward."
        if f"{f}router_DE" in sd:
            w1_EDF, w3_EDF, w2_EFD = (sd[f"{f}experts.{w}"] for w in ("w1", "w3", "w2"))
            n_experts, dim, _ = w1_EDF.shape
            out[f"{f}norm.weight"] = sd[f"{p}ffn_norm.weight"].clone()
            out[f"{f}router_DE"] = sd[f"{f}router_DE"].clone()
            out[f"{f}experts.moe_w_in_eD_F"] = _rank_slice(w1_EDF, n, r, 2).reshape(n_experts * dim, -1)
            out[f"{f}experts.moe_w_swiglu_eD_F"] = _rank_slice(w3_EDF, n, r, 2).reshape(n_experts * dim, -1)
            out[f"{f}experts.moe_w_out_eF_D"] = _rank_slice(w2_EFD, n, r, 1).reshape(-1, dim)
            out[f"{f}w_in_shared_FD.weight"] = _rank_slice(sd[f"{f}shared_expert.w1.weight"], n, r, 0)
            out[f"{f}w_swiglu_FD.weight"] = _rank_slice(sd[f"{f}shared_expert.w3.weight"], n, r, 0)
            out[f"{f}w_out_shared_DF.weight"] = _rank_slice(sd[f"{f}shared_expert.w2.weight"], n, r, 1)
            # Training statistics present in released files; loaders must drop them.
            out[f"{f}global_gate_stats_3E"] = torch.arange(3.0 * n_experts).view(3, n_experts)
            out[f"{f}running_gate_stats_3E"] = torch.ones(3, n_experts)
            out[f"{f}expert_activation_DE"] = torch.zeros(dim, n_experts)
            if extra_state != "none":
                out[f"{f}experts.mlp._extra_state"] = _extra_state(extra_state)
                out[f"{f}mlp_shared._extra_state"] = _extra_state(extra_state)
        else:
            w1 = _rank_slice(sd[f"{f}w1.weight"], n, r, 0)
            w3 = _rank_slice(sd[f"{f}w3.weight"], n, r, 0)
            out[f"{f}mlp.layer_norm_weight"] = sd[f"{p}ffn_norm.weight"].clone()
            out[f"{f}mlp.fc1_weight"] = torch.cat([w1, w3], dim=0)
            out[f"{f}mlp.fc2_weight"] = _rank_slice(sd[f"{f}w2.weight"], n, r, 1)
    return out


def write_meta_checkpoint(
    model: nn.Module,
    directory: str | Path,
    params: dict[str, Any],
    n_shards: int = 1,
    *,
    extra_state: Literal["tensor", "bytesio", "none"] = "tensor",
    dtype: torch.dtype | None = None,
) -> None:
    """Write ``params.json`` and ``consolidated.NN.pth`` (one per MP rank) in Meta's released layout.

    ``_extra_state`` values are empty uint8 tensors by default, so ``torch.load(weights_only=True)``
    reads the files; ``extra_state="bytesio"`` stores ``io.BytesIO`` like the real files, which
    ``weights_only=True`` rejects unless ``io.BytesIO`` is allow-listed (``torch.serialization.
    safe_globals``); ``"none"`` omits them. ``dtype`` (e.g. ``torch.bfloat16``, as released) casts
    the floating tensors; the default keeps float32 for exact parity. params.json drops
    ``max_seq_len``/``max_batch_size`` and keys whose value is None, as real files do.
    """
    from llama_models.llama4.args import ModelArgs

    if extra_state not in ("tensor", "bytesio", "none"):
        raise ValueError(f"extra_state must be 'tensor', 'bytesio' or 'none', not {extra_state!r}")
    skip = set(_RUNTIME_KEYS)
    if ModelArgs(**params).model_dump(exclude=skip) != model.args.model_dump(exclude=skip):
        raise ValueError("params do not describe the model being written")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    on_disk = {k: v for k, v in params.items() if k not in _RUNTIME_KEYS and v is not None}
    (directory / "params.json").write_text(json.dumps(on_disk, indent=2) + "\n")
    for r in range(n_shards):
        shard = _rank_state_dict(sd, model.args, n_shards, r, extra_state)
        if dtype is not None:
            shard = {
                k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                for k, v in shard.items()
            }
        torch.save(shard, directory / f"consolidated.{r:02d}.pth")
