"""Pretraining: schedules, config files, the loss golden, exact resume after SIGKILL, router-bias
balancing, activation checkpointing, the exported model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import debug_config, losses, prepared_data, run_cli, run_in_process

import herd
from herd.config import ConfigError
from herd.data.shards import TokenShards
from herd.train import TrainConfig, read_log
from herd.train.batches import Batches
from herd.train.schedule import lr_multiplier

GOLDEN = Path(__file__).parent / "goldens" / "debug_losses.json"


SMALL_VOCAB = 320


@pytest.fixture(scope="module")
def llama4_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepared_data(tmp_path_factory.mktemp("llama4"))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tokenized with a compact tokenizer, so that the debug model trains in milliseconds a step."""
    return prepared_data(tmp_path_factory.mktemp("compact"), SMALL_VOCAB)


def config(data: Path, out: Path, **changes: object) -> TrainConfig:
    return debug_config(data, out, vocab_size=SMALL_VOCAB, **changes)


def test_cosine_schedule() -> None:
    c = TrainConfig(steps=110, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_multiplier(0, c) == pytest.approx(0.1)
    assert lr_multiplier(9, c) == pytest.approx(1.0)
    assert lr_multiplier(10, c) == pytest.approx(1.0)
    assert lr_multiplier(109, c) == pytest.approx(0.1)
    mid = lr_multiplier(10 + 99 // 2, c)
    assert 0.5 < mid < 0.6
    assert all(lr_multiplier(s, c) >= lr_multiplier(s + 1, c) for s in range(10, 109))


def test_wsd_schedule() -> None:
    c = TrainConfig(steps=100, warmup_steps=10, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.0)
    assert lr_multiplier(50, c) == 1.0 and lr_multiplier(79, c) == 1.0
    assert lr_multiplier(80, c) == pytest.approx(1 - 1 / 20)
    assert lr_multiplier(99, c) == pytest.approx(0.0)


def test_config_file_is_strict(tmp_path: Path) -> None:
    (tmp_path / "ok.json").write_text(json.dumps({"steps": 5, "lr": 1, "compile": False}))
    c = TrainConfig.from_file(tmp_path / "ok.json")
    assert c.steps == 5 and c.lr == 1.0 and isinstance(c.lr, float)
    (tmp_path / "bad.json").write_text(json.dumps({"stepz": 5}))
    with pytest.raises(ConfigError, match="stepz"):
        TrainConfig.from_file(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="schedule"):
        TrainConfig(schedule="linear")


@pytest.mark.slow  # a whole training run (~11 s)
def test_loss_golden(llama4_data: Path, tmp_path: Path) -> None:
    """A fixed seed on the debug preset (with Llama 4's vocabulary) reproduces the recorded loss curve."""
    summary = run_in_process(debug_config(llama4_data, tmp_path))
    got = losses(tmp_path)
    if not GOLDEN.exists():  # first run on a new curve: record it (commit the file)
        GOLDEN.write_text(json.dumps({"config": "tests/train_helpers.py debug_config", "losses": got}, indent=1))
    want = json.loads(GOLDEN.read_text())["losses"]
    assert got == pytest.approx(want, rel=2e-4, abs=2e-4)
    assert got[-1] < got[0] - 0.5  # it learns
    assert summary["val_loss"] is not None and math.isfinite(summary["val_loss"])


def test_exported_model_matches_training(data: Path, tmp_path: Path) -> None:
    run_in_process(config(data, tmp_path, steps=3))
    model = herd.load(tmp_path / "model")
    assert model.config.router_bias and (tmp_path / "model" / "tokenizer.json").exists()
    biases = [layer.feed_forward.router_bias for layer in model.layers]
    assert any(bool(b.abs().sum()) for b in biases)  # the learned selection bias travels with the weights
    state = json.loads((tmp_path / "checkpoints" / "step-00000003" / "state.json").read_text())
    assert state["step"] == 3
    from safetensors.torch import load_file

    trained = load_file(tmp_path / "checkpoints" / "step-00000003" / "model.safetensors")
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, trained[name], rtol=0, atol=0)


def test_activation_checkpointing_matches(data: Path, tmp_path: Path) -> None:
    run_in_process(config(data, tmp_path / "plain", steps=4))
    run_in_process(config(data, tmp_path / "ac", steps=4, activation_checkpointing=True))
    assert losses(tmp_path / "ac") == pytest.approx(losses(tmp_path / "plain"), rel=1e-5)


@pytest.mark.slow
def test_compiled_blocks_match(data: Path, tmp_path: Path) -> None:
    """--compile compiles each block around the (eager) sparse MoE dispatch: same losses, no recompile storm."""
    run_in_process(config(data, tmp_path / "eager", steps=4))
    run_in_process(config(data, tmp_path / "compiled", steps=4, compile=True))
    assert losses(tmp_path / "compiled") == pytest.approx(losses(tmp_path / "eager"), rel=1e-4)


def test_gradient_accumulation_matches(data: Path, tmp_path: Path) -> None:
    run_in_process(config(data, tmp_path / "one", steps=4))
    run_in_process(config(data, tmp_path / "acc", steps=4, micro_batch_size=1))
    assert losses(tmp_path / "acc") == pytest.approx(losses(tmp_path / "one"), rel=1e-4)


@pytest.mark.slow
def test_router_bias_evens_expert_load(data: Path, tmp_path: Path) -> None:
    """Aux-loss-free balancing lowers the max/mean expert load against no balancing."""
    common = dict(steps=60, lr=1e-2, eval_every=100, ckpt_every=100)  # at this LR the router collapses unaided
    run_in_process(config(data, tmp_path / "none", router_bias_rate=0.0, **common))
    run_in_process(config(data, tmp_path / "bias", router_bias_rate=0.1, **common))

    def late_imbalance(out: Path) -> float:
        records = read_log(out / "log.jsonl")[-20:]
        return sum(r["load_max_mean"] for r in records) / len(records)

    none, bias = late_imbalance(tmp_path / "none"), late_imbalance(tmp_path / "bias")
    assert bias < none - 0.5, (bias, none)  # measured: 1.45 with the bias, 2.8 without (4 experts: 1 is even)


def test_aux_loss_reaches_the_router(data: Path, tmp_path: Path) -> None:
    base = run_in_process(config(data, tmp_path / "a", steps=2, router_bias_rate=0.0))
    aux = run_in_process(config(data, tmp_path / "b", steps=2, router_bias_rate=0.0, aux_loss_coef=0.1))
    assert base["loss"] != aux["loss"]


def test_bfloat16_autocast_trains(data: Path, tmp_path: Path) -> None:
    run_in_process(config(data, tmp_path, steps=4, precision="bfloat16"))
    got = losses(tmp_path)
    assert all(math.isfinite(x) for x in got) and got[-1] < got[0]


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["step:7", "save:6"])
def test_resume_after_sigkill_is_exact(data: Path, tmp_path: Path, fault: str) -> None:
    """Killed mid-step (after the backward) or mid-save, then resumed: the same losses, bit for bit."""
    whole = config(data, tmp_path / "whole", ckpt_every=2)
    assert run_cli(whole).returncode == 0
    killed = whole.replace(out=str(tmp_path / "killed"))
    first = run_cli(killed, fault=fault)
    assert first.returncode == -9, first.stderr[-2000:]
    resumed = run_cli(killed, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr
    assert losses(tmp_path / "killed") == losses(tmp_path / "whole")
    left = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir())
    assert left == ["step-00000008", "step-00000010"]  # keep_checkpoints=2, no temporary directory


@pytest.mark.slow
def test_resume_refuses_other_hyperparameters(data: Path, tmp_path: Path) -> None:
    first = config(data, tmp_path, steps=2, ckpt_every=1)
    run_in_process(first)
    done = run_cli(first, "--resume")  # a finished run: nothing to do, and no error
    assert done.returncode == 0 and "already complete" in done.stdout, done.stderr[-2000:]
    proc = run_cli(first.replace(lr=1e-4, steps=4), "--resume")
    assert proc.returncode == 2 and "lr" in proc.stderr


@pytest.mark.slow
def test_two_processes_match_one(data: Path, tmp_path: Path) -> None:
    """torchrun with 2 processes (gloo, FSDP2) gives the losses of 1 process on the same global batch,
    and its checkpoint, written by 2 processes, resumes in 1."""
    one = config(data, tmp_path / "one", steps=6, ckpt_every=3)
    two = one.replace(out=str(tmp_path / "two"))
    assert run_cli(one).returncode == 0
    proc = run_cli(two, fault="step:5", nproc=2)
    assert proc.returncode != 0
    assert losses(tmp_path / "two")[:3] == pytest.approx(losses(tmp_path / "one")[:3], rel=1e-4, abs=1e-4)
    resumed = run_cli(two, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "written by 2 process(es)" in resumed.stderr
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-4, abs=1e-4)


def test_validation_windows_spread_over_the_split() -> None:
    """The trainer's validation sample covers the whole held-out split, not only its first documents."""
    class Stream:  # tokens 0, 1, 2, ...: a window's first token tells where it starts
        def __len__(self) -> int:
            return 1001

        def read(self, start: int, n: int) -> np.ndarray:
            return np.arange(start, start + n, dtype=np.int64)

    batches = Batches(Stream(), seq_len=10, seed=0)  # 100 windows
    starts = batches.validation(4)[:, 0].tolist()
    assert starts == [0, 250, 500, 750]
    every_NS = batches.validation(None)
    assert every_NS.shape == (100, 11) and every_NS[:, 0].tolist() == list(range(0, 1000, 10))
    assert batches.validation(10**9).shape == (100, 11)


def test_init_from_continues_a_model_with_document_masking(data: Path, tmp_path: Path) -> None:
    run_in_process(config(data, tmp_path / "first", steps=3))
    start = tmp_path / "first" / "model"
    run_in_process(config(data, tmp_path / "next", steps=2, seq_len=1024, batch_size=2, model="nonexistent",
                          init_from=str(start), document_masking=True))
    # the first step's loss is the starting model's on that batch, each packed document attending to itself
    model = herd.load(start)
    shards = TokenShards(data, "train")
    (batch,) = Batches(shards, 1024, 0).micro_batches(0, 2, 0, 1, 2)
    inputs, targets = batch[:, :-1], batch[:, 1:]
    assert (inputs == model.config.bos_id).any()  # the windows hold document starts
    with torch.no_grad():
        logits = model(inputs, documents_BS=(inputs == model.config.bos_id).cumsum(1))
        unmasked = model(inputs)
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()).item()
    plain = torch.nn.functional.cross_entropy(unmasked.flatten(0, 1), targets.flatten()).item()
    first = losses(tmp_path / "next")[0]
    assert first == pytest.approx(expected, abs=1e-4) and abs(first - plain) > 1e-4
    with pytest.raises(ConfigError, match="vocab_size"):
        run_in_process(debug_config(data, tmp_path / "bad", init_from=str(start), vocab_size=999))
