"""Voice on the chat page: dictation in, replies read aloud out (inference/speech.py).

Recognition and synthesis run in worker processes of their own
(inference/speech_pool.py), never in the web process: PocketSphinx holds the
GIL while it decodes, and in a thread here it froze every request (issue 26).
A recording's header is checked here, cheaply, so a bad one is refused with
400 before anything is queued.

Each user runs one voice job at a time, dictation and reading aloud together,
and starts at most VOICE_JOBS_PER_MINUTE (429): chat/services/voice.py.
"""

from __future__ import annotations

import re

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET, require_POST

from chat import selectors
from chat.models import Message
from chat.services.voice import VoiceRefused, voice_job
from inference import speech


def refusal(exc: VoiceRefused) -> JsonResponse:
    response = JsonResponse({"error": str(exc)}, status=exc.status)
    if exc.retry_after_s is not None:
        response["Retry-After"] = str(exc.retry_after_s)
    return response


@login_required
@require_POST
async def dictation(request: HttpRequest) -> JsonResponse:
    """A WAV recording (the page sends 16 kHz mono) -> {"text": what was said}, for the user to review."""
    if not speech.available().dictation:
        return JsonResponse({"error": "Dictation is not installed on this server."}, status=503)
    user = await request.auser()
    assert isinstance(user, User)  # login_required
    # Read past Django's own DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB), which request.body
    # enforces: this path's body is already held to VOICE_MAX_BYTES as it arrives
    # (sanjai_site/uploads.py), and a legal recording may be larger than 2.5 MB.
    wav = request.read()
    try:
        speech.read_wav(wav, max_seconds=settings.VOICE_MAX_SECONDS)
        async with voice_job(user, doing="Transcribing the recording") as pool:
            text = await pool.transcribe(
                wav, max_seconds=settings.VOICE_MAX_SECONDS, timeout_s=settings.VOICE_JOB_TIMEOUT_S
            )
    except speech.SpeechError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    except VoiceRefused as exc:
        return refusal(exc)
    return JsonResponse({"text": text})


@login_required
@require_GET
async def read_aloud(request: HttpRequest, message_id: int) -> HttpResponse:
    """One of the user's replies, spoken (a WAV), for browsers without voices of their own."""
    if not speech.available().reading:
        return JsonResponse({"error": "Reading aloud is not installed on this server."}, status=503)
    user = await request.auser()
    assert isinstance(user, User)  # login_required
    try:
        message = await sync_to_async(selectors.message_get)(user=user, message_id=message_id)
    except Message.DoesNotExist:
        raise Http404("No such reply.") from None
    max_chars = settings.VOICE_MAX_READ_CHARS
    try:
        text = speech.check_text(spoken_text(message.content), max_chars=max_chars)
        async with voice_job(user, doing="Reading the reply aloud") as pool:
            audio = await pool.speak(text, max_chars=max_chars, timeout_s=settings.VOICE_JOB_TIMEOUT_S)
    except speech.SpeechError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    except VoiceRefused as exc:
        return refusal(exc)
    response = HttpResponse(audio, content_type="audio/wav")
    response["Cache-Control"] = "private, max-age=3600"
    return response


MARKUP = re.compile(r"```[^\n]*|[*_`#>|~]+|\[([^\]]*)\]\([^)]*\)")


def spoken_text(markdown: str) -> str:
    """A reply's Markdown as words to say: no fences, emphasis marks or link targets."""
    return MARKUP.sub(lambda match: match.group(1) or " ", markdown)
