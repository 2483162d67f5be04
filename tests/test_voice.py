"""Voice, with a real loop: eSpeak NG speaks known words, PocketSphinx hears them.

An offline recogniser is not perfect, least of all on a synthetic voice, so the
checks ask for most of the words back, not all: numbers are what it hears best.

The jobs run in the web process's voice pool (inference/speech_pool.py), whose
worker processes this test process starts on first use; the per-user limits
are kept in an embedded Redis.
"""

from __future__ import annotations

import asyncio
import io
import struct
import subprocess
import wave
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from django.conf import settings as django_settings
from django.core.asgi import get_asgi_application
from django.test import Client

from chat.models import Message
from chat.services import conversations, voice
from inference import speech, speech_pool

pytestmark = pytest.mark.django_db

SPOKEN = "one two three four five"


@pytest.fixture(autouse=True)
def _voice_limits_in_redis(settings: Any, redis_url: str) -> Iterator[None]:
    settings.REDIS_URL = redis_url
    client = redis.Redis.from_url(redis_url)
    # User ids come round again once a test's rows are rolled back.
    for key in client.scan_iter(match="sanjai:voice:*"):
        client.delete(key)
    yield
    client.close()


def spoken_wav(text: str) -> bytes:
    return speech.speak(text, max_chars=1000, words_per_minute=130)


def recovered(text: str) -> float:
    heard = text.split()
    return sum(word in heard for word in SPOKEN.split()) / len(SPOKEN.split())


def dictate(client: Client, audio: bytes) -> Any:
    return client.post("/voice/dictation/", audio, content_type="audio/wav")


def noise(seconds: float, *, seed: int = 26) -> bytes:
    """White noise, the slowest thing to decode: PocketSphinx weighs every word against it."""
    samples = np.random.default_rng(seed).normal(0, 3000, int(16000 * seconds))
    return wav(samples.clip(-32768, 32767).astype("<i2").tobytes())


def riff(
    *, tag: int = 1, channels: int = 1, rate: int = 16000, bits: int = 16, data: bytes = b"\0" * 3200
) -> bytes:
    """A WAV file with any header, even one the wave module refuses to write."""
    align = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):  # 20 s at most: a bound for a failing test, not a timing
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the condition never held")


# Requests that really run at once, as under uvicorn: through Django's ASGI handler, each
# in its own ThreadSensitiveContext (so its sync parts get a thread of their own), on one
# event loop started by asyncio.run. Not Django's AsyncClient under async_to_sync: there
# every request's sync middleware takes turns on the test's thread, and the whole async
# view runs inside it. Those threads use connections of their own, so these tests commit.
ASGI_APP = get_asgi_application()
CSRF_SECRET = "voice" * 6 + "ok"  # 32 letters: Django takes the secret itself as the token


def session_of(user: Any) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies[django_settings.SESSION_COOKIE_NAME].value


def asgi_client(session: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=ASGI_APP),
        base_url="http://testserver",
        cookies={django_settings.SESSION_COOKIE_NAME: session, django_settings.CSRF_COOKIE_NAME: CSRF_SECRET},
        headers={"X-CSRFToken": CSRF_SECRET},
        timeout=60,
    )


async def adictate(client: httpx.AsyncClient, audio: bytes) -> httpx.Response:
    return await client.post("/voice/dictation/", content=audio, headers={"Content-Type": "audio/wav"})


def wav(samples: bytes, *, rate: int = 16000, width: int = 2, channels: int = 1) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(width)
        writer.setframerate(rate)
        writer.writeframes(samples)
    return out.getvalue()


def test_a_legal_recording_over_djangos_own_body_limit_is_heard(client: Client, owner: Any) -> None:
    # 14 s of 48 kHz stereo: 2.7 MB, over Django's 2.5 MB DATA_UPLOAD_MAX_MEMORY_SIZE and
    # within VOICE_MAX_BYTES (4 MB) and VOICE_MAX_SECONDS (60). Silence: quick to decode.
    recording = wav(b"\0" * (48000 * 2 * 2 * 14), rate=48000, channels=2)
    assert 2_621_440 < len(recording) < 4_000_000
    client.force_login(owner)
    answer = dictate(client, recording)
    assert answer.status_code == 200, answer.content[:200]
    assert isinstance(answer.json()["text"], str)  # transcribed (whatever it makes of silence)


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
        (riff(rate=0), "frame rate is 0 Hz"),  # was a ZeroDivisionError: 500
        (riff(channels=0), "has 0 channels; it must be mono or stereo"),
        (riff(bits=24), "must be 16-bit PCM, got 24-bit samples"),
        (riff(tag=3, bits=32), "must be PCM audio, got WAV format 3 (IEEE float)"),
        (riff()[:30], "WAV header is truncated: its format chunk has 10 bytes, not 16"),
        (riff()[:40], "WAV header is truncated: the file ends after 40 bytes, before its audio data"),
        (b"RIFF\0\0\0\0WAVE" + b"JUNK\0\0\0\0" * 100, "more than 64 WAV chunks before its audio"),
        (b"RIFF\0\0\0\0WAVEdata\4\0\0\0\0\0\0\0", "no format chunk before its audio"),
    ],
)
def test_a_recording_that_cannot_be_used_is_400_saying_why(
    client: Client, owner: Any, audio: bytes, fragment: str
) -> None:
    client.force_login(owner)
    answer = dictate(client, audio)
    assert answer.status_code == 400 and fragment in answer.json()["error"], answer.json()
    if audio.startswith(b"RIFF") and "s long" not in fragment and "empty" not in fragment:
        assert speech.ALLOWED in answer.json()["error"]  # and says what is allowed


def test_a_recording_cut_off_mid_frame_is_heard_up_to_its_last_whole_frame(
    client: Client, owner: Any
) -> None:
    audio = spoken_wav(SPOKEN)
    client.force_login(owner)
    answer = dictate(client, audio[:-1])  # a streamed header's lengths, and an odd byte count
    assert answer.status_code == 200 and recovered(answer.json()["text"]) >= 0.6, answer.json()


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
        # Written once, by eSpeak NG to a file, with its true lengths in the header.
        assert 44 + reader.getnframes() * reader.getsampwidth() == len(spoken.content)
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


# --- Voice jobs run in processes of their own (issue 26) -------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_long_dictation_holds_up_nobody_else(owner: Any, other_user: Any) -> None:
    """While A's recording of noise decodes, /healthz, B's page and B's dictation all answer,
    and A's second dictation is refused: one job at a time. In a thread of the web process
    (before issue 26) PocketSphinx held the GIL, and everything waited for A."""
    long, sentence = noise(10), spoken_wav(SPOKEN)
    sessions = session_of(owner), session_of(other_user)
    pool = voice.voice_pool()
    done: list[str] = []

    async def scenario() -> dict[str, httpx.Response]:
        async with asgi_client(sessions[0]) as a, asgi_client(sessions[1]) as b:

            async def request(name: str, answer: Awaitable[httpx.Response]) -> httpx.Response:
                response = await answer
                done.append(name)
                return response

            a_dictation = asyncio.create_task(request("A dictates noise", adictate(a, long)))
            await until(lambda: pool.running >= 1)  # A's recording is being decoded
            others = await asyncio.gather(
                request("healthz", b.get("/healthz")),
                request("B's page", b.get("/")),
                request("B dictates", adictate(b, sentence)),
                request("A again", adictate(a, sentence)),
            )
            return dict(zip(["healthz", "page", "b", "a_again"], others, strict=True)) | {
                "a": await a_dictation
            }

    answers = asyncio.run(scenario())
    assert done[-1] == "A dictates noise", done
    assert sorted(done[:-1]) == ["A again", "B dictates", "B's page", "healthz"]
    assert answers["healthz"].status_code == 200 and answers["page"].status_code == 200
    assert answers["b"].status_code == 200 and recovered(answers["b"].json()["text"]) >= 0.6
    assert answers["a_again"].status_code == 429
    assert "one runs at a time" in answers["a_again"].json()["error"]
    assert answers["a"].status_code == 200


def test_a_job_past_its_timeout_is_stopped_and_the_next_one_is_served(
    client: Client, owner: Any, settings: Any
) -> None:
    client.force_login(owner)
    settings.VOICE_JOB_TIMEOUT_S = 0.5
    # 3 s of noise (about 1.5 s to decode) once finished inside the limit; 8 s leaves a wide margin.
    stopped = dictate(client, noise(8))
    assert stopped.status_code == 504
    assert stopped.json()["error"] == (
        "Transcribing the recording took longer than 0.5 s, the most this server allows, "
        "and was stopped. Try something shorter."
    )
    settings.VOICE_JOB_TIMEOUT_S = 30
    # The worker was killed and is being replaced; the pool takes the next job.
    answer = dictate(client, spoken_wav(SPOKEN))
    assert answer.status_code == 200 and recovered(answer.json()["text"]) >= 0.6, answer.json()


def test_voice_jobs_per_minute_are_limited_per_user(
    client: Client, owner: Any, other_user: Any, settings: Any
) -> None:
    settings.VOICE_JOBS_PER_MINUTE = 2
    conversation = conversations.conversation_create(user=owner)
    reply = Message.objects.create(
        conversation=conversation, role="assistant", status="done", content="Hello."
    )
    client.force_login(owner)
    assert [client.get(f"/voice/read/{reply.pk}/").status_code for _ in range(2)] == [200, 200]
    refused = client.get(f"/voice/read/{reply.pk}/")
    assert refused.status_code == 429 and 1 <= int(refused["Retry-After"]) <= 30
    assert refused.json()["error"] == (
        "You may start at most 2 voice jobs (dictations or replies read aloud) a minute. "
        f"Try again in {refused['Retry-After']} s."
    )
    assert dictate(client, spoken_wav("one")).status_code == 429  # dictation shares the allowance
    assert dictate(client, b"not audio").status_code == 400  # a bad recording is refused first
    other = Client()
    other.force_login(other_user)
    other_reply = Message.objects.create(
        conversation=conversations.conversation_create(user=other_user),
        role="assistant",
        status="done",
        content="Hello.",
    )
    assert other.get(f"/voice/read/{other_reply.pk}/").status_code == 200  # per user


@pytest.mark.django_db(transaction=True)
def test_a_full_pool_answers_503_and_a_caller_that_leaves_frees_its_worker(
    owner: Any, other_user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = speech_pool.SpeechPool(workers=1, backlog=0)
    monkeypatch.setattr(voice, "voice_pool", lambda: small)
    long, sentence = noise(5), spoken_wav(SPOKEN)
    sessions = session_of(owner), session_of(other_user)

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with asgi_client(sessions[0]) as a, asgi_client(sessions[1]) as b:
            a_dictation = asyncio.create_task(adictate(a, long))
            await until(lambda: small.running == 1)
            busy = await adictate(b, sentence)
            a_dictation.cancel()  # A's browser went away: the view is cancelled, and so is its job
            await until(lambda: small.jobs == 0)
            return busy, await adictate(a, sentence)  # A's lock was let go; the worker was replaced

    try:
        busy, after = asyncio.run(scenario())
    finally:
        small.close()
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "5"
    assert (
        busy.json()["error"]
        == "Every voice worker is busy (1 running, 0 waiting). Try again in a few seconds."
    )
    assert after.status_code == 200 and recovered(after.json()["text"]) >= 0.6, after.json()


def test_voice_without_redis_is_503_saying_why(
    client: Client, owner: Any, settings: Any, dead_redis_url: str
) -> None:
    settings.REDIS_URL = dead_redis_url
    client.force_login(owner)
    answer = dictate(client, spoken_wav("one"))
    assert answer.status_code == 503 and "keeps each user's voice limits in Redis" in answer.json()["error"]
