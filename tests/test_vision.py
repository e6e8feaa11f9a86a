"""The vision tower and early fusion against HF `Llama4ForConditionalGeneration`, through herd's loader."""

import re

import pytest
import torch
from hf_oracle import PATCH_ID, SCOUT_LIKE, conditional_generation, hf_multimodal_logits, save_hf
from meta_oracle import build_meta_model, meta_params, write_meta_checkpoint

import herd
from herd.vision import pixel_shuffle

TOL = 1e-4


def _prompt_and_pixels():
    """One single-tile image and one 2×2 image (4 tiles + thumbnail), 4 patch tokens per tile."""
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(6, 3, 56, 56, generator=g) * 2 - 1
    patches = lambda tiles: [PATCH_ID] * (4 * tiles)
    ids = [1, 2, 3, *patches(1), 4, 5, *patches(5), 6, 7, 8, 9, 10, 11, 12, 13]
    return torch.tensor([ids]), [pixels[:1], pixels[1:]]


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    ref = conditional_generation(SCOUT_LIKE, seed=2)
    model = herd.load(save_hf(ref, tmp_path_factory.mktemp("cg")))
    return ref, model


def test_fused_logits_match_hf(hf_pair):
    ref, model = hf_pair
    tokens_BS, images = _prompt_and_pixels()
    with torch.no_grad():
        want = hf_multimodal_logits(ref, tokens_BS, torch.cat(images))
        got = model(tokens_BS, image_features_FD=model.encode_images(images))
    assert (got - want).abs().max().item() <= TOL
    with torch.no_grad():  # the image really matters
        assert (model(tokens_BS) - want).abs().max().item() > 1e-2


def test_vision_features_match_hf(hf_pair):
    ref, model = hf_pair
    _, images = _prompt_and_pixels()
    with torch.no_grad():
        want = ref.multi_modal_projector(ref.vision_model(torch.cat(images)).last_hidden_state)
        got = model.vision(torch.cat(images))
    assert got.shape == (6, 4, 64)
    assert (got - want).abs().max().item() <= TOL


def test_patch_count_mismatch_is_an_error(hf_pair):
    _, model = hf_pair
    tokens_BS, images = _prompt_and_pixels()
    with torch.no_grad(), pytest.raises(ValueError, match=re.escape("24 <|patch|> tokens but the images give 20")):
        model(tokens_BS, image_features_FD=model.encode_images(images)[:20])


def test_pixel_shuffle_order():
    """Spec §3.6: on a 4×4 grid with value = index, token 0 = [0, 1, 4, 5] and token 1 = [2, 3, 6, 7]."""
    grid = torch.arange(16.0).view(1, 16, 1)
    out = pixel_shuffle(grid, 0.5)
    assert out.shape == (1, 4, 4)
    assert out[0, 0].tolist() == [0, 1, 4, 5] and out[0, 1].tolist() == [2, 3, 6, 7]


def test_save_round_trip_multimodal(hf_pair, tmp_path):
    ref, model = hf_pair
    herd.save(model, tmp_path)
    again = herd.load(tmp_path)
    tokens_BS, images = _prompt_and_pixels()
    from transformers import Llama4ForConditionalGeneration

    hf_again = Llama4ForConditionalGeneration.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        want = hf_multimodal_logits(ref, tokens_BS, torch.cat(images))
        assert (again(tokens_BS, image_features_FD=again.encode_images(images)) - want).abs().max().item() <= TOL
        assert (hf_multimodal_logits(hf_again, tokens_BS, torch.cat(images)) - want).abs().max() <= TOL


META_VISION = {"image_size": {"height": 56, "width": 56}, "patch_size": {"height": 14, "width": 14}, "dim": 32,
               "n_layers": 2, "n_heads": 2, "mlp_ratio": 4.0, "output_dim": 48, "pixel_shuffle_ratio": 0.5}


def _meta_vision_state(model, n_shards):
    """herd vision weights written under Meta's names and model-parallel split (spec §6.1)."""
    enc, out = "vision_embeddings.vision_encoder.", [{} for _ in range(n_shards)]
    v = {k.removeprefix("vision."): t for k, t in model.state_dict().items() if k.startswith("vision.")}

    def put(name, tensor, dim):  # dim None: replicated
        for r in range(n_shards):
            out[r][name] = tensor.clone() if dim is None else tensor.chunk(n_shards, dim=dim)[r].clone()

    put(enc + "conv1._linear.weight", v["patch_embedding.weight"], 0)
    put(enc + "class_embedding", v["class_embedding"], None)
    put(enc + "positional_embedding_vlm", v["positional_embedding"], None)
    for p in ("weight", "bias"):
        put(f"{enc}ln_pre.{p}", v[f"ln_pre.{p}"], None)
        put(f"{enc}ln_post.{p}", v[f"ln_post.{p}"], None)
        for j in range(2):
            src, dst = f"layers.{j}.", f"{enc}transformer.resblocks.{j}."
            for w in ("wq", "wk", "wv"):
                put(f"{dst}attn.{w}.{p}", v[f"{src}attn.{w}.{p}"], 0)
            put(f"{dst}attn.wo.{p}", v[f"{src}attn.wo.{p}"], 1 if p == "weight" else None)
            put(f"{dst}mlp.c_fc.{p}", v[f"{src}mlp.c_fc.{p}"], 0)
            put(f"{dst}mlp.c_proj.{p}", v[f"{src}mlp.c_proj.{p}"], 1 if p == "weight" else None)
            put(f"{dst}ln_1.{p}", v[f"{src}ln_1.{p}"], None)
            put(f"{dst}ln_2.{p}", v[f"{src}ln_2.{p}"], None)
    put("vision_embeddings.vision_adapter.mlp.c_fc.weight", v["adapter_fc.weight"], 0)
    put("vision_embeddings.vision_adapter.mlp.c_proj.weight", v["adapter_proj.weight"], 1)
    put("vision_projection.weight", v["projection.weight"], 0)
    return out


@pytest.mark.parametrize("n_shards", [1, 2])
def test_meta_vision_weights_load(hf_pair, tmp_path, n_shards):
    _, source = hf_pair
    params = meta_params()
    write_meta_checkpoint(build_meta_model(params), tmp_path, params, n_shards=n_shards)
    import json

    on_disk = json.loads((tmp_path / "params.json").read_text()) | {"vision_args": META_VISION}
    (tmp_path / "params.json").write_text(json.dumps(on_disk))
    for r, extra in enumerate(_meta_vision_state(source, n_shards)):
        file = tmp_path / f"consolidated.{r:02d}.pth"
        torch.save(torch.load(file, weights_only=True) | extra, file)
    model = herd.load(tmp_path)
    want = {k: t for k, t in source.state_dict().items() if k.startswith("vision.")}
    got = {k: t for k, t in model.state_dict().items() if k.startswith("vision.")}
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert herd.load(tmp_path, text_only=True).vision is None


def test_engine_prefill_pieces_with_images(hf_pair):
    """Images are encoded once; prefill pieces that split an image's patch run still place every
    feature right: logits equal the one-shot fused forward."""
    from herd.infer.engine import Engine
    from herd.infer.kv_pool import KVPool
    from herd.infer.sampling import SamplingParams

    _, model = hf_pair
    tokens_BS, images = _prompt_and_pixels()
    with torch.no_grad():
        want = model(tokens_BS, image_features_FD=model.encode_images(images))[0, -1]
    for piece in (3, 7, 64):
        pool = KVPool(model.config, 1, tokens_BS.shape[1], torch.float32)
        got = Engine(model, prefill_chunk=piece).prefill(pool, 0, tokens_BS[0].tolist(), images)
        assert (got - want).abs().max().item() <= TOL
    params = SamplingParams(temperature=0.0, max_new_tokens=5, stop_ids=())
    out = Engine(model).generate([tokens_BS[0].tolist(), [1, 2, 3]], params, images=[images, None])
    assert [len(c.token_ids) for c in out] == [5, 5]
    with pytest.raises(ValueError, match="24 <|patch|> tokens but its images give 4".replace("|", r"\|")):
        Engine(model).generate(tokens_BS[0].tolist(), params, images=[images[:1]])


def test_image_layouts_id_by_id():
    from herd.chat import image_layout

    start, end, x, y, image, patch = 200080, 200081, 200084, 200085, 200090, 200092
    p = [patch] * 144
    one = image_layout(1, 1)
    assert one == [start, image, *p, end] and len(one) == 147
    two = image_layout(2, 2)
    assert two == [start, *p, x, *p, y, *p, x, *p, y, image, *p, end] and len(two) == 727
    row = image_layout(1, 3)
    assert row == [start, *p, x, *p, x, *p, y, image, *p, end]
    assert len(row) == 3 + 144 * 4 + 1 * 2 + 1


def test_vision_parameter_count_matches_the_built_tower():
    from herd.config import preset
    from herd.info import counts

    config = preset("debug")
    with torch.device("meta"):
        model = herd.Transformer(config.text, config.vision)
    assert counts(config).total == sum(p.numel() for p in model.parameters())
