"""Continuous batching on the benchmark model: many concurrent requests through one KV slot pool.

    .venv/bin/python benchmarks/serving.py                                  # fp32 and bf16, 1/4/8/16 concurrent
    git worktree add /tmp/herd-per-batch 039a7e4                             # herd before continuous batching
    .venv/bin/python benchmarks/serving.py --baseline /tmp/herd-per-batch   # against its per-batch engine

Workload, the same for every engine: `concurrency` clients, each sending a request as soon as its last
one finished (the per-batch engine: batches of `concurrency` requests, one after another), 2 x concurrency
requests in all (at least 8), prompts of random ids with lengths log-uniform in 64-2,048, 64 greedy output
tokens each with EOS ignored. Prefill in pieces of 512. Figures:

- output tok/s: every generated token over the wall time of the whole workload, prefill included;
- decode tok/s: tokens of decode-only steps over their time (continuous batching: steps that ran no
  prefill piece; per-batch: from a batch's last first token to its end), the figure bench.py's decode_bN
  reports for a batch of N;
- TTFT: from the moment a request is sent (its batch starts, per-batch) to its first token, p50 / p90.

Each engine and dtype runs in its own process, 2 threads. herd uses `herd.fast.optimize` and its fast
decode step (the native one on CPUs with AVX512-BF16).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from bench import THREADS, ensure_model

OUT_TOKENS = 64
PIECE = 512


def workload(concurrency: int, seed: int = 0) -> list[list[int]]:
    """2 x concurrency prompts (at least 8) of random ids, lengths log-uniform in 64-2,048."""
    rng = random.Random(seed * 1000 + concurrency)
    n = max(8, 2 * concurrency)
    lengths = [round(math.exp(rng.uniform(math.log(64), math.log(2048)))) for _ in range(n)]
    return [[rng.randrange(200000) for _ in range(length)] for length in lengths]


def _summary(tokens: int, wall: float, decode_tokens: int, decode_time: float, ttfts: list[float]) -> dict:
    q = statistics.quantiles(ttfts, n=10) if len(ttfts) > 1 else ttfts * 9
    return {"output_tps": tokens / wall, "decode_tps": decode_tokens / decode_time if decode_time else 0.0,
            "ttft_p50_ms": 1000 * statistics.median(ttfts), "ttft_p90_ms": 1000 * q[8], "wall_s": wall}


def run_continuous(model, step, prompts: list[list[int]], concurrency: int) -> dict:
    from herd.infer import KVPool, SamplingParams, Scheduler
    from herd.infer.kv_pool import bucket

    dtype = model.output.weight.dtype
    pool = KVPool(model.config, concurrency, bucket(2048 + OUT_TOKENS, model.config.max_seq_len), dtype)
    scheduler = Scheduler(model, pool, step, prefill_chunk=PIECE)
    params = SamplingParams(temperature=0.0, max_new_tokens=OUT_TOKENS, stop_ids=())
    queue, sent, ttfts = list(prompts), {}, []
    tokens = decode_tokens = 0
    decode_time = 0.0
    start = time.perf_counter()

    def send() -> None:
        sent[scheduler.submit(queue.pop(0), params)] = time.perf_counter()

    for _ in range(min(concurrency, len(queue))):
        send()
    while scheduler.has_work():
        prefilled, began = scheduler.prefilled_tokens, time.perf_counter()
        events = scheduler.step()
        now = time.perf_counter()
        if scheduler.prefilled_tokens == prefilled:
            decode_time, decode_tokens = decode_time + now - began, decode_tokens + len(events)
        for event in events:
            tokens += 1
            if event.request in sent:
                ttfts.append(now - sent.pop(event.request))
            if event.finish_reason is not None and queue:
                send()
    return _summary(tokens, time.perf_counter() - start, decode_tokens, decode_time, ttfts)


def run_per_batch(engine, prompts: list[list[int]], concurrency: int) -> dict:
    """herd's engine before continuous batching: `Engine.stream` over a batch prefills every prompt, then
    decodes the batch together until its last row ends."""
    from herd.sampling import SamplingParams  # the baseline checkout's layout

    params = SamplingParams(temperature=0.0, max_new_tokens=OUT_TOKENS, stop_ids=())
    ttfts, tokens, decode_tokens, decode_time = [], 0, 0, 0.0
    start = time.perf_counter()
    for i in range(0, len(prompts), concurrency):
        batch, began, stamps = prompts[i : i + concurrency], time.perf_counter(), []
        for event in engine.stream(batch, params):
            stamps.append((time.perf_counter(), event.row))
        seen = set()
        for t, row in stamps:
            if row not in seen:
                seen.add(row)
                ttfts.append(t - began)
        last_first = began + max(ttfts[-len(batch) :])
        decoding = [t for t, _ in stamps if t > last_first]
        tokens += len(stamps)
        decode_tokens += len(decoding)
        decode_time += stamps[-1][0] - last_first
    return _summary(tokens, time.perf_counter() - start, decode_tokens, decode_time, ttfts)


def worker(engine: str, dtype_name: str, levels: list[int]) -> dict:
    import herd
    from herd.fast import optimize

    torch.set_num_threads(THREADS)
    model = optimize(herd.load(ensure_model(), dtype=getattr(torch, dtype_name)))
    if engine == "continuous":
        from herd.infer.steps import FastDecode

        step = FastDecode(model)
        run_continuous(model, step, workload(2, seed=99)[:2], 2)  # warm-up: kernels built, caches touched
        return {str(c): run_continuous(model, step, workload(c), c) for c in levels}
    from herd.engine import Engine  # the baseline checkout: optimize() set model.fast_decode, Engine uses it

    old = Engine(model, prefill_chunk=PIECE)
    run_per_batch(old, workload(2, seed=99)[:2], 2)
    return {str(c): run_per_batch(old, workload(c), c) for c in levels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 8, 16])
    parser.add_argument("--baseline", type=Path, help="a herd checkout before continuous batching (per-batch engine)")
    parser.add_argument("--worker", choices=["continuous", "per-batch"], help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.dtype, args.concurrency)))
        return
    ensure_model()
    engines = ["continuous"] + (["per-batch"] if args.baseline else [])
    results: dict[tuple[str, str], dict] = {}
    for dtype in args.dtypes:
        for engine in engines:
            env = dict(os.environ)
            if engine == "per-batch":
                env["PYTHONPATH"] = str(args.baseline.resolve())
            cmd = [sys.executable, __file__, "--worker", engine, "--dtype", dtype, "--concurrency",
                   *map(str, args.concurrency)]
            print(f"running {engine} {dtype} ...", file=sys.stderr, flush=True)
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode:
                sys.exit(f"{engine} {dtype} failed:\n{out.stderr[-3000:]}")
            results[(engine, dtype)] = json.loads(out.stdout.strip().splitlines()[-1])
    print("\n| dtype | concurrent | requests | engine | output tok/s | decode tok/s | TTFT p50 | TTFT p90 |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for dtype in args.dtypes:
        for c in args.concurrency:
            for engine in engines:
                r = results[(engine, dtype)][str(c)]
                print(f"| {dtype} | {c} | {len(workload(c))} | {engine} | {r['output_tps']:,.1f} | "
                      f"{r['decode_tps']:,.1f} | {r['ttft_p50_ms']:,.0f} ms | {r['ttft_p90_ms']:,.0f} ms |")
            if len(engines) == 2:
                new, old = results[("continuous", dtype)][str(c)], results[("per-batch", dtype)][str(c)]
                print(f"| {dtype} | {c} | | continuous / per-batch | {new['output_tps'] / old['output_tps']:.2f}x | "
                      f"{new['decode_tps'] / old['decode_tps']:.2f}x | "
                      f"{old['ttft_p50_ms'] / new['ttft_p50_ms']:.2f}x faster | "
                      f"{old['ttft_p90_ms'] / new['ttft_p90_ms']:.2f}x faster |")


if __name__ == "__main__":
    main()
