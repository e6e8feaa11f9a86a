"""Continuous batching (herd.infer.scheduler) against each request run alone through `Engine`, float32.

Chunks of 8 and prefill pieces of 5 make prompts cross chunk and piece boundaries; pools of a few slots
make requests wait, share prefixes and reuse freed slots."""

from __future__ import annotations

import gc
from collections import defaultdict
from dataclasses import dataclass

import pytest
import torch
from hf_oracle import MAVERICK_LIKE, PATCH_ID, SCOUT_LIKE, conditional_generation, save_hf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import herd
from herd.infer import Engine, KVPool, PoolFull, QueueFull, SamplingParams, Scheduler
from herd.infer.sampling import filter_logits
from herd.infer.scheduler import usable_prefix

PIECE = 5
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=6, stop_ids=(), logprobs=2)
SAMPLED = SamplingParams(temperature=0.9, top_p=0.9, top_k=40, max_new_tokens=6, seed=3, stop_ids=(), logprobs=1)
PENALISED = SamplingParams(temperature=0.0, repetition_penalty=1.3, frequency_penalty=0.5, presence_penalty=0.2,
                           max_new_tokens=6, stop_ids=(), logprobs=0)
MIN_P = SamplingParams(temperature=1.1, top_p=1.0, min_p=0.05, max_new_tokens=6, seed=9, stop_ids=())


@pytest.fixture(scope="module")
def scout():
    return herd.build(SCOUT_LIKE, seed=0)


@pytest.fixture(scope="module")
def multimodal(tmp_path_factory):
    return herd.load(save_hf(conditional_generation(SCOUT_LIKE, seed=2), tmp_path_factory.mktemp("cg")))


def _ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, 240, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _alone(model, prompt, params, images=None):
    """The request by itself, through a fresh engine (no cached prefix)."""
    return Engine(model, prefill_chunk=PIECE).generate(prompt, params, images=[images] if images else None)[0]


@dataclass
class Job:
    prompt: list[int]
    params: SamplingParams
    arrival: int = 0
    abort_after: int | None = None  # steps after arrival
    images: list[torch.Tensor] | None = None


def _run(model, jobs: list[Job], slots: int, context: int = 64):
    """Submit each job at its arrival step, abort as asked; events per job, the step each abort was asked
    at, the last step each job produced a token, and the scheduler."""
    scheduler = Scheduler(model, KVPool(model.config, slots, context, torch.float32), prefill_chunk=PIECE)
    ids: dict[int, int] = {}
    events, last_step, aborted_at = defaultdict(list), {}, {}
    step = 0
    while step <= max(j.arrival for j in jobs) or scheduler.has_work():
        for j, job in enumerate(jobs):
            if job.arrival == step:
                ids[scheduler.submit(job.prompt, job.params, images=job.images)] = j
            if job.abort_after is not None and job.arrival + job.abort_after == step:
                scheduler.abort(next(i for i, k in ids.items() if k == j))
                aborted_at[j] = step
        for event in scheduler.step():
            events[ids[event.request]].append(event)
            last_step[ids[event.request]] = step
        step += 1
        assert step < 2000
    return events, last_step, aborted_at, scheduler


def _check_against_alone(model, jobs, events, aborted_at, last_step):
    for j, job in enumerate(jobs):
        want = _alone(model, job.prompt, job.params, job.images)
        got = events[j]
        tokens = [e.token for e in got]
        if j in aborted_at:
            assert tokens == want.token_ids[: len(tokens)]
            assert last_step.get(j, -1) < aborted_at[j]  # the abort took effect at the next step
            continue
        assert tokens == want.token_ids, f"job {j}"
        assert got[-1].finish_reason == want.finish_reason
        if job.params.logprobs is not None:
            assert max(abs(e.logprob - w) for e, w in zip(got, want.logprobs, strict=True)) <= 1e-4
            for e, w in zip(got, want.top_logprobs, strict=True):
                assert [t for t, _ in e.top_logprobs] == [t for t, _ in w] or job.params.temperature > 0


BASES = (_ids(30, 100), _ids(30, 101))
PIXELS = tuple(torch.rand(1, 3, 56, 56, generator=torch.Generator().manual_seed(s)) * 2 - 1 for s in (1, 2))


@st.composite
def schedules(draw):
    jobs = []
    for _ in range(draw(st.integers(2, 6))):
        base = BASES[draw(st.integers(0, 1))]
        shared = draw(st.integers(0, 30))
        image = draw(st.sampled_from([None, None, 0, 1]))  # one single-tile image (4 <|patch|>) after the prefix
        tail = draw(st.lists(st.integers(0, 239), min_size=1 if shared == 0 else 0, max_size=12))
        prompt = base[:shared] + ([PATCH_ID] * 4 if image is not None else []) + tail
        kind = draw(st.sampled_from([GREEDY, SAMPLED, PENALISED, MIN_P]))
        params = SamplingParams(**{**kind.__dict__, "max_new_tokens": draw(st.integers(1, 9)),
                                   "seed": None if kind.seed is None else draw(st.integers(0, 5))})
        abort = draw(st.none() | st.integers(0, 8)) if draw(st.booleans()) else None
        images = [PIXELS[image]] if image is not None else None
        jobs.append(Job(prompt, params, draw(st.integers(0, 12)), abort, images))
    return jobs, draw(st.integers(1, 4))


HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


def _check_schedule(multimodal, schedule) -> None:
    """Random arrivals, prompt lengths across chunk and piece boundaries, shared prefixes (reused from free
    and busy slots), images, mixed sampling settings and seeds, aborts: every request's tokens are those it
    gets alone (greedy and seeded), logprobs within 1e-4; every slot is free at the end."""
    jobs, slots = schedule
    events, last_step, aborted_at, scheduler = _run(multimodal, jobs, slots)
    _check_against_alone(multimodal, jobs, events, aborted_at, last_step)
    assert scheduler.pool.n_free == slots and not scheduler.has_work()


@settings(max_examples=6, deadline=None, suppress_health_check=HEALTH)
@given(schedules())
def test_continuous_batching_equals_each_request_alone(multimodal, schedule):
    _check_schedule(multimodal, schedule)


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=HEALTH)
@given(schedules())
def test_continuous_batching_equals_each_request_alone_wide(multimodal, schedule):
    _check_schedule(multimodal, schedule)


def test_requests_submitted_from_another_thread(scout):
    """A client thread submits while the engine thread steps (as a server does): every request completes
    with the tokens it gets alone."""
    import threading

    scheduler = Scheduler(scout, KVPool(scout.config, 3, 64, torch.float32), prefill_chunk=PIECE)
    prompts = [_ids(2 + 3 * i, 40 + i) for i in range(12)]
    ids: dict[int, int] = {}

    def client() -> None:
        for i, prompt in enumerate(prompts):
            ids[scheduler.submit(prompt, GREEDY)] = i
            threading.Event().wait(0.002 * (i % 3))

    thread = threading.Thread(target=client)
    thread.start()
    out: dict[int, list[int]] = defaultdict(list)
    while thread.is_alive() or scheduler.has_work():
        for event in scheduler.step():
            out[event.request].append(event.token)
    thread.join()
    assert len(out) == 12 and scheduler.pool.n_free == 3
    for request, tokens in out.items():
        assert tokens == _alone(scout, prompts[ids[request]], GREEDY).token_ids


def test_images_and_prefix_reuse_never_cross_images(multimodal):
    """Two prompts with the same ids but different pixels share the text before the image only; the same
    pixels share the image too. Every output equals the request alone."""
    g = torch.Generator().manual_seed(7)
    a, b = torch.rand(1, 3, 56, 56, generator=g) * 2 - 1, torch.rand(1, 3, 56, 56, generator=g) * 2 - 1
    prompt = [*_ids(11, 5), *[PATCH_ID] * 4, *_ids(14, 6)]
    one = SamplingParams(**{**GREEDY.__dict__, "max_new_tokens": 1})
    jobs = [Job(prompt, one, 0, images=[a]), Job(prompt, GREEDY, 12, images=[b]),
            Job(prompt, GREEDY, 6, images=[a]), Job(_ids(9, 8), GREEDY, 1)]
    events, last_step, aborted_at, scheduler = _run(multimodal, jobs, slots=2)
    _check_against_alone(multimodal, jobs, events, aborted_at, last_step)
    # job 2 (same pixels) takes job 0's freed slot with all of its prompt but the last token (28); job 1
    # (other pixels) copies the 8 positions before its image from job 2's busy slot (the image starts at
    # 11, the ring has moved on, so down to a chunk boundary)
    assert scheduler.reused_tokens == 28 + 8


def test_a_seeded_request_samples_the_same_whatever_else_runs(scout):
    params = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=12, seed=42, stop_ids=())
    alone = _alone(scout, _ids(13, 1), params).token_ids
    crowd = [Job(_ids(n, n), SamplingParams(temperature=1.2, top_p=1.0, max_new_tokens=10, stop_ids=()), n % 3)
             for n in (3, 21, 9)]
    events, *_ = _run(scout, [*crowd, Job(_ids(13, 1), params, 2)], slots=3)
    assert [e.token for e in events[3]] == alone


def test_n_samples_prefill_once(scout, monkeypatch):
    import herd.infer.scheduler as scheduler_module

    pieces = []
    real = scheduler_module.prefill_piece
    monkeypatch.setattr(scheduler_module, "prefill_piece", lambda *a, **k: pieces.append(a[3]) or real(*a, **k))
    params = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=8, seed=5, stop_ids=(), logprobs=0)
    prompt = _ids(23, 3)
    scheduler = Scheduler(scout, KVPool(scout.config, 4, 64, torch.float32), prefill_chunk=PIECE)
    request = scheduler.submit(prompt, params, n=3)
    out = defaultdict(list)
    while scheduler.has_work():
        for e in scheduler.step():
            assert e.request == request
            out[e.sample].append(e.token)
    assert len(pieces) == 5  # 23 tokens in pieces of 5, once for all three samples
    for i in range(3):  # sample i draws as a single request seeded seed + i
        assert out[i] == _alone(scout, prompt, SamplingParams(**{**params.__dict__, "seed": 5 + i})).token_ids
    assert len({tuple(t) for t in out.values()}) > 1
    assert scheduler.pool.n_free == 4


def test_a_shared_system_prompt_is_prefilled_once(scout):
    """Four requests arriving together with one 24-token system prompt: the first prefills it, the others
    copy it from its (busy) slot and prefill only their own tails."""
    system = _ids(24, 9)
    jobs = [Job(system + _ids(3 + i, 20 + i), GREEDY, i) for i in range(4)]
    events, last_step, aborted_at, scheduler = _run(scout, jobs, slots=4)
    _check_against_alone(scout, jobs, events, aborted_at, last_step)
    assert scheduler.reused_tokens == 3 * 24


def test_usable_prefix_rule():
    # chunk 8: a ring holding the chunk of position cached-1
    assert usable_prefix(shared=13, cached=20, prompt=30, chunk=8) == 8  # 13 ends in chunk 1, the ring holds 2
    assert usable_prefix(shared=18, cached=20, prompt=30, chunk=8) == 18  # same chunk as the ring
    assert usable_prefix(shared=16, cached=20, prompt=30, chunk=8) == 16  # a boundary needs no ring
    assert usable_prefix(shared=20, cached=20, prompt=20, chunk=8) == 19  # the last prompt token is recomputed
    assert usable_prefix(shared=13, cached=20, prompt=30, chunk=None) == 13  # global layers only
    assert usable_prefix(shared=0, cached=20, prompt=1, chunk=8) == 0


def test_abort_frees_the_slot_within_one_step(scout):
    scheduler = Scheduler(scout, KVPool(scout.config, 2, 64, torch.float32), prefill_chunk=PIECE)
    long = scheduler.submit(_ids(40, 1), GREEDY)  # eight pieces
    scheduler.step(), scheduler.step()
    assert scheduler.pool.n_free == 1 and scheduler.n_running == 1
    scheduler.abort(long)  # mid-prefill
    assert scheduler.step() == [] and scheduler.pool.n_free == 2 and not scheduler.has_work()
    decoding = scheduler.submit(_ids(4, 2), SamplingParams(temperature=0.0, max_new_tokens=50, stop_ids=()))
    other = scheduler.submit(_ids(4, 3), SamplingParams(temperature=0.0, max_new_tokens=50, stop_ids=()))
    for _ in range(4):
        scheduler.step()
    assert scheduler.pool.n_free == 0
    scheduler.abort(decoding)  # mid-decode
    assert {e.request for e in scheduler.step()} == {other} and scheduler.pool.n_free == 1
    scheduler.abort(other)
    scheduler.abort(12345)  # unknown ids are ignored
    scheduler.step()
    assert scheduler.pool.n_free == 2 and not scheduler.has_work()


def test_waiting_queue_is_bounded_and_in_order(scout):
    scheduler = Scheduler(scout, KVPool(scout.config, 1, 64, torch.float32), prefill_chunk=PIECE, max_queue=2)
    params = SamplingParams(temperature=0.0, max_new_tokens=2, stop_ids=())
    first, second = scheduler.submit([1, 2], params), scheduler.submit([3, 4], params)
    with pytest.raises(QueueFull, match="limit of 2"):
        scheduler.submit([5], params)
    assert scheduler.n_waiting == 2
    order = []
    while scheduler.has_work():
        order += [e.request for e in scheduler.step() if e.finish_reason]
    assert order == [first, second]


def test_bad_requests_are_refused_at_submit(scout):
    scheduler = Scheduler(scout, KVPool(scout.config, 2, 32, torch.float32))
    with pytest.raises(ValueError, match="does not fit the context of 32"):
        scheduler.submit(_ids(32, 1), GREEDY)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        scheduler.submit([1, 256], GREEDY)
    with pytest.raises(ValueError, match="at least one token"):
        scheduler.submit([], GREEDY)
    with pytest.raises(ValueError, match="n must be between 1 and the 2 KV slots"):
        scheduler.submit([1], GREEDY, n=3)
    with pytest.raises(ValueError, match="no vision tower"):
        scheduler.submit([1], GREEDY, images=[torch.zeros(1, 3, 56, 56)])
    assert not scheduler.has_work()


def test_a_sequence_stops_at_the_pool_context(scout):
    scheduler = Scheduler(scout, KVPool(scout.config, 1, 16, torch.float32), prefill_chunk=PIECE)
    scheduler.submit(_ids(10, 1), SamplingParams(temperature=0.0, max_new_tokens=50, stop_ids=()))
    events = [e for _ in range(20) for e in scheduler.step()]
    assert len(events) == 6 and events[-1].finish_reason == "length"


@pytest.mark.slow
def test_thousand_requests_keep_memory_flat(scout):
    """1,000 requests through 4 slots: resident memory after the first ten is where it ends, and every slot
    is free."""
    scheduler = Scheduler(scout, KVPool(scout.config, 4, 64, torch.float32), prefill_chunk=8)
    params = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=3, stop_ids=(), logprobs=1)
    done, rss = 0, []

    def resident() -> int:
        gc.collect()
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    for i in range(1000):
        scheduler.submit(_ids(3 + i % 12, i), params)
        while scheduler.n_waiting > 2:
            done += sum(e.finish_reason is not None for e in scheduler.step())
            if done >= 10 and not rss:
                rss.append(resident())
    while scheduler.has_work():
        done += sum(e.finish_reason is not None for e in scheduler.step())
    rss.append(resident())
    assert done == 1000 and scheduler.pool.n_free == 4
    assert rss[1] - rss[0] < 8 * 2**20, f"resident memory grew by {(rss[1] - rss[0]) / 2**20:.1f} MiB"


def test_pool_slots_bytes_and_budget():
    pool = KVPool(MAVERICK_LIKE, 3, 100, torch.float32)
    assert pool.nbytes() == 3 * KVPool.bytes_per_slot(MAVERICK_LIKE, 100, torch.float32)
    # three chunked layers of 8 positions, one global of 100: 2 (k, v) · 2 kv heads · 16 dims · 4 bytes each
    assert KVPool.bytes_per_slot(MAVERICK_LIKE, 100, torch.float32) == 2 * 2 * 16 * 4 * (3 * 8 + 100)
    assert [pool.alloc(), pool.alloc()] == [0, 1]
    pool.free(0)
    assert pool.alloc() == 2 and pool.alloc() == 0  # least recently freed first
    with pytest.raises(PoolFull):
        pool.alloc()
    with pytest.raises(ValueError, match="not in use"):
        pool.free(5)
    budget = KVPool.for_budget(MAVERICK_LIKE, 5 * KVPool.bytes_per_slot(MAVERICK_LIKE, 100, torch.float32) + 1, 100,
                               torch.float32)
    assert budget.slots == 5
    with pytest.raises(ValueError, match="holds no slot"):
        KVPool.for_budget(MAVERICK_LIKE, 10, 100, torch.float32)


def test_sampling_logprobs(scout):
    """The chosen token's log-probability under the distribution it was drawn from: the raw one at
    temperature 1 with no filter, the filtered and tempered one otherwise, 0 for greedy."""
    prompt = _ids(7, 4)
    engine = Engine(scout)
    plain = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=5, seed=1, stop_ids=(), logprobs=0,
                           sampling_logprobs=True)
    out = engine.generate(prompt, plain)[0]
    assert max(abs(a - b) for a, b in zip(out.logprobs, out.sampling_logprobs, strict=True)) <= 1e-5
    tempered = SamplingParams(**{**plain.__dict__, "temperature": 0.5, "top_p": 0.8})
    out = engine.generate(prompt, tempered)[0]
    with torch.no_grad():
        logits_V = scout(torch.tensor([prompt]))[0, -1]
    want = torch.log_softmax(filter_logits(logits_V, tempered), dim=-1)[out.token_ids[0]].item()
    assert abs(out.sampling_logprobs[0] - want) <= 1e-4
    greedy = SamplingParams(temperature=0.0, max_new_tokens=3, stop_ids=(), sampling_logprobs=True)
    assert engine.generate(prompt, greedy)[0].sampling_logprobs == [0.0, 0.0, 0.0]


def test_engine_reuses_its_pool_across_calls(scout):
    """A chat's next turn starts with the last turn's prompt and reply: only the new part is prefilled."""
    engine = Engine(scout, prefill_chunk=PIECE)
    first = engine.generate(_ids(20, 1), GREEDY)[0]
    pool = engine.pool
    follow = first.prompt_ids + first.token_ids + _ids(4, 2)
    again = engine.generate(follow, GREEDY)[0]
    # the prompt and the reply but its last token (never fed back) are cached: 25 positions
    assert engine.pool is pool and engine.scheduler.reused_tokens == 25
    assert again.token_ids == _alone(scout, follow, GREEDY).token_ids


def test_two_open_streams_of_one_engine(scout):
    """Streams opened together on one engine interleave: each gets its own tokens, none waits forever."""
    engine = Engine(scout, prefill_chunk=PIECE, max_slots=4, max_context=64)
    first, second = engine.stream(_ids(5, 1), GREEDY), engine.stream([_ids(7, 2), _ids(9, 3)], GREEDY)
    got = defaultdict(list)
    for a, b in zip(first, second, strict=False):
        got["a"].append(a.token)
        got[b.row].append(b.token)
    for b in second:
        got[b.row].append(b.token)
    assert got["a"] == _alone(scout, _ids(5, 1), GREEDY).token_ids
    assert got[0] == _alone(scout, _ids(7, 2), GREEDY).token_ids
    assert got[1] == _alone(scout, _ids(9, 3), GREEDY).token_ids
    assert engine.pool.n_free == 4 and not engine._mail


def test_step_emits_each_part_as_it_ends(scout):
    """With `emit`, the decoded rows' tokens go out before the step's prefills, and each prefilled request's
    first token as its prefill ends; the step still returns them all."""
    scheduler = Scheduler(scout, KVPool(scout.config, 4, 64, torch.float32), prefill_chunk=64)
    scheduler.submit(_ids(5, 1), GREEDY)
    scheduler.step()
    second, third = scheduler.submit(_ids(6, 2), GREEDY), scheduler.submit(_ids(7, 3), GREEDY)
    batches: list[list[int]] = []
    returned = scheduler.step(lambda events: batches.append([e.request for e in events]))
    assert batches == [[0], [second], [third]]
    assert [e.request for e in returned] == [0, second, third]


def test_wake_fd_is_written_once_per_step_and_before_each_prefill_piece(scout):
    """A server's hand-off: a step with nothing to decode writes `wake_fd` at once; a decode step writes it
    during the step (the eager step at its start); a prefill piece after decoded rows writes it again first."""
    import os

    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)

    def wakes() -> int:
        try:
            return len(os.read(read_fd, 4096))
        except BlockingIOError:
            return 0

    try:
        scheduler = Scheduler(scout, KVPool(scout.config, 4, 64, torch.float32), prefill_chunk=64)
        scheduler.wake_fd = write_fd
        scheduler.submit(_ids(5, 1), GREEDY)
        scheduler.step()  # a prefill alone
        assert wakes() == 1
        scheduler.step()  # a decode alone
        assert wakes() == 1
        scheduler.submit(_ids(6, 2), GREEDY)
        scheduler.step()  # a decode, then a prefill piece
        assert wakes() == 2
    finally:
        os.close(read_fd), os.close(write_fd)


def test_a_plain_step_function_is_taken(scout):
    """`Scheduler(step=fn)` with a plain `fn(tokens_B1, positions_B, slots_B, pool)` decodes as the eager step."""
    from herd.infer.steps import EagerStep

    eager = EagerStep(scout)
    calls = []

    def step(tokens_B1, positions_B, slots_B, pool):
        calls.append(tokens_B1.shape[0])
        return eager(tokens_B1, positions_B, slots_B, pool)

    scheduler = Scheduler(scout, KVPool(scout.config, 2, 64, torch.float32), step)
    scheduler.submit(_ids(5, 1), GREEDY)
    tokens = []
    while scheduler.has_work():
        tokens += [e.token for e in scheduler.step()]
    assert tokens == _alone(scout, _ids(5, 1), GREEDY).token_ids and calls == [1] * 5
