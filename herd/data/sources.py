"""Where the training text comes from: turning `herd data prepare` inputs into files, and files into documents.

- An input is the name "stdlib" (this Python's standard library, without its tests), a file, a directory
  (searched recursively for known text/code suffixes and JSONL, hidden entries skipped, symlinked directories
  not followed so a link cycle cannot loop), or a glob (`**` recurses). The result is sorted and deduplicated
  by real path, so the same corpus gives the same file order however the inputs were spelled.
- A file named explicitly (or matched by a glob) is read whatever its suffix: the user asked for it. Only
  directory searches filter by suffix. `.json` is not a known suffix: JSON files are usually data, not text.
- Text is strict UTF-8: silently replacing bad bytes would train on mojibake, so a bad file is reported with
  the byte offset instead. A leading BOM is dropped, nothing else is touched (no stripping, no newline changes).
- A JSONL file holds one document per line in its "text" field; lines are split on "\\n" only, because JSON
  strings may contain raw U+2028 and friends, which `str.splitlines` would cut.
- Whitespace-only documents are dropped: they would be just BOS/EOS in the token stream.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["JSONL_SUFFIXES", "TEXT_SUFFIXES", "DataError", "read_document", "resolve"]

log = logging.getLogger("herd")

TEXT_SUFFIXES = frozenset({
    # prose and markup
    ".txt", ".text", ".md", ".markdown", ".rst", ".adoc", ".org", ".tex", ".bib",
    # code
    ".py", ".pyi", ".pyx", ".c", ".h", ".cc", ".cpp", ".cxx", ".hh", ".hpp", ".hxx", ".cu", ".cuh", ".m", ".mm",
    ".rs", ".go", ".java", ".kt", ".kts", ".scala", ".swift", ".cs", ".fs", ".js", ".mjs", ".cjs", ".jsx", ".ts",
    ".tsx", ".rb", ".php", ".pl", ".pm", ".lua", ".r", ".jl", ".hs", ".ml", ".mli", ".ex", ".exs", ".erl", ".clj",
    ".dart", ".zig", ".nim", ".el", ".lisp", ".scm", ".sql", ".proto", ".s", ".asm", ".f90", ".v", ".sv", ".vhd",
    # shell, build and config
    ".sh", ".bash", ".zsh", ".fish", ".ps1", ".cmake", ".mk", ".toml", ".yaml", ".yml", ".ini", ".cfg",
    ".css", ".scss", ".html", ".htm", ".xml",
})
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})

STDLIB = "stdlib"
# Test suites are mostly fixtures (and some are deliberately not UTF-8); idlelib/lib2to3 are applications.
_STDLIB_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3",
                               "__pycache__"})
_BOM = "\ufeff"


class DataError(ValueError):
    """Bad input for `herd data`: the message names the file (and line or byte where it applies)."""


class BadSource(Exception):
    """Why one file cannot be used, without the file name: `prepare` reports it per file (skip or stop).

    `line` is 1-based within the text that was parsed; for a JSONL byte range that is relative to the range.
    """

    def __init__(self, reason: str, line: int | None = None) -> None:
        super().__init__(reason, line)
        self.reason = reason
        self.line = line

    def message(self, path: Path | str, line: int | None = None) -> str:
        line = self.line if line is None else line
        return f"{path}:{line}: {self.reason}" if line is not None else f"{path}: {self.reason}"


@dataclass
class Texts:
    """The documents of a file or of a JSONL byte range."""

    texts: list[str]
    empty: int = 0  # whitespace-only documents dropped
    lines: int = 0  # lines in a JSONL range, to number the lines of the ranges after it


# --- input discovery ---------------------------------------------------------------------------------------------

def _has_magic(spec: str) -> bool:
    return any(c in spec for c in "*?[")


def _walk(root: Path, suffixes: frozenset[str], skip_dirs: frozenset[str] = frozenset()) -> list[Path]:
    """Files under `root` with a known suffix; hidden files and directories are skipped."""
    def unlistable(err: OSError) -> None:
        if Path(err.filename) == root:
            raise DataError(f"{root}: cannot list directory: {err.strerror}")
        log.warning("%s: cannot list directory (%s); its files are left out", err.filename, err.strerror)

    found = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=unlistable):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in skip_dirs)
        # A broken symlink is kept: reading it fails and the file is reported, rather than silently lost.
        found += [Path(dirpath, f) for f in filenames
                  if not f.startswith(".") and Path(f).suffix.lower() in suffixes]
    return found


def _expand(spec: str) -> list[Path]:
    known = TEXT_SUFFIXES | JSONL_SUFFIXES
    if spec == STDLIB:
        files = _walk(Path(sysconfig.get_paths()["stdlib"]), frozenset({".py"}), _STDLIB_SKIP_DIRS)
    elif os.path.lexists(spec):
        path = Path(spec)
        if path.is_dir():
            files = _walk(path, known)
        elif path.is_file():
            files = [path]
        elif path.is_symlink():
            raise DataError(f"{spec}: broken symbolic link (to {os.readlink(spec)})")
        else:
            raise DataError(f"{spec}: not a regular file or directory")
    elif _has_magic(spec):
        matches = sorted(glob.glob(spec, recursive=True))
        if not matches:
            raise DataError(f"{spec}: no file matches this pattern")
        files = []
        for match in matches:
            files += _walk(Path(match), known) if os.path.isdir(match) else [Path(match)]
    else:
        raise DataError(f"{spec}: no such file or directory")
    if not files:
        raise DataError(f"{spec}: no files with a known text, code or JSONL suffix")
    return files


def resolve(inputs: list[str]) -> list[Path]:
    """The files named by `inputs` (see the module docstring), absolute, sorted and deduplicated.

    Raises DataError naming the first input that is missing or names no file.
    """
    if not inputs:
        raise DataError("no inputs given")
    found: dict[str, Path] = {}
    for spec in inputs:
        for path in _expand(str(spec)):
            found.setdefault(os.path.realpath(path), Path(os.path.abspath(path)))
    return sorted(found.values())


# --- reading -----------------------------------------------------------------------------------------------------

def is_jsonl(path: Path) -> bool:
    return path.suffix.lower() in JSONL_SUFFIXES


def _decode(data: bytes, offset: int = 0) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadSource(f"invalid UTF-8 at byte {offset + err.start}") from None
    return text[1:] if offset == 0 and text.startswith(_BOM) else text


def _read(path: Path, start: int = 0, end: int | None = None) -> tuple[bytes, int]:
    """The bytes of the lines that start in [start, end) (to EOF when end is None), and their offset."""
    try:
        with open(path, "rb") as f:
            if start:
                # The line that straddles `start` belongs to the range before; a newline just before
                # `start` makes this readline consume only that newline.
                f.seek(start - 1)
                f.readline()
            begin = f.tell()
            if end is None:
                return f.read(), begin
            if begin >= end:
                return b"", begin
            data = f.read(end - begin)
            if data and not data.endswith(b"\n"):
                data += f.readline()
            return data, begin
    except OSError as err:
        raise BadSource(f"cannot read: {err.strerror or err}") from None


def _jsonl_texts(text: str) -> Texts:
    out = Texts([])
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start a new one
    out.lines = len(lines)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as err:
            reason = f"{err.msg} at column {err.colno}" if isinstance(err, json.JSONDecodeError) else str(err)
            raise BadSource(f"not valid JSON ({reason})", number) from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise BadSource('expected a JSON object with a string "text" field', number)
        if record["text"].strip():
            out.texts.append(record["text"])
        else:
            out.empty += 1
    return out


def read_texts(path: Path, start: int = 0, end: int | None = None) -> Texts:
    """The documents of `path`, or for JSONL of the lines starting in bytes [start, end); raises BadSource."""
    data, begin = _read(path, start, end if is_jsonl(path) else None)
    text = _decode(data, begin)
    if is_jsonl(path):
        return _jsonl_texts(text)
    return Texts([text]) if text.strip() else Texts([], empty=1)


def jsonl_records(path: Path) -> Iterator[tuple[int, str, Any]]:
    """(line number, line as read, its JSON) for every non-blank line of a JSONL file; a line that is not JSON
    is a DataError naming it. For the files whose records are structured (chat, preference pairs)."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield number, line, json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: not JSON ({err.msg})") from None


def read_document(path: Path) -> list[str]:
    """The texts of one file: the whole file for text and code, each line's "text" field for JSONL.

    Whitespace-only documents are dropped, so the list may be empty. Raises DataError naming the file
    (and the line for bad JSONL, the byte offset for invalid UTF-8) when the file cannot be used.
    """
    path = Path(path)
    try:
        return read_texts(path).texts
    except BadSource as err:
        raise DataError(err.message(path)) from None


def read_corpus(inputs: list[str], max_chars: int) -> list[str]:
    """Documents of `inputs` in order, up to `max_chars` characters in all; bad files are skipped with a
    warning (for tokenizer training, where one unreadable file should not end the run)."""
    texts: list[str] = []
    total = files = skipped = 0
    for path in resolve(inputs):
        try:
            docs = read_document(path)
        except ValueError as err:  # DataError, which names the file
            log.warning("skipping %s", err)
            skipped += 1
            continue
        files += 1
        for doc in docs:
            texts.append(doc[:max_chars - total])
            total += len(texts[-1])
            if total >= max_chars:
                log.info("read %d characters from %d files: the --max-chars cap, the rest is not used", total, files)
                return texts
    log.info("read %d characters from %d files%s", total, files, f" ({skipped} skipped)" if skipped else "")
    return texts
