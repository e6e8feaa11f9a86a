"""herd.image against spec §3.1, HF's and Meta's own canvas code, Meta's preprocess, and untrusted input.

Both references import torchvision at module level and torchvision is not installed here, so:
- HF: the pure helper functions (`get_factors`, `find_supported_resolutions`, `get_best_fit`,
  `get_max_res_without_distortion`) are taken from the installed source with `ast` and executed as they are.
- Meta: `llama_models/llama4/preprocess.py` is executed from the installed file with stand-ins for the five
  torchvision pieces it uses on PIL images (resize(img, [h, w]) = PIL bilinear to (w, h); ToTensor = uint8 HWC →
  fp32 CHW / 255; Normalize = (x − mean) / std; Compose; Resize). Its canvas choice, resize arithmetic, padding,
  tiling and the thumbnail step from chat_format are Meta's own code; `convert_image_to_rgb` is taken with `ast`.
- A plain numpy re-implementation is a third, independent check of the pixels.
"""

from __future__ import annotations

import ast
import base64
import enum
import importlib.util
import io
import math
import random
import struct
import sys
import time
import types
import warnings
import zlib
from collections import defaultdict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from herd.image import (
    MAX_PIXELS,
    ImageError,
    ProcessedImage,
    best_canvas,
    candidate_canvases,
    load_image,
    preprocess,
    resized_size,
    to_rgb,
)

IMAGES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "images"
PHOTOS = {"dog.jpg": (2, 2), "pasta.jpeg": (4, 4)}  # both square: 512² and 1280², never resized, only padded


# ------------------------------------------------------------------------------------------------ helpers


def _photo(name: str) -> Path:
    path = IMAGES / name
    if not path.is_file():
        pytest.fail(f"test photo missing: {path.resolve()} (expected in shared/data/images)")
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _crafted_png(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width × height RGB, with a few bytes of pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _png_chunk(b"IEND", b""))


def _encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def _random_rgb(height: int, width: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _functions_from_source(path: str, names: set[str], namespace: dict[str, Any]) -> dict[str, Any]:
    """Execute just the named top-level functions of a source file (decorators dropped) in `namespace`."""
    tree = ast.parse(Path(path).read_text())
    nodes = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    assert {n.name for n in nodes} == names, f"{path} no longer defines {names - {n.name for n in nodes}}"
    for n in nodes:
        n.decorator_list = []
    exec(compile(ast.Module(body=nodes, type_ignores=[]), path, "exec"), namespace)
    return namespace


@dataclass(frozen=True)
class _SizeDict:  # what HF's helpers read from their SizeDict
    height: int
    width: int


@pytest.fixture(scope="module")
def hf() -> dict[str, Any]:
    """HF's canvas helpers, run from transformers' installed image_processing_llama4.py."""
    origin = importlib.util.find_spec("transformers.models.llama4.image_processing_llama4").origin
    names = {"get_factors", "find_supported_resolutions", "get_best_fit", "get_max_res_without_distortion"}
    return _functions_from_source(origin, names, {"math": math, "torch": torch, "defaultdict": defaultdict,
                                                  "SizeDict": _SizeDict})


def _torchvision_stand_ins() -> dict[str, types.ModuleType]:
    """torchvision's behaviour on PIL images for the pieces Meta's preprocess uses, nothing more."""
    tv = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    tv.transforms, transforms.functional = transforms, functional

    class InterpolationMode(enum.Enum):
        BILINEAR = "bilinear"

    def resize(img: Image.Image, size: list[int], interpolation: Any = InterpolationMode.BILINEAR) -> Image.Image:
        assert isinstance(img, Image.Image) and interpolation is InterpolationMode.BILINEAR and len(size) == 2
        return img.resize((size[1], size[0]), Image.Resampling.BILINEAR)

    class Resize:
        def __init__(self, size: list[int]) -> None:
            self.size = size

        def __call__(self, img: Image.Image) -> Image.Image:
            return resize(img, self.size)

    class ToTensor:
        def __call__(self, pic: Image.Image) -> torch.Tensor:
            return torch.from_numpy(np.array(pic, dtype=np.uint8)).permute(2, 0, 1).contiguous().float().div(255)

    class Normalize:
        def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], inplace: bool = False) -> None:
            self.mean, self.std = mean, std

        def __call__(self, t: torch.Tensor) -> torch.Tensor:
            mean = torch.as_tensor(self.mean, dtype=t.dtype).view(-1, 1, 1)
            return t.sub_(mean).div_(torch.as_tensor(self.std, dtype=t.dtype).view(-1, 1, 1))

    class Compose:
        def __init__(self, steps: list[Any]) -> None:
            self.steps = steps

        def __call__(self, x: Any) -> Any:
            for step in self.steps:
                x = step(x)
            return x

    functional.resize = resize
    for obj in (InterpolationMode, Resize, ToTensor, Normalize, Compose):
        setattr(transforms, obj.__name__, obj)
    return {m.__name__: m for m in (tv, transforms, functional)}


@pytest.fixture(scope="module")
def meta() -> types.SimpleNamespace:
    """Meta's preprocess module (a private copy, over torchvision stand-ins) and its convert_image_to_rgb."""
    stand_ins = _torchvision_stand_ins()
    saved_modules = {name: sys.modules.get(name) for name in stand_ins}
    saved_truncated = ImageFile.LOAD_TRUNCATED_IMAGES  # Meta's module sets it to True on import
    origin = importlib.util.find_spec("llama_models.llama4.preprocess").origin
    spec = importlib.util.spec_from_file_location("_meta_preprocess_under_test", origin)
    module = importlib.util.module_from_spec(spec)
    sys.modules.update(stand_ins)
    try:
        spec.loader.exec_module(module)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved_truncated
        for name, saved in saved_modules.items():
            if saved is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = saved
    chat_origin = importlib.util.find_spec("llama_models.llama4.chat_format").origin
    chat = _functions_from_source(chat_origin, {"convert_image_to_rgb"}, {"PIL_Image": Image, "Tuple": tuple})
    return types.SimpleNamespace(pre=module, convert_image_to_rgb=chat["convert_image_to_rgb"])


def _meta_pixels(meta: types.SimpleNamespace, image: Image.Image, max_tiles: int) -> tuple[torch.Tensor, tuple]:
    """What Meta's ChatFormat._encode_content computes for one image (chat_format.py)."""
    image = meta.convert_image_to_rgb(image)
    tiles, ar = meta.pre.VariableSizeImageTransform(336)(image, max_num_chunks=max_tiles)
    if tiles.shape[0] > 1:
        tiles = torch.cat([tiles, meta.pre.ResizeNormalizeImageTransform(336, 336)(image)[None]])
    return tiles, ar


def _numpy_pixels(image: Image.Image, max_tiles: int, tile: int = 336) -> np.ndarray:
    """Spec §3.1 written out plainly: brute-force canvas search, PIL bilinear, numpy pad/normalise/tile."""
    h, w = image.height, image.width
    canvases = [(a * tile, (n // a) * tile) for n in range(max_tiles, 0, -1) for a in range(1, n + 1) if n % a == 0]
    scale = {c: min(Fraction(c[1], w), Fraction(c[0], h)) for c in canvases}
    up = [s for s in scale.values() if s >= 1]
    pick = min(up) if up else max(scale.values())
    ch, cw = min((c for c in canvases if scale[c] == pick), key=lambda c: c[0] * c[1])
    tw, th = min(max(w, tile), cw), min(max(h, tile), ch)
    if tw / w < th / h:
        nw, nh = tw, min(math.floor(h * (tw / w)), th)
    else:
        nh, nw = th, min(math.floor(w * (th / h)), tw)
    canvas = np.zeros((ch, cw, 3), np.float32)
    canvas[: max(nh, 1), : max(nw, 1)] = np.asarray(image.resize((max(nw, 1), max(nh, 1)), Image.Resampling.BILINEAR))
    norm = lambda a: ((a.astype(np.float32) / np.float32(255)) - np.float32(0.5)) / np.float32(0.5)
    rows, cols = ch // tile, cw // tile
    tiles = norm(canvas).reshape(rows, tile, cols, tile, 3).transpose(0, 2, 4, 1, 3).reshape(-1, 3, tile, tile)
    if rows * cols > 1:
        thumb = norm(np.asarray(image.resize((tile, tile), Image.Resampling.BILINEAR)))
        tiles = np.concatenate([tiles, thumb.transpose(2, 0, 1)[None]])
    return tiles


def _random_sizes(n: int, seed: int) -> list[tuple[int, int]]:
    """Small, ordinary, huge and extremely elongated (H, W) pairs."""
    rng = random.Random(seed)
    sizes = [(rng.randint(1, 400), rng.randint(1, 400)) for _ in range(n // 4)]
    sizes += [(rng.randint(1, 4000), rng.randint(1, 4000)) for _ in range(n // 4)]
    sizes += [(rng.randint(1, 20000), rng.randint(1, 20000)) for _ in range(n // 4)]
    sizes += [(rng.randint(1, 50), rng.randint(2000, 30000))[:: rng.choice((1, -1))] for _ in range(n // 4)]
    return sizes + [(336 * a, 336 * b) for a in range(1, 17) for b in range(1, 17)]


# --------------------------------------------------------------------------------- geometry: spec §3.1


@pytest.mark.parametrize(
    ("size_HW", "canvas_HW", "grid"),
    [((300, 800), (336, 1008), (1, 3)), ((500, 500), (672, 672), (2, 2)), ((768, 1024), (1008, 1344), (3, 4)),
     ((1080, 1920), (1008, 1680), (3, 5)), ((2000, 200), (2016, 336), (6, 1))],
)
def test_spec_canvas_table(size_HW, canvas_HW, grid) -> None:
    canvas = best_canvas(*size_HW)
    assert canvas == canvas_HW
    assert (canvas[0] // 336, canvas[1] // 336) == grid
    new_h, new_w = resized_size(*size_HW, *canvas)
    assert new_h <= canvas[0] and new_w <= canvas[1]
    out = preprocess(Image.new("RGB", size_HW[::-1], (10, 20, 30)))
    assert (out.rows, out.cols) == grid
    assert out.pixels_TCHW.shape == (grid[0] * grid[1] + 1, 3, 336, 336)


@pytest.mark.parametrize(
    ("size_HW", "new_HW", "canvas_HW"),
    [
        ((100, 200), (168, 336), (336, 336)),  # both sides < 336: upscaled until the longer side is 336
        ((200, 100), (336, 168), (336, 336)),  # the same transposed: the spec's "A×B → C×D" is H×W on both sides
        ((300, 800), (300, 800), (336, 1008)),  # a side ≥ 336: never upscaled
        ((400, 400), (400, 400), (672, 672)),
        ((100, 6000), (89, 5376), (336, 5376)),  # downscaled only as far as the widest canvas needs
        ((1080, 1920), (945, 1680), (1008, 1680)),
        ((1, 1), (336, 336), (336, 336)),
        ((1, 100000), (1, 5376), (336, 5376)),  # floor(0.05376) = 0, clamped to 1
        ((480, 5400), (336, 3779), (336, 4032)),  # Meta's float64: floor(5400·(336/480)) = 3779, exactly 3780
        ((5400, 480), (3779, 336), (4032, 336)),  # the same on the other branch
        ((2400, 1400), (1680, 979), (1680, 1008)),  # likewise, exactly 980
    ],
)
def test_spec_resize_cases(size_HW, new_HW, canvas_HW) -> None:
    assert best_canvas(*size_HW) == canvas_HW
    assert resized_size(*size_HW, *canvas_HW) == new_HW


def test_candidate_canvases() -> None:
    canvases = candidate_canvases()
    assert len(canvases) == len(set(canvases)) == 50  # spec §3.1 step 2
    assert set(canvases) == {(w, h) for h, w in canvases}  # closed under transposition
    assert all(h * w <= 16 * 336 * 336 and h % 336 == 0 == w % 336 for h, w in canvases)
    assert canvases[:5] == [(336, 5376), (672, 2688), (1344, 1344), (2688, 672), (5376, 336)]
    assert candidate_canvases(1) == [(336, 336)]
    assert candidate_canvases(4, tile=10) == [(10, 40), (20, 20), (40, 10), (10, 30), (30, 10), (10, 20), (20, 10),
                                              (10, 10)]


def test_max_tiles_is_honoured() -> None:
    for max_tiles in range(1, 17):
        for h, w in _random_sizes(40, seed=max_tiles):
            ch, cw = best_canvas(h, w, max_tiles)
            assert (ch // 336) * (cw // 336) <= max_tiles
    assert best_canvas(5000, 5000, max_tiles=1) == (336, 336)
    out = preprocess(Image.new("RGB", (1280, 1280)), max_tiles=4)
    assert (out.rows, out.cols) == (2, 2) and out.pixels_TCHW.shape == (5, 3, 336, 336)


def test_bad_geometry_arguments() -> None:
    for bad in [dict(height=0, width=5), dict(height=5, width=-1), dict(height=5, width=5, max_tiles=0),
                dict(height=2.5, width=5), dict(height=5, width=5, tile=0)]:
        with pytest.raises(ValueError):
            best_canvas(**bad)
    with pytest.raises(ValueError):
        preprocess(Image.new("RGB", (4, 4)), max_tiles=0)


# --------------------------------------------------------------------------------- against the references


def test_canvas_matches_hf_and_meta(hf, meta) -> None:
    """Canvas choice agrees with HF's get_best_fit (H, W tuples) and Meta's (W, H tuples) for 16 and 5 tiles."""
    for max_tiles in (16, 5):
        hf_canvases = torch.tensor(hf["find_supported_resolutions"](max_tiles, _SizeDict(336, 336)))
        meta_transform = meta.pre.VariableSizeImageTransform(336)
        meta_canvases = torch.tensor(meta_transform.find_supported_resolutions(max_tiles, 336))
        assert sorted(map(tuple, hf_canvases.tolist())) == sorted(candidate_canvases(max_tiles))
        sizes = _random_sizes(2400 if max_tiles == 16 else 400, seed=max_tiles)
        for h, w in sizes:
            ours = best_canvas(h, w, max_tiles)
            assert tuple(hf["get_best_fit"]((h, w), hf_canvases).tolist()) == ours, (h, w)
            assert meta_transform.get_best_fit((w, h), meta_canvases)[::-1] == ours, (h, w)


def test_resize_matches_meta(meta) -> None:
    """resized_size equals Meta's max_upscaling_size rule + get_max_res_without_distortion + max(·, 1)."""
    transform = meta.pre.VariableSizeImageTransform(336)
    float_edges = [(480, 5400), (5400, 480), (2400, 1400), (1400, 2400), (1920, 5400), (5400, 1920)]
    for h, w in _random_sizes(2400, seed=7) + float_edges:
        ch, cw = best_canvas(h, w)
        target = (min(max(w, 336), cw), min(max(h, 336), ch))  # Meta works in (W, H)
        new_w, new_h = transform.get_max_res_without_distortion((w, h), target)
        assert resized_size(h, w, ch, cw) == (max(new_h, 1), max(new_w, 1)), (h, w)


@pytest.mark.parametrize("name", list(PHOTOS))
def test_photos(name, meta) -> None:
    path = _photo(name)
    rows, cols = PHOTOS[name]
    out = preprocess(path)
    with Image.open(path) as im:
        w, h = im.size
        ref_meta, ar = _meta_pixels(meta, im.copy(), 16)
        ref_numpy = _numpy_pixels(im.convert("RGB"), 16)
    assert isinstance(out, ProcessedImage)
    assert (out.rows, out.cols, out.n_tiles, out.has_thumbnail) == (rows, cols, rows * cols, True)
    assert out.pixels_TCHW.shape == (rows * cols + 1, 3, 336, 336)
    assert out.pixels_TCHW.dtype == torch.float32 and out.pixels_TCHW.is_contiguous()
    assert out.pixels_TCHW.min() >= -1 and out.pixels_TCHW.max() <= 1
    # Reassemble the canvas: the photo sits top-left unresized, everything right of and below it is padding.
    canvas_CHW = out.pixels_TCHW[:-1].view(rows, cols, 3, 336, 336).permute(2, 0, 3, 1, 4).reshape(3, rows * 336, -1)
    assert (canvas_CHW[:, h:, :] == -1).all() and (canvas_CHW[:, :, w:] == -1).all()
    assert (canvas_CHW[:, :h, :w] > -1).float().mean() > 0.9
    assert ar == (rows, cols)
    assert torch.equal(out.pixels_TCHW, ref_meta)  # bit-identical to Meta's pipeline
    assert torch.equal(out.pixels_TCHW, torch.from_numpy(ref_numpy))


@pytest.mark.parametrize(("size_WH", "max_tiles"), [((800, 300), 16), ((200, 2000), 16), ((1921, 1080), 16),
                                                    ((50, 70), 16), ((6000, 100), 16), ((700, 500), 3),
                                                    ((333, 335), 16), ((1100, 900), 6)])
def test_pixels_match_meta_and_numpy(meta, size_WH, max_tiles) -> None:
    """Resized (down, up and not at all), padded and tiled images: herd == Meta's pipeline == numpy, exactly."""
    image = _random_rgb(size_WH[1], size_WH[0], seed=size_WH[0])
    out = preprocess(image, max_tiles=max_tiles)
    ref_meta, (rows, cols) = _meta_pixels(meta, image, max_tiles)
    assert (out.rows, out.cols) == (rows, cols)
    assert out.has_thumbnail == (rows * cols > 1) == (out.pixels_TCHW.shape[0] == rows * cols + 1)
    assert torch.equal(out.pixels_TCHW, ref_meta)
    assert torch.equal(out.pixels_TCHW, torch.from_numpy(_numpy_pixels(image, max_tiles)))


def test_single_tile_has_no_thumbnail() -> None:
    out = preprocess(_random_rgb(200, 300))
    assert (out.rows, out.cols, out.has_thumbnail) == (1, 1, False)
    assert out.pixels_TCHW.shape == (1, 3, 336, 336)
    assert (out.pixels_TCHW[:, :, 224:, :] == -1).all()  # 200×300 → 224×336, padded below


def test_thumbnail_is_squashed_original() -> None:
    image = _random_rgb(300, 800, seed=3)
    out = preprocess(image)
    squashed = np.asarray(image.resize((336, 336), Image.Resampling.BILINEAR), dtype=np.float32)
    expected_CHW = torch.from_numpy(squashed).permute(2, 0, 1).div(255).sub(0.5).div(0.5)
    assert torch.equal(out.pixels_TCHW[-1], expected_CHW)
    assert (out.pixels_TCHW[-1] > -1).any(dim=0).all()  # no padding anywhere in the thumbnail


# ---------------------------------------------------------------------------------------- colour modes


def test_rgba_composited_on_white(meta) -> None:
    from transformers.image_transforms import convert_to_rgb

    rgba_HW4 = np.array([[[255, 0, 0, 255], [255, 0, 0, 0]], [[0, 0, 255, 128], [10, 200, 30, 64]]], np.uint8)
    image = Image.fromarray(rgba_HW4, "RGBA")
    got = np.asarray(load_image(image))
    assert got.dtype == np.uint8 and got.shape == (2, 2, 3)
    assert got[0, 0].tolist() == [255, 0, 0] and got[0, 1].tolist() == [255, 255, 255]
    assert got[1, 0].tolist() == [127, 127, 255]  # half-transparent blue over white
    big = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 50, 4), dtype=np.uint8), "RGBA")
    ours = np.asarray(load_image(big))
    assert np.array_equal(ours, np.asarray(meta.convert_image_to_rgb(big.copy())))
    assert np.array_equal(ours, convert_to_rgb(big, return_numpy=True))
    assert np.array_equal(ours, np.asarray(load_image(_encode(big, "PNG"))))  # through a file, too


def test_palette_and_la_transparency_composited_on_white() -> None:
    from transformers.image_transforms import convert_to_rgb

    palette = Image.new("P", (4, 3), 0)
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    palette.putpixel((1, 1), 1)
    palette.info["transparency"] = 0
    for image in (palette, Image.open(io.BytesIO(_encode(palette, "PNG"))),
                  Image.fromarray(np.random.default_rng(2).integers(0, 256, (5, 6, 2), dtype=np.uint8), "LA")):
        got = np.asarray(load_image(image))
        assert np.array_equal(got, convert_to_rgb(image, return_numpy=True)), image.mode
    got = np.asarray(load_image(palette))
    assert got[0, 0].tolist() == [255, 255, 255]  # the transparent index is white, not its palette black
    assert got[1, 1].tolist() == [200, 10, 10]


def test_grayscale_and_other_modes() -> None:
    gray = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(6, 8), "L")
    got = np.asarray(load_image(gray))
    assert got.shape == (6, 8, 3) and all(np.array_equal(got[..., c], np.asarray(gray)) for c in range(3))
    assert np.array_equal(np.asarray(load_image(_encode(gray, "PNG"))), got)
    assert load_image(Image.new("1", (3, 3), 1)).getpixel((0, 0)) == (255, 255, 255)
    cmyk = Image.new("CMYK", (3, 3), (0, 255, 255, 0))
    assert load_image(_encode(cmyk, "JPEG")).mode == "RGB"
    rgb = _random_rgb(5, 5)
    assert to_rgb(rgb) is rgb
    assert load_image(rgb) is not rgb and np.array_equal(np.asarray(load_image(rgb)), np.asarray(rgb))


# ---------------------------------------------------------------------------------------- input kinds


def test_all_input_kinds_agree() -> None:
    path = _photo("dog.jpg")
    data = path.read_bytes()
    expected = preprocess(path).pixels_TCHW
    data_url = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    wrapped = data_url[:60] + "\n" + data_url[60:].rstrip("=")  # line breaks and stripped padding tolerated
    with Image.open(path) as im:
        sources = [str(path), path, data, bytearray(data), memoryview(data), im, data_url, wrapped,
                   path.resolve().as_uri()]
        for source in sources:
            assert torch.equal(preprocess(source).pixels_TCHW, expected), type(source)
    png_url = "data:image/png;base64," + base64.b64encode(_encode(_random_rgb(4, 4), "PNG")).decode()
    assert load_image(png_url).size == (4, 4)


@pytest.mark.parametrize("url", ["http://example.com/cat.png", "HTTPS://example.com/cat.png",
                                 "ftp://example.com/cat.png", "file://otherhost/tmp/cat.png"])
def test_network_urls_refused(url) -> None:
    with pytest.raises(ImageError, match=r"refusing|unsupported URL"):
        load_image(url)


def test_missing_file_and_wrong_type(tmp_path) -> None:
    with pytest.raises(ImageError, match="cannot read"):
        load_image(tmp_path / "absent.png")
    with pytest.raises(ImageError, match="cannot read"):
        load_image(str(tmp_path))  # a directory
    with pytest.raises(TypeError):
        load_image(42)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- bad images


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("truncated_ok", [False, True])
def test_truncated_files(tmp_path, monkeypatch, fmt, truncated_ok) -> None:
    """Half a file is refused, even after something (Meta's preprocess) set LOAD_TRUNCATED_IMAGES."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", truncated_ok)
    with Image.open(_photo("dog.jpg")) as im:
        data = _encode(im, fmt)
    half = data[: len(data) // 2]
    (tmp_path / "half").write_bytes(half)
    for source in (half, tmp_path / "half"):
        with pytest.raises(ImageError, match=r"truncated|not a readable"):
            preprocess(source)
    with pytest.raises(ImageError), Image.open(tmp_path / "half") as lazy:  # a lazily opened PIL image
        load_image(lazy)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is truncated_ok  # restored


@pytest.mark.parametrize("data", [b"", b"hello, world", b"\x89PNG\r\n\x1a\n", b"GIF89a" + b"\0" * 7, b"\0" * 1000])
def test_not_an_image(data) -> None:
    with pytest.raises(ImageError):
        preprocess(data)


def test_zero_size() -> None:
    for size in [(0, 10), (10, 0)]:
        with pytest.raises(ImageError):
            preprocess(_crafted_png(*size))
        with pytest.raises(ImageError, match="zero size"):
            preprocess(Image.new("RGB", size))


@pytest.mark.parametrize("pil_limit", ["default", None])
def test_decompression_bomb_refused_fast(monkeypatch, pil_limit) -> None:
    """A header claiming 10¹⁰ pixels is refused from the header alone, with or without PIL's own guard."""
    if pil_limit is None:
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    for w, h in [(100_000, 100_000), (20_000, 10_000), (MAX_PIXELS + 1, 1)]:
        bomb = _crafted_png(w, h)
        assert len(bomb) < 200
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no DecompressionBombWarning may escape either
            with pytest.raises(ImageError, match="too large"):
                preprocess(bomb)
        assert time.perf_counter() - start < 1.0


def test_pil_bomb_guard_becomes_image_error(monkeypatch) -> None:
    """PIL's own DecompressionBombError (here from a lowered limit) surfaces as an ImageError."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError, match="too large"):
        preprocess(_encode(_random_rgb(60, 60), "PNG"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # between PIL's warning and error limits: decoded, no warning escapes
        assert preprocess(_encode(_random_rgb(30, 40), "PNG")).n_tiles == 1


@pytest.mark.parametrize("url", [
    "data:text/plain;base64,aGVsbG8=",  # not an image media type
    "data:,hello",  # RFC 2397 default: text/plain
    "data:image/png;base64,aGVsbG8gd29ybGQ=",  # claims PNG, holds text
    "data:image/png;base64,@@not*base64!!",  # bad base64
    "data:image/png;base64,iVBORw0KGgo=====",  # bad padding
    "data:image/png;base64",  # no comma
    "data:image/png;base64,",  # empty
])
def test_bad_data_urls(url) -> None:
    with pytest.raises(ImageError):
        preprocess(url)
