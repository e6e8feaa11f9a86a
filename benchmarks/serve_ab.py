"""`herd serve` from two git revisions (and herd's engine in process), one streamed request each in turn.

    .venv/bin/python benchmarks/serve_ab.py --base HEAD~1            # 30 rounds, bf16, 64 tokens
    .venv/bin/python benchmarks/serve_ab.py --base main --rounds 40 --no-generate

A serving change's A/B at one client, where `serve_bench.py` (levels minutes apart, against llama-server)
cannot resolve a few percent on this machine, whose speed drifts from minute to minute. The base revision's
whole tree is exported (`git archive`) and served from there beside the working tree (each builds its own
kernels), both started by `serve_bench.start_herd` (the benchmark model in bf16). Each round sends the
same fresh prompt (128 random ids, 64 tokens, greedy, EOS ignored, streamed from `/v1/completions`) to each
server in a shuffled order, and to `Engine.stream` in this process (what `herd generate` runs) unless
`--no-generate`. Prints the median inter-token latency and output tok/s of each, and the median (range) of
the per-round tok/s ratios to the base server.
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from bench import ensure_model
from serve_bench import generate_engine, start_herd

ROOT = Path(__file__).resolve().parents[1]


def _stream(client: httpx.Client, base: str, prompt: list[int], tokens: int) -> list[float]:
    body = {"model": "bench", "prompt": prompt, "max_tokens": tokens, "stream": True, "temperature": 0,
            "ignore_eos": True}
    stamps = []
    with client.stream("POST", base + "/v1/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data:") and "[DONE]" not in line:
                stamps.append(time.perf_counter())
    return stamps[:tokens]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="git revision served as the baseline")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--no-generate", action="store_true", help="skip herd's engine in process")
    args = parser.parse_args()
    ensure_model()
    with tempfile.TemporaryDirectory() as tmp:
        base_tree = Path(tmp)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.base], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(base_tree)], input=archive.stdout, check=True)
        servers: dict[str, tuple[str, subprocess.Popen]] = {}
        try:
            servers[args.base] = start_herd(base_tree)
            servers["this tree"] = start_herd(ROOT)
            engine = params = None
            if not args.no_generate:
                from herd.infer.sampling import SamplingParams

                engine = generate_engine()
                params = SamplingParams(temperature=0.0, max_new_tokens=args.tokens, stop_ids=())
            names = [*servers, *(["herd generate"] if engine else [])]
            gaps: dict[str, list[float]] = {n: [] for n in names}
            rates: dict[str, list[float]] = {n: [] for n in names}
            rng = random.Random(0)
            with httpx.Client(timeout=120) as client:
                for r in range(args.rounds):
                    prompt = [rng.randrange(1000, 100000) for _ in range(128)]
                    for name in rng.sample(names, len(names)):
                        if name == "herd generate":
                            stamps = [time.perf_counter() for _ in engine.stream([prompt], params)]
                        else:
                            stamps = _stream(client, servers[name][0], prompt, args.tokens)
                        gaps[name] += [b - a for a, b in itertools.pairwise(stamps[1:])]  # past the first token
                        rates[name].append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
                    print(f"round {r + 1}/{args.rounds}", flush=True)
        finally:
            for _, proc in servers.values():
                proc.terminate()
                proc.wait()
    print(f"\none client, bf16, {args.tokens} tokens a request, {args.rounds} rounds")
    print(f"\n| | ITL p50 | output tok/s | ÷ {args.base} (per round) |")
    print("|---|---:|---:|---:|")
    for name in names:
        ratios = [a / b for a, b in zip(rates[name], rates[args.base], strict=True)]
        print(f"| {name} | {statistics.median(gaps[name]) * 1e3:.2f} ms | {statistics.median(rates[name]):.1f} | "
              f"**{statistics.median(ratios):.3f}×** ({min(ratios):.2f}–{max(ratios):.2f}) |")


if __name__ == "__main__":
    main()
