"""What several commands share: loading a model with its tokenizer, and the sampling flags."""

from __future__ import annotations

import argparse
import logging
import time

import torch

import herd
from herd import chat
from herd.checkpoint import CheckpointError
from herd.config import preset
from herd.fast import optimize
from herd.infer.engine import Engine
from herd.infer.sampling import SamplingParams
from herd.infer.steps import FastDecode
from herd.model import Transformer
from herd.quant import DEFAULT_GROUPS, GROUPS, SCHEMES, quantize_model
from herd.tokenizer import Tokenizer, TokenizerError, load_tokenizer

log = logging.getLogger("herd")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def add_sampling_flags(parser: argparse.ArgumentParser, max_new_tokens: int = 256) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    parser.add_argument("--temperature", type=float, default=0.6, help="0 is greedy (default 0.6, as Meta's)")
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--top-k", type=int, default=0, help="0 is off")
    parser.add_argument("--min-p", type=float, default=0.0)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--frequency-penalty", type=float, default=0.0)
    parser.add_argument("--presence-penalty", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)


def add_quant_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quant", choices=list(SCHEMES), default=None,
                        help="quantize the weights while loading (herd.quant; the LM head, router, norms and "
                             "embedding stay in --dtype; the -a8 schemes also quantize activations to 8 bits, the "
                             "fastest decode). A checkpoint written by `herd quantize` loads quantized without it, "
                             "and an int4 / int8 one as int4-a8 / int8-a8 with it")


def add_quant_groups_flags(parser: argparse.ArgumentParser) -> None:
    """--modules and --lm-head: which module groups a quantization scheme applies to (`quant_groups`)."""
    parser.add_argument("--modules", nargs="+", choices=GROUPS, default=list(DEFAULT_GROUPS),
                        help=f"module groups to quantize (default: {' '.join(DEFAULT_GROUPS)})")
    parser.add_argument("--lm-head", action="store_true", help="quantize the LM head too")


def quant_groups(args: argparse.Namespace) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*args.modules, *(["lm_head"] if args.lm_head else [])]))


def codes(text: str) -> list[str]:
    """A comma-separated flag value (category codes such as `S1,S9`) as a list, blanks dropped."""
    return [code.strip() for code in text.split(",") if code.strip()]


def load_model(args: argparse.Namespace) -> Transformer:
    """The model of --model (a checkpoint, quantized while read with --quant) or --preset (random weights)."""
    quant = getattr(args, "quant", None)
    if getattr(args, "model", None):
        return herd.load(args.model, dtype=DTYPES[args.dtype], quantize=quant)
    model = herd.build(preset(args.preset), dtype=DTYPES[args.dtype], seed=0)
    return quantize_model(model, quant) if quant else model


def add_fast_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fast", action=argparse.BooleanOptionalAction, default=True,
                        help="fused projections and compiled matrix-vector products for decode (default on)")


def engine_for(model: Transformer, args: argparse.Namespace) -> Engine:
    """The engine the command runs: with herd.fast's inference paths and decode step unless --no-fast,
    compiled up front so that the reported tokens/s is the steady rate."""
    if not args.fast:
        return Engine(model)
    optimize(model)
    start = time.perf_counter()
    log.info("compiling the decode kernels (once per process) ...")
    engine = Engine(model, step=FastDecode(model))
    engine.generate([0], SamplingParams(temperature=0.0, max_new_tokens=2, stop_ids=()))
    log.info("compiled in %.1fs", time.perf_counter() - start)
    return engine


def image_collector(model: Transformer, max_tiles: int) -> chat.ImageCollector | None:
    """The chat format's image hook sized to the model's vision tower; None for a text-only model."""
    if model.vision is None:
        return None
    return chat.ImageCollector(max_tiles, model.vision.tokens_per_tile, model.vision.config.image_size)


def sampling_params(args: argparse.Namespace, **extra: object) -> SamplingParams:
    return SamplingParams(
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, min_p=args.min_p,
        repetition_penalty=args.repetition_penalty, frequency_penalty=args.frequency_penalty,
        presence_penalty=args.presence_penalty, max_new_tokens=args.max_new_tokens, seed=args.seed, **extra,
    )


def tokenizer_for(path: str | None, vocab_size: int) -> Tokenizer:
    """The checkpoint's tokenizer (or llama-models' Llama 4 one), checked against the model's vocabulary."""
    try:
        tokenizer = load_tokenizer(path)
    except TokenizerError as err:
        raise CheckpointError(f"{path or 'tokenizer'}: {err}") from None
    if tokenizer.n_words > vocab_size:
        raise CheckpointError(
            f"{path or 'preset'}: no tokenizer of the checkpoint's own, and the one found ({tokenizer.n_words:,} "
            f"ids) does not fit the model's vocabulary of {vocab_size:,}"
        )
    return tokenizer


def load_with_tokenizer(args: argparse.Namespace) -> tuple[Transformer, Tokenizer]:
    model = load_model(args)
    return model, tokenizer_for(args.model, model.config.vocab_size)


def add_answer_flags(parser: argparse.ArgumentParser, what: str, samples: int = 4) -> None:
    """The flags of sampling answers and checking them with a verifier (filter's pass_rate, pairs, eval answers)."""
    parser.add_argument("--samples", type=int, default=samples, metavar="N",
                        help=f"{what}sampled answers per question (default {samples})")
    parser.add_argument("--temperature", type=float, default=0.8, help=f"{what}sampling temperature (default 0.8)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="answer length cap (default 64)")
    parser.add_argument("--verifier", default="exact",
                        help="exact, number, or module:function(output, reference) -> bool (default exact)")
    parser.add_argument("--seed", type=int, default=0, help="the first sample's seed (sample j: seed + j)")
