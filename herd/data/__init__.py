"""Training data: `prepare` tokenizes text, code and JSONL into memory-mapped token shards with a manifest
(`herd data prepare`), `TokenShards` reads one split back as a single token stream for the trainer."""

from herd.data.prepare import FORMAT, MANIFEST, prepare
from herd.data.shards import TokenShards, read_manifest
from herd.data.sources import JSONL_SUFFIXES, TEXT_SUFFIXES, DataError, read_document, resolve

__all__ = [
    "FORMAT", "JSONL_SUFFIXES", "MANIFEST", "TEXT_SUFFIXES", "DataError", "TokenShards", "prepare", "read_document",
    "read_manifest", "resolve",
]
