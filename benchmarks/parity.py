"""Print max |Δlogit| of herd against HF transformers and Meta's reference on the tiny test configs.

    .venv/bin/python benchmarks/parity.py

Every row goes through herd's real loader from a checkpoint written in the oracle's own format.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
logging.getLogger("transformers").setLevel(logging.ERROR)
warnings.filterwarnings("ignore")

import hf_oracle  # noqa: E402
import meta_oracle  # noqa: E402

import herd  # noqa: E402


def main() -> None:
    tokens_BS = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(1))
    rows = []
    for name, cfg in (("scout-like", hf_oracle.SCOUT_LIKE), ("maverick-like", hf_oracle.MAVERICK_LIKE),
                      ("dense", hf_oracle.DENSE_LIKE)):
        for kind, make in (("Llama4ForCausalLM", hf_oracle.causal_lm),
                           ("Llama4ForConditionalGeneration", hf_oracle.conditional_generation)):
            if kind.endswith("Generation") and cfg.n_experts == 0:
                continue
            ref = make(cfg)
            with tempfile.TemporaryDirectory() as d, torch.no_grad():
                got = herd.load(hf_oracle.save_hf(ref, Path(d)))(tokens_BS)
            rows.append((name, f"HF {kind}", (got - hf_oracle.hf_logits(ref, tokens_BS)).abs().max().item()))
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(6, 3, 56, 56, generator=g) * 2 - 1  # a 1-tile and a 2×2 (+ thumbnail) image
    patches = [hf_oracle.PATCH_ID] * 4
    fused_BS = torch.tensor([[1, 2, *patches, 3, *(patches * 5), 4, 5, 6]])
    for name, cfg in (("scout-like", hf_oracle.SCOUT_LIKE), ("maverick-like", hf_oracle.MAVERICK_LIKE)):
        ref = hf_oracle.conditional_generation(cfg, seed=2)
        with tempfile.TemporaryDirectory() as d, torch.no_grad():
            model = herd.load(hf_oracle.save_hf(ref, Path(d)))
            got = model(fused_BS, image_features_FD=model.encode_images([pixels[:1], pixels[1:]]))
        delta = (got - hf_oracle.hf_multimodal_logits(ref, fused_BS, pixels)).abs().max().item()
        rows.append((name, "HF ForConditionalGeneration, text + 2 images", delta))
    for name, preset in (("scout-like", meta_oracle.SCOUT_LIKE), ("maverick-like", meta_oracle.MAVERICK_LIKE),
                         ("dense", meta_oracle.DENSE_LIKE)):
        params = meta_oracle.meta_params(**preset)
        ref = meta_oracle.build_meta_model(params)
        for shards in (1, 2):
            with tempfile.TemporaryDirectory() as d, torch.no_grad():
                meta_oracle.write_meta_checkpoint(ref, d, params, n_shards=shards)
                got = herd.load(d)(tokens_BS)
            delta = (got - meta_oracle.meta_logits(ref, tokens_BS)).abs().max().item()
            rows.append((name, f"Meta reference, {shards} shard(s)", delta))
    print(f"tokens: {tuple(tokens_BS.shape)}, chunk 8, temperature floor 4, float32")
    print("| config | oracle | max abs delta logit |\n|---|---|---|")
    for name, oracle, delta in rows:
        print(f"| {name} | {oracle} | {delta:.2e} |")


if __name__ == "__main__":
    main()
