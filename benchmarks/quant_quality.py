"""How much quantization changes a model's predictions, measured as llama.cpp's `llama-perplexity
--kl-divergence` does: windows of 512 tokens of held-out text, the second half of each scored.

    .venv/bin/herd demo                                      # once: trains the demo model (herd-10m)
    .venv/bin/python benchmarks/quant_quality.py             # the demo model on its held-out stdlib split
    .venv/bin/python benchmarks/quant_quality.py --model DIR --data DIR --windows 64

For each scheme (every module group quantized; with and without the LM head), against the fp32 model on
the same tokens: mean KL divergence KL(p_fp32 ‖ p_quant) per scored token, the share of tokens whose top-1
prediction is unchanged, and the perplexity ratio PPL(quant) / PPL(fp32). Activations stay fp32, so the
figures are the weights' quantization error alone.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F

import herd
from herd.data.shards import TokenShards
from herd.quant import DEFAULT_GROUPS, GROUPS, SCHEMES

DEMO = Path.home() / ".cache" / "herd" / "demo"


@torch.no_grad()
def scored_log_probs(model: torch.nn.Module, windows_NS: torch.Tensor, batch: int = 8) -> torch.Tensor:
    """log p [N, S/2, V] (fp32) of the second half of every window: the positions llama-perplexity scores."""
    out = []
    for i in range(0, len(windows_NS), batch):
        logits = model(windows_NS[i : i + batch])[:, windows_NS.shape[1] // 2 : -1]
        out.append(F.log_softmax(logits.float(), dim=-1))
    return torch.cat(out)


def compare(reference: torch.Tensor, quantized: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    kld = (reference.exp() * (reference - quantized)).sum(-1)
    nll_ref = -reference.gather(-1, targets[..., None]).mean()
    nll_q = -quantized.gather(-1, targets[..., None]).mean()
    return {"kld": float(kld.mean()), "top1": float((reference.argmax(-1) == quantized.argmax(-1)).float().mean()),
            "ppl_ratio": math.exp(float(nll_q - nll_ref)), "ppl": math.exp(float(nll_q))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=DEMO / "run" / "model")
    parser.add_argument("--data", type=Path, default=DEMO / "data", help="token shards with a `val` split")
    parser.add_argument("--windows", type=int, default=64, help="windows of --context tokens")
    parser.add_argument("--context", type=int, default=512)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    shards = TokenShards(args.data, "val")
    n_windows = min(args.windows, shards.n_tokens // args.context)  # the demo's held-out split holds ~55
    tokens = torch.from_numpy(shards.read(0, n_windows * args.context).astype("int64"))
    windows_NS = tokens.view(n_windows, args.context)
    targets = windows_NS[:, args.context // 2 + 1 :]
    reference = scored_log_probs(herd.load(args.model, dtype=torch.float32), windows_NS)
    ppl = math.exp(float(-reference.gather(-1, targets[..., None]).mean()))
    print(f"{args.model}: {n_windows} windows of {args.context}, second halves scored ({targets.numel():,} "
          f"tokens); fp32 perplexity {ppl:.3f}\n")
    print("| scheme | LM head | mean KLD | same top-1 | PPL ratio |")
    print("|---|---|---:|---:|---:|")
    for name in SCHEMES:
        for groups in (DEFAULT_GROUPS, GROUPS):
            model = herd.load(args.model, dtype=torch.float32, quantize=name, quantize_groups=groups)
            r = compare(reference, scored_log_probs(model, windows_NS), targets)
            print(f"| {name} | {'int' if 'lm_head' in groups else 'fp32'} | {r['kld']:.5f} | {100 * r['top1']:.2f}% | "
                  f"{r['ppl_ratio']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
