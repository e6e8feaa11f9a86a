"""`herd data filter`: pass@k, percentiles, verifiers, the keep rules, and byte-identical outputs from a real judge."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from train_helpers import chat_model, write_jsonl

from herd.cli.main import main
from herd.data.filter import exact, filter_file, number, pass_at_k, percentiles
from herd.data.sources import DataError

VOCAB = 320


def test_pass_at_k_is_the_chance_that_k_of_the_samples_include_a_pass() -> None:
    for n, c, k in [(5, 2, 1), (5, 2, 2), (6, 0, 3), (4, 4, 2), (7, 3, 5)]:
        draws = list(itertools.combinations([1] * c + [0] * (n - c), k))
        assert pass_at_k(n, c, k) == pytest.approx(sum(any(d) for d in draws) / len(draws))


def test_percentiles_share_ties_and_put_missing_values_in_the_middle() -> None:
    assert percentiles([3.0, 1.0, 2.0]) == [1.0, 0.0, 0.5]
    assert percentiles([1.0, 1.0, 5.0, None]) == [0.25, 0.25, 1.0, 0.5]
    assert percentiles([None, 2.0]) == [0.5, 0.5]


def test_verifiers() -> None:
    assert exact(" 936. ", "936") and exact("Paris", "paris") and not exact("936 apples", "936")
    assert number("The answer is 1,036.", "1036") and not number("no idea", "12") and not number("13", "12")


class StubJudge:
    """Answers NLL = the item's index; sampled answers right for even items only."""

    def answer_nll(self, items, with_question: bool) -> list[float]:
        return [float(i + 1) if with_question else 2.0 * (i + 1) for i in range(len(items))]

    def samples(self, questions, n, temperature, seed, max_new_tokens) -> list[list[str]]:
        return [[str(i) if i % 2 == 0 else "wrong"] * n for i in range(len(questions))]

    def rubric(self, questions) -> list[float | None]:
        return [None] * len(questions)


def items(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": str(i)}]}
            for i in range(n)]


def test_keep_rules_and_outputs(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "chat.jsonl", items(10))
    counts = filter_file(data, StubJudge(), tmp_path / "nll", signals=["nll"], drop_easy_fraction=0.6)
    assert counts == {"items": 10, "kept": 4, "signals": ["nll"]}
    kept = (tmp_path / "nll" / "train.jsonl").read_text().splitlines(keepends=True)
    assert kept == data.read_text().splitlines(keepends=True)[6:]  # the highest NLLs, lines as read
    scores = [json.loads(line) for line in (tmp_path / "nll" / "scores.jsonl").read_text().splitlines()]
    assert [s["kept"] for s in scores] == [False] * 6 + [True] * 4 and scores[9]["percentile"] == 1.0

    filter_file(data, StubJudge(), tmp_path / "pass", signals=["pass_rate"], drop_easy_fraction=0.5, samples=3)
    scores = [json.loads(line) for line in (tmp_path / "pass" / "scores.jsonl").read_text().splitlines()]
    assert [s["kept"] for s in scores] == [i % 2 == 1 for i in range(10)]  # the ones the judge gets wrong
    assert scores[0]["pass@3"] == 1.0 and scores[1]["pass@3"] == 0.0 and scores[0]["passed"] == 3

    filter_file(data, StubJudge(), tmp_path / "band", signals=["ifd", "rubric"], keep_band=(0.0, 1.0))
    scores = [json.loads(line) for line in (tmp_path / "band" / "scores.jsonl").read_text().splitlines()]
    assert all(s["ifd"] == 0.5 and s["rubric"] is None and s["kept"] for s in scores)

    with pytest.raises(DataError, match="exactly one"):
        filter_file(data, StubJudge(), tmp_path / "x", drop_easy_fraction=0.5, keep_band=(0.0, 1.0))
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "no answer"}]}])
    with pytest.raises(DataError, match=r"bad\.jsonl:1: a conversation to score ends with the assistant"):
        filter_file(bad, StubJudge(), tmp_path / "x", drop_easy_fraction=0.5)


def test_a_real_judge_gives_byte_identical_outputs_for_a_seed(tmp_path: Path) -> None:
    """Every signal through `herd data filter` with a random debug judge, twice: the same bytes."""
    judge = chat_model(tmp_path, seed=1, vocab_size=VOCAB)
    data = write_jsonl(tmp_path / "chat.jsonl", items(6))
    outputs = []
    for run in ("a", "b"):
        args = ["data", "filter", str(data), "--judge", str(judge), "--out", str(tmp_path / run), "--signals", "nll",
                "ifd", "pass_rate", "rubric", "--drop-easy-fraction", "0.5", "--samples", "2", "--max-new-tokens", "4",
                "--seed", "3", "--no-progress"]
        assert main(args) == 0
        outputs.append([(tmp_path / run / name).read_bytes() for name in ("train.jsonl", "scores.jsonl")])
    assert outputs[0] == outputs[1]
    scores = [json.loads(line) for line in outputs[0][1].decode().splitlines()]
    assert len(scores) == 6 and sum(s["kept"] for s in scores) == 3
    assert all(s["nll"] > 0 and s["ifd"] > 0 and 0 <= s["pass_rate"] <= 1 for s in scores)


def test_pairs_are_mined_from_the_models_own_answers(tmp_path: Path) -> None:
    """Stub answers: even questions right, odd wrong. Every question has a failing answer once the reference
    fills in for a missing pass; with every answer right there is no pair."""
    from herd.data.pairs import mine_pairs

    class Mixed(StubJudge):
        def samples(self, questions, n, temperature, seed, max_new_tokens):
            return [["wrong", str(i)] if i % 2 == 0 else ["wrong"] * n for i in range(len(questions))]

    data = write_jsonl(tmp_path / "chat.jsonl", items(4))
    counts = mine_pairs(data, Mixed(), tmp_path / "pairs.jsonl", samples=2)
    assert counts == {"questions": 4, "pairs": 4, "all_passed": 0, "reference_chosen": 2}
    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert [p["chosen"][0]["content"] for p in pairs] == ["0", "1", "2", "3"]  # a pass, or the reference
    assert all(p["rejected"][0]["content"] == "wrong" and p["prompt"][-1]["role"] == "user" for p in pairs)
    counts = mine_pairs(data, StubJudge(), tmp_path / "strict.jsonl", samples=2, reference_fallback=False)
    assert counts == {"questions": 4, "pairs": 0, "all_passed": 2, "reference_chosen": 0}


def test_mined_pairs_are_byte_identical_for_a_seed_and_train_dpo(tmp_path: Path) -> None:
    judge = chat_model(tmp_path, seed=1, vocab_size=VOCAB)
    data = write_jsonl(tmp_path / "chat.jsonl", items(6))
    outputs = []
    for run in ("a", "b"):
        args = ["data", "pairs", str(data), "--model", str(judge), "--out", str(tmp_path / f"{run}.jsonl"),
                "--samples", "2", "--max-new-tokens", "4", "--seed", "5"]
        assert main(args) == 0
        outputs.append((tmp_path / f"{run}.jsonl").read_bytes())
    assert outputs[0] == outputs[1] and outputs[0].count(b"\n") == 6  # a random model gets none right
    assert main(["dpo", "--init-from", str(judge), "--data", str(tmp_path / "a.jsonl"), "--out", str(tmp_path / "dpo"),
                 "--seq-len", "64", "--batch-size", "2", "--steps", "2", "--no-progress"]) == 0


def test_answer_accuracy_greedy_pass_at_k_and_groups(tmp_path: Path) -> None:
    """`herd eval answers`' figures from the stub's answers (even items right), per group and overall."""
    from herd.eval.answers import evaluate

    records = [{**r, "tier": 1 + i // 3} for i, r in enumerate(items(6))]  # tiers 1 (0, 1, 2) and 2 (3, 4, 5)
    result = evaluate(StubJudge(), write_jsonl(tmp_path / "q.jsonl", records), samples=4, ks=(1, 4),
                      group_by="tier")
    assert result.overall.items == 6 and result.overall.greedy == pytest.approx(0.5)
    assert result.overall.pass_at == {"pass@1": pytest.approx(0.5), "pass@4": pytest.approx(0.5)}
    assert result.groups["1"].greedy == pytest.approx(2 / 3) and result.groups["2"].greedy == pytest.approx(1 / 3)
    assert "| all | 6 | 0.500 |" in result.table()
    with pytest.raises(DataError, match="no field 'level'"):
        evaluate(StubJudge(), tmp_path / "q.jsonl", group_by="level")
    with pytest.raises(DataError, match="k <= samples"):
        evaluate(StubJudge(), tmp_path / "q.jsonl", samples=2, ks=(4,))


def test_eval_answers_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = chat_model(tmp_path, seed=0, vocab_size=VOCAB)
    data = write_jsonl(tmp_path / "q.jsonl", [{**r, "tier": i % 2} for i, r in enumerate(items(4))])
    args = ["eval", "answers", "--model", str(model), "--data", str(data), "--samples", "3", "--group-by", "tier",
            "--max-new-tokens", "4", "--verifier", "herd_always_passes:check", "--json"]
    (tmp_path / "herd_always_passes.py").write_text("def check(output, reference):\n    return True\n")
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        assert main(args) == 0
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("herd_always_passes", None)
    record = json.loads(capsys.readouterr().out)
    assert record["overall"]["greedy"] == 1.0 and record["overall"]["pass_at"] == {"pass@1": 1.0, "pass@3": 1.0}
    assert sorted(record["groups"]) == ["0", "1"] and record["samples"] == 3
