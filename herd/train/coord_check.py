"""The coordinate check (Tensor Programs V, §D.1): train a few steps at growing widths and watch the
size of every layer's activations. Under a parametrization that transfers, the curves against width
stay flat; under the standard one, with Adam at a fixed LR, they grow with width after the first
updates.

- Measured: the mean |x| of the embedding output, of each block's output (the residual stream) and
  of the logits, on the same batch, at every step (before that step's update).
- The batch is a fixed seeded random-token batch (or windows of prepared data), so only the width
  and the parametrization change between runs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from herd.model import Transformer
from herd.train import metap
from herd.train.metap import pyplot

log = logging.getLogger("herd")


def _tokens(vocab: int, batch: int, seq_len: int, seed: int, data: str | None) -> torch.Tensor:
    if data is None:
        return torch.randint(0, vocab, (batch, seq_len + 1), generator=torch.Generator().manual_seed(seed))
    from herd.data.shards import TokenShards
    from herd.train.batches import Batches

    return Batches(TokenShards(data, "train"), seq_len, seed).samples(range(batch))


def measure(parametrization: str, width: int, *, depth: int = 2, steps: int = 5, lr: float = 1e-2,
            base: str = "herd-10m", vocab: int = 1024, batch: int = 4, seq_len: int = 64, seed: int = 0,
            data: str | None = None) -> list[dict[str, float]]:
    """Per step, mean |activation| by layer name, for one (parametrization, width)."""
    text = metap.scaled(base, width, depth).replace(vocab_size=vocab)
    with torch.device("meta"):
        model = Transformer(text)
    model.to_empty(device="cpu")
    plan = metap.rules(model, parametrization, 0.02, base)
    metap.init_weights(model, plan, torch.Generator().manual_seed(seed))
    model.train()
    optimizer = torch.optim.AdamW(metap.param_groups(model, plan, lr, 0.0), lr=lr, betas=(0.9, 0.95))
    for group in optimizer.param_groups:
        group["lr"] = group["peak_lr"]
    stats: dict[str, float] = {}

    def hook(name: str):
        return lambda module, args, out: stats.__setitem__(name, float(out.detach().abs().mean()))

    handles = [model.tok_embeddings.register_forward_hook(hook("embedding")),
               model.output.register_forward_hook(hook("logits"))]
    handles += [block.register_forward_hook(hook(f"block {i}")) for i, block in enumerate(model.layers)]
    tokens_BS = _tokens(text.vocab_size, batch, seq_len, seed, data)
    history = []
    for _ in range(steps):
        logits_BSV = model(tokens_BS[:, :-1])
        loss = F.cross_entropy(logits_BSV.flatten(0, 1), tokens_BS[:, 1:].flatten())
        history.append({**stats, "loss": float(loss.detach())})
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    for handle in handles:
        handle.remove()
    return history


def coord_check(out: str | Path, widths: list[int], parametrizations: tuple[str, ...] = ("standard", "metap"),
                **kwargs: Any) -> dict[str, Any]:
    """Run `measure` for every (parametrization, width); write results.json and coord_check.png."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"widths": widths, "settings": kwargs, "runs": {}}
    for p in parametrizations:
        for width in widths:
            log.info("coord check: %s width %d", p, width)
            results["runs"].setdefault(p, {})[str(width)] = measure(p, width, **kwargs)
    tmp = out / ".results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(out / "results.json")
    plot(results, out / "coord_check.png")
    return results


def growth(results: dict[str, Any], parametrization: str, layer: str, step: int = -1) -> float:
    """How much a layer's activation size grows from the smallest to the largest width (a ratio)."""
    runs = results["runs"][parametrization]
    widths = [str(w) for w in results["widths"]]
    return runs[widths[-1]][step][layer] / runs[widths[0]][step][layer]


def plot(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()

    params = list(results["runs"])
    steps = len(next(iter(results["runs"][params[0]].values())))
    shown = sorted({0, steps // 2, steps - 1})
    fig, axes = plt.subplots(len(params), len(shown), figsize=(4 * len(shown), 3.2 * len(params)), squeeze=False)
    widths = results["widths"]
    for row, p in enumerate(params):
        layers = [k for k in results["runs"][p][str(widths[0])][0] if k != "loss"]
        for col, step in enumerate(shown):
            ax = axes[row][col]
            for layer in layers:
                ax.plot(widths, [results["runs"][p][str(w)][step][layer] for w in widths], marker="o", label=layer)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{p}: step {step}")
            ax.set_xlabel("width")
            if col == 0:
                ax.set_ylabel("mean |activation|")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
