"""`herd distill`: the soft losses' values (zero at equality, JSD's ends and limits, TRL's generalized JSD), the
α rules, and a student that moves toward its teacher."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from train_helpers import chat_model, prepared_data, read_log, run_in_process

import herd
from herd.config import ConfigError, preset
from herd.train import TrainConfig
from herd.train.batches import Batch
from herd.train.objectives import SOFT_LOSSES, Distill, soft_loss

VOCAB = 320


def logits(seed: int, n: int = 6, v: int = 50, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(n, v, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def kl(p: torch.Tensor, q: torch.Tensor, t: float = 1.0) -> torch.Tensor:
    """KL(softmax(p/t) ‖ softmax(q/t)) per row, written out."""
    lp, lq = F.log_softmax(p / t, dim=-1).double(), F.log_softmax(q / t, dim=-1).double()
    return (lp.exp() * (lp - lq)).sum(dim=-1)


@pytest.mark.parametrize("kind", SOFT_LOSSES)
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_soft_losses_vanish_when_the_student_is_the_teacher(kind: str, temperature: float) -> None:
    x = logits(0)
    assert soft_loss(x, x.clone(), kind, 0.3, temperature).abs().max() < 1e-6
    assert (soft_loss(x, logits(1), kind, 0.3, temperature) > 0).all()


def test_kl_directions_and_jsd_at_its_ends() -> None:
    student, teacher = logits(2), logits(3)
    torch.testing.assert_close(soft_loss(student, teacher, "forward_kl").double(), kl(teacher, student),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(soft_loss(student, teacher, "reverse_kl").double(), kl(student, teacher),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(soft_loss(student, teacher, "jsd", 0.0), soft_loss(student, teacher, "forward_kl"))
    torch.testing.assert_close(soft_loss(student, teacher, "jsd", 1.0), soft_loss(student, teacher, "reverse_kl"))
    # Near each end the generalized JSD, divided by its weight there, tends to that end's KL (the next term is
    # ε/2·χ², so the check uses moderate logits).
    student, teacher = logits(2, scale=1.0), logits(3, scale=1.0)
    eps = 1e-3
    torch.testing.assert_close(soft_loss(student, teacher, "jsd", eps).double() / eps, kl(teacher, student),
                               rtol=2e-2, atol=1e-3)
    torch.testing.assert_close(soft_loss(student, teacher, "jsd", 1 - eps).double() / eps, kl(student, teacher),
                               rtol=2e-2, atol=1e-3)
    half = soft_loss(student, teacher, "jsd", 0.5)
    assert (half <= math.log(2) + 1e-6).all()  # the symmetric JSD is bounded by ln 2


@pytest.mark.slow
@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_soft_loss_matches_trl_generalized_jsd(beta: float, temperature: float) -> None:
    from trl.experimental.gkd import GKDTrainer

    student, teacher = logits(4).float()[None], logits(5).float()[None]
    want = GKDTrainer.generalized_jsd_loss(student, teacher, beta=beta, temperature=temperature)
    got = soft_loss(student[0], teacher[0], "jsd", beta, temperature).sum()  # TRL's batchmean: per sequence
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Shards, a teacher and a student start (random debug models sharing the compact tokenizer)."""
    root = tmp_path_factory.mktemp("distill")
    return prepared_data(root, VOCAB), chat_model(root, seed=7, vocab_size=VOCAB), chat_model(root, seed=8,
                                                                                              vocab_size=VOCAB)


def test_alpha_rules(setup) -> None:
    _, teacher_path, _ = setup
    teacher = herd.load(teacher_path)
    batch = Batch(torch.randint(0, VOCAB, (2, 17), generator=torch.Generator().manual_seed(0)))
    same = Distill(teacher, alpha=1.0).sums(teacher, batch)
    assert same["loss"].abs() < 1e-4 and same["soft_loss"].abs() < 1e-4  # student = teacher, soft only
    plain = Distill(teacher, alpha=0.0).sums(herd.load(setup[2]), batch)
    torch.testing.assert_close(plain["loss"], plain["hard_loss"])  # α = 0: the data's cross-entropy alone
    linear = Distill(teacher, alpha=1.0, rule="linear", alpha_end=0.2)
    linear.progress = 0.5
    assert linear.sums(teacher, batch)["alpha"] / batch.n_targets() == pytest.approx(0.6)
    confident = Distill(teacher, alpha=0.8, rule="confidence").sums(teacher, batch)
    with torch.no_grad():
        p_true = torch.softmax(teacher(batch.tokens_NS[:, :-1]), dim=-1).gather(
            2, batch.tokens_NS[:, 1:, None])[..., 0]
    assert float(confident["alpha"]) == pytest.approx(0.8 * float(p_true.sum()), rel=1e-5)


def test_the_student_moves_toward_its_teacher(setup, tmp_path: Path) -> None:
    """Soft targets only: the KL to the teacher falls by more than half in 30 steps; the hard loss is logged."""
    data, teacher, student = setup
    config = TrainConfig(objective="distill", teacher=str(teacher), init_from=str(student), data=str(data),
                         out=str(tmp_path / "run"), seq_len=32, batch_size=4, steps=30, lr=3e-3, warmup_steps=0,
                         alpha=1.0, eval_every=30, ckpt_every=30, log_every=30, router_bias_rate=0.0)
    run_in_process(config)
    log = read_log(tmp_path / "run" / "log.jsonl")
    first, last = log[0]["soft_loss"], sum(r["soft_loss"] for r in log[-5:]) / 5
    assert last < 0.5 * first, (first, last)
    assert all("hard_loss" in r and r["alpha"] == 1.0 for r in log)


def test_a_teacher_with_another_vocabulary_is_refused(setup, tmp_path: Path) -> None:
    data, _, student = setup
    other = tmp_path / "other"
    herd.save(herd.build(preset("debug").text.replace(vocab_size=VOCAB + 64), seed=0), other)
    config = TrainConfig(objective="distill", teacher=str(other), init_from=str(student), data=str(data),
                         out=str(tmp_path / "run"), seq_len=32, batch_size=4, steps=1)
    with pytest.raises(ConfigError, match="same tokenizer"):
        run_in_process(config)
    with pytest.raises(ConfigError, match="--teacher"):
        run_in_process(config.replace(teacher=""))


@pytest.mark.parametrize("kind", SOFT_LOSSES)
def test_a_top_k_teacher_with_every_id_is_the_full_teacher(kind: str) -> None:
    from herd.train.objectives import soft_loss_topk

    student, teacher = logits(6).float(), logits(7).float()
    logps, ids = F.log_softmax(teacher, dim=-1).topk(teacher.shape[-1], dim=-1)
    for t in (1.0, 2.0):
        torch.testing.assert_close(soft_loss_topk(student, ids, logps, kind, 0.3, t),
                                   soft_loss(student, teacher, kind, 0.3, t))
    # A true top-k: forward KL also charges the student's mass outside the teacher's k ids.
    logps, ids = F.log_softmax(teacher, dim=-1).topk(5, dim=-1)
    full = F.log_softmax(student, dim=-1).gather(1, ids)
    restricted = F.log_softmax(student.gather(1, ids), dim=-1)
    t = F.log_softmax(logps, dim=-1)
    torch.testing.assert_close(soft_loss_topk(student, ids, logps, "forward_kl"), (t.exp() * (t - full)).sum(-1))
    torch.testing.assert_close(soft_loss_topk(student, ids, logps, "reverse_kl"),
                               (restricted.exp() * (restricted - t)).sum(-1))


def test_a_precomputed_teacher_trains_as_the_live_one(setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Top-k with k = V gives the live teacher's losses; a run over cached windows never loads the teacher; a cache
    of another k is refused."""
    from herd.train import loop

    data, teacher, student = setup
    base = TrainConfig(objective="distill", teacher=str(teacher), init_from=str(student), data=str(data), seq_len=32,
                       batch_size=4, steps=6, lr=3e-3, warmup_steps=0, alpha=0.8, alpha_rule="confidence",
                       eval_every=3, eval_batches=1, ckpt_every=6, log_every=6, router_bias_rate=0.0)
    run_in_process(base.replace(out=str(tmp_path / "live")))
    cache = tmp_path / "cache"
    topk = base.replace(teacher_topk=VOCAB, teacher_cache=str(cache))
    run_in_process(topk.replace(out=str(tmp_path / "topk")))
    live, stored = read_log(tmp_path / "live" / "log.jsonl"), read_log(tmp_path / "topk" / "log.jsonl")
    for a, b in zip(live, stored, strict=True):
        for key in ("loss", "soft_loss", "hard_loss", "alpha", "val_loss"):
            assert (a.get(key) is None) == (b.get(key) is None)
            if a.get(key) is not None:
                assert b[key] == pytest.approx(a[key], rel=2e-5, abs=1e-6), key
    parts = sorted(cache.glob("part-*.safetensors"))
    assert {p.name.split("-")[1] for p in parts} == {"train", "val"}

    def no_teacher(self):
        raise AssertionError("the teacher was loaded although every window is cached")

    monkeypatch.setattr(loop._Trainer, "_teacher", no_teacher)
    run_in_process(topk.replace(out=str(tmp_path / "again")))
    assert sorted(cache.glob("part-*.safetensors")) == parts
    assert [r["loss"] for r in read_log(tmp_path / "again" / "log.jsonl")] == [r["loss"] for r in stored]
    with pytest.raises(ConfigError, match="k: "):
        run_in_process(topk.replace(out=str(tmp_path / "other"), teacher_topk=8))


def test_on_policy_distillation(setup, tmp_path: Path) -> None:
    """GKD: every micro-batch holds the student's own answers, only their tokens count, the teacher alone teaches
    (α = 1 there), the divergence falls, and the run is reproducible."""
    from train_helpers import WORDS, write_jsonl

    from herd.tokenizer import load_tokenizer
    from herd.train.chat_data import ChatData
    from herd.train.on_policy import OnPolicy

    _, teacher, student = setup
    conversations = [{"messages": [{"role": "user", "content": f"{a} {b}"}, {"role": "assistant", "content": b}]}
                     for a in WORDS[:8] for b in WORDS[8:14]]
    data = write_jsonl(tmp_path / "chat.jsonl", conversations)
    tokenizer = load_tokenizer(student)
    chat = ChatData(data, tokenizer, 64, seed=0)
    source = OnPolicy(chat, 1.0, 1.0, 6, seed=0)
    source.policy = herd.load(student)
    (batch,) = source.micro_batches(0, 2, 0, 1, 2)
    assert batch.on_policy
    for row, window in enumerate(chat.window(s) for s in range(2)):
        counted = batch.tokens_NS[row, 1:][batch.targets_NS[row]].tolist()
        prompts = [source.prompts[i].tolist() for i in window]
        tokens = batch.tokens_NS[row].tolist()
        assert tokens[: len(prompts[0])] == prompts[0]  # the conversation as the data has it, up to its answer
        assert 0 < len(counted) <= 6 * len(window)  # only the sampled answers count

    config = TrainConfig(objective="distill", teacher=str(teacher), init_from=str(student), data=str(data),
                         out=str(tmp_path / "run"), seq_len=64, batch_size=4, steps=16, lr=3e-3, warmup_steps=0,
                         on_policy=1.0, max_new_tokens=6, alpha=0.5, eval_every=16, ckpt_every=16, log_every=16,
                         router_bias_rate=0.0)
    run_in_process(config)
    log = read_log(tmp_path / "run" / "log.jsonl")
    assert all(r["alpha"] == 1.0 for r in log)
    first, last = sum(r["soft_loss"] for r in log[:3]) / 3, sum(r["soft_loss"] for r in log[-3:]) / 3
    assert last < 0.7 * first, (first, last)
    run_in_process(config.replace(out=str(tmp_path / "again")))
    assert [r["loss"] for r in read_log(tmp_path / "again" / "log.jsonl")] == [r["loss"] for r in log]
    with pytest.raises(ConfigError, match="chat JSONL"):
        run_in_process(config.replace(data=str(setup[0]), out=str(tmp_path / "shards")))
