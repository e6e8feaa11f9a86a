"""The chat page at `/` in a real headless browser: Debian's Chromium driven by Playwright's Python API (no
browser download), against a live `herd serve`."""

from __future__ import annotations

import re
import shutil
import time

import httpx
import pytest
from serve_helpers import SHARED, debug_checkpoint, live_server

IMAGE = SHARED / "data" / "images" / "dog.jpg"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    checkpoint = debug_checkpoint(tmp_path_factory.mktemp("page") / "debug-model")
    with live_server(checkpoint, "--max-slots", "2", "--max-context", "512", "--max-tiles", "1") as (base, _):
        yield base


@pytest.mark.slow
def test_chat_page_streams_replies_takes_images_and_stops(server, tmp_path):
    assert CHROMIUM, "the browser test needs Debian's chromium (apt-get install chromium); .ci/run installs it"
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto(server + "/")
        expect(page.locator("#model")).to_contain_text("debug-model")
        page.fill("#system", "Be brief.")
        page.fill("#max-tokens", "24")
        page.fill("#input", "Hello there")
        page.keyboard.press("Enter")
        expect(page.locator(".msg.user")).to_have_text("Hello there")
        expect(page.locator(".msg.assistant .meta")).to_have_count(1, timeout=60_000)  # streamed to its end
        assert page.locator(".msg.assistant .text").inner_text() != ""
        assert re.match(r"\d+ tokens in", page.locator(".msg.assistant .meta").inner_text())

        page.set_input_files("#image", str(IMAGE))
        expect(page.locator("#attached")).to_have_text("dog.jpg")
        page.fill("#input", "What is this?")
        page.click("#send")
        expect(page.locator(".msg.user img")).to_have_count(1)
        expect(page.locator(".msg.assistant .meta")).to_have_count(2, timeout=60_000)
        assert page.locator(".msg.error").count() == 0

        page.fill("#max-tokens", "400")
        page.fill("#input", "Tell me a long story.")
        page.click("#send")
        expect(page.locator("#stop")).to_be_enabled()
        page.click("#stop")
        expect(page.locator(".msg.assistant .meta").nth(2)).to_have_text(re.compile("stopped|tokens in"))
        page.screenshot(path=str(tmp_path / "chat.png"))
        browser.close()
    deadline = time.time() + 10
    while time.time() < deadline:
        used = re.search(r"^herd_kv_slots_used (\S+)$", httpx.get(f"{server}/metrics").text, re.M).group(1)
        if float(used) == 0:
            break
        time.sleep(0.1)
    assert float(used) == 0
