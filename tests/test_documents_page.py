"""The documents page and the chat page's documents parts, server side: who may see the
page, what it tells the script (the REST endpoints, the limits), and the controls the
chat page gives its script (paperclip, chips, the sources dialog). Their behaviour in a
browser is tests/browser/test_documents_browser.py."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from chat.documents.parsing import EXTENSION_KINDS
from chat.services import conversations

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser(owner: Any) -> Client:
    client = Client()
    client.force_login(owner)
    return client


def constants_of(body: str) -> dict[str, Any]:
    found = re.search(r'<script id="documents-constants" type="application/json">(.*?)</script>', body, re.S)
    assert found is not None, "the page gives its script no constants"
    return json.loads(found.group(1))


def test_the_documents_page_needs_a_login() -> None:
    response = Client().get("/documents/")
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_the_page_points_its_script_at_the_rest_api_that_answers_it(browser: Client, settings: Any) -> None:
    settings.DOCUMENT_MAX_BYTES = 5_000_000
    settings.DOCUMENT_STORAGE_BYTES_PER_USER = 50_000_000
    response = browser.get("/documents/")
    assert response.status_code == 200
    body = response.content.decode()
    constants = constants_of(body)
    # The script's endpoints answer this user's session.
    listed = browser.get(constants["documentsUrl"])
    assert listed.status_code == 200 and listed.json() == []
    assert browser.get(constants["conversationsUrl"]).status_code == 200
    assert constants["conversationUrl"] == "/c/0/"  # the script puts the id in place of 0
    assert constants["pollMs"] == 2000
    assert (constants["maxBytes"], constants["storageBytes"]) == (5_000_000, 50_000_000)
    # The limits, as the page states them.
    assert "Up to 5 MB a file and 50 MB in all" in body
    assert 'src="/static/js/documents.js"' in body and 'src="/static/js/uploads.js"' in body


def test_the_file_chooser_offers_every_format_the_server_reads(browser: Client) -> None:
    body = browser.get("/documents/").content.decode()
    accept = re.search(r'id="doc-file" name="file" multiple accept="([^"]+)"', body)
    assert accept is not None
    assert set(accept.group(1).split(",")) == set(EXTENSION_KINDS)
    assert {".pdf", ".docx", ".md"} <= set(accept.group(1).split(","))


def test_the_chat_page_links_the_documents_page_and_has_the_composers_controls(
    browser: Client, owner: Any
) -> None:
    conversation = conversations.conversation_create(user=owner)
    for url in ("/", f"/c/{conversation.pk}/"):
        body = browser.get(url).content.decode()
        assert 'href="/documents/" id="documents-link"' in body
        assert 'id="attach" aria-label="Attach files"' in body
        assert 'id="attach-input" multiple' in body
        assert 'id="attachments" aria-label="Documents for this conversation"' in body
        endpoints = re.search(r'data-documents-url="([^"]+)" data-conversations-url="([^"]+)"', body)
        assert endpoints is not None
        assert browser.get(endpoints.group(1)).status_code == 200
        assert browser.get(endpoints.group(2)).status_code == 200
        # The sources dialog, with its close button for the keyboard (Esc closes it too: a <dialog>).
        assert '<dialog class="citation-dialog" id="citation"' in body
        assert "data-close>Close</button>" in body
        for script in ("uploads.js", "attachments.js", "citations.js", "chat.js"):
            assert f'src="/static/js/{script}"' in body
        # In the order they need each other: defer scripts run in document order.
        assert body.index("uploads.js") < body.index("attachments.js") < body.index("js/chat.js")


def test_the_pages_scripts_and_styles_are_served(browser: Client) -> None:
    from django.contrib.staticfiles import finders

    names = ("js/uploads.js", "js/attachments.js", "js/citations.js", "js/documents.js", "css/documents.css")
    for name in names:
        assert finders.find(name), f"{name} is missing from static/"
