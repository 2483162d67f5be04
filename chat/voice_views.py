"""Voice on the chat page: dictation in, replies read aloud out (inference/speech.py).

Both run in a worker thread of their own, never on the web server's event
loop: recognition or synthesis takes about a second.
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
from inference import speech


@login_required
@require_POST
async def dictation(request: HttpRequest) -> JsonResponse:
    """A WAV recording (the page sends 16 kHz mono) -> {"text": what was said}, for the user to review."""
    if not speech.available().dictation:
        return JsonResponse({"error": "Dictation is not installed on this server."}, status=503)
    transcribe = sync_to_async(speech.transcribe, thread_sensitive=False)
    try:
        text = await transcribe(request.body, max_seconds=settings.VOICE_MAX_SECONDS)
    except speech.SpeechError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
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
    speak = sync_to_async(speech.speak, thread_sensitive=False)
    try:
        audio = await speak(spoken_text(message.content), max_chars=settings.VOICE_MAX_READ_CHARS)
    except speech.SpeechError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    response = HttpResponse(audio, content_type="audio/wav")
    response["Cache-Control"] = "private, max-age=3600"
    return response


MARKUP = re.compile(r"```[^\n]*|[*_`#>|~]+|\[([^\]]*)\]\([^)]*\)")


def spoken_text(markdown: str) -> str:
    """A reply's Markdown as words to say: no fences, emphasis marks or link targets."""
    return MARKUP.sub(lambda match: match.group(1) or " ", markdown)
