"""Fast paths against plain references: sparse MoE vs dense, chunked attention vs an explicit mask."""

import pytest
import torch
from hf_oracle import MAVERICK_LIKE, SCOUT_LIKE

import herd
from herd.attention import causal_attention
from herd.moe import MoE


@pytest.mark.parametrize("top_k", [1, 2])
def test_sparse_moe_equals_dense(top_k):
    torch.manual_seed(0)
    moe = MoE(dim=32, hidden=48, n_experts=6, top_k=top_k)
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x_BSD = torch.randn(3, 17, 32)
    moe.impl = "sparse"
    sparse = moe(x_BSD)
    moe.impl = "dense"
    dense = moe(x_BSD)
    assert (sparse - dense).abs().max().item() <= 1e-5


def test_sparse_moe_handles_unused_experts():
    moe = MoE(dim=8, hidden=16, n_experts=4)
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.2)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[2] = 1.0  # expert 2 wins for inputs with a positive sum
    x_TD = torch.rand(5, 8)
    experts_TK, _ = moe.route(x_TD)
    assert experts_TK.unique().tolist() == [2]
    moe.impl = "dense"
    want = moe(x_TD[None])
    moe.impl = "sparse"
    assert torch.allclose(moe(x_TD[None]), want, atol=1e-6)


@pytest.mark.parametrize("config", [SCOUT_LIKE, MAVERICK_LIKE], ids=["scout", "maverick"])
def test_model_sparse_equals_dense(config, tokens_BS):
    model = herd.build(config, seed=0)
    with torch.no_grad():
        sparse = model(tokens_BS)
        model.set_moe_impl("dense")
        dense = model(tokens_BS)
    assert (sparse - dense).abs().max().item() <= 1e-5


def _masked_reference(q, k, v, start, chunk):
    """Plain attention with an explicit boolean mask over absolute positions."""
    S = q.shape[2]
    pos = torch.arange(start, start + S)
    allowed = pos[None, :] <= pos[:, None]
    if chunk is not None:
        allowed &= (pos[None, :] // chunk) == (pos[:, None] // chunk)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ v


@pytest.mark.parametrize("start,S,chunk", [(0, 40, 8), (0, 8, 8), (0, 5, 8), (3, 30, 8), (13, 3, 8), (5, 64, 16),
                                           (0, 33, None), (7, 20, None)])
def test_chunked_attention_matches_mask(start, S, chunk):
    g = torch.Generator().manual_seed(S)
    q = torch.randn(2, 4, S, 16, generator=g)
    k, v = (torch.randn(2, 2, S, 16, generator=g) for _ in range(2))
    got = causal_attention(q, k, v, start_pos=start, chunk_size=chunk)
    assert (got - _masked_reference(q, k, v, start, chunk)).abs().max().item() <= 1e-5


def test_last_only_logits(tokens_BS):
    model = herd.build(SCOUT_LIKE, seed=0)
    with torch.no_grad():
        assert torch.allclose(model(tokens_BS, last_only=True), model(tokens_BS)[:, -1:], atol=1e-5)


def test_start_pos_continues_positions(tokens_BS):
    """A run at start_pos=p equals the tail of a run from 0 when attention cannot see the prefix:
    here a single chunk-aligned window on a model whose every layer is chunked."""
    config = SCOUT_LIKE.replace(nope_layer_interval=None)
    model = herd.build(config, seed=0)
    with torch.no_grad():
        full = model(tokens_BS[:, :24])
        tail = model(tokens_BS[:, 16:24], start_pos=16)
    assert (full[:, 16:] - tail).abs().max().item() <= 1e-5


def test_build_is_seeded_and_eval():
    a, b = herd.build(SCOUT_LIKE, seed=5), herd.build(SCOUT_LIKE, seed=5)
    assert not a.training
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_attention_with_past_matches_mask(dtype, tol):
    from herd.attention import attention_with_past

    g = torch.Generator().manual_seed(3)
    L, S = 23, 9
    q = torch.randn(2, 4, S, 16, generator=g).to(dtype)
    k, v = (torch.randn(2, 2, L + S, 16, generator=g).to(dtype) for _ in range(2))
    got = attention_with_past(q, k[:, :, :L], v[:, :, :L], k[:, :, L:], v[:, :, L:])
    pos = torch.arange(L, L + S)  # the queries sit after the L cached positions
    allowed = torch.arange(L + S)[None, :] <= pos[:, None]
    kr, vr = k.float().repeat_interleave(2, dim=1), v.float().repeat_interleave(2, dim=1)
    scores = (q.float() @ kr.transpose(-1, -2)) / 4.0
    want = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ vr
    assert (got.float() - want).abs().max().item() <= tol
