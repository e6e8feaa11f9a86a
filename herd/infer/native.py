"""The decode step as one native call (`herd/csrc/decode.h`), bf16 or fp32, on CPUs with AVX512-BF16.

Compiled by inductor (`herd.fast.CompiledDecode`), a bf16 step of the benchmark model reads its layer
weights at about 20 GB/s and spends ~0.5 ms per call in guards, the graph's Python wrapper and ~160
thread barriers. The native step reads them near memory bandwidth with a few barriers per layer
(docs/BENCHMARKS.md). It computes what `Transformer.hidden` computes for one token per row, rounding to
bf16 where the eager bf16 model rounds, and is tested against it.

The LM head runs in the same call; a bf16 one is read from a packed copy (`herd/csrc/packed.h`). Each row
names its KV slot in the pool (`herd.infer.kv_pool.KVPool`).
`NativeDecode.takes()` says whether it can run a step: the model is bf16 or fp32 on CPU and laid out by
`herd.fast.optimize` (fused q|k|v and gate|up, output-major experts), MoE layers route top-1, the pool has
the weights' dtype, and the kernels are available (`herd.cpu_kernels`). `herd.infer.steps.FastDecode` asks
first and keeps its compiled path otherwise.

The pointers handed to C are rebuilt when a tensor moves. Checking the address of every tensor (~150 for the
benchmark model) costs ~0.2 ms a step, because the step itself has just pushed Python's objects out of the
caches; so every step checks the pool, the embedding (a cast or a move of the model moves it) and the LM head
(which RL writes in place, and whose bf16 packed copy must follow), and every `FULL_CHECK`-th step checks
all. A tensor moved alone in between is read from its old memory, which the step keeps alive until then.

`run()` is the scheduler's form of a step: Python ints in, the logits in a buffer of the step's own (until
the next run) and, on request, each row's greedy token, found by the step's threads while the logits are
still in their caches. Between two steps the scheduler's Python runs with cold caches (~1 µs a touched
object), so this path touches as few as it can.

Shapes: B rows, D model dim, V vocab.
"""

from __future__ import annotations

import ctypes
import logging
import weakref
from ctypes import c_float, c_int32, c_int64, c_void_p

import torch
from torch import nn

from herd import cpu_kernels
from herd.infer.kv_pool import KVPool

log = logging.getLogger("herd")


class _Weight(ctypes.Structure):  # weight_t in decode.h
    _fields_ = [("data", c_void_p), ("scales", c_void_p), ("bits", c_int64), ("group", c_int64), ("act_bits", c_int64)]


_MATRICES = ("wqkv", "wo", "w13", "w2", "shared_w13", "shared_w2")  # the layer's weight_t fields


class _Layer(ctypes.Structure):  # layer_t in decode.h
    _fields_ = [("attention_norm", c_void_p), ("wqkv", _Weight), ("wo", _Weight), ("ffn_norm", c_void_p),
                ("router", c_void_p), ("router_bias", c_void_p), ("w13", _Weight), ("w2", _Weight),
                ("shared_w13", _Weight), ("shared_w2", _Weight), ("k_cache", c_void_p), ("v_cache", c_void_p)]
    _fields_ += [("length", c_int64), ("chunk", c_int64), ("hidden", c_int64), ("rope", c_int32),
                 ("qk_norm", c_int32), ("temperature", c_int32), ("unused", c_int32)]


class _Model(ctypes.Structure):  # model_t in decode.h
    _fields_ = [(name, c_int64) for name in ("vocab", "dim", "n_heads", "n_kv_heads", "head_dim", "n_layers",
                                            "n_experts")]
    _fields_ += [("norm_eps", c_float), ("floor_scale", c_float), ("attn_scale", c_float), ("unused", c_float),
                 ("freq", c_void_p), ("embedding", c_void_p), ("norm", c_void_p), ("output", _Weight),
                 ("layers", ctypes.POINTER(_Layer))]


_STEPS = {torch.bfloat16: "herd_decode_bf16", torch.float32: "herd_decode_f32"}  # the kernel per weight dtype
FULL_CHECK = 32  # steps between two checks of every tensor's address (the module doc)
_PACKED = 1  # weight_t.bits of a bf16 weight in packed.h's layout (decode.h's PACKED)
_ERRORS = {-1: "out of memory for scratch buffers", -2: "a token id outside the vocabulary",
           -3: "a position outside the KV cache", -4: "a slot outside the KV pool", -5: "more rows than 64"}


def _fields(block: nn.Module) -> dict[str, tuple[nn.Module | None, str]]:
    """Where each tensor the kernel reads for one block lives: kernel field → (owner module, attribute).
    The owner is None where `herd.fast.optimize` has not fused the projection."""
    attention, ffn = block.attention, block.feed_forward
    out = {"attention_norm": (block.attention_norm, "weight"), "wqkv": (getattr(attention, "wqkv", None), "weight"),
           "wo": (attention.wo, "weight"), "ffn_norm": (block.ffn_norm, "weight")}
    if block.is_moe:
        shared = ffn.shared_expert
        return out | {"router": (ffn.router, "weight"), "router_bias": (ffn, "router_bias"),
                      "w13": (ffn.experts, "w13"), "w2": (ffn.experts, "w2"),
                      "shared_w13": (getattr(shared, "w13", None), "weight"), "shared_w2": (shared.w2, "weight")}
    return out | {"w13": (getattr(ffn, "w13", None), "weight"), "w2": (ffn.w2, "weight")}


def _attrs(owner: nn.Module, attr: str) -> tuple[str, ...]:
    """The attributes of `owner` the kernel reads for the weight `attr`: the weight itself, or for a quantized
    module (`herd.quant`) its codes and scales (`codes`/`scales`, or `w13_codes`/`w13_scales` for experts)."""
    if getattr(owner, "scheme", None) is None:
        return (attr,)
    prefix = "" if attr == "weight" else f"{attr}_"
    return f"{prefix}codes", f"{prefix}scales"


def _stored(owner: nn.Module | None, attr: str) -> tuple[torch.Tensor, torch.Tensor | None, int, int, int] | None:
    """A weight matrix as the kernel reads it: (data, scales, bits, group, act_bits). Plain: the tensor (bits
    0); a quantized module: its codes and scales. None where absent."""
    if owner is None:
        return None
    tensors = [getattr(owner, a, None) for a in _attrs(owner, attr)]
    if tensors[0] is None:
        return None
    if len(tensors) == 1:
        return tensors[0], None, 0, 0, 0
    return tensors[0], tensors[1], owner.scheme.bits, owner.scheme.group, owner.scheme.act_bits


def _weights(block: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor | None, int, int, int] | None]:
    """The tensors of `_fields(block)` themselves (None where a projection is not fused, or no bias)."""
    return {name: _stored(owner, attr) for name, (owner, attr) in _fields(block).items()}


def _layout_error(name: str, stored: tuple | None, moe: bool, dtype: torch.dtype) -> str | None:
    if stored is None:
        return None if name == "router_bias" else f"no fused {name} (run herd.fast.optimize)"
    if name == "router_bias":
        return None
    t, scales, bits, group, act_bits = stored
    if act_bits and (act_bits != 8 or not cpu_kernels.reads_bf16(bits, group)):
        return f"{name}: no product kernel for int{bits} in groups of {group} with int{act_bits} activations"
    if bits:  # quantized: codes and scales stored row by row, experts output-major already
        if t.dtype != torch.int8 or scales.dtype != torch.float32 or t.device.type != "cpu" or group % 32:
            return f"{name}: codes {t.dtype} / scales {scales.dtype} on {t.device} (group {group})"
        if dtype == torch.bfloat16 and not cpu_kernels.reads_bf16(bits, group):
            return f"{name}: int{bits} in groups of {group} has no bf16 product kernel"
        return None if t.is_contiguous() and scales.is_contiguous() else f"{name}: codes or scales not contiguous"
    if t.dtype != dtype or t.device.type != "cpu":
        return f"{name} is {t.dtype} on {t.device}, not {dtype} on CPU"
    # routed experts: output-major storage ([E, 2F, D], [E, D, F]) behind input-major views
    stored_t = t.transpose(1, 2) if moe and name in ("w13", "w2") else t
    return None if stored_t.is_contiguous() else f"{name} is not stored as the kernel reads it"


def _weight(stored: tuple | None) -> _Weight:
    if stored is None:
        return _Weight()
    t, scales, bits, group, act_bits = stored
    return _Weight(t.data_ptr(), scales.data_ptr() if scales is not None else None, bits, group, act_bits)


class NativeDecode:
    """The native decode step for a model laid out by `herd.fast.optimize`; see the module doc."""

    def __init__(self, model: nn.Module, max_batch: int = 64) -> None:
        self.model, self.max_batch = model, max_batch
        self.enabled = True
        self.reason = "not checked yet"  # why the last check refused, for logs and tests
        self._key: tuple | None = None
        self._quick: tuple | None = None
        self._steps = 0
        self._pool: weakref.ref = lambda: None
        self._watching: list[tuple[dict, str]] = []
        self._ok = False
        self._keep: list[torch.Tensor] = []
        self._alive: list[torch.Tensor] = []  # aliases of the weights read: a moved one stays valid until noticed
        self._ints = (c_int64 * max_batch)(), (c_int64 * max_batch)(), (c_int64 * max_batch)(), (c_int64 * max_batch)()
        self._outputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # rows -> run()'s hidden and logits
        self.pack_head = True  # the bf16 LM head read from a packed copy (packed.h); False: the weight itself
        self._head: torch.Tensor | None = None  # the weight the packed copy was made from, and the copy
        self._head_version = -1
        self._packed: torch.Tensor | None = None

    def _watch(self) -> list[tuple[dict, str]]:
        """Where every weight the kernel reads is held, as (the module dict holding it, key): their addresses
        key the built pointers. Dicts, not `getattr`: a module attribute lookup costs ~0.6 µs, ~100 per step.
        (The pool's tensors are read from the pool itself, so that nothing here keeps a dropped pool alive.)"""
        m = self.model
        owners: list[tuple[object, str]] = [(m.tok_embeddings, "weight"), (m.norm, "weight"), (m, "freq_K2")]
        fields = [(m.output, "weight")] + [f for block in m.layers for f in _fields(block).values()]
        owners += [(owner, a) for owner, attr in fields if _stored(owner, attr) is not None
                   for a in _attrs(owner, attr)]
        out = []
        for owner, attr in owners:
            stores = [getattr(owner, "_parameters", {}), getattr(owner, "_buffers", {}), owner.__dict__]
            out.append(next((store, attr) for store in stores if attr in store))
        return out

    def _check(self, pool: KVPool) -> str | None:
        """Why the kernel cannot take steps for this model and pool, or None."""
        m, c = self.model, self.model.config
        if not cpu_kernels.available():
            return "no native kernels here (herd.cpu_kernels)"
        embedding = m.tok_embeddings.weight
        dtype = embedding.dtype
        if dtype not in _STEPS or embedding.device.type != "cpu":
            return f"weights are {dtype} on {embedding.device}, not bf16 or fp32 on CPU"
        if c.n_experts and c.top_k != 1:
            return f"top-{c.top_k} routing (the kernel routes top-1)"
        if len(pool.layers) != c.n_layers:
            return f"a KV pool of {len(pool.layers)} layers for {c.n_layers}"
        model_level = (embedding, m.norm.weight)
        if not all(t.dtype == dtype and t.is_contiguous() and t.device.type == "cpu" for t in model_level):
            return f"embedding or final norm not {dtype} and contiguous"
        error = _layout_error("LM head", _stored(m.output, "weight"), False, dtype)
        if error:
            return error
        if getattr(m.output, "bias", None) is not None:
            return "an LM head with a bias"
        for i, (block, layer) in enumerate(zip(m.layers, pool.layers, strict=True)):
            for name, t in _weights(block).items():
                error = _layout_error(name, t, block.is_moe, dtype)
                if error:
                    return f"layer {i}: {error}"
            for t in (layer.k_SGLK, layer.v_SGLK):
                if t.dtype != dtype or not t.is_contiguous() or t.device.type != "cpu":
                    return f"layer {i}: KV cache is {t.dtype} on {t.device}, contiguous={t.is_contiguous()}"
                if (t.shape[1], t.shape[3]) != (c.n_kv_heads, c.head_dim):
                    return f"layer {i}: KV cache of shape {tuple(t.shape)} for this model"
        return None

    def _build(self, pool: KVPool) -> None:
        m, c = self.model, self.model.config
        self.reason = self._check(pool) or ""
        self._ok = not self.reason
        if not self._ok:
            log.debug("herd.infer.native: not used: %s", self.reason)
            return
        freq_K2 = m.freq_K2.float().contiguous()
        self._keep = [freq_K2]
        layers = (_Layer * c.n_layers)()
        for i, (block, layer) in enumerate(zip(m.layers, pool.layers, strict=True)):
            weights = _weights(block)
            if weights.get("router_bias") is not None:  # the eager model adds it in the logits' dtype
                bias = weights["router_bias"][0].to(m.tok_embeddings.weight.dtype).contiguous()
                weights["router_bias"] = (bias, None, 0, 0)
                self._keep.append(bias)
            for name, stored in weights.items():
                if name in _MATRICES:
                    setattr(layers[i], name, _weight(stored))
                else:
                    setattr(layers[i], name, stored[0].data_ptr() if stored is not None else None)
            attention = block.attention
            layers[i].k_cache, layers[i].v_cache = layer.k_SGLK.data_ptr(), layer.v_SGLK.data_ptr()
            layers[i].length, layers[i].chunk = layer.k_SGLK.shape[2], layer.chunk or 0
            ffn = block.feed_forward  # the hidden size F: the inputs of the dense or the shared expert's w2
            layers[i].hidden = (ffn.shared_expert if block.is_moe else ffn).w2.in_features
            layers[i].rope, layers[i].qk_norm = attention.use_rope, attention.use_qk_norm
            layers[i].temperature = attention.temperature_tuning
        self._layers = layers
        self._alive = [store[name].detach() for store, name in self._watching]
        self._step_fn = getattr(cpu_kernels.library(), _STEPS[m.tok_embeddings.weight.dtype])
        self._outputs = {}
        self._model = _Model(vocab=c.vocab_size, dim=c.dim, n_heads=c.n_heads, n_kv_heads=c.n_kv_heads,
                             head_dim=c.head_dim, n_layers=c.n_layers, n_experts=c.n_experts,
                             norm_eps=c.norm_eps, floor_scale=c.floor_scale, attn_scale=c.attn_scale,
                             freq=freq_K2.data_ptr(), embedding=m.tok_embeddings.weight.data_ptr(),
                             norm=m.norm.weight.data_ptr(), output=self._output(_stored(m.output, "weight")),
                             layers=layers)

    def _output(self, stored: tuple) -> _Weight:
        """The LM head as the step reads it. A bf16 head is packed into a copy of its own (packed.h: the
        products of many rows run about twice as fast as row by row; it costs the head's size in memory
        again), remade when the weight moves or is written in place."""
        t, _, bits, _, _ = stored
        if not (self.pack_head and bits == 0 and t.dtype == torch.bfloat16 and t.shape[1] % 2 == 0):
            self._head = self._packed = None
            return _weight(stored)
        if self._packed is None or self._head is not t or self._head_version != t._version:
            self._packed = None  # the old copy goes before the new one is made
            self._packed, self._head, self._head_version = cpu_kernels.pack_bf16(t), t, t._version
        return _Weight(self._packed.data_ptr(), None, _PACKED, 0)

    def takes(self, tokens_B1: torch.Tensor, pool: KVPool) -> bool:
        """Whether the native kernel runs this step (checked again whenever a tensor has moved)."""
        return tokens_B1.device.type == "cpu" and tokens_B1.shape[1] == 1 and self.ready(tokens_B1.shape[0], pool)

    def ready(self, rows: int, pool: KVPool) -> bool:
        """Whether the native kernel runs a step of `rows` rows on `pool` (see the module doc for what is
        checked every step)."""
        if not self.enabled or rows > self.max_batch:
            return False
        if self._pool() is not pool:  # a weak reference: a dropped pool is freed
            self._pool, self._watching = weakref.ref(pool), self._watch()
            self._key = None
        self._steps += 1
        quick = self._quick_of()
        if self._key is None or self._steps % FULL_CHECK == 0 or quick[:4] != self._quick[:4]:
            if self._key_of(pool) != self._key:
                self._build(pool)  # moves neither the embedding nor the head: `quick` stays true
                self._key = self._key_of(pool)
            self._quick = quick
        return self._ok

    def _key_of(self, pool: KVPool) -> tuple:
        """The addresses of every tensor the step reads, and the version of the packed head's source."""
        return (*(store[name].data_ptr() for store, name in self._watching),
                *(t.data_ptr() for layer in pool.layers for t in (layer.k_SGLK, layer.v_SGLK)),
                self._head._version if self._head is not None else None)

    def _quick_of(self) -> tuple:
        """What every step checks: the embedding's address, and the LM head's address, version and id (the
        tuple holds the head itself, so that the id cannot pass to another tensor)."""
        (embeddings, e), (heads, h) = self._watching[0], self._watching[3]  # _watch's order
        head = heads[h]
        return embeddings[e].data_ptr(), head.data_ptr(), head._version, id(head), head

    def __call__(self, tokens_B1: torch.Tensor, positions_B: torch.Tensor, slots_B: torch.Tensor, pool: KVPool,
                 logits: bool = True) -> torch.Tensor:
        """The logits [B, V] (or with `logits=False` the final-norm hidden states [B, D]) of one token per
        row, row b in slot slots_B[b] at position positions_B[b], its keys written to the pool; call after
        `takes()` said yes for this pool."""
        tokens_B = tokens_B1.reshape(-1).to(torch.int64).contiguous()
        positions_B = positions_B.to(device="cpu", dtype=torch.int64).contiguous()
        slots_B = slots_B.to(device="cpu", dtype=torch.int64).contiguous()
        rows, c, dtype = tokens_B.shape[0], self.model.config, self.model.tok_embeddings.weight.dtype
        if positions_B.shape != (rows,) or slots_B.shape != (rows,):
            raise ValueError(f"{rows} tokens but positions of shape {tuple(positions_B.shape)} and slots of shape "
                             f"{tuple(slots_B.shape)}")
        hidden_BD = torch.empty(rows, c.dim, dtype=dtype)
        logits_BV = torch.empty(rows, c.vocab_size, dtype=dtype) if logits else None
        status = self._step_fn(ctypes.byref(self._model), tokens_B.data_ptr(), positions_B.data_ptr(),
                               slots_B.data_ptr(), c_int64(pool.slots), rows, hidden_BD.data_ptr(),
                               logits_BV.data_ptr() if logits else None, None, -1, torch.get_num_threads())
        if status:
            self._refused(status, tokens_B.tolist(), positions_B.tolist(), slots_B.tolist())
        return logits_BV if logits else hidden_BD

    def run(self, tokens: list[int], positions: list[int], slots: list[int], pool: KVPool,
            greedy: bool = False, wake_fd: int = -1) -> tuple[torch.Tensor, list[int] | None]:
        """The step on Python ints (row b: token tokens[b] at position positions[b] of slot slots[b]): the logits
        [B, V], in a buffer that the next `run` overwrites, and with `greedy` each row's first largest logit's
        id (a NaN counting as the largest, as torch.argmax). With `wake_fd`, one byte is written to that file
        descriptor as the LM head starts. Call after `ready()` said yes for this pool."""
        rows = len(tokens)
        ids, at, where, best = self._ints
        ids[:rows], at[:rows], where[:rows] = tokens, positions, slots
        outputs = self._outputs.get(rows)
        if outputs is None:
            c, dtype = self.model.config, self.model.tok_embeddings.weight.dtype
            outputs = self._outputs[rows] = (torch.empty(rows, c.dim, dtype=dtype),
                                             torch.empty(rows, c.vocab_size, dtype=dtype))
        hidden_BD, logits_BV = outputs
        status = self._step_fn(ctypes.byref(self._model), ids, at, where, pool.slots, rows, hidden_BD.data_ptr(),
                               logits_BV.data_ptr(), best if greedy else None, wake_fd, torch.get_num_threads())
        if status:
            self._refused(status, list(tokens), list(positions), list(slots))
        return logits_BV, best[:rows] if greedy else None

    @staticmethod
    def _refused(status: int, tokens: list[int], positions: list[int], slots: list[int]) -> None:
        raise ValueError(f"native decode step refused: {_ERRORS.get(status, status)} (tokens {tokens}, positions "
                         f"{positions}, slots {slots})")
