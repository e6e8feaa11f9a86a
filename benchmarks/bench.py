"""herd vs HF transformers on the same Llama-4-shaped model and inputs, on this machine.

    .venv/bin/python benchmarks/bench.py                      # float32 and bfloat16, herd and HF
    .venv/bin/python benchmarks/bench.py --engines herd --dtypes bfloat16 --prefill 512 2048 8192
    .venv/bin/python benchmarks/bench.py --dtypes bfloat16 --prefill 8192 16384 --prefill-only   # memory vs length

The benchmark model (issue #5): vocab 202,048, hidden 512, 8 layers, 8 heads / 2 KV heads, head dim
64, 16 experts (top-1) + a shared expert of width 1024, MoE in every layer, QK-norm, NoPE every 4th
layer, chunk 8192, rope theta 500000, untied embeddings: 426M parameters, random weights, saved once
in HF format under $HERD_BENCH_CACHE (default ~/.cache/herd-bench) and loaded by both engines.

Every (engine, dtype) runs in its own process, so peak resident memory is its own. Workloads:
prefill of S tokens (time to the last position's logits, median of 3), time to first token of a
64-token prompt, and decode at batch 1 and 8 (tokens/s after the first token, median of 3). The
machine's memory bandwidth and matmul peak are measured too, so decode can be read as a fraction
of the bandwidth ceiling (bytes of active weights per token / bandwidth).
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

CACHE = Path(os.environ.get("HERD_BENCH_CACHE", Path.home() / ".cache" / "herd-bench"))
MODEL_DIR = CACHE / "models" / "bench-426m-hf"
THREADS = 2


def bench_config():
    from herd.config import TextConfig

    return TextConfig(
        vocab_size=202048, dim=512, n_layers=8, n_heads=8, n_kv_heads=2, head_dim=64, n_experts=16, top_k=1,
        expert_dim=1024, moe_layer_step=1, use_qk_norm=True, nope_layer_interval=4, attention_chunk_size=8192,
        rope_theta=500000.0, rope_scaling=None, max_seq_len=262144,
    )


def ensure_model() -> Path:
    if not (MODEL_DIR / "config.json").exists():
        import herd

        print(f"building the benchmark model in {MODEL_DIR} ...", file=sys.stderr)
        herd.save(herd.build(bench_config(), seed=0), MODEL_DIR)
    return MODEL_DIR


def decode_bytes(model) -> int:
    """Bytes of weights a one-row decode step reads: every weight once (the LM head, attention, routers,
    norms, shared experts, dense FFNs), one routed expert per MoE layer, one embedding row. Views of one
    storage (fused projections and their parts) count once. Decode tok/s times this, over the read
    bandwidth, is the fraction of the memory-bandwidth roofline reached."""
    from herd.moe import Experts

    routed = {id(t) for m in model.modules() if isinstance(m, Experts)
              for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]}
    embedding, experts = model.tok_embeddings.weight, max(model.config.n_experts, 1)
    seen, total = set(), embedding.shape[1] * embedding.element_size()
    for t in [*model.parameters(), *model.buffers()]:
        storage = t.untyped_storage()
        if t is embedding or storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes() // (experts if id(t) in routed else 1)
    return total


def _median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


def bandwidth() -> float:
    """Streaming read bandwidth (GB/s) with THREADS threads: the sum of 1 GiB of fp32."""
    torch.set_num_threads(THREADS)
    a = torch.ones(256 * 2**20)
    a.sum()
    return a.numel() * 4 / _median_time(a.sum, 5) / 1e9


def machine() -> dict:
    """Streaming read bandwidth (GB/s) and matmul peak (GFLOP/s) with THREADS threads."""
    out = {"bandwidth_GBps": bandwidth()}
    for dtype in (torch.float32, torch.bfloat16):
        m = torch.randn(2048, 2048).to(dtype)
        m @ m
        out[f"matmul_{dtype}_GFLOPs".replace("torch.", "")] = 2 * 2048**3 / _median_time(lambda m=m: m @ m, 3) / 1e9
    return out


def _prompts(n: int, length: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(length)
    return torch.randint(0, 200000, (n, length), generator=g).tolist()


def herd_prefill(engine, prompt: list[int]) -> None:
    """One prefill of `prompt` into a fresh cache, to the last position's logits."""
    from herd.infer.kv_pool import KVPool

    model = engine.model
    engine.prefill(KVPool(model.config, 1, len(prompt) + 1, model.tok_embeddings.weight.dtype), 0, prompt)


def herd_decode(engine, prompts: list[list[int]], params) -> tuple[float, float]:
    """One generation: (time to the first token in s, decode tok/s over all rows after it)."""
    start, stamps = time.perf_counter(), []
    for event in engine.stream(prompts, params):
        if event.row == 0:
            stamps.append(time.perf_counter())
    return stamps[0] - start, len(prompts) * (len(stamps) - 1) / (stamps[-1] - stamps[0])


def worker_herd(dtype: torch.dtype, prefills: list[int], decode_tokens: int, compile_decode: bool) -> dict:
    import herd
    from herd.infer.engine import Engine
    from herd.infer.sampling import SamplingParams

    model = herd.load(ensure_model(), dtype=dtype)
    step = None
    if compile_decode:
        from herd.fast import optimize
        from herd.infer.steps import FastDecode

        step = FastDecode(optimize(model))
    engine = Engine(model, prefill_chunk=2048, step=step)
    results: dict = {}
    for S in prefills:
        prompt = _prompts(1, S)[0]
        herd_prefill(engine, prompt)
        results[f"prefill_{S}"] = S / _median_time(lambda prompt=prompt: herd_prefill(engine, prompt),
                                                   3 if S <= 2048 else 1)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=decode_tokens, stop_ids=())
    for batch in (1, 8) if decode_tokens else ():
        prompts = _prompts(batch, 64)
        runs = [herd_decode(engine, prompts, greedy) for _ in range(4)]  # the first warms up (and compiles)
        results[f"decode_b{batch}"] = statistics.median(rate for _, rate in runs[1:])
        if batch == 1:
            results["ttft_64_ms"] = 1000 * statistics.median(ttft for ttft, _ in runs[1:])
    return results


class _Clock:
    """A `generate` streamer that only records when each token arrives."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        self.stamps.append(time.perf_counter())

    def end(self) -> None:
        pass


def worker_hf(dtype: torch.dtype, prefills: list[int], decode_tokens: int) -> dict:
    import logging

    from transformers import Llama4ForCausalLM

    logging.getLogger("transformers").setLevel(logging.ERROR)
    model = Llama4ForCausalLM.from_pretrained(ensure_model(), dtype=dtype).eval()
    results: dict = {}
    with torch.no_grad():
        for S in prefills:
            ids = torch.tensor(_prompts(1, S))

            def run(ids: torch.Tensor = ids) -> None:
                model(input_ids=ids, use_cache=True, logits_to_keep=1)

            if S > 2048:  # one timed run at long lengths: HF is slow there
                results[f"prefill_{S}"] = S / _median_time(run, 1)
                continue
            run()
            results[f"prefill_{S}"] = S / _median_time(run, 3)
        for batch in (1, 8) if decode_tokens else ():
            ids = torch.tensor(_prompts(batch, 64))
            rates, ttfts = [], []
            for _ in range(3 if batch == 1 else 2):
                streamer = _Clock() if batch == 1 else None
                stamps = streamer.stamps if streamer else []
                start = time.perf_counter()
                out = model.generate(ids, max_new_tokens=decode_tokens, min_new_tokens=decode_tokens, do_sample=False,
                                     streamer=streamer, pad_token_id=0)
                total = time.perf_counter() - start
                if batch == 1:  # the streamer's first put is the prompt, the second the first new token
                    ttfts.append(stamps[1] - start)
                    rates.append((len(stamps) - 2) / (stamps[-1] - stamps[1]))
                else:
                    rates.append(batch * (out.shape[1] - ids.shape[1]) / total)
            results[f"decode_b{batch}"] = statistics.median(rates)
            if batch == 1:
                results["ttft_64_ms"] = 1000 * statistics.median(ttfts)
    return results


def run_worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(THREADS)
    dtype = getattr(torch, args.dtype)
    if args.worker == "herd":
        results = worker_herd(dtype, args.prefill, args.decode_tokens, not args.no_compile)
    else:
        results = worker_hf(dtype, args.prefill, args.decode_tokens)
    results["peak_rss_GB"] = _peak_rss() / 1e9
    print(json.dumps(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engines", nargs="+", default=["herd", "hf"], choices=["herd", "hf"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--prefill", nargs="+", type=int, default=[512, 2048])
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--no-compile", action="store_true", help="herd without its compiled decode path")
    parser.add_argument("--prefill-only", action="store_true", help="skip decode (e.g. for long-context memory)")
    parser.add_argument("--worker", choices=["herd", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prefill_only:
        args.decode_tokens = 0
    if args.worker:
        return run_worker(args)
    ensure_model()
    m = machine()
    print(f"machine: {THREADS} threads, read bandwidth {m['bandwidth_GBps']:.1f} GB/s, matmul "
          f"{m['matmul_float32_GFLOPs']:.0f} GFLOP/s fp32, {m['matmul_bfloat16_GFLOPs']:.0f} GFLOP/s bf16")
    rows: dict[tuple[str, str], dict] = {}
    for dtype in args.dtypes:
        for engine in args.engines:
            cmd = [sys.executable, __file__, "--worker", engine, "--dtype", dtype, "--decode-tokens",
                   str(args.decode_tokens), "--prefill", *map(str, args.prefill)]
            cmd += ["--no-compile"] if args.no_compile else []
            print(f"running {engine} {dtype} ...", file=sys.stderr, flush=True)
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rows[(engine, dtype)] = json.loads(out.stdout.strip().splitlines()[-1])
    from herd.info import counts

    config = bench_config()
    active = counts(__import__("herd").config.ModelConfig(text=config)).active - config.vocab_size * config.dim
    decode = [] if args.prefill_only else ["ttft_64_ms", "decode_b1", "decode_b8"]
    metrics = [f"prefill_{s}" for s in args.prefill] + decode + ["peak_rss_GB"]
    print("\n| workload | dtype | " + " | ".join(args.engines) + (" | herd / HF |" if len(args.engines) == 2 else " |"))
    print("|---" * (3 + (len(args.engines) == 2) + len(args.engines) - 1) + "|")
    for dtype in args.dtypes:
        for metric in metrics:
            values = [rows[(e, dtype)].get(metric) for e in args.engines]
            unit = "ms" if metric.endswith("ms") else "GB" if metric.endswith("GB") else "tok/s"
            cells = [f"{v:,.1f} {unit}" if v is not None else "-" for v in values]
            ratio = ""
            if len(values) == 2 and all(values):
                r = values[0] / values[1] if unit == "tok/s" else values[1] / values[0]
                ratio = f" {r:.2f}× |"
            print(f"| {metric} | {dtype} | " + " | ".join(cells) + (" |" + ratio if ratio else " |"))
        if "herd" in args.engines and not args.prefill_only:
            bytes_per_token = active * (4 if dtype == "float32" else 2)
            ceiling = m["bandwidth_GBps"] * 1e9 / bytes_per_token
            got = rows[("herd", dtype)]["decode_b1"]
            print(f"| decode_b1 ceiling | {dtype} | {ceiling:.1f} tok/s ({bytes_per_token / 1e6:.0f} MB/token); "
                  f"herd at {100 * got / ceiling:.0f}% | |" + (" |" if len(args.engines) == 2 else ""))


if __name__ == "__main__":
    main()
