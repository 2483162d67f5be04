"""Dictation in a real browser: Chromium's fake microphone plays a sentence eSpeak NG spoke,
the page records it with MediaRecorder, and the server's transcript lands in the message box."""

from __future__ import annotations

import io
import re
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from inference import speech
from tests.stack import CHROMIUM, CHROMIUM_ARGS, Stack

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True)]

PASSWORD = "a long test passphrase"
SPOKEN = "one two three four five"


@pytest.fixture(scope="module")
def sentence(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sentence as a WAV with a second of silence either side (the fake microphone loops it)."""
    with wave.open(io.BytesIO(speech.speak(SPOKEN, max_chars=100, words_per_minute=130))) as reader:
        params, frames = reader.getparams(), reader.readframes(reader.getnframes())
    silence = b"\x00" * params.sampwidth * params.framerate
    path = tmp_path_factory.mktemp("voice") / "sentence.wav"
    with wave.open(str(path), "wb") as writer:
        writer.setparams(params)
        writer.writeframes(silence + frames + silence)
    return path


@pytest.fixture(scope="module")
def stack(shared_stack: Stack) -> Stack:
    return shared_stack


@pytest.fixture(scope="module")
def browser(sentence: Path) -> Iterator[Browser]:
    microphone = [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={sentence}",
    ]
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *microphone])
        yield chromium
        chromium.close()


def test_dictation_puts_what_was_said_in_the_box_for_review(
    browser: Browser, stack: Stack, django_user_model: Any, sentence: Path
) -> None:
    django_user_model.objects.create_user(username="speaker", password=PASSWORD)
    context = browser.new_context(base_url=stack.base_url)
    context.grant_permissions(["microphone"])
    page = context.new_page()
    page.goto("/login/")
    page.fill("#id_username", "speaker")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/$"))
    page.fill("#input", "Please write down:")
    page.click("#dictate")
    expect(page.locator("#dictate")).to_have_attribute("aria-pressed", "true")
    # The fake microphone loops the file from wherever it happens to be: record a whole
    # loop and one sentence more, so one whole sentence is always in the recording
    # (one loop alone may hold the sentence's end, then its start).
    with wave.open(str(sentence)) as reader:
        loop_s = reader.getnframes() / reader.getframerate()
    sentence_s = loop_s - 2  # the file is the sentence between two seconds of silence
    page.wait_for_timeout(1000 * (loop_s + sentence_s + 0.5))
    page.click("#dictate")
    expect(page.locator("#input")).not_to_have_value("Please write down:", timeout=30_000)
    typed = page.input_value("#input")
    assert typed.startswith("Please write down: ")
    heard = typed.removeprefix("Please write down: ").split()
    assert sum(word in heard for word in SPOKEN.split()) >= 2, typed  # an offline recogniser, a looped file
    # Never sent blind: nothing was posted.
    assert page.locator(".bubble").count() == 0
    context.close()
