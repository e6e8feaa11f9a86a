"""`herd rl`: group advantages, the clipped policy-gradient loss by hand, invariance to how a step is split, dynamic
sampling, the prompt pool's filter and curriculum, and the asynchronous runtime (staleness bound, rollout workers
giving the learner's own run bit for bit, kill -9 of a worker or the learner survived)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import chat_model, read_log, run_cli, run_in_process, write_jsonl

from herd.config import ConfigError
from herd.data.filter import load_verifier, python_code
from herd.data.sources import DataError
from herd.tokenizer import load_tokenizer
from herd.train import TrainConfig
from herd.train.batches import Batch
from herd.train.policy_gradient import PolicyGradient, clipped_token_loss, group_advantages
from herd.train.prompt_pool import PromptPool, parse_sets, quotas, read_set

VOCAB = 320


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return chat_model(tmp_path_factory.mktemp("rl"), seed=5, vocab_size=VOCAB)


def sums(n: int, seed: int, tier: bool = False) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randrange(1, 50), rng.randrange(1, 50)
        record = {"messages": [{"role": "user", "content": f"{a} + {b} ="},
                               {"role": "assistant", "content": str(a + b)}]}
        if tier:
            record["tier"] = 1 + (a + b >= 50)
        out.append(record)
    return out


def rl_config(base: Path, data: Path, out: Path, **changes: object) -> TrainConfig:
    values = dict(objective="rl", init_from=str(base), data=str(data), out=str(out), seq_len=48, batch_size=8,
                  group_size=4, max_new_tokens=6, steps=3, lr=1e-3, warmup_steps=0, schedule="constant",
                  router_bias_rate=0.0, weight_decay=0.0, eval_every=1000, ckpt_every=1000, log_every=1000,
                  reward="rl_rewards:even_length", fast_rollouts=False)
    return TrainConfig(**(values | changes))


# ---- the loss, by value ----

def test_equal_rewards_give_exactly_zero_advantages_and_gradient() -> None:
    rewards = torch.tensor([[0.1, 0.1, 0.1], [1.0, 0.0, 0.0], [0.7, 0.7, 0.7]])
    advantages = group_advantages(rewards)
    assert torch.equal(advantages[0], torch.zeros(3)) and torch.equal(advantages[2], torch.zeros(3))
    mean, std = 1 / 3, torch.tensor([1.0, 0.0, 0.0]).std().item()
    assert advantages[1].tolist() == pytest.approx([(1 - mean) / (std + 1e-4), -mean / (std + 1e-4),
                                                    -mean / (std + 1e-4)], rel=1e-6)
    assert group_advantages(rewards, "none")[1].tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3], rel=1e-6)

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(16, 8), torch.nn.Linear(8, 16))
    wrapped = _Logits(model)
    batch = Batch(torch.randint(0, 16, (3, 6)), targets_NS=torch.ones(3, 5, dtype=torch.bool),
                  advantages_N=advantages[0], behaviour_NS=torch.full((3, 5), -2.0))
    PolicyGradient().sums(wrapped, batch)["loss"].backward()
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in model.parameters())


class _Logits(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, tokens: torch.Tensor, **_: object) -> torch.Tensor:
        return self.inner(tokens)


def test_clipped_objective_matches_a_hand_computation() -> None:
    """ratio 1.5 and 0.5 with A = ±1, clip-higher (0.2 below, 0.28 above)."""
    logp = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5, 1.1]))
    old = torch.zeros(5)
    advantage = torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0])
    loss, clipped = clipped_token_loss(logp, old, advantage, 0.2, 0.28)
    # -min(r A, clip(r) A): r=1.5,A=1 -> -1.28; r=1.5,A=-1 -> 1.5; r=0.5,A=1 -> -0.5; r=0.5,A=-1 -> 0.8;
    # r=1.1,A=2 -> -2.2
    assert loss.tolist() == pytest.approx([-1.28, 1.5, -0.5, 0.8, -2.2], rel=1e-6)
    assert clipped.tolist() == [True, False, False, True, False]


def _batch(lengths: list[int], seed: int) -> Batch:
    """Rows of a 4-token prompt and a completion of each length, with advantages and sampler log-probabilities."""
    g = torch.Generator().manual_seed(seed)
    width = 4 + max(lengths)
    tokens = torch.randint(0, 16, (len(lengths), width), generator=g)
    targets = torch.zeros(len(lengths), width - 1, dtype=torch.bool)
    for n, length in enumerate(lengths):
        targets[n, 3 : 3 + length] = True
    return Batch(tokens, targets_NS=targets, advantages_N=torch.randn(len(lengths), generator=g),
                 behaviour_NS=-torch.rand(len(lengths), width - 1, generator=g) * 3)


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "dr_grpo"])
def test_loss_types_by_hand_and_invariant_to_micro_batches_and_processes(loss_type: str) -> None:
    """The trainer's rule: every part's sum over the step's total count. Any split into micro-batches and processes
    gives the loss and the gradient of the whole, and each loss type is its formula."""
    torch.manual_seed(1)
    model = _Logits(torch.nn.Sequential(torch.nn.Embedding(16, 8), torch.nn.Linear(8, 16)))
    objective = PolicyGradient(loss_type, 0.2, 0.28, temperature=0.7, max_new_tokens=8, old_logps="sampler")
    batch = _batch([3, 8, 1, 5, 6, 2], seed=0)

    def step(parts: list[Batch]) -> tuple[float, list[torch.Tensor]]:
        model.zero_grad()
        count = sum(objective.count(p) for p in parts)
        total = 0.0
        for part in parts:
            loss = objective.sums(model, part)["loss"] / count
            loss.backward()
            total += float(loss.detach())
        return total, [p.grad.clone() for p in model.parameters()]

    whole, grads = step([batch])
    for parts in ([batch.slice(0, 1), batch.slice(1, 4), batch.slice(4, 6)], [batch.slice(i, i + 1) for i in range(6)]):
        split, split_grads = step(parts)
        assert split == pytest.approx(whole, rel=1e-5)
        assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(grads, split_grads, strict=True))

    with torch.no_grad():  # by hand
        logits = model(batch.tokens_NS[:, :-1]) / 0.7
        logp = torch.log_softmax(logits, -1).gather(2, batch.tokens_NS[:, 1:, None])[..., 0]
        token, _ = clipped_token_loss(logp, batch.behaviour_NS, batch.advantages_N[:, None].expand_as(logp), 0.2, 0.28)
        mask = batch.targets_NS
        per_row = (token * mask).sum(1)
        expected = {"dapo": per_row.sum() / mask.sum(), "grpo": (per_row / mask.sum(1)).mean(),
                    "dr_grpo": per_row.sum() / (6 * 8)}[loss_type]
    assert whole == pytest.approx(float(expected), rel=1e-5)


def test_learner_ratio_with_truncated_importance_weight_and_kl() -> None:
    """old_logps="learner": ratio 1 (its value), gradient A·w·∇logπ with w = min(π/π_sampler, cap); KL is k3."""
    torch.manual_seed(2)
    model = _Logits(torch.nn.Sequential(torch.nn.Embedding(16, 8), torch.nn.Linear(8, 16)))
    reference = _Logits(torch.nn.Sequential(torch.nn.Embedding(16, 8), torch.nn.Linear(8, 16)))
    batch = _batch([4, 2], seed=3)
    objective = PolicyGradient("dapo", old_logps="learner", is_cap=1.5, kl_coef=0.1, reference=reference)
    out = objective.sums(model, batch)
    with torch.no_grad():
        def logps(m: torch.nn.Module) -> torch.Tensor:
            return torch.log_softmax(m(batch.tokens_NS[:, :-1]), -1).gather(2, batch.tokens_NS[:, 1:, None])[..., 0]

        logp, ref = logps(model), logps(reference)
        weight = torch.exp(logp - batch.behaviour_NS).clamp(max=1.5)
        kl = torch.exp(ref - logp) - (ref - logp) - 1
        token = -batch.advantages_N[:, None] * weight + 0.1 * kl
        mask = batch.targets_NS
    assert float(out["loss"].detach()) == pytest.approx(float((token * mask).sum()), rel=1e-5)
    assert float(out["is_weight"]) == pytest.approx(float((weight * mask).sum()), rel=1e-5)
    assert float(out["kl"]) == pytest.approx(float((kl * mask).sum()), rel=1e-5)


# ---- prompts and rewards ----

def test_python_reward_and_verifier_names() -> None:
    code = "def add(first, second):\n    return first + second\n\nprint(add(1, 2))\n"
    assert python_code(code) and python_code(f"Here:\n```python\n{code}```\nDone.")
    assert not python_code("def add(a, b) return a + b" * 3) and not python_code("x = 1")
    comments = "# a comment line that is long enough to pass\n" * 3
    assert not python_code(comments) and not python_code('"""' + "a docstring " * 10 + '"""')
    assert load_verifier("python:3")("x = 1", "") and load_verifier("arithmetic")("it is 42.", "42")
    with pytest.raises(DataError, match="cannot load verifier"):
        load_verifier("no_such_module_x:f")


def test_prompt_sets_mix_by_weight_and_the_band_and_curriculum_filter(base: Path, tmp_path: Path) -> None:
    tokenizer = load_tokenizer(base)
    assert parse_sets("a.jsonl:3,b.jsonl", "exact,number") == [("a.jsonl", 3.0, "exact"), ("b.jsonl", 1.0, "number")]
    with pytest.raises(DataError, match="2 prompt sets but 3 rewards"):
        parse_sets("a,b", "exact,number,exact")
    assert quotas([3, 1], 8) == [6, 2] and quotas([1, 1, 1], 4) == [2, 1, 1]
    a = read_set(str(write_jsonl(tmp_path / "a.jsonl", sums(20, 0, tier=True))), 3, "number", tokenizer, 40, "tier")
    b = read_set(str(write_jsonl(tmp_path / "b.jsonl", sums(10, 1, tier=True))), 1, "number", tokenizer, 40, "tier")
    assert a.references[0] == sums(20, 0)[0]["messages"][-1]["content"]
    pool = PromptPool([a, b], seed=0, band=(0.0, 0.9), curriculum=True, curriculum_fraction=0.5)
    candidates, want = pool.candidates(0, steps=10, per_step=4, rounds=2)
    assert want == [3, 1] and [len(c) for c in candidates] == [6, 2]
    assert all(pool.locate(p)[0] is a for p in candidates[0]) and all(pool.locate(p)[0] is b for p in candidates[1])
    assert all(pool.locate(p)[0].levels[pool.locate(p)[1]] == 1 for c in candidates for p in c)  # tier 2 locked
    assert pool.unlocked(5, 10) == 2
    # measured rates: 0 and 1 are outside (0, 0.9); unmeasured and 0.5 are in
    pool.update([{"prompt": p, "passed": 0, "n": 4} for p in range(0, 10)]
                + [{"prompt": p, "passed": 4, "n": 4} for p in range(10, 15)] + [{"prompt": 15, "passed": 2, "n": 4}])
    assert pool.occupancy() == {"below": 10, "inside": 1, "above": 5, "unmeasured": 14}
    later, _ = pool.candidates(6, steps=10, per_step=4, rounds=2)
    assert not any(p < 15 for p in later[0])
    small = PromptPool([b], seed=0)
    for step in range(4):  # 10 prompts, 12 wanted: each once, also across an epoch boundary
        picked, _ = small.candidates(step, 10, 4, 3)
        assert len(picked[0]) == len(set(picked[0])) == 10
    state = json.loads(json.dumps(pool.state_dict()))
    again = PromptPool([a, b], seed=0, band=(0.0, 0.9), curriculum=True)
    again.load_state_dict(state)
    assert again.candidates(7, 10, 4, 2) == pool.candidates(7, 10, 4, 2)


def test_bad_prompts_and_settings_are_clear_errors(base: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "p.jsonl", sums(8, 0))
    (tmp_path / "bad.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": 3}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):
        run_in_process(rl_config(base, tmp_path / "bad.jsonl", tmp_path / "r0"))
    with pytest.raises(DataError, match=r"p\.jsonl:1: the prompt has .* tokens"):
        run_in_process(rl_config(base, data, tmp_path / "r1", seq_len=12))
    with pytest.raises(ConfigError, match="multiple of group_size"):
        run_in_process(rl_config(base, data, tmp_path / "r2", batch_size=6))
    with pytest.raises(ConfigError, match="raise max_staleness"):
        run_in_process(rl_config(base, data, tmp_path / "r3", sync_every=3, max_staleness=1))
    with pytest.raises(ConfigError, match="sample_temperature must be > 0"):
        rl_config(base, data, tmp_path / "r4", sample_temperature=0.0)
    with pytest.raises(ConfigError, match="init-from"):
        run_in_process(rl_config(base, data, tmp_path / "r5", init_from=""))


# ---- runs ----

def test_dynamic_sampling_never_trains_a_group_without_signal(base: Path, tmp_path: Path) -> None:
    """Every kept group has unequal rewards; dropped ones are replaced and still measured; without dynamic sampling
    every group is kept. With a constant reward nothing is kept and no update happens."""
    import herd
    from herd.train.loop import model_config
    from herd.train.rl_data import build_pool, new_sampler
    from herd.train.rollouts import Task, run_task

    data = write_jsonl(tmp_path / "p.jsonl", sums(40, 0))
    config = rl_config(base, data, tmp_path / "run", batch_size=16)
    tokenizer = load_tokenizer(base)
    pool = build_pool(config, tokenizer)
    model = herd.load(base, dtype=torch.float32, text_only=True)
    sampler = new_sampler(model_config(config, tokenizer), config, torch.device("cpu"))
    sampler.load(model.state_dict(), 0)
    candidates, want = pool.candidates(0, 3, 4, 3)
    result = run_task(sampler, pool, tokenizer, Task(0, 0, "rollout", candidates, want, True), group=4,
                      temperature=1.0, max_new_tokens=6, seed=0)
    assert 0 < len(result.groups) <= 4 and len(result.tried) >= len(result.groups)
    assert all(len(set(g["rewards"])) > 1 for g in result.groups)
    kept_prompts = [g["prompt"] for g in result.groups]
    assert kept_prompts == [t["prompt"] for t in result.tried if 0 < t["passed"] < t["n"]][:4]
    plain = run_task(sampler, pool, tokenizer, Task(0, 0, "rollout", candidates, want, False), group=4,
                     temperature=1.0, max_new_tokens=6, seed=0)
    assert [g["prompt"] for g in plain.groups] == candidates[0][:4]
    again = run_task(sampler, pool, tokenizer, Task(0, 0, "rollout", candidates, want, False), group=4,
                     temperature=1.0, max_new_tokens=6, seed=0)
    assert again.groups == plain.groups  # seeded by (run, step, prompt): a task gives the same answers again
    same = {g["prompt"]: g for g in plain.groups}
    assert all(g == same[g["prompt"]] for g in result.groups if g["prompt"] in same)  # alone or among others

    flat = rl_config(base, data, tmp_path / "flat", reward="rl_rewards:constant")
    run_in_process(flat)
    records = read_log(tmp_path / "flat" / "log.jsonl")
    assert all(r["groups_kept"] == 0 and r["reward"] == 1.0 and r["grad_norm"] == 0.0 for r in records)
    before, after = load_file(base / "model.safetensors"), load_file(tmp_path / "flat" / "model" / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_rl_runs_logs_its_metrics_and_micro_batches_change_nothing(base: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "p.jsonl", sums(40, 0))
    run_in_process(rl_config(base, data, tmp_path / "whole"))
    run_in_process(rl_config(base, data, tmp_path / "split", micro_batch_size=1))
    whole, split = (read_log(tmp_path / name / "log.jsonl") for name in ("whole", "split"))
    for key in ("reward", "pass@1", "pass@4", "completion_length", "eot_fraction", "entropy", "groups_kept",
                "staleness", "load_max_mean", "samples_per_s"):
        assert key in whole[0], key
    assert [r["loss"] for r in split] == pytest.approx([r["loss"] for r in whole], rel=1e-4, abs=1e-7)
    assert [r["reward"] for r in split] == [r["reward"] for r in whole]
    assert all(r["staleness"] == 0 for r in whole)


def test_staleness_is_bounded_and_follows_the_schedule(base: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "p.jsonl", sums(40, 0))
    run_in_process(rl_config(base, data, tmp_path / "lag", steps=6, max_staleness=2, sync_every=2))
    records = read_log(tmp_path / "lag" / "log.jsonl")
    # v(t) = 2·⌊max(0, t − 1)/2⌋: steps 0..5 sample with versions 0, 0, 0, 2, 2, 4
    assert [r["staleness"] for r in records] == [0, 1, 2, 1, 2, 1]


@pytest.mark.slow
@pytest.mark.parametrize("staleness", [0, 1])
def test_a_killed_run_resumes_bit_for_bit(base: Path, tmp_path: Path, staleness: int) -> None:
    data = write_jsonl(tmp_path / "p.jsonl", sums(40, 0))
    config = rl_config(base, data, tmp_path / "whole", steps=4, ckpt_every=2, max_staleness=staleness,
                       pass_band="0,1", profile_every=2, profile_prompts=6)
    assert run_cli(config, command="rl").returncode == 0  # the same threads as the killed run's processes
    killed = config.replace(out=str(tmp_path / "killed"))
    done = run_cli(killed, fault="step:3", command="rl")
    assert done.returncode != 0
    done = run_cli(killed, "--resume", command="rl")
    assert done.returncode == 0, done.stderr[-3000:]
    whole, resumed = (read_log(tmp_path / name / "log.jsonl") for name in ("whole", "killed"))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in whole]
    a, b = (load_file(tmp_path / name / "model" / "model.safetensors") for name in ("whole", "killed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize(("workers", "fault"), [(1, None), (1, "rollout:4"), (1, "step:3"), (2, None)])
def test_rollout_workers_give_the_learners_own_run(base: Path, tmp_path: Path, workers: int, fault: str | None) -> None:
    """torchrun, 1 learner + 1 or 2 rollout workers (gloo), samples one step stale: the same losses and final
    weights as the learner sampling by itself, so the weights reached the workers bit for bit. Killing the worker (as
    it takes the task of step 4) or the learner (in step 3) with SIGKILL: torchrun restarts both, they resume from the
    checkpoint of step 2 and end with the same weights."""
    data = write_jsonl(tmp_path / "p.jsonl", sums(40, 0))
    config = rl_config(base, data, tmp_path / "local", steps=5, ckpt_every=2, max_staleness=1)
    done = run_cli(config, command="rl")
    assert done.returncode == 0, done.stderr[-3000:]
    remote = config.replace(out=str(tmp_path / "remote"), rollout_workers=workers)
    done = run_cli(remote, command="rl", nproc=1 + workers, fault=fault, restarts=1 if fault else 0)
    assert done.returncode == 0, done.stderr[-3000:]
    assert ("resumed from" in done.stderr) == bool(fault)
    local, workers = (read_log(tmp_path / name / "log.jsonl") for name in ("local", "remote"))
    assert [r["loss"] for r in workers] == [r["loss"] for r in local]
    assert [r["staleness"] for r in workers] == [0, 1, 1, 1, 1]
    a, b = (load_file(tmp_path / name / "model" / "model.safetensors") for name in ("local", "remote"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert math.isfinite(workers[-1]["loss"])


@pytest.mark.slow
def test_two_learner_processes_train_as_one(base: Path, tmp_path: Path) -> None:
    """torchrun with 2 learners (FSDP) and no workers: the main learner samples, both train on their share of the
    rows; the step's token mean, and so its loss, is that of one process."""
    data = write_jsonl(tmp_path / "p.jsonl", sums(40, 0))
    config = rl_config(base, data, tmp_path / "one", steps=2)
    assert run_cli(config, command="rl").returncode == 0
    done = run_cli(config.replace(out=str(tmp_path / "two")), command="rl", nproc=2)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (read_log(tmp_path / name / "log.jsonl") for name in ("one", "two"))
    assert two[0]["reward"] == one[0]["reward"] and two[0]["groups_kept"] == one[0]["groups_kept"]
    assert two[0]["loss"] == pytest.approx(one[0]["loss"], rel=1e-4, abs=1e-6)
    assert two[0]["entropy"] == pytest.approx(one[0]["entropy"], rel=1e-4)
