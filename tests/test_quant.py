"""Quantized weights (herd.quant): the schemes' arithmetic, the native kernel against x @ dequant(W)ᵀ, the
modules and the pass against the model holding the dequantized weights, and checkpoints both ways."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from hf_oracle import DENSE_LIKE, MAVERICK_LIKE, SCOUT_LIKE
from safetensors.torch import load_file, save_file
from test_cpu_kernels import NATIVE

import herd
from herd import cpu_kernels
from herd.checkpoint import CheckpointError
from herd.fast import optimize
from herd.infer.engine import Engine
from herd.infer.kv_pool import KVPool
from herd.infer.native import NativeDecode
from herd.infer.sampling import SamplingParams
from herd.infer.steps import FastDecode
from herd.quant import GROUPS, SCHEMES, QuantError, QuantExperts, QuantLinear, dequantize, quantize, quantize_model
from herd.quant.schemes import Scheme, pack_int4, quantize_activations, unpack_int4

CONFIGS = {"scout": SCOUT_LIKE, "maverick": MAVERICK_LIKE, "dense": DENSE_LIKE}


# ---- schemes ----


def test_int4_is_metas_rule_and_packing():
    """scale = max|w| / 8 over groups along the inputs, q = clamp(round(w / scale), -8, 7); even index in the
    low nibble, two's complement (spec §7.2)."""
    w = torch.tensor([[0.8, -0.8, 0.1, -0.35] + [0.0] * 124])  # one group of 128
    codes, scales = quantize(w, "int4-g128")
    assert scales.shape == (1, 1) and scales.item() == pytest.approx(0.1)
    q = unpack_int4(codes)
    assert q[0, :4].tolist() == [7, -8, 1, -4]  # 8 clamps to 7; -3.5 rounds to even, -4
    assert codes.view(torch.uint8)[0, :2].tolist() == [0x87, 0xC1]  # (7 low, -8 high), (1 low, -4 high)
    q = torch.randint(-8, 8, (5, 64), dtype=torch.int8)
    assert torch.equal(unpack_int4(pack_int4(q)), q)


@pytest.mark.parametrize("name", list(SCHEMES))
@pytest.mark.parametrize("K", [64, 72, 200])  # a whole number of groups, and a short last group
def test_quantization_error_is_within_half_a_step(name, K):
    s = SCHEMES[name]
    w = torch.randn(9, K, generator=torch.Generator().manual_seed(K)) * torch.logspace(-3, 1, 9)[:, None]
    codes, scales = quantize(w, s)
    assert codes.shape == (9, K if s.bits == 8 else K // 2) and scales.shape == (9, -(-K // s.group))
    err = (dequantize(codes, scales, s) - w).abs()
    step = scales.repeat_interleave(s.group, dim=1)[:, :K]
    bound = step * (0.5 if s.bits == 8 else 1.0)  # int4 clamps the group's maximum, +8 steps, to 7
    assert (err <= bound + 1e-6 * w.abs()).all()


def test_bad_scheme_and_odd_int4_width_are_clear_errors():
    with pytest.raises(QuantError, match=r"unknown quantization scheme 'int3'.*int8"):
        quantize(torch.zeros(2, 32), "int3")
    with pytest.raises(QuantError, match="must be even"):
        quantize(torch.zeros(2, 33), "int4")


# ---- kernel ----


@pytest.mark.skipif(not NATIVE, reason="the native kernels need AVX512-BF16 and a C compiler")
@pytest.mark.parametrize("name", [*SCHEMES, "int4-g64"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_qmatvec_matches_x_at_dequantized_w(name, dtype):
    """Rows of x 1 … 8 (tiles of four and the rest), widths with masked tails (a last word of one byte,
    chunks of fewer groups), odd output counts; int4 in groups of 64 (a layout the bf16 kernel reads). int4-a8
    against x quantized as `quantize_activations` does, which the kernel must reproduce code for code (one code
    off in a block scaled up 40× is far outside the fp32 tolerance)."""
    s, g = SCHEMES.get(name, Scheme(name, 4, 64)), torch.Generator().manual_seed(1)
    shapes = [(1, 5, 72), (3, 33, 64), (4, 7, 200), (5, 100, 512), (8, 17, 96), (2, 9, 74), (6, 3, 1030)]
    for M, N, K in shapes + ([(3, 7, 75)] if s.bits == 8 else []):  # int8: a last word of one code
        w, x = torch.randn(N, K, generator=g), torch.randn(M, K, generator=g).to(dtype)
        x[0, : K // 3] *= 40  # blocks of activations at different scales
        codes, scales = quantize(w, s)
        want = (quantize_activations(x) if s.act_bits else x.float()) @ dequantize(codes, scales, s).T
        got = cpu_kernels.qmatvec(x, codes, scales, s.bits, s.group, s.act_bits)
        assert got.dtype == dtype and got.shape == (M, N)
        tolerance = 1e-4 if dtype == torch.float32 else 2**-7
        assert torch.allclose(got.float(), want, rtol=tolerance, atol=tolerance * K**0.5), (M, N, K)


@pytest.mark.skipif(not NATIVE, reason="the native kernels need AVX512-BF16 and a C compiler")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_native_quantized_activations_are_torchs(dtype):
    """cpu_kernels.quantize_activations (a prefill's int4-a8 input) bit for bit the torch rule: widths with a
    short last block, all-zero blocks and rows, blocks at scales apart."""
    g = torch.Generator().manual_seed(3)
    for K in (5, 32, 72, 512, 1030):
        x = (torch.randn(6, K, generator=g) * torch.rand(6, 1, generator=g) * 50).to(dtype)
        x[0, :40], x[1] = 0, 0
        assert torch.equal(cpu_kernels.quantize_activations(x), quantize_activations(x).to(dtype)), K


@pytest.mark.skipif(not NATIVE, reason="the native kernels need AVX512-BF16 and a C compiler")
@pytest.mark.parametrize("name", [*SCHEMES, "int4-g64"])
@pytest.mark.parametrize("threads", [1, 3])
def test_qgrouped_is_grouped_on_the_dequantized_experts(name, threads):
    """Bit for bit: groups of 0, 1, 2 (row by row), 5 … 40 rows (blocks of six and their remainders), output
    counts that leave a last partial block of weight rows, widths with a short last group."""
    s, g, before = SCHEMES.get(name, Scheme(name, 4, 64)), torch.Generator().manual_seed(2), torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for N, K, counts in [(37, 96, [0, 5, 40]), (64, 512, [1, 2, 7, 33]), (10, 256, [3, 0]), (9, 200, [13])]:
            w_ENK = torch.randn(len(counts), N, K, generator=g)
            codes, scales = map(torch.stack, zip(*(quantize(w, s) for w in w_ENK), strict=True))
            x_AK = torch.randn(sum(counts), K, generator=g).bfloat16()
            offsets_E1 = F.pad(torch.tensor(counts).cumsum(0), (1, 0))
            plain_ENK = torch.stack([dequantize(c, sc, s, torch.bfloat16) for c, sc in zip(codes, scales, strict=True)])
            want = cpu_kernels.grouped(x_AK, plain_ENK, offsets_E1)
            assert torch.equal(cpu_kernels.qgrouped(x_AK, codes, scales, s.bits, s.group, offsets_E1), want), (N, K)
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="qgrouped takes"):
        cpu_kernels.qgrouped(x_AK.float(), codes, scales, s.bits, s.group, offsets_E1)
    with pytest.raises(ValueError, match="qgrouped takes"):
        cpu_kernels.qgrouped(x_AK, codes[:, :, 1:], scales, s.bits, s.group, offsets_E1)


# ---- modules and the pass ----


@pytest.mark.skipif(not NATIVE, reason="the native kernels need AVX512-BF16 and a C compiler")
@pytest.mark.parametrize("name", ["int8", "int4"])
def test_quantized_experts_prefill_through_qgrouped(name, monkeypatch):
    """A bf16 prefill's routed experts: one `qgrouped` call per projection, the results of the native grouped
    experts (`GatherExperts`) holding the dequantized weights, bit for bit."""
    from herd.fast import GatherExperts

    g = torch.Generator().manual_seed(4)
    w13_EDO, w2_EFD = torch.randn(5, 48, 80, generator=g) * 0.2, torch.randn(5, 40, 48, generator=g) * 0.2
    experts = QuantExperts.from_weights(w13_EDO, w2_EFD, name)
    plain = GatherExperts(5, 48, 40)
    plain.w13.data = dequantize(experts.w13_codes, experts.w13_scales, experts.scheme, torch.bfloat16).transpose(1, 2)
    plain.w2.data = dequantize(experts.w2_codes, experts.w2_scales, experts.scheme, torch.bfloat16).transpose(1, 2)
    xs_AD, counts_E = torch.randn(30, 48, generator=g).bfloat16(), torch.tensor([7, 0, 1, 20, 2])
    calls = []
    real = cpu_kernels.qgrouped
    monkeypatch.setattr(cpu_kernels, "qgrouped", lambda *a: calls.append(a[3]) or real(*a))
    with torch.no_grad():
        assert torch.equal(experts.grouped(xs_AD, counts_E), plain.grouped(xs_AD, counts_E))
    assert len(calls) == 2


def _dequantized_copy(plain: torch.nn.Module, quantized: torch.nn.Module) -> torch.nn.Module:
    """`plain` with each weight the quantized model replaced set to its dequantized values."""
    for (_, module), (_, other) in zip(quantized.named_modules(), plain.named_modules(), strict=True):
        if isinstance(module, QuantLinear):
            other.weight.data = module.dequantized(other.weight.dtype)
        elif isinstance(module, QuantExperts):
            other.w13.data = dequantize(module.w13_codes, module.w13_scales, module.scheme).transpose(1, 2)
            other.w2.data = dequantize(module.w2_codes, module.w2_scales, module.scheme).transpose(1, 2)
    return plain


@pytest.mark.parametrize("config", list(CONFIGS.values()), ids=list(CONFIGS))
@pytest.mark.parametrize("name", ["int8", "int4"])
def test_quantized_model_is_the_model_of_its_dequantized_weights(config, name):
    """fp32 logits within 1e-4 of the plain model holding the dequantized weights, prefill (GEMM on the
    dequantized weight) and one-token steps (the native kernel) alike; every group but the LM head swapped."""
    tokens = torch.randint(0, 256, (2, 11), generator=torch.Generator().manual_seed(0))
    quantized = quantize_model(herd.build(config, seed=0), name)
    reference = _dequantized_copy(herd.build(config, seed=0), quantized)
    kinds = {type(m).__name__ for m in quantized.modules()}
    assert "QuantLinear" in kinds and ("QuantExperts" in kinds) == bool(config.n_experts)
    assert type(quantized.output) is torch.nn.Linear
    with torch.no_grad():
        assert (quantized(tokens) - reference(tokens)).abs().max() <= 1e-4
        assert (quantized(tokens[:1, :1]) - reference(tokens[:1, :1])).abs().max() <= 1e-4


def test_fused_quantized_layers_equal_quantizing_each_part():
    """optimize() on a quantized model fuses codes and scales (q|k|v, gate|up): the same logits, and the
    parts stay views of the fused layer; restore() gives them storage of their own."""
    tokens = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(1))
    model = quantize_model(herd.build(SCOUT_LIKE, seed=0), "int4", groups=["attention", "shared", "experts", "lm_head"])
    with torch.no_grad():
        want = model(tokens)
        optimize(model)
        attention = model.layers[0].attention
        assert isinstance(attention.wqkv, QuantLinear)
        assert attention.wk.codes.data_ptr() == attention.wqkv.codes[attention.wq.out_features].data_ptr()
        assert torch.equal(model(tokens), want)


@pytest.mark.skipif(not NATIVE, reason="the native kernels need AVX512-BF16 and a C compiler")
@pytest.mark.parametrize("config", list(CONFIGS.values()), ids=list(CONFIGS))
@pytest.mark.parametrize("name", list(SCHEMES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_native_step_reads_quantized_weights(config, name, dtype):
    """The native decode step on a quantized model (every group, the LM head too) against the eager step on
    the same weights: fp32 logits within 1e-4, bf16 within its rounding, the same greedy tokens."""
    model = quantize_model(optimize(herd.build(config, seed=0, dtype=dtype)), name, groups=GROUPS)
    pool, g = KVPool(model.config, 4, 64, dtype), torch.Generator().manual_seed(0)
    with torch.no_grad():
        for slot, n in enumerate((9, 5, 13)):
            model(torch.randint(0, 256, (1, n), generator=g), kv=pool.prefill(slot, 0), last_only=True)
        tokens_B1, positions_B, slots_B = torch.randint(0, 256, (3, 1), generator=g), torch.tensor([9, 5, 13]), \
            torch.tensor([0, 1, 2])
        native = NativeDecode(model)
        assert native.takes(tokens_B1, pool), native.reason
        eager_pool = copy.deepcopy(pool)
        got = native(tokens_B1, positions_B, slots_B, pool)
        want = model(tokens_B1, kv=eager_pool.decode(slots_B, positions_B))[:, -1]
    tolerance = 1e-4 if dtype == torch.float32 else 2**-6
    assert torch.allclose(got.float(), want.float(), rtol=tolerance, atol=tolerance), (got - want).abs().max()
    assert torch.equal(got.argmax(-1), want.argmax(-1))


@pytest.mark.skipif(not NATIVE, reason="the native kernels need AVX512-BF16 and a C compiler")
@pytest.mark.parametrize("config", list(CONFIGS.values()), ids=list(CONFIGS))
@pytest.mark.parametrize("name", ["int4-a8", "int8-a8"])
def test_int8_activations_are_one_function_on_every_path(config, name):
    """An -a8 scheme quantizes each product's input on every path: an fp32 prefill (quantize_activations before
    the GEMM), a one-token eager step (cpu_kernels.qmatvec's VNNI kernel) and the native step give the last
    position the same logits to 1e-4; the plain scheme's (the same codes, activations as they come) differ."""
    g = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, 256, (1, 10), generator=g)
    a8 = quantize_model(optimize(herd.build(config, seed=0)), name, groups=GROUPS)
    plain = quantize_model(optimize(herd.build(config, seed=0)), name.removesuffix("-a8"), groups=GROUPS)
    with torch.no_grad():
        prefill = a8(tokens)[0, -1]
        pool = KVPool(a8.config, 1, 64, torch.float32)
        a8(tokens[:, :9], kv=pool.prefill(0, 0), last_only=True)
        native_pool = copy.deepcopy(pool)
        eager = a8(tokens[:, 9:], kv=pool.decode(torch.tensor([0]), torch.tensor([9])))[0, -1]
        native = NativeDecode(a8)
        assert native.takes(tokens[:, 9:], native_pool), native.reason
        step = native(tokens[:, 9:], torch.tensor([9]), torch.tensor([0]), native_pool)[0]
        assert (eager - prefill).abs().max() <= 1e-4 and (step - prefill).abs().max() <= 1e-4
        assert (plain(tokens)[0, -1] - prefill).abs().max() > 1e-3


@pytest.mark.skipif(not NATIVE, reason="the native kernels need AVX512-BF16 and a C compiler")
@pytest.mark.parametrize("name", ["int8", "int4", "int4-a8", "int8-a8"])
def test_quantized_step_gives_a_row_alone_what_it_gets_among_others(name):
    """One row takes the 16-rows-at-a-time sums (qdots16_bf16), several rows the row-by-row ones: the same
    logits bit for bit, so a request's greedy tokens do not depend on its batch."""
    config = SCOUT_LIKE.replace(dim=72, head_dim=20, expert_dim=40, vocab_size=250)  # tails, a partial block
    model = quantize_model(optimize(herd.build(config, seed=0, dtype=torch.bfloat16)), name, groups=GROUPS)
    g = torch.Generator().manual_seed(2)
    tokens_B1, positions_B = torch.randint(0, 250, (5, 1), generator=g), torch.tensor([3, 9, 1, 14, 6])

    def logits(rows: list[int]) -> torch.Tensor:
        pool = KVPool(model.config, 5, 64, torch.bfloat16)
        native = NativeDecode(model)
        with torch.no_grad():
            for b in rows:
                prompt = torch.randint(0, 250, (1, int(positions_B[b])), generator=torch.Generator().manual_seed(b))
                model(prompt, kv=pool.prefill(b, 0), last_only=True)
            assert native.takes(tokens_B1[rows], pool), native.reason
            return native(tokens_B1[rows], positions_B[rows], torch.tensor(rows), pool)

    together = logits(list(range(5)))
    for b in range(5):
        assert torch.equal(logits([b])[0], together[b]), b


@pytest.mark.skipif(not NATIVE, reason="the native kernels need AVX512-BF16 and a C compiler")
def test_engine_decodes_a_quantized_model_natively():
    """FastDecode takes the native step for a quantized model: greedy output equal to the eager engine's."""
    model = quantize_model(optimize(herd.build(SCOUT_LIKE, seed=0)), "int4")
    params = SamplingParams(temperature=0.0, max_new_tokens=12, stop_ids=())
    prompts = [[1, 5, 9, 200, 3], [7, 7, 8]]
    step = FastDecode(model)
    assert Engine(model, step=step).generate(prompts, params) == Engine(model).generate(prompts, params)
    assert step.native_steps > 0 and step.compiled_steps == 0


# ---- checkpoints ----


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("plain")
    herd.save(herd.build(SCOUT_LIKE, seed=0), path)
    return path


@pytest.mark.parametrize("name", list(SCHEMES))
def test_quantize_while_loading_and_round_trip(plain_dir, tmp_path, name):
    """load(quantize=) equals quantizing the loaded model; `herd quantize`'s checkpoint reads back bit for bit
    without the flag, and says what it is."""
    from herd.cli.main import main

    loaded = herd.load(plain_dir, quantize=name)
    after = quantize_model(herd.load(plain_dir), name)
    for (k, a), (_, b) in zip(loaded.state_dict().items(), after.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert main(["quantize", str(plain_dir), "--scheme", name, "--out", str(tmp_path / "q")]) == 0
    config = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "herd" and config["scheme"] == name
    back = herd.load(tmp_path / "q")
    for (k, a), (_, b) in zip(back.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    with pytest.raises(CheckpointError, match=f"already quantized \\({name}\\)"):
        herd.load(tmp_path / "q", quantize="int4" if SCHEMES[name].bits == 8 else "int8")
    twin = {"int4": "int4-a8", "int4-a8": "int4", "int8": "int8-a8", "int8-a8": "int8"}.get(name)
    if twin:  # the same tensors, read with or without 8-bit activations
        other = herd.load(tmp_path / "q", quantize=twin)
        assert {m.scheme.name for m in other.modules() if hasattr(m, "scheme")} == {twin}
        for (k, a), (_, b) in zip(other.state_dict().items(), loaded.state_dict().items(), strict=True):
            assert torch.equal(a, b), k


def test_damaged_quantized_checkpoints_name_the_tensor(plain_dir, tmp_path):
    from herd.cli.main import main

    assert main(["quantize", str(plain_dir), "--scheme", "int4", "--out", str(tmp_path / "q")]) == 0
    file = tmp_path / "q" / "model.safetensors"
    original = load_file(file)
    key = "model.layers.1.self_attn.q_proj.codes"
    damaged = dict(original, **{key: original[key][:, :-1].contiguous()})  # truncated codes
    save_file(damaged, file, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"q_proj.codes.*has shape \[64, 31\], expected \[64, 32\]"):
        herd.load(tmp_path / "q")
    scales = "model.layers.0.feed_forward.experts.down_proj_scales"
    damaged = dict(original, **{scales: original[scales][:, :-1].contiguous()})
    save_file(damaged, file, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="down_proj_scales"):
        herd.load(tmp_path / "q")
    damaged = dict(original, **{key: original[key].float()})
    save_file(damaged, file, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="float32 codes, expected int8"):
        herd.load(tmp_path / "q")
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    config["quantization_config"]["scheme"] = "int2"
    (tmp_path / "q" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"invalid quantization_config.*int2"):
        herd.load(tmp_path / "q")


def test_generate_takes_quant(capsys):
    from herd.cli.main import main

    assert main(["generate", "--preset", "debug", "--quant", "int4", "--max-new-tokens", "4", "--temperature",
                 "0"]) == 0
    assert "4 new tokens" in capsys.readouterr().err
