"""The native bf16 matrix-vector kernel against PyTorch's fp32 product, and its fallbacks."""

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
def test_matvec_takes_the_kernel_in_bf16_and_the_row_dot_otherwise(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_kernels, "matvec_bf16", lambda x, w: calls.append(1) or _reference(x, w))
    g = torch.Generator().manual_seed(1)
    w, x = torch.randn(300, 64, generator=g), torch.randn(1, 64, generator=g)
    fast.matvec(x.bfloat16(), w.bfloat16())
    assert calls == [1]
    fast.matvec(x, w)  # fp32: the compiled row-dot, which is already bandwidth-bound
    fast.matvec(x[:, :32].bfloat16(), w.bfloat16()[:, :32])  # a strided weight view: the row-dot
    assert calls == [1]


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
