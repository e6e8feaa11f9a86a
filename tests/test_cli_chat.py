"""`herd chat` driven end to end through a pseudo-terminal, as a user would."""

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest
from hf_oracle import SCOUT_LIKE

import herd
from herd.config import preset

TOKENIZER = Path(__file__).resolve().parents[1] / ".." / "shared" / "llama4" / "tokenizer.model"


class Terminal:
    def __init__(self, argv: list[str]) -> None:
        self.master, slave = pty.openpty()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # A shell starts background jobs with SIGINT ignored, and Python keeps that: give the child the
        # default disposition a terminal user's process has, whatever ran this test.
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        os.close(slave)
        self.seen = ""

    def expect(self, text: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            if time.monotonic() > deadline:
                raise AssertionError(f"did not see {text!r}; terminal so far:\n{self.seen}")
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if ready:
                try:
                    self.seen += os.read(self.master, 4096).decode(errors="replace")
                except OSError:
                    break
        found = self.seen
        self.seen = self.seen[self.seen.index(text) + len(text):]
        return found

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=30)
        finally:
            os.close(self.master)


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    assert TOKENIZER.exists(), f"the shared tokenizer is missing: {TOKENIZER} (CI keeps ../shared beside the repo)"
    path = tmp_path_factory.mktemp("debug")
    herd.save(herd.build(preset("debug"), seed=0), path)
    (path / "tokenizer.model").write_bytes(TOKENIZER.read_bytes())
    return path


@pytest.mark.slow
def test_chat_session(chat_model):
    term = Terminal([sys.executable, "-m", "herd.cli.main", "chat", "--model", str(chat_model), "--dtype",
                     "float32", "--temperature", "0", "--max-new-tokens", "6", "--system", "Be brief."])
    term.expect(">>> ")
    term.send("Hello there\n")
    term.expect(">>> ")  # a reply streamed, then the next prompt
    term.send("first line \\\nsecond line\n")  # a continued line
    term.expect("... ")
    term.expect(">>> ")
    term.send('"""\nblock one\nblock two\n"""\n')  # a multi-line block
    term.expect(">>> ")
    term.send("/reset\n")
    term.expect("(history cleared)")
    term.expect(">>> ")
    term.send("/exit\n")
    assert term.close() == 0


@pytest.mark.slow
def test_ctrl_c_stops_a_reply_not_the_session(chat_model):
    term = Terminal([sys.executable, "-m", "herd.cli.main", "chat", "--model", str(chat_model), "--dtype",
                     "float32", "--temperature", "1.0", "--max-new-tokens", "100000", "--seed", "0"])
    term.expect(">>> ")
    term.send("Tell me a very long story\n")
    time.sleep(1.5)  # let the reply stream for a while
    os.killpg(term.proc.pid, signal.SIGINT)
    term.expect("(stopped)")
    term.expect(">>> ")
    time.sleep(0.5)  # (a real terminal's Ctrl-C also flushes the typed line; a signal alone cannot)
    os.killpg(term.proc.pid, signal.SIGINT)  # Ctrl-C at the prompt clears the line and keeps the session
    term.expect(">>> ")
    term.send("/reset\n")
    term.expect("(history cleared)")
    term.send("\x04")  # Ctrl-D leaves
    assert term.close() == 0


def test_ctrl_c_dropped_by_python_is_still_seen(capsys):
    from herd.cli.chat import interruptible

    class Thing:
        pass

    before = signal.getsignal(signal.SIGINT)  # default_int_handler; SIG_IGN when run as a background job
    with interruptible() as ctrl_c:
        thing = Thing()
        ref = weakref.ref(thing, lambda _: os.kill(os.getpid(), signal.SIGINT))
        del thing  # the callback's KeyboardInterrupt is dropped by Python, as when torch's compiler runs one
    assert ref() is None and ctrl_c.is_set()
    assert "Exception ignored" not in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.slow
def test_chat_missing_model_is_a_clear_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "herd.cli.main", "chat", "--model", str(tmp_path / "nope")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "does not exist" in out.stderr


@pytest.mark.slow
def test_generate_text_and_chat_prompt(chat_model):
    run = lambda *a: subprocess.run([sys.executable, "-m", "herd.cli.main", *a], capture_output=True, text=True)
    out = run("generate", "--model", str(chat_model), "--prompt", "def f():", "--max-new-tokens", "5",
              "--temperature", "0")
    assert out.returncode == 0 and "5 new tokens" in out.stderr
    out = run("generate", "--model", str(chat_model), "--prompt", "Hi", "--chat", "--max-new-tokens", "3",
              "--temperature", "0")
    assert out.returncode == 0 and "[11 prompt tokens" in out.stderr  # BOS, user header, "Hi", eot, assistant header


def test_tokenize_and_small_vocab_needs_own_tokenizer(tmp_path, capsys):
    from herd.cli.main import main

    chat_file = tmp_path / "chat.json"
    chat_file.write_text('[{"role": "system", "content": "You are a helpful assistant"}, '
                         '{"role": "user", "content": "Hi"}]')
    assert main(["tokenize", "--chat", str(chat_file)]) == 0
    expected = [200000, 200005, 15651, 200006, 368, 4662, 583, 262, 19933, 43910, 200008,
                200005, 1556, 200006, 368, 25181, 200008, 200005, 140680, 200006, 368]
    assert [int(t) for t in capsys.readouterr().out.split()] == expected
    assert main(["tokenize", "--text", "<|eot|>", "--pieces"]) == 0
    assert "159276" in capsys.readouterr().out
    herd.save(herd.build(SCOUT_LIKE, seed=0), tmp_path / "tiny")  # vocabulary 256, no tokenizer of its own
    assert main(["generate", "--model", str(tmp_path / "tiny"), "--prompt", "hi"]) == 2
    assert "does not fit the model's vocabulary" in capsys.readouterr().err
    long_prompt = "word " * 5000
    assert main(["generate", "--preset", "debug", "--prompt", long_prompt, "--max-new-tokens", "2"]) == 2
    assert "does not fit the context" in capsys.readouterr().err


IMAGES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "images"


def _photo(name: str = "dog.jpg") -> str:
    path = IMAGES / name
    assert path.exists(), f"the shared test photo is missing: {path} (CI keeps ../shared beside the repo)"
    return str(path)


@pytest.mark.slow
def test_generate_with_images(chat_model):
    run = lambda *a: subprocess.run([sys.executable, "-m", "herd.cli.main", *a], capture_output=True, text=True)
    base = ["generate", "--model", str(chat_model), "--max-new-tokens", "3", "--temperature", "0"]
    out = run(*base, "--image", _photo(), "--prompt", "Describe the image.")
    assert out.returncode == 0, out.stderr
    # The debug vision tower has 56-pixel tiles of 4 tokens: a 512² photo at 16 tiles is 4×4 + thumbnail.
    from herd.chat import image_layout
    from herd.tokenizer import load_tokenizer

    expected = 1 + len(image_layout(4, 4, 4)) + len(load_tokenizer().encode("Describe the image."))
    assert f"[{expected} prompt tokens" in out.stderr
    out = run(*base, "--image", _photo(), "--image", _photo("pasta.jpeg"), "--max-tiles", "2", "--chat",
              "--prompt", "Compare them.")
    assert out.returncode == 0, out.stderr
    out = run(*base, "--image", "/nonexistent.png", "--prompt", "x")
    assert out.returncode == 2 and "nonexistent" in out.stderr


@pytest.mark.slow
def test_chat_attaches_an_image(chat_model):
    term = Terminal([sys.executable, "-m", "herd.cli.main", "chat", "--model", str(chat_model), "--dtype",
                     "float32", "--temperature", "0", "--max-new-tokens", "4"])
    term.expect(">>> ")
    term.send(f"/image {_photo()}\n")
    term.expect("(image attached")
    term.expect(">>> ")
    term.send("What is this?\n")
    term.expect(">>> ")
    term.send("/image /nonexistent.png\n")
    term.expect("nonexistent")
    term.expect(">>> ")
    term.send("/exit\n")
    assert term.close() == 0


def test_tokenize_shows_image_layouts(tmp_path, capsys):
    from herd.cli.main import main

    chat_file = tmp_path / "chat.json"
    chat_file.write_text(json.dumps([{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": _photo()}}, {"type": "text", "text": "Hi"}]}]))
    assert main(["tokenize", "--chat", str(chat_file)]) == 0
    ids = [int(t) for t in capsys.readouterr().out.split()]
    assert ids.count(200092) == 144 * 5 and ids.count(200084) == 2 and ids.count(200085) == 2  # 2×2 + thumbnail
    assert main(["tokenize", "--chat", str(chat_file), "--max-tiles", "1"]) == 0
    ids = [int(t) for t in capsys.readouterr().out.split()]
    assert ids.count(200092) == 144 and 200084 not in ids  # one tile, no thumbnail
