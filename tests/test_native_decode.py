"""The native decode step (herd/csrc/decode.h) against the eager model: bf16 within bf16 rounding and no
further from the fp32 model than eager bf16 is; fp32 within 1e-4."""

import pytest
import torch
from hf_oracle import DENSE_LIKE, MAVERICK_LIKE, SCOUT_LIKE
from test_cpu_kernels import NATIVE  # this CPU and compiler can build the native kernels

import herd
from herd import cpu_kernels
from herd.fast import optimize
from herd.infer.engine import Engine
from herd.infer.kv_pool import KVPool
from herd.infer.native import NativeDecode
from herd.infer.sampling import SamplingParams
from herd.infer.steps import FastDecode

pytestmark = pytest.mark.skipif(not NATIVE, reason="the native kernels need AVX512-BF16 and a C compiler")

PROMPTS = (25, 7, 16)  # three rows at different positions; chunks of 8 wrap their rings many times
SLOTS = (3, 0, 4)
STEPS = 20


def _decode(model, dtype: torch.dtype, mode: str, rows: int = 3) -> tuple[torch.Tensor, KVPool]:
    """Teacher-forced decode: hidden states [STEPS, B, D] (fp32) after prefilling each row eagerly; row b
    sits in pool slot SLOTS[b] of five."""
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 256, (n,), generator=g) for n in PROMPTS[:rows]]
    follow_BS = torch.randint(0, 256, (rows, STEPS), generator=g)
    pool = KVPool(model.config, 5, 64, dtype)
    slots_B = torch.tensor(SLOTS[:rows])
    native = NativeDecode(model)
    out = []
    with torch.no_grad():
        for b, prompt in enumerate(prompts):
            model(prompt[None], kv=pool.prefill(SLOTS[b], 0), last_only=True)
        positions_B = torch.tensor(PROMPTS[:rows])
        for s in range(STEPS):
            tokens_B1 = follow_BS[:, s : s + 1]
            if mode == "native":
                assert native.takes(tokens_B1, pool), native.reason
                hidden_BD = native(tokens_B1, positions_B, slots_B, pool, logits=False)
            else:
                hidden_BD = model.hidden(tokens_B1, kv=pool.decode(slots_B, positions_B))[:, -1]
            out.append(hidden_BD.float())
            positions_B = positions_B + 1
    return torch.stack(out), pool


@pytest.mark.parametrize("config", [SCOUT_LIKE, MAVERICK_LIKE, DENSE_LIKE,
                                    SCOUT_LIKE.replace(router_bias=True)],
                         ids=["scout", "maverick", "dense", "router-bias"])
def test_native_step_matches_eager_bf16(config):
    """Within bf16 rounding of the eager bf16 model, and no further from the fp32 model than it."""
    model = herd.build(config, seed=0)
    if config.router_bias:  # a bias that changes the selection, as training leaves it
        g = torch.Generator().manual_seed(5)
        for block in model.layers:
            block.feed_forward.router_bias.copy_(torch.randn(config.n_experts, generator=g))
    want, _ = _decode(model, torch.float32, "eager")
    model.to(torch.bfloat16)
    eager, eager_cache = _decode(model, torch.bfloat16, "eager")
    optimize(model)
    got, got_cache = _decode(model, torch.bfloat16, "native")
    assert torch.allclose(got, eager, rtol=2**-6, atol=2**-6), (got - eager).abs().max()
    assert (got - want).abs().max() <= 1.25 * (eager - want).abs().max()
    assert (got - want).abs().mean() <= 1.1 * (eager - want).abs().mean()
    for mine, theirs in zip(got_cache.layers, eager_cache.layers, strict=True):  # post-RoPE keys, values
        assert torch.allclose(mine.k_SGLK.float(), theirs.k_SGLK.float(), rtol=2**-6, atol=2**-6)
        assert torch.allclose(mine.v_SGLK.float(), theirs.v_SGLK.float(), rtol=2**-6, atol=2**-6)


@pytest.mark.parametrize("config", [SCOUT_LIKE, MAVERICK_LIKE, DENSE_LIKE], ids=["scout", "maverick", "dense"])
def test_native_step_matches_eager_fp32(config):
    model = herd.build(config, seed=0)
    want, want_cache = _decode(model, torch.float32, "eager")
    optimize(model)
    got, got_cache = _decode(model, torch.float32, "native")
    assert (got - want).abs().max() <= 1e-4
    for mine, theirs in zip(got_cache.layers, want_cache.layers, strict=True):
        assert (mine.k_SGLK - theirs.k_SGLK).abs().max() <= 1e-4 and (mine.v_SGLK - theirs.v_SGLK).abs().max() <= 1e-4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_native_step_with_ragged_shapes_and_three_threads(dtype):
    """Widths that leave masked tails in every dot product (D 72, K 20, F 40) and a thread count that
    divides neither the rows of any matrix nor rows × kv heads."""
    config = SCOUT_LIKE.replace(dim=72, head_dim=20, expert_dim=40)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        model = herd.build(config, seed=0, dtype=dtype)
        eager, _ = _decode(model, dtype, "eager")
        optimize(model)
        got, _ = _decode(model, dtype, "native")
    finally:
        torch.set_num_threads(threads)
    if dtype == torch.float32:
        assert (got - eager).abs().max() <= 1e-4
    else:
        assert torch.allclose(got, eager, rtol=2**-6, atol=2**-6), (got - eager).abs().max()


def test_engine_uses_the_native_step_in_bf16():
    """Rows that finish at different steps: the finished row leaves the batch."""
    model = herd.build(SCOUT_LIKE, seed=0, dtype=torch.bfloat16)
    prompts = [[5, 6, 7, 8, 9, 10], [3, 4]]
    params = SamplingParams(temperature=0.0, max_new_tokens=6, stop_ids=())
    seen: dict[int, int] = {}

    def stop_row_0_early(row: int, token: int) -> bool:
        seen[row] = seen.get(row, 0) + 1
        return row == 0 and seen[row] == 2

    want = Engine(model).generate(prompts, params, stop_fn=stop_row_0_early)
    seen.clear()
    optimize(model)
    step = FastDecode(model)
    got = Engine(model, step=step).generate(prompts, params, stop_fn=stop_row_0_early)
    assert step.native_steps == 5 and step.compiled_steps == 0  # both rows prefill in one step; row 1 goes on alone
    assert [len(c.token_ids) for c in got] == [2, 6]
    assert [c.token_ids for c in got] == [c.token_ids for c in want]


def test_a_dropped_pool_is_freed():
    import gc
    import weakref

    model = optimize(herd.build(SCOUT_LIKE, seed=0, dtype=torch.bfloat16))
    step, pool = FastDecode(model), KVPool(model.config, 1, 64, torch.bfloat16)
    with torch.no_grad():
        step(torch.tensor([[1]]), torch.tensor([0]), torch.tensor([0]), pool)
    assert step.native_steps == 1
    k = weakref.ref(pool.layers[0].k_SGLK)
    del pool
    gc.collect()
    assert k() is None


def test_native_logits_are_the_lm_head_of_its_hidden_states():
    model = optimize(herd.build(MAVERICK_LIKE, seed=0, dtype=torch.bfloat16))
    native, pool = NativeDecode(model), KVPool(model.config, 2, 64, torch.bfloat16)
    tokens_B1, positions_B, slots_B = torch.tensor([[3], [4]]), torch.tensor([0, 5]), torch.tensor([1, 0])
    assert native.takes(tokens_B1, pool)
    with torch.no_grad():
        logits_BV = native(tokens_B1, positions_B, slots_B, pool)
        hidden_BD = native(tokens_B1, positions_B, slots_B, pool, logits=False)  # again: the same cache writes
        want_BV = (hidden_BD.float() @ model.output.weight.float().T).bfloat16()
    assert logits_BV.shape == (2, model.config.vocab_size)
    assert torch.allclose(logits_BV.float(), want_BV.float(), rtol=2**-7, atol=1e-6)


def test_packed_lm_head_equals_the_plain_one_and_follows_the_weight():
    """The bf16 step reads its LM head from a packed copy: logits within one rounding of the weight read
    row by row (pack_head off), each row the same alone as among others, and a head written in place (or
    replaced) is packed again before the next step."""
    model = optimize(herd.build(SCOUT_LIKE, seed=0, dtype=torch.bfloat16))
    native, pool = NativeDecode(model), KVPool(model.config, 3, 64, torch.bfloat16)
    tokens_B1, positions_B, slots_B = torch.tensor([[3], [9], [4]]), torch.tensor([0, 2, 5]), torch.tensor([1, 0, 2])

    def logits(rows=slice(None)) -> torch.Tensor:
        assert native.takes(tokens_B1[rows], pool), native.reason
        return native(tokens_B1[rows], positions_B[rows], slots_B[rows], pool)

    with torch.no_grad():
        packed = logits()
        assert native._packed is not None
        assert all(torch.equal(logits(slice(b, b + 1))[0], packed[b]) for b in range(3))
        native.pack_head = False
        native._key = None  # rebuilt on the next step
        plain = logits()
        assert native._packed is None
        ulp = plain.float().abs().clamp_min(1e-30) * 2**-7
        assert ((packed.float() - plain.float()).abs() <= ulp + 1e-6).all()
        native.pack_head = True
        native._key = None
        model.output.weight.mul_(2)  # in place: the same address, a new version
        assert torch.equal(logits(), (2 * packed.float()).bfloat16())
        model.output.weight = torch.nn.Parameter(model.output.weight / 2)  # a new tensor
        assert torch.equal(logits(), packed)


def test_native_step_refuses_what_it_does_not_compute():
    model = optimize(herd.build(SCOUT_LIKE, seed=0, dtype=torch.float16))
    native, tokens_11 = NativeDecode(model, max_batch=8), torch.tensor([[1]])
    assert not native.takes(tokens_11, KVPool(model.config, 1, 64, torch.float16))
    assert "not bf16 or fp32" in native.reason
    model.to(torch.bfloat16)
    assert native.takes(tokens_11, KVPool(model.config, 1, 64, torch.bfloat16))  # rebuilt after the cast
    assert not native.takes(torch.ones(9, 1, dtype=torch.long), KVPool(model.config, 9, 64, torch.bfloat16))
    assert not native.takes(tokens_11, KVPool(model.config, 2, 64, torch.float32))  # the pool's dtype differs
    top2 = optimize(herd.build(SCOUT_LIKE.replace(top_k=2), seed=0, dtype=torch.bfloat16))
    native2 = NativeDecode(top2)
    assert not native2.takes(tokens_11, KVPool(top2.config, 1, 64, torch.bfloat16))
    assert "top-2" in native2.reason


def test_native_step_rejects_bad_tokens_and_positions():
    model = optimize(herd.build(SCOUT_LIKE, seed=0, dtype=torch.bfloat16))
    native, pool, slot_1 = NativeDecode(model), KVPool(model.config, 2, 64, torch.bfloat16), torch.tensor([1])
    assert native.takes(torch.tensor([[1]]), pool)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        native(torch.tensor([[256]]), torch.tensor([3]), slot_1, pool)
    with pytest.raises(ValueError, match="outside the KV cache"):
        native(torch.tensor([[1]]), torch.tensor([64]), slot_1, pool)  # the global layer holds 64 positions
    with pytest.raises(ValueError, match="outside the KV pool"):
        native(torch.tensor([[1]]), torch.tensor([3]), torch.tensor([2]), pool)
    with pytest.raises(ValueError, match="positions of shape"):
        native(torch.tensor([[1]]), torch.tensor([3, 4]), slot_1, pool)


def test_native_step_off_without_kernels(monkeypatch):
    monkeypatch.setenv("HERD_CPU_KERNELS", "0")
    cpu_kernels.reset()
    try:
        model = optimize(herd.build(SCOUT_LIKE, seed=0, dtype=torch.bfloat16))
        native = NativeDecode(model)
        assert not native.takes(torch.tensor([[1]]), KVPool(model.config, 1, 64, torch.bfloat16))
        assert "no native kernels" in native.reason
    finally:
        monkeypatch.delenv("HERD_CPU_KERNELS")
        cpu_kernels.reset()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_a_row_decodes_the_same_alone_and_among_eleven(dtype):
    """Eleven rows (a tile of eight and three more, several on one routed expert, which the step reads once
    for all of them) give each row bit for bit what it gets decoded alone, and the eager model's within
    rounding."""
    config = SCOUT_LIKE.replace(dim=72, head_dim=20, expert_dim=40)  # masked tails in every dot product
    model = herd.build(config, seed=0, dtype=dtype)
    g = torch.Generator().manual_seed(7)
    lengths = [3 + 5 * b for b in range(11)]
    prompts = [torch.randint(0, 256, (n,), generator=g) for n in lengths]
    follow_BS = torch.randint(0, 256, (11, 6), generator=g)

    def run(rows: list[int], mode: str) -> torch.Tensor:
        pool = KVPool(model.config, 12, 128, dtype)
        with torch.no_grad():
            for b in rows:
                model(prompts[b][None], kv=pool.prefill(b, 0), last_only=True)
            native, out = NativeDecode(model), []
            slots_B, positions_B = torch.tensor(rows), torch.tensor([lengths[b] for b in rows])
            for s in range(follow_BS.shape[1]):
                tokens_B1 = follow_BS[rows, s : s + 1]
                if mode == "native":
                    assert native.takes(tokens_B1, pool), native.reason
                    out.append(native(tokens_B1, positions_B, slots_B, pool, logits=False).float())
                else:
                    out.append(model.hidden(tokens_B1, kv=pool.decode(slots_B, positions_B))[:, -1].float())
                positions_B = positions_B + 1
        return torch.stack(out, dim=1)  # [B, steps, D]

    eager = run(list(range(11)), "eager")
    optimize(model)
    together = run(list(range(11)), "native")
    alone = torch.cat([run([b], "native") for b in range(11)])
    assert torch.equal(together, alone)
    tolerance = 1e-4 if dtype == torch.float32 else 2**-5  # bf16: a rounding step apart over six steps
    assert torch.allclose(together, eager, rtol=tolerance, atol=tolerance), (together - eager).abs().max()
    assert config.n_experts < 11  # so rows share experts in every MoE layer


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_run_gives_the_logits_and_their_first_maximum(dtype, threads):
    """`run` (the scheduler's form of a step) equals the tensor call, and its greedy tokens are torch's argmax
    of the logits, the step's threads searching a piece of each row each: ties go to the first (an all-zero
    LM head), a NaN counts as the largest and the first NaN wins, across pieces too."""
    model = optimize(herd.build(SCOUT_LIKE, seed=0, dtype=dtype))
    native, pool = NativeDecode(model), KVPool(model.config, 3, 64, dtype)
    tokens, positions, slots = [3, 9, 4], [0, 2, 5], [1, 0, 2]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            assert native.ready(3, pool)
            want_BV = native(torch.tensor(tokens).view(3, 1), torch.tensor(positions), torch.tensor(slots), pool)
            logits_BV, best_B = native.run(tokens, positions, slots, pool, greedy=True)
            assert torch.equal(logits_BV, want_BV) and best_B == logits_BV.argmax(-1).tolist()
            assert native.run(tokens[:1], positions[:1], slots[:1], pool)[1] is None  # not asked for
            head = model.output.weight
            head.zero_()
            assert native.ready(3, pool) and native.run(tokens, positions, slots, pool, greedy=True)[1] == [0, 0, 0]
            head[200], head[7] = float("nan"), float("nan")  # in the last piece, then in the first
            assert native.ready(3, pool) and native.run(tokens, positions, slots, pool, greedy=True)[1] == [7, 7, 7]
            head[7] = 0
            assert native.ready(3, pool) and native.run(tokens, positions, slots, pool, greedy=True)[1] == [200] * 3
    finally:
        torch.set_num_threads(before)


def test_a_weight_moved_alone_is_read_until_the_full_check_then_followed():
    """Every step checks the embedding and the LM head; a weight moved alone (`.data` swapped) is noticed at the
    next full check, and its old memory is kept alive until then."""
    from herd.infer.native import FULL_CHECK

    model = optimize(herd.build(SCOUT_LIKE, seed=0, dtype=torch.bfloat16))
    native, pool = NativeDecode(model), KVPool(model.config, 1, 64, torch.bfloat16)
    wo = model.layers[1].attention.wo.weight
    with torch.no_grad():
        assert native.ready(1, pool)
        before = native.run([5], [0], [0], pool)[0].clone()
        wo.data = wo.data * 2  # the old storage's only owner is now the step's alias
        while (native._steps + 1) % FULL_CHECK:
            assert native.ready(1, pool)
            assert torch.equal(native.run([5], [0], [0], pool)[0], before)  # the old weights, still alive
        assert native._key != native._key_of(pool)
        assert native.ready(1, pool)  # the full check: noticed and rebuilt
        assert native._key == native._key_of(pool)
        assert not torch.equal(native.run([5], [0], [0], pool)[0], before)


def test_run_writes_wake_fd_as_the_head_starts():
    import os

    model = optimize(herd.build(SCOUT_LIKE, seed=0, dtype=torch.bfloat16))
    native, pool = NativeDecode(model), KVPool(model.config, 1, 64, torch.bfloat16)
    read_fd, write_fd = os.pipe()
    try:
        with torch.no_grad():
            assert native.ready(1, pool)
            want = native.run([5], [0], [0], pool)[0].clone()
            assert torch.equal(native.run([5], [0], [0], pool, wake_fd=write_fd)[0], want)
        assert os.read(read_fd, 16) == b"\1"
    finally:
        os.close(read_fd), os.close(write_fd)
