"""herd against llama.cpp, interleaved round by round on the same model and machine.

    .venv/bin/python benchmarks/vs_llama_cpp.py                     # float32 and bfloat16, 5 rounds
    .venv/bin/python benchmarks/vs_llama_cpp.py --dtypes bfloat16 --rounds 9 --prefill 2048
    .venv/bin/python benchmarks/vs_llama_cpp.py --dtypes bfloat16 int8 int4   # quantized: against Q8_0, Q4_K_M
    .venv/bin/python benchmarks/vs_llama_cpp.py --dtypes int8 int8-g128      # int8 in groups of 32 and of 128

This machine's memory bandwidth moves between about 30 and 60 GB/s from one minute to the next
(the host places its two vCPUs differently), so figures taken minutes apart do not compare. Every
round measures, for each workload, herd then llama-bench, then the read bandwidth; the table gives
each round's ratio and the median ratio. Workloads: prefill of --prefill tokens (llama-bench
`-p N`; herd's `Engine.prefill` to the last position's logits) and decode of 64 tokens at batch 1
after a 64-token prompt (llama-bench `-n 64 -d 64`), each the median of 3. herd's decode rows also give
their share of the memory-bandwidth roofline: tok/s × the weight bytes a step reads (`bench.decode_bytes`)
over the read bandwidth measured right after. herd's decode is given
twice against the same llama-bench figure: "decode b1" through `Engine.stream` (greedy sampling and
the Python loop included), and "decode b1, forward only", the model's decode step called in a loop,
which is what llama-bench's `tg` times (it evaluates one token after another and samples nothing).
herd's int8 / int4 quantize every weight group, the LM head too (`herd.quant`, bf16 activations), as
llama.cpp's Q8_0 / Q4_K_M do (Q4_K_M keeps the LM head at Q6_K and some tensors at Q6_K).
The benchmark model and its GGUF files come from `bench.py` and `llama_cpp.py`, built on first use;
llama.cpp itself needs `bash benchmarks/llama_cpp_setup.sh` once.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import bench
import llama_cpp
import torch

GGUF_TYPE = {"float32": "f32", "bfloat16": "bf16"}
# herd's quantized formats (bf16 activations) against llama.cpp's nearest: both quantize the LM head
QUANT = {"int8": "Q8_0", "int8-g128": "Q8_0", "int8-a8": "Q8_0", "int4": "Q4_K_M", "int4-a8": "Q4_K_M"}
FORMATS = [*GGUF_TYPE, *QUANT]


def herd_workloads(fmt: str, prefill: int, tokens: int) -> tuple[dict[str, Callable[[], float]], int]:
    """Functions measuring herd's tok/s on a loaded, compiled and warmed-up model: `fmt` a dtype, or a
    quantization scheme applied while loading (every module group, the LM head too; bf16 activations); and
    the bytes of weights its decode step reads per token (`bench.decode_bytes`)."""
    import herd
    from herd.fast import optimize
    from herd.infer.engine import Engine
    from herd.infer.kv_pool import KVPool, bucket
    from herd.infer.sampling import SamplingParams
    from herd.infer.steps import FastDecode
    from herd.quant import GROUPS

    dtype = getattr(torch, fmt) if fmt in GGUF_TYPE else torch.bfloat16
    quantize = dict(quantize=fmt, quantize_groups=GROUPS) if fmt in QUANT else {}
    model = optimize(herd.load(bench.ensure_model(), dtype=dtype, **quantize))
    step = FastDecode(model)
    engine = Engine(model, prefill_chunk=2048, step=step)
    long_prompt, prompts = bench._prompts(1, prefill)[0], bench._prompts(1, 64)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=tokens, stop_ids=())

    def prefill_once() -> None:
        bench.herd_prefill(engine, long_prompt)

    @torch.no_grad()
    def forward_only() -> float:
        """tok/s of the decode step alone, one token after another, as llama-bench's tg runs."""
        start = len(prompts[0])
        pool = KVPool(model.config, 1, bucket(start + tokens, model.config.max_seq_len), dtype)
        engine.prefill(pool, 0, prompts[0])
        tokens_11, slots_1 = torch.tensor([[prompts[0][-1]]]), torch.tensor([0])
        began = time.perf_counter()
        for i in range(tokens):
            step(tokens_11, torch.tensor([start + i]), slots_1, pool)
        return tokens / (time.perf_counter() - began)

    prefill_once()
    bench.herd_decode(engine, prompts, greedy)  # warm-up; compiles the decode step for this cache size
    forward_only()
    return {f"prefill {prefill}": lambda: prefill / bench._median_time(prefill_once, 3),
            "decode b1": lambda: statistics.median(bench.herd_decode(engine, prompts, greedy)[1] for _ in range(3)),
            "decode b1, forward only": lambda: statistics.median(forward_only() for _ in range(3))}, \
        bench.decode_bytes(model)


def llama_cpp_workloads(fmt: str, prefill: int, tokens: int) -> dict[str, Callable[[], float]]:
    path = llama_cpp.convert(bench.MODEL_DIR, llama_cpp.CACHE / "gguf" / bench.MODEL_DIR.name,
                             GGUF_TYPE.get(fmt, "bf16"))
    if fmt in QUANT:
        path = llama_cpp.quantize(path, QUANT[fmt])
    run = llama_cpp.bench
    return {f"prefill {prefill}": lambda: run(path, bench.THREADS, prompts=(prefill,), gen=0)[f"pp{prefill}"],
            "decode b1": lambda: run(path, bench.THREADS, prompts=(), gen=tokens, extra=("-d", "64"))[f"tg{tokens}"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=FORMATS,
                        help="dtypes, and quantized formats: int8, int8-g128 and int8-a8 (against Q8_0), int4 and "
                             "int4-a8 (against Q4_K_M)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prefill", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=64, help="decode tokens per measurement")
    args = parser.parse_args()
    torch.set_num_threads(bench.THREADS)
    bench.ensure_model()
    print("| dtype | workload | round | herd tok/s | llama.cpp tok/s | herd / llama.cpp | read GB/s | herd roofline |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    summary = []
    for dtype in args.dtypes:
        ours, step_bytes = herd_workloads(dtype, args.prefill, args.tokens)
        theirs = llama_cpp_workloads(dtype, args.prefill, args.tokens)
        rates: dict[str, list[tuple[float, float]]] = {name: [] for name in ours}
        roofline: dict[str, list[float]] = {name: [] for name in ours}
        print(f"  {dtype}: the decode step reads {step_bytes / 1e6:.1f} MB of weights per token", file=sys.stderr)
        for r in range(args.rounds):
            for name in ours:
                # both herd decode rows against one llama-bench tg run per round
                a, b = ours[name](), (theirs[name]() if name in theirs else rates["decode b1"][-1][1])
                rates[name].append((a, b))
                read = bench.bandwidth()
                # decode: herd's share of the roofline, tok/s × bytes per token over the read bandwidth
                share = a * step_bytes / (read * 1e9) if name.startswith("decode") else None
                if share is not None:
                    roofline[name].append(share)
                print(f"| {dtype} | {name} | {r + 1} | {a:,.1f} | {b:,.1f} | {a / b:.2f}× | {read:.1f} | "
                      f"{'' if share is None else f'{share:.0%}'} |", flush=True)
            print(f"  {dtype}: round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        for name, pairs in rates.items():
            ratios, shares = [a / b for a, b in pairs], roofline[name]
            share = f"{statistics.median(shares):.0%} ({min(shares):.0%}–{max(shares):.0%})" if shares else ""
            summary.append(f"| {dtype} | {name} | median | {statistics.median(a for a, _ in pairs):,.1f} | "
                           f"{statistics.median(b for _, b in pairs):,.1f} | **{statistics.median(ratios):.2f}×** "
                           f"({min(ratios):.2f}–{max(ratios):.2f}) | | {share} |")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
