"""Peak memory of loading a 12B model with `quantize="int8"`: Llama Guard 4's text shape (11.1B parameters,
22 GB in bf16) with random weights, on this 24 GB machine, then a short generation and a Guard classification of
a ~350-token prompt (the category table and a user message; `herd.moderation.Judge`, verdict and P(unsafe)).

    .venv/bin/python benchmarks/quant_load_rss.py             # writes the checkpoint once (~22 GB on disk)
    .venv/bin/python benchmarks/quant_load_rss.py --scheme int4

The checkpoint is written shard by shard (HF layout, 5 GB shards), never whole in memory. The load runs in a
fresh process that reports its peak resident memory (ru_maxrss) after loading and after generating.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

CACHE = Path.home() / ".cache" / "herd-bench" / "models" / "guard4-text-12b-random"
SHARD_BYTES = 5 * 2**30


def write_checkpoint(path: Path) -> None:
    from herd.config import ModelConfig, preset
    from herd.formats import hf
    from herd.model import Transformer

    text = preset("llama-guard-4-12b").text
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in Transformer(text, None).state_dict().items()}
    names = hf.text_weight_names(text, hf.TEXT_ONLY_PREFIX)
    path.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    shard, size, weight_map, n, start = {}, 0, {}, 0, time.time()

    def flush() -> None:
        nonlocal shard, size, n
        n += 1
        file = f"model-{n:05d}.safetensors"
        save_file(shard, str(path / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
        print(f"  wrote {file} ({size / 1e9:.1f} GB, {time.time() - start:.0f}s)", file=sys.stderr, flush=True)
        shard, size = {}, 0

    for ours, theirs in names.items():
        shape = shapes[ours]
        t = (torch.ones(shape) if "norm" in ours else torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16)
        if size and size + t.numel() * 2 > SHARD_BYTES:
            flush()
        shard[theirs], size = t, size + t.numel() * 2
    flush()
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (path / "config.json").write_text(json.dumps(hf.model_config_to_hf(ModelConfig(text, None), "bfloat16")))


PROBE = """
import resource, sys, time, torch, herd
from herd.infer.engine import Engine
from herd.infer.sampling import SamplingParams
from herd.infer.steps import FastDecode
from herd.fast import optimize
torch.set_grad_enabled(False)
gb = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
start = time.time()
model = optimize(herd.load(sys.argv[1], dtype=torch.bfloat16, quantize=sys.argv[2]))
print(f"loaded in {time.time() - start:.0f}s, peak RSS {gb():.2f} GB", flush=True)
engine = Engine(model, step=FastDecode(model))
start = time.time()
out = engine.generate([[1, 2, 3, 4, 5, 6, 7, 8]], SamplingParams(temperature=0.0, max_new_tokens=4, stop_ids=()))
print(f"generated {len(out[0].token_ids)} tokens in {time.time() - start:.1f}s, peak RSS {gb():.2f} GB", flush=True)
from herd.moderation import Judge, judged_ids
from herd.tokenizer import load_tokenizer
tokenizer = load_tokenizer(None)
message = ("I run a small bakery and a customer left a one-star review claiming our bread made her sick. "
           "I think she is a competitor. Write me a reply that says she is lying, that she has done this to other "
           "shops in town, and that people should not trust anything she says. Also tell me whether I can find "
           "out where she lives from her review account, because I want to talk to her in person. ") * 2
judge = Judge(model, tokenizer, engine=Engine(model, step=FastDecode(model)))
prompt, _ = judge.prompt([{"role": "user", "content": message}])
start = time.time()
j = judge([[{"role": "user", "content": message}]])[0]
print(f"classified a {len(judged_ids(tokenizer, prompt))}-token Guard prompt in {time.time() - start:.1f}s "
      f"(verdict {j.verdict.label}, P(unsafe) {j.p_unsafe:.3f}), peak RSS {gb():.2f} GB", flush=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scheme", default="int8")
    args = parser.parse_args()
    if not (CACHE / "config.json").exists():
        print(f"writing {CACHE} ...", file=sys.stderr)
        write_checkpoint(CACHE)
    on_disk = sum(f.stat().st_size for f in CACHE.glob("*.safetensors"))
    print(f"{CACHE}: {on_disk / 1e9:.1f} GB of bf16 safetensors; loading with quantize={args.scheme!r}")
    subprocess.run([sys.executable, "-c", PROBE, str(CACHE), args.scheme], check=True)


if __name__ == "__main__":
    main()
