"""Continuous batching on the benchmark model: many concurrent requests through one KV slot pool.

    .venv/bin/python benchmarks/serving.py                                  # fp32 and bf16, 1/4/8/16 concurrent
    git worktree add /tmp/herd-per-batch 039a7e4                             # herd before continuous batching
    .venv/bin/python benchmarks/serving.py --baseline /tmp/herd-per-batch   # against its per-batch engine

Workload, the same for every engine: `concurrency` clients, each sending a request as soon as its last
one finished (the per-batch engine: batches of `concurrency` requests, one after another), 3 x concurrency
requests in all (at least 8), prompts of random ids with lengths log-uniform in 64-2,048, 128 greedy output
tokens each with EOS ignored. Prefill in pieces of 512. Figures:

- output tok/s: every generated token over the wall time of the whole workload, prefill included;
- decode tok/s: the rate while all `concurrency` rows decode and nothing is prefilled (continuous
  batching: steps with no prefill piece and every slot decoding; per-batch: from a batch's last first
  token to its end), the figure bench.py's decode_bN reports for a batch of N;
- TTFT: from the moment a request is sent (its batch starts, per-batch) to its first token, p50 / p90.

Each engine and dtype runs in its own process (2 threads), kept alive across rounds; the engines take
turns level by level, round by round (this machine's memory bandwidth drifts from minute to minute), and
the table gives medians. herd uses `herd.fast.optimize` and its fast decode step (the native one on CPUs
with AVX512-BF16).
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

OUT_TOKENS = 128
PIECE = 512


def workload(concurrency: int, seed: int = 0) -> list[list[int]]:
    """3 x concurrency prompts (at least 8) of random ids, lengths log-uniform in 64-2,048."""
    rng = random.Random(seed * 1000 + concurrency)
    n = max(8, 3 * concurrency)
    lengths = [round(math.exp(rng.uniform(math.log(64), math.log(2048)))) for _ in range(n)]
    return [[rng.randrange(200000) for _ in range(length)] for length in lengths]


def _summary(tokens: int, wall: float, decode_tokens: int, decode_time: float, ttfts: list[float]) -> dict:
    q = statistics.quantiles(ttfts, n=10) if len(ttfts) > 1 else ttfts * 9
    return {"output_tps": tokens / wall, "decode_tps": decode_tokens / decode_time if decode_time else 0.0,
            "ttft_p50_ms": 1000 * statistics.median(ttfts), "ttft_p90_ms": 1000 * q[8], "wall_s": wall}


def run_continuous(model, step, prompts: list[list[int]], concurrency: int) -> dict:
    from herd.infer import KVPool, SamplingParams, Scheduler
    from herd.infer.kv_pool import bucket

    dtype = model.tok_embeddings.weight.dtype
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
        if scheduler.prefilled_tokens == prefilled and len(events) == concurrency:
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


def worker(engine: str, dtype_name: str) -> None:
    """Load the model, warm up, then answer each concurrency read from stdin with a JSON line of figures."""
    import herd
    from herd.fast import optimize

    torch.set_num_threads(THREADS)
    model = optimize(herd.load(ensure_model(), dtype=getattr(torch, dtype_name)))
    if engine == "continuous":
        from herd.infer.steps import FastDecode

        step = FastDecode(model)
        run = lambda prompts, c: run_continuous(model, step, prompts, c)
    else:
        from herd.engine import Engine  # the baseline checkout: optimize() set model.fast_decode, Engine uses it

        old = Engine(model, prefill_chunk=PIECE)
        run = lambda prompts, c: run_per_batch(old, prompts, c)
    run(workload(2, seed=99)[:2], 2)  # warm-up: kernels built, caches touched
    print("ready", flush=True)
    for line in sys.stdin:
        c = int(line)
        print(json.dumps(run(workload(c), c)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 8, 16])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="a herd checkout before continuous batching (per-batch engine)")
    parser.add_argument("--worker", choices=["continuous", "per-batch"], help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.dtype)
    ensure_model()
    engines = ["continuous"] + (["per-batch"] if args.baseline else [])
    results: dict[tuple[str, str, int], list[dict]] = {}
    for dtype in args.dtypes:
        workers = {}
        for engine in engines:  # one process each, alive for every round, so that rounds interleave
            env = dict(os.environ)
            if engine == "per-batch":
                env["PYTHONPATH"] = str(args.baseline.resolve())
            cmd = [sys.executable, __file__, "--worker", engine, "--dtype", dtype]
            workers[engine] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
            if workers[engine].stdout.readline().strip() != "ready":
                sys.exit(f"the {engine} {dtype} worker failed to start")
        for r in range(args.rounds):
            for c in args.concurrency:
                for engine in engines if r % 2 == 0 else engines[::-1]:
                    print(f"round {r + 1}: {engine} {dtype}, {c} concurrent ...", file=sys.stderr, flush=True)
                    workers[engine].stdin.write(f"{c}\n")
                    workers[engine].stdin.flush()
                    line = workers[engine].stdout.readline()
                    if not line:
                        sys.exit(f"the {engine} {dtype} worker died")
                    results.setdefault((engine, dtype, c), []).append(json.loads(line))
        for w in workers.values():
            w.stdin.close()
            w.wait()
    _report(results, args, engines)


def _report(results: dict, args: argparse.Namespace, engines: list[str]) -> None:
    metrics = ("output_tps", "decode_tps", "ttft_p50_ms", "ttft_p90_ms")
    print(f"\nmedians over {args.rounds} interleaved rounds; ratios are medians (and ranges) of the per-round ratios")
    print("\n| dtype | concurrent | requests | engine | output tok/s | decode tok/s | TTFT p50 | TTFT p90 |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for dtype in args.dtypes:
        for c in args.concurrency:
            for engine in engines:
                runs = results[(engine, dtype, c)]
                m = {k: statistics.median(r[k] for r in runs) for k in metrics}
                print(f"| {dtype} | {c} | {len(workload(c))} | {engine} | {m['output_tps']:,.1f} | "
                      f"{m['decode_tps']:,.1f} | {m['ttft_p50_ms']:,.0f} ms | {m['ttft_p90_ms']:,.0f} ms |")
            if len(engines) == 2:
                pairs = list(zip(results[("continuous", dtype, c)], results[("per-batch", dtype, c)], strict=True))

                def ratio(key: str, invert: bool = False, pairs: list = pairs) -> str:
                    values = [(o[key] / n[key]) if invert else (n[key] / o[key]) for n, o in pairs if n[key] and o[key]]
                    if not values:
                        return "-"
                    return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"

                print(f"| {dtype} | {c} | | continuous / per-batch | {ratio('output_tps')} | {ratio('decode_tps')} | "
                      f"{ratio('ttft_p50_ms', True)} faster | {ratio('ttft_p90_ms', True)} faster |")


if __name__ == "__main__":
    main()
