"""fp8 checkpoints, dequantized while read: HF's fbgemm_fp8 layout (fused experts with per-output scales,
Linears with `weight_scale`), the compressed-tensors per-expert layout, and Meta's `fp8_mixed` consolidated
shards with `fp8_scales_{rank}.pt` (spec §6.3, §7.1). Each loads to the logits of the model holding the
dequantized weights, and `quantize="int8"` requantizes them."""

import json

import pytest
import torch
from hf_oracle import SCOUT_LIKE
from safetensors.torch import load_file, save_file

import herd

E4M3_MAX = 448.0


def _fp8_rows(w: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output fp8 e4m3 codes and fp32 scales, the output along `dim`."""
    reduce = [d for d in range(w.dim()) if d != dim and not (w.dim() == 3 and d == 0)]
    scale = w.float().abs().amax(dim=reduce, keepdim=True).clamp(min=1e-12) / E4M3_MAX
    return (w.float() / scale).to(torch.float8_e4m3fn), scale


def _save(tensors: dict[str, torch.Tensor], path, config: dict) -> None:
    path.mkdir()
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    path = tmp_path_factory.mktemp("plain")
    herd.save(herd.build(SCOUT_LIKE, seed=0), path)
    return path, load_file(path / "model.safetensors"), json.loads((path / "config.json").read_text())


def _logits(path) -> torch.Tensor:
    tokens = torch.randint(0, 256, (1, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return herd.load(path, dtype=torch.float32)(tokens)


@pytest.mark.parametrize("layout", ["fbgemm", "per-expert"])
def test_hf_fp8_loads_as_its_dequantized_weights(plain, tmp_path, layout):
    _, tensors, config = plain
    fp8, reference = {}, {}
    for name, w in tensors.items():
        if name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
            q, scale = _fp8_rows(w, 2)  # input-major [E, in, out]: per output
            reference[name] = q.float() * scale
            if layout == "fbgemm":
                fp8[name], fp8[f"{name}_scale"] = q, scale
            else:  # one Linear per expert, [out, in]
                prefix, fused = name.rsplit(".", 1)
                projs = ("gate", "up") if fused == "gate_up_proj" else ("down",)
                for e in range(w.shape[0]):
                    for j, proj in enumerate(projs):
                        width = w.shape[2] // len(projs)
                        cols = slice(j * width, (j + 1) * width)
                        part_q, part_s = q[e, :, cols].T, scale[e, 0, cols]
                        fp8[f"{prefix}.{e}.{proj}_proj.weight"] = part_q.contiguous()
                        fp8[f"{prefix}.{e}.{proj}_proj.weight_scale"] = part_s[:, None].contiguous()
        elif "self_attn" in name and name.endswith("proj.weight"):
            q, scale = _fp8_rows(w, 0)
            fp8[name], fp8[name + "_scale"] = q, scale
            reference[name] = q.float() * scale
        else:
            fp8[name] = reference[name] = w
    method = {"fbgemm": "fbgemm_fp8", "per-expert": "compressed-tensors"}[layout]
    _save(fp8, tmp_path / "fp8", config | {"quantization_config": {"quant_method": method}})
    _save(reference, tmp_path / "reference", config)
    assert (_logits(tmp_path / "fp8") - _logits(tmp_path / "reference")).abs().max() <= 1e-5
    requantized = herd.load(tmp_path / "fp8", quantize="int8")
    assert requantized.quantization["scheme"] == "int8"


def test_per_expert_layout_missing_an_expert_is_a_clear_error(plain, tmp_path):
    _, tensors, config = plain
    broken = {k: v for k, v in tensors.items() if "experts" not in k}
    E, D, F2 = tensors["model.layers.0.feed_forward.experts.gate_up_proj"].shape
    for layer in range(SCOUT_LIKE.n_layers):
        for e in range(E - 1):  # the last expert is missing
            for proj, shape in (("gate", (F2 // 2, D)), ("up", (F2 // 2, D)), ("down", (D, F2 // 2))):
                broken[f"model.layers.{layer}.feed_forward.experts.{e}.{proj}_proj.weight"] = torch.zeros(shape)
    _save(broken, tmp_path / "broken", config)
    with pytest.raises(herd.checkpoint.CheckpointError, match=r"lack|missing"):
        herd.load(tmp_path / "broken")


def test_meta_fp8_mixed_shards_load_as_their_dequantized_weights(tmp_path):
    """Two model-parallel shards whose routed experts are fp8 with per-rank `fp8_scales_{rank}.pt` (spec §7.1:
    rows of the [out, in] weight, stored back in the 2-D layouts; MoE layers but the first and last)."""
    import shutil

    from meta_oracle import build_meta_model, meta_params, write_meta_checkpoint

    from herd.checkpoint import CheckpointError

    params = meta_params()
    write_meta_checkpoint(build_meta_model(params, seed=0), tmp_path / "fp8", params, n_shards=2)
    shutil.copytree(tmp_path / "fp8", tmp_path / "reference")
    E, n_layers = params["moe_args"]["num_experts"], params["n_layers"]
    for rank in range(2):
        file = f"consolidated.{rank:02d}.pth"
        shard = torch.load(tmp_path / "fp8" / file, weights_only=True)
        reference, scales = dict(shard), {}
        for layer in range(1, n_layers - 1):
            prefix = f"layers.{layer}.feed_forward.experts."
            for which, name in (("w1", "moe_w_in_eD_F"), ("w3", "moe_w_swiglu_eD_F"), ("w2", "moe_w_out_eF_D")):
                w = shard[prefix + name]
                q, scale = _fp8_rows(w.view(E, -1, w.shape[-1]), 2)
                shard[prefix + name] = q.view(w.shape)
                scales[prefix + which] = scale.view(E, -1)
                reference[prefix + name] = (q.float() * scale).view(w.shape)
        torch.save(shard, tmp_path / "fp8" / file)
        torch.save(reference, tmp_path / "reference" / file)
        torch.save(scales, tmp_path / "fp8" / f"fp8_scales_{rank}.pt")
    assert (_logits(tmp_path / "fp8") - _logits(tmp_path / "reference")).abs().max() <= 1e-5
    (tmp_path / "fp8" / "fp8_scales_1.pt").rename(tmp_path / "fp8" / "fp8_scales_7.pt")
    with pytest.raises(CheckpointError, match="fp8 scale files"):
        herd.load(tmp_path / "fp8")
    (tmp_path / "fp8" / "fp8_scales_7.pt").rename(tmp_path / "fp8" / "int4_scales_1.pt")
    with pytest.raises(CheckpointError, match="int4-g128"):
        herd.load(tmp_path / "fp8")
