"""`herd dpo`: ln 2 at initialisation, the loss against a hand computation with another reference, the first
update raising chosen and lowering rejected, learning, the cached reference, and TRL's DPOTrainer."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from train_helpers import chat_model, read_log, run_in_process, write_jsonl

import herd
from herd.chat import render
from herd.cli.main import main
from herd.data.sources import DataError
from herd.tokenizer import load_tokenizer
from herd.train import TrainConfig
from herd.train.objectives import Preference, sequence_logps
from herd.train.pair_data import PairData

VOCAB = 320


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two random debug models (policy start, another reference) with the compact test tokenizer."""
    root = tmp_path_factory.mktemp("dpo")
    return chat_model(root, seed=3, vocab_size=VOCAB), chat_model(root, seed=4, vocab_size=VOCAB)


def sums(n: int, seed: int) -> list[dict]:
    """What is a + b? The right sum is chosen, one off by a few rejected."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        a, b = rng.randrange(10, 100), rng.randrange(10, 100)
        wrong = a + b + rng.choice([-3, -2, -1, 1, 2, 3])
        pairs.append({"prompt": [{"role": "user", "content": f"What is {a} + {b}?"}],
                      "chosen": [{"role": "assistant", "content": str(a + b)}],
                      "rejected": str(wrong)})
    return pairs


def dpo_config(model: Path, data: Path, out: Path, **changes: object) -> TrainConfig:
    values = dict(objective="dpo", init_from=str(model), data=str(data), out=str(out), seq_len=64, batch_size=4,
                  steps=1, lr=1e-3, warmup_steps=0, router_bias_rate=0.0, weight_decay=0.0, eval_every=100,
                  ckpt_every=100, log_every=100, beta=0.1)
    return TrainConfig(**(values | changes))


def test_at_initialisation_the_loss_is_ln2_and_the_gradient_raises_chosen(models, tmp_path: Path,
                                                                           monkeypatch) -> None:
    policy, _ = models
    data = write_jsonl(tmp_path / "pairs.jsonl", sums(8, seed=0))
    run_in_process(dpo_config(policy, data, tmp_path / "run", batch_size=8, lr=3e-3))
    first = read_log(tmp_path / "run" / "log.jsonl")[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["reward_margin"] == pytest.approx(0.0, abs=1e-6) and first["reward_accuracy"] == 0.0

    # The gradient itself (a small plain step along it, not Adam's sign-like first step): chosen up, rejected down.
    chat = PairData(data, load_tokenizer(policy), 64, seed=0)
    model = herd.load(policy)
    pairs = chat.all_pairs(8)[0]
    with torch.no_grad():
        before = sequence_logps(model, pairs).view(-1, 2)
    chat.reference_N2 = before.double()
    pairs = chat.all_pairs(8)[0]
    loss = Preference(beta=0.1).sums(model, pairs)["loss"]
    loss.backward()
    norm = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters() if p.grad is not None))
    with torch.no_grad():
        for param in model.parameters():
            if param.grad is not None:
                param -= 1e-2 / norm * param.grad
        after = sequence_logps(model, pairs).view(-1, 2)
    change = (after - before).mean(dim=0)
    # Along the loss gradient the margin grows. Here both sides fall (chosen and rejected differ in one digit, so
    # their gradients are nearly parallel: DPO's known likelihood displacement), rejected ten times faster.
    assert change[0] - change[1] > 0, change
    # The loss's own gradient with respect to each side's log-probability: −β/2 on chosen (descent raises it),
    # +β/2 on rejected (descent lowers it), per pair, at initialisation.
    logp_N = before.flatten().float().requires_grad_()
    monkeypatch.setattr("herd.train.objectives.sequence_logps", lambda model, batch, bf16=False: logp_N)
    (grad_N,) = torch.autograd.grad(Preference(beta=0.1).sums(model, pairs)["loss"], logp_N)
    torch.testing.assert_close(grad_N.view(-1, 2), torch.tensor([[-0.05, 0.05]]).expand(8, 2))


def test_loss_is_the_hand_computed_sigmoid_loss_against_another_reference(models, tmp_path: Path) -> None:
    """Reference ≠ policy: each side scored alone by each model, the completion's tokens only; with an NLL term."""
    policy, other = models
    records = sums(6, seed=1)
    data = write_jsonl(tmp_path / "pairs.jsonl", records)
    beta, weight = 0.5, 0.3
    run_in_process(dpo_config(policy, data, tmp_path / "run", batch_size=6, reference=str(other), beta=beta,
                              nll_weight=weight))
    logged = read_log(tmp_path / "run" / "log.jsonl")[0]

    tokenizer = load_tokenizer(policy)
    order = PairData(data, tokenizer, 64, seed=0)._pair  # the step's pairs: its shuffled order
    nets = {"policy": herd.load(policy), "reference": herd.load(other)}

    def logp(net: str, record: dict, side: str) -> tuple[float, int]:
        completion = record[side] if isinstance(record[side], list) else [{"role": "assistant",
                                                                             "content": record[side]}]
        prompt = len(render(tokenizer, record["prompt"], add_generation_prompt=True))
        ids = render(tokenizer, record["prompt"] + completion, add_generation_prompt=False).ids
        with torch.no_grad():
            logits = nets[net](torch.tensor([ids[:-1]]))[0]
        logprobs = torch.log_softmax(logits.double(), dim=-1)[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
        return float(logprobs[prompt - 1 :].sum()), len(ids) - prompt  # completion tokens: content + end token

    losses, margins = [], []
    for k in range(6):
        record = records[order(k)]
        (pc, n), (pr, _) = logp("policy", record, "chosen"), logp("policy", record, "rejected")
        (rc, _), (rr, _) = logp("reference", record, "chosen"), logp("reference", record, "rejected")
        margin = beta * ((pc - rc) - (pr - rr))
        margins.append(margin)
        losses.append(-F.logsigmoid(torch.tensor(margin)).item() + weight * (-pc / n))
    assert logged["loss"] == pytest.approx(sum(losses) / 6, rel=1e-5)
    assert logged["reward_margin"] == pytest.approx(sum(margins) / 6, abs=2e-5)  # logged to 5 decimals
    assert logged["reward_accuracy"] == pytest.approx(sum(m > 0 for m in margins) / 6, abs=1e-5)


def test_dpo_learns_and_reuses_its_reference(models, tmp_path: Path) -> None:
    """On right-vs-wrong sums, reward accuracy climbs; the reference's log-probabilities are computed once and a
    resumed run reads them back."""
    policy, _ = models
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "train.jsonl", sums(16, seed=2))
    write_jsonl(tmp_path / "data" / "val.jsonl", sums(4, seed=3))
    out = tmp_path / "run"
    args = ["dpo", "--init-from", str(policy), "--data", str(tmp_path / "data"), "--out", str(out), "--seq-len", "64",
            "--batch-size", "8", "--steps", "30", "--lr", "3e-3", "--warmup-steps", "0", "--beta", "0.5",
            "--eval-every", "30", "--ckpt-every", "15", "--no-progress"]
    assert main(args) == 0
    log = read_log(out / "log.jsonl")
    late = sum(r["reward_accuracy"] for r in log[-5:]) / 5
    assert late > 0.9 and log[-1]["reward_margin"] > 1.0, (late, log[-1])
    assert log[-1]["val_loss"] is not None  # unseen sums: a random 1M-parameter model memorises, not generalises
    cache = out / "reference_logps.safetensors"
    written = cache.stat().st_mtime_ns
    shutil.rmtree(out / "checkpoints" / "step-00000030")
    (out / "model" / "training.json").unlink()
    assert main([*args, "--resume"]) == 0
    assert cache.stat().st_mtime_ns == written
    assert [r["loss"] for r in read_log(out / "log.jsonl")] == pytest.approx([r["loss"] for r in log], rel=1e-6)


def test_bad_pairs_name_the_line(models, tmp_path: Path) -> None:
    tokenizer = load_tokenizer(models[0])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": [{"role": "user", "content": "hi"}], "chosen": "a"}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:1: no `rejected`"):
        PairData(bad, tokenizer, 64, 0)
    bad.write_text(json.dumps({"prompt": [{"role": "user", "content": "hi"}], "chosen": 3, "rejected": "b"}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:1: `chosen` is a list of messages or a string"):
        PairData(bad, tokenizer, 64, 0)


@pytest.mark.slow
def test_first_step_loss_matches_trl(models, tmp_path: Path) -> None:
    """TRL's DPOTrainer with the same policy and reference (transformers' Llama4ForCausalLM from herd's saves)
    and the same tokens: the same first-step loss within 1e-4."""
    from datasets import Dataset
    from transformers import Llama4ForCausalLM, PreTrainedTokenizerFast
    from trl import DPOConfig, DPOTrainer

    policy, other = models
    records = sums(4, seed=5)
    data = write_jsonl(tmp_path / "pairs.jsonl", records)
    run_in_process(dpo_config(policy, data, tmp_path / "run", batch_size=4, reference=str(other), beta=0.5))
    herd_loss = read_log(tmp_path / "run" / "log.jsonl")[0]["loss"]

    tokenizer = load_tokenizer(policy)
    rows = []
    for r in records:
        prompt = render(tokenizer, r["prompt"], add_generation_prompt=True).ids
        sides = {}
        for key in ("chosen", "rejected"):
            completion = r[key] if isinstance(r[key], list) else [{"role": "assistant", "content": r[key]}]
            sides[key] = render(tokenizer, r["prompt"] + completion, add_generation_prompt=False).ids[len(prompt):]
        rows.append({"prompt_ids": prompt, "chosen_ids": sides["chosen"], "rejected_ids": sides["rejected"]})
    hf_tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(policy / "tokenizer.json"))
    hf_tokenizer.pad_token = tokenizer.decode([tokenizer.pad_id])
    hf_tokenizer.eos_token = tokenizer.decode([tokenizer.eos_id])

    def load(path: Path) -> Llama4ForCausalLM:
        model = Llama4ForCausalLM.from_pretrained(path, dtype=torch.float32)
        model.base_model_prefix = "model"  # see test_sft.py: TRL reaches the backbone through `base_model`
        return model

    args = DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, beta=0.5, report_to=[],
                     use_cpu=True, bf16=False, max_length=None, router_aux_loss_coef=0.0)
    # DPOTrainer re-tokenizes any dataset it is given; the pairs' own tokens go straight to its collator instead.
    placeholder = Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}])
    trainer = DPOTrainer(model=load(policy), ref_model=load(other), args=args, train_dataset=placeholder,
                         processing_class=hf_tokenizer)
    batch = trainer._prepare_inputs(trainer.data_collator(rows))
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(trainer.model, batch))
    assert herd_loss == pytest.approx(trl_loss, rel=1e-4, abs=1e-4)
