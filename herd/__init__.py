"""herd: the Llama 4 herd (Scout, Maverick, Llama Guard 4) in plain PyTorch."""

from __future__ import annotations

import torch

from herd import chat, config
from herd.checkpoint import CheckpointError, load, save
from herd.config import ConfigError, ModelConfig, TextConfig, VisionConfig
from herd.infer.engine import Engine
from herd.infer.sampling import SamplingParams
from herd.model import Transformer
from herd.tokenizer import StreamDecoder, Tokenizer, TokenizerError, load_tokenizer

__all__ = [
    "CheckpointError", "ConfigError", "Engine", "ModelConfig", "SamplingParams", "StreamDecoder", "TextConfig",
    "Tokenizer", "TokenizerError", "Transformer", "VisionConfig", "build", "chat", "config", "load",
    "load_tokenizer", "save",
]
__version__ = "0.1.0"


def build(
    config: ModelConfig | TextConfig,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    seed: int | None = None,
) -> Transformer:
    """A randomly initialised model (eval mode) built directly on `device` in `dtype`; a
    `ModelConfig` with a vision part builds the multimodal model."""
    text = config.text if isinstance(config, ModelConfig) else config
    vision = config.vision if isinstance(config, ModelConfig) else None
    with torch.device("meta"):
        model = Transformer(text, vision)
    model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    model.init_weights(generator=generator)
    return model.to(dtype).eval()
