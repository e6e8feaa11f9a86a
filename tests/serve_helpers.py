"""Shared set-up for the server tests: the debug preset saved with Meta's tokenizer, a live `herd serve` on a
free port, and the same app in process over an engine thread. Test helper, not a test file."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import torch

import herd
from herd.config import preset
from herd.infer import EagerStep, KVPool, Scheduler
from herd.serve.app import State
from herd.serve.openai import Served
from herd.serve.runner import Runner
from herd.serve.screen import Screen
from herd.tokenizer import load_tokenizer

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
TOKENIZER = SHARED / "llama4" / "tokenizer.model"


def debug_checkpoint(path: Path) -> Path:
    """The debug preset (a tiny vision tower on 56-pixel tiles) saved at `path` with Meta's tokenizer."""
    assert TOKENIZER.exists(), f"the shared tokenizer is missing: {TOKENIZER} (CI keeps ../shared beside the repo)"
    herd.save(herd.build(preset("debug"), seed=0), path)
    (path / "tokenizer.model").write_bytes(TOKENIZER.read_bytes())
    return path


@contextmanager
def live_server(checkpoint: Path, *flags: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`herd serve` in float32 on a free port, healthy on entry, stopped with SIGTERM on exit."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "herd", "serve", "--model", str(checkpoint), "--port", str(port), "--dtype",
           "float32", *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"herd serve did not become healthy: {proc.stderr.read()[-2000:] if proc.poll() else ''}")
            time.sleep(0.25)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def in_process_state(slots: int, context: int, **served: object) -> State:
    """The app's state over the debug preset (random weights, eager decode) and Meta's tokenizer, its engine
    thread running; `served` overrides fields of `Served` (max_images, max_tiles, ...)."""
    assert TOKENIZER.exists(), f"the shared tokenizer is missing: {TOKENIZER} (CI keeps ../shared beside the repo)"
    model = herd.build(preset("debug"), seed=0)
    tokenizer = load_tokenizer(TOKENIZER)
    scheduler = Scheduler(model, KVPool(model.config, slots, context, torch.float32), EagerStep(model), max_queue=64)
    state = State()
    state.served = Served(tokenizer, "debug", scheduler.limit, tuple(tokenizer.stop_ids), model.vision, **served)
    state.runner = Runner(scheduler)
    return state


def multiple_choice_task(root: Path, items: list, metrics: tuple[str, ...] = ("acc",)) -> Path:
    """A local lm-eval task `herd_mc` over `items` ({"question", "choices", "answer"}): its include directory."""
    import json

    data = root / "items.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in items))
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "herd_mc.yaml").write_text(
        "task: herd_mc\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\n'
        "metric_list:\n" + "".join(f"  - metric: {m}\n" for m in metrics))
    return tasks


def in_process_screen(state: State, **settings: object) -> Screen:
    """A Llama Guard screen for `state` over the debug preset (other random weights), its engine thread running;
    `settings` override the Screen's fields (stages, threshold, interval, ...)."""
    model = herd.build(preset("debug"), seed=5)
    tokenizer = state.served.tokenizer
    scheduler = Scheduler(model, KVPool(model.config, 2, 2048, torch.float32), EagerStep(model), max_queue=64)
    served = Served(tokenizer, "guard", scheduler.limit, tuple(tokenizer.stop_ids), model.vision)
    return Screen(served, Runner(scheduler), **settings)
