"""MetaP: the per-group rules of docs/METAP.md, O(1) activations at init across widths, and the
coord-check / sweep / transfer commands end to end on tiny settings."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from train_helpers import prepared_data

from herd.cli.main import main
from herd.model import Transformer
from herd.train import metap
from herd.train.coord_check import measure

SIGMA = 0.02


def _model(width: int, depth: int) -> Transformer:
    with torch.device("meta"):
        return Transformer(metap.scaled("herd-10m", width, depth))


@pytest.mark.parametrize(("width", "depth"), [(256, 4), (512, 4), (1024, 8), (128, 2), (1536, 24)])
def test_rules_follow_the_table(width: int, depth: int) -> None:
    base = metap.base_config("herd-10m")
    model = _model(width, depth)
    plan = metap.rules(model, "metap", SIGMA, "herd-10m")
    d, r = width / base.dim, depth / base.n_layers
    w_ffn = model.config.expert_dim / base.expert_dim
    expect = {
        "tok_embeddings.weight": (SIGMA, 1.0),
        "output.weight": (SIGMA / d, 1 / d),
        "norm.weight": (0.0, 1.0),
        "layers.0.attention.wq.weight": (SIGMA / math.sqrt(d), 1 / d),
        "layers.1.attention.wv.weight": (SIGMA / math.sqrt(d), 1 / d),
        "layers.0.attention.wo.weight": (SIGMA / math.sqrt(2 * base.n_layers) / math.sqrt(d) / r, 1 / (d * r)),
        "layers.0.feed_forward.router.weight": (SIGMA / d, 1 / d),
        "layers.0.feed_forward.experts.w13": (SIGMA / math.sqrt(d), 1 / d),
        "layers.0.feed_forward.experts.w2": (SIGMA / math.sqrt(2 * base.n_layers) / math.sqrt(w_ffn) / r,
                                             1 / (w_ffn * r)),
        "layers.0.feed_forward.shared_expert.w1.weight": (SIGMA / math.sqrt(d), 1 / d),
        "layers.0.feed_forward.shared_expert.w2.weight": (SIGMA / math.sqrt(2 * base.n_layers) / math.sqrt(w_ffn) / r,
                                                          1 / (w_ffn * r)),
        "layers.0.attention_norm.weight": (0.0, 1.0),
    }
    for name, (std, lr_scale) in expect.items():
        assert plan[name].init_std == pytest.approx(std), name
        assert plan[name].lr_scale == pytest.approx(lr_scale), name
    groups = metap.param_groups(model, plan, 1e-3, 0.1)
    for group in groups:  # decoupled decay: lr·wd is the base value in every decayed group
        if group["weight_decay"]:
            assert group["peak_lr"] * group["weight_decay"] == pytest.approx(1e-4)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_metap_equals_standard_at_the_base_shape() -> None:
    model = _model(256, 4)
    ours, standard = metap.rules(model, "metap", SIGMA, "herd-10m"), metap.rules(model, "standard", SIGMA, "herd-10m")
    for name in ours:
        assert ours[name].init_std == pytest.approx(standard[name].init_std), name
        assert ours[name].lr_scale == standard[name].lr_scale == 1.0


@pytest.mark.slow
def test_activations_are_order_one_at_init_across_widths() -> None:
    """Under metap the residual stream's coordinate size at init does not depend on width; under the
    standard parametrization it grows with √width."""
    widths = [64, 256, 1024]
    kwargs = dict(depth=2, steps=1, vocab=256, batch=2, seq_len=16)
    for parametrization, lo, hi in (("metap", 0.7, 1.4), ("standard", 3.0, 100.0)):
        sizes = [measure(parametrization, w, **kwargs)[0] for w in widths]
        for layer in ("block 0", "block 1"):
            growth = sizes[-1][layer] / sizes[0][layer]
            assert lo < growth < hi, (parametrization, layer, growth)
    metap_sizes = [measure("metap", w, **kwargs)[0] for w in widths]
    assert all(s["logits"] < 1.0 for s in metap_sizes)  # readout shrinks like 1/√width at init


def test_coord_check_command(tmp_path: Path, capsys) -> None:
    assert main(["metap", "coord-check", "--out", str(tmp_path), "--widths", "64", "128", "--steps", "3",
                 "--vocab", "128"]) == 0
    assert "metap" in capsys.readouterr().out
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["runs"]) == {"standard", "metap"} and len(results["runs"]["metap"]["128"]) == 3
    assert (tmp_path / "coord_check.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_sweep_command_is_resumable(tmp_path: Path, capsys) -> None:
    data = prepared_data(tmp_path / "data", vocab_size=320)
    args = ["metap", "sweep", "--data", str(data), "--out", str(tmp_path / "sweep"), "--widths", "64", "128",
            "--lrs", "0.004", "0.016", "--tokens", "1024", "--batch-sizes", "4", "--seq-len", "32"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "**standard**" in table and "**metap**" in table and "optimal LR spread" in table
    results = [json.loads(line) for line in (tmp_path / "sweep" / "results.jsonl").read_text().splitlines()]
    assert len(results) == 8 and all(r["steps"] == 8 for r in results)
    assert (tmp_path / "sweep" / "sweep.png").exists()
    logs = sorted((tmp_path / "sweep" / "points").glob("*/log.jsonl"))
    before = [p.stat().st_mtime_ns for p in logs]
    assert main(args) == 0  # finished points are read back, not retrained
    assert [p.stat().st_mtime_ns for p in logs] == before


def test_sweep_report_compares_the_optimum_along_any_axis(tmp_path: Path) -> None:
    from herd.train.sweep import plot, table

    def record(depth: int, lr: float, loss: float, batch: int = 16) -> dict:
        return {"parametrization": "metap", "width": 128, "depth": depth, "lr": lr, "batch_size": batch,
                "tokens": 4096, "val_loss": loss, "diverged": False}

    results = [record(2, 0.001, 5.0), record(2, 0.002, 4.9), record(8, 0.0010000001, 4.7), record(8, 0.002, 4.8),
               record(2, 0.004, 5.5, batch=64)]  # 0.0010000001: the same grid LR typed differently
    by_depth = table(results, "depth")
    assert "**metap**, width 128, batch 16, 4,096 tokens" in by_depth
    assert "| 2 | 5.000 | **4.900** | 0.002 |" in by_depth and "| 8 | **4.700** | 4.800 | 0.001 |" in by_depth
    assert "optimal LR spread across depths: ×2" in by_depth
    assert "optimal LR spread across batch sizes: ×2" in table(results, "batch_size")
    assert "optimal LR spread across widths: ×1" in table(results)
    assert "optimal LR spread across tokens: ×1" in table(results, "tokens")
    plot(results, tmp_path / "depth.png", "depth")
    assert (tmp_path / "depth.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="across must be one of"):
        table(results, "lr")


def test_transfer_command(capsys) -> None:
    assert main(["metap", "transfer", "--to", "herd-1.5b", "--lr", "0.004", "--batch-size", "64",
                 "--base-batch-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "width ×6, depth ×6" in out and "base LR 0.004 (unchanged for batch 16 -> 64" in out
    assert "herd train --model herd-1.5b --lr 0.004" in out
    assert main(["metap", "transfer", "--to", "herd-1.5b", "--lr", "0.004", "--batch-size", "64",
                 "--base-batch-size", "16", "--batch-rule", "sqrt"]) == 0
    out = capsys.readouterr().out
    assert "base LR 0.008 (√-scaled from 0.004" in out and "herd train --model herd-1.5b --lr 0.008" in out
    assert main(["metap", "transfer", "--to", "nope", "--lr", "0.004"]) == 2
