"""`herd data prepare`: tokenize a text corpus into memory-mapped token shards with a manifest.

- Every document becomes `[bos] + encode(text) + [eos]`, appended to one token stream per split and cut into
  raw little-endian shards (`train-00000.bin`, ...) of `shard_tokens` tokens; documents may straddle shards,
  readers (`TokenShards`) see one stream. uint16 when the vocabulary fits, else uint32 (Llama 4's 202,048).
- The split is by document and depends on the text alone: a document is validation when its sha256 falls
  below `val_fraction`. Re-running with more inputs, moved files or another worker count never moves a
  document between splits, and exact duplicates always land together, so they cannot leak train into val.
  With two or more documents at least one is validation and at least one is training: the document nearest
  the threshold on the other side is held back while streaming and moved over at the end if needed.
- Tokenizing runs in a `spawn` pool (the same on Linux, macOS and Windows, and safe in a process that has
  torch threads); each worker loads the tokenizer file itself. `imap` keeps input order, so the output is
  byte-identical for any worker count. Large JSONL files are cut into line-aligned byte ranges so that one
  big file still uses every worker; the main process only writes.
- A bad file (unreadable, invalid UTF-8, a bad JSONL line) is skipped and listed in the manifest, or stops
  the run (`on_error="stop"`). A JSONL file that fails in a later range is rolled back: the shards are
  truncated to where the file started, so the manifest never counts half a file.
- Atomic: everything is written into a hidden sibling directory, manifest last, fsynced, then renamed to
  `out`. A killed run leaves no `out` (only the hidden directory), and readers require manifest.json, so
  nothing half-written looks like a dataset. `overwrite` only ever replaces a dataset or an empty directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tqdm import tqdm

from herd.data.sources import BadSource, DataError, is_jsonl, read_texts, resolve
from herd.tokenizer import Tokenizer, load_tokenizer

__all__ = ["FORMAT", "MANIFEST", "prepare"]

log = logging.getLogger("herd")

FORMAT = "herd-tokens/1"
MANIFEST = "manifest.json"
SPLITS = ("train", "val")
DEFAULT_SHARD_TOKENS = 1 << 26  # 256 MiB at uint32: few files for big corpora, fine-grained enough to copy
JSONL_CHUNK_BYTES = 16 << 20  # a few seconds of tokenizing per task; small enough to spread one big file


class _Unit(NamedTuple):
    """One task: a whole file, or the lines of a JSONL file that start in bytes [start, end)."""

    file: int
    path: str
    start: int
    end: int | None
    chunk: int
    last: bool


@dataclass
class _Result:
    unit: _Unit
    docs: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (hash, tokens) in file order
    empty: int = 0
    lines: int = 0
    error: BadSource | None = None


def split_hash(text: str) -> int:
    """The hash that puts a document in the val split when below val_fraction·2⁶⁴ (`herd.eval` picks held-out
    text by it too)."""
    # surrogatepass: JSON "\ud800" escapes decode to lone surrogates, which strict UTF-8 refuses
    return int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:8], "big")


class _Encoder:
    """Reads and tokenizes one unit; runs in a worker or, with one worker, in this process."""

    def __init__(self, tokenizer: Tokenizer, dtype: np.dtype) -> None:
        self.tok = tokenizer
        self.dtype = dtype

    def __call__(self, unit: _Unit) -> _Result:
        try:
            texts = read_texts(Path(unit.path), unit.start, unit.end)
        except BadSource as err:
            return _Result(unit, error=err)
        docs = []
        for text in texts.texts:
            ids = self.tok.encode(text)
            tokens = np.empty(len(ids) + 2, self.dtype)
            tokens[0], tokens[-1] = self.tok.bos_id, self.tok.eos_id
            tokens[1:-1] = ids
            docs.append((split_hash(text), tokens))
        return _Result(unit, docs, texts.empty, texts.lines)


_worker_encoder: _Encoder | None = None


def _init_worker(tokenizer_path: str, dtype: str) -> None:
    global _worker_encoder
    _worker_encoder = _Encoder(load_tokenizer(tokenizer_path), np.dtype(dtype))


def _encode_in_worker(unit: _Unit) -> _Result:
    assert _worker_encoder is not None, "the pool initializer did not run"
    return _worker_encoder(unit)


class _ShardWriter:
    """Appends tokens to one split's shards, opening a new shard every `shard_tokens` tokens."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.directory, self.split, self.dtype, self.shard_tokens = directory, split, dtype, shard_tokens
        self.shards: list[list[Any]] = []  # [file name, tokens]
        self.tokens = 0
        self._file: Any = None

    def write(self, tokens: np.ndarray) -> None:
        while len(tokens):
            if self._file is None or self.shards[-1][1] >= self.shard_tokens:
                self._open_next()
            piece = tokens[:self.shard_tokens - self.shards[-1][1]]
            self._file.write(piece.data)
            self.shards[-1][1] += len(piece)
            self.tokens += len(piece)
            tokens = tokens[len(piece):]

    def _open_next(self) -> None:
        self.close()
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self._file = open(self.directory / name, "wb")  # noqa: SIM115 -- kept open across writes
        self.shards.append([name, 0])

    def truncate(self, tokens: int) -> None:
        """Drop everything after the first `tokens` tokens: the rollback of a file skipped part way."""
        self.close()
        while self.shards and self.tokens - self.shards[-1][1] >= tokens:
            name, n = self.shards.pop()
            (self.directory / name).unlink()
            self.tokens -= n
        if self.tokens > tokens:
            keep = self.shards[-1][1] - (self.tokens - tokens)
            os.truncate(self.directory / self.shards[-1][0], keep * self.dtype.itemsize)
            self.shards[-1][1], self.tokens = keep, tokens
        if self.shards and self.shards[-1][1] < self.shard_tokens:
            self._file = open(self.directory / self.shards[-1][0], "ab")  # noqa: SIM115

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def summary(self, documents: int) -> dict[str, Any]:
        return {"tokens": self.tokens, "documents": documents,
                "shards": [{"file": name, "tokens": n} for name, n in self.shards]}


class _Splitter:
    """Routes documents to the train and val writers by hash, holding back the document nearest the
    threshold on each side so that neither split ends up empty when it can be avoided."""

    def __init__(self, writers: dict[str, _ShardWriter], val_fraction: float) -> None:
        self.writers = writers
        self.threshold = math.floor(val_fraction * 2**64)
        self.documents = dict.fromkeys(SPLITS, 0)  # written, not counting the held ones
        self.held: dict[str, tuple[int, np.ndarray] | None] = dict.fromkeys(SPLITS)

    def add(self, h: int, tokens: np.ndarray) -> None:
        split = "val" if h < self.threshold else "train"
        held = self.held[split]
        if held is None:
            self.held[split] = (h, tokens)
            return
        nearer = h < held[0] if split == "train" else h > held[0]
        if nearer:
            self.held[split] = (h, tokens)
            h, tokens = held
        self._write(split, tokens)

    def _write(self, split: str, tokens: np.ndarray) -> None:
        self.writers[split].write(tokens)
        self.documents[split] += 1

    def state(self) -> tuple[dict[str, int], dict[str, int], dict[str, Any]]:
        return {s: w.tokens for s, w in self.writers.items()}, dict(self.documents), dict(self.held)

    def restore(self, state: tuple[dict[str, int], dict[str, int], dict[str, Any]]) -> None:
        tokens, documents, held = state
        for split, writer in self.writers.items():
            writer.truncate(tokens[split])
        self.documents, self.held = dict(documents), dict(held)

    def finish(self) -> None:
        train, val = self.held["train"], self.held["val"]
        if val is None and train is not None and self.documents["train"] and self.threshold > 0:
            self.held = {"train": None, "val": train}  # every document hashed to train: the nearest goes to val
        elif train is None and val is not None:
            self.held = {"train": val, "val": None}  # likewise the other way (tiny corpus, large fraction)
        for split in SPLITS:
            if self.held[split] is not None:
                self._write(split, self.held[split][1])
                self.held[split] = None
        for writer in self.writers.values():
            writer.close()


def _units(files: list[Path], chunk_bytes: int) -> list[_Unit]:
    units = []
    for i, path in enumerate(files):
        size = 0
        if is_jsonl(path):
            with contextlib.suppress(OSError):  # reading it will report the problem
                size = path.stat().st_size
        n = max(1, math.ceil(size / chunk_bytes))
        # The last range reads to EOF, so a file that grew since stat() is read whole.
        units += [_Unit(i, str(path), k * chunk_bytes, (k + 1) * chunk_bytes if k < n - 1 else None, k, k == n - 1)
                  for k in range(n)]
    return units


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform/filesystem can open or fsync a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    with open(directory / MANIFEST, "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(directory)


def _check_replaceable(out: Path, overwrite: bool) -> None:
    """`out` may be replaced only when asked, and only if it is a dataset or an empty directory: a typo'd
    --out must not delete someone's home directory."""
    if not os.path.lexists(out):
        return
    if not overwrite:
        raise DataError(f"{out} exists; pass --overwrite to replace it")
    if not out.is_dir() or out.is_symlink():
        raise DataError(f"{out} exists and is not a directory; refusing to replace it")
    if not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise DataError(f"{out} exists and is not a herd dataset (no {MANIFEST}); refusing to replace it")


def _publish(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished `tmp` to `out`, replacing an old dataset (moved aside first, deleted last)."""
    _check_replaceable(out, overwrite)
    if not os.path.lexists(out):
        os.rename(tmp, out)
    else:
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.rename(out, old)
        try:
            os.rename(tmp, out)
        except BaseException:
            os.rename(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(out.parent)


def _results(units: list[_Unit], tok: Tokenizer, dtype: np.dtype, workers: int,
             stack: contextlib.ExitStack) -> Iterator[_Result]:
    if workers <= 1 or len(units) <= 1:
        encode = _Encoder(tok, dtype)
        return (encode(unit) for unit in units)
    pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(
        workers, initializer=_init_worker, initargs=(str(tok.source), dtype.name)))
    # Batches amortise the IPC for many small files; big ones are few and already split into ranges.
    return pool.imap(_encode_in_worker, units, chunksize=max(1, min(32, len(units) // (workers * 8))))


def prepare(
    inputs: Iterable[str],
    out: str | os.PathLike,
    tokenizer_path: str | os.PathLike | None = None,
    *,
    val_fraction: float = 0.005,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    workers: int | None = None,
    on_error: str = "skip",
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Tokenize `inputs` (see `herd.data.sources.resolve`) into the dataset directory `out`; return its manifest.

    `tokenizer_path` is a tokenizer file or checkpoint directory (None: Llama 4's tokenizer from llama-models).
    `val_fraction` in [0, 1) is the expected share of validation documents (0: no validation split).
    `on_error` is "skip" (log, list under "skipped") or "stop" (raise DataError) for a bad file.
    Raises DataError for bad arguments or inputs, an existing `out` without `overwrite`, or an empty corpus;
    TokenizerError when the tokenizer cannot be loaded.
    """
    inputs, out = [str(spec) for spec in inputs], Path(out)
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if shard_tokens < 1:
        raise DataError(f"shard_tokens must be at least 1, got {shard_tokens}")
    if workers is not None and workers < 1:
        raise DataError(f"workers must be at least 1, got {workers}")
    if on_error not in ("skip", "stop"):
        raise DataError(f"on_error must be 'skip' or 'stop', got {on_error!r}")
    _check_replaceable(out, overwrite)  # before the long part, and again when publishing
    files = resolve(inputs)
    tok = load_tokenizer(tokenizer_path)
    dtype = np.dtype("<u2") if tok.n_words <= 1 << 16 else np.dtype("<u4")
    units = _units(files, JSONL_CHUNK_BYTES)
    workers = min(workers or _default_workers(), len(units))

    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.tmp-*"):
        log.warning("%s is from another run of this command, or left over from an interrupted one", stale)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # only ever ours: the name carries this process's id
    tmp.mkdir()
    try:
        with contextlib.ExitStack() as stack:
            writers = {split: _ShardWriter(tmp, split, dtype, shard_tokens) for split in SPLITS}
            stack.callback(lambda: [w.close() for w in writers.values()])
            splitter = _Splitter(writers, val_fraction)
            results = _results(units, tok, dtype, workers, stack)
            bar = stack.enter_context(tqdm(total=len(files), unit="file", desc="tokenizing", disable=not progress,
                                           file=sys.stderr, mininterval=0.5))
            if progress:
                from tqdm.contrib.logging import logging_redirect_tqdm
                stack.enter_context(logging_redirect_tqdm())
            skipped: list[dict[str, str]] = []
            failed: set[int] = set()
            n_files = n_documents = n_empty = n_tokens = 0
            line = 1  # first line number of the current JSONL range
            begun = time.perf_counter()
            for result in results:
                unit = result.unit
                if unit.file in failed:
                    continue  # later ranges of a file that was already skipped
                if unit.chunk == 0:
                    line, at_file_start = 1, (splitter.state(), n_documents, n_empty, n_tokens)
                if result.error is not None:
                    error_line = None if result.error.line is None else line + result.error.line - 1
                    message = result.error.message(unit.path, error_line)
                    if on_error == "stop":
                        raise DataError(message)
                    log.warning("skipping %s", message)
                    reason = result.error.reason if error_line is None else f"line {error_line}: {result.error.reason}"
                    skipped.append({"file": unit.path, "reason": reason})
                    failed.add(unit.file)
                    if unit.chunk > 0:
                        state, n_documents, n_empty, n_tokens = at_file_start
                        splitter.restore(state)
                    bar.update()
                    continue
                line += result.lines
                for h, tokens in result.docs:
                    splitter.add(h, tokens)
                n_documents += len(result.docs)
                n_empty += result.empty
                n_tokens += sum(len(tokens) for _, tokens in result.docs)
                if unit.last:
                    n_files += 1
                    bar.update()
                    bar.set_postfix_str(f"{n_tokens / max(time.perf_counter() - begun, 1e-9):,.0f} tok/s",
                                        refresh=False)
            splitter.finish()
            if n_tokens == 0:
                raise DataError(f"empty corpus: {len(files)} file(s) gave no text"
                                + (f" ({len(skipped)} skipped)" if skipped else ""))
            manifest = {
                "format": FORMAT,
                "dtype": dtype.name,
                "tokenizer": {"path": str(tok.source), "sha256": _file_sha256(Path(tok.source)),
                              "n_words": tok.n_words, "bos_id": tok.bos_id, "eos_id": tok.eos_id},
                "sources": inputs,
                "files": n_files,
                "documents": {"total": n_documents, "empty_dropped": n_empty},
                "val_fraction": val_fraction,
                "shard_tokens": shard_tokens,
                "splits": {s: writers[s].summary(splitter.documents[s]) for s in SPLITS},
                "skipped": skipped,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
        _write_manifest(tmp, manifest)
        _publish(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
