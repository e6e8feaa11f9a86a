"""Training throughput: herd's train step vs HF transformers' Llama4ForCausalLM, same model, weights and batch.

    .venv/bin/python benchmarks/train_bench.py                                 # herd-10m, fp32, herd and HF
    .venv/bin/python benchmarks/train_bench.py --dtypes float32 bfloat16       # and bf16 autocast
    .venv/bin/python benchmarks/train_bench.py --preset herd-50m --batch 4 --dtypes float32 bfloat16
    .venv/bin/python benchmarks/train_bench.py --steps 1                       # a quick smoke run

The model is a ladder preset's text config (default herd-10m: dim 256, 4 layers, 4 heads / 2 KV
heads, 4 experts top-1 + a shared expert of width 384, vocab 8192, QK-norm, NoPE every 4th layer,
chunk 8192) without the router selection bias, so that transformers loads exactly the same model.
It is built once from seed 0 and saved in HF format under $HERD_BENCH_CACHE (default
~/.cache/herd-bench)/models/train-<preset>-hf; both engines load that directory.

One step, for both engines, is what `herd train` does in `_step`/`_loss` (without its
schedule and balance statistics): logits of inputs [B, S] (under `torch.autocast("cpu", bf16)` for
bfloat16, fp32 master weights), the mean next-token cross-entropy computed in fp32 from the
logits, backward, global-norm clipping to 1.0, fused AdamW (lr 1e-3), zero_grad. HF gets
`input_ids` only (no `labels`, so the loss is computed the same way, not shifted again) and
`use_cache=False`. herd routes each token to its top-1 expert only; HF's reference MoE runs every
token through every expert with zero scores elsewhere.

Every (engine, dtype) runs in its own process, so peak resident memory is its own. The batch is
[B, S+1] random token ids from a seeded generator, the same for both. Steps: 2 warm-up, then
`--steps` timed; the step time is their median, tokens/s = B·S / step time. The first step's loss
(before any update) must agree between the engines; it is printed as a check. The CPU time other
processes took during the timed steps is measured too (from /proc/stat): when they were busy, or
the steps uneven, a warning says the figures are not clean.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

CACHE = Path(os.environ.get("HERD_BENCH_CACHE", Path.home() / ".cache" / "herd-bench"))
THREADS = 2
WARMUP = 2
PRECISION = {"float32": "fp32", "bfloat16": "bf16 autocast"}


def text_config(preset: str):
    import herd

    return herd.config.preset(preset).text.replace(router_bias=False)


def model_dir(preset: str) -> Path:
    return CACHE / "models" / f"train-{preset}-hf"


def ensure_model(preset: str) -> Path:
    """The preset's model (seed 0) in HF format, rebuilt if the cached one has another config."""
    import herd
    from herd.checkpoint import read_config

    path, text = model_dir(preset), text_config(preset)
    if not (path / "config.json").exists() or read_config(path).text != text:
        print(f"building the {preset} model in {path} ...", file=sys.stderr)
        herd.save(herd.build(text, seed=0), path)
    return path


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


def _busy_cpu_s() -> float:
    """CPU seconds spent by the whole machine so far (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:3]) + sum(fields[5:8])) / os.sysconf("SC_CLK_TCK")


def _batch(vocab_size: int, batch: int, seq_len: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (batch, seq_len + 1), generator=g)


def _logits_fn(engine: str, path: Path, attn: str):
    """(model, fn(inputs_BS) -> logits_BSV) in train mode, fp32 weights."""
    if engine == "herd":
        import herd

        model = herd.load(path, dtype=torch.float32)
        return model, model
    import logging

    from transformers import Llama4ForCausalLM

    logging.getLogger("transformers").setLevel(logging.ERROR)
    model = Llama4ForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attn)
    return model, lambda inputs_BS: model(input_ids=inputs_BS, use_cache=False).logits


def run_worker(args: argparse.Namespace) -> dict:
    torch.set_num_threads(THREADS)
    bf16 = args.dtype == "bfloat16"
    path = model_dir(args.preset)
    model, logits_fn = _logits_fn(args.worker, path, args.hf_attn)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    batch_NS = _batch(model.config.vocab_size, args.batch, args.seq_len)
    inputs_NS, targets_NS = batch_NS[:, :-1], batch_NS[:, 1:]

    def step() -> float:
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            logits_NSV = logits_fn(inputs_NS)
        loss = F.cross_entropy(logits_NSV.float().flatten(0, 1), targets_NS.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    losses, times = [], []
    for i in range(WARMUP + args.steps):
        if i == WARMUP:
            start_own, start_all = time.process_time(), _busy_cpu_s()
        start = time.perf_counter()
        losses.append(step())
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
    own = time.process_time() - start_own
    others = _busy_cpu_s() - start_all - own  # CPU time other processes took while the timed steps ran
    step_s = statistics.median(times)
    return {"tokens_per_s": args.batch * args.seq_len / step_s, "step_ms": 1000 * step_s,
            "step_ms_all": [round(1000 * t, 1) for t in times], "loss_first": losses[0], "loss_last": losses[-1],
            "peak_rss_GB": _peak_rss() / 1e9, "cores_busy": own / sum(times),
            "other_cores_busy": max(0.0, others / sum(times))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="herd-10m")
    parser.add_argument("--engines", nargs="+", default=["herd", "hf"], choices=["herd", "hf"])
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=list(PRECISION))
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help=f"timed steps, after {WARMUP} warm-up steps")
    parser.add_argument("--hf-attn", default="sdpa", choices=["sdpa", "eager"], help="HF attn_implementation")
    parser.add_argument("--worker", choices=["herd", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_worker(args)))
        return
    ensure_model(args.preset)
    from herd.config import ModelConfig
    from herd.info import counts

    text = text_config(args.preset)
    n = counts(ModelConfig(text=text))
    print(f"{args.preset}: {n.text / 1e6:.1f}M parameters, {n.active / 1e6:.1f}M active per token; batch "
          f"{args.batch} × {args.seq_len} tokens; {THREADS} threads; median of {args.steps} steps after {WARMUP} "
          f"warm-up; HF attn_implementation={args.hf_attn}")
    rows: dict[tuple[str, str], dict] = {}
    for dtype in args.dtypes:
        for engine in args.engines:
            cmd = [sys.executable, __file__, "--worker", engine, "--dtype", dtype, "--preset", args.preset,
                   "--seq-len", str(args.seq_len), "--batch", str(args.batch), "--steps", str(args.steps),
                   "--hf-attn", args.hf_attn]
            print(f"running {engine} {dtype} ...", file=sys.stderr, flush=True)
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rows[(engine, dtype)] = json.loads(out.stdout.strip().splitlines()[-1])
            r = rows[(engine, dtype)]
            print(f"  step ms {r['step_ms_all']}; cores busy: {r['cores_busy']:.2f} this run, "
                  f"{r['other_cores_busy']:.2f} other processes", file=sys.stderr, flush=True)
            if r["other_cores_busy"] > 0.1 or max(r["step_ms_all"]) > 1.5 * min(r["step_ms_all"]):
                print("  warning: other processes were busy or the steps were uneven: the figures are not clean",
                      file=sys.stderr)
    names = {"herd": "herd", "hf": f"HF transformers ({args.hf_attn})"}
    print("\n| engine | precision | tokens/s | step ms | peak RSS | loss@step1 | loss@last |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for dtype in args.dtypes:
        for engine in args.engines:
            r = rows[(engine, dtype)]
            print(f"| {names[engine]} | {PRECISION[dtype]} | {r['tokens_per_s']:,.0f} | {r['step_ms']:,.1f} | "
                  f"{r['peak_rss_GB']:.2f} GB | {r['loss_first']:.6f} | {r['loss_last']:.6f} |")
        if len(args.engines) == 2:
            h, f = rows[("herd", dtype)], rows[("hf", dtype)]
            print(f"| **herd / HF** | {PRECISION[dtype]} | **{h['tokens_per_s'] / f['tokens_per_s']:.2f}×** | "
                  f"{f['step_ms'] / h['step_ms']:.2f}× | {f['peak_rss_GB'] / h['peak_rss_GB']:.2f}× | "
                  f"Δ {abs(h['loss_first'] - f['loss_first']):.1e} | Δ {abs(h['loss_last'] - f['loss_last']):.1e} |")
    if len(args.engines) == 2:
        print("\nratios: herd ÷ HF for tokens/s, HF ÷ herd for step time and peak RSS (above 1: herd ahead); "
              "Δ: |herd - HF| of the loss")


if __name__ == "__main__":
    main()
