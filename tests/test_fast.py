"""The compiled fast paths against the plain model: same logits, same greedy tokens."""

import pytest
import torch
from hf_oracle import DENSE_LIKE, MAVERICK_LIKE, SCOUT_LIKE
from test_cpu_kernels import NATIVE  # this CPU and compiler can build the native kernels

import herd
import herd.rope
from herd.fast import matvec, optimize, restore
from herd.infer.engine import Engine
from herd.infer.kv_pool import KVPool, bucket
from herd.infer.sampling import SamplingParams
from herd.infer.steps import FastDecode


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
    got = Engine(model, step=FastDecode(model)).generate(tokens.tolist(), params)
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


def test_fused_views_survive_to(tmp_path):
    """After .to(dtype), the parts are views of the fused weight again: no extra memory, one truth."""
    model = optimize(herd.build(SCOUT_LIKE, seed=0)).to(torch.bfloat16)
    attention = model.layers[0].attention
    assert attention.wq.weight.dtype == torch.bfloat16
    assert attention.wq.weight.untyped_storage().data_ptr() == attention.wqkv.weight.untyped_storage().data_ptr()
    plain = herd.build(SCOUT_LIKE, seed=0).to(torch.bfloat16)
    tokens = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert (model(tokens) - plain(tokens)).abs().max() < 0.05  # bf16: matvec and F.linear round apart
    restore(model)
    assert getattr(attention, "wqkv", None) is None and type(attention).__name__ == "Attention"
    with torch.no_grad():
        assert (model(tokens) - plain(tokens)).abs().max() < 0.05


def test_rope_tables_stay_fp32_under_casts():
    from herd.config import preset

    model = herd.build(preset("debug"), dtype=torch.bfloat16)
    assert model.freq_K2.dtype == torch.float32 and model.vision.rope_cos_NK2.dtype == torch.float32
    model = model.to(torch.float32).to(torch.bfloat16)
    assert model.freq_K2.dtype == torch.float32 and model.vision.rope_sin_NK2.dtype == torch.float32
    want = herd.rope.inv_freq(16, 500000.0, model.config.rope_scaling)
    assert torch.equal(model.freq_K2, want)


def test_matvec_falls_back_to_linear_past_the_recompile_limit(monkeypatch, caplog):
    import herd.fast as fast

    monkeypatch.setattr(fast, "_compiled", None)
    monkeypatch.setattr(fast, "_native", lambda x, w: False)  # the compiled row-dot, as without the kernels
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    with torch._dynamo.config.patch({fast.RECOMPILE_LIMIT: 1}):  # (monkeypatch's undo deletes config keys)
        for rows, width in ((1, 32), (2, 48), (3, 64)):  # new shapes past a limit of one compile
            x, w = torch.randn(rows, width, generator=g), torch.randn(40, width, generator=g)
            assert (fast.matvec(x, w) - x @ w.T).abs().max().item() <= 1e-4
    torch._dynamo.reset()




@pytest.mark.slow
@pytest.mark.parametrize("path", ["graph", pytest.param("native", marks=pytest.mark.skipif(
    not NATIVE, reason="the native step needs AVX512-BF16 and a C compiler"))])
@pytest.mark.parametrize("config", [SCOUT_LIKE, MAVERICK_LIKE, DENSE_LIKE], ids=["scout", "maverick", "dense"])
def test_decode_step_matches_eager(config, path):
    """The whole-step graph, and the native step (herd.infer.native), against the eager model in fp32:
    two rows at different positions in slots of a larger pool, chunked layers wrapping their ring many
    times, global layers over a masked span of 512 positions."""
    model = herd.build(config, seed=0)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (250, 37)]
    params = SamplingParams(temperature=0.0, max_new_tokens=16, stop_ids=(), logprobs=0)
    want = Engine(model).generate(prompts, params)
    optimize(model)
    step = FastDecode(model)
    step.native.enabled = path == "native"  # "graph": as where the native step cannot run
    engine = Engine(model, step=step, max_slots=4, max_context=1024)
    engine.generate([[5, 6, 7]], params)  # the prompts' rows then sit in other slots than 0 and 1
    step.native_steps = step.compiled_steps = 0
    got = engine.generate(prompts, params)
    steps = step.native_steps if path == "native" else step.compiled_steps
    assert step.enabled and steps == 15  # both prompts fit one step's prefill budget: 15 steps of two rows
    assert [c.token_ids for c in got] == [c.token_ids for c in want]
    assert max(abs(a - b) for c, d in zip(got, want, strict=True)
               for a, b in zip(c.logprobs, d.logprobs, strict=True)) <= 1e-4


def test_attended_spans_come_in_few_sizes():
    sizes = [bucket(n, 3000) for n in (1, 3, 256, 257, 600, 1024, 2049, 3000)]
    assert sizes == [256, 256, 256, 512, 1024, 1024, 3000, 3000]
    assert bucket(5, 100) == 100
    assert [bucket(n, 10**6) for n in (8192, 8193, 20000)] == [8192, 16384, 24576]


@pytest.mark.slow
def test_compiled_decode_falls_back_to_eager(monkeypatch, caplog):
    """Batches past max_batch, and a step that fails to compile, decode eagerly with the same result."""
    model = herd.build(SCOUT_LIKE, seed=0)
    prompts = [[1, 2, 3, 4, 5], [9, 8, 7]]
    params = SamplingParams(temperature=0.0, max_new_tokens=4, stop_ids=(), logprobs=0)
    want = Engine(model).generate(prompts, params)
    optimize(model)
    step = FastDecode(model, max_batch=1)
    step.native.enabled = False
    assert [c.token_ids for c in Engine(model, step=step).generate(prompts, params)] == [c.token_ids for c in want]
    assert step.compiled_steps == 0  # both rows decode together throughout

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(step, "_compiled", broken)
    with caplog.at_level("WARNING", logger="herd"):
        got = Engine(model, step=step).generate(prompts[0], params)
    assert got[0].token_ids == want[0].token_ids
    assert not step.enabled and "decoding eagerly" in caplog.text


def test_experts_are_stored_output_major_and_restore(tmp_path):
    model = optimize(herd.build(SCOUT_LIKE, seed=0))
    experts = model.layers[0].feed_forward.experts
    assert experts.w13.transpose(1, 2).is_contiguous() and experts.w2.transpose(1, 2).is_contiguous()
    tokens = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(4))
    plain = herd.build(SCOUT_LIKE, seed=0)
    with torch.no_grad():
        assert (model(tokens) - plain(tokens)).abs().max().item() <= 1e-4
    model.to(torch.bfloat16)  # the layout survives a cast
    assert experts.w13.dtype == torch.bfloat16 and experts.w13.transpose(1, 2).is_contiguous()
    model.to(torch.float32)
    herd.save(model, tmp_path)
    with torch.no_grad():
        assert (herd.load(tmp_path)(tokens) - model(tokens)).abs().max().item() <= 1e-2
    restore(model)
    assert type(experts).__name__ == "Experts" and experts.w13.is_contiguous()
    assert type(model.layers[0].attention).__name__ == "Attention"


@pytest.mark.slow
def test_compiled_decode_step_in_bf16_is_as_accurate_as_eager():
    """In bf16 the compiled step attends in fp32 (eager SDPA in bf16): both against the fp32 model."""
    model = herd.build(SCOUT_LIKE, seed=0)
    prompt = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(4))
    tokens_11, positions_1 = torch.tensor([[7]]), torch.tensor([40])

    slots_1 = torch.tensor([0])

    def step(m: torch.nn.Module, dtype: torch.dtype, fast: FastDecode | None) -> torch.Tensor:
        pool = KVPool(m.config, 1, 256, dtype)
        with torch.no_grad():
            m(prompt, kv=pool.prefill(0, 0), last_only=True)
            if fast is not None:
                return fast(tokens_11, positions_1, slots_1, pool).float()
            return m(tokens_11, kv=pool.decode(slots_1, positions_1))[:, -1].float()

    want = step(model, torch.float32, None)
    model.to(torch.bfloat16)
    eager_error = (step(model, torch.bfloat16, None) - want).abs().max().item()
    optimize(model)
    fast = FastDecode(model)
    fast.native.enabled = False  # the compiled graph, as on CPUs without AVX512-BF16
    compiled_error = (step(model, torch.bfloat16, fast) - want).abs().max().item()
    assert fast.compiled_steps == 1
    assert compiled_error <= 1.5 * eager_error, (compiled_error, eager_error)


def test_matvec_shape_error_is_the_usual_one_and_leaves_the_compiled_path(monkeypatch):
    import herd.fast as fast

    monkeypatch.setattr(fast, "_compiled", None)
    monkeypatch.setattr(fast, "_native", lambda x, w: False)
    x, w = torch.randn(1, 64), torch.randn(40, 32)
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        fast.matvec(x, w)
    assert fast.matvec(x, torch.randn(40, 64)).shape == (1, 40)
    assert fast._compiled is not None and fast._compiled is not torch.nn.functional.linear


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_mm_experts_match_the_per_expert_loop(dtype):
    # The GPU path (torch._grouped_mm), run through PyTorch's CPU fallback on the output-major layout.
    import herd.fast as fast
    from herd.moe import Experts

    experts = Experts(5, 32, 24)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in experts.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    counts_E = torch.tensor([3, 0, 9, 1, 4])
    xs_AD = torch.randn(int(counts_E.sum()), 32, generator=g).to(dtype)
    experts = experts.to(dtype)
    with torch.no_grad():
        want = experts.grouped(xs_AD, counts_E)
        fast.optimize(experts)
        assert type(experts) is fast.GatherExperts and not experts.w13.is_contiguous()  # column-major operands
        got = fast.grouped_mm(xs_AD, counts_E, experts.w13, experts.w2)
    tolerance = 1e-5 if dtype == torch.float32 else 2 * 2**-7 * want.float().abs().max().item()
    assert got.dtype == dtype and (got.float() - want.float()).abs().max().item() <= tolerance
