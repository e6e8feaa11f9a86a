"""llama.cpp as the CPU speed anchor: convert a herd/HF Llama 4 text checkpoint to GGUF and run llama-bench.

    bash benchmarks/llama_cpp_setup.sh                      # once: builds llama-bench / llama-simple
    .venv/bin/python benchmarks/llama_cpp.py --model HF_DIR [--types f32,bf16] [--threads 2]
        [--prompts 512,2048] [--gen 64] [--reps 3] [--out DIR] [--check] [--no-bench] [--json FILE]

`HF_DIR` is a `Llama4ForCausalLM` checkpoint (config.json + safetensors), e.g. one written by
`herd.save`. For each type the script converts it with llama.cpp's own `convert_hf_to_gguf.py`
(cached: an existing GGUF is reused), checks the GGUF metadata against config.json, and runs
`llama-bench -t THREADS -p 512,2048 -n 64 -r 3 -o json` (batch 1 decode; prompt processing with
llama-bench's default batch 2048 / ubatch 512). It prints a markdown table of tokens/s, the median of
the repetitions. `--check` also greedy-decodes 8 tokens with herd and with llama.cpp from the f32 GGUF
and compares them. Importable: `convert(hf_dir, out_dir, outtype) -> Path`, `bench(gguf, ...) -> dict`,
`gguf_metadata(gguf) -> dict`, `check_metadata(gguf, hf_dir) -> list[str]`, `smoke(gguf) -> str`,
`greedy_check(hf_dir, gguf) -> (same, herd_text, llama_text)`, `tokenize(gguf, text_file) -> ids`,
`kl_divergence(gguf, text_file, base_logits) -> dict` (llama-perplexity; quant_quality.py --llama-cpp).

Everything lives under `$HERD_BENCH_CACHE` (default ~/.cache/herd-bench): the llama.cpp tree and
binaries in `llama.cpp/` (see llama_cpp_setup.sh), GGUF files in `gguf/<checkpoint name>/` unless
`--out` says otherwise. The converter runs in this Python (it needs torch, numpy, transformers,
safetensors, pyyaml, tqdm, requests and tokenizers/tiktoken, all from PyPI and already in herd's dev
venv) and imports the vendored `gguf-py` itself (it puts it on sys.path); nothing is pip-installed.

What the converter needs and how it is met (the only workaround):

- It registers `Llama4ForCausalLM` (text-only, `conversion/llama.py: Llama4Model`, GGUF arch
  `llama4`) besides `Llama4ForConditionalGeneration`; no vision weights or config changes needed.
- It needs an HF tokenizer (`tokenizer.json`), which `herd.save` does not write. When HF_DIR has
  none, the conversion runs on a staging directory of symlinks to HF_DIR's files plus a Llama 4
  `tokenizer.json` / `tokenizer_config.json` built from Meta's `tokenizer.model` (HF_DIR's own, else the
  one shipped with `llama_models`) exactly as transformers' Llama 4 conversion script does it
  (TikTokenConverter with the o200k pattern, herd's 2048 special tokens, BOS template). Its
  pre-tokenizer hash is the one llama.cpp registers for meta-llama/Llama-4-Scout ("llama4"), and it
  encodes text to the same ids as herd's tokenizer. HF_DIR is never modified.

What llama.cpp does *not* read from the GGUF (hard-coded for arch `llama4` in src/models/llama4.cpp):
the attention chunk (8192), the NoPE interval (every 4th layer), temperature tuning (floor 8192, scale
0.1) and QK-norm (on unless the model has 128 experts). `check_metadata` therefore compares those
config.json values against the hard-coded ones, and the GGUF keys (expert count/used count/width,
interleave step, rope base, heads, ...) against config.json. A config.json whose `layer_types` are all
`full_attention` makes the converter write `sliding_window = 0`, which turns chunking *and* NoPE off.
A model with fewer than 4 layers (so no NoPE layer) converts and loads but llama.cpp aborts at its
first decode ("tensor buffer not set" for the unused attention-temperature input): test with >= 4 layers.
Checked (llama.cpp 0c1e570 from llama-cpp-python 0.3.36): on 4- and 8-layer random herd models the
f32 GGUF's 8-token greedy continuation is identical to herd's.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CACHE = Path(os.environ.get("HERD_BENCH_CACHE", Path.home() / ".cache" / "herd-bench")).expanduser()
LLAMA_CPP = CACHE / "llama.cpp"
SRC = LLAMA_CPP / "src"  # symlink to the vendored tree, made by llama_cpp_setup.sh
BIN = LLAMA_CPP / "build" / "bin"
SETUP = Path(__file__).resolve().parent / "llama_cpp_setup.sh"

# llama.cpp's pre-tokenizer hash for meta-llama/Llama-4-Scout-17B-16E-Instruct (conversion/base.py).
LLAMA4_TOKENIZER_PRE = "llama4"
# What src/models/llama4.cpp hard-codes instead of reading it from the GGUF.
LLAMA_CPP_FIXED = {"attention_chunk_size": 8192, "no_rope_layer_interval": 4, "floor_scale": 8192, "attn_scale": 0.1}
OUTTYPES = ("f32", "bf16", "f16", "q8_0")


def _binary(name: str) -> Path:
    path = BIN / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `bash {SETUP}` first")
    return path


def _run(cmd: Sequence[str | os.PathLike[str]], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run `cmd`; on failure raise with the tail of its output."""
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    if proc.returncode:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{tail}")
    return proc


# ----------------------------------------------------------------------------------------- tokenizer


def _tokenizer_model(hf_dir: Path) -> Path:
    for candidate in (hf_dir / "tokenizer.model", hf_dir / "original" / "tokenizer.model"):
        if candidate.is_file():
            return candidate
    packaged = importlib.resources.files("llama_models") / "llama4" / "tokenizer.model"
    if not packaged.is_file():
        raise FileNotFoundError(f"no tokenizer.json or tokenizer.model in {hf_dir}, and llama_models has none")
    return Path(str(packaged))


def write_hf_tokenizer(tokenizer_model: Path, out_dir: Path) -> Path:
    """Write the Llama 4 `tokenizer.json` + `tokenizer_config.json` for `tokenizer_model` into `out_dir`,
    as transformers' convert_llama4_weights_to_hf.py does (cached: skipped when both exist)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / "tokenizer.json").is_file() and (out_dir / "tokenizer_config.json").is_file():
        return out_dir
    from tokenizers import processors
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from herd.tokenizer import O200K_PATTERN, SPECIAL_TOKENS

    bos = "<|begin_of_text|>"
    tok = TikTokenConverter(str(tokenizer_model), pattern=O200K_PATTERN,
                            extra_special_tokens=list(SPECIAL_TOKENS)).converted()
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                      special_tokens=[(bos, SPECIAL_TOKENS[bos])]),
    ])
    tmp = out_dir / "tokenizer.json.tmp"
    tok.save(str(tmp))
    tmp.replace(out_dir / "tokenizer.json")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": "<|end_of_text|>",
              "pad_token": "<|finetune_right_pad|>", "add_bos_token": True, "model_max_length": 10485760}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out_dir


def _staged(hf_dir: Path, work_dir: Path) -> Path:
    """`hf_dir` itself when it has a tokenizer.json; else a directory of symlinks to its files plus
    the generated Llama 4 tokenizer files."""
    if (hf_dir / "tokenizer.json").is_file():
        return hf_dir
    tokenizer = write_hf_tokenizer(_tokenizer_model(hf_dir), CACHE / "tokenizer" / "llama4")
    stage = work_dir / "hf-staged"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    for f in hf_dir.iterdir():
        if f.is_file():
            (stage / f.name).symlink_to(f.resolve())
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (stage / name).symlink_to((tokenizer / name).resolve())
    return stage


# ------------------------------------------------------------------------------------------ convert


# Runs convert_hf_to_gguf.py with its BPE pre-tokenizer detection answering argv[1]: a herd-trained BPE over
# Llama 4's regex (the demo model's) has a vocabulary whose hash llama.cpp does not list, but the same
# pre-tokenizer as "llama4" (quant_quality.py checks the ids against herd's with llama-tokenize).
_CONVERT_AS = """import os, runpy, sys
pre, script = sys.argv[1], sys.argv[2]
sys.path[:0] = [os.path.dirname(script), os.path.join(os.path.dirname(script), "gguf-py")]
import conversion.base
conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
sys.argv = sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""


def convert(hf_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], outtype: str = "f32",
            *, force: bool = False, pre_tokenizer: str | None = None) -> Path:
    """Convert an HF Llama 4 text checkpoint to `out_dir/<name>-<outtype>.gguf` with llama.cpp's
    vendored convert_hf_to_gguf.py; an existing file is reused unless `force`. `pre_tokenizer` names the
    BPE pre-tokenizer for a tokenizer.json whose hash llama.cpp does not know (e.g. "llama4")."""
    if outtype not in OUTTYPES:
        raise ValueError(f"outtype {outtype!r} not in {OUTTYPES}")
    hf_dir, out_dir = Path(hf_dir).resolve(), Path(out_dir)
    if not (hf_dir / "config.json").is_file():
        raise FileNotFoundError(f"{hf_dir}/config.json not found")
    out = out_dir / f"{hf_dir.name}-{outtype}.gguf"
    if out.is_file() and not force:
        return out
    script = SRC / "convert_hf_to_gguf.py"
    if not script.is_file():
        raise FileNotFoundError(f"{script} not found: run `bash {SETUP}` first")
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = _staged(hf_dir, out_dir)
    tmp = out.with_name(out.name + ".tmp")
    t0 = time.perf_counter()
    args = [script, stage, "--outtype", outtype, "--outfile", tmp, "--model-name", hf_dir.name]
    _run([sys.executable, *(["-c", _CONVERT_AS, pre_tokenizer] if pre_tokenizer else []), *args])
    tmp.replace(out)
    print(f"converted {hf_dir} -> {out} ({out.stat().st_size / 2**20:.0f} MiB, "
          f"{time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    if stage != hf_dir:
        shutil.rmtree(stage)
    return out


QUANT_TYPES = ("Q8_0", "Q4_0", "Q4_K_M")  # llama-quantize's names for the rows herd compares with


def quantize(source_gguf: str | os.PathLike[str], qtype: str, *, force: bool = False) -> Path:
    """`llama-quantize` a BF16/F32 GGUF to `<name>-<qtype>.gguf` beside it (llama.cpp's default tensor choice
    for that type: Q8_0 quantizes the output tensor as Q8_0, Q4_K_M as Q6_K); reused unless `force`."""
    if qtype not in QUANT_TYPES:
        raise ValueError(f"qtype {qtype!r} not in {QUANT_TYPES}")
    source = Path(source_gguf)
    out = source.with_name(f"{source.stem.rsplit('-', 1)[0]}-{qtype.lower()}.gguf")
    if out.is_file() and not force:
        return out
    tmp = out.with_name(out.name + ".tmp")
    _run([_binary("llama-quantize"), source, tmp, qtype])
    tmp.replace(out)
    return out


def tokenize(gguf_path: str | os.PathLike[str], text_file: str | os.PathLike[str]) -> list[int]:
    """The ids llama.cpp gives the text of `text_file` (`llama-tokenize`, no escape processing)."""
    out = _run([_binary("llama-tokenize"), "-m", gguf_path, "-f", text_file, "--ids", "--log-disable", "--no-escape"])
    return json.loads(out.stdout.strip().splitlines()[-1])


def kl_divergence(gguf_path: str | os.PathLike[str], text_file: str | os.PathLike[str], base_logits: Path,
                  threads: int = 2, context: int = 512) -> dict[str, float]:
    """`llama-perplexity` on `text_file` (windows of `context` tokens, the second half of each scored). When
    `base_logits` does not exist, the full-precision model's logits are written there and its perplexity is
    returned ({"ppl"}); else `gguf_path` is compared with them ({"ppl", "kld", "top1", "ppl_ratio"}, top-1 as a
    fraction)."""
    cmd = [_binary("llama-perplexity"), "-m", gguf_path, "-f", text_file, "--no-escape", "-c", context, "-b", context,
           "-t", threads, "--kl-divergence-base", base_logits]
    if not base_logits.exists():
        proc = _run(cmd)
        return {"ppl": float(re.search(r"Final estimate: PPL = ([\d.]+)", proc.stdout + proc.stderr).group(1))}
    proc = _run([*cmd, "--kl-divergence"])
    out = proc.stdout + proc.stderr

    def number(pattern: str) -> float:
        found = re.search(pattern, out)
        if found is None:
            raise RuntimeError(f"llama-perplexity printed no {pattern!r}:\n{out[-2000:]}")
        return float(found.group(1))

    return {"ppl": number(r"Mean PPL\(Q\)\s*:\s*([\d.]+)"), "kld": number(r"Mean\s+KLD:\s*(-?[\d.]+)"),
            "top1": number(r"Same top p:\s*([\d.]+)") / 100,
            "ppl_ratio": number(r"Mean PPL\(Q\)/PPL\(base\)\s*:\s*([\d.]+)")}


def _gguf_module() -> Any:
    gguf_py = str(SRC / "gguf-py")
    if gguf_py not in sys.path:
        sys.path.insert(0, gguf_py)
    import gguf

    return gguf


def gguf_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Scalar/string GGUF metadata (arrays are summarised by length), plus `tensors`: name -> (type, shape)."""
    gguf = _gguf_module()
    reader = gguf.GGUFReader(str(path))
    meta: dict[str, Any] = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        if field.types and field.types[0] == gguf.GGUFValueType.ARRAY:
            meta[name] = f"[{len(field.data)} items]"
        else:
            meta[name] = field.contents()
    meta["tensors"] = {t.name: (t.tensor_type.name, tuple(int(d) for d in t.shape)) for t in reader.tensors}
    return meta


def check_metadata(path: str | os.PathLike[str], hf_dir: str | os.PathLike[str]) -> list[str]:
    """Mismatches between the GGUF (and llama.cpp's hard-coded Llama 4 constants) and config.json;
    empty when everything agrees."""
    cfg = json.loads((Path(hf_dir) / "config.json").read_text())
    cfg = cfg.get("text_config", cfg)
    meta = gguf_metadata(path)
    arch = meta.get("general.architecture")
    problems = [] if arch == "llama4" else [f"general.architecture = {arch!r}, expected 'llama4'"]
    rope = cfg.get("rope_parameters") or {}
    expected = {
        "block_count": cfg["num_hidden_layers"],
        "embedding_length": cfg["hidden_size"],
        "attention.head_count": cfg["num_attention_heads"],
        "attention.head_count_kv": cfg["num_key_value_heads"],
        "rope.dimension_count": cfg["head_dim"],
        "rope.freq_base": rope.get("rope_theta", cfg.get("rope_theta")),
        "attention.layer_norm_rms_epsilon": cfg["rms_norm_eps"],
        "attention.key_length": cfg["head_dim"],
        "attention.value_length": cfg["head_dim"],
        "expert_count": cfg["num_local_experts"],
        "expert_used_count": cfg["num_experts_per_tok"],
        "expert_feed_forward_length": cfg["intermediate_size"],
        "feed_forward_length": cfg["intermediate_size_mlp"],
        "interleave_moe_layer_step": cfg["interleave_moe_layer_step"],
        "vocab_size": cfg["vocab_size"],
        "context_length": cfg["max_position_embeddings"],
    }
    for key, want in expected.items():
        got = meta.get(f"{arch}.{key}")
        if got is None or (abs(float(got) - float(want)) > 1e-6 * max(1.0, abs(float(want)))):
            problems.append(f"{arch}.{key} = {got!r}, config.json says {want!r}")
    if f"{arch}.attention.sliding_window" in meta:
        problems.append(f"{arch}.attention.sliding_window = {meta[f'{arch}.attention.sliding_window']!r}: "
                        "llama.cpp then disables chunked attention and NoPE")
    if meta.get("tokenizer.ggml.pre") != LLAMA4_TOKENIZER_PRE:
        problems.append(f"tokenizer.ggml.pre = {meta.get('tokenizer.ggml.pre')!r}, expected 'llama4'")
    for key, fixed in LLAMA_CPP_FIXED.items():
        if cfg.get(key) != fixed:
            problems.append(f"config.json {key} = {cfg.get(key)!r} but llama.cpp hard-codes {fixed}")
    if cfg.get("use_qk_norm") is not True or not cfg.get("attn_temperature_tuning", True):
        problems.append("llama.cpp always applies QK-norm and temperature tuning for 16-expert Llama 4")
    if cfg["num_local_experts"] == 128:
        problems.append("128 experts: llama.cpp turns QK-norm off (Maverick)")
    if not any(n == 0 for n in cfg.get("no_rope_layers", [0])):
        problems.append("no NoPE layer (fewer than 4 layers): llama.cpp aborts at the first decode "
                        "(its attention-temperature input is then unused and gets no buffer)")
    if not cfg.get("tie_word_embeddings") and "output.weight" not in meta["tensors"]:
        problems.append("untied embeddings but no output.weight tensor")
    return problems


# -------------------------------------------------------------------------------------------- bench


def smoke(gguf_path: str | os.PathLike[str], n_predict: int = 8, prompt: str = "The capital of France is") -> str:
    """Load the model in llama-simple and greedily generate `n_predict` tokens; returns what it printed
    (the prompt, with BOS, then the generated text)."""
    return _run([_binary("llama-simple"), "-m", gguf_path, "-n", str(n_predict), prompt], timeout=300).stdout


def greedy_check(hf_dir: str | os.PathLike[str], gguf_path: str | os.PathLike[str], n_predict: int = 8,
                 prompt: str = "The capital of France is") -> tuple[bool, str, str]:
    """Greedy-decode `n_predict` tokens after BOS + `prompt` with herd (float32, from `hf_dir`) and with
    llama.cpp (llama-simple on `gguf_path`); returns (same text?, herd's text, llama.cpp's text). With
    random weights the greedy continuation is a sensitive fingerprint of the logits, so agreement on
    an f32 GGUF means llama.cpp computes the same model (chunking, NoPE, QK-norm, MoE routing)."""
    import torch

    import herd

    model = herd.load(hf_dir, dtype=torch.float32)
    has_tokenizer = any((Path(hf_dir) / f).is_file() for f in ("tokenizer.model", "original/tokenizer.model",
                                                                 "tokenizer.json"))
    tok = herd.load_tokenizer(hf_dir if has_tokenizer else None)
    ids = [tok.bos_id, *tok.encode(prompt)]
    new: list[int] = []
    with torch.no_grad():
        for _ in range(n_predict):
            new.append(int(model(torch.tensor([ids + new]))[0, -1].argmax()))
    ours = tok.decode(new)
    printed = smoke(gguf_path, n_predict, prompt)
    theirs = printed.split(prompt, 1)[1] if prompt in printed else printed
    return ours.rstrip("\n") == theirs.rstrip("\n"), ours, theirs


def bench(gguf_path: str | os.PathLike[str], threads: int = 2, prompts: Sequence[int] = (512, 2048), gen: int = 64,
          reps: int = 3, extra: Sequence[str] = ()) -> dict[str, Any]:
    """Run llama-bench (prompt processing at each of `prompts`, decode of `gen` tokens at batch 1) and
    return {"pp512": tok/s, ..., "tg64": tok/s, "raw": llama-bench's JSON records}; tok/s is the median
    over the `reps` repetitions."""
    cmd: list[str | os.PathLike[str]] = [_binary("llama-bench"), "-m", gguf_path, "-t", str(threads), "-r", str(reps),
                                         "-o", "json"]
    if prompts:
        cmd += ["-p", ",".join(map(str, prompts))]
    else:
        cmd += ["-p", "0"]
    cmd += ["-n", str(gen) if gen else "0", *extra]
    records = json.loads(_run(cmd).stdout)
    out: dict[str, Any] = {}
    for rec in records:
        name = f"pp{rec['n_prompt']}" if rec["n_prompt"] else f"tg{rec['n_gen']}"
        samples = rec.get("samples_ts") or [rec["avg_ts"]]
        out[name] = statistics.median(samples)
    out["raw"] = records
    return out


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    """One row per GGUF type, one column per llama-bench test."""
    tests: list[str] = []
    for res in results.values():
        tests += [k for k in res if k != "raw" and k not in tests]
    lines = ["| llama.cpp | " + " | ".join(f"{t} tok/s" for t in tests) + " |",
             "|---|" + "---:|" * len(tests)]
    for kind, res in results.items():
        lines.append(f"| {kind.upper()} | " + " | ".join(f"{res[t]:.2f}" if t in res else "-" for t in tests) + " |")
    return "\n".join(lines)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, type=Path, help="HF Llama4ForCausalLM checkpoint directory")
    p.add_argument("--types", default="f32,bf16", help="GGUF outtypes, comma-separated (default f32,bf16)")
    p.add_argument("--out", type=Path, help="GGUF directory (default $HERD_BENCH_CACHE/gguf/<model dir name>)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompts", type=_ints, default=(512, 2048), help="prompt lengths (default 512,2048)")
    p.add_argument("--gen", type=int, default=64, help="decode tokens (default 64)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--force", action="store_true", help="reconvert even if the GGUF exists")
    p.add_argument("--check", action="store_true",
                   help="greedy-decode 8 tokens with herd and llama.cpp (f32 GGUF) and compare")
    p.add_argument("--no-bench", action="store_true", help="convert and check only")
    p.add_argument("--json", type=Path, help="also write the results (with llama-bench's raw records) here")
    args = p.parse_args(argv)

    out_dir = args.out or CACHE / "gguf" / args.model.resolve().name
    results: dict[str, dict[str, Any]] = {}
    for kind in [t.strip() for t in args.types.split(",") if t.strip()]:
        path = convert(args.model, out_dir, kind, force=args.force)
        problems = check_metadata(path, args.model)
        print(f"{path}: metadata " + ("matches config.json" if not problems else "MISMATCH:\n  " +
                                      "\n  ".join(problems)), file=sys.stderr)
        if args.check and kind == "f32":
            same, ours, theirs = greedy_check(args.model, path)
            print(f"greedy 8 tokens: herd {ours!r}, llama.cpp {theirs!r}: " + ("SAME" if same else "DIFFERENT"),
                  file=sys.stderr)
        if not args.no_bench:
            results[kind] = bench(path, args.threads, args.prompts, args.gen, args.reps)
            print(f"{kind}: " + ", ".join(f"{k} {v:.2f} tok/s" for k, v in results[kind].items() if k != "raw"),
                  file=sys.stderr)
    if results:
        raw = results[next(iter(results))]["raw"][0]
        print(f"\nllama.cpp {raw.get('build_commit', '?')} ({raw.get('backends', '?')}), {args.threads} threads, "
              f"{raw.get('cpu_info', '?')}; median of {args.reps} reps\n")
        print(markdown_table(results))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
