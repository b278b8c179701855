"""The live page (``/app``) in a real headless Chromium: Debian's ``chromium`` driven by
Playwright, its microphone a fake device fed from a WAV of espeak-ng speech.

``.ci/run`` installs ``chromium`` (apt); elsewhere a missing browser skips with the reason."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from dinet_platform.serving import api

from tests.support import SERVE_TOKEN

pytestmark = pytest.mark.serve
CHROMIUM = os.environ.get("DINET_CHROMIUM", "/usr/bin/chromium")
SCREENSHOT_DIR = os.environ.get("DINET_SCREENSHOT_DIR")


def chromium_or_skip() -> str:
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed "
                                                      "(pip install -e '.[dev]')")
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        if os.environ.get("CI"):
            pytest.fail(f"no browser at {CHROMIUM}: .ci/run installs Debian's chromium")
        pytest.skip(f"no browser at {CHROMIUM} (apt-get install chromium, or set "
                    "$DINET_CHROMIUM)")
    return CHROMIUM


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory) -> Path:
    """Real speech (espeak-ng) with a second of silence after it, as the fake microphone."""
    from dinet_platform.synth.speech import SpeechVoice, speak_fresh

    voice = SpeechVoice("en-us", "m3", 50, 50, 160)
    spoken = speak_fresh(["Hello there, this avatar speaks live in your browser."],
                         voice)[0].samples(16000)
    audio = np.concatenate([spoken, np.zeros(16000, np.float32)])
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    path.write_bytes(api.pcm_wav(audio, 16000))
    return path


def canvas_digest(page) -> str:
    pixels = page.evaluate("""() => {
        const c = document.getElementById('view');
        return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data);
    }""")
    return hashlib.sha1(bytes(pixels)).hexdigest()


def test_the_page_streams_the_microphone_and_draws_the_avatar_talking(
        served, avatar, speech_wav, tmp_path):
    from playwright.sync_api import sync_playwright

    executable = chromium_or_skip()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=[
            "--no-sandbox", "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream", "--autoplay-policy=no-user-gesture-required",
            f"--use-file-for-fake-audio-capture={speech_wav}"])
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(served["url"] + "/app")
            page.fill("#token", SERVE_TOKEN)
            page.dispatch_event("#token", "change")
            page.wait_for_selector(f"#avatar option[value='{avatar}']", state="attached",
                                   timeout=30_000)
            page.select_option("#avatar", avatar)
            page.click("#mic")
            page.wait_for_function("window.dinet.frames >= 10", timeout=60_000)
            first = canvas_digest(page)
            page.wait_for_function("window.dinet.frames >= 40", timeout=60_000)
            second = canvas_digest(page)
            stats = page.evaluate("() => ({...window.dinet})")
            chosen = page.input_value("#avatar")  # listing again (the token's blur) keeps it
            shot = Path(SCREENSHOT_DIR or tmp_path) / "live-page.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot))
            print(f"screenshot: {shot}")
        finally:
            browser.close()
    assert not errors and stats["error"] is None, (errors, stats)
    assert stats["state"] == "streaming" and first != second and chosen == avatar
    assert stats["fps"] > 0 and stats["latency"] is not None
    assert shot.stat().st_size > 10_000
