"""The compiled fast paths against the plain model: same logits, same greedy tokens."""

import torch
from hf_oracle import MAVERICK_LIKE, SCOUT_LIKE

import herd
from herd.engine import Engine
from herd.fast import matvec, optimize, restore
from herd.sampling import SamplingParams


def test_matvec_equals_linear():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1000, 96, generator=g)
    for rows in (1, 3, 8):
        x = torch.randn(rows, 96, generator=g)
        assert (matvec(x, w) - x @ w.T).abs().max().item() <= 1e-4
    x16, w16 = torch.randn(2, 96, generator=g).bfloat16(), w.bfloat16()
    want = (x16.float() @ w16.float().T).bfloat16()  # fp32 accumulation, one rounding at the end
    assert (matvec(x16, w16).float() - want.float()).abs().max().item() <= 0.02


def test_optimized_model_matches_plain():
    model = herd.build(SCOUT_LIKE, seed=0)
    tokens = torch.randint(0, 256, (2, 30), generator=torch.Generator().manual_seed(1))
    params = SamplingParams(temperature=0.0, max_new_tokens=12, stop_ids=(), logprobs=0)
    with torch.no_grad():
        want_logits = model(tokens)
    want = Engine(model).generate(tokens.tolist(), params)
    optimize(model)
    with torch.no_grad():
        assert (model(tokens) - want_logits).abs().max().item() <= 1e-4
    got = Engine(model).generate(tokens.tolist(), params)
    assert [c.token_ids for c in got] == [c.token_ids for c in want]
    assert max(abs(a - b) for c, d in zip(got, want, strict=True) for a, b in zip(c.logprobs, d.logprobs,
                                                                                 strict=True)) <= 1e-4
    restore(model)
    assert all(type(m) is torch.nn.Linear for m in model.modules() if isinstance(m, torch.nn.Linear))


def test_fused_projections_share_memory_and_save(tmp_path):
    model = optimize(herd.build(SCOUT_LIKE, seed=0))
    attention = model.layers[0].attention
    assert attention.wq.weight.untyped_storage().data_ptr() == attention.wqkv.weight.untyped_storage().data_ptr()
    herd.save(model, tmp_path)
    again = herd.load(tmp_path)
    tokens = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert (again(tokens) - model(tokens)).abs().max().item() <= 1e-4


def test_optimized_maverick_shape():
    model = optimize(herd.build(MAVERICK_LIKE, seed=0))
    tokens = torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(2))
    plain = restore(herd.build(MAVERICK_LIKE, seed=0))
    with torch.no_grad():
        assert (model(tokens, last_only=True) - plain(tokens, last_only=True)).abs().max().item() <= 1e-4
