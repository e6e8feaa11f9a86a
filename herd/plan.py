"""Does it fit? Memory of a model served with a weight format, a context length and a number of KV slots.

- Weights: exact bytes, module group by module group, as the loaded model holds them: the kept groups (and
  the embedding, norms, router and vision tower) in the activation dtype; quantized groups as codes (int8:
  one byte per weight; int4: half) plus fp32 scales per group of inputs (`herd.quant.schemes`). Equal to the
  bytes of a model built and quantized that way (tested), and to `herd info`'s counts times the dtype's size
  when nothing is quantized.
- KV cache: exact, `KVPool.bytes_per_slot` × slots (chunked layers keep one chunk per slot).
- The decode step's packed LM head: a bf16 head is also held in the layout the native step reads it in
  (`herd.infer.native`, `herd/csrc/packed.h`), its size again, rounded up to 16 rows. Exact.
- Activations: an estimate of the transient peak of serving: one prefill piece of `prefill_chunk` tokens
  through a layer (residual, norms, q|k|v, the SwiGLU hidden, the attention output in fp32), the
  dequantized copy of the largest quantized matrix a prefill multiplies with, and each slot's fp32 logits.

Shapes: D model dim, F hidden, V vocab, E experts, H heads, G kv heads, K head dim.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from herd.config import ModelConfig
from herd.infer.kv_pool import KVPool
from herd.info import vision_count
from herd.quant.apply import DEFAULT_GROUPS, check_groups
from herd.quant.schemes import Scheme, scheme


def _matrix_bytes(n: int, k: int, s: Scheme | None, dtype_bytes: int) -> int:
    """Bytes of an [n, k] weight: plain, or codes and fp32 scales."""
    return n * k * dtype_bytes if s is None else s.nbytes((n, k))


@dataclass
class Plan:
    config: ModelConfig
    scheme: str | None
    groups: tuple[str, ...]
    dtype: torch.dtype
    context: int
    slots: int
    prefill_chunk: int
    weights: dict[str, int] = field(default_factory=dict)  # bytes by module group
    kv: int = 0
    activations: int = 0
    decode_head: int = 0  # the native decode step's packed copy of a bf16 LM head

    @property
    def weight_bytes(self) -> int:
        return sum(self.weights.values())

    @property
    def total(self) -> int:
        return self.weight_bytes + self.kv + self.activations + self.decode_head


def plan(config: ModelConfig, quant: str | None = None, groups: tuple[str, ...] = DEFAULT_GROUPS,
         dtype: torch.dtype = torch.bfloat16, context: int = 8192, slots: int = 1, prefill_chunk: int = 512) -> Plan:
    """The memory of `config` served as described; see the module doc."""
    c, b = config.text, dtype.itemsize
    s = scheme(quant) if quant else None
    groups = check_groups(groups) if s else ()
    q = {g: (s if g in groups else None) for g in ("experts", "shared", "attention", "ffn", "lm_head")}
    D, H, G, K = c.dim, c.n_heads, c.n_kv_heads, c.head_dim
    w = dict.fromkeys(("embedding", "norms and routers", "attention", "dense FFN", "shared expert",
                       "routed experts", "LM head", "vision"), 0)
    w["embedding"] = c.vocab_size * D * b
    w["LM head"] = _matrix_bytes(c.vocab_size, D, q["lm_head"], b)
    w["norms and routers"] = D * b  # final norm
    biggest = 0  # elements of the largest quantized matrix a prefill dequantizes
    widest = 0  # the largest SwiGLU hidden size
    for layer in range(c.n_layers):
        w["norms and routers"] += 2 * D * b
        shapes = [(H * K, D), (G * K, D), (G * K, D), (D, H * K)]
        w["attention"] += sum(_matrix_bytes(n, k, q["attention"], b) for n, k in shapes)
        biggest = max(biggest, *(n * k for n, k in shapes)) if q["attention"] else biggest
        if c.is_moe_layer(layer):
            F = c.expert_dim
            w["norms and routers"] += c.n_experts * D * b + (c.n_experts * b if c.router_bias else 0)
            swiglu = [(2 * F, D), (D, F)]
            w["shared expert"] += _matrix_bytes(F, D, q["shared"], b) * 2 + _matrix_bytes(D, F, q["shared"], b)
            w["routed experts"] += c.n_experts * (_matrix_bytes(2 * F, D, q["experts"], b)
                                                  + _matrix_bytes(D, F, q["experts"], b))
            if q["shared"] or q["experts"]:
                biggest = max(biggest, *(n * k for n, k in swiglu))
        else:
            F = c.ffn_dim
            w["dense FFN"] += _matrix_bytes(F, D, q["ffn"], b) * 2 + _matrix_bytes(D, F, q["ffn"], b)
            biggest = max(biggest, 2 * F * D) if q["ffn"] else biggest
        widest = max(widest, F)
    if config.vision is not None:
        w["vision"] = vision_count(config.vision, D) * b
    P = min(prefill_chunk, context)
    activations = (P * (6 * D + (H + 2 * G) * K + 4 * widest) * b + P * H * K * 4 + biggest * b
                   + slots * c.vocab_size * 4)
    packed = -(-c.vocab_size // 16) * 16 * D * b if dtype == torch.bfloat16 and not q["lm_head"] and D % 2 == 0 else 0
    return Plan(config, s.name if s else None, groups, dtype, context, slots, prefill_chunk, w,
                KVPool.bytes_per_slot(c, context, dtype) * slots, activations, packed)


def fits(config: ModelConfig, budget: int, **kwargs) -> bool:
    return plan(config, **kwargs).total <= budget


def largest_context(config: ModelConfig, budget: int, step: int = 1024, **kwargs) -> int:
    """The longest context (a multiple of `step`, at most the model's) that fits `budget`; 0 if none."""
    lo, hi = 0, config.text.max_seq_len // step
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(config, budget, **(kwargs | {"context": mid * step})):
            lo = mid
        else:
            hi = mid - 1
    return lo * step


def largest_slots(config: ModelConfig, budget: int, limit: int = 4096, **kwargs) -> int:
    """The most KV slots that fit `budget`; 0 if none."""
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(config, budget, **(kwargs | {"slots": mid})):
            lo = mid
        else:
            hi = mid - 1
    return lo


def machine_memory() -> tuple[int, int]:
    """(total, available) bytes of this machine's memory (available from /proc/meminfo where it exists)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    available = total
    try:
        for line in open("/proc/meminfo"):  # noqa: SIM115
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    return total, available
