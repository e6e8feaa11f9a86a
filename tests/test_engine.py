"""Engine invariants on tiny random models, float32: the cache path equals a full forward."""

import pytest
import torch
from hf_oracle import DENSE_LIKE, MAVERICK_LIKE, SCOUT_LIKE, causal_lm, save_hf

import herd
from herd.infer.engine import Engine
from herd.infer.kv_pool import KVPool
from herd.infer.sampling import SamplingParams

SHAPES = {"scout": SCOUT_LIKE, "maverick": MAVERICK_LIKE, "dense": DENSE_LIKE}
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=8)


def _prompt(n, seed=0):
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("prefill_chunk", [5, 8, 64])
@pytest.mark.parametrize("shape", SHAPES)
def test_incremental_decode_equals_full_forward(shape, prefill_chunk):
    """Prefill in pieces, then decode step by step past several chunk boundaries (8) and the
    temperature floor (4); every step's logits equal a full forward of the whole sequence."""
    model = herd.build(SHAPES[shape], seed=0)
    tokens = _prompt(45)
    pool = KVPool(model.config, slots=2, max_context=len(tokens), dtype=torch.float32)
    engine = Engine(model, prefill_chunk=prefill_chunk)
    with torch.no_grad():
        full_SV = model(torch.tensor([tokens]))[0]
        step = engine.prefill(pool, 1, tokens[:13])
        assert (step - full_SV[12]).abs().max().item() <= 1e-4
        for p in range(13, len(tokens)):
            step = model(torch.tensor([[tokens[p]]]), kv=pool.decode(torch.tensor([1]), torch.tensor([p])))[0, -1]
            assert (step - full_SV[p]).abs().max().item() <= 1e-4, f"position {p}"


def test_batched_equals_unbatched():
    model = herd.build(SCOUT_LIKE, seed=0)
    engine = Engine(model, prefill_chunk=7)
    prompts = [_prompt(3, 1), _prompt(19, 2), _prompt(11, 3)]
    params = SamplingParams(temperature=0.0, max_new_tokens=20, logprobs=2, stop_ids=())
    batched = engine.generate(prompts, params)
    for prompt, together in zip(prompts, batched, strict=True):
        alone = engine.generate(prompt, params)[0]
        assert alone.token_ids == together.token_ids
        assert max(abs(a - b) for a, b in zip(alone.logprobs, together.logprobs, strict=True)) <= 1e-4
    sampled = SamplingParams(temperature=1.0, top_p=0.95, top_k=50, max_new_tokens=20, seed=7, stop_ids=())
    assert engine.generate(prompts, sampled)[1].token_ids == engine.generate(prompts[1], sampled)[0].token_ids


def test_greedy_matches_transformers_generate(tmp_path):
    """64 new tokens from a 20-token prompt cross several chunk boundaries and the floor."""
    ref = causal_lm(SCOUT_LIKE, seed=4)
    model = herd.load(save_hf(ref, tmp_path))
    prompt = _prompt(20, 5)
    with torch.no_grad():
        want = ref.generate(torch.tensor([prompt]), max_new_tokens=64, do_sample=False, min_new_tokens=64,
                            eos_token_id=None, pad_token_id=0)[0, 20:].tolist()
    got = Engine(model).generate(prompt, SamplingParams(temperature=0.0, max_new_tokens=64, stop_ids=()))[0]
    assert got.token_ids == want
    assert got.finish_reason == "length"


def test_seed_reproduces_and_differs():
    engine = Engine(herd.build(SCOUT_LIKE, seed=0))
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=24, seed=11, stop_ids=())
    first = engine.generate(_prompt(6), params)[0].token_ids
    assert engine.generate(_prompt(6), params)[0].token_ids == first
    other = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=24, seed=12, stop_ids=())
    assert engine.generate(_prompt(6), other)[0].token_ids != first


def test_stop_tokens_and_stream():
    engine = Engine(herd.build(SCOUT_LIKE, seed=0))
    free = engine.generate(_prompt(6), SamplingParams(temperature=0.0, max_new_tokens=10, stop_ids=()))[0]
    stop_at = free.token_ids[3]
    first_hit = free.token_ids.index(stop_at)
    done = engine.generate(_prompt(6), SamplingParams(temperature=0.0, max_new_tokens=10, stop_ids=(stop_at,)))[0]
    assert done.token_ids == free.token_ids[: first_hit + 1] and done.finish_reason == "stop"
    events = list(engine.stream(_prompt(6), SamplingParams(temperature=0.0, max_new_tokens=5, stop_ids=())))
    assert [e.token for e in events] == free.token_ids[:5]
    assert [e.finish_reason for e in events] == [None] * 4 + ["length"]


def test_chunked_cache_memory_is_bounded():
    config = SCOUT_LIKE  # chunk 8; layer 3 global
    short = KVPool(config, slots=2, max_context=16, dtype=torch.float32)
    long = KVPool(config, slots=2, max_context=4096, dtype=torch.float32)
    for layer in range(config.n_layers):
        positions = long.layers[layer].k_SGLK.shape[2]
        if config.chunk_size(layer):
            assert positions == 8 and short.layers[layer].k_SGLK.shape[2] == 8
        else:
            assert positions == 4096
    # Decoding far past the chunk keeps the ring at 8 slots and stays exact.
    model = herd.build(config.replace(max_seq_len=4096), seed=0)
    tokens = _prompt(40)
    with torch.no_grad():
        full_SV = model(torch.tensor([tokens]))[0]
        pool = KVPool(model.config, slots=1, max_context=40, dtype=torch.float32)
        Engine(model, prefill_chunk=3).prefill(pool, 0, tokens[:2])
        for p in range(2, 40):
            step = model(torch.tensor([[tokens[p]]]), kv=pool.decode(torch.tensor([0]), torch.tensor([p])))[0, -1]
            assert (step - full_SV[p]).abs().max().item() <= 1e-4
    assert all(c.k_SGLK.shape[2] == 8 for i, c in enumerate(pool.layers) if config.chunk_size(i))


def test_sampling_filters():
    from herd.infer.sampling import filter_logits

    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    kept = lambda p: torch.isfinite(filter_logits(logits, p)).nonzero().flatten().tolist()
    assert kept(SamplingParams(temperature=1.0, top_p=0.6)) == [0, 1]  # 0.5 < 0.6, so the crossing token stays
    assert kept(SamplingParams(temperature=1.0, top_p=0.4)) == [0]
    assert kept(SamplingParams(temperature=1.0, top_p=1.0, top_k=3)) == [0, 1, 2]
    assert kept(SamplingParams(temperature=1.0, top_p=1.0, min_p=0.5)) == [0, 1]
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_argmax_is_torchs_first_maximum(dtype):
    from herd import cpu_kernels
    from herd.infer.sampling import argmax, argmax_by_rows

    ways = {"by rows of 4": lambda x: argmax_by_rows(x, 4), "by rows": argmax_by_rows, "argmax": argmax}
    if cpu_kernels.available():
        ways["native"] = cpu_kernels.argmax
    g = torch.Generator().manual_seed(0)
    for n in (1, 5, 16, 17, 4096, 4097, 202048):
        x = torch.randint(0, 4, (n,), generator=g).to(dtype)  # many ties: the first maximum wins
        cases = [x.clone()]
        x[int(torch.randint(n, (1,), generator=g))] = float("inf")
        cases.append(x.clone())
        x[n - 1] = float("nan")  # a NaN counts as the largest, in the tail too
        cases.append(x.clone())
        x[n // 2] = float("nan")  # the first NaN
        cases += [x.clone(), torch.full((n,), float("-inf"), dtype=dtype), -torch.arange(n, dtype=dtype)]
        for case in cases:
            for name, way in ways.items():
                assert way(case) == int(case.argmax()), (name, n, case)
    if cpu_kernels.available():  # what the kernel does not take is left to the caller
        assert cpu_kernels.argmax(torch.zeros(4, 2)) is None and cpu_kernels.argmax(torch.zeros(8)[::2]) is None
        assert cpu_kernels.argmax(torch.zeros(0)) is None
        assert cpu_kernels.argmax(torch.zeros(3, dtype=torch.float16)) is None


def test_penalties():
    from herd.infer.sampling import apply_penalties

    logits = torch.tensor([2.0, -2.0, 1.0, 0.5])
    seen, out = torch.tensor([0, 1]), torch.tensor([2, 2])
    got = apply_penalties(logits, SamplingParams(repetition_penalty=2.0), seen, out)
    assert got.tolist() == [1.0, -4.0, 1.0, 0.5]
    got = apply_penalties(logits, SamplingParams(frequency_penalty=0.5, presence_penalty=0.25), seen, out)
    assert got.tolist() == [2.0, -2.0, 1.0 - 1.0 - 0.25, 0.5]


def test_prompt_errors():
    engine = Engine(herd.build(SCOUT_LIKE.replace(max_seq_len=32), seed=0))
    with pytest.raises(ValueError, match="does not fit the context"):
        engine.generate(_prompt(40), GREEDY)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.generate([5, 999], GREEDY)
    with pytest.raises(ValueError, match="at least one token"):
        engine.generate([[]], GREEDY)


def test_stop_fn_ends_one_row():
    engine = Engine(herd.build(SCOUT_LIKE, seed=0))
    params = SamplingParams(temperature=0.0, max_new_tokens=12, stop_ids=())
    free = engine.generate([_prompt(5, 1), _prompt(7, 2)], params)
    cut = engine.generate([_prompt(5, 1), _prompt(7, 2)], params, stop_fn=lambda row, token: row == 0)
    assert cut[0].token_ids == free[0].token_ids[:1] and cut[0].finish_reason == "stop"
    assert cut[1].token_ids == free[1].token_ids


def test_text_stream_holds_back_and_cuts_stop_strings():
    from herd.tokenizer import TextStream, load_tokenizer

    tokenizer = load_tokenizer()
    ids = tokenizer.encode("Hello wor" + "ld, stop here END and more")
    stream = TextStream(tokenizer, ["END", "nothing"])
    shown = "".join(stream.push(t) for t in ids) + stream.flush()
    assert shown == "Hello world, stop here " and stream.stopped
    plain = TextStream(tokenizer, ["zzz"])
    assert "".join(plain.push(t) for t in ids) + plain.flush() == "Hello world, stop here END and more"


def test_rows_finishing_at_the_context_limit():
    """The longest row reaches max_seq_len first; the others go on without writing past the cache."""
    engine = Engine(herd.build(SCOUT_LIKE.replace(max_seq_len=40), seed=0))
    params = SamplingParams(temperature=0.0, max_new_tokens=50, stop_ids=())
    long, short = engine.generate([_prompt(30, 1), _prompt(5, 2)], params)
    assert len(long.token_ids) == 10 and long.finish_reason == "length"
    assert len(short.token_ids) == 35 and short.finish_reason == "length"
    assert engine.generate(_prompt(5, 2), params)[0].token_ids == short.token_ids


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.8, top_p=0.9), SamplingParams(temperature=1.0, top_p=1.0, top_k=5),
    SamplingParams(temperature=0.7, top_p=0.5, min_p=0.05), SamplingParams(temperature=1.3, top_p=1.0),
    SamplingParams(temperature=1.0, top_p=0.999), SamplingParams(temperature=1.0, top_p=1.0, min_p=0.2),
    SamplingParams(temperature=2.0, top_p=0.95, top_k=2000),
])
def test_fast_sampling_matches_the_reference_distribution(params):
    """`choose` draws from the same kept set, with the same frequencies, as the full-vocabulary
    `filter_logits` reference (χ²-style check over many draws)."""
    from herd.infer.sampling import choose, filter_logits

    logits = torch.randn(5000, generator=torch.Generator().manual_seed(0)) * 2
    want = torch.softmax(filter_logits(logits, params), dim=-1)
    g = torch.Generator().manual_seed(1)
    draws = torch.tensor([choose(logits, params, g) for _ in range(3000)])
    assert set(draws.tolist()) <= set(want.nonzero().flatten().tolist())
    freq = torch.bincount(draws, minlength=5000).float() / len(draws)
    top = want.topk(5).indices
    assert (freq[top] - want[top]).abs().max().item() < 0.04


def test_prompts_as_tensors():
    engine = Engine(herd.build(SCOUT_LIKE, seed=0))
    ids = _prompt(6)
    want = engine.generate(ids, GREEDY)[0].token_ids
    assert engine.generate(torch.tensor(ids), GREEDY)[0].token_ids == want
    assert engine.generate(torch.tensor([ids, ids]), GREEDY)[1].token_ids == want


@pytest.mark.parametrize("filters", [{}, {"top_p": 0.5}, {"min_p": 0.1}, {"top_k": 5}, {"top_p": 0.3, "min_p": 0.2}])
def test_a_vanishing_temperature_samples_greedily(filters: dict) -> None:
    """A temperature so small that the scaled logits overflow (a valid request value, e.g. 1e-300) is its limit,
    greedy decoding, not NaN probabilities (schemathesis found the crash)."""
    from herd.infer.sampling import choose, sampling_logprob

    logits = torch.randn(3000, generator=torch.Generator().manual_seed(0)) * 5
    for temperature in (1e-300, 5e-324):
        params = SamplingParams(temperature=temperature, **filters)
        token = choose(logits, params, torch.Generator().manual_seed(1))
        assert token == int(logits.argmax()) and sampling_logprob(logits, params, token) == 0.0
