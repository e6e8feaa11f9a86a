"""Loading and saving checkpoints: HF safetensors (single or sharded) and Meta consolidated .pth.

- The model is built on the meta device and filled with `load_state_dict(assign=True)` from
  tensors read one by one (memory-mapped safetensors, `torch.load(mmap=True, weights_only=True)`),
  so peak memory stays near the size of the weights.
- Loading is strict: a missing, unexpected or misshapen tensor is an error naming the key, the
  file and both shapes. A checkpoint with vision weights loads the multimodal model, unless
  `text_only=True` asks for the text model alone (the vision tensors are then skipped, with a log line).
- Saving writes HF safetensors shards, the index and `config.json` (`Llama4ForCausalLM`, or
  `Llama4ForConditionalGeneration` with a vision tower), each file atomically.
"""

from __future__ import annotations

import io
import json
import logging
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from herd.config import ConfigError, ModelConfig
from herd.formats import hf, meta
from herd.model import Transformer
from herd.quant.apply import DEFAULT_GROUPS, check_groups, quantize_structure, quantized_stream, stored_names
from herd.quant.schemes import QuantError, scheme

log = logging.getLogger("herd")

INDEX_NAME = "model.safetensors.index.json"


class CheckpointError(Exception):
    """A checkpoint that cannot be loaded as asked; the message names the file, key and shapes."""


def detect_format(path: Path) -> str:
    """"hf" for config.json + *.safetensors, "meta" for params.json + consolidated.*.pth."""
    if not path.exists():
        raise CheckpointError(f"checkpoint path does not exist: {path}")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint path must be a directory, got a file: {path}")
    if (path / "config.json").exists():
        return "hf"
    if (path / "params.json").exists():
        return "meta"
    raise CheckpointError(
        f"{path} is not a checkpoint directory: expected config.json + *.safetensors (HF) "
        "or params.json + consolidated.*.pth (Meta)"
    )


def read_config(path: str | os.PathLike) -> ModelConfig:
    """The model config of an HF or Meta checkpoint directory, read strictly."""
    path = Path(path)
    fmt = detect_format(path)
    name = "config.json" if fmt == "hf" else "params.json"
    try:
        raw = json.loads((path / name).read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path / name} is not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path / name}: expected a JSON object at the top level, found {type(raw).__name__}")
    try:
        return hf.model_config_from_hf(raw, str(path / name)) if fmt == "hf" else meta.model_config_from_params(
            raw, str(path / name)
        )
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{path / name}: invalid or missing value: {err!r}") from None


def read_quantization(path: str | os.PathLike) -> dict | None:
    """The `quantization_config` of a checkpoint herd quantized (`herd quantize`), checked; None for others."""
    path = Path(path)
    if detect_format(path) != "hf":
        return None
    try:
        raw = json.loads((path / "config.json").read_text()).get("quantization_config")
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path / 'config.json'} is not valid JSON: {err}") from None
    if raw is None or (isinstance(raw, dict) and raw.get("quant_method") in hf.FP8_METHODS):
        return None  # none, or fp8 weights, which the reader dequantizes
    try:
        s = scheme(raw["scheme"])
        groups = check_groups(raw["modules"])
        if raw.get("bits", s.bits) != s.bits or raw.get("group_size", s.group) != s.group:
            raise QuantError(f"bits {raw.get('bits')} / group_size {raw.get('group_size')} do not match "
                             f"scheme {s.name}")
    except (KeyError, TypeError, QuantError) as err:
        raise CheckpointError(f"{path / 'config.json'}: invalid quantization_config: {err}") from None
    return {"scheme": s.name, "groups": groups}


def load(
    path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    text_only: bool = False,
    quantize: str | None = None,
    quantize_groups: tuple[str, ...] = DEFAULT_GROUPS,
) -> Transformer:
    """Load a checkpoint directory (HF or Meta format) into a herd model in eval mode.

    `dtype=None` keeps the stored dtype (that of the first tensor, for all of them, should a
    checkpoint mix dtypes). With vision weights present the model has its vision tower
    (`model.vision`), unless `text_only=True`. `quantize="int8"|"int4"|…` (`herd.quant.SCHEMES`) quantizes
    the `quantize_groups` (`herd.quant.apply`) while reading, one tensor at a time; a checkpoint written by
    `herd quantize` loads quantized as stored, or in a scheme with the same codes and scales that differs
    only in its activations (`int4` as `int4-a8` and back).
    """
    path = Path(path)
    fmt = detect_format(path)
    config = read_config(path)
    stored = read_quantization(path)
    if stored and quantize:
        wanted, have = scheme(quantize), scheme(stored["scheme"])
        if (wanted.bits, wanted.group) != (have.bits, have.group):
            raise CheckpointError(f"{path} is already quantized ({have.name}); it cannot be loaded as {wanted.name}")
        stored = {**stored, "scheme": wanted.name}  # the same codes and scales, read as the scheme asked for
    if fmt == "hf":
        files = _hf_weight_map(path)
        vision_keys = [n for n in files if n.startswith(hf.VISION_PREFIXES)]
    else:
        files, shards, keys = _meta_shards(path, config.text.n_experts)
        vision_keys = [k for k in keys if k.startswith(meta.VISION_PREFIXES)]
    if vision_keys and config.vision is None:
        raise CheckpointError(f"{path}: {len(vision_keys)} vision tensors (e.g. {vision_keys[0]!r}) but the config "
                              "describes no vision model")
    vision = config.vision if vision_keys and not text_only else None
    if vision_keys and vision is None:
        log.warning("%s: skipping %d vision tensors (text_only=True)", path, len(vision_keys))
    with torch.device("meta"):
        model = Transformer(config.text, vision)
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    replaced: set[str] = set()
    if stored or quantize:
        plan = stored or {"scheme": scheme(quantize).name, "groups": check_groups(quantize_groups)}
        replaced = quantize_structure(model, plan["scheme"], plan["groups"])
        expected |= {name: tuple(t.shape) for name, t in model.state_dict().items()}
    quantized = {q for name in replaced for q in stored_names(name)}
    if fmt == "hf":
        prefix = hf.MULTIMODAL_PREFIX if any(n.startswith(hf.MULTIMODAL_PREFIX) for n in files) else ""
        names = hf.text_weight_names(config.text, prefix) | (hf.vision_weight_names(vision) if vision else {})
        if stored:
            names = _stored_quantized_names(names, replaced)
        try:
            sources = hf.fp8_sources(files) if _needs_sources(files) else None
        except ValueError as err:
            raise CheckpointError(f"{path}: {err}") from None
        present = set(sources) if sources is not None else set(files)
        _check_coverage(path, present - (set(vision_keys) if vision is None else set()), set(names.values()), "HF")
        tensors = _read_hf(names, files, expected, quantized, sources, fresh=bool(quantize and not stored))
    else:
        rules = meta.text_rules(config.text) | (meta.vision_rules(vision) if vision else {})
        wanted = {source for rule in rules.values() for source in rule.sources}
        _check_coverage(path, keys - (set(vision_keys) if vision is None else set()), wanted, "Meta")
        tensors = _read_meta(path, shards, rules, expected)
    if quantize and not stored:
        tensors = quantized_stream(tensors, replaced, quantize)
    state = {}
    for name, tensor in tensors:
        if name in quantized:  # codes stay int8, scales fp32
            state[name] = tensor.to(device=device, dtype=torch.float32 if tensor.is_floating_point() else None)
            continue
        dtype = dtype or tensor.dtype  # None: the stored dtype of the first tensor, for all of them
        state[name] = tensor.to(device=device, dtype=dtype)
    model.load_state_dict(state, strict=True, assign=True)
    model.init_buffers()
    return model.eval()


def _check_shape(name: str, source: str, where: Path, found: tuple[int, ...], want: tuple[int, ...]) -> None:
    if found != want:
        raise CheckpointError(
            f"{where}: tensor {source!r} (herd {name!r}) has shape {list(found)}, expected {list(want)}"
        )


def _check_float(name: str, source: str, where: Path, tensor: torch.Tensor) -> None:
    if not tensor.is_floating_point():
        raise CheckpointError(f"{where}: tensor {source!r} (herd {name!r}) has dtype {tensor.dtype}, "
                              "expected a floating-point type (quantized checkpoints are not supported yet)")


def _hf_weight_map(path: Path) -> dict[str, Path]:
    """HF tensor name -> file, from the shard index or from the single safetensors file."""
    index = path / INDEX_NAME
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise CheckpointError(f"{index}: not a valid safetensors index ({err!r})") from None
        files = {name: path / file for name, file in weight_map.items()}
        for file in sorted(set(files.values())):
            if not file.exists():
                raise CheckpointError(f"{index} lists shard {file.name}, which is missing from {path}")
        return files
    singles = sorted(path.glob("*.safetensors"))
    if not singles:
        raise CheckpointError(f"{path}: no *.safetensors weights and no {INDEX_NAME}")
    if len(singles) > 1:
        raise CheckpointError(f"{path}: several .safetensors files but no {INDEX_NAME} saying which holds what")
    return {name: singles[0] for name in _open_safetensors(singles[0]).keys()}  # noqa: SIM118


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                       "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


class _FreshReader:
    """Reads one tensor at a time of a safetensors file into memory of its own, with the file's header
    (8-byte length, JSON of dtype, shape and data offsets). safetensors' own reader hands out views of one
    mapping of the whole file, whose pages stay resident until every view is gone; when a load quantizes,
    that made its peak the quantized model plus a whole shard. Here a tensor's bytes are freed with it."""

    def __init__(self, file: Path) -> None:
        self.file = file
        try:
            self.f = open(file, "rb")  # noqa: SIM115 (closed by __exit__)
            (n,) = struct.unpack("<Q", self.f.read(8))
            self.header = json.loads(self.f.read(n))
        except (OSError, struct.error, ValueError) as err:
            raise CheckpointError(f"{file}: not a readable safetensors file (truncated or corrupt?): {err}") from None
        self.base = 8 + n

    def get_tensor(self, name: str) -> torch.Tensor:
        entry = self.header[name]
        (begin, end), dtype = entry["data_offsets"], _SAFETENSORS_DTYPES[entry["dtype"]]
        raw = torch.empty(end - begin, dtype=torch.uint8)
        self.f.seek(self.base + begin)
        if self.f.readinto(raw.numpy()) != end - begin:
            raise ValueError(f"the file ends inside tensor {name!r}")
        return raw.view(dtype).reshape(entry["shape"])

    def __exit__(self, *exc: object) -> None:
        self.f.close()


def _open_safetensors(file: Path) -> Any:
    try:
        return safe_open(str(file), framework="pt", device="cpu")
    except Exception as err:  # safetensors raises its own error types for truncated or corrupt headers
        raise CheckpointError(f"{file}: not a readable safetensors file (truncated or corrupt?): {err}") from None


def _stored_quantized_names(names: dict[str, str], replaced: set[str]) -> dict[str, str]:
    """herd name -> HF name with each quantized weight's entry replaced by its codes and scales."""
    out = {}
    for ours, theirs in names.items():
        if ours in replaced:
            out.update(zip(stored_names(ours), stored_names(theirs), strict=True))
        else:
            out[ours] = theirs
    return out


def _needs_sources(files: dict[str, Path]) -> bool:
    """Whether the HF files hold fp8 weights with scales, or experts stored one Linear each."""
    return any(n.endswith("_scale") or ".experts.0." in n for n in files)


def _read_hf(
    names: dict[str, str], files: dict[str, Path], expected: dict[str, tuple[int, ...]],
    quantized: set[str] = frozenset(), sources: dict[str, hf.Source] | None = None, fresh: bool = False,
) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of `names` (herd name -> HF name) in order, checked. `fresh`: each read into memory of its
    own (`_FreshReader`), for loads that transform tensors and drop them."""
    handles: dict[Path, Any] = {}
    # Close each file after the last tensor read from it.
    reads = [p for theirs in names.values() for p in (sources[theirs].parts if sources is not None else (theirs,)) if p]
    last_use = {files[name]: i for i, name in enumerate(reads)}
    read_count = 0

    def get(name: str) -> torch.Tensor:
        nonlocal read_count
        file = files[name]
        if file not in handles:
            handles[file] = _FreshReader(file) if fresh else _open_safetensors(file)
        try:
            tensor = handles[file].get_tensor(name)
        except Exception as err:
            raise CheckpointError(f"{file}: cannot read tensor {name!r}: {err}") from None
        read_count += 1
        if last_use[file] < read_count:
            handles.pop(file).__exit__(None, None, None)
        return tensor

    for ours, theirs in names.items():
        if sources is not None and sources[theirs].kind != "plain":  # fp8 dequantized, or experts stacked
            source = sources[theirs]
            file = files[source.parts[0]]
            try:
                tensor = hf.build_source(source, get)
            except (RuntimeError, ValueError) as err:
                raise CheckpointError(f"{file}: cannot dequantize {', '.join(p for p in source.parts if p)} into "
                                      f"{theirs!r}: {err}") from None
            _check_shape(ours, theirs, file, tuple(tensor.shape), expected[ours])
            yield ours, tensor
            continue
        file = files[theirs]
        tensor = get(theirs)
        _check_shape(ours, theirs, file, tuple(tensor.shape), expected[ours])
        if ours in quantized and ours.endswith("codes"):
            if tensor.dtype not in (torch.int8, torch.uint8):
                raise CheckpointError(f"{file}: tensor {theirs!r} (herd {ours!r}) holds {tensor.dtype} codes, "
                                      "expected int8")
        else:
            _check_float(ours, theirs, file, tensor)
        yield ours, tensor


def _check_coverage(path: Path, present: set[str], wanted: set[str], fmt: str) -> None:
    missing, unexpected = sorted(wanted - present), sorted(present - wanted)
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise CheckpointError(f"{path}: {fmt} checkpoint is missing tensor(s) {', '.join(missing[:5])}{more}")
    if unexpected:
        more = f" (and {len(unexpected) - 5} more)" if len(unexpected) > 5 else ""
        raise CheckpointError(f"{path}: {fmt} checkpoint has unexpected tensor(s) {', '.join(unexpected[:5])}{more}")


def _load_pth(file: Path) -> dict[str, torch.Tensor]:
    try:
        # Released files hold io.BytesIO `_extra_state` values; allow that one harmless type only.
        with torch.serialization.safe_globals([io.BytesIO]):
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise CheckpointError(f"{file}: cannot be read as a PyTorch checkpoint (truncated or corrupt?): {err}") \
            from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{file}: expected a dict of tensors, found {type(state).__name__}")
    return state


def _meta_shards(path: Path, n_experts: int) -> tuple[list[Path], list[dict[str, torch.Tensor]], set[str]]:
    """The shard files, their (memory-mapped) contents, and the tensor names every shard holds."""
    files = sorted(path.glob("consolidated.*.pth"))
    if not files:
        raise CheckpointError(f"{path}: params.json found but no consolidated.*.pth weight files")
    numbers = [int(f.name.split(".")[1]) for f in files]
    if numbers != list(range(len(files))):
        names = [f.name for f in files]
        raise CheckpointError(f"{path}: shard files are not numbered 00..{len(files) - 1:02d}: {names}")
    shards = [_load_pth(f) for f in files]
    if any(path.glob("int4_scales_*.pt")):
        raise CheckpointError(f"{path}: a pre-quantized int4 checkpoint of Meta's scripts/quantize.py, which Meta's "
                              "own loader does not read consistently (spec §7.2); load the bf16 release with "
                              "quantize='int4-g128' (the same int4_mixed scheme) instead")
    fp8 = sorted(path.glob("fp8_scales_*.pt"))
    if fp8:
        if [f.name for f in fp8] != [f"fp8_scales_{i}.pt" for i in range(len(files))]:
            raise CheckpointError(f"{path}: fp8 scale files {[f.name for f in fp8]} do not match the "
                                  f"{len(files)} shard(s)")
        try:
            shards = [meta.DequantizedShard(s, _load_pth(f), n_experts) for s, f in zip(shards, fp8, strict=True)]
        except ValueError as err:
            raise CheckpointError(f"{path}: {err}") from None
    keys = [{k for k in s if not meta.is_dropped(k)} for s in shards]
    for file, k in zip(files[1:], keys[1:], strict=True):
        if k != keys[0]:
            diff = sorted(k ^ keys[0])[:5]
            raise CheckpointError(f"{file}: holds different tensors than {files[0].name}, e.g. {diff}")
    return files, shards, keys[0]


def _read_meta(
    path: Path, shards: list[dict[str, torch.Tensor]], rules: dict[str, meta.Rule],
    expected: dict[str, tuple[int, ...]],
) -> Iterator[tuple[str, torch.Tensor]]:
    for ours, rule in rules.items():
        parts = [shard[source] for source in rule.sources for shard in shards]
        try:
            tensor = rule.merge(parts)
        except RuntimeError as err:
            shapes = [list(p.shape) for p in parts]
            raise CheckpointError(
                f"{path}: cannot merge {', '.join(rule.sources)} (shard shapes {shapes}) into herd {ours!r} "
                f"of shape {list(expected[ours])}: {err}"
            ) from None
        _check_shape(ours, " + ".join(rule.sources), path, tuple(tensor.shape), expected[ours])
        _check_float(ours, " + ".join(rule.sources), path, tensor)
        yield ours, tensor.contiguous()


def _atomic(file: Path) -> Path:
    return file.with_name(f".{file.name}.tmp")


def save(model: Transformer, path: str | os.PathLike, max_shard_bytes: int = 5 * 2**30) -> None:
    """Write `model` as an HF checkpoint (sharded safetensors + index + config.json) that
    transformers loads: `Llama4ForCausalLM`, or `Llama4ForConditionalGeneration` with vision."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vision = model.vision.config if model.vision is not None else None
    names = hf.text_weight_names(model.config, hf.MULTIMODAL_PREFIX if vision else hf.TEXT_ONLY_PREFIX)
    names |= hf.vision_weight_names(vision) if vision else {}
    state = model.state_dict()
    quantization = getattr(model, "quantization", None)
    if quantization:
        names = _stored_quantized_names(names, {n for n in names if n not in state and stored_names(n)[0] in state})
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for ours, theirs in names.items():
        tensor = state[ours].detach().to("cpu").contiguous()
        if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
            tensor = tensor.clone()  # a view into a larger (e.g. fused) weight: safetensors wants its own
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][theirs] = tensor
        size += nbytes
    n = len(shards)
    for stale in [*path.glob("model*.safetensors"), path / INDEX_NAME]:
        stale.unlink(missing_ok=True)  # a previous save with another shard count must not linger
    weight_map = {}
    for i, shard in enumerate(shards):
        file = path / ("model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors")
        save_file(shard, str(_atomic(file)), metadata={"format": "pt"})
        os.replace(_atomic(file), file)
        weight_map.update({name: file.name for name in shard})
    dtype = str(model.tok_embeddings.weight.dtype).removeprefix("torch.")
    files = {"config.json": hf.model_config_to_hf(ModelConfig(model.config, vision), dtype)}
    if quantization:
        s = scheme(quantization["scheme"])
        files["config.json"]["quantization_config"] = {
            "quant_method": "herd", "scheme": s.name, "bits": s.bits, "group_size": s.group,
            "modules": list(quantization["groups"]),
            "layout": "per output row: int8 codes (int4: two per byte, even input in the low nibble) "
                      "[out, in or in/2] as <name>.codes, fp32 scales [out, ceil(in/group_size)] as <name>.scales; "
                      "routed experts output-major [E, out, ...] as <name>_codes / <name>_scales",
        }
    if n > 1:
        total = sum(t.numel() * t.element_size() for s in shards for t in s.values())
        files[INDEX_NAME] = {"metadata": {"total_size": total}, "weight_map": weight_map}
    for name, content in files.items():
        _atomic(path / name).write_text(json.dumps(content, indent=2) + "\n")
        os.replace(_atomic(path / name), path / name)
