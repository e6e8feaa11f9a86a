"""Prefill in herd's quantized formats against bf16, in one process, interleaved: #20's "within 10%".

    .venv/bin/python benchmarks/prefill_formats.py [--tokens 512] [--rounds 7] [--formats int8 int4 int4-a8]

The benchmark model (bench.py) is loaded once per format, in bf16 and quantized while loading to each of
`--formats` (every module group), each laid out by `herd.fast.optimize` behind an `Engine`. Each round
times one prefill of the same random prompt into a fresh cache in each format, in turn (median of 3), and
the table gives the median tok/s and the median (range) of the per-round ratios format / bf16. The
formats take turns within a round because this machine's speed drifts from minute to minute, which is what
kept `vs_llama_cpp.py` (formats minutes apart) from measuring this ratio.
"""

from __future__ import annotations

import argparse
import statistics

import bench
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--formats", nargs="+", default=["int8", "int4"],
                        choices=["int8", "int8-g128", "int4", "int4-g128", "int4-a8", "int8-a8"])
    args = parser.parse_args()

    import herd
    from herd.fast import optimize
    from herd.infer.engine import Engine
    from herd.quant import GROUPS

    torch.set_num_threads(bench.THREADS)
    engines = {}
    for fmt in ("bfloat16", *args.formats):
        quantize = dict(quantize=fmt, quantize_groups=GROUPS) if fmt != "bfloat16" else {}
        engines[fmt] = Engine(optimize(herd.load(bench.ensure_model(), dtype=torch.bfloat16, **quantize)),
                              prefill_chunk=2048)
    prompt = bench._prompts(1, args.tokens)[0]
    rates: dict[str, list[float]] = {fmt: [] for fmt in engines}
    with torch.no_grad():
        for engine in engines.values():
            bench.herd_prefill(engine, prompt)  # warm-up
        for r in range(args.rounds):
            for fmt, engine in engines.items():
                rates[fmt].append(args.tokens / bench._median_time(lambda e=engine: bench.herd_prefill(e, prompt), 3))
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{f} {v[-1]:,.0f}" for f, v in rates.items())
                  + " tok/s", flush=True)
    print(f"\n| format | prefill {args.tokens} tok/s | ÷ bf16 |")
    print("|---|---:|---:|")
    for fmt, values in rates.items():
        ratios = [a / b for a, b in zip(values, rates["bfloat16"], strict=True)]
        print(f"| {fmt} | {statistics.median(values):,.0f} | **{statistics.median(ratios):.2f}×** "
              f"({min(ratios):.2f}–{max(ratios):.2f}) |")


if __name__ == "__main__":
    main()
