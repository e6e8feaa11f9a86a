"""`herd plan`: weight bytes exact against built (and quantized) models and `herd info`'s counts, KV bytes
against the pool, and suggestions that fit."""

import json

import pytest
import torch
from hf_oracle import DENSE_LIKE, MAVERICK_LIKE, SCOUT_LIKE
from test_cpu_kernels import NATIVE  # this CPU and compiler can build the native kernels

import herd
from herd.cli.main import main
from herd.cli.plan import memory_size
from herd.config import ModelConfig, preset
from herd.fast import optimize
from herd.infer.kv_pool import KVPool
from herd.infer.native import NativeDecode
from herd.info import counts
from herd.plan import largest_context, largest_slots, plan
from herd.quant import DEFAULT_GROUPS, GROUPS, quantize_model


def _state_bytes(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for t in model.state_dict().values():  # fused layers' parts are views: count storage once
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel())
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


@pytest.mark.parametrize("config", [SCOUT_LIKE, MAVERICK_LIKE, DENSE_LIKE, SCOUT_LIKE.replace(router_bias=True)],
                         ids=["scout", "maverick", "dense", "router-bias"])
@pytest.mark.parametrize("quant,groups", [(None, ()), ("int8", DEFAULT_GROUPS), ("int4", GROUPS),
                                          ("int4-g128", ("experts",))])
def test_weight_bytes_are_those_of_the_built_model(config, quant, groups):
    model = herd.build(config, seed=0, dtype=torch.bfloat16)
    if quant:
        quantize_model(model, quant, groups)
    assert plan(ModelConfig(config), quant, groups, torch.bfloat16).weight_bytes == _state_bytes(model)


@pytest.mark.parametrize("name", ["llama4-scout-17b-16e", "llama4-maverick-17b-128e", "llama-guard-4-12b"])
def test_unquantized_weights_are_herd_infos_counts_and_kv_the_pools(name):
    config = preset(name)
    p = plan(config, dtype=torch.bfloat16, context=131072, slots=3)
    assert p.weight_bytes == 2 * counts(config).total
    assert p.kv == 3 * KVPool.bytes_per_slot(config.text, 131072, torch.bfloat16)


@pytest.mark.skipif(not NATIVE, reason="the packed head belongs to the native decode step")
def test_decode_head_is_the_native_steps_packed_copy():
    model = optimize(herd.build(SCOUT_LIKE.replace(vocab_size=250), seed=0, dtype=torch.bfloat16))
    native = NativeDecode(model)
    assert native.takes(torch.tensor([[1]]), KVPool(model.config, 1, 64, torch.bfloat16))
    p = plan(ModelConfig(model.config), dtype=torch.bfloat16)
    assert p.decode_head == native._packed.numel() * 2 > 0  # 250 outputs: 16 blocks of 16
    assert p.total == p.weight_bytes + p.kv + p.activations + p.decode_head
    assert plan(ModelConfig(model.config), "int8", GROUPS, torch.bfloat16).decode_head == 0  # a quantized head
    assert plan(ModelConfig(model.config), dtype=torch.float32).decode_head == 0


def test_suggestions_fit_and_one_more_does_not():
    config, budget = preset("llama4-scout-17b-16e"), 100 * 10**9
    context = largest_context(config, budget, quant="int4", slots=2)
    assert plan(config, "int4", context=context, slots=2).total <= budget
    assert plan(config, "int4", context=context + 1024, slots=2).total > budget
    slots = largest_slots(config, budget, quant="int4", context=32768)
    assert plan(config, "int4", context=32768, slots=slots).total <= budget < plan(
        config, "int4", context=32768, slots=slots + 1).total


def test_cli(capsys):
    assert main(["plan", "llama4-scout-17b-16e", "--quant", "int4", "--context", "131072", "--slots", "4",
                 "--budget", "80GB", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fits"] is False and out["format"] == "int4" and out["largest_context"] > 0
    assert main(["plan", "debug", "--budget", "1GiB"]) == 0
    assert "fits in" in capsys.readouterr().out
    assert memory_size("24GB") == 24 * 10**9 and memory_size("80 GiB") == 80 * 2**30


def test_plan_of_a_quantized_checkpoint_is_what_it_holds(tmp_path, capsys):
    """`herd plan DIR` on a checkpoint `herd quantize` wrote reports its scheme and groups, and the weight
    bytes of the model it loads into."""
    herd.save(herd.build(SCOUT_LIKE, seed=0, dtype=torch.bfloat16), tmp_path / "plain")
    assert main(["quantize", str(tmp_path / "plain"), "--scheme", "int4", "--out", str(tmp_path / "q")]) == 0
    capsys.readouterr()
    assert main(["plan", str(tmp_path / "q"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["format"] == "int4" and out["groups"] == list(DEFAULT_GROUPS)
    assert out["weight_bytes"] == _state_bytes(herd.load(tmp_path / "q"))
