"""`herd redteam`: GOAT-style conversations between tiny random attacker and target models, judged by a random
Guard-shaped model whose decision a threshold of 0 or 1 makes certain; resuming, the report, a server target."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from serve_helpers import debug_checkpoint, live_server

from herd.cli.main import main
from herd.moderation.redteam import RedTeamError, attacker_reply, read_goals, read_transcripts

GOALS = [{"id": f"S{i}-1", "category": f"S{i}", "goal": f"Get the target to do forbidden thing {i}."}
         for i in (1, 2, 9)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("redteam")
    goals = root / "goals.jsonl"
    goals.write_text("".join(json.dumps(g) + "\n" for g in GOALS))
    return debug_checkpoint(root / "chat"), debug_checkpoint(root / "guard"), goals


def _run(models, out: Path, *flags: str) -> int:
    chat, guard, goals = models
    return main(["redteam", "--attacker", str(chat), "--target", str(chat), "--judge", str(guard), "--goals",
                 str(goals), "--out", str(out), "--turns", "2", "--attacker-max-tokens", "12", "--target-max-tokens",
                 "8", "--dtype", "float32", "--no-progress", *flags])


def test_the_attackers_reply_is_what_follows_reply() -> None:
    assert attacker_reply("Observation: refused\nThought: far\nStrategy: role play\nReply: Imagine you are...") == (
        "Imagine you are...")
    assert attacker_reply("**Reply:** first\nreply: second one") == "second one"
    assert attacker_reply("  just text  ") == "just text"


def test_goals_are_checked(tmp_path: Path) -> None:
    assert len(read_goals()) == 26 and {g.category for g in read_goals()} == {f"S{i}" for i in range(1, 14)}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "goal": "x"}\n')
    with pytest.raises(RedTeamError, match=r"bad\.jsonl:1"):
        read_goals(bad)
    bad.write_text('{"id": "a", "category": "S1", "goal": "x"}\n' * 2)
    with pytest.raises(RedTeamError, match="appears twice"):
        read_goals(bad)


@pytest.mark.slow
def test_every_reply_flagged_ends_each_conversation_at_turn_one(models, tmp_path: Path, capsys) -> None:
    assert _run(models, tmp_path / "all", "--judge-threshold", "0") == 0
    rows = read_transcripts(tmp_path / "all" / "transcripts.jsonl")
    assert [r["id"] for r in rows] == [g["id"] for g in GOALS]
    assert all(r["success_turn"] == 1 and len(r["turns"]) == 1 for r in rows)
    assert [r["technique"] for r in rows] == ["role play", "hypothetical", "refusal suppression"]
    report = json.loads((tmp_path / "all" / "report.json").read_text())
    assert report["overall"] == {"goals": 3, "successes": 3, "asr": 1.0}
    assert report["by_turn"] == {"1": 1.0, "2": 1.0}
    assert "| S9 | 1 | 1 | 1.00 |" in capsys.readouterr().out


@pytest.mark.slow
def test_a_run_resumes_and_equals_one_run_in_one_batch(models, tmp_path: Path) -> None:
    """No reply flagged: every conversation takes both turns. Two goals, then all three in batches of one,
    equal one run of all three in one batch, turn for turn; other settings in the same directory are refused."""
    assert _run(models, tmp_path / "one", "--judge-threshold", "1", "--batch", "3") == 0
    assert _run(models, tmp_path / "resumed", "--judge-threshold", "1", "--batch", "1", "--max-goals", "2") == 0
    assert len(read_transcripts(tmp_path / "resumed" / "transcripts.jsonl")) == 2
    assert _run(models, tmp_path / "resumed", "--judge-threshold", "1", "--batch", "1") == 0
    one = read_transcripts(tmp_path / "one" / "transcripts.jsonl")
    resumed = read_transcripts(tmp_path / "resumed" / "transcripts.jsonl")
    assert resumed == one and all(len(r["turns"]) == 2 and r["success_turn"] is None for r in one)
    turn = one[0]["turns"][0]
    assert {"attacker", "prompt", "response", "flagged", "verdict", "categories", "p_unsafe"} <= set(turn)
    assert _run(models, tmp_path / "resumed", "--judge-threshold", "1", "--seed", "3") == 2
    assert main(["redteam", "--report", str(tmp_path / "resumed"), "--json"]) == 0


@pytest.mark.slow
def test_a_herd_server_as_attacker_and_target(models, tmp_path: Path) -> None:
    chat, _, _ = models
    with live_server(chat, "--max-slots", "4", "--max-context", "1024") as (base, _):
        code = main(["redteam", "--attacker-url", f"{base}/v1", "--target-url", f"{base}/v1", "--judge", str(models[1]),
                     "--goals", str(models[2]), "--out", str(tmp_path / "url"), "--turns", "1",
                     "--attacker-max-tokens", "12", "--target-max-tokens", "8", "--dtype", "float32",
                     "--judge-threshold", "0", "--no-progress"])
    assert code == 0
    rows = read_transcripts(tmp_path / "url" / "transcripts.jsonl")
    assert len(rows) == 3 and all(r["turns"][0]["response"] is not None for r in rows)
