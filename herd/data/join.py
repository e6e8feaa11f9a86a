"""`herd data join`: long documents for long-context training, made by joining the files of each package.

- Under each input directory (or the stdlib), the files of one top-level package (a first-level subdirectory)
  are concatenated in path order into one text file, each introduced by a `# file: path` line, so names are
  used far from where they are defined; files at the top level stay documents of their own (the short part
  of the mix). `herd data prepare` then tokenizes the result as usual.
- `hold_out`: files that `herd data prepare --val-fraction hold_out` on the same sources puts in validation
  are left out, so a model pretrained on those sources and validated on their held-out split never trains
  on its validation text here.
- Written atomically: into a hidden sibling directory, renamed to `out` when complete.
"""

from __future__ import annotations

import math
import os
import shutil
import sysconfig
from pathlib import Path
from typing import Any

from tqdm import tqdm

from herd.data.prepare import split_hash
from herd.data.sources import STDLIB, DataError, read_document, resolve


def _root(spec: str) -> Path:
    root = Path(sysconfig.get_paths()["stdlib"]) if spec == STDLIB else Path(spec)
    if not root.is_dir():
        raise DataError(f"{spec}: `herd data join` takes directories (or 'stdlib'), whose packages it joins")
    return root


def join_packages(inputs: list[str], out: str | os.PathLike, hold_out: float = 0.0,
                  progress: bool = True) -> dict[str, Any]:
    """Write one text file per package (and per top-level file) of `inputs` into `out`; returns counts."""
    if not 0 <= hold_out < 1:
        raise DataError(f"hold_out must be in [0, 1), got {hold_out}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out} exists and is not empty")
    threshold = math.floor(hold_out * 2**64)
    groups: dict[str, list[tuple[str, str]]] = {}
    held = 0
    for spec in inputs:
        root = _root(spec)
        for path in tqdm(resolve([spec]), desc=f"reading {spec}", unit="file", disable=not progress):
            rel = path.relative_to(root)
            for text in read_document(path):
                if split_hash(text) < threshold:
                    held += 1
                    continue
                key = f"{root.name}/{rel.parts[0]}" if len(rel.parts) > 1 else f"{root.name}/{rel}"
                groups.setdefault(key, []).append((str(rel), text))
    if not groups:
        raise DataError(f"no text in {' '.join(inputs)}")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        sizes = []
        for i, (key, files) in enumerate(sorted(groups.items())):
            body = "".join(f"# file: {rel}\n{text.rstrip()}\n\n" for rel, text in sorted(files))
            (tmp / f"{i:05d}-{key.replace('/', '-')}.txt").write_text(body, encoding="utf-8")
            sizes.append(len(body))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    packages = sum(len(files) > 1 for files in groups.values())
    return {"documents": len(groups), "packages": packages, "files": sum(len(f) for f in groups.values()),
            "held_out": held, "characters": sum(sizes), "largest": max(sizes)}
