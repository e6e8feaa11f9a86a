"""Bad checkpoints fail loudly: a CheckpointError or ConfigError that names the file, key and shapes.

Every case starts from a good tiny checkpoint (herd's own HF save, transformers' sharded save, or
Meta's reference layout from meta_oracle), breaks one thing, and checks the message.
"""

import builtins
import io
import json
import os
import pickle
import re
import shutil

import pytest
import torch
from hf_oracle import SCOUT_LIKE, causal_lm, conditional_generation, save_hf
from meta_oracle import build_meta_model, meta_params, write_meta_checkpoint
from safetensors.torch import load_file, save_file

import herd
from herd import CheckpointError, ConfigError

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
K_PROJ = "model.layers.1.self_attn.k_proj.weight"  # [n_kv_heads·head_dim, dim] = [32, 64] in SCOUT_LIKE


def message(*parts):
    """A `match=` pattern that requires every part, literally and in any order."""
    return "".join(f"(?=[\\s\\S]*{re.escape(str(p))})" for p in parts)


def clone(src, dst):
    shutil.copytree(src, dst)
    return dst


def edit_json(file, fn):
    raw = json.loads(file.read_text())
    fn(raw)
    file.write_text(json.dumps(raw))


# ---------------------------------------------------------------------------------------------
# Good checkpoints, built once per module and copied before each edit.


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """herd's own single-file HF save of SCOUT_LIKE."""
    path = tmp_path_factory.mktemp("hf")
    herd.save(herd.build(SCOUT_LIKE, seed=0), path)
    assert sorted(p.name for p in path.iterdir()) == ["config.json", WEIGHTS]
    return path


@pytest.fixture(scope="module")
def hf_sharded_dir(tmp_path_factory):
    """transformers' own sharded save (index + several shards)."""
    path = tmp_path_factory.mktemp("hf_sharded")
    save_hf(causal_lm(SCOUT_LIKE), path, max_shard_size="100KB")
    assert (path / INDEX).exists() and len(list(path.glob("*.safetensors"))) > 2
    return path


@pytest.fixture(scope="module")
def hf_multimodal_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf_mm")
    return save_hf(conditional_generation(SCOUT_LIKE), path)


@pytest.fixture(scope="module")
def meta_dirs(tmp_path_factory):
    """Meta's released layout of one tiny Scout-like model, as 1 and as 2 model-parallel shards."""
    params = meta_params()
    ref = build_meta_model(params, seed=0)
    dirs = {}
    for n in (1, 2):
        dirs[n] = tmp_path_factory.mktemp(f"meta{n}")
        write_meta_checkpoint(ref, dirs[n], params, n_shards=n, extra_state="bytesio")
    return dirs


def test_good_checkpoints_load(hf_dir, hf_sharded_dir, meta_dirs):
    """The baselines are sound, so each failure below is caused by the one thing broken."""
    for path in (hf_dir, hf_sharded_dir, meta_dirs[1], meta_dirs[2]):
        herd.load(path)


# ---------------------------------------------------------------------------------------------
# Paths.


def test_path_does_not_exist(tmp_path):
    path = tmp_path / "no-such-checkpoint"
    with pytest.raises(CheckpointError, match=message("does not exist", path)):
        herd.load(path)


def test_path_is_a_file(hf_dir):
    file = hf_dir / WEIGHTS
    with pytest.raises(CheckpointError, match=message("must be a directory", file)):
        herd.load(file)


@pytest.mark.parametrize("contents", [[], [WEIGHTS], ["consolidated.00.pth"]])
def test_directory_without_config_or_params(tmp_path, contents):
    for name in contents:
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(CheckpointError, match=message(tmp_path, "not a checkpoint directory", "config.json",
                                                      "params.json")):
        herd.load(tmp_path)


# ---------------------------------------------------------------------------------------------
# HF config.json.


def test_config_json_not_valid_json(hf_dir, tmp_path):
    path = clone(hf_dir, tmp_path / "ckpt")
    (path / "config.json").write_text('{"hidden_size": 64,')
    with pytest.raises(CheckpointError, match=message(path / "config.json", "not valid JSON")):
        herd.load(path)


def _config_error(source_dir, tmp_path, name, edit, *parts):
    """Edit the checkpoint's config file (config.json or params.json): loading names file and parts."""
    path = clone(source_dir, tmp_path / "ckpt")
    edit_json(path / name, edit)
    with pytest.raises(ConfigError, match=message(path / name, *parts)):
        herd.load(path)
    with pytest.raises(ConfigError, match=message(path / name, *parts)):
        herd.checkpoint.read_config(path)


def _hf_config_error(hf_dir, tmp_path, edit, *parts):
    _config_error(hf_dir, tmp_path, "config.json", edit, *parts)


def test_config_unknown_key(hf_dir, tmp_path):
    _hf_config_error(hf_dir, tmp_path, lambda c: c.update(foo_bar=1), "unknown", "foo_bar")


@pytest.mark.parametrize(
    ("key", "value", "parts"),
    [
        ("hidden_act", "gelu", ["hidden_act", "'gelu'", "'silu'"]),
        ("tie_word_embeddings", True, ["tie_word_embeddings", "True"]),
        ("attention_bias", True, ["attention_bias"]),
        ("model_type", "llama", ["model_type", "'llama'"]),
    ],
)
def test_config_unsupported_value(hf_dir, tmp_path, key, value, parts):
    _hf_config_error(hf_dir, tmp_path, lambda c: c.update({key: value}), "unsupported value", *parts)


def test_config_unsupported_rope_type(hf_dir, tmp_path):
    def yarn(c):
        c["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 500000.0, "factor": 8.0,
                                "original_max_position_embeddings": 32}

    _hf_config_error(hf_dir, tmp_path, yarn, "rope_type", "'yarn'")


def test_config_old_style_rope_scaling_yarn(hf_dir, tmp_path):
    """The transformers-4.x spelling (`rope_scaling` + `rope_theta`) is checked the same way."""
    def yarn(c):
        del c["rope_parameters"]
        c["rope_theta"] = 500000.0
        c["rope_scaling"] = {"type": "yarn", "factor": 8.0}

    _hf_config_error(hf_dir, tmp_path, yarn, "rope_type", "'yarn'")


def test_config_unknown_rope_parameter(hf_dir, tmp_path):
    _hf_config_error(hf_dir, tmp_path, lambda c: c["rope_parameters"].update(beta_fast=32),
                     "rope parameter", "beta_fast")


@pytest.mark.parametrize("key", ["hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"])
def test_config_missing_required_key(hf_dir, tmp_path, key):
    _hf_config_error(hf_dir, tmp_path, lambda c: c.pop(key), "missing required key", repr(key))


def test_config_bad_value_type(hf_dir, tmp_path):
    _hf_config_error(hf_dir, tmp_path, lambda c: c.update(hidden_size="wide"), "invalid", "'wide'")


def test_config_irregular_layer_pattern(hf_dir, tmp_path):
    _hf_config_error(hf_dir, tmp_path, lambda c: c.update(moe_layers=[0, 1, 3]), "moe_layers", "regular")


def test_config_layer_types_disagree(hf_dir, tmp_path):
    _hf_config_error(hf_dir, tmp_path, lambda c: c.update(layer_types=["full_attention"] * 4), "layer_types")


def test_config_quantized(hf_dir, tmp_path):
    """fp8 checkpoints are dequantized (test_fp8_checkpoints.py); other methods are named as unsupported."""
    quant = {"quant_method": "gptq", "bits": 4, "group_size": 128}
    _hf_config_error(hf_dir, tmp_path, lambda c: c.update(quantization_config=quant), "quantized", "gptq")


@pytest.mark.parametrize("section", ["text_config", "vision_config"])
def test_multimodal_config_unknown_key(hf_multimodal_dir, tmp_path, section):
    """Errors inside the nested sections say which section (and, for text, which file)."""
    path = clone(hf_multimodal_dir, tmp_path / "ckpt")
    edit_json(path / "config.json", lambda c: c[section].update(foo_bar=1))
    with pytest.raises(ConfigError, match=message(section, "foo_bar")):
        herd.load(path)


def test_multimodal_vision_config_error_names_the_file(hf_multimodal_dir, tmp_path):
    path = clone(hf_multimodal_dir, tmp_path / "ckpt")
    edit_json(path / "config.json", lambda c: c["vision_config"].update(foo_bar=1))
    with pytest.raises(ConfigError, match=message(path / "config.json", "vision_config", "foo_bar")):
        herd.load(path)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("config.json", "[]"),
        ("config.json", None),  # None: the good config with "quantization_config": "fp8"
        ("params.json", "[]"),
    ],
)
def test_config_file_not_an_object(hf_dir, meta_dirs, tmp_path, name, text):
    path = clone(hf_dir if name == "config.json" else meta_dirs[1], tmp_path / "ckpt")
    if text is None:
        edit_json(path / name, lambda c: c.update(quantization_config="fp8"))
    else:
        (path / name).write_text(text)
    with pytest.raises(ConfigError, match=message(path / name)):
        herd.load(path)


# ---------------------------------------------------------------------------------------------
# Meta params.json.


def _params_error(meta_dir, tmp_path, edit, *parts):
    _config_error(meta_dir, tmp_path, "params.json", edit, *parts)


def test_params_not_valid_json(meta_dirs, tmp_path):
    path = clone(meta_dirs[1], tmp_path / "ckpt")
    (path / "params.json").write_text("{'dim': 64}")
    with pytest.raises(CheckpointError, match=message(path / "params.json", "not valid JSON")):
        herd.load(path)


def test_params_unknown_key(meta_dirs, tmp_path):
    _params_error(meta_dirs[1], tmp_path, lambda p: p.update(foo_bar=1), "unknown", "foo_bar")


def test_params_unknown_moe_key(meta_dirs, tmp_path):
    _params_error(meta_dirs[1], tmp_path, lambda p: p["moe_args"].update(expert_bias=True), "moe_args",
                  "expert_bias")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("lora_args", {"rank": 8, "scale": 2.0}),
        ("quantization_args", {"scheme": "int4_weight_int8_dynamic_activation", "group_size": 32}),
    ],
)
def test_params_lora_or_quantization(meta_dirs, tmp_path, key, value):
    _params_error(meta_dirs[1], tmp_path, lambda p: p.update({key: value}), key, "not supported")


def test_params_missing_dim(meta_dirs, tmp_path):
    _params_error(meta_dirs[1], tmp_path, lambda p: p.pop("dim"), "'dim'")


def test_params_head_dim_disagrees(meta_dirs, tmp_path):
    _params_error(meta_dirs[1], tmp_path, lambda p: p.update(head_dim=32), "head_dim=32", "16")


# ---------------------------------------------------------------------------------------------
# HF weights.


def test_truncated_safetensors(hf_dir, tmp_path):
    path = clone(hf_dir, tmp_path / "ckpt")
    file = path / WEIGHTS
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=message(file, "truncated or corrupt")):
        herd.load(path)


@pytest.mark.parametrize("kind", ["random", "garbage-header", "empty"])
def test_corrupt_safetensors(hf_dir, tmp_path, kind):
    path = clone(hf_dir, tmp_path / "ckpt")
    file = path / WEIGHTS
    if kind == "random":
        file.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                       dtype=torch.uint8).numpy().tobytes())
    elif kind == "garbage-header":
        header = b"{this is not json}"
        file.write_bytes(len(header).to_bytes(8, "little") + header + bytes(64))
    else:
        file.write_bytes(b"")
    with pytest.raises(CheckpointError, match=message(file, "not a readable safetensors file")):
        herd.load(path)


def test_truncated_shard_of_sharded_checkpoint(hf_sharded_dir, tmp_path):
    path = clone(hf_sharded_dir, tmp_path / "ckpt")
    shard = sorted(path.glob("model-*.safetensors"))[1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 16])  # header intact, tensor data short
    with pytest.raises(CheckpointError, match=message(shard, "truncated or corrupt")):
        herd.load(path)


def test_sharded_index_lists_deleted_shard(hf_sharded_dir, tmp_path):
    path = clone(hf_sharded_dir, tmp_path / "ckpt")
    shard = sorted(path.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=message(path / INDEX, shard.name, "missing")):
        herd.load(path)


@pytest.mark.parametrize("text", ["{", "{}", '{"metadata": {}}'])
def test_sharded_index_invalid(hf_sharded_dir, tmp_path, text):
    path = clone(hf_sharded_dir, tmp_path / "ckpt")
    (path / INDEX).write_text(text)
    with pytest.raises(CheckpointError, match=message(path / INDEX, "not a valid safetensors index")):
        herd.load(path)


def test_several_safetensors_without_index(hf_sharded_dir, tmp_path):
    path = clone(hf_sharded_dir, tmp_path / "ckpt")
    (path / INDEX).unlink()
    with pytest.raises(CheckpointError, match=message(path, "several .safetensors files", INDEX)):
        herd.load(path)


def test_no_weights_at_all(hf_dir, tmp_path):
    path = clone(hf_dir, tmp_path / "ckpt")
    (path / WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match=message(path, "no *.safetensors")):
        herd.load(path)


def test_sharded_index_points_at_wrong_shard(hf_sharded_dir, tmp_path):
    path = clone(hf_sharded_dir, tmp_path / "ckpt")
    index = json.loads((path / INDEX).read_text())
    weight_map = index["weight_map"]
    wrong = next(f for f in sorted(set(weight_map.values())) if f != weight_map[K_PROJ])
    weight_map[K_PROJ] = wrong
    (path / INDEX).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=message(path / wrong, K_PROJ)):
        herd.load(path)


def _rewrite_weights(path, edit):
    file = path / WEIGHTS
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def test_missing_tensor(hf_dir, tmp_path):
    path = clone(hf_dir, tmp_path / "ckpt")
    _rewrite_weights(path, lambda t: t.pop(K_PROJ))
    with pytest.raises(CheckpointError, match=message(path, "missing tensor", K_PROJ)):
        herd.load(path)


def test_many_missing_tensors_are_summarised(hf_dir, tmp_path):
    path = clone(hf_dir, tmp_path / "ckpt")
    _rewrite_weights(path, lambda t: [t.pop(k) for k in list(t) if k.startswith("model.layers.2.")])
    with pytest.raises(CheckpointError, match=message("missing tensor", "model.layers.2.", "more)")):
        herd.load(path)


def test_unexpected_tensor(hf_dir, tmp_path):
    path = clone(hf_dir, tmp_path / "ckpt")
    extra = "model.layers.1.self_attn.q_norm.weight"
    _rewrite_weights(path, lambda t: t.update({extra: torch.ones(16)}))
    with pytest.raises(CheckpointError, match=message(path, "unexpected tensor", extra)):
        herd.load(path)


@pytest.mark.parametrize(
    ("name", "shape", "want"),
    [
        (K_PROJ, [16, 64], [32, 64]),
        ("model.layers.0.feed_forward.experts.gate_up_proj", [4, 64, 32], [4, 64, 64]),  # gate only, no up
        ("model.layers.0.feed_forward.router.weight", [64, 4], [4, 64]),  # Meta's [D, E], not transposed
        ("lm_head.weight", [255, 64], [256, 64]),
    ],
)
def test_wrong_shape(hf_dir, tmp_path, name, shape, want):
    path = clone(hf_dir, tmp_path / "ckpt")
    _rewrite_weights(path, lambda t: t.update({name: torch.zeros(shape)}))
    with pytest.raises(CheckpointError, match=message(path / WEIGHTS, repr(name), str(shape), str(want))):
        herd.load(path)


def test_integer_tensor(hf_dir, tmp_path):
    path = clone(hf_dir, tmp_path / "ckpt")
    _rewrite_weights(path, lambda t: t.update({K_PROJ: torch.zeros(32, 64, dtype=torch.int64)}))
    with pytest.raises(CheckpointError, match=message(K_PROJ)):
        herd.load(path)


def test_mixed_dtype_checkpoint_is_usable_or_refused(hf_dir, tmp_path):
    path = clone(hf_dir, tmp_path / "ckpt")
    _rewrite_weights(path, lambda t: t.update({K_PROJ: t[K_PROJ].bfloat16()}))
    try:
        model = herd.load(path)
    except CheckpointError as err:
        assert K_PROJ in str(err)
    else:
        with torch.no_grad():
            model(torch.zeros(1, 4, dtype=torch.long))


# ---------------------------------------------------------------------------------------------
# Meta weights.


def _rewrite_pth(path, shard, edit):
    file = path / f"consolidated.{shard:02d}.pth"
    with torch.serialization.safe_globals([io.BytesIO]):
        state = torch.load(file, weights_only=True)
    edit(state)
    torch.save(state, file)
    return file


def test_truncated_pth(meta_dirs, tmp_path):
    path = clone(meta_dirs[2], tmp_path / "ckpt")
    file = path / "consolidated.01.pth"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=message(file, "truncated or corrupt")):
        herd.load(path)


def test_garbage_pth(meta_dirs, tmp_path):
    path = clone(meta_dirs[1], tmp_path / "ckpt")
    file = path / "consolidated.00.pth"
    file.write_bytes(b"PK\x03\x04 definitely not a zip archive" * 10)
    with pytest.raises(CheckpointError, match=message(file, "cannot be read")):
        herd.load(path)


def test_pth_not_a_dict(meta_dirs, tmp_path):
    path = clone(meta_dirs[1], tmp_path / "ckpt")
    file = path / "consolidated.00.pth"
    torch.save([torch.zeros(2)], file)
    with pytest.raises(CheckpointError, match=message(file, "expected a dict", "list")):
        herd.load(path)


def test_params_without_pth(meta_dirs, tmp_path):
    path = clone(meta_dirs[1], tmp_path / "ckpt")
    (path / "consolidated.00.pth").unlink()
    with pytest.raises(CheckpointError, match=message(path, "no consolidated.*.pth")):
        herd.load(path)


def test_pth_shard_numbering_gap(meta_dirs, tmp_path):
    path = clone(meta_dirs[2], tmp_path / "ckpt")
    (path / "consolidated.00.pth").unlink()
    with pytest.raises(CheckpointError, match=message(path, "not numbered", "consolidated.01.pth")):
        herd.load(path)


def test_pth_last_shard_deleted(meta_dirs, tmp_path):
    """Without an index a lost last shard shows up as half-size tensors: named with both shapes."""
    path = clone(meta_dirs[2], tmp_path / "ckpt")
    (path / "consolidated.01.pth").unlink()
    with pytest.raises(CheckpointError, match=message(path, "tok_embeddings.weight", "[128, 64]", "[256, 64]")):
        herd.load(path)


@pytest.mark.parametrize("n_shards", [1, 2])
def test_pth_missing_tensor(meta_dirs, tmp_path, n_shards):
    path = clone(meta_dirs[n_shards], tmp_path / "ckpt")
    key = "layers.1.attention.wo.weight"
    for shard in range(n_shards):
        _rewrite_pth(path, shard, lambda s: s.pop(key))
    with pytest.raises(CheckpointError, match=message(path, "Meta checkpoint is missing", key)):
        herd.load(path)


def test_pth_unexpected_tensor(meta_dirs, tmp_path):
    path = clone(meta_dirs[1], tmp_path / "ckpt")
    key = "layers.1.attention.wqkv.bias"
    _rewrite_pth(path, 0, lambda s: s.update({key: torch.zeros(128)}))
    with pytest.raises(CheckpointError, match=message(path, "unexpected tensor", key)):
        herd.load(path)


def test_pth_dropped_keys_are_not_unexpected(meta_dirs, tmp_path):
    path = clone(meta_dirs[1], tmp_path / "ckpt")
    _rewrite_pth(path, 0, lambda s: s.update({"rope.freqs": torch.zeros(8)}))
    herd.load(path)


def test_pth_shards_hold_different_keys(meta_dirs, tmp_path):
    path = clone(meta_dirs[2], tmp_path / "ckpt")
    key = "layers.2.feed_forward.w_in_shared_FD.weight"
    file = _rewrite_pth(path, 1, lambda s: s.pop(key))
    with pytest.raises(CheckpointError, match=message(file, "different tensors", "consolidated.00.pth", key)):
        herd.load(path)


@pytest.mark.parametrize(
    ("key", "shape", "parts"),
    [
        ("layers.1.attention.wo.weight", [64, 32], ["[64, 32]", "[64, 64]"]),
        ("norm.weight", [65], ["[65]", "[64]"]),
        ("layers.0.feed_forward.router_DE", [4, 64], ["'layers.0.feed_forward.router.weight'", "[4, 64]"]),
        # 96 rows instead of 128: the q | k | v split gives q 48 rows, not 64.
        ("layers.0.attention.wqkv.weight", [96, 64], ["'layers.0.attention.wq.weight'", "[64, 64]"]),
        # Not divisible into [E, D, -1]: the merge itself fails; still named, with the shard shapes.
        ("layers.0.feed_forward.experts.moe_w_in_eD_F", [5 * 64, 7], ["cannot merge", "[320, 7]"]),
    ],
)
def test_pth_wrong_shape(meta_dirs, tmp_path, key, shape, parts):
    path = clone(meta_dirs[1], tmp_path / "ckpt")
    _rewrite_pth(path, 0, lambda s: s.update({key: torch.zeros(shape)}))
    with pytest.raises(CheckpointError, match=message(path, key, *parts)):
        herd.load(path)


def test_pth_wrong_shape_in_second_shard(meta_dirs, tmp_path):
    path = clone(meta_dirs[2], tmp_path / "ckpt")
    key = "layers.3.attention.wo.weight"  # sharded on dim 1: [64, 32] per rank
    _rewrite_pth(path, 1, lambda s: s.update({key: torch.zeros(64, 40)}))
    with pytest.raises(CheckpointError, match=message(path, key, "[64, 72]", "[64, 64]")):
        herd.load(path)


@pytest.mark.parametrize("key", ["norm.weight", "layers.0.feed_forward.router_DE"])
def test_pth_wrong_shape_of_replicated_tensor_in_second_shard(meta_dirs, tmp_path, key):
    path = clone(meta_dirs[2], tmp_path / "ckpt")
    _rewrite_pth(path, 1, lambda s: s.update({key: torch.zeros(65, *s[key].shape[1:])}))
    with pytest.raises(CheckpointError, match=message(key)):
        herd.load(path)


# ---------------------------------------------------------------------------------------------
# Pickled code in a .pth is refused, never run.


class Planted:
    """A custom class whose unpickling (BUILD -> __setstate__) writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __setstate__(self, state):
        open(state["marker"], "w").close()


class SystemCall:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


class OpenCall:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (str(self.marker), "w")


@pytest.mark.parametrize("payload", [Planted, SystemCall, OpenCall])
@pytest.mark.parametrize("container", ["torch.save", "tensor-dict"])
def test_pickled_code_is_refused(meta_dirs, tmp_path, payload, container):
    # The control proves the payload is live: an unsafe torch.load does create its marker.
    control_file, control_marker = tmp_path / "control.pth", tmp_path / "control-ran"
    torch.save({"x": payload(control_marker)}, control_file)
    torch.load(control_file, weights_only=False)
    assert control_marker.exists()

    path = clone(meta_dirs[1], tmp_path / "ckpt")
    marker = tmp_path / "payload-ran"
    file = path / "consolidated.00.pth"
    if container == "torch.save":
        torch.save({"layers.0.attention.wo.weight": payload(marker)}, file)
    else:  # a real-looking state dict with one poisoned value among the tensors
        _rewrite_pth(path, 0, lambda s: s.update({"layers.0.attention.wo._extra_state": payload(marker)}))
    with pytest.raises(CheckpointError, match=message(file, "cannot be read")):
        herd.load(path)
    assert not marker.exists()


def test_legacy_pickle_is_refused(meta_dirs, tmp_path):
    """A plain (non-zip) pickle file with a payload: refused before anything is unpickled."""
    path = clone(meta_dirs[1], tmp_path / "ckpt")
    marker = tmp_path / "payload-ran"
    file = path / "consolidated.00.pth"
    file.write_bytes(pickle.dumps({"x": SystemCall(marker)}))
    with pytest.raises(CheckpointError, match=message(file)):
        herd.load(path)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# Saving over an older save.

THREE_SHARDS = 400_000  # bytes per shard that split SCOUT_LIKE (825,600 bytes in float32) into 3


def _weights_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resave_fewer_shards_leaves_nothing_stale(tmp_path):
    herd.save(herd.build(SCOUT_LIKE, seed=0), tmp_path, max_shard_bytes=THREE_SHARDS)
    assert len(list(tmp_path.glob("model-*-of-00003.safetensors"))) == 3 and (tmp_path / INDEX).exists()
    model = herd.build(SCOUT_LIKE, seed=1)
    herd.save(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", WEIGHTS]  # no shards, index or .tmp
    assert _weights_equal(herd.load(tmp_path), model)


def test_resave_more_shards_leaves_nothing_stale(tmp_path):
    herd.save(herd.build(SCOUT_LIKE, seed=0), tmp_path)
    model = herd.build(SCOUT_LIKE, seed=1)
    herd.save(model, tmp_path, max_shard_bytes=THREE_SHARDS)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["config.json", *(f"model-{i:05d}-of-00003.safetensors" for i in (1, 2, 3)), INDEX]
    assert _weights_equal(herd.load(tmp_path), model)


def test_resave_over_transformers_shards(hf_sharded_dir, tmp_path):
    path = clone(hf_sharded_dir, tmp_path / "ckpt")
    model = herd.build(SCOUT_LIKE, seed=2)
    herd.save(model, path)
    assert not list(path.glob("model-*.safetensors")) and not (path / INDEX).exists()
    assert not list(path.glob(".*.tmp"))
    assert _weights_equal(herd.load(path), model)
