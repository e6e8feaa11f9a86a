"""The training commands end to end, as a user chains them: tokenizer train -> data prepare -> train ->
generate; transformers loading the result; and `herd demo` on a few steps with its cache reused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_helpers import synthetic_corpus
from transformers import Llama4ForCausalLM

import herd
from herd.cli.main import main


@pytest.mark.slow
def test_tokenizer_data_train_generate(tmp_path: Path, capsys) -> None:
    corpus = synthetic_corpus(tmp_path / "corpus")
    assert main(["tokenizer", "train", str(corpus), "--out", str(tmp_path / "tok"), "--vocab-size", "320"]) == 0
    assert main(["data", "prepare", str(corpus / "*.py"), "--out", str(tmp_path / "data"), "--tokenizer",
                 str(tmp_path / "tok"), "--val-fraction", "0.2", "--workers", "1", "--no-progress"]) == 0
    out = tmp_path / "run"
    assert main(["train", "--model", "debug", "--vocab-size", "320", "--data", str(tmp_path / "data"),
                 "--out", str(out), "--seq-len", "32", "--batch-size", "4", "--steps", "3", "--router-bias-rate", "0",
                 "--no-progress"]) == 0
    assert "validation loss" in capsys.readouterr().out
    assert main(["generate", "--model", str(out / "model"), "--prompt", "def", "--max-new-tokens", "5",
                 "--seed", "0", "--no-fast"]) == 0
    assert "5 new tokens" in capsys.readouterr().err

    # transformers loads the exported model and computes the same logits (no selection bias here).
    ours = herd.load(out / "model")
    theirs = Llama4ForCausalLM.from_pretrained(out / "model", dtype=torch.float32).eval()
    tokens_BS = torch.randint(0, 320, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens_BS), theirs(tokens_BS).logits, rtol=0, atol=1e-4)


def test_train_reports_bad_input(tmp_path: Path, capsys) -> None:
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "herd train: error:" in capsys.readouterr().err
    (tmp_path / "c.json").write_text('{"lr": 1e-3, "warmup": 5}')
    assert main(["train", "--config", str(tmp_path / "c.json")]) == 2
    assert "warmup" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_trains_then_reuses_its_cache(tmp_path: Path) -> None:
    env = os.environ | {"HERD_CACHE": str(tmp_path)}
    cmd = [sys.executable, "-m", "herd", "demo", "--steps", "3", "--samples", "1"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "unigram baseline" in first.stdout and "herd generate --model" in first.stdout
    assert "[3/3] training herd-10m" in first.stderr
    assert (tmp_path / "demo" / "run" / "model" / "tokenizer.json").exists()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "training herd-10m" not in again.stderr


def test_a_demo_run_written_before_a_new_config_field_is_still_reused(tmp_path: Path) -> None:
    """herd demo's cache check counts fields the saved config lacks at their defaults (no retraining when
    TrainConfig grows)."""
    import json

    from herd.demo import DEMO_CONFIG, _same_run

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "training.json").write_text("{}")
    saved = DEMO_CONFIG.to_dict()
    del saved["teacher_topk"]
    (tmp_path / "config.json").write_text(json.dumps({"train": saved}))
    assert _same_run(tmp_path, DEMO_CONFIG, finished=True)
    assert not _same_run(tmp_path, DEMO_CONFIG.replace(steps=5), finished=True)
