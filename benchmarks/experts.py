"""The routed experts of a prefill, herd's native grouped kernel against the per-expert GEMM loop.

    python benchmarks/experts.py [--rounds 5] [--tokens 512 2048] [--dtypes float32 bfloat16]

Two measurements, interleaved round by round so that both sides see the same machine phase:

- kernel: one benchmark-model layer's routed experts (16 experts, dim 512, width 1024, output-major
  weights, 100 MB), T tokens spread over the experts as a random router spreads them. "native" is
  `herd.cpu_kernels.grouped` for the gate|up and the down projections; "loop" is one `F.linear`
  per expert and projection (MKL in fp32, oneDNN in bf16), what `Experts.grouped` does. SwiGLU is
  left out of both.
- prefill: `Engine.prefill` of T tokens on the benchmark model (`herd.fast.optimize`), with
  `GatherExperts.grouped` (native) against `Experts.grouped` (the loop); all else equal.

Prints per-round figures and a median table with the native/loop speedup (median of per-round ratios).
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from bench import THREADS, _median_time, _prompts, bandwidth, ensure_model, herd_prefill

import herd
import herd.fast as fast
from herd import cpu_kernels
from herd.infer.engine import Engine
from herd.moe import Experts

E, D, FF = 16, 512, 1024


def kernel_pair(tokens: int, dtype: torch.dtype) -> dict[str, callable]:
    g = torch.Generator().manual_seed(tokens)
    w13_EOD = (torch.randn(E, 2 * FF, D, generator=g) / 20).to(dtype)
    w2_EDF = (torch.randn(E, D, FF, generator=g) / 30).to(dtype)
    counts = torch.bincount(torch.randint(0, E, (tokens,), generator=g), minlength=E)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    x_AD, a_AF = torch.randn(tokens, D, generator=g).to(dtype), torch.randn(tokens, FF, generator=g).to(dtype)
    bounds = list(zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True))

    def native() -> None:
        cpu_kernels.grouped(x_AD, w13_EOD, offsets)
        cpu_kernels.grouped(a_AF, w2_EDF, offsets)

    def loop() -> None:
        for e, (s, t) in enumerate(bounds):
            if t > s:
                F.linear(x_AD[s:t], w13_EOD[e])
                F.linear(a_AF[s:t], w2_EDF[e])

    return {"native": native, "loop": loop}


def measure(dtype: torch.dtype, tokens: list[int], rounds: int) -> None:
    model = fast.optimize(herd.load(ensure_model(), dtype=dtype))
    engine = Engine(model, prefill_chunk=max(tokens))
    native_grouped = fast.GatherExperts.grouped
    kernels = {t: kernel_pair(t, dtype) for t in tokens}
    prompts = {t: _prompts(1, t)[0] for t in tokens}

    def prefill(t: int, path: str):
        def run() -> None:
            fast.GatherExperts.grouped = native_grouped if path == "native" else Experts.grouped
            try:
                herd_prefill(engine, prompts[t])
            finally:
                fast.GatherExperts.grouped = native_grouped
        return run

    name = str(dtype).removeprefix("torch.")
    times: dict[tuple[str, int, str], list[float]] = {}
    for r in range(rounds):
        cells = [f"probe {bandwidth():.1f} GB/s"]
        for t in tokens:
            for path in ("native", "loop"):
                ms = _median_time(kernels[t][path], 5) * 1e3
                times.setdefault(("kernel", t, path), []).append(ms)
                cells.append(f"kernel {t} {path} {ms:.2f} ms")
            for path in ("native", "loop"):
                ms = _median_time(prefill(t, path), 3) * 1e3
                times.setdefault(("prefill", t, path), []).append(ms)
                cells.append(f"prefill {t} {path} {ms:.0f} ms")
        print(f"{name} round {r + 1}: " + " | ".join(cells), flush=True)

    print(f"\n| {name} | native | loop (GEMM per expert) | native / loop speedup (range) |")
    print("|---|---:|---:|---:|")
    for what in ("kernel", "prefill"):
        for t in tokens:
            nat, loop = times[what, t, "native"], times[what, t, "loop"]
            ratios = [b / a for a, b in zip(nat, loop, strict=True)]
            if what == "kernel":
                flops = 2 * t * D * 3 * FF
                cols = [f"{statistics.median(ms):.2f} ms ({flops / statistics.median(ms) / 1e6:.0f} GFLOP/s)"
                        for ms in (nat, loop)]
                label = f"one layer's routed experts, {t} tokens"
            else:
                cols = [f"{t / statistics.median(ms) * 1e3:,.0f} tok/s" for ms in (nat, loop)]
                label = f"prefill {t}, benchmark model"
            print(f"| {label} | {cols[0]} | {cols[1]} | **{statistics.median(ratios):.2f}×** "
                  f"({min(ratios):.2f}–{max(ratios):.2f}) |")
    print(flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    if not cpu_kernels.available():
        raise SystemExit("the native kernels are unavailable here (no AVX512-BF16, or no C compiler)")
    for dtype in args.dtypes:
        measure(getattr(torch, dtype), args.tokens, args.rounds)


if __name__ == "__main__":
    main()
