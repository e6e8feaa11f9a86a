"""`herd eval`: the shared scorer against one forward per request, both perplexity protocols against
brute-force references, multiple choice, deterministic retrieval grids, the lm-eval adapter = `herd eval
choice`, and the command's table and JSON."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
import torch.nn.functional as F
from serve_helpers import TOKENIZER, debug_checkpoint, multiple_choice_task

import herd
from herd.cli.main import main
from herd.config import preset
from herd.data.sources import DataError
from herd.eval import choice, needle, perplexity
from herd.eval.scoring import Scorer, encode_pair
from herd.fast import optimize
from herd.tokenizer import load_tokenizer

TEXT = ("The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. "
        "How vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow. ") * 3


@pytest.fixture(scope="module")
def model():
    return herd.build(preset("debug").text, seed=0)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TOKENIZER)


@torch.no_grad()
def _logprob(model, context: list[int], target: int) -> float:
    """One forward over the context alone: log p(target | context)."""
    return F.log_softmax(model(torch.tensor([context]))[0, -1].double(), dim=-1)[target].item()


def test_a_batch_of_ragged_requests_scores_as_each_alone(model):
    rng = random.Random(0)
    requests = [([rng.randrange(1000) for _ in range(n)], first) for n, first in ((5, 1), (40, 30), (17, 3), (2, 2))]
    batched = Scorer(model, batch_tokens=200, head_rows=7).score(requests)
    for (tokens, first), scored in zip(requests, batched, strict=True):
        alone = [_logprob(model, tokens[:i], tokens[i]) for i in range(first, len(tokens))]
        assert scored.logprobs == pytest.approx(alone, abs=1e-5)
        with torch.no_grad():
            logits = model(torch.tensor([tokens]))[0]
        assert scored.greedy == [int(logits[i - 1].argmax()) == tokens[i] for i in range(first, len(tokens))]


def test_the_fast_path_scores_as_the_plain_model():
    plain, fast = (herd.build(preset("debug").text, seed=0) for _ in range(2))
    optimize(fast)
    requests = [(list(range(3, 70)), 1), (list(range(100, 130)), 10)]
    for a, b in zip(Scorer(plain).score(requests), Scorer(fast).score(requests), strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_strided_perplexity_with_stride_one_is_the_brute_force_reference(model, tokenizer):
    ids = tokenizer.encode(TEXT, bos=True)[:60]
    window = 16
    nll = -sum(_logprob(model, ids[max(0, t - window + 1) : t], ids[t]) for t in range(1, len(ids)))
    result = perplexity.strided(Scorer(model, batch_tokens=64), [ids], window=window, stride=1)
    assert result.tokens == len(ids) - 1
    assert result.nll == pytest.approx(nll, abs=1e-4)
    assert result.ppl == pytest.approx(math.exp(nll / (len(ids) - 1)), rel=1e-6)


def test_strided_windows_score_each_token_once_with_the_overlap_as_context(model, tokenizer):
    ids = tokenizer.encode(TEXT, bos=True)[:50]
    result = perplexity.strided(Scorer(model), [ids], window=20, stride=8, bins=4)
    # windows start at 0, 8, 16, 24, 32; each scores what the one before did not reach
    expected = 0.0
    done = 1
    for begin in (0, 8, 16, 24, 32):
        end = min(begin + 20, 50)
        expected -= sum(_logprob(model, ids[begin:t], ids[t]) for t in range(done, end))
        done = end
    assert result.tokens == 49 and result.windows == 5
    assert result.nll == pytest.approx(expected, abs=1e-4)
    assert sum(b["tokens"] for b in result.position_bins) == 49
    assert [b["from"] for b in result.position_bins] == [0, 5, 10, 15]
    assert sum(b["mean_nll"] * b["tokens"] for b in result.position_bins) == pytest.approx(expected, abs=1e-4)
    with pytest.raises(ValueError, match="stride"):
        perplexity.strided(Scorer(model), [ids], window=8, stride=9)


def test_strided_windows_without_overlap_leave_each_window_start_unscored(model, tokenizer):
    ids = tokenizer.encode(TEXT, bos=True)[:40]
    result = perplexity.strided(Scorer(model), [ids], window=16, stride=16)
    expected = -sum(_logprob(model, ids[begin:t], ids[t])
                    for begin in (0, 16, 32) for t in range(begin + 1, min(begin + 16, 40)))
    assert result.windows == 3 and result.tokens == 39 - 2
    assert result.nll == pytest.approx(expected, abs=1e-4)


def test_llama_cpp_perplexity_scores_second_halves_after_bos(model, tokenizer):
    stream = tokenizer.encode(TEXT, bos=True)
    context = 16
    n = len(stream) // context
    nll, count = 0.0, 0
    for w in range(n):
        window = [tokenizer.bos_id, *stream[w * context + 1 : (w + 1) * context]]
        with torch.no_grad():
            logp = F.log_softmax(model(torch.tensor([window]))[0].double(), dim=-1)
        for i in range(context // 2, context - 1):
            nll -= logp[i, window[i + 1]].item()
            count += 1
    result = perplexity.llama_cpp(Scorer(model), [stream], tokenizer.bos_id, context)
    assert (result.tokens, result.windows) == (count, n)
    assert result.nll == pytest.approx(nll, abs=1e-4)


def test_encode_pair_splits_like_lm_eval(tokenizer):
    context, continuation = encode_pair(tokenizer, "Question: what? ", "Answer")
    assert context == tokenizer.encode("Question: what?", bos=True)
    assert context + continuation == tokenizer.encode("Question: what? Answer", bos=True)
    assert encode_pair(tokenizer, "", "alone") == ([tokenizer.bos_id], tokenizer.encode("alone"))


def _items(n: int) -> list[dict]:
    rng = random.Random(0)
    words = ["red", "green", "blue", "cat", "dog", "sun", "moon", "tree"]
    return [{"question": f"Item {i}: after {rng.choice(words)} comes", "choices": rng.sample(words, 3),
             "answer": rng.randrange(3)} for i in range(n)]


def test_multiple_choice_picks_the_likeliest_continuation(model, tokenizer):
    items = _items(6)
    items[0]["choices"][1] = " leading space"  # scored as is, without another space
    result = choice.evaluate(Scorer(model), tokenizer, items)
    for item, scored in zip(items, result.items, strict=True):
        lls = []
        for c in item["choices"]:
            context = tokenizer.encode(item["question"], bos=True)
            whole = tokenizer.encode(item["question"] + (c if c.startswith(" ") else " " + c), bos=True)
            lls.append(sum(_logprob(model, whole[:i], whole[i]) for i in range(len(context), len(whole))))
        assert scored["loglikelihoods"] == pytest.approx(lls, abs=1e-4)
        assert scored["pred"] == max(range(3), key=lls.__getitem__)
        per_char = [ll / len(c) for ll, c in zip(lls, item["choices"], strict=True)]
        assert scored["pred_norm"] == max(range(3), key=per_char.__getitem__)
    assert result.acc == sum(i["pred"] == i["answer"] for i in result.items) / 6


@pytest.mark.parametrize("line, message", [
    ("not json", "not JSON"), ('{"question": 1, "choices": ["a", "b"], "answer": 0}', "question"),
    ('{"question": "q", "choices": ["a"], "answer": 0}', "at least two"),
    ('{"question": "q", "choices": ["a", "b"], "answer": 2}', "index"),
    ('{"question": "q", "choices": ["a", "b"], "answer": true}', "index"),
])
def test_bad_choice_items_name_their_line(tmp_path, line, message):
    path = tmp_path / "items.jsonl"
    path.write_text('{"question": "q", "choices": ["a", "b"], "answer": 1}\n' + line + "\n")
    with pytest.raises(DataError, match=rf"items.jsonl:2: .*{message}"):
        choice.read_items(path)


def test_passkey_prompts_have_the_asked_length_and_the_key_at_its_depth(tokenizer):
    hay = tokenizer.encode(needle.PASSKEY.haystack)
    for depth in (0.0, 0.5, 1.0):
        prompt, answer = needle.build(tokenizer, needle.PASSKEY, hay, 300, depth, "71432", random.Random(0))
        assert len(prompt) == 300 and prompt[0] == tokenizer.bos_id
        text = tokenizer.decode(prompt)
        at = text.index("The pass key is 71432")
        assert abs(at / len(text) - depth) < 0.15
        assert text.endswith("What is the pass key? The pass key is")
        assert tokenizer.decode(answer) == " 71432"
    with pytest.raises(ValueError, match="too short"):
        needle.build(tokenizer, needle.PASSKEY, hay, 20, 0.5, "71432", random.Random(0))


def test_retrieval_grids_are_the_same_for_a_seed(model, tokenizer):
    task = needle.niah_task(needle.held_out_text(max_chars=200_000))
    runs = [needle.run(Scorer(model), tokenizer, task, [128, 192], [0.0, 1.0], trials=2, seed=s) for s in (3, 3, 4)]
    assert runs[0].to_dict() == runs[1].to_dict()
    assert runs[0].to_dict()["grid"] != runs[2].to_dict()["grid"]  # other keys and offsets
    assert "| 128 |" in runs[0].table()


def test_the_passkey_is_found_when_the_model_copies_it(tokenizer):
    """A model that always predicts the key's tokens scores 1.0: the grid counts greedy exact matches."""

    class Oracle(torch.nn.Module):  # its hidden state at each position is the next token's one-hot
        def __init__(self, n: int) -> None:
            super().__init__()
            self.tok_embeddings = torch.nn.Embedding(1, 1)
            self.n = n
            self.output = torch.nn.Identity()

        def hidden(self, tokens_BS):
            nxt = torch.roll(tokens_BS, -1, dims=1)
            return F.one_hot(nxt, self.n).float() * 40

    grid = needle.run(Scorer(Oracle(tokenizer.n_words)), tokenizer, needle.PASSKEY, [100], [0.5], trials=3)
    assert grid.overall == 1.0 and grid.logprob[100, 0.5] > -1e-6


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return debug_checkpoint(tmp_path_factory.mktemp("eval") / "debug-model")


@pytest.mark.slow
def test_herd_eval_perplexity_prints_a_table_and_json(checkpoint, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    assert main(["eval", "perplexity", "--model", str(checkpoint), "--data", str(text), "--window", "32",
                 "--bins", "2"]) == 0
    out = capsys.readouterr().out
    assert "| strided (window 32, stride 16) |" in out and "| 0–16 |" in out
    assert main(["eval", "perplexity", "--model", str(checkpoint), "--data", str(text), "--protocol", "llama.cpp",
                 "--context", "32", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["protocol"] == "llama.cpp" and record["scored_tokens"] > 0 and record["ppl"] > 1
    assert record["command"].startswith("herd eval perplexity") and len(record["checkpoint_fingerprint"]) == 16


@pytest.mark.slow
def test_herd_eval_choice_and_passkey_from_the_command(checkpoint, tmp_path, capsys):
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(i) + "\n" for i in _items(4)))
    assert main(["eval", "choice", "--model", str(checkpoint), "--data", str(items), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["items"] == 4 and len(record["per_item"][0]["loglikelihoods"]) == 3
    plot = tmp_path / "grid.png"
    assert main(["eval", "passkey", "--model", str(checkpoint), "--lengths", "96", "128", "--depths", "0", "1",
                 "--trials", "1", "--plot", str(plot)]) == 0
    assert "| 96 |" in capsys.readouterr().out and plot.read_bytes()[:4] == b"\x89PNG"
    items.write_text("{}\n")
    assert main(["eval", "choice", "--model", str(checkpoint), "--data", str(items)]) == 2
    assert "items.jsonl:1" in capsys.readouterr().err


@pytest.mark.slow
def test_the_lm_eval_adapter_gives_the_numbers_of_herd_eval_choice(model, tokenizer, tmp_path):
    from herd.eval.harness import HerdLM, evaluate

    items = _items(8)
    tasks = multiple_choice_task(tmp_path, items, ("acc", "acc_norm"))
    results = evaluate(HerdLM(model, tokenizer), ["herd_mc"], str(tasks))
    ours = choice.evaluate(Scorer(model), tokenizer, items)
    for sample in results["samples"]["herd_mc"]:
        served = [float(r[0][0]) for r in sample["resps"]]
        assert served == pytest.approx(ours.items[sample["doc_id"]]["loglikelihoods"], abs=1e-5)
    assert results["results"]["herd_mc"]["acc,none"] == pytest.approx(ours.acc)
    assert results["results"]["herd_mc"]["acc_norm,none"] == pytest.approx(ours.acc_norm)
