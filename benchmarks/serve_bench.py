"""`herd serve` against llama.cpp's `llama-server` on the benchmark model, same machine, same threads.

    bash benchmarks/llama_cpp_setup.sh                  # once: builds llama-bench, llama-simple, llama-server
    .venv/bin/python benchmarks/serve_bench.py          # bf16 / BF16, concurrency 1 4 8 16, 3 rounds

Both servers load the benchmark model (bench.py; random weights; herd from its HF directory in bf16,
llama.cpp from the BF16 GGUF that benchmarks/llama_cpp.py converts) with 2 threads and a slot for each
client (herd `--max-slots 16`; llama-server `-np 16`, `-c` 16 x 4,096). Workload: `concurrency` clients,
each sending its next request when the last one ended, 2 x concurrency requests (at least 8), a prompt of
`--prompt` random token ids (the same ids for both servers, new ones for every level and round, so that
neither server's prompt cache answers from an earlier request), `--tokens` output tokens with EOS ignored, greedy,
streamed from `/v1/completions`. Figures per level: request throughput, output tokens/s over the level's
wall time, time to first token and inter-token latency (between streamed chunks) at p50 / p90. The two
servers take turns level by level, round by round (this machine's memory bandwidth drifts); the table
gives medians over rounds and the median of the per-round ratios. At one client, herd's engine in this
process (`Engine.stream`, what `herd generate` runs) takes the same prompts after the two servers each
round: the serving overhead is herd serve ÷ herd generate.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import llama_cpp
from bench import MODEL_DIR, THREADS, ensure_model

SLOTS, SLOT_CONTEXT = 16, 4096


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(base: str, proc: subprocess.Popen, name: str) -> None:
    deadline = time.time() + 600
    while time.time() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            sys.exit(f"{name} exited with {proc.returncode}")
        time.sleep(0.5)
    sys.exit(f"{name} did not become healthy")


def start_herd(tree: Path | None = None) -> tuple[str, subprocess.Popen]:
    """`herd serve` on the benchmark model, ready; from the source tree `tree` (serve_ab.py's base revision)
    where given, else the installed herd."""
    port = _port()
    cmd = [sys.executable, "-m", "herd", "serve", "--model", str(MODEL_DIR), "--port", str(port), "--dtype",
           "bfloat16", "--max-slots", str(SLOTS), "--max-context", str(SLOT_CONTEXT), "--served-model-name", "bench"]
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), **({"PYTHONPATH": str(tree)} if tree else {})}
    proc = subprocess.Popen(cmd, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    base = f"http://127.0.0.1:{port}"
    _wait(base, proc, "herd serve")
    return base, proc


def start_llama_server() -> tuple[str, subprocess.Popen]:
    gguf = llama_cpp.convert(MODEL_DIR, llama_cpp.CACHE / "gguf" / MODEL_DIR.name, "bf16")
    port = _port()
    cmd = [str(llama_cpp._binary("llama-server")), "-m", str(gguf), "--port", str(port), "-t", str(THREADS),
           "-tb", str(THREADS), "-np", str(SLOTS), "-c", str(SLOTS * SLOT_CONTEXT), "--no-webui"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    _wait(base, proc, "llama-server")
    return base, proc


async def _one(client: httpx.AsyncClient, base: str, prompt: list[int], tokens: int) -> tuple[float, list[float]]:
    """One streamed request: (time to first token, gaps between later chunks)."""
    body = {"model": "bench", "prompt": prompt, "max_tokens": tokens, "temperature": 0, "ignore_eos": True,
            "stream": True}
    start, stamps = time.perf_counter(), []
    async with client.stream("POST", f"{base}/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: {") and '"text"' in line and json.loads(line[6:])["choices"]:
                stamps.append(time.perf_counter())
    return stamps[0] - start, [b - a for a, b in itertools.pairwise(stamps)]


def _prompts(concurrency: int, prompt_len: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)  # prompts never repeat across levels and rounds: no server's prompt cache helps
    return [[rng.randrange(200000) for _ in range(prompt_len)] for _ in range(max(8, 2 * concurrency))]


def _quantile(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100)[p - 1] if len(values) > 1 else values[0]


def _figures(n: int, tokens: int, wall: float, ttfts: list[float], gaps: list[float]) -> dict:
    return {"req_s": n / wall, "tok_s": n * tokens / wall, "ttft_p50": _quantile(ttfts, 50),
            "ttft_p90": _quantile(ttfts, 90), "itl_p50": _quantile(gaps, 50), "itl_p90": _quantile(gaps, 90)}


def generate_engine():
    """`herd generate`'s path in this process: the benchmark model in bf16, optimized, the native decode step."""
    import torch

    import herd
    from herd.fast import optimize
    from herd.infer.engine import Engine
    from herd.infer.steps import FastDecode

    torch.set_num_threads(THREADS)
    model = optimize(herd.load(MODEL_DIR, dtype=torch.bfloat16))
    return Engine(model, step=FastDecode(model))


def generate_level(engine, prompt_len: int, tokens: int, seed: int) -> dict:
    """The one-client workload through `Engine.stream` in process, prompt after prompt: what a server at one
    client is measured against."""
    from herd.infer.sampling import SamplingParams

    prompts = _prompts(1, prompt_len, seed)
    params = SamplingParams(temperature=0.0, max_new_tokens=tokens, stop_ids=())
    ttfts, gaps = [], []
    start = time.perf_counter()
    for prompt in prompts:
        began, stamps = time.perf_counter(), []
        for _ in engine.stream([prompt], params):
            stamps.append(time.perf_counter())
        ttfts.append(stamps[0] - began)
        gaps.extend(b - a for a, b in itertools.pairwise(stamps))
    return _figures(len(prompts), tokens, time.perf_counter() - start, ttfts, gaps)


async def level(base: str, concurrency: int, prompt_len: int, tokens: int, seed: int) -> dict:
    prompts = _prompts(concurrency, prompt_len, seed)
    n = len(prompts)
    queue = list(prompts)
    ttfts, gaps = [], []

    async def client_loop(client: httpx.AsyncClient) -> None:
        while queue:
            prompt = queue.pop()
            ttft, g = await _one(client, base, prompt, tokens)
            ttfts.append(ttft)
            gaps.extend(g)

    start = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=0)  # a fresh connection each
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    return _figures(n, tokens, time.perf_counter() - start, ttfts, gaps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 8, 16])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens")
    parser.add_argument("--tokens", type=int, default=64, help="output tokens per request (EOS ignored)")
    parser.add_argument("--no-generate", action="store_true",
                        help="skip the one-client baseline of herd's engine in this process")
    args = parser.parse_args()
    ensure_model()
    servers = {"llama-server": start_llama_server(), "herd serve": start_herd()}
    engine = None if args.no_generate or 1 not in args.concurrency else generate_engine()
    results: dict[tuple[str, int], list[dict]] = {}
    try:
        for base, _ in servers.values():  # warm-up: kernels built, caches touched
            asyncio.run(level(base, 2, args.prompt, 8, seed=-1))
        if engine is not None:
            generate_level(engine, args.prompt, 8, seed=-1)
        for r in range(args.rounds):
            for c in args.concurrency:
                for name in (list(servers) if r % 2 else list(servers)[::-1]):
                    print(f"round {r + 1}: {name}, {c} concurrent ...", file=sys.stderr, flush=True)
                    results.setdefault((name, c), []).append(
                        asyncio.run(level(servers[name][0], c, args.prompt, args.tokens, seed=1000 * r + c)))
                if c == 1 and engine is not None:
                    print(f"round {r + 1}: herd generate, 1 client ...", file=sys.stderr, flush=True)
                    results.setdefault(("herd generate", 1), []).append(
                        generate_level(engine, args.prompt, args.tokens, seed=1000 * r + c))
    finally:
        for _, proc in servers.values():
            proc.terminate()
            proc.wait(timeout=60)
    print(f"\nbf16, {THREADS} threads, prompts of {args.prompt} tokens, {args.tokens} output tokens each; medians over "
          f"{args.rounds} interleaved rounds; ratios: median of per-round herd / llama-server (latency: inverted)")
    print("\n| concurrent | server | req/s | output tok/s | TTFT p50 / p90 | ITL p50 / p90 |")
    print("|---:|---|---:|---:|---:|---:|")
    for c in args.concurrency:
        for name in [*servers, "herd generate"]:
            if (name, c) not in results:
                continue
            runs = results[(name, c)]
            m = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
            print(f"| {c} | {name} | {m['req_s']:.2f} | {m['tok_s']:.1f} | {1000 * m['ttft_p50']:.0f} / "
                  f"{1000 * m['ttft_p90']:.0f} ms | {1000 * m['itl_p50']:.1f} / {1000 * m['itl_p90']:.1f} ms |")
        pairs = list(zip(results[("herd serve", c)], results[("llama-server", c)], strict=True))

        def ratio(key: str, invert: bool = False, pairs: list = pairs) -> str:
            values = [(o[key] / h[key]) if invert else (h[key] / o[key]) for h, o in pairs]
            return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"

        print(f"| {c} | herd / llama-server | {ratio('req_s')} | {ratio('tok_s')} | "
              f"{ratio('ttft_p50', True)} faster | {ratio('itl_p50', True)} faster |")
        if ("herd generate", c) in results:
            pairs = list(zip(results[("herd serve", c)], results[("herd generate", c)], strict=True))
            print(f"| {c} | herd serve / herd generate | {ratio('req_s', pairs=pairs)} | "
                  f"{ratio('tok_s', pairs=pairs)} | {ratio('ttft_p50', True, pairs)} faster | "
                  f"{ratio('itl_p50', True, pairs)} faster |")


if __name__ == "__main__":
    main()
