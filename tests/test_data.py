"""`herd data prepare` and `TokenShards`: inputs, round trip, split, determinism, bad input, atomicity, reading."""

from __future__ import annotations

import importlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from herd.cli.main import main
from herd.data import DataError, TokenShards, prepare, read_document, resolve
from herd.tokenizer import load_tokenizer

# `herd.data.prepare` the attribute is the function (re-exported by herd.data); this is the module.
prepare_mod = importlib.import_module("herd.data.prepare")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(None)


@pytest.fixture(autouse=True)
def shared_tokenizer(monkeypatch, tok):
    """prepare() loads the tokenizer on every call; in-process runs share one here (spawned workers still
    load it from its file, as in real use)."""
    monkeypatch.setattr(prepare_mod, "load_tokenizer", lambda path: tok if path is None else load_tokenizer(path))


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def jsonl(*records) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


@pytest.fixture
def corpus(tmp_path) -> Path:
    root = tmp_path / "corpus"
    write(root / "a.txt", "\ufeffPlain text, with a BOM that is not part of the document.\n")
    write(root / "b.md", "# Title\n\nSome *markdown*.\n")
    write(root / "c.py", "def f(x):\n    return x + 1\n")
    write(root / "d.jsonl", jsonl({"text": "first record"}, "", {"text": "second\u2028record", "id": 2},
                                  {"text": "   "}, {"text": "third 🦙 record"}))
    write(root / "nested" / "deeper" / "e.rs", "fn main() { println!(\"hi\"); }\n")
    write(root / "nested" / "image.png", b"\x89PNG\r\n\x1a\n\x00\xff")  # unknown suffix: not searched
    write(root / "nested" / ".hidden" / "x.txt", "hidden")
    write(root / "globbed" / "g1.txt", "globbed one")
    write(root / "globbed" / "g2.log", "globbed two, any suffix")
    return root


def all_texts(files: list[Path]) -> list[str]:
    return [text for f in files for text in read_document(f)]


def split_docs(tokens: np.ndarray, tok) -> list[list[int]]:
    """The documents of a token stream: each starts with BOS and ends with EOS."""
    starts = np.flatnonzero(tokens == tok.bos_id)
    docs = [tokens[a:b].tolist() for a, b in zip(starts, [*starts[1:], len(tokens)], strict=True)]
    assert all(d[-1] == tok.eos_id for d in docs) and (not len(tokens) or starts[0] == 0)
    return docs


def stream(out: Path, split: str) -> np.ndarray:
    shards = TokenShards(out, split)
    return shards.read(0, len(shards))


# --- inputs --------------------------------------------------------------------------------------------------------

def test_resolve_mixed_inputs(corpus):
    files = resolve([str(corpus / "a.txt"), str(corpus / "nested"), str(corpus / "globbed" / "*"),
                     str(corpus / "d.jsonl"), str(corpus / "**" / "*.md"), str(corpus / "a.txt")])
    names = [f.relative_to(corpus).as_posix() for f in files]
    assert names == ["a.txt", "b.md", "d.jsonl", "globbed/g1.txt", "globbed/g2.log", "nested/deeper/e.rs"]
    assert all(f.is_absolute() for f in files)
    everything = [f.relative_to(corpus).as_posix() for f in resolve([str(corpus)])]
    assert everything == ["a.txt", "b.md", "c.py", "d.jsonl", "globbed/g1.txt", "nested/deeper/e.rs"]


def test_resolve_errors_name_the_input(corpus, tmp_path):
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "empty_dir").mkdir()
    for spec, message in [(tmp_path / "missing.txt", "no such file"), (tmp_path / "*.nothing", "no file matches"),
                          (tmp_path / "dangling", "broken symbolic link"), (tmp_path / "empty_dir", "no files")]:
        with pytest.raises(DataError, match=message) as err:
            resolve([str(corpus), str(spec)])
        assert str(spec) in str(err.value)


def test_resolve_stdlib():
    files = resolve(["stdlib"])
    assert len(files) > 300 and all(f.suffix == ".py" for f in files)
    parts = {part for f in files for part in f.parts}
    assert not parts & {"site-packages", "test", "tests", "idlelib", "lib2to3"}
    assert any(f.parts[-2:] == ("json", "decoder.py") for f in files)


def test_read_document(corpus, tmp_path):
    assert read_document(corpus / "a.txt") == ["Plain text, with a BOM that is not part of the document.\n"]
    assert read_document(corpus / "d.jsonl") == ["first record", "second\u2028record", "third 🦙 record"]
    assert read_document(write(tmp_path / "blank.md", " \n\t\n")) == []
    bad = write(tmp_path / "bad.jsonl", jsonl({"text": "ok"}, "", '{"text": 3}'))
    with pytest.raises(DataError, match=rf"{bad}:3: .*string \"text\""):
        read_document(bad)
    with pytest.raises(DataError, match=rf"{bad}:1: not valid JSON"):
        read_document(write(bad, "{oops\n"))
    latin1 = write(tmp_path / "latin1.txt", "caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(DataError, match=rf"{latin1}: invalid UTF-8 at byte 3"):
        read_document(latin1)
    gone = write(tmp_path / "gone.txt", "here, then not")
    gone.unlink()  # a file listed, then deleted before it is read
    with pytest.raises(DataError, match=rf"{gone}: cannot read"):
        read_document(gone)


# --- prepare -------------------------------------------------------------------------------------------------------

def test_round_trip_across_shards(corpus, tmp_path, tok):
    out = tmp_path / "ds"
    inputs = [str(corpus), str(corpus / "globbed" / "*.log")]
    manifest = prepare(inputs, out, val_fraction=0.3, shard_tokens=16, workers=1, progress=False)
    texts = all_texts(resolve(inputs))
    assert len(texts) == 9
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["format"] == "herd-tokens/1" and manifest["dtype"] == "uint32"
    assert manifest["sources"] == inputs and manifest["files"] == 7 and manifest["skipped"] == []
    assert manifest["documents"] == {"total": 9, "empty_dropped": 1}
    assert manifest["tokenizer"]["n_words"] == tok.n_words and len(manifest["tokenizer"]["sha256"]) == 64
    docs = []
    for split in ("train", "val"):
        info = manifest["splits"][split]
        assert info["documents"] >= 1
        assert all(s["tokens"] <= 16 for s in info["shards"]) and len(info["shards"]) == -(-info["tokens"] // 16)
        for s in info["shards"]:
            assert (out / s["file"]).stat().st_size == 4 * s["tokens"]
        split_stream = stream(out, split)
        assert len(split_stream) == info["tokens"]
        docs += split_docs(split_stream, tok)
    # every document is [bos] + encode(text) + [eos], and decodes back to its text
    assert sorted(docs) == sorted([[tok.bos_id, *tok.encode(t), tok.eos_id] for t in texts])
    assert sorted(tok.decode(d) for d in docs) == sorted(f"<|begin_of_text|>{t}<|end_of_text|>" for t in texts)


def many_docs(root: Path, n: int = 60) -> Path:
    for i in range(n // 3):
        write(root / f"doc{i:02d}.txt", f"Document number {i}. " * (i % 5 + 1))
    write(root / "records.jsonl", jsonl(*({"text": f"record {i}: " + "words " * i} for i in range(n - n // 3))))
    return root


def dataset_bytes(out: Path) -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != "manifest.json"}
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["created"]
    return {**files, "manifest": json.dumps(manifest).encode()}


@pytest.mark.slow
def test_deterministic_for_any_worker_count(tmp_path, monkeypatch, tok):
    corpus = many_docs(tmp_path / "corpus")
    monkeypatch.setattr(prepare_mod, "JSONL_CHUNK_BYTES", 256)  # the JSONL file becomes several ranges
    runs = {}
    for name, workers in [("one", 1), ("again", 1), ("two", 2)]:
        prepare([str(corpus)], tmp_path / name, val_fraction=0.2, shard_tokens=50, workers=workers, progress=False)
        runs[name] = dataset_bytes(tmp_path / name)
    assert runs["one"] == runs["again"] == runs["two"]
    manifest = json.loads((tmp_path / "one" / "manifest.json").read_text())
    assert manifest["documents"]["total"] == 60 and 1 <= manifest["splits"]["val"]["documents"] < 30
    # the split follows the text alone: another file order and chunking put every document on the same side
    val = {tok.decode(d[1:-1]) for d in split_docs(stream(tmp_path / "one", "val"), tok)}
    texts = all_texts(resolve([str(corpus)]))
    shuffled = tmp_path / "shuffled"
    for i, text in enumerate(reversed(texts)):
        write(shuffled / f"{i:03d}.md", text)
    monkeypatch.setattr(prepare_mod, "JSONL_CHUNK_BYTES", 1 << 20)
    prepare([str(shuffled)], tmp_path / "other", val_fraction=0.2, workers=1, progress=False)
    assert {tok.decode(d[1:-1]) for d in split_docs(stream(tmp_path / "other", "val"), tok)} == val


@pytest.mark.parametrize("n_docs,val_fraction,expected", [
    (2, 1e-12, (1, 1)),   # nothing hashes below the threshold: the nearest document is moved to val
    (3, 0.999999, (1, 2)),  # everything hashes to val: one comes back to train
    (1, 0.999999, (1, 0)),  # a single document always trains
    (5, 0.0, (5, 0)),  # no validation split asked for
])
def test_both_splits_are_kept_non_empty(tmp_path, n_docs, val_fraction, expected):
    for i in range(n_docs):
        write(tmp_path / "c" / f"{i}.txt", f"text {i}")
    manifest = prepare([str(tmp_path / "c")], tmp_path / "ds", val_fraction=val_fraction, workers=1, progress=False)
    assert (manifest["splits"]["train"]["documents"], manifest["splits"]["val"]["documents"]) == expected
    assert len(manifest["splits"]["val"]["shards"]) == min(expected[1], 1)


@pytest.fixture
def bad_corpus(tmp_path) -> Path:
    root = tmp_path / "bad"
    write(root / "good.txt", "a perfectly good file")
    write(root / "latin1.txt", "na\xefve".encode("latin-1"))
    # the bad line is in a later byte range of the file: what its earlier ranges wrote must be rolled back
    write(root / "late_error.jsonl", jsonl(*({"text": f"fine line {i}"} for i in range(20)), "not json"))
    (root / "dangling.txt").symlink_to(root / "nowhere.txt")
    locked = write(root / "locked.md", "no permission")
    locked.chmod(0)
    yield root
    locked.chmod(0o644)


def test_bad_files_are_skipped_and_listed(bad_corpus, tmp_path, monkeypatch, tok, caplog):
    monkeypatch.setattr(prepare_mod, "JSONL_CHUNK_BYTES", 64)
    manifest = prepare([str(bad_corpus)], tmp_path / "ds", val_fraction=0.0, shard_tokens=5, workers=1,
                       progress=False)
    reasons = {Path(s["file"]).name: s["reason"] for s in manifest["skipped"]}
    assert reasons.pop("latin1.txt") == "invalid UTF-8 at byte 2"
    assert reasons.pop("late_error.jsonl").startswith("line 21: not valid JSON")
    assert reasons.pop("dangling.txt").startswith("cannot read")
    if os.geteuid() != 0:  # root reads a chmod 000 file anyway
        assert reasons.pop("locked.md").startswith("cannot read")
    assert reasons == {}
    for name in ("latin1.txt", "late_error.jsonl", "dangling.txt"):
        assert any(name in r.message and "skipping" in r.message for r in caplog.records)
    docs = [tok.decode(d[1:-1]) for d in split_docs(stream(tmp_path / "ds", "train"), tok)]
    assert "a perfectly good file" in docs and not any("fine line" in d for d in docs)
    assert manifest["splits"]["train"]["documents"] == len(docs) == manifest["documents"]["total"]


def test_on_error_stop_names_the_file(bad_corpus, tmp_path):
    with pytest.raises(DataError, match=r"dangling\.txt: cannot read"):
        prepare([str(bad_corpus)], tmp_path / "ds", on_error="stop", workers=1, progress=False)
    assert not (tmp_path / "ds").exists() and not list(tmp_path.glob(".ds.tmp-*"))


def test_empty_corpus_is_an_error(tmp_path):
    write(tmp_path / "c" / "blank.txt", "\n\n   \n")
    write(tmp_path / "c" / "blank.jsonl", jsonl({"text": ""}, {"text": " "}))
    with pytest.raises(DataError, match="empty corpus"):
        prepare([str(tmp_path / "c")], tmp_path / "ds", workers=1, progress=False)
    write(tmp_path / "c" / "broken.txt", b"\xff\xfe")
    with pytest.raises(DataError, match=r"empty corpus.*1 skipped"):
        prepare([str(tmp_path / "c")], tmp_path / "ds", workers=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_existing_output_needs_overwrite(corpus, tmp_path):
    out = tmp_path / "ds"
    first = prepare([str(corpus / "a.txt")], out, workers=1, progress=False)
    with pytest.raises(DataError, match=r"exists; pass --overwrite"):
        prepare([str(corpus)], out, workers=1, progress=False)
    second = prepare([str(corpus)], out, workers=1, overwrite=True, progress=False)
    assert second["files"] == 6 != first["files"]
    assert json.loads((out / "manifest.json").read_text()) == second
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "ds"]  # no tmp or old directory left
    # a directory that is not a dataset is never replaced
    with pytest.raises(DataError, match="not a herd dataset"):
        prepare([str(corpus)], corpus / "nested", workers=1, overwrite=True, progress=False)


@pytest.mark.parametrize("where", ["_write_manifest", "add"])
def test_interrupted_run_leaves_nothing_that_looks_complete(corpus, tmp_path, monkeypatch, where):
    out = tmp_path / "ds"
    prepare([str(corpus / "a.txt")], out, workers=1, progress=False)
    before = dataset_bytes(out)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    target = prepare_mod._Splitter if where == "add" else prepare_mod
    monkeypatch.setattr(target, where, interrupt)
    for destination, overwrite in [(tmp_path / "fresh", False), (out, True)]:
        with pytest.raises(KeyboardInterrupt):
            prepare([str(corpus)], destination, workers=1, overwrite=overwrite, progress=False)
    assert not (tmp_path / "fresh").exists()
    assert dataset_bytes(out) == before  # the old dataset is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "ds"]


# --- reading -------------------------------------------------------------------------------------------------------

def test_token_shards_read_across_boundaries(corpus, tmp_path, tok):
    out = tmp_path / "ds"
    manifest = prepare([str(corpus)], out, val_fraction=0.0, shard_tokens=7, workers=1, progress=False)
    shards = TokenShards(out)
    files = [out / s["file"] for s in manifest["splits"]["train"]["shards"]]
    assert len(files) > 5
    whole = np.concatenate([np.fromfile(f, dtype="<u4") for f in files]).astype(np.int64)
    assert len(shards) == shards.n_tokens == len(whole) == manifest["splits"]["train"]["tokens"]
    assert (shards.bos_id, shards.eos_id, shards.n_words) == (tok.bos_id, tok.eos_id, tok.n_words)
    for start, length in [(0, len(whole)), (5, 4), (7, 7), (6, 2), (3, 20), (len(whole) - 1, 1), (len(whole), 0)]:
        got = shards.read(start, length)
        assert got.dtype == np.int64 and np.array_equal(got, whole[start:start + length])
    for start, length in [(-1, 2), (len(whole) - 1, 2), (0, -1)]:
        with pytest.raises(IndexError):
            shards.read(start, length)
    clone = pickle.loads(pickle.dumps(shards))
    assert len(pickle.dumps(shards)) < 4096 and np.array_equal(clone.read(0, 10), whole[:10])
    assert len(TokenShards(out, "val")) == 0
    with pytest.raises(DataError, match="no split 'test'"):
        TokenShards(out, "test")


def test_token_shards_reject_incomplete_datasets(corpus, tmp_path):
    out = tmp_path / "ds"
    prepare([str(corpus)], out, val_fraction=0.0, shard_tokens=7, workers=1, progress=False)
    with pytest.raises(DataError, match=r"no manifest\.json"):
        TokenShards(tmp_path)
    with open(out / "train-00002.bin", "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(DataError, match=r"train-00002\.bin: 30 bytes.*incomplete or modified"):
        TokenShards(out)
    (out / "train-00002.bin").unlink()
    with pytest.raises(DataError, match=r"train-00002\.bin: shard listed in the manifest cannot be read"):
        TokenShards(out)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "format": "other/2"}))
    with pytest.raises(DataError, match="format is 'other/2'"):
        TokenShards(out)


# --- command line --------------------------------------------------------------------------------------------------

def run_cli(argv: list[str]) -> int:
    return main(["data", *argv])


def test_cli_prepare(corpus, tmp_path, capsys):
    out = tmp_path / "ds"
    argv = ["prepare", str(corpus), "--out", str(out), "--workers", "1", "--shard-tokens", "32",
            "--val-fraction", "0.2", "--no-progress"]
    assert run_cli(argv) == 0
    printed = capsys.readouterr().out
    assert "6 files, 8 documents" in printed and str(out) in printed and "train" in printed and "val" in printed
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("herd data: error:") and "--overwrite" in err
    assert run_cli([*argv, "--overwrite", "--on-error", "stop"]) == 0
    assert run_cli(["prepare", str(tmp_path / "missing"), "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip().endswith("missing: no such file or directory")
    with pytest.raises(SystemExit):
        run_cli(["prepare", str(corpus)])  # --out is required


def test_join_makes_one_document_per_package_and_leaves_out_held_out_files(tmp_path):
    from herd.data.join import join_packages
    from herd.data.prepare import split_hash

    src = tmp_path / "src"
    (src / "pkg" / "sub").mkdir(parents=True)
    texts = {f"pkg/m{i}.py": f"def f{i}():\n    return {i}\n" for i in range(40)}
    texts["pkg/sub/deep.py"] = "X = 1\n"
    texts["top.py"] = "print('top')\n"
    for rel, text in texts.items():
        (src / rel).write_text(text)
    held = {rel for rel, text in texts.items() if split_hash(text) < 0.2 * 2**64}
    assert held and held != set(texts)
    counts = join_packages([str(src)], tmp_path / "out", hold_out=0.2, progress=False)
    out = {p.name: p.read_text() for p in (tmp_path / "out").iterdir()}
    joined = next(text for name, text in out.items() if name.endswith("-src-pkg.txt"))
    kept = [rel for rel in sorted(texts) if rel.startswith("pkg/") and rel not in held]
    assert [line[len("# file: pkg/"):] for line in joined.splitlines() if line.startswith("# file:")] == \
        [rel[len("pkg/"):] for rel in kept]
    assert all(texts[rel].strip() in joined for rel in kept)
    assert not any(texts[rel].strip() in joined for rel in held if rel.startswith("pkg/"))
    assert counts["held_out"] == len(held) and counts["files"] == len(texts) - len(held)
    with pytest.raises(DataError, match="not empty"):
        join_packages([str(src)], tmp_path / "out", progress=False)
