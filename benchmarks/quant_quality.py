"""How much quantization changes a model's predictions, measured as llama.cpp's `llama-perplexity
--kl-divergence` does: windows of 512 tokens of held-out text, the second half of each scored.

    .venv/bin/herd demo                                      # once: trains the demo model (herd-10m)
    .venv/bin/python benchmarks/quant_quality.py             # the demo model on its held-out stdlib split
    .venv/bin/python benchmarks/quant_quality.py --model DIR --data DIR --windows 64

For each scheme (every module group quantized; with and without the LM head), against the fp32 model on
the same tokens: mean KL divergence KL(p_fp32 ‖ p_quant) per scored token, the share of tokens whose top-1
prediction is unchanged, and the perplexity ratio PPL(quant) / PPL(fp32). Activations stay fp32, so the
figures are the weights' quantization error alone.

    bash benchmarks/llama_cpp_setup.sh                                   # once
    .venv/bin/python benchmarks/quant_quality.py --llama-cpp             # herd beside llama.cpp's Q8_0 / Q4_K_M

`--llama-cpp` measures llama.cpp's Q8_0 and Q4_K_M with `llama-perplexity --kl-divergence` against its own
F32 GGUF of the same checkpoint, and herd's schemes (LM head quantized too, as llama.cpp's types do) against
herd's fp32, on the same token ids: the held-out split decoded to text, which both tokenizers encode (checked
id for id with `llama-tokenize`; the demo's BPE is converted with llama.cpp's "llama4" pre-tokenizer, the
same regex). llama.cpp has no router selection bias (neither has transformers), so both sides run the
checkpoint without it (herd's zeroed: it only picks experts). llama.cpp's types also quantize the token
embedding, and its Q8_0 / Q4_K dot products quantize the activations to 8 bits.
"""

from __future__ import annotations

import argparse
import math
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F

import herd
from herd.data.shards import TokenShards
from herd.quant import DEFAULT_GROUPS, GROUPS, SCHEMES
from herd.tokenizer import load_tokenizer

DEMO = Path.home() / ".cache" / "herd" / "demo"
LLAMA_CPP_TYPES = ("Q8_0", "Q4_K_M")


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


def windows_of(ids_T: torch.Tensor, windows: int, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `windows` windows [N, context] of the ids, and the targets of their scored second halves."""
    n = min(windows, ids_T.shape[0] // context)
    windows_NS = ids_T[: n * context].view(n, context)
    return windows_NS, windows_NS[:, context // 2 + 1 :]


def perplexity(reference: torch.Tensor, targets: torch.Tensor) -> float:
    return math.exp(float(-reference.gather(-1, targets[..., None]).mean()))


def row(*cells: str, r: dict[str, float]) -> str:
    """A markdown row: the cells, then the KLD, same top-1 and perplexity ratio of `r`."""
    return "| " + " | ".join([*cells, f"{r['kld']:.5f}", f"{100 * r['top1']:.2f}%", f"{r['ppl_ratio']:.4f}"]) + " |"


def held_out_text(model_dir: Path, data_dir: Path) -> str:
    """The `val` split's documents as text (special tokens dropped), concatenated."""
    tokenizer, shards = load_tokenizer(model_dir / "tokenizer.json"), TokenShards(data_dir, "val")
    text, run = [], []
    for t in shards.read(0, shards.n_tokens).astype("int64").tolist():
        if tokenizer.is_special(t):
            text.append(tokenizer.decode(run))
            run = []
        else:
            run.append(t)
    return "".join([*text, tokenizer.decode(run)])


def without_router_bias(model_dir: Path, out_dir: Path) -> Path:
    """A copy of an HF checkpoint without the routers' selection bias (llama.cpp has none)."""
    from safetensors.torch import load_file, save_file

    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    for f in model_dir.iterdir():
        if f.suffix == ".safetensors":
            tensors = load_file(f)
            save_file({k: v for k, v in tensors.items() if not k.endswith("selection_bias")}, out_dir / f.name,
                      metadata={"format": "pt"})
        elif f.is_file():
            shutil.copyfile(f, out_dir / f.name)
    return out_dir


def beside_llama_cpp(args: argparse.Namespace) -> None:
    """herd's schemes and llama.cpp's types on the same ids; see the module doc."""
    import llama_cpp

    work = llama_cpp.CACHE / "quality" / args.model.name
    work.mkdir(parents=True, exist_ok=True)
    text_file = work / "val.txt"
    text_file.write_text(held_out_text(args.model, args.data))
    ids = load_tokenizer(args.model / "tokenizer.json").encode(text_file.read_text())
    f32 = llama_cpp.convert(without_router_bias(args.model, work / "checkpoint"), work, "f32", force=True,
                            pre_tokenizer=llama_cpp.LLAMA4_TOKENIZER_PRE)
    theirs = llama_cpp.tokenize(f32, text_file)
    if theirs != ids:
        at = next((i for i, (a, b) in enumerate(zip(ids, theirs, strict=False)) if a != b), min(len(ids), len(theirs)))
        raise SystemExit(f"llama.cpp tokenizes the text differently from herd (from id {at}): the figures would "
                         "not be on the same tokens")
    base = work / "f32.kld"
    base.unlink(missing_ok=True)
    rows = {"F32": llama_cpp.kl_divergence(f32, text_file, base, context=args.context)}
    for qtype in LLAMA_CPP_TYPES:
        rows[qtype] = llama_cpp.kl_divergence(llama_cpp.quantize(f32, qtype, force=True), text_file, base,
                                              context=args.context)

    windows_NS, targets = windows_of(torch.tensor(ids), args.windows, args.context)

    def load(**quantize: object) -> torch.nn.Module:
        model = herd.load(args.model, dtype=torch.float32, **quantize)
        for block in model.layers:
            if block.is_moe and block.feed_forward.router_bias is not None:
                block.feed_forward.router_bias.zero_()  # as llama.cpp runs it: no selection bias
        return model

    reference = scored_log_probs(load(), windows_NS)
    print(f"{args.model} without its router bias: {len(windows_NS)} windows of {args.context} ({targets.numel():,} "
          f"scored tokens, ids equal in both); fp32 perplexity herd {perplexity(reference, targets):.3f}, llama.cpp "
          f"F32 {rows['F32']['ppl']:.3f}\n")
    print("| engine | format | mean KLD | same top-1 | PPL ratio |")
    print("|---|---|---:|---:|---:|")
    for name in SCHEMES:
        quantized = scored_log_probs(load(quantize=name, quantize_groups=GROUPS), windows_NS)
        print(row("herd", f"{name}, LM head too", r=compare(reference, quantized, targets)), flush=True)
    for qtype in LLAMA_CPP_TYPES:
        print(row("llama.cpp", qtype, r=rows[qtype]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=DEMO / "run" / "model")
    parser.add_argument("--data", type=Path, default=DEMO / "data", help="token shards with a `val` split")
    parser.add_argument("--windows", type=int, default=64, help="windows of --context tokens")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--llama-cpp", action="store_true",
                        help="herd's schemes beside llama.cpp's Q8_0 / Q4_K_M on the same ids (module doc)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    if args.llama_cpp:
        beside_llama_cpp(args)
        return
    shards = TokenShards(args.data, "val")  # the demo's held-out split holds ~55 windows
    windows_NS, targets = windows_of(torch.from_numpy(shards.read(0, shards.n_tokens).astype("int64")),
                                     args.windows, args.context)
    reference = scored_log_probs(herd.load(args.model, dtype=torch.float32), windows_NS)
    print(f"{args.model}: {len(windows_NS)} windows of {args.context}, second halves scored ({targets.numel():,} "
          f"tokens); fp32 perplexity {perplexity(reference, targets):.3f}\n")
    print("| scheme | LM head | mean KLD | same top-1 | PPL ratio |")
    print("|---|---|---:|---:|---:|")
    for name in SCHEMES:
        for groups in (DEFAULT_GROUPS, GROUPS):
            model = herd.load(args.model, dtype=torch.float32, quantize=name, quantize_groups=groups)
            r = compare(reference, scored_log_probs(model, windows_NS), targets)
            print(row(name, "int" if "lm_head" in groups else "fp32", r=r), flush=True)


if __name__ == "__main__":
    main()
