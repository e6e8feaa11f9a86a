"""The learning-rate sweep behind MetaP's transfer claims: widths × depths × LRs × parametrizations
(and optionally batch sizes and token budgets), each point a real `herd train` run on prepared data.

- Resumable at two levels: a finished point is read back from its run directory and never rerun;
  an interrupted point resumes from its last checkpoint (`herd train --resume`).
- Each point reports the validation loss of its final model on every window of the held-out split
  (the same tokens for every point; cached in the point's eval.json) and the mean training loss of
  its last 10% of steps; a run whose loss turned non-finite is "diverged".
- Output, over every finished point of the directory (so a width grid and a later depth grid in the
  same directory make one report): results.jsonl (one line per point, rewritten atomically), results.md and
  sweep.png. `across` picks the axis the optimum is compared along (width by default; depth, batch_size or
  tokens): a table per setting of the other axes, loss by that axis and LR with the best LR of each row
  marked, and a plot of loss against LR with one curve per value of that axis.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import herd
from herd.data.shards import TokenShards
from herd.files import write_text_atomic
from herd.formats.hf import text_config_to_hf
from herd.train import metap
from herd.train.config import TrainConfig
from herd.train.evaluate import split_loss
from herd.train.loop import read_log, train
from herd.train.metap import pyplot

log = logging.getLogger("herd")


@dataclass(frozen=True)
class Point:
    parametrization: str
    width: int
    depth: int
    lr: float
    batch_size: int
    tokens: int

    @property
    def name(self) -> str:
        return (f"{self.parametrization}-w{self.width}-d{self.depth}-lr{self.lr:g}-b{self.batch_size}"
                f"-t{self.tokens}")


def points(parametrizations: list[str], widths: list[int], depths: list[int], lrs: list[float],
           batch_sizes: list[int], tokens: list[int]) -> list[Point]:
    return [Point(*p) for p in itertools.product(parametrizations, widths, depths, lrs, batch_sizes, tokens)]


def run_point(point: Point, out: Path, data: str, base: str, seq_len: int, vocab_size: int,
              seed: int) -> dict[str, Any]:
    """Train one point (or read it back when done) and return its result record."""
    run = out / "points" / point.name
    done = run / "model" / "training.json"
    run.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run / "point.json", json.dumps(point.__dict__))
    if not done.exists():
        shape = run / "shape"
        shape.mkdir(parents=True, exist_ok=True)
        text = metap.scaled(base, point.width, point.depth).replace(vocab_size=vocab_size)
        write_text_atomic(shape / "config.json", json.dumps(text_config_to_hf(text, "float32"), indent=1))
        steps = max(1, point.tokens // (point.batch_size * seq_len))
        config = TrainConfig(
            model=str(shape), data=data, out=str(run), seq_len=seq_len, batch_size=point.batch_size, steps=steps,
            lr=point.lr, warmup_steps=max(1, steps // 10), schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.0,
            weight_decay=0.1, parametrization=point.parametrization, metap_base=base, seed=seed,
            eval_every=steps, eval_batches=max(1, 32 // point.batch_size), ckpt_every=max(1, steps // 4),
            keep_checkpoints=1, log_every=max(1, steps // 4),
        )
        log.info("sweep point %s: %d steps", point.name, steps)
        train(config, resume=True, progress=False)
    records = [r for r in read_log(run / "log.jsonl") if "loss" in r]
    tail = records[-max(1, len(records) // 10):]
    train_loss = sum(r["loss"] for r in tail) / len(tail)
    val = validation_loss(run / "model", data, seq_len)
    diverged = not (math.isfinite(train_loss) and val is not None and math.isfinite(val))
    return {**point.__dict__, "name": point.name, "steps": len(records), "train_loss": train_loss,
            "val_loss": val, "diverged": diverged}


def validation_loss(model_dir: Path, data: str, seq_len: int) -> float:
    """Mean next-token loss of a saved model over every validation window (cached next to it)."""
    cache = model_dir.parent / "eval.json"
    if cache.exists():
        return json.loads(cache.read_text())["val_loss"]
    loss, n_tokens = split_loss(herd.load(model_dir), TokenShards(data, "val"), seq_len)
    write_text_atomic(cache, json.dumps({"val_loss": loss, "tokens": n_tokens}))
    return loss


def sweep(out: str | Path, data: str, grid: list[Point], *, base: str = "herd-10m", seq_len: int = 128,
          vocab_size: int = 8192, seed: int = 0, across: str = "width") -> list[dict[str, Any]]:
    """Run every point of `grid` not yet finished in `out`, then report over every finished point,
    comparing the optimal LR across `across` (width, depth, batch_size or tokens)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for i, point in enumerate(grid, start=1):
        log.info("[%d/%d] %s", i, len(grid), point.name)
        run_point(point, out, data, base, seq_len, vocab_size, seed)
    # The report covers every finished point in `out`, so several invocations (a width grid, then a
    # depth grid, ...) build one table.
    finished = sorted(p.parent for p in out.glob("points/*/point.json")
                      if (p.parent / "model" / "training.json").exists())
    results = [run_point(Point(**json.loads((d / "point.json").read_text())), out, data, base, seq_len, vocab_size,
                         seed) for d in finished]
    write_text_atomic(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in results))
    write_text_atomic(out / "results.md", table(results, across))
    plot(results, out / "sweep.png", across)
    return results


AXES = ("parametrization", "width", "depth", "batch_size", "tokens")


def best_lrs(results: list[dict[str, Any]]) -> dict[tuple, float]:
    """The loss-optimal LR of each (parametrization, width, depth, batch, tokens)."""
    best: dict[tuple, tuple[float, float]] = {}
    for r in results:
        if r["diverged"]:
            continue
        key = tuple(r[a] for a in AXES)
        if key not in best or r["val_loss"] < best[key][0]:
            best[key] = (r["val_loss"], r["lr"])
    return {k: lr for k, (_, lr) in best.items()}


def _on_grid(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """LRs rounded to 4 significant digits, so that runs of one grid point typed with different precision
    (0.00069053 and 2**-10.5 = 0.000690534) share a column."""
    return [{**r, "lr": float(f"{r['lr']:.4g}")} for r in results]


def _panels(results: list[dict[str, Any]], across: str) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Results grouped by every axis except LR and `across`: (the fixed settings, their rows)."""
    if across not in AXES[1:]:
        raise ValueError(f"across must be one of {', '.join(AXES[1:])}, not {across!r}")
    fixed = [a for a in AXES if a != across]
    keys = sorted({tuple(r[a] for a in fixed) for r in results})
    return [(dict(zip(fixed, key, strict=True)), [r for r in results if tuple(r[a] for a in fixed) == key])
            for key in keys]


def _title(settings: dict[str, Any], bold: bool = False) -> str:
    name = f"**{settings['parametrization']}**" if bold else settings["parametrization"]
    parts = [f"width {settings['width']}" if "width" in settings else "",
             f"depth {settings['depth']}" if "depth" in settings else "",
             f"batch {settings['batch_size']}" if "batch_size" in settings else "",
             f"{settings['tokens']:,} tokens" if "tokens" in settings else ""]
    return ", ".join([name, *[p for p in parts if p]])


def table(results: list[dict[str, Any]], across: str = "width") -> str:
    """Markdown: one table per setting of the other axes, validation loss by `across` (rows) and LR
    (columns), the best of each row in bold; the optimum's spread across the rows below each table."""
    lines = []
    results = _on_grid(results)
    best = best_lrs(results)
    label = across.replace("_", " ")
    plural = label if label.endswith("s") else f"{label}s"
    for settings, rows in _panels(results, across):
        lrs = sorted({r["lr"] for r in rows})
        lines += [_title(settings, bold=True), "",
                  f"| {label} | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | best lr |",
                  "|---|" + "---:|" * (len(lrs) + 1)]
        optima = []
        for value in sorted({r[across] for r in rows}):
            cells = []
            opt = best.get(tuple(value if a == across else settings[a] for a in AXES))
            for lr in lrs:
                r = next((r for r in rows if r[across] == value and r["lr"] == lr), None)
                if r is None:
                    cells.append("")
                elif r["diverged"]:
                    cells.append("diverged")
                else:
                    cells.append(f"**{r['val_loss']:.3f}**" if lr == opt else f"{r['val_loss']:.3f}")
            optima.append(opt)
            lines.append(f"| {value:,} | " + " | ".join(cells) + (f" | {opt:g} |" if opt else " | - |"))
        found = [o for o in optima if o]
        if found:
            lines += ["", f"optimal LR spread across {plural}: ×{max(found) / min(found):g}"]
        lines.append("")
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path, across: str = "width") -> None:
    """Loss against LR: one panel per setting of the other axes, one curve per value of `across`."""
    plt = pyplot()

    panels = _panels(_on_grid(results), across)
    cols = min(3, len(panels))
    rows_n = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.6 * cols, 3.6 * rows_n), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    label = across.replace("_", " ")
    for ax, (settings, rows) in zip(axes.flat, panels, strict=False):
        rows = [r for r in rows if not r["diverged"]]
        for value in sorted({r[across] for r in rows}):
            pts = sorted((r["lr"], r["val_loss"]) for r in rows if r[across] == value)
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=f"{label} {value:,}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("learning rate")
        ax.set_title(_title(settings), fontsize=9)
        ax.set_ylabel("validation loss")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
