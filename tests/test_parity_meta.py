"""Logits parity with Meta's reference (prefill) through herd's Meta loader, float32, max |Δ| ≤ 1e-4."""

import pytest
import torch
from meta_oracle import (
    DENSE_LIKE,
    MAVERICK_LIKE,
    SCOUT_LIKE,
    build_meta_model,
    meta_logits,
    meta_params,
    write_meta_checkpoint,
)

import herd

SHAPES = {"scout": SCOUT_LIKE, "maverick": MAVERICK_LIKE, "dense": DENSE_LIKE}
TOL = 1e-4


@pytest.mark.parametrize("n_shards", [1, 2])
@pytest.mark.parametrize("shape", SHAPES)
def test_meta_parity(shape, n_shards, tmp_path, tokens_BS):
    params = meta_params(**SHAPES[shape])
    ref = build_meta_model(params, seed=0)
    write_meta_checkpoint(ref, tmp_path, params, n_shards=n_shards, extra_state="bytesio")
    model = herd.load(tmp_path, dtype=torch.float32)
    with torch.no_grad():
        got = model(tokens_BS)
    assert (got - meta_logits(ref, tokens_BS)).abs().max().item() <= TOL


def test_meta_bf16_checkpoint_loads_in_requested_dtype(tmp_path, tokens_BS):
    params = meta_params(**SCOUT_LIKE)
    ref = build_meta_model(params, seed=1)
    write_meta_checkpoint(ref, tmp_path, params, n_shards=2, dtype=torch.bfloat16)
    assert herd.load(tmp_path).output.weight.dtype == torch.bfloat16  # dtype=None keeps the stored dtype
    model = herd.load(tmp_path, dtype=torch.float32)
    assert model.output.weight.dtype == torch.float32
    with torch.no_grad():  # the reference with the same bf16-rounded weights, computed in fp32
        for p in ref.parameters():
            p.copy_(p.bfloat16().float())
        assert (model(tokens_BS) - meta_logits(ref, tokens_BS)).abs().max().item() <= TOL


def test_meta_and_hf_agree_after_conversion(tmp_path, tokens_BS):
    """A Meta checkpoint saved by herd in HF format gives the same logits again."""
    params = meta_params(**MAVERICK_LIKE)
    ref = build_meta_model(params, seed=2)
    write_meta_checkpoint(ref, tmp_path / "meta", params, n_shards=2)
    herd.save(herd.load(tmp_path / "meta"), tmp_path / "hf")
    with torch.no_grad():
        got = herd.load(tmp_path / "hf")(tokens_BS)
    assert (got - meta_logits(ref, tokens_BS)).abs().max().item() <= TOL
