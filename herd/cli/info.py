"""`herd info PRESET|PATH ...`: architecture, parameter counts, weight memory, KV-cache size."""

from __future__ import annotations

import argparse
from pathlib import Path

from herd.checkpoint import read_config
from herd.config import PRESETS, ModelConfig, preset
from herd.info import BYTES_PER_PARAM, counts, kv_bytes_per_token, kv_cache_bytes

HELP = "Describe a preset or checkpoint: architecture, total/active parameters, memory, KV cache."
CONTEXTS = (8192, 131072, 1048576, 10485760)


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="*", metavar="PRESET|PATH",
                        help=f"preset name ({', '.join(PRESETS)}) or checkpoint directory; none: every preset")


def _gb(n: float) -> str:
    return f"{n / 1e9:,.2f} GB" if n >= 1e8 else f"{n / 1e6:,.1f} MB"


def _tokens(n: int) -> str:
    return f"{n // 1048576}M" if n >= 1048576 else f"{n // 1024}K"


def describe(name: str, config: ModelConfig) -> str:
    t, n = config.text, counts(config)
    nope = [i for i in range(t.n_layers) if t.is_nope_layer(i)]
    chunked = [i for i in range(t.n_layers) if t.chunk_size(i)]
    moe = [i for i in range(t.n_layers) if t.is_moe_layer(i)]
    rope = f"rope theta {t.rope_theta:g}"
    if t.rope_scaling:
        s = t.rope_scaling
        rope += f", llama3 scaling {s.factor:g}/{s.low_freq_factor:g}/{s.high_freq_factor:g}/"
        rope += f"{s.original_max_position_embeddings}"
    attention = [f"{len(chunked)} chunked RoPE layers (chunk {t.attention_chunk_size})" if chunked else
                 f"{t.n_layers - len(nope)} global RoPE layers"]
    if nope:
        tuning = "; temperature tuning" if t.attn_temperature_tuning else ""
        attention.append(f"{len(nope)} global NoPE layers ({', '.join(map(str, nope[:3]))}, …{tuning})")
    lines = [
        name,
        f"  text      {t.n_layers} layers, dim {t.dim}, {t.n_heads} heads / {t.n_kv_heads} kv heads × {t.head_dim}, "
        f"vocab {t.vocab_size:,}",
        f"  attention {' + '.join(attention)}; QK-norm {'on' if t.use_qk_norm else 'off'}; {rope}",
    ]
    if moe:
        dense = t.n_layers - len(moe)
        lines.append(f"  ffn       {len(moe)} MoE layers: {t.n_experts} experts (top-{t.top_k}) + shared expert, "
                     f"hidden {t.expert_dim}" + (f"; {dense} dense layers, hidden {t.ffn_dim}" if dense else ""))
    else:
        lines.append(f"  ffn       {t.n_layers} dense SwiGLU layers, hidden {t.ffn_dim}")
    if config.vision:
        v = config.vision
        lines.append(f"  vision    {v.n_layers} layers, dim {v.dim}, {v.image_size}px tiles of {v.patch_size}px "
                     f"patches, up to {v.max_tiles} tiles")
    split = f" (text {n.text:,}; vision {n.vision:,})" if n.vision else ""
    lines.append(f"  params    {n.total:,} total{split}; {n.active:,} active per token")
    lines.append("  weights   " + ", ".join(f"{k} {_gb(n.total * b)}" for k, b in BYTES_PER_PARAM.items())
                 + " (before quantization scales)")
    global_bytes, per_layer, n_chunked = kv_bytes_per_token(t)
    kv = f"  kv cache  bf16: {global_bytes:,} B/token on {t.n_layers - n_chunked} global layers"
    if n_chunked:
        kv += f" + {n_chunked} chunked layers × {per_layer:,} B/token capped at {t.attention_chunk_size} tokens"
    lines.append(kv)
    lines.append("            per sequence: " + ", ".join(
        f"{_tokens(c)} {_gb(kv_cache_bytes(t, c))}" for c in CONTEXTS if c <= max(t.max_seq_len, CONTEXTS[0])))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    for i, name in enumerate(args.models or list(PRESETS)):
        config = preset(name) if name in PRESETS or not Path(name).exists() else read_config(name)
        print(("\n" if i else "") + describe(name, config))
    return 0
