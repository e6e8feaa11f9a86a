"""Native CPU kernels for what PyTorch does not do well, built on first use with the machine's C compiler.

- `matvec_bf16`: the bf16 matrix-vector product on AVX512-BF16 dot products. In bf16, inductor converts
  each weight element to fp32 in software before multiplying, which caps a row-dot at about 40 GB/s on
  the machines measured; oneDNN's bf16 GEMM uses the dot-product instruction but partitions a one-row
  product so that it streams the weight slowly (docs/BENCHMARKS.md). The kernel reads each weight row
  once, in order, at memory bandwidth.
- `grouped`: the routed experts' products in a prefill (fp32 or bf16), each expert's rows against its
  own weight in one call, without the packing pass a GEMM library makes over each weight;
  `linear_f32`, the same with one group, is the fp32 matrix-vector product.
- `qmatvec`: x @ dequant(W)ᵀ for int8 / int4 weights (`herd.quant`), fp32 accumulation, a few rows of x;
  `dequantize`, the weight itself in bf16 or fp32 for a prefill's GEMM.
- `herd_decode_bf16` / `herd_decode_f32`: a whole decode step, bound by `herd.infer.native`.

The sources are `herd/csrc/*.c` (and their headers). They are compiled once per source, compiler and
flags into one library in `<cache>/kernels/` (the cache of `herd.files.cache_dir`) and loaded with
ctypes. It links OpenMP by its soname, so it shares the runtime and thread pool torch has already
loaded. Where the CPU lacks AVX512-BF16, no C compiler is found, the build fails, or
`HERD_CPU_KERNELS=0` is set, `available()` is False and callers keep their PyTorch path.

Shapes: M rows of x, N weight rows (outputs), K features.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import threading
from pathlib import Path

import torch
import torch.nn.functional as F

from herd.files import cache_dir

log = logging.getLogger("herd")

CSRC = Path(__file__).with_name("csrc")
FLAGS = ("-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-mavx512vnni", "-fopenmp", "-shared", "-fPIC")

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def build(csrc: Path = CSRC, out_dir: Path | None = None) -> Path:
    """Compile the C sources of `csrc` into one shared library (reused when sources, headers, compiler
    and flags are unchanged) and return its path. Raises RuntimeError with the compiler's message when
    the build fails."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler (set CC, or install cc/gcc)")
    sources = sorted(csrc.glob("*.c"))
    texts = [p.read_text() for p in sorted([*sources, *csrc.glob("*.h")])]
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join([*texts, cc, version, *FLAGS]).encode()).hexdigest()[:16]
    out_dir = out_dir or cache_dir() / "kernels"
    path = out_dir / f"herd_kernels-{key}.so"
    if path.exists():
        return path
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{path.name}.{os.getpid()}.tmp"
    done = subprocess.run([cc, *FLAGS, *map(str, sources), "-o", str(tmp)], capture_output=True, text=True)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{cc} failed on {csrc}: {done.stderr.strip()[-2000:]}")
    os.replace(tmp, path)  # another process building the same kernel at once writes the same bytes
    log.info("herd.cpu_kernels: built %s", path)
    return path


def _open() -> ctypes.CDLL | None:
    """Check the machine, build and load the kernels; None (with a log line) where they cannot run."""
    if os.environ.get("HERD_CPU_KERNELS", "1") == "0":
        return None
    if not (torch.cpu._is_avx512_bf16_supported() and torch.cpu._is_vnni_supported()):
        log.debug("herd.cpu_kernels: no AVX512-BF16 / VNNI on this CPU; the native kernels stay off")
        return None
    try:
        lib = ctypes.CDLL(str(build()))
    except (OSError, RuntimeError) as err:
        log.warning("herd.cpu_kernels: bf16 kernels unavailable (%s); using PyTorch", err)
        return None
    lib.herd_matvec_bf16.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_long] * 3 + [ctypes.c_int]
    lib.herd_matvec_bf16.restype = None
    lib.herd_packed_matvec_bf16.argtypes, lib.herd_packed_matvec_bf16.restype = lib.herd_matvec_bf16.argtypes, None
    for grouped in (lib.herd_grouped_f32, lib.herd_grouped_bf16):
        grouped.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long] * 3 + [ctypes.c_int]
        grouped.restype = None
    lib.herd_qmatvec.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_long] * 3 + [ctypes.c_int, ctypes.c_long,
                                                                               ctypes.c_int]
    lib.herd_qmatvec.restype = None
    lib.herd_qmatvec_bf16.argtypes, lib.herd_qmatvec_bf16.restype = lib.herd_qmatvec.argtypes, None
    lib.herd_qmatvec_a8.argtypes = [ctypes.c_void_p, ctypes.c_int] + [ctypes.c_void_p] * 3 + [ctypes.c_long] * 3 \
        + [ctypes.c_int, ctypes.c_long, ctypes.c_int]
    lib.herd_qmatvec_a8.restype = None
    lib.herd_a8_dequantized.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_long] * 2 + [ctypes.c_int] * 2
    lib.herd_a8_dequantized.restype = None
    lib.herd_dequant.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_long] * 2 + [ctypes.c_int, ctypes.c_long,
                                                                             ctypes.c_int, ctypes.c_int]
    lib.herd_dequant.restype = None
    lib.herd_qgrouped_bf16.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_long] * 3 + [ctypes.c_int, ctypes.c_long,
                                                                                    ctypes.c_int]
    lib.herd_qgrouped_bf16.restype = ctypes.c_int
    lib.herd_argmax.argtypes, lib.herd_argmax.restype = [ctypes.c_void_p, ctypes.c_long, ctypes.c_int], ctypes.c_long
    for step in (lib.herd_decode_bf16, lib.herd_decode_f32):
        step.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 2 + [ctypes.c_void_p] * 3 + [ctypes.c_int] * 2
        step.restype = ctypes.c_int
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernel library, or None where it cannot run (builds it on the first call)."""
    global _lib, _tried
    if _tried:  # every matrix-vector product asks: no lock once decided
        return _lib
    with _lock:
        if not _tried:
            _lib = _open()
            _tried = True  # set last, so that a lock-free reader never sees "decided" before `_lib`
        return _lib


def available() -> bool:
    """Whether the native kernels run here (builds them on the first call)."""
    return library() is not None


def reset() -> None:
    """Forget the loaded kernel, so that the next call checks and builds again (tests, `HERD_CPU_KERNELS`)."""
    global _lib, _tried
    with _lock:
        _lib, _tried = None, False


def matvec_bf16(x_MK: torch.Tensor, w_NK: torch.Tensor) -> torch.Tensor:
    """x @ wᵀ for bf16 CPU tensors, accumulated in fp32 and rounded to bf16: [M, K] × [N, K] → [M, N].
    Needs `available()`; `w` must be contiguous (x is made so)."""
    lib = library()
    if lib is None:
        raise RuntimeError("herd.cpu_kernels.matvec_bf16 is not available on this machine")
    if x_MK.dtype != torch.bfloat16 or w_NK.dtype != torch.bfloat16 or x_MK.device.type != "cpu":
        raise ValueError(f"matvec_bf16 takes bf16 CPU tensors, got {x_MK.dtype}/{w_NK.dtype} on {x_MK.device}")
    if x_MK.dim() != 2 or w_NK.dim() != 2 or x_MK.shape[1] != w_NK.shape[1]:
        raise ValueError(f"matvec_bf16 needs [M, K] x [N, K], got {tuple(x_MK.shape)} x {tuple(w_NK.shape)}")
    if not w_NK.is_contiguous():
        raise ValueError("matvec_bf16 needs a contiguous weight")
    x_MK = x_MK.contiguous()
    (M, K), N = x_MK.shape, w_NK.shape[0]
    y_MN = torch.empty(M, N, dtype=torch.bfloat16)
    if M and N:
        lib.herd_matvec_bf16(x_MK.data_ptr(), w_NK.data_ptr(), y_MN.data_ptr(), M, N, K, torch.get_num_threads())
    return y_MN


def argmax(x_V: torch.Tensor) -> int | None:
    """`int(x_V.argmax())` of a contiguous 1-D fp32 or bf16 CPU tensor (the first maximum; a NaN counts as the
    largest) in one vectorized pass (herd/csrc/argmax.c); None where the kernel does not take it."""
    if (x_V.device.type != "cpu" or x_V.dim() != 1 or x_V.dtype not in (torch.float32, torch.bfloat16)
            or not x_V.is_contiguous() or not 0 < x_V.shape[0] < 2**31):
        return None
    lib = library()  # asked only for a tensor it takes: a GPU row does not build the kernels
    if lib is None:
        return None
    return int(lib.herd_argmax(x_V.data_ptr(), x_V.shape[0], int(x_V.dtype == torch.bfloat16)))


def reads_bf16(bits: int, group: int) -> bool:
    """Whether the bf16-activation products (quant.h) take these codes: int8 in groups of 32 or 64·n, int4
    in groups of 32, 64 or 128·n."""
    return group == 32 or group % (64 if bits == 8 else 128) == 0 or (bits == 4 and group == 64)


def pack_bf16(w_NK: torch.Tensor) -> torch.Tensor:
    """w [N, K] (bf16, K even) in packed.h's layout: blocks of 16 outputs, inputs in pairs,
    packed[n / 16][k / 2][n % 16][k % 2] = w[n][k], outputs past N zero. One copy, in torch."""
    N, K = w_NK.shape
    if w_NK.dtype != torch.bfloat16 or K % 2:
        raise ValueError(f"pack_bf16 takes a bf16 weight with an even input count, got {w_NK.dtype} [{N}, {K}]")
    padded = F.pad(w_NK.detach(), (0, 0, 0, -N % 16))
    return padded.view(-1, 16, K // 2, 2).transpose(1, 2).contiguous()


def packed_matvec_bf16(x_MK: torch.Tensor, packed: torch.Tensor, N: int) -> torch.Tensor:
    """x @ wᵀ for the first N outputs of a weight packed by `pack_bf16`, accumulated in fp32 and rounded to
    bf16: [M, K] → [M, N]. Needs `available()`."""
    lib = library()
    if lib is None:
        raise RuntimeError("herd.cpu_kernels.packed_matvec_bf16 is not available on this machine")
    blocks, K2, sixteen, two = packed.shape
    if x_MK.dtype != torch.bfloat16 or x_MK.dim() != 2 or x_MK.shape[1] != 2 * K2 or not packed.is_contiguous() \
            or (sixteen, two) != (16, 2) or not 0 <= N <= 16 * blocks or packed.dtype != torch.bfloat16:
        raise ValueError(f"packed_matvec_bf16 needs bf16 x [M, {2 * K2}] and a packed weight of {16 * blocks} outputs, "
                         f"got {x_MK.dtype} {tuple(x_MK.shape)} and {packed.dtype} {tuple(packed.shape)} for {N}")
    x_MK = x_MK.contiguous()
    M = x_MK.shape[0]
    y_MN = torch.empty(M, N, dtype=torch.bfloat16)
    if M and N:
        lib.herd_packed_matvec_bf16(x_MK.data_ptr(), packed.data_ptr(), y_MN.data_ptr(), M, N, 2 * K2,
                                    torch.get_num_threads())
    return y_MN


def qmatvec(x_MK: torch.Tensor, codes_NC: torch.Tensor, scales_NG: torch.Tensor, bits: int, group: int,
            act_bits: int = 0) -> torch.Tensor:
    """x @ dequant(W)ᵀ for a quantized weight (herd.quant.schemes: int8 codes [N, K] or int4 [N, K/2], fp32
    scales [N, ceil(K/group)]), accumulated in fp32, returned in x's dtype: [M, K] → [M, N]. act_bits 8: x
    quantized first as `herd.quant.schemes.quantize_activations` does, the products integer (quant.h's VNNI
    kernels). Needs `available()`; the caller checks the codes against the scheme."""
    lib = library()
    if lib is None:
        raise RuntimeError("herd.cpu_kernels.qmatvec is not available on this machine")
    if x_MK.device.type != "cpu" or x_MK.dim() != 2 or not (codes_NC.is_contiguous() and scales_NG.is_contiguous()):
        raise ValueError("qmatvec takes a CPU x [M, K] and contiguous codes and scales")
    if bits not in (4, 8) or group % 32 or scales_NG.dtype != torch.float32:
        raise ValueError(f"qmatvec takes int8/int4 codes in groups of a multiple of 32 with fp32 scales, got "
                         f"{bits} bits, group {group}, {scales_NG.dtype} scales")
    (M, K), N, dtype = x_MK.shape, codes_NC.shape[0], x_MK.dtype
    if act_bits:
        if act_bits != 8 or not reads_bf16(bits, group):
            raise ValueError(f"qmatvec quantizes activations to 8 bits for codes in groups of 32 or 64·n (int8), "
                             f"32, 64 or 128·n (int4), not act_bits {act_bits} with {bits} bits, group {group}")
        x_MK = x_MK.contiguous() if dtype == torch.bfloat16 else x_MK.float().contiguous()
        y_MN = torch.empty(M, N, dtype=torch.float32)
        if M and N:
            lib.herd_qmatvec_a8(x_MK.data_ptr(), int(dtype == torch.bfloat16), codes_NC.data_ptr(),
                                scales_NG.data_ptr(), y_MN.data_ptr(), M, N, K, bits, group, torch.get_num_threads())
        return y_MN.to(dtype)
    # bf16 activations: the codes become exact bf16 values on dot-product instructions; anything else in fp32
    bf16 = dtype == torch.bfloat16 and reads_bf16(bits, group)
    x_MK = x_MK if bf16 else x_MK.float()
    if bf16:  # phases (quant.h): inputs phases·i + p, zero-padded to a multiple of the phases
        phases = 4 if bits == 4 else 2
        xa, xb = F.pad(x_MK, (0, -K % phases)).view(M, -1, phases).transpose(1, 2).contiguous(), None
    elif bits == 4:
        xa, xb = x_MK[:, 0::2].contiguous(), x_MK[:, 1::2].contiguous()
    else:
        xa, xb = x_MK.contiguous(), None
    y_MN = torch.empty(M, N, dtype=torch.float32)
    if M and N:
        kernel = lib.herd_qmatvec_bf16 if bf16 else lib.herd_qmatvec
        kernel(xa.data_ptr(), xb.data_ptr() if xb is not None else None, codes_NC.data_ptr(), scales_NG.data_ptr(),
               y_MN.data_ptr(), M, N, K, bits, group, torch.get_num_threads())
    return y_MN.to(dtype)


def quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """`herd.quant.schemes.quantize_activations(x)` in x's dtype (bf16 or fp32, on the CPU), in one parallel pass:
    the same codes and scales, then q · d rounded to x's dtype. Needs `available()`."""
    lib = library()
    if lib is None:
        raise RuntimeError("herd.cpu_kernels.quantize_activations is not available on this machine")
    if x.device.type != "cpu" or x.dtype not in (torch.bfloat16, torch.float32):
        raise ValueError(f"quantize_activations takes bf16 or fp32 on the CPU, not {x.dtype} on {x.device}")
    x = x.contiguous()
    out = torch.empty_like(x)
    K = x.shape[-1]
    if x.numel():
        lib.herd_a8_dequantized(x.data_ptr(), out.data_ptr(), x.numel() // K, K, int(x.dtype == torch.bfloat16),
                                torch.get_num_threads())
    return out


def dequantize(codes_NC: torch.Tensor, scales_NG: torch.Tensor, bits: int, group: int, K: int,
               dtype: torch.dtype, out: torch.Tensor | None = None) -> torch.Tensor:
    """The dequantized weight [N, K] in `dtype` (bf16 or fp32) of contiguous int8/int4 codes and fp32 scales, in
    one parallel pass, into `out` (a contiguous buffer of at least N·K elements of `dtype`) when given: a
    reused buffer spares the page faults a fresh one of that size costs. Needs `available()`."""
    lib = library()
    if lib is None:
        raise RuntimeError("herd.cpu_kernels.dequantize is not available on this machine")
    if dtype not in (torch.bfloat16, torch.float32) or not (codes_NC.is_contiguous() and scales_NG.is_contiguous()):
        raise ValueError(f"dequantize writes bf16 or fp32 from contiguous codes and scales, not {dtype}")
    N = codes_NC.shape[0]
    if out is None:
        out_NK = torch.empty(N, K, dtype=dtype)
    elif out.dtype != dtype or not out.is_contiguous() or out.numel() < N * K:
        raise ValueError(f"dequantize needs a contiguous {dtype} buffer of {N * K} elements")
    else:
        out_NK = out.view(-1)[: N * K].view(N, K)
    if N and K:
        lib.herd_dequant(codes_NC.data_ptr(), scales_NG.data_ptr(), out_NK.data_ptr(), N, K, bits, group,
                         int(dtype == torch.bfloat16), torch.get_num_threads())
    return out_NK


def _check_grouped(x_AK: torch.Tensor, w_ENK: torch.Tensor) -> None:
    if (x_AK.dtype != w_ENK.dtype or x_AK.dtype not in (torch.float32, torch.bfloat16)
            or x_AK.device.type != "cpu" or w_ENK.device.type != "cpu"):
        raise ValueError(f"grouped takes fp32 or bf16 CPU tensors of one dtype, got {x_AK.dtype}/{w_ENK.dtype} "
                         f"on {x_AK.device}")
    if x_AK.dim() != 2 or w_ENK.dim() != 3 or x_AK.shape[1] != w_ENK.shape[2]:
        raise ValueError(f"grouped needs [A, K] x [E, N, K], got {tuple(x_AK.shape)} x {tuple(w_ENK.shape)}")
    if not w_ENK.is_contiguous():
        raise ValueError("grouped needs a contiguous weight")


def _grouped(x_AK: torch.Tensor, w_ENK: torch.Tensor, offsets_E1: torch.Tensor) -> torch.Tensor:
    """`grouped` on checked inputs."""
    lib = library()
    if lib is None:
        raise RuntimeError("herd.cpu_kernels.grouped is not available on this machine")
    E, N, K = w_ENK.shape
    x_AK, offsets_E1 = x_AK.contiguous(), offsets_E1.contiguous()
    y_AN = torch.empty(x_AK.shape[0], N, dtype=x_AK.dtype)
    if x_AK.shape[0] and N:
        fn = lib.herd_grouped_f32 if x_AK.dtype == torch.float32 else lib.herd_grouped_bf16
        fn(x_AK.data_ptr(), w_ENK.data_ptr(), y_AN.data_ptr(), offsets_E1.data_ptr(), E, N, K, torch.get_num_threads())
    return y_AN


def grouped(x_AK: torch.Tensor, w_ENK: torch.Tensor, offsets_E1: torch.Tensor) -> torch.Tensor:
    """Rows of x through their group's weight, fp32 or bf16 on CPU: y[a] = x[a] @ w[e]ᵀ for offsets[e] <= a <
    offsets[e + 1] ([A, K] × [E, N, K] → [A, N]), accumulated in fp32 (bf16: rounded once at the end).
    `offsets` holds E + 1 int64 row offsets, from 0 to A. Needs `available()`; `w` must be contiguous (x is
    made so)."""
    _check_grouped(x_AK, w_ENK)
    E = w_ENK.shape[0]
    if (offsets_E1.dtype != torch.int64 or offsets_E1.shape != (E + 1,) or int(offsets_E1[0]) != 0
            or int(offsets_E1[-1]) != x_AK.shape[0] or bool((offsets_E1.diff() < 0).any())):
        raise ValueError(f"grouped needs {E + 1} non-decreasing int64 offsets from 0 to {x_AK.shape[0]}")
    return _grouped(x_AK, w_ENK, offsets_E1)


def qgrouped(x_AK: torch.Tensor, codes_ENC: torch.Tensor, scales_ENG: torch.Tensor, bits: int, group: int,
             offsets_E1: torch.Tensor) -> torch.Tensor:
    """`grouped` for quantized experts (herd.quant.schemes: int8 codes [E, N, K] or int4 [E, N, K/2], fp32 scales
    [E, N, ceil(K/group)]) and bf16 rows: y[a] = x[a] @ dequant(w[e])ᵀ, bit for bit `grouped(x, dequant(w))`,
    each block of weight rows dequantized in cache rather than the whole weight to memory. `offsets` as
    `grouped`, not checked here (the caller builds them from counts). Needs `available()`."""
    lib = library()
    if lib is None:
        raise RuntimeError("herd.cpu_kernels.qgrouped is not available on this machine")
    if x_AK.dim() != 2 or codes_ENC.dim() != 3:
        raise ValueError(f"qgrouped takes rows [A, K] and codes [E, N, ...], got {tuple(x_AK.shape)} and "
                         f"{tuple(codes_ENC.shape)}")
    (E, N, _), K = codes_ENC.shape, x_AK.shape[1]
    if (x_AK.dtype != torch.bfloat16 or bits not in (4, 8) or group % 32
            or codes_ENC.shape[2] != (K // 2 if bits == 4 else K) or scales_ENG.shape != (E, N, -(-K // group))
            or scales_ENG.dtype != torch.float32 or not (codes_ENC.is_contiguous() and scales_ENG.is_contiguous())):
        raise ValueError(f"qgrouped takes bf16 rows [A, K] and contiguous {bits}-bit codes and fp32 scales of "
                         f"[E, N, K] in groups of {group}, got {x_AK.dtype} {tuple(x_AK.shape)}, codes "
                         f"{tuple(codes_ENC.shape)}, scales {scales_ENG.dtype} {tuple(scales_ENG.shape)}")
    x_AK, offsets_E1 = x_AK.contiguous(), offsets_E1.to(torch.int64).contiguous()
    y_AN = torch.empty(x_AK.shape[0], N, dtype=torch.bfloat16)
    if x_AK.shape[0] and N and lib.herd_qgrouped_bf16(x_AK.data_ptr(), codes_ENC.data_ptr(), scales_ENG.data_ptr(),
                                                      y_AN.data_ptr(), offsets_E1.data_ptr(), E, N, K, bits, group,
                                                      torch.get_num_threads()):
        raise MemoryError("qgrouped could not allocate its buffers")
    return y_AN


def linear_f32(x_MK: torch.Tensor, w_NK: torch.Tensor) -> torch.Tensor:
    """x @ wᵀ for fp32 CPU tensors ([M, K] × [N, K] → [M, N]): `grouped` with one group, whose offsets need no
    check. One or two rows stream the weight one row at a time, at memory bandwidth; more go in register
    blocks."""
    if x_MK.dtype != torch.float32 or w_NK.dim() != 2:
        raise ValueError(f"linear_f32 needs fp32 [M, K] x [N, K], got {x_MK.dtype} {tuple(x_MK.shape)} x "
                         f"{w_NK.dtype} {tuple(w_NK.shape)}")
    w_1NK = w_NK[None]
    _check_grouped(x_MK, w_1NK)
    return _grouped(x_MK, w_1NK, torch.tensor([0, x_MK.shape[0]]))
