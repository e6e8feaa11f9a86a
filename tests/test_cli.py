"""The `herd` command as a user runs it: a subprocess for the entry point, in-process for the rest."""

import subprocess
import sys

import pytest
from hf_oracle import SCOUT_LIKE

import herd
from herd.cli.main import main


def test_info_prints_exact_counts(capsys):
    assert main(["info", "llama4-scout-17b-16e", "llama4-maverick-17b-128e"]) == 0
    out = capsys.readouterr().out
    assert "108,641,793,536 total" in out and "17,172,894,720 active" in out
    assert "401,583,781,376 total" in out and "17,184,691,200 active" in out
    assert "fp8" in out and "int4" in out and "B/token" in out


def test_info_all_presets_and_a_checkpoint(tmp_path, capsys):
    herd.save(herd.build(SCOUT_LIKE, seed=0), tmp_path)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in herd.config.PRESETS)
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "4 layers, dim 64" in out and "4 experts (top-1)" in out


def test_generate_from_preset_and_checkpoint(tmp_path, capsys):
    assert main(["generate", "--preset", "debug", "--max-new-tokens", "5", "--temperature", "0"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.split()) == 5 and "tokens/s" in captured.err
    herd.save(herd.build(SCOUT_LIKE, seed=0), tmp_path)
    assert main(["generate", "--model", str(tmp_path), "--prompt-ids", "1,2,3", "--max-new-tokens", "4",
                 "--temperature", "0.8", "--seed", "3"]) == 0
    first = capsys.readouterr().out
    assert main(["generate", "--model", str(tmp_path), "--prompt-ids", "1,2,3", "--max-new-tokens", "4",
                 "--temperature", "0.8", "--seed", "3"]) == 0
    assert capsys.readouterr().out == first  # a seed reproduces a sampled output


@pytest.mark.parametrize("argv,message", [
    (["generate", "--model", "/nonexistent/ckpt"], "does not exist"),
    (["generate", "--preset", "debug", "--prompt-ids", "a,b"], "comma-separated integers"),
    (["generate", "--preset", "debug", "--prompt-ids", "999999999"], "outside the vocabulary"),
    (["info", "/nonexistent/ckpt"], "unknown preset"),
])
def test_errors_are_clear(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_console_entry_point():
    out = subprocess.run([sys.executable, "-m", "herd.cli.main", "info", "debug"], capture_output=True, text=True,
                         check=True).stdout
    assert "debug" in out and "active per token" in out
