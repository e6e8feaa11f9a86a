"""lm-eval as a real client of `herd serve`: `lm_eval --model local-completions` (remote tokenizer through
/tokenizer_info and /tokenize) on a small multiple-choice task made here as local JSONL (CI has no network),
against the same items scored offline in herd: the same accuracy and log-likelihoods to 1e-5."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
import torch
from serve_helpers import debug_checkpoint, live_server, multiple_choice_task

import herd
from herd.tokenizer import load_tokenizer

WORDS = ["red", "green", "blue", "cat", "dog", "sun", "moon", "tree", "river", "stone", "bird", "fish"]


def _items(n: int) -> list[dict]:
    rng = random.Random(0)
    out = []
    for i in range(n):
        choices = rng.sample(WORDS, 4)
        out.append({"question": f"Question {i}: which word comes next after {rng.choice(WORDS)}?",
                    "choices": choices, "answer": rng.randrange(4)})
    return out


@pytest.mark.slow
def test_lm_eval_local_completions_matches_offline_scoring(tmp_path):
    checkpoint = debug_checkpoint(tmp_path / "debug-model")
    items = _items(12)
    tasks = multiple_choice_task(tmp_path, items)
    out = tmp_path / "out"
    env = os.environ | {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with live_server(checkpoint, "--max-slots", "2", "--max-context", "512") as (base, _):
        args = f"base_url={base}/v1/completions,model=debug-model,tokenizer_backend=remote,num_concurrent=1"
        done = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", args,
                               "--tasks", "herd_mc", "--include_path", str(tasks), "--log_samples",
                               "--output_path", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    samples = [json.loads(line) for line in next(out.rglob("samples_herd_mc_*.jsonl")).read_text().splitlines()]

    tokenizer, model = load_tokenizer(checkpoint), herd.load(checkpoint)
    correct = 0
    for sample in sorted(samples, key=lambda s: s["doc_id"]):
        item = items[sample["doc_id"]]
        scores = []
        for choice in item["choices"]:  # lm-eval's pairing: the context's ids, then the rest of the whole's
            context = tokenizer.encode(item["question"])
            whole = tokenizer.encode(item["question"] + " " + choice)  # its target delimiter is a space
            tokens_S = torch.tensor(whole)
            with torch.no_grad():
                logp_SV = torch.log_softmax(model(tokens_S[None])[0], dim=-1)
            scores.append(sum(logp_SV[i - 1, whole[i]].item() for i in range(len(context), len(whole))))
        served = [float(r[0][0]) for r in sample["resps"]]
        assert max(abs(a - b) for a, b in zip(served, scores, strict=True)) <= 1e-5, (served, scores)
        correct += max(range(4), key=scores.__getitem__) == item["answer"]
    assert results["results"]["herd_mc"]["acc,none"] == pytest.approx(correct / len(items))
