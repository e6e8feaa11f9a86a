"""Llama 4 image preprocessing: decode, fit to a tile canvas, pad, normalise, tile (spec §3.1), without torchvision.

- Inputs: a path (str/Path), a `file://` URL, raw bytes, a PIL image or a base64 `data:image/...` URL. Network URLs
  are refused: herd never fetches anything.
- RGB: any image with alpha (an A/a band, or a `transparency` entry such as a palette PNG's tRNS) is composited on
  white, as HF does; Meta does this only for RGBA and lets `.convert("RGB")` drop the alpha of LA/P images. The
  composite is Meta's paste-with-mask (equal to HF's alpha_composite on white). Everything else goes through
  `.convert("RGB")`. EXIF orientation is not applied (neither reference does).
- Canvas: candidates (a·tile) × (b·tile) for every a·b = n ≤ max_tiles; the smallest scale ≥ 1, else the largest
  scale < 1, then the smallest area. Scales are compared exactly (fractions); the references use float32, which
  agrees for any image within the pixel limit.
- Resize: aspect kept, upscaled only when both sides are < tile, with PIL's antialiased bilinear, as Meta's
  reference gets from torchvision on a PIL image. The short side is floored in float64 like Meta's, which can land
  one pixel below the exact quotient.
- Pad bottom/right with black; normalise (x/255 − 0.5)/0.5 in fp32 with the same operation order as torchvision's
  ToTensor + Normalize; split row-major; append the whole image squashed to tile × tile when there is > 1 tile.
- Untrusted input: sizes are checked from the header before decoding (limit `MAX_PIXELS`), truncated data is an
  error even where another library set PIL's `LOAD_TRUNCATED_IMAGES`, and every decoder failure is an `ImageError`.

Shapes: T tiles (plus the thumbnail), C channels (3), H pixel rows, W pixel columns; `pixels_TCHW`, `canvas_HWC`.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
import threading
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile

TILE = 336
MAX_TILES = 16
MAX_PIXELS = 178_956_970  # PIL's own hard limit at its default settings (2 × Image.MAX_IMAGE_PIXELS)

ImageSource = str | Path | bytes | bytearray | memoryview | Image.Image

_DECODE_LOCK = threading.Lock()  # PIL's truncation switch is process-global; hold it while we decode
_URL_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*):")


class ImageError(ValueError):
    """An image that cannot be read or used: missing, not an image, truncated, empty or too large."""


@dataclass
class ProcessedImage:
    """Normalised tiles for one image: rows·cols canvas tiles row-major, then the thumbnail if rows·cols > 1."""

    pixels_TCHW: torch.Tensor  # [rows·cols (+1), 3, tile, tile] float32 in [-1, 1]
    rows: int
    cols: int

    @property
    def n_tiles(self) -> int:
        """Canvas tiles, not counting the thumbnail."""
        return self.rows * self.cols

    @property
    def has_thumbnail(self) -> bool:
        return self.n_tiles > 1


# ----------------------------------------------------------------------------------------------- decoding


def load_image(source: ImageSource) -> Image.Image:
    """Decode `source` fully and return it as an RGB image; raise ImageError for anything unusable."""
    if not isinstance(source, Image.Image):
        return to_rgb(_open(_read_bytes(source)))
    _check_size(source.size)
    _decode(source)
    rgb = to_rgb(source)
    return source.copy() if rgb is source else rgb  # never hand back the caller's own object


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white; a decoded RGB image is returned as is."""
    try:
        if image.mode == "RGB" and "transparency" not in image.info:
            return image
        bands = image.getbands()
        if "A" in bands or "a" in bands or "transparency" in image.info:
            rgba = image.convert("RGBA")
            out = Image.new("RGB", rgba.size, (255, 255, 255))
            out.paste(rgba, mask=rgba.getchannel("A"))
            return out
        return image.convert("RGB")
    except (OSError, ValueError) as e:
        raise ImageError(f"cannot convert a {image.mode} image to RGB: {e}") from e


def _read_bytes(source: str | Path | bytes | bytearray | memoryview) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, str):
        match = _URL_SCHEME.match(source)
        scheme = match.group(1).lower() if match else ""
        if scheme == "data":
            return _decode_data_url(source)
        if scheme in ("http", "https"):
            raise ImageError(f"refusing to fetch {source[:80]!r}: herd makes no network requests; "
                             "download the image and pass its path or bytes")
        if scheme == "file":
            source = _file_url_path(source)
        elif len(scheme) > 1 and source[len(scheme) + 1:].startswith("//"):  # a one-letter scheme is a drive
            raise ImageError(f"unsupported URL scheme {scheme!r} in {source[:80]!r}; pass a path, bytes or a data URL")
    if not isinstance(source, (str, Path)):
        raise TypeError(f"expected a path, bytes, a data URL or a PIL image, got {type(source).__name__}")
    path = Path(source)
    try:
        return path.read_bytes()
    except OSError as e:
        raise ImageError(f"cannot read image file {str(path)[:200]!r}: {e.strerror or e}") from e


def _file_url_path(url: str) -> str:
    parsed = urllib.parse.urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise ImageError(f"refusing file URL on another host {parsed.netloc!r}")
    return urllib.request.url2pathname(parsed.path)


def _decode_data_url(url: str) -> bytes:
    header, comma, payload = url[len("data:"):].partition(",")
    if not comma:
        raise ImageError("malformed data URL: no ',' before the data")
    params = [p.strip().lower() for p in header.split(";")]
    media_type = params[0] or "text/plain"  # RFC 2397's default
    if not media_type.startswith("image/"):
        raise ImageError(f"data URL holds {media_type!r}, not an image")
    if "base64" not in params[1:]:
        return urllib.parse.unquote_to_bytes(payload)
    text = re.sub(r"\s+", "", urllib.parse.unquote(payload))
    text += "=" * (-len(text) % 4)  # tolerate stripped padding
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ImageError(f"data URL has invalid base64: {e}") from e


def _open(data: bytes) -> Image.Image:
    if not data:
        raise ImageError("empty image data")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # MAX_PIXELS decides, below
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageError(f"image too large: {e}") from e
    except (OSError, SyntaxError, ValueError) as e:  # UnidentifiedImageError is an OSError
        raise ImageError(f"not a readable image ({len(data)} bytes): {e}") from e
    _check_size(image.size)  # from the header, before any pixel is decoded
    _decode(image)
    return image


def _check_size(size_WH: tuple[int, int]) -> None:
    w, h = size_WH
    if w <= 0 or h <= 0:
        raise ImageError(f"image has zero size ({w}×{h})")
    if w * h > MAX_PIXELS:
        raise ImageError(f"image too large: {w}×{h} = {w * h:,} pixels exceeds the limit of {MAX_PIXELS:,}")


def _decode(image: Image.Image) -> None:
    """Decode the pixels now, refusing truncated data whatever PIL's global LOAD_TRUNCATED_IMAGES says."""
    with _DECODE_LOCK:
        saved = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            image.load()
        except Image.DecompressionBombError as e:
            raise ImageError(f"image too large: {e}") from e
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise ImageError(f"cannot decode {image.format or 'image'} data (truncated or corrupt?): {e}") from e
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = saved


# ----------------------------------------------------------------------------------------- canvas geometry


def candidate_canvases(max_tiles: int = MAX_TILES, tile: int = TILE) -> list[tuple[int, int]]:
    """(canvas_h, canvas_w) for n = max_tiles … 1 and each factor pair rows·cols = n, rows ascending."""
    _check_positive(max_tiles=max_tiles, tile=tile)
    return [(rows * tile, (n // rows) * tile) for n in range(max_tiles, 0, -1) for rows in range(1, n + 1)
            if n % rows == 0]


def best_canvas(height: int, width: int, max_tiles: int = MAX_TILES, tile: int = TILE) -> tuple[int, int]:
    """(canvas_h, canvas_w): the smallest scale ≥ 1, else the largest scale < 1, ties to the smallest area."""
    _check_positive(height=height, width=width)
    canvases = candidate_canvases(max_tiles, tile)
    scales = [min(Fraction(canvas_h, height), Fraction(canvas_w, width)) for canvas_h, canvas_w in canvases]
    upscales = [s for s in scales if s >= 1]
    chosen = min(upscales) if upscales else max(scales)
    tied = [c for c, s in zip(canvases, scales, strict=True) if s == chosen]
    return min(tied, key=lambda c: c[0] * c[1])  # min() keeps the first of equal areas


def resized_size(height: int, width: int, canvas_h: int, canvas_w: int, tile: int = TILE) -> tuple[int, int]:
    """(new_h, new_w): aspect kept, fitting the canvas, upscaled only until the longer side reaches `tile`."""
    _check_positive(height=height, width=width, canvas_h=canvas_h, canvas_w=canvas_w, tile=tile)
    target_w = min(max(width, tile), canvas_w)
    target_h = min(max(height, tile), canvas_h)
    scale_w, scale_h = target_w / width, target_h / height  # float64, as Meta's reference computes them
    if scale_w < scale_h:
        new_w, new_h = target_w, min(math.floor(height * scale_w), target_h)
    else:
        new_h, new_w = target_h, min(math.floor(width * scale_h), target_w)
    return max(new_h, 1), max(new_w, 1)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


# ---------------------------------------------------------------------------------------------- pixels


def preprocess(source: ImageSource, max_tiles: int = MAX_TILES, tile: int = TILE) -> ProcessedImage:
    """Decode `source` and turn it into normalised Llama 4 tiles (plus the global thumbnail when tiled)."""
    _check_positive(max_tiles=max_tiles, tile=tile)
    image = load_image(source)
    width, height = image.size
    canvas_h, canvas_w = best_canvas(height, width, max_tiles, tile)
    new_h, new_w = resized_size(height, width, canvas_h, canvas_w, tile)
    resized = image if (new_h, new_w) == (height, width) else image.resize((new_w, new_h), Image.Resampling.BILINEAR)

    canvas_HWC = np.zeros((canvas_h, canvas_w, 3), dtype=np.uint8)  # black padding, bottom and right
    canvas_HWC[:new_h, :new_w] = np.asarray(resized)
    rows, cols = canvas_h // tile, canvas_w // tile
    pixels_CHW = _normalise(canvas_HWC)
    pixels_TCHW = pixels_CHW.view(3, rows, tile, cols, tile).permute(1, 3, 0, 2, 4).reshape(rows * cols, 3, tile, tile)
    if rows * cols > 1:
        thumbnail_CHW = _normalise(np.array(image.resize((tile, tile), Image.Resampling.BILINEAR)))
        pixels_TCHW = torch.cat([pixels_TCHW, thumbnail_CHW[None]])
    return ProcessedImage(pixels_TCHW=pixels_TCHW.contiguous(), rows=rows, cols=cols)


def _normalise(pixels_HWC: np.ndarray) -> torch.Tensor:
    """uint8 HWC → fp32 CHW in [-1, 1]: x/255, then (x − 0.5)/0.5, the order torchvision applies them in."""
    return torch.from_numpy(np.ascontiguousarray(pixels_HWC)).permute(2, 0, 1).float().div(255).sub(0.5).div(0.5)
