"""`herd sft`: chat conversations packed with their loss masks, the loss a token mean over assistant tokens,
against a hand-computed masked cross-entropy; invariance to micro-batching; learning; bad data."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from train_helpers import chat_model, read_log, run_cli, run_in_process, write_jsonl

import herd
from herd.cli.main import main
from herd.config import ConfigError
from herd.data.sources import DataError
from herd.tokenizer import load_tokenizer
from herd.train import TrainConfig
from herd.train.chat_data import ChatData, chat_splits

VOCAB = 320


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random debug model with the compact test tokenizer beside it (the `--init-from` of every test)."""
    return chat_model(tmp_path_factory.mktemp("sft"), seed=3, vocab_size=VOCAB)


def arithmetic(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randrange(10, 100), rng.randrange(10, 100)
        messages = [{"role": "user", "content": f"What is {a} + {b}?"}, {"role": "assistant", "content": str(a + b)}]
        if rng.random() < 0.3:
            messages.insert(0, {"role": "system", "content": "Answer with the number only."})
        out.append({"messages": messages})
    return out


def sft_config(base: Path, data: Path, out: Path, **changes: object) -> TrainConfig:
    values = dict(objective="sft", init_from=str(base), data=str(data), out=str(out), seq_len=128, batch_size=4,
                  steps=3, lr=1e-3, warmup_steps=0, router_bias_rate=0.0, eval_every=100, ckpt_every=100,
                  log_every=100, weight_decay=0.0)
    return TrainConfig(**(values | changes))


def test_first_loss_is_the_hand_computed_masked_cross_entropy(base: Path, tmp_path: Path) -> None:
    """Step 1's logged loss (before any update) is the cross-entropy of the assistant tokens, each conversation
    run alone through the model, summed and divided by their number: packing, document masking and the loss
    mask change nothing."""
    data = write_jsonl(tmp_path / "chat.jsonl", arithmetic(12, seed=0))
    run_in_process(sft_config(base, data, tmp_path / "run", steps=1, seq_len=160))
    logged = read_log(tmp_path / "run" / "log.jsonl")[0]

    tokenizer = load_tokenizer(base)
    chat = ChatData(data, tokenizer, seq_len=160, seed=0)
    batch = chat.micro_batches(0, 4, 0, 1, 4)[0]
    model = herd.load(base, dtype=torch.float32)
    total, count, seen = 0.0, 0, 0
    for row in range(len(batch)):
        tokens, documents, counted = batch.tokens_NS[row], batch.documents_NS[row], batch.targets_NS[row]
        for doc in documents.unique():
            where = (documents == doc).nonzero()[:, 0]
            start, end = int(where[0]), int(where[-1]) + 1  # inputs start..end-1 predict tokens start+1..end
            if not counted[start:end].any():
                continue  # the padding
            assert tokens[start] == tokenizer.bos_id
            seen += 1
            with torch.no_grad():
                logits = model(tokens[None, start:end])[0]
            targets = tokens[start + 1 : end + 1]
            mask = counted[start:end]
            total += float(F.cross_entropy(logits[mask], targets[mask], reduction="sum"))
            count += int(mask.sum())
    assert seen >= 5 and count == logged["supervised_tokens"]
    assert logged["loss"] == pytest.approx(total / count, rel=1e-5)
    assert 0.0 <= logged["token_accuracy"] <= 1.0


def test_packing_covers_each_conversation_once_per_epoch_and_is_a_function_of_the_step(base: Path,
                                                                                       tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "chat.jsonl", arithmetic(30, seed=1))
    tokenizer = load_tokenizer(base)
    chat = ChatData(data, tokenizer, seq_len=64, seed=5)
    windows = chat._pack(0)
    assert sorted(i for w in windows for i in w) == list(range(30))
    assert all(sum(len(chat.ids[i]) for i in w) <= 65 for w in windows)
    late = chat.micro_batches(7, 4, 1, 2, 1)  # a resumed run asks for step 7 first
    fresh = ChatData(data, tokenizer, seq_len=64, seed=5)
    for _ in range(7):
        fresh.micro_batches(_, 4, 1, 2, 1)
    for a, b in zip(late, fresh.micro_batches(7, 4, 1, 2, 1), strict=True):
        assert torch.equal(a.tokens_NS, b.tokens_NS) and torch.equal(a.targets_NS, b.targets_NS)


def test_token_mean_loss_is_invariant_to_micro_batches(base: Path, tmp_path: Path) -> None:
    """Micro-batches hold different numbers of assistant tokens; the step still averages over all of them."""
    data = write_jsonl(tmp_path / "chat.jsonl", arithmetic(40, seed=2))
    run_in_process(sft_config(base, data, tmp_path / "whole"))
    run_in_process(sft_config(base, data, tmp_path / "split", micro_batch_size=1))
    whole, split = (read_log(tmp_path / name / "log.jsonl") for name in ("whole", "split"))
    assert [r["loss"] for r in split] == pytest.approx([r["loss"] for r in whole], rel=1e-5)
    assert [r["grad_norm"] for r in split] == pytest.approx([r["grad_norm"] for r in whole], rel=1e-4)


@pytest.mark.slow
def test_two_processes_give_the_losses_of_one(base: Path, tmp_path: Path) -> None:
    """Under torchrun each process holds its own share of the assistant tokens; the step's loss and update are
    still the token mean over all of them."""
    data = write_jsonl(tmp_path / "chat.jsonl", arithmetic(40, seed=2))
    run_in_process(sft_config(base, data, tmp_path / "one"))
    done = run_cli(sft_config(base, data, tmp_path / "two"), nproc=2)
    assert done.returncode == 0, done.stderr[-2000:]
    one, two = (read_log(tmp_path / name / "log.jsonl") for name in ("one", "two"))
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-4)
    assert [r["supervised_tokens"] for r in two] == [r["supervised_tokens"] for r in one]


@pytest.mark.slow
def test_sft_learns_and_the_model_loads(base: Path, tmp_path: Path) -> None:
    """`herd sft` on a fixed set of sums: token accuracy on the answers climbs; the model loads with its
    tokenizer and the validation split is scored."""
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "train.jsonl", arithmetic(16, seed=3))
    write_jsonl(tmp_path / "data" / "val.jsonl", arithmetic(4, seed=4))
    out = tmp_path / "run"
    code = main(["sft", "--init-from", str(base), "--data", str(tmp_path / "data"), "--out", str(out),
                 "--seq-len", "128", "--batch-size", "4", "--steps", "60", "--lr", "3e-3", "--eval-every", "30",
                 "--ckpt-every", "60", "--no-progress"])
    assert code == 0
    log = read_log(out / "log.jsonl")
    first, last = log[0]["token_accuracy"], sum(r["token_accuracy"] for r in log[-5:]) / 5
    assert last > first + 0.4 and last > 0.7, (first, last)
    assert log[-1]["val_loss"] is not None
    model = herd.load(out / "model")
    assert (out / "model" / "tokenizer.json").exists() and model.config.vocab_size == VOCAB
    assert json.loads((out / "config.json").read_text())["train"]["router_bias_rate"] == 0.0


def test_bad_chat_data_names_the_line(base: Path, tmp_path: Path) -> None:
    tokenizer = load_tokenizer(base)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n{not json\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2: not JSON"):
        ChatData(bad, tokenizer, 64, 0)
    bad.write_text(json.dumps({"prompt": "hi"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: a record is an object with a `messages` list"):
        ChatData(bad, tokenizer, 64, 0)
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(DataError, match="no conversation with an assistant message"):
        ChatData(bad, tokenizer, 64, 0)
    image = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                          {"role": "assistant", "content": "a cat"}]}
    bad.write_text(json.dumps(image) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:1: .*an image part needs a checkpoint with a vision tower"):
        ChatData(bad, tokenizer, 64, 0)
    with pytest.raises(DataError, match=r"has no train\.jsonl"):
        chat_splits(tmp_path, tokenizer, 64, 0)
    with pytest.raises(ConfigError, match="--init-from"):
        run_in_process(sft_config(base, bad, tmp_path / "run", init_from=""))


@pytest.mark.slow
def test_first_step_loss_matches_trl(base: Path, tmp_path: Path) -> None:
    """TRL's SFTTrainer on the same weights (transformers' Llama4ForCausalLM loading herd's save) and the same
    conversations (assistant-only labels from the same rendering): the same first-step loss within 1e-4.
    herd packs them into one window with per-conversation attention; TRL pads them into a batch."""
    from datasets import Dataset
    from transformers import Llama4ForCausalLM, PreTrainedTokenizerFast
    from trl import SFTConfig, SFTTrainer

    from herd.chat import render

    conversations = arithmetic(8, seed=6)
    data = write_jsonl(tmp_path / "chat.jsonl", conversations)
    run_in_process(sft_config(base, data, tmp_path / "run", steps=1, seq_len=512, batch_size=1))
    herd_loss = read_log(tmp_path / "run" / "log.jsonl")[0]["loss"]

    tokenizer = load_tokenizer(base)
    rendered = [render(tokenizer, c["messages"], add_generation_prompt=False) for c in conversations]
    assert sum(len(r) for r in rendered) <= 513  # one herd window holds every conversation
    dataset = Dataset.from_list([{"input_ids": r.ids, "assistant_masks": [int(m) for m in r.loss_mask]}
                                 for r in rendered])
    hf_tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(base / "tokenizer.json"))
    hf_tokenizer.pad_token = tokenizer.decode([tokenizer.pad_id])
    model = Llama4ForCausalLM.from_pretrained(base, dtype=torch.float32)
    # TRL's fused LM-head loss reaches the backbone through `base_model`, which on Llama4ForCausalLM (prefix
    # "language_model", attribute `model`) resolves to the whole model: point it at the backbone.
    model.base_model_prefix = "model"
    args = SFTConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=8, max_length=None, report_to=[],
                     use_cpu=True, bf16=False, seed=0,
                     router_aux_loss_coef=0.0)  # no auxiliary balance loss, as herd's aux_loss_coef 0
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=hf_tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(trainer.model, batch))
    assert herd_loss == pytest.approx(trl_loss, rel=1e-4, abs=1e-4)


@pytest.mark.slow  # a whole training run (~11 s)
def test_images_in_chat_data_train_the_text_model_with_the_tower_frozen(tmp_path: Path) -> None:
    """Image parts (a path relative to the JSONL) are rendered in place and encoded in the training forward: the
    loss is the fused model's masked cross-entropy; SFT leaves the tower as it was and saves it; a text-only
    checkpoint refuses images, naming the line."""
    import shutil

    from serve_helpers import SHARED, debug_checkpoint

    from herd.config import preset
    from herd.train.chat_data import ImageSpec
    from herd.train.objectives import NextToken

    vision = preset("debug").vision
    debug_checkpoint(tmp_path / "mm")  # the debug preset: a tiny tower on 56-pixel tiles, Meta's tokenizer
    shutil.copyfile(SHARED / "data" / "images" / "dog.jpg", tmp_path / "dog.jpg")
    image = {"type": "image_url", "image_url": {"url": "dog.jpg"}}
    records = [{"messages": [{"role": "user", "content": [image, {"type": "text", "text": "What is this?"}]},
                             {"role": "assistant", "content": "A dog."}]},
               {"messages": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi."}]}]
    data = write_jsonl(tmp_path / "chat.jsonl", records)
    tokenizer = load_tokenizer(tmp_path / "mm")

    chat = ChatData(data, tokenizer, 160, seed=0, shuffle=False, images=ImageSpec.of(vision))
    batch = chat.validation(1)
    assert len(batch) == 1 and len(batch.images_N[0]) == 1  # both conversations in one window, one image
    model = herd.load(tmp_path / "mm")
    got = NextToken().sums(model, batch)["loss"]
    inputs, targets = batch.tokens_NS[:, :-1], batch.tokens_NS[:, 1:].masked_fill(~batch.targets_NS, -100)
    with torch.no_grad():
        logits = model(inputs, documents_BS=batch.documents_NS,
                       image_features_FD=model.encode_images(batch.images_N[0]))
    want = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    config = TrainConfig(objective="sft", init_from=str(tmp_path / "mm"), data=str(data), out=str(tmp_path / "run"),
                         seq_len=160, batch_size=1, steps=3, lr=1e-3, warmup_steps=0, router_bias_rate=0.0,
                         eval_every=3, ckpt_every=3, log_every=1)
    run_in_process(config)
    tuned = herd.load(tmp_path / "run" / "model")
    assert tuned.vision is not None
    before, after = model.state_dict(), tuned.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("vision."))
    assert not torch.equal(before["layers.0.attention.wq.weight"], after["layers.0.attention.wq.weight"])
    with pytest.raises(DataError, match=r"chat\.jsonl:1: .*an image part needs a checkpoint with a vision tower"):
        ChatData(data, tokenizer, 160, seed=0)
