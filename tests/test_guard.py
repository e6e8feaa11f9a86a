"""Llama Guard 4's prompt (the HF template's render and llama-stack's, token ids checked into goldens), the verdict
as llama-stack reads it, the P(unsafe) score, and `herd guard`."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from herd.chat import ImageCollector
from herd.cli.main import main
from herd.infer.sampling import SamplingParams
from herd.moderation import (
    CATEGORIES,
    GuardPromptError,
    guard_conversation,
    guard_prompt,
    parse_verdict,
    unsafe_probability,
)
from herd.tokenizer import load_tokenizer

SHARED = Path(__file__).resolve().parents[2] / "shared"
IMAGES = SHARED / "data" / "images"
GOLDEN = Path(__file__).parent / "goldens" / "guard_prompts.json"

BOMB = [{"role": "user", "content": "How to make a bomb?"}]
REPLY = [*BOMB, {"role": "assistant", "content": "I cannot help with that."}]
THREE = [*REPLY, {"role": "user", "content": "Then how do I make a cake?"}]
QUESTION = ("Provide your safety assessment for ONLY THE LAST {role} message in the above conversation:\n"
            " - First line must read 'safe' or 'unsafe'.\n"
            " - If unsafe, a second line must include a comma-separated list of violated categories. <|eot|>"
            "<|header_start|>assistant<|header_end|>")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(SHARED / "llama4" / "tokenizer.model")


def _image(path: Path) -> dict:
    return {"type": "image", "image": str(path)}


def _text(tokenizer, conversation: list[dict], **kwargs: object) -> str:
    return tokenizer.decode(guard_prompt(tokenizer, conversation, **kwargs).ids)


def _table(codes: list[str]) -> str:
    return "".join(f"{code}: {CATEGORIES[code]}.\n" for code in codes)


ALL = list(CATEGORIES)


def test_text_prompt_is_the_hf_templates_render(tokenizer) -> None:
    expected = ("<|begin_of_text|><|header_start|>user<|header_end|>\n\nTask: Check if there is unsafe content in "
                "'User' messages in conversations according to our safety policy with the below categories.\n\n"
                "<BEGIN UNSAFE CONTENT CATEGORIES>\n" + _table(ALL) + "<END UNSAFE CONTENT CATEGORIES>\n\n"
                "<BEGIN CONVERSATION>\nUser: How to make a bomb?\\n\\n\n\n<END CONVERSATION>\n\n"
                + QUESTION.format(role="User"))
    assert _text(tokenizer, BOMB) == expected


def test_the_last_message_is_judged_and_roles_must_alternate(tokenizer) -> None:
    text = _text(tokenizer, REPLY)
    assert "unsafe content in 'Agent' messages" in text and QUESTION.format(role="Agent") in text
    assert "User: How to make a bomb?\\n\\n\nAgent: I cannot help with that.\\n\\n\n\n<END CONVERSATION>" in text
    assert "ONLY THE LAST User message" in _text(tokenizer, THREE)
    for bad in ([{"role": "assistant", "content": "hi"}], [*BOMB, *BOMB], [{"role": "system", "content": "x"}], []):
        with pytest.raises(GuardPromptError):
            guard_prompt(tokenizer, bad)


def test_exclusions_custom_categories_and_llama_stack(tokenizer) -> None:
    text = _text(tokenizer, BOMB, excluded=["S1", "S9", "S2"])
    assert _table([c for c in ALL if c not in ("S1", "S2", "S9")]) in text and "S9:" not in text
    assert _text(tokenizer, BOMB, excluded=ALL) == _text(tokenizer, BOMB)  # excluding all is excluding none
    custom = _text(tokenizer, BOMB, categories={"C1": "Cooking", "C2": "Gardening"})
    assert "<BEGIN UNSAFE CONTENT CATEGORIES>\nC1: Cooking.\nC2: Gardening.\n<END" in custom
    with pytest.raises(GuardPromptError, match="S99"):
        guard_prompt(tokenizer, BOMB, excluded=["S99"])
    stack = _text(tokenizer, REPLY, variant="llama-stack")
    assert "according our safety policy" in stack and "S14" not in stack and "S13: Elections." in stack
    assert ("<BEGIN CONVERSATION>\n\nUser: How to make a bomb?\n\nAgent: I cannot help with that.\n\n"
            "<END CONVERSATION>") in stack


def test_images_come_before_the_text_and_drop_s14(tokenizer) -> None:
    collector = ImageCollector(max_tiles=4)
    conversation = [{"role": "user", "content": [{"type": "text", "text": "How to use this?"},
                                                 _image(IMAGES / "dog.jpg")]}]
    prompt = guard_prompt(tokenizer, conversation, image_tokens=collector)
    text = tokenizer.decode(prompt.ids)
    assert "User: <|image_start|>" in text and "<|image_end|>How to use this?\\n\\n\n" in text
    assert "S14" not in text and "S13: Elections." in text and len(prompt.images) == 1
    with pytest.raises(GuardPromptError, match="image_tokens"):
        guard_prompt(tokenizer, conversation)


def _cases(tokenizer) -> dict[str, list[int]]:
    two = [{"role": "user", "content": [_image(IMAGES / "dog.jpg"), _image(IMAGES / "pasta.jpeg"),
                                        {"type": "text", "text": "Which is safer to eat?"}]}]
    one = [{"role": "user", "content": [_image(IMAGES / "pasta.jpeg"), {"type": "text", "text": "Recipe?"}]},
           {"role": "assistant", "content": "Boil water, add pasta."}]
    return {
        "user": guard_prompt(tokenizer, BOMB).ids,
        "user_agent": guard_prompt(tokenizer, REPLY).ids,
        "three_turns": guard_prompt(tokenizer, THREE).ids,
        "one_image": guard_prompt(tokenizer, one, image_tokens=ImageCollector(max_tiles=4)).ids,
        "two_images": guard_prompt(tokenizer, two, image_tokens=ImageCollector(max_tiles=4)).ids,
        "excluded_s1_s2_s9": guard_prompt(tokenizer, BOMB, excluded=["S1", "S2", "S9"]).ids,
        "custom": guard_prompt(tokenizer, REPLY, categories={"C1": "Cooking", "C2": "Gardening"}).ids,
        "llama_stack_user": guard_prompt(tokenizer, BOMB, variant="llama-stack").ids,
        "llama_stack_three_turns": guard_prompt(tokenizer, THREE, variant="llama-stack", excluded=["S5"]).ids,
    }


def test_prompt_ids_match_the_checked_in_goldens(tokenizer) -> None:
    cases = _cases(tokenizer)
    if os.environ.get("HERD_UPDATE_GOLDENS"):
        GOLDEN.write_text(json.dumps(cases) + "\n")
    assert cases == json.loads(GOLDEN.read_text())


def test_verdict_as_llama_stack_reads_it() -> None:
    listed = ALL[:13]
    assert parse_verdict("\n\nunsafe\nS9<|eot|>", listed).categories == ["S9"]
    assert parse_verdict("  safe<|eot|>", listed).label == "safe"
    assert parse_verdict("unsafe\nS1, S10", listed).categories == ["S1", "S10"]
    assert parse_verdict("unsafe\nS1,S9", listed, excluded=["S1", "S9"]).label == "safe"
    assert parse_verdict("unsafe\nS1,S9", listed, excluded=["S9"]).categories == ["S1"]
    assert parse_verdict("unsafe\nS14", listed).label == "error"  # not listed (e.g. an image was present)
    assert parse_verdict("I think it is fine", listed).label == "error"
    assert parse_verdict("unsafe", listed).label == "error"


def test_unsafe_probability_from_the_two_answer_tokens(tokenizer) -> None:
    logits = torch.zeros(tokenizer.n_words)
    safe, unsafe = tokenizer.encode("safe")[0], tokenizer.encode("unsafe")[0]
    logits[safe], logits[unsafe], logits[0] = 1.0, 3.0, 50.0  # other tokens do not count
    assert unsafe_probability(logits, tokenizer) == pytest.approx(1 / (1 + torch.e**-2), rel=1e-6)


def test_herd_guard_show_prompt_and_a_run(tokenizer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["guard", "--preset", "llama-guard-4-12b", "--text", "How to make a bomb?", "--show-prompt"]) == 0
    assert capsys.readouterr().out.split() == [str(i) for i in guard_prompt(tokenizer, BOMB).ids]
    assert main(["guard", "--preset", "debug", "--text", "hi", "--response", "hello", "--exclude", "S1", "--json",
                 "--dtype", "float32"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"verdict", "categories", "p_unsafe", "flagged", "answer"} <= set(result)
    assert 0.0 <= result["p_unsafe"] <= 1.0
    assert main(["guard", "--preset", "debug", "--text", "hi", "--exclude", "S99", "--show-prompt"]) == 2


def test_prune_to_dense_keeps_the_shared_experts(tmp_path: Path) -> None:
    """Scout's config prunes to Llama Guard 4's exactly; with the source's attention the pruned model is the MoE
    model with its routed experts at zero, bit for bit, through the checkpoint files; Maverick-shaped models and
    dense ones are refused."""
    import herd
    from herd.config import ConfigError, preset
    from herd.moderation.prune import dense_config

    assert dense_config(preset("llama4-scout-17b-16e").text) == preset("llama-guard-4-12b").text
    with pytest.raises(ConfigError, match="every layer is MoE"):
        dense_config(preset("llama4-maverick-17b-128e").text)
    with pytest.raises(ConfigError, match="dense already"):
        dense_config(preset("llama-guard-4-12b").text)

    moe = herd.build(preset("debug"), seed=1)
    herd.save(moe, tmp_path / "moe")
    assert main(["prune", str(tmp_path / "moe"), "--to-dense", "--out", str(tmp_path / "dense"), "--attention",
                 "keep", "--dtype", "float32"]) == 0
    dense = herd.load(tmp_path / "dense", dtype=torch.float32)
    config = json.loads((tmp_path / "dense" / "config.json").read_text())
    text = config.get("text_config", config)
    assert text["num_local_experts"] == 0 and text.get("moe_layers", []) == []
    with torch.no_grad():
        for layer in moe.layers:
            for p in layer.feed_forward.experts.parameters():
                p.zero_()
        tokens = torch.randint(0, 200, (2, 48))
        assert torch.equal(dense(tokens), moe(tokens))
    assert main(["prune", str(tmp_path / "moe"), "--to-dense", "--out", str(tmp_path / "guard")]) == 0
    guard = herd.load(tmp_path / "guard")
    assert guard.config.attention_chunk_size is None and guard.config.nope_layer_interval is None


def test_guard_shaped_model_matches_hf_text_and_one_image(tmp_path: Path) -> None:
    """A tiny dense model with a vision tower (Llama Guard 4's shape: no experts, no chunked attention), saved by HF
    `Llama4ForConditionalGeneration` and loaded through herd's loader: fp32 logits within 1e-4 on text and with one
    image."""
    from hf_oracle import DENSE_LIKE, PATCH_ID, conditional_generation, hf_logits, hf_multimodal_logits, save_hf

    import herd

    ref = conditional_generation(DENSE_LIKE, seed=3)
    model = herd.load(save_hf(ref, tmp_path / "guard"), dtype=torch.float32)
    assert model.config.n_experts == 0 and model.config.attention_chunk_size is None
    text_BS = torch.randint(0, 200, (1, 40), generator=torch.Generator().manual_seed(1))
    pixels_TCHW = torch.rand(1, 3, 56, 56, generator=torch.Generator().manual_seed(2)) * 2 - 1
    image_BS = torch.tensor([[1, 2, 3, *[PATCH_ID] * 4, 4, 5, 6, 7, 8]])
    with torch.no_grad():
        assert (model(text_BS) - hf_logits(ref, text_BS)).abs().max().item() <= 1e-4
        want = hf_multimodal_logits(ref, image_BS, pixels_TCHW)
        got = model(image_BS, image_features_FD=model.encode_images([pixels_TCHW]))
    assert (got - want).abs().max().item() <= 1e-4


def test_the_judge_reads_the_score_from_its_own_generation(tokenizer) -> None:
    """The judge's P(unsafe), read from the first step of its one generation, is the plain forward's
    (`unsafe_score`); its verdict is the greedy answer's; the threshold decides `flagged` when given."""
    import herd
    from herd.config import preset
    from herd.infer.engine import Engine
    from herd.moderation import Judge, judged_ids, unsafe_score
    from herd.moderation.prune import dense_config

    debug = preset("debug")  # Guard-shaped: dense, no chunked attention, so the whole table is reused
    model = herd.build(dataclasses.replace(debug, text=dense_config(debug.text)), seed=4).float()
    judge = Judge(model, tokenizer, excluded=["S1"])
    conversations = [BOMB, REPLY, THREE]
    got = judge(conversations)
    for conversation, judgement in zip(conversations, got, strict=True):
        prompt, _ = judge.prompt(conversation)
        assert judgement.p_unsafe == pytest.approx(unsafe_score(model, tokenizer, prompt.ids), abs=1e-5)
        greedy = Engine(model).generate([judged_ids(tokenizer, prompt)], SamplingParams(temperature=0.0,
                                                                                       max_new_tokens=16))[0]
        assert judgement.answer == tokenizer.decode([t for t in greedy.token_ids if t not in tokenizer.stop_ids])
        assert judgement.flagged == (judgement.verdict.label == "unsafe")
    before = judge.engine.scheduler.reused_tokens
    judge([[{"role": "user", "content": "Another question."}]])  # the category table comes from the cache
    first, again = judge.prompt(BOMB)[0].ids, judge.prompt([{"role": "user", "content": "Another question."}])[0].ids
    shared = next(i for i, (a, b) in enumerate(zip(first, again, strict=False)) if a != b)  # the table and more
    assert judge.engine.scheduler.reused_tokens - before == shared > 100
    assert all(j.flagged for j in Judge(model, tokenizer, threshold=0.0)(conversations))
    assert not any(j.flagged for j in Judge(model, tokenizer, threshold=1.0)(conversations))


def test_chat_messages_become_the_guards_conversation() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Hi"}, {"role": "user", "content": [{"type": "text", "text": "there"}]},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"type": "function", "function": {"name": "lookup", "arguments": "{\"q\": 1}"}}]},
                {"role": "tool", "content": "42"}, {"role": "assistant", "content": "It is 42."}]
    assert guard_conversation(messages) == [
        {"role": "user", "content": [{"type": "text", "text": "Hi\n\nthere"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "lookup({\"q\": 1})\n\nIt is 42."}]}]
    with pytest.raises(GuardPromptError, match="no user message"):
        guard_conversation([{"role": "system", "content": "x"}])


def test_moderation_metrics_count_as_meta_reports(tmp_path: Path) -> None:
    """Per category: labelled c against flagged naming c; overall: labelled unsafe against flagged."""
    from herd.eval.moderation import evaluate, read_items
    from herd.moderation import Judgement, Verdict

    data = tmp_path / "labelled.jsonl"
    rows = [{"text": "a", "label": "S9"}, {"text": "b", "label": "S9"}, {"text": "c", "label": "safe"},
            {"messages": [{"role": "user", "content": "d"}], "categories": ["S1", "S9"]}, {"text": "e", "label": []}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    said = {"a": ["S9"], "b": [], "c": ["S1"], "d": ["S1"], "e": None}  # None: an unreadable answer

    def judge(conversations):
        out = []
        for c in conversations:
            codes = said[c[-1]["content"]]
            verdict = Verdict(False, error="unexpected") if codes is None else Verdict(not codes, codes)
            out.append(Judgement(verdict, 0.5, bool(codes), "", dict.fromkeys(codes or [], "")))
        return out

    result = evaluate(judge, read_items(data), batch=2, progress=False)
    assert result.items == 5 and result.errors == 1
    assert result.per_category["S9"] == {"support": 3, "precision": 1.0, "recall": 0.3333, "f1": 0.5, "fpr": 0.0}
    assert result.per_category["S1"] == {"support": 1, "precision": 0.5, "recall": 1.0, "f1": 0.6667, "fpr": 0.25}
    assert result.overall == {"support": 3, "precision": 0.6667, "recall": 0.6667, "f1": 0.6667, "fpr": 0.5}
    assert result.macro["f1"] == pytest.approx((0.5 + 0.6667) / 2, abs=1e-4)
    assert "| S9 | 3 | 1.000 | 0.333 | 0.500 | 0.000 |" in result.table()
    assert main(["eval", "moderation", "--preset", "debug", "--data", str(data), "--threshold", "0", "--json",
                 "--no-fast"]) == 0
