"""Where herd keeps its files, and writing them so that a crash never leaves a half-written one under the final
name."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """herd's cache: `$HERD_CACHE`, else `$XDG_CACHE_HOME/herd`, else `~/.cache/herd`."""
    if os.environ.get("HERD_CACHE"):
        return Path(os.environ["HERD_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "herd"


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to a hidden temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
