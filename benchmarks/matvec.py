"""The bf16 matrix-vector products herd can use for a large weight, side by side, round by round.

    python benchmarks/matvec.py [--rounds 4] [--out 202048] [--in 512]

Each round measures the bandwidth probe, then, for 1, 2, 4, 8 and 16 rows of x: herd's native row-dot
kernel (`herd.cpu_kernels.matvec_bf16`), the same product on the packed weight the native decode step
reads its LM head from (`packed_matvec_bf16`, herd/csrc/packed.h), the compiled row-dot that was herd's
path before them, and `F.linear` (oneDNN's bf16 GEMM). Prints the per-round times and a median table, in
ms and in GB/s of weight read. The default weight is the benchmark model's LM head.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from bench import THREADS, bandwidth

import herd.fast as fast
from herd import cpu_kernels

ROWS = (1, 2, 4, 8, 16)


def _median_ms(fn, x: torch.Tensor, w: torch.Tensor, repeat: int = 9) -> float:
    fn(x, w)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn(x, w)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", type=int, default=202048, help="weight rows (outputs)")
    ap.add_argument("--in", dest="in_features", type=int, default=512, help="weight columns (inputs)")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    if not cpu_kernels.available():
        raise SystemExit("the native bf16 kernel is unavailable here (no AVX512-BF16, or no C compiler)")
    w = torch.randn(args.out, args.in_features).bfloat16()
    packed = cpu_kernels.pack_bf16(w)
    engines = {
        "native kernel": cpu_kernels.matvec_bf16,
        "packed kernel": lambda x, w: cpu_kernels.packed_matvec_bf16(x, packed, w.shape[0]),
        "compiled row-dot": torch.compile(fast._rowdot, dynamic=False, fullgraph=True),
        "F.linear": F.linear,
    }
    times: dict[tuple[int, str], list[float]] = {}
    for r in range(args.rounds):
        probe = bandwidth()
        cells = []
        for rows in ROWS:
            x = torch.randn(rows, args.in_features).bfloat16()
            for name, fn in engines.items():
                ms = _median_ms(fn, x, w)
                times.setdefault((rows, name), []).append(ms)
                cells.append(f"{rows}x {name} {ms:.2f}")
        print(f"round {r + 1}: probe {probe:.1f} GB/s | " + " | ".join(cells), flush=True)
    gigabytes = w.numel() * w.element_size() / 1e9
    print(f"\n| rows | {' | '.join(engines)} |  (ms, median over rounds; GB/s of weight read)")
    print("|---:|" + "---:|" * len(engines))
    for rows in ROWS:
        meds = [statistics.median(times[rows, name]) for name in engines]
        print(f"| {rows} | " + " | ".join(f"{ms:.2f} ({gigabytes / ms * 1e3:.0f} GB/s)" for ms in meds) + " |")


if __name__ == "__main__":
    main()
