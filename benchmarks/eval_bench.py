"""How fast `herd eval perplexity` scores text on the benchmark model, against its own prefill and HF.

    .venv/bin/python benchmarks/eval_bench.py                    # 8 windows of 512, fp32
    .venv/bin/python benchmarks/eval_bench.py --windows 16 --dtype bfloat16

The same random token windows (the benchmark model of bench.py: vocab 202,048, hidden 512, 8 MoE layers)
are scored three ways, each timed as the median of 3 runs after a warm-up:
- herd prefill: the forward to the last position's logits only (what `bench.py` calls prefill);
- herd eval, both protocols: HF's strided windows (stride = window, every token scored) and llama.cpp's (the
  second half of each window scored), through `herd.eval.perplexity` and its batched scorer;
- HF transformers (Llama4ForCausalLM): the full logits of every window and their cross-entropy, the
  oracle's way of computing the strided figure.
Rates are tokens of text processed per second. The LM head's share is printed too: at a 202,048-token
vocabulary every scored token costs 2·512·202,048 FLOPs in the head, ~3.4× the rest of this model's forward.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from bench import THREADS, _median_time, ensure_model

import herd
from herd.eval import perplexity
from herd.eval.scoring import Scorer
from herd.fast import optimize

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def timed(fn, reps: int = 3) -> float:
    fn()  # warm-up
    return _median_time(fn, reps)


def herd_rows(path: str, dtype: torch.dtype, windows_NS: torch.Tensor, window: int) -> list[tuple[str, float]]:
    model = optimize(herd.load(path, dtype=dtype))
    scorer = Scorer(model, batch_tokens=4096)
    stream = windows_NS.flatten().tolist()
    return [
        ("herd prefill (last position's logits)",
         timed(lambda: [model(w[None], last_only=True) for w in windows_NS])),
        ("herd eval perplexity, strided (all tokens scored)",
         timed(lambda: perplexity.strided(scorer, [stream], window, window))),
        ("herd eval perplexity, llama.cpp (second halves scored)",
         timed(lambda: perplexity.llama_cpp(scorer, [stream], 0, window))),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    parser.add_argument("--no-hf", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    torch.set_grad_enabled(False)
    dtype = DTYPES[args.dtype]
    path = ensure_model()
    windows_NS = torch.randint(0, 200_000, (args.windows, args.window), generator=torch.Generator().manual_seed(0))
    n = windows_NS.numel()
    rows = herd_rows(path, dtype, windows_NS, args.window)
    if not args.no_hf:
        import logging

        from transformers import Llama4ForCausalLM

        logging.getLogger("transformers").setLevel(logging.ERROR)
        hf = Llama4ForCausalLM.from_pretrained(path, dtype=dtype).eval()

        def hf_ppl() -> None:
            for w in windows_NS:
                logits = hf(input_ids=w[None], use_cache=False).logits[0].float()
                F.cross_entropy(logits[:-1], w[1:])

        rows.append(("HF transformers, full logits per window", timed(hf_ppl, reps=1)))
    print(f"benchmark model, {args.dtype}, {args.windows} windows of {args.window} ({n:,} tokens), {THREADS} threads\n")
    print("| path | seconds | tokens/s | vs HF |")
    print("|---|---:|---:|---:|")
    hf_rate = n / rows[-1][1] if not args.no_hf else None
    for name, seconds in rows:
        ratio = f"{n / seconds / hf_rate:.2f}×" if hf_rate else "–"
        print(f"| {name} | {seconds:.2f} | {n / seconds:,.0f} | {ratio} |")


if __name__ == "__main__":
    main()
