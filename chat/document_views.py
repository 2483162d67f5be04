"""The documents page: a shell rendered here, filled and kept current by static/js/documents.js
through the REST API (/api/v1/documents), with the browser's session."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import render
from django.urls import reverse

from chat.auth import AuthenticatedHttpRequest
from chat.documents.parsing import EXTENSION_KINDS

# How often the page asks again while a document is being read.
POLL_MS = 2000


def _mb(size: int) -> str:
    return f"{size / 1_000_000:g} MB"


@login_required
def documents_page(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Your files: their state, size and pages; upload, rename, delete, attach to a conversation."""
    extensions = sorted(EXTENSION_KINDS)
    context = {
        "max_file": _mb(settings.DOCUMENT_MAX_BYTES),
        "storage_budget": _mb(settings.DOCUMENT_STORAGE_BYTES_PER_USER),
        # The file chooser offers what the server reads; the server still decides.
        "accept": ",".join(extensions),
        "extensions": " ".join(extensions),
        "constants": {
            "documentsUrl": reverse("rest_api:document_list"),
            "conversationsUrl": reverse("rest_api:conversation_list"),
            "conversationUrl": reverse("conversation", kwargs={"conversation_id": 0}),
            "maxBytes": settings.DOCUMENT_MAX_BYTES,
            "storageBytes": settings.DOCUMENT_STORAGE_BYTES_PER_USER,
            "pollMs": POLL_MS,
        },
    }
    return render(request, "chat/documents.html", context)
