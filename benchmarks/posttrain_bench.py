"""`herd sft` against TRL's SFTTrainer on the benchmark model: the same weights, the same conversations.

    .venv/bin/python benchmarks/posttrain_bench.py                 # 32 conversations, fp32, 2 threads
    .venv/bin/python benchmarks/posttrain_bench.py --conversations 64 --batch 8

The model is the benchmark model of bench.py (vocab 202,048, hidden 512, 8 layers of 16 experts, top-1, plus a
shared expert), loaded by herd from its HF save and by transformers as `Llama4ForCausalLM`. The conversations
are synthetic and rendered in Llama 4's chat format with the assistant-only loss mask. Each trainer makes one
pass over them, `--batch` conversations per step, AdamW at the same LR:
- herd packs the conversations into windows of --seq-len tokens, with attention kept inside each;
- TRL pads each batch to its longest conversation. Its collator is given Llama 4's pad id; the tokenizer
  passed to it is only a placeholder, since the data is already tokenized.
The rate is the conversations' tokens over each trainer's own loop time: herd's up to its last update (its
log's rate; the final checkpoint is left out), TRL's `train_runtime` (no checkpoint). That leaves out model
loading and, for TRL, dataset preparation. Both use fp32.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

import torch
from bench import THREADS, ensure_model

from herd.chat import render
from herd.tokenizer import load_tokenizer
from herd.train import TrainConfig, read_log, train


def conversations(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randrange(100, 10_000), rng.randrange(100, 10_000)
        steps = " ".join(f"Step {k}: carry the digits of {a} and {b} at place {k}." for k in range(rng.randint(2, 6)))
        out.append({"messages": [
            {"role": "system", "content": "You are a careful calculator. Show the work, then the result."},
            {"role": "user", "content": f"What is {a} + {b}?"},
            {"role": "assistant", "content": f"{steps} The result is {a + b}."}]})
    return out


def run_herd(model: Path, data: Path, out: Path, args: argparse.Namespace, steps: int) -> float:
    config = TrainConfig(objective="sft", init_from=str(model), data=str(data), out=str(out), seq_len=args.seq_len,
                         batch_size=args.batch_windows, steps=steps, lr=1e-5,
                         warmup_steps=0, weight_decay=0.0, router_bias_rate=0.0, eval_every=10_000,
                         ckpt_every=10_000, parametrization="standard")
    train(config, progress=False)
    # The loop's time up to the last step's update, from the log (the summary's also holds the final checkpoint:
    # 5 GB of weights and optimizer state for this model).
    last = read_log(out / "log.jsonl")[-1]
    return last["tokens"] / last["tokens_per_s"]


def run_trl(model_dir: Path, rendered: list, args: argparse.Namespace, pad_id: int, out: Path) -> float:
    from datasets import Dataset
    from transformers import Llama4ForCausalLM, PreTrainedTokenizerFast
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from herd.files import cache_dir

    model = Llama4ForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.base_model_prefix = "model"  # TRL's fused loss reaches the backbone through `base_model`
    placeholder = PreTrainedTokenizerFast(tokenizer_file=str(cache_dir() / "demo" / "tokenizer.json"))
    placeholder.pad_token = placeholder.eos_token = "<|end_of_text|>"
    dataset = Dataset.from_list([{"input_ids": r.ids, "assistant_masks": [int(m) for m in r.loss_mask]}
                                 for r in rendered])
    config = SFTConfig(output_dir=str(out), per_device_train_batch_size=args.batch, num_train_epochs=1,
                       learning_rate=1e-5, weight_decay=0.0, lr_scheduler_type="constant", max_length=None,
                       report_to=[], use_cpu=True, bf16=False, save_strategy="no", logging_steps=1_000,
                       router_aux_loss_coef=0.0, dataloader_num_workers=0, seed=0)
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=placeholder,
                         data_collator=DataCollatorForLanguageModeling(pad_token_id=pad_id))
    return trainer.train().metrics["train_runtime"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conversations", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4, help="conversations per TRL step")
    parser.add_argument("--seq-len", type=int, default=512, help="herd's packed window")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    model = ensure_model()
    tokenizer = load_tokenizer(model)
    records = conversations(args.conversations)
    rendered = [render(tokenizer, r["messages"], add_generation_prompt=False) for r in records]
    tokens = sum(len(r) for r in rendered)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "chat.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in records))
        from herd.train.chat_data import ChatData

        # herd's step takes as many windows as hold --batch conversations on average: the same tokens per step.
        n_windows = len(ChatData(data, tokenizer, args.seq_len, seed=0)._pack(0))
        args.batch_windows = max(1, round(args.batch * n_windows / len(rendered)))
        steps = max(1, round(n_windows / args.batch_windows))
        herd_tokens = round(steps * args.batch_windows * tokens / n_windows)  # the real tokens its windows hold
        herd_s = run_herd(model, data, Path(tmp) / "herd", args, steps)
        trl_s = run_trl(model, rendered, args, tokenizer.pad_id, Path(tmp) / "trl")
    print(f"benchmark model, fp32, {len(rendered)} conversations, {tokens:,} tokens "
          f"({tokens / len(rendered):.0f} per conversation), {THREADS} threads\n")
    print("| trainer | seconds | tokens/s | vs TRL |\n|---|---:|---:|---:|")
    herd_rate, trl_rate = herd_tokens / herd_s, tokens / trl_s
    print(f"| herd sft (packed windows of {args.seq_len}, {args.batch_windows} per step) | {herd_s:.1f} | "
          f"{herd_rate:,.0f} | **{herd_rate / trl_rate:.2f}×** |")
    print(f"| TRL SFTTrainer (padded batches of {args.batch}) | {trl_s:.1f} | {trl_rate:,.0f} | 1.00× |")


if __name__ == "__main__":
    main()
