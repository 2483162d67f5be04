"""Voice, with a real loop: eSpeak NG speaks known words, PocketSphinx hears them.

An offline recogniser is not perfect, least of all on a synthetic voice, so the
checks ask for most of the words back, not all: numbers are what it hears best.
"""

from __future__ import annotations

import io
import subprocess
import wave
from typing import Any

import pytest
from django.test import Client

from chat.models import Message
from chat.services import conversations
from inference import speech

pytestmark = pytest.mark.django_db

SPOKEN = "one two three four five"


def spoken_wav(text: str) -> bytes:
    return speech.speak(text, max_chars=1000, words_per_minute=130)


def recovered(text: str) -> float:
    heard = text.split()
    return sum(word in heard for word in SPOKEN.split()) / len(SPOKEN.split())


def dictate(client: Client, audio: bytes) -> Any:
    return client.post("/voice/dictation/", audio, content_type="audio/wav")


def wav(samples: bytes, *, rate: int = 16000, width: int = 2, channels: int = 1) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(width)
        writer.setframerate(rate)
        writer.writeframes(samples)
    return out.getvalue()


def test_espeak_and_pocketsphinx_are_installed() -> None:
    assert speech.available() == speech.Available(dictation=True, reading=True)
    version = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True)
    assert "eSpeak NG" in version.stdout


def test_dictation_recovers_most_of_a_spoken_sentence(client: Client, owner: Any) -> None:
    client.force_login(owner)
    answer = dictate(client, spoken_wav(SPOKEN))
    assert answer.status_code == 200
    assert recovered(answer.json()["text"]) >= 0.6, answer.json()


def test_a_stereo_recording_at_another_rate_is_heard_too(client: Client, owner: Any) -> None:
    import numpy as np

    with wave.open(io.BytesIO(spoken_wav(SPOKEN))) as reader:  # 22,050 Hz mono
        mono = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")
    stereo = np.repeat(mono, 2)  # both channels the same
    client.force_login(owner)
    answer = dictate(client, wav(stereo.tobytes(), rate=22050, channels=2))
    assert answer.status_code == 200 and recovered(answer.json()["text"]) >= 0.6, answer.json()


@pytest.mark.parametrize(
    ("audio", "fragment"),
    [
        (b"not audio at all", "not a WAV file this server can read"),
        (wav(b"\x00" * 16000, width=1), "must be 16-bit PCM, got 8-bit samples"),
        (wav(b"\x00\x00" * 16000 * 61), "is 61 s long; at most 60 s is allowed"),
        (wav(b""), "The recording is empty"),
    ],
)
def test_a_recording_that_cannot_be_used_is_400_saying_why(
    client: Client, owner: Any, audio: bytes, fragment: str
) -> None:
    client.force_login(owner)
    answer = dictate(client, audio)
    assert answer.status_code == 400 and fragment in answer.json()["error"]


def test_dictation_needs_a_login(client: Client) -> None:
    assert dictate(client, spoken_wav("one")).status_code == 302


def test_a_reply_is_read_aloud_for_its_owner_only(client: Client, owner: Any, other_user: Any) -> None:
    conversation = conversations.conversation_create(user=owner)
    reply = Message.objects.create(
        conversation=conversation, role="assistant", status="done", content=f"**{SPOKEN}**"
    )
    client.force_login(owner)
    spoken = client.get(f"/voice/read/{reply.pk}/")
    assert spoken.status_code == 200 and spoken["Content-Type"] == "audio/wav"
    with wave.open(io.BytesIO(spoken.content)) as reader:
        assert reader.getnframes() / reader.getframerate() > 1.0  # five words, not a click
    # What it says is the reply's words (the Markdown's asterisks are not read out).
    heard = dictate(client, spoken.content).json()["text"]
    assert recovered(heard) >= 0.6, heard
    other = Client()
    other.force_login(other_user)
    assert other.get(f"/voice/read/{reply.pk}/").status_code == 404


def test_the_chat_page_offers_dictation_and_reading(client: Client, owner: Any) -> None:
    client.force_login(owner)
    page = client.get("/").content.decode()
    assert 'id="dictate"' in page and "data-read-url=" in page and "js/voice.js" in page
