"""The native kernels against PyTorch's products (the bf16 matrix-vector product, the fp32 grouped expert
products), and their fallbacks."""

import copy
import itertools
import logging

import pytest
import torch

import herd.fast as fast
from herd import cpu_kernels

NATIVE = torch.cpu._is_avx512_bf16_supported() and cpu_kernels._compiler() is not None


@pytest.fixture
def fresh_kernels(tmp_path, monkeypatch):
    """The kernel built into an empty cache, and the module's state restored afterwards."""
    monkeypatch.setenv("HERD_CACHE", str(tmp_path))
    cpu_kernels.reset()
    yield tmp_path
    cpu_kernels.reset()


def _reference(x_MK: torch.Tensor, w_NK: torch.Tensor) -> torch.Tensor:
    return (x_MK.float() @ w_NK.float().T).bfloat16()  # fp32 accumulation, one rounding at the end


def _within_one_rounding(got: torch.Tensor, want: torch.Tensor) -> bool:
    """The same sums up to fp32 summation order: at most one bf16 rounding step apart."""
    ulp = want.float().abs().clamp_min(1e-30) * 2**-7
    return bool(((got.float() - want.float()).abs() <= ulp + 1e-6).all())


@pytest.mark.slow
def test_the_kernel_builds_where_the_cpu_has_avx512_bf16(fresh_kernels):
    # This machine's CI has AVX512-BF16 and a C compiler: the native path must not quietly fall away.
    assert cpu_kernels.available() == NATIVE
    if NATIVE:
        assert len(list((fresh_kernels / "kernels").glob("herd_kernels-*.so"))) == 1


@pytest.mark.skipif(not NATIVE, reason="needs a CPU with AVX512-BF16 and a C compiler")
@pytest.mark.parametrize("K", [512, 64, 96, 33, 7, 1])
@pytest.mark.parametrize("M", [1, 2, 5])
def test_matvec_bf16_matches_fp32_product(M, K):
    g = torch.Generator().manual_seed(K * 10 + M)
    x, w = torch.randn(M, K, generator=g).bfloat16(), torch.randn(1001, K, generator=g).bfloat16()
    got, want = cpu_kernels.matvec_bf16(x, w), _reference(x, w)
    assert got.shape == (M, 1001) and got.dtype == torch.bfloat16
    assert _within_one_rounding(got, want)


@pytest.mark.skipif(not NATIVE, reason="needs a CPU with AVX512-BF16 and a C compiler")
@pytest.mark.parametrize("M", [1, 3, 8, 11, 17])
def test_packed_matvec_matches_the_product_and_each_row_alone(M):
    """packed.h: within one rounding of the fp32 product, for output counts whose last pair of blocks holds
    1 … 32 outputs, rows in tiles of eight and the rest; each row bit for bit what it gets alone."""
    g = torch.Generator().manual_seed(M)
    for N, K in [(1001, 70), (16, 2), (47, 512), (33, 8), (5, 64)]:
        x, w = torch.randn(M, K, generator=g).bfloat16(), torch.randn(N, K, generator=g).bfloat16()
        packed = cpu_kernels.pack_bf16(w)
        assert packed.shape == (-(-N // 16), K // 2, 16, 2)
        got = cpu_kernels.packed_matvec_bf16(x, packed, N)
        assert got.shape == (M, N) and _within_one_rounding(got, _reference(x, w)), (N, K)
        for b in range(M):
            assert torch.equal(cpu_kernels.packed_matvec_bf16(x[b : b + 1], packed, N)[0], got[b])
    with pytest.raises(ValueError, match="even input count"):
        cpu_kernels.pack_bf16(torch.zeros(4, 3, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="packed weight of 16 outputs"):
        cpu_kernels.packed_matvec_bf16(torch.zeros(1, 8, dtype=torch.bfloat16),
                                       cpu_kernels.pack_bf16(torch.zeros(4, 8, dtype=torch.bfloat16)), 17)


@pytest.mark.skipif(not NATIVE, reason="needs a CPU with AVX512-BF16 and a C compiler")
def test_matvec_bf16_edge_cases():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 70, generator=g).bfloat16()
    w[3, 5], w[7, 69] = float("nan"), float("inf")  # 69: the masked tail past two full 32-wide steps
    x = torch.randn(2, 70, generator=g).bfloat16()
    got = cpu_kernels.matvec_bf16(x[:, :].t().contiguous().t(), w)  # a non-contiguous x is made contiguous
    assert got[:, 3].isnan().all() and got[:, 7].isinf().all()
    keep = [i for i in range(40) if i not in (3, 7)]
    assert torch.equal(got[:, keep].isfinite(), torch.ones(2, 38, dtype=torch.bool))
    assert cpu_kernels.matvec_bf16(x[:0], w).shape == (0, 40)
    assert cpu_kernels.matvec_bf16(x, w[:0]).shape == (2, 0)
    with pytest.raises(ValueError, match="bf16"):
        cpu_kernels.matvec_bf16(x.float(), w)
    with pytest.raises(ValueError, match=r"\[M, K\] x \[N, K\]"):
        cpu_kernels.matvec_bf16(x[:, :64], w)
    with pytest.raises(ValueError, match="contiguous"):
        cpu_kernels.matvec_bf16(x[:, :40], w[:, :40].t().contiguous().t())


@pytest.mark.skipif(not NATIVE, reason="needs a CPU with AVX512-BF16 and a C compiler")
def test_matvec_takes_the_native_kernels_and_the_row_dot_otherwise(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_kernels, "matvec_bf16", lambda x, w: calls.append("bf16") or _reference(x, w))
    real = cpu_kernels.linear_f32
    monkeypatch.setattr(cpu_kernels, "linear_f32", lambda x, w: calls.append("f32") or real(x, w))
    g = torch.Generator().manual_seed(1)
    w, x = torch.randn(300, 64, generator=g), torch.randn(1, 64, generator=g)
    fast.matvec(x.bfloat16(), w.bfloat16())
    assert calls == ["bf16"]
    for rows in (1, 2, 3, 7):  # no graph per row count
        x = torch.randn(rows, 64, generator=g)
        assert (fast.matvec(x, w) - x @ w.T).abs().max().item() <= 1e-4
    assert calls == ["bf16"] + ["f32"] * 4
    fast.matvec(x[:, :32].bfloat16(), w.bfloat16()[:, :32])  # a strided weight view: the row-dot
    fast.matvec(x[:, :32], w[:, :32])
    assert len(calls) == 5


@pytest.mark.skipif(not NATIVE, reason="needs a CPU with AVX512-BF16 and a C compiler")
def test_bf16_linear_takes_the_kernel_up_to_max_tokens(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_kernels, "matvec_bf16", lambda x, w: calls.append(x.shape[0]) or _reference(x, w))
    layer = torch.nn.Linear(64, 300, bias=False).bfloat16()
    layer.__class__ = fast.MatvecLinear
    x = torch.randn(3, 3, 64).bfloat16()  # 9 rows: past max_tokens, the GEMM
    with torch.no_grad():
        layer(x[:2, :2])
        layer(x)
    assert calls == [4]


def test_failed_build_falls_back_with_a_warning(fresh_kernels, monkeypatch, caplog):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    with caplog.at_level(logging.WARNING, logger="herd"):
        assert not cpu_kernels.available()
    assert "kernels unavailable" in caplog.text and "false failed" in caplog.text
    g = torch.Generator().manual_seed(2)
    x, w = torch.randn(1, 64, generator=g).bfloat16(), torch.randn(300, 64, generator=g).bfloat16()
    assert _within_one_rounding(fast.matvec(x, w), _reference(x, w))  # the row-dot
    with pytest.raises(RuntimeError, match="not available"):
        cpu_kernels.matvec_bf16(x, w)


def test_disabled_by_environment(fresh_kernels, monkeypatch):
    monkeypatch.setenv("HERD_CPU_KERNELS", "0")
    assert not cpu_kernels.available()
    assert not (fresh_kernels / "kernels").exists()


def _grouped_reference(x_AK: torch.Tensor, w_ENK: torch.Tensor, counts: list[int]) -> torch.Tensor:
    starts = [sum(counts[:e]) for e in range(len(counts))]
    return torch.cat([x_AK[s : s + c].float() @ w_ENK[e].float().T
                      for e, (s, c) in enumerate(zip(starts, counts, strict=True))]).to(x_AK.dtype)


@pytest.mark.skipif(not NATIVE, reason="needs a CPU with AVX512-BF16 and a C compiler")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("N", "K"), [(64, 512), (70, 100), (3, 7), (9, 16), (8, 45)])
@pytest.mark.parametrize("threads", [1, 3])
def test_grouped_matches_per_group_products(dtype, N, K, threads):
    # Group heights 0-13 cover the matrix-vector path (1-2 rows), every pass height (up to 6 rows) and the
    # split into near-equal passes; N % 4 rows and K % 16 (bf16: % 32) columns take the tails; 3 threads
    # split the blocks unevenly.
    counts = [0, 1, 13, 6, 0, 7, 2, 12]
    g = torch.Generator().manual_seed(N * K)
    x, w = torch.randn(sum(counts), K, generator=g).to(dtype), torch.randn(len(counts), N, K, generator=g).to(dtype)
    offsets = torch.tensor([0, *itertools.accumulate(counts)])
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = cpu_kernels.grouped(x, w, offsets)
    finally:
        torch.set_num_threads(before)
    want = _grouped_reference(x, w, counts)
    assert got.shape == want.shape and got.dtype == dtype
    if dtype == torch.float32:
        assert (got - want).abs().max().item() <= 1e-5 * max(1.0, K**0.5)
    else:
        assert _within_one_rounding(got, want)


@pytest.mark.skipif(not NATIVE, reason="needs a CPU with AVX512-BF16 and a C compiler")
def test_grouped_rejects_bad_input():
    x, w = torch.randn(5, 16), torch.randn(2, 8, 16)
    ok = torch.tensor([0, 2, 5])
    assert cpu_kernels.grouped(x[:0], w, torch.tensor([0, 0, 0])).shape == (0, 8)
    for bad in (torch.tensor([0, 2, 4]), torch.tensor([1, 2, 5]), torch.tensor([0, 3, 2, 5]), torch.tensor([0, 4, 2]),
                ok.int()):
        with pytest.raises(ValueError, match="offsets"):
            cpu_kernels.grouped(x, w, bad)
    with pytest.raises(ValueError, match="one dtype"):
        cpu_kernels.grouped(x.bfloat16(), w, ok)
    with pytest.raises(ValueError, match="one dtype"):
        cpu_kernels.grouped(x.half(), w.half(), ok)
    with pytest.raises(ValueError, match=r"\[A, K\] x \[E, N, K\]"):
        cpu_kernels.grouped(x[:, :8], w, ok)
    with pytest.raises(ValueError, match="contiguous"):
        cpu_kernels.grouped(x[:, :8], w[:, :, :8], ok)
    with pytest.raises(ValueError, match="fp32"):
        cpu_kernels.linear_f32(x.bfloat16(), w[0].bfloat16())


@pytest.mark.skipif(not NATIVE, reason="needs a CPU with AVX512-BF16 and a C compiler")
def test_routed_experts_take_the_grouped_kernel_in_inference(monkeypatch):
    from herd.moe import MoE

    moe = MoE(dim=48, hidden=40, n_experts=6)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in moe.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    x = torch.randn(2, 37, 48, generator=g)
    with torch.no_grad():
        want = moe(x)
        want16 = copy.deepcopy(moe).bfloat16()(x.bfloat16())
    fast.optimize(moe)
    assert type(moe.experts) is fast.GatherExperts
    calls = []
    real = cpu_kernels.grouped
    monkeypatch.setattr(cpu_kernels, "grouped", lambda *a: calls.append(a[0].dtype) or real(*a))
    with torch.no_grad():
        got = moe(x)
    assert calls == [torch.float32] * 2  # the gate|up and the down projection of every expert, one call each
    assert (got - want).abs().max().item() <= 1e-5
    with torch.no_grad():
        got16 = moe.bfloat16()(x.bfloat16())
    assert calls == [torch.float32] * 2 + [torch.bfloat16] * 2
    # bf16: the same roundings as the per-expert loop, up to fp32 summation order inside each product
    assert (got16.float() - want16.float()).abs().max().item() <= 2 * 2**-7 * want16.float().abs().max().item()
    got = moe.float()(x)  # with gradients (training): the per-expert loop
    assert calls == [torch.float32] * 2 + [torch.bfloat16] * 2
