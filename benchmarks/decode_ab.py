"""The native decode step built from two kernel trees, on one loaded model, interleaved: a kernel change's A/B.

    .venv/bin/python benchmarks/decode_ab.py --base HEAD~1                    # int8 int4 bfloat16, 1 and 16 rows
    .venv/bin/python benchmarks/decode_ab.py --base main --formats int4 --rows 1 4 16 --rounds 7

`--base` names a git revision: its `herd/csrc` is compiled into a library of its own (`herd.cpu_kernels.build`)
beside the working tree's, and both run the same step (`herd.infer.native.NativeDecode`: the same model,
pool and pointers) in turn, 30 calls each per cell, round by round. The two trees must agree on the step's
C interface. Each cell is the benchmark model (bench.py) in a format, a number of rows at position 10, with
the LM head ("full") and without it ("no head"); the table gives the medians and the median (range) of the
per-round ratios base / this tree: above 1 this tree is faster. This machine's bandwidth drifts from minute
to minute, which is why the two run alternately rather than one after the other.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import bench
import torch

ROOT = Path(__file__).resolve().parents[1]


def _base_library(revision: str, out: Path) -> tuple[ctypes.CDLL, bool]:
    """The base revision's kernels, and whether its step reads a packed LM head (decode.h's PACKED)."""
    from herd import cpu_kernels

    tree = out / "tree"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "herd/csrc"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    csrc = tree / "herd" / "csrc"
    lib = ctypes.CDLL(str(cpu_kernels.build(csrc=csrc, out_dir=out)))
    new = cpu_kernels.library()
    for step in ("herd_decode_bf16", "herd_decode_f32"):
        getattr(lib, step).argtypes, getattr(lib, step).restype = getattr(new, step).argtypes, ctypes.c_int
    return lib, "#define PACKED" in (csrc / "decode.h").read_text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="git revision whose herd/csrc is the baseline")
    parser.add_argument("--formats", nargs="+", default=["int8", "int4", "bfloat16"],
                        choices=["bfloat16", "int8", "int8-g128", "int4", "int4-g128", "int4-a8", "int8-a8"])
    parser.add_argument("--rows", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import herd
    from herd import cpu_kernels
    from herd.fast import optimize
    from herd.infer.kv_pool import KVPool
    from herd.infer.native import NativeDecode
    from herd.quant import GROUPS

    torch.set_num_threads(bench.THREADS)
    if not cpu_kernels.available():
        raise SystemExit("the native kernels are unavailable here (no AVX512-BF16, or no C compiler)")
    with tempfile.TemporaryDirectory() as tmp:
        base, base_packs = _base_library(args.base, Path(tmp))
        libraries = {"base": base, "this tree": cpu_kernels.library()}
        steps = {}  # per format, a step for each library (a base without packed heads reads the weight itself)
        for fmt in args.formats:
            quantize = dict(quantize=fmt, quantize_groups=GROUPS) if fmt != "bfloat16" else {}
            model = optimize(herd.load(bench.ensure_model(), dtype=torch.bfloat16, **quantize))
            natives = {name: NativeDecode(model) for name in libraries}
            natives["base"].pack_head = base_packs
            steps[fmt] = (natives, KVPool(model.config, max(args.rows), 256, torch.bfloat16))

        def ms(fmt: str, rows: int, logits: bool, name: str) -> float:
            natives, pool = steps[fmt]
            native, library = natives[name], libraries[name]
            tokens_B1, positions_B, slots_B = torch.full((rows, 1), 5), torch.full((rows,), 10), torch.arange(rows)
            cpu_kernels._lib = library  # a step takes its kernel from the library loaded when it is first laid out
            try:
                if not native.takes(tokens_B1, pool):
                    raise SystemExit(f"the native step does not take {fmt}: {native.reason}")
                for _ in range(2):
                    native(tokens_B1, positions_B, slots_B, pool, logits=logits)
                times = []
                for _ in range(30):
                    start = time.perf_counter()
                    native(tokens_B1, positions_B, slots_B, pool, logits=logits)
                    times.append(time.perf_counter() - start)
            finally:
                cpu_kernels._lib = libraries["this tree"]
            return statistics.median(times) * 1e3

        cells = [(fmt, rows, logits) for fmt in args.formats for rows in args.rows for logits in (True, False)]
        times: dict[tuple, dict[str, list[float]]] = {cell: {name: [] for name in libraries} for cell in cells}
        with torch.no_grad():
            for r in range(args.rounds):
                for cell in cells:
                    for name in libraries:
                        times[cell][name].append(ms(*cell, name))
                print(f"round {r + 1}/{args.rounds} done, read {bench.bandwidth():.1f} GB/s", flush=True)
    print(f"\n| format | rows | step | {args.base} ms | this tree ms | {args.base} / this tree |")
    print("|---|---:|---|---:|---:|---:|")
    for (fmt, rows, logits), by in times.items():
        ratios = [a / b for a, b in zip(by["base"], by["this tree"], strict=True)]
        print(f"| {fmt} | {rows} | {'full' if logits else 'no head'} | {statistics.median(by['base']):.2f} | "
              f"{statistics.median(by['this tree']):.2f} | **{statistics.median(ratios):.2f}×** "
              f"({min(ratios):.2f}–{max(ratios):.2f}) |")


if __name__ == "__main__":
    main()
