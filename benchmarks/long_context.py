"""herd's long-context prefill on the benchmark model: time and peak resident memory.

    .venv/bin/python benchmarks/long_context.py 131072 --piece 4096 --dtype bfloat16

Builds (once) and loads the issue #5 benchmark model from benchmarks/bench.py's cache, prefills a
random prompt of the given length through `Engine.prefill` in pieces, and prints the rate, the
peak RSS (VmHWM) and the KV-cache size. Run it in a fresh process per length: VmHWM only grows.
"""

from __future__ import annotations

import argparse
import time

import torch
from bench import THREADS, ensure_model

import herd
from herd.infer.engine import Engine
from herd.infer.kv_pool import KVPool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("length", type=int)
    parser.add_argument("--piece", type=int, default=4096, help="prefill piece (tokens)")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    dtype = getattr(torch, args.dtype)
    model = herd.load(ensure_model(), dtype=dtype)
    prompt = torch.randint(0, 200000, (args.length,), generator=torch.Generator().manual_seed(0)).tolist()
    pool = KVPool(model.config, 1, args.length + 1, dtype)
    start = time.perf_counter()
    Engine(model, prefill_chunk=args.piece).prefill(pool, 0, prompt)
    elapsed = time.perf_counter() - start
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))
    print(f"{args.length} tokens ({args.dtype}, pieces of {args.piece}): {elapsed:.1f} s, "
          f"{args.length / elapsed:.0f} tok/s, peak RSS {peak / 1e9:.2f} GB, KV cache {pool.nbytes() / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
