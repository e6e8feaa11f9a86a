"""Packed training documents: a forward over several documents with `documents_BS` gives each document the
logits it has alone (global and chunked layers, temperature tuning, positions restarting per document)."""

from __future__ import annotations

import pytest
import torch

import herd
from herd.config import preset
from herd.model import document_positions


def test_document_positions_restart_at_each_document():
    documents_BS = torch.tensor([[0, 0, 0, 1, 1, 2], [5, 5, 5, 5, 5, 5]])
    assert document_positions(documents_BS).tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]]


@pytest.mark.parametrize("name", ["debug", "herd-10m"])
def test_packed_documents_see_only_themselves(name):
    # debug: chunk 32 and floor scale 16, so the 40- and 70-token documents cross chunk and temperature steps
    text = preset(name).text.replace(attention_chunk_size=32, floor_scale=16.0, vocab_size=512)
    model = herd.build(text, seed=0)
    g = torch.Generator().manual_seed(0)
    lengths = [40, 7, 70, 11]
    docs = [torch.randint(0, 512, (n,), generator=g) for n in lengths]
    tokens_1S = torch.cat(docs)[None]
    documents_1S = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None]
    with torch.no_grad():
        packed = model(tokens_1S, documents_BS=documents_1S)[0]
        alone = torch.cat([model(d[None])[0] for d in docs])
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)


def test_one_document_is_the_plain_forward():
    model = herd.build(preset("debug").text, seed=0)
    tokens_BS = torch.randint(0, 1000, (2, 50), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens_BS, documents_BS=torch.zeros_like(tokens_BS)), model(tokens_BS),
                                   atol=1e-5, rtol=1e-5)
