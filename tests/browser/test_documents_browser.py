"""Documents in a real browser (Debian's Chromium driven by Playwright) against the real
stack: uvicorn, a generation worker with the tiny model, the worker that reads uploads,
embedded Redis. A file attached with the paperclip is read in the background,
the question's reply cites it, and its chip opens the passage; a refused file says why
and keeps the typed text; the documents page lists, renames, attaches and deletes.

Run in their own pytest process (see the Makefile), as the other browser tests.
"""

from __future__ import annotations

import re
import signal
from typing import Any

import pytest
from playwright.sync_api import FilePayload, Page, expect

from chat.models import Conversation, Document, Message, Profile
from chat.services import conversations
from tests.browser.conftest import SHARED_DOCUMENT_MAX_BYTES, TIMEOUT_MS
from tests.stack import ARTIFACTS, Stack

pytestmark = [pytest.mark.stack, pytest.mark.django_db(transaction=True)]

PASSWORD = "a long test passphrase"
SHORT_REPLIES = {"max_new_tokens": 12, "temperature": 0}
MAX_BYTES = SHARED_DOCUMENT_MAX_BYTES  # the shared stack's DOCUMENT_MAX_BYTES
expect.set_options(timeout=TIMEOUT_MS)  # shared machines can be slow

# A file whose passage the question's words find (lexical search needs no model).
NOTES = (
    b"# Zorblandia travel notes\n\n"
    b"## Geography\n\n"
    b"The capital of Zorblandia is Quuxville, a harbour city on the Glimmer coast.\n\n"
    b"## Food\n\n"
    b"Zorblandian cooks serve blue porridge with smoked eel at every festival.\n"
)


@pytest.fixture(scope="module")
def stack(shared_stack: Stack) -> Stack:
    return shared_stack


def log_in(page: Page, django_user_model: Any, username: str) -> Any:
    user = django_user_model.objects.create_user(username=username, password=PASSWORD)
    # A few greedy tokens a reply: these tests are about the sources, not the (random) model's words.
    Profile.objects.update_or_create(user=user, defaults={"default_params": SHORT_REPLIES})
    page.goto("/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/$"))
    return user


def drop_on_composer(page: Page, name: str, content: str) -> None:
    """Files dropped on the composer, as a browser's drag and drop delivers them."""
    dropped = page.evaluate_handle(
        """([name, content]) => {
            const data = new DataTransfer();
            data.items.add(new File([content], name));
            return data;
        }""",
        [name, content],
    )
    page.dispatch_event("#composer", "dragover", {"dataTransfer": dropped})
    page.dispatch_event("#composer", "drop", {"dataTransfer": dropped})


def test_attach_a_file_to_a_new_chat_ask_and_open_the_passage(page: Page, django_user_model: Any) -> None:
    owner = log_in(page, django_user_model, "reader")
    expect(page.locator("#input")).to_be_focused()  # the home page: a new chat
    expect(page.locator("#send")).to_be_enabled()  # the page's scripts have run
    # The paperclip opens the chooser; Playwright fills it as a person would.
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Attach files").click()
    chooser.value.set_files(files=[FilePayload(name="zorblandia.md", mimeType="text/markdown", buffer=NOTES)])
    chip = page.locator(".attachment-chip", has_text="zorblandia.md")
    expect(chip).to_be_visible()
    expect(chip).to_have_class(re.compile(r"\bpending\b"))  # goes with the next message
    expect(chip.get_by_role("button", name="Remove zorblandia.md")).to_be_visible()
    expect(chip).to_have_attribute("data-state", re.compile(r"^(processing|ready)$"))  # uploaded

    # Asked at once: the conversation is made with the message and the file; the reply
    # waits for the file if it is still being read.
    page.fill("#input", "What is the capital of Zorblandia?")
    page.press("#input", "Enter")
    expect(page).to_have_url(re.compile(r"/c/\d+/$"))
    expect(page.locator(".bubble.user .content")).to_have_text("What is the capital of Zorblandia?")
    expect(chip).to_have_class(re.compile(r"\battached\b"))
    expect(chip.get_by_role("button", name="Detach zorblandia.md from this conversation")).to_be_visible()
    reply = page.locator(".bubble.assistant").last
    expect(reply).to_have_attribute("data-status", "done")
    expect(chip).to_have_attribute("data-state", "ready")
    conversation = Conversation.objects.get(owner=owner)
    page.screenshot(path=str(ARTIFACTS / "documents-sources.png"), full_page=True)

    stored = Message.objects.get(conversation=conversation, role="assistant")
    assert {citation["document"] for citation in stored.citations} == {"zorblandia.md"}
    assert list(conversation.documents.values_list("name", flat=True)) == ["zorblandia.md"]
    # One chip per passage given, numbered as its marker [n]; the answer's passage opens.
    expect(reply.locator(".citation-chip")).to_have_count(len(stored.citations))
    n = next(citation["n"] for citation in stored.citations if "Quuxville" in citation["passage"])
    source = reply.locator(f'.citation-chip[data-n="{n}"]')
    expect(source).to_contain_text("zorblandia.md")
    expect(source.locator(".citation-n")).to_have_text(str(n))
    source.click()
    dialog = page.get_by_role("dialog", name=f"Source [{n}]: zorblandia.md")
    expect(dialog).to_be_visible()
    expect(dialog.locator("#citation-passage")).to_contain_text("The capital of Zorblandia is Quuxville")
    expect(dialog).to_contain_text("A passage from your document")
    expect(dialog.locator("#citation-meta")).to_contain_text("Geography")  # its heading
    page.screenshot(path=str(ARTIFACTS / "documents-citation.png"), full_page=True)
    # In its document: the passages around it, in order, it set apart.
    dialog.get_by_role("button", name="Show it in its document").click()
    context = dialog.locator("#citation-context")
    expect(context.locator("blockquote.citation-passage")).to_contain_text("Quuxville")
    expect(context.locator(".citation-around").first).to_be_visible()
    expect(dialog.locator("#citation-passage")).to_be_hidden()
    page.screenshot(path=str(ARTIFACTS / "documents-citation-in-document.png"), full_page=True)
    page.keyboard.press("Escape")  # keyboard-closable, and the focus goes back to the chip
    expect(dialog).to_be_hidden()
    expect(source).to_be_focused()

    # After a reload the snapshot brings the attached file and the reply's sources back.
    page.reload()
    attached = page.locator(".attachment-chip.attached", has_text="zorblandia.md")
    expect(attached).to_have_attribute("data-state", "ready")
    sources = page.locator(".bubble.assistant").last.locator(".citation-chip")
    expect(sources.first).to_contain_text("zorblandia.md")
    page.set_viewport_size({"width": 390, "height": 844})
    expect(attached).to_be_in_viewport()  # the chips stay above the box at phone width
    page.wait_for_timeout(300)  # the drawer's slide out
    page.screenshot(path=str(ARTIFACTS / "documents-phone.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 800})

    # The random model cites nothing; a reply that cites [2] shows that chip first, marked,
    # and its "[2]" links to it (the page's own code, given such a reply).
    shown = page.evaluate(
        """() => {
            const passage = (n, cited) => ({n, document: "a.md", page: n, passage: "p" + n, cited});
            const reply = {role: "assistant", citations: [passage(1, false), passage(2, true)]};
            const chips = window.SanjaiCitations.chipsFor(reply);
            const content = document.createElement("div");
            content.innerHTML = "<p>It is Quuxville [2], not [7].</p><pre><code>[1]</code></pre>";
            window.SanjaiCitations.linkMarkers(content, reply);
            return {
                order: [...chips.querySelectorAll(".citation-chip")].map((c) => [c.dataset.n, c.className]),
                markers: [...content.querySelectorAll(".cite-ref")].map((marker) => marker.textContent),
            };
        }"""
    )
    assert shown == {"order": [["2", "citation-chip cited"], ["1", "citation-chip"]], "markers": ["[2]"]}


def test_files_dropped_on_the_composer_a_refusal_says_why_and_a_question_waits_for_reading(
    page: Page, django_user_model: Any, stack: Stack
) -> None:
    owner = log_in(page, django_user_model, "dropper")
    conversation = conversations.conversation_create(user=owner)
    page.goto(f"/c/{conversation.pk}/")
    expect(page.locator("#send")).to_be_enabled()
    page.fill("#input", "What do Zorblandian cooks serve?")

    # A format the server does not read: the chip and the banner give its reason; the text stays.
    drop_on_composer(page, "tool.exe", "MZ not a document")
    refused = page.locator(".attachment-chip", has_text="tool.exe")
    expect(refused).to_have_attribute("data-state", "error")
    expect(refused).to_contain_text("'.exe' are not supported")  # the server's own words
    expect(page.locator("#banner")).to_contain_text("'.exe' are not supported")
    expect(page.locator("#input")).to_have_value("What do Zorblandian cooks serve?")
    refused.get_by_role("button", name="Remove tool.exe").click()
    expect(refused).to_have_count(0)
    # Too large: refused from the request's head, in the server's words.
    drop_on_composer(page, "big.txt", "x" * (3 * MAX_BYTES))
    large = page.locator(".attachment-chip", has_text="big.txt")
    expect(large).to_have_attribute("data-state", "error")
    expect(large).to_contain_text("larger than 0.1 MB")
    large.get_by_role("button", name="Remove big.txt").click()

    # The documents worker is held: the question waits for the file, and says so.
    assert stack.documents_worker is not None
    stack.documents_worker.send_signal(signal.SIGSTOP)
    try:
        drop_on_composer(page, "food.md", NOTES.decode())
        chip = page.locator(".attachment-chip", has_text="food.md")
        expect(chip).to_have_attribute("data-state", "processing")
        expect(chip).to_contain_text("indexing 0%")
        page.press("#input", "Enter")
        reply = page.locator(".bubble.assistant").last
        expect(reply).to_have_attribute("data-status", "pending")
        expect(reply.locator(".waiting")).to_contain_text("indexing food.md, 0%")
    finally:
        stack.documents_worker.send_signal(signal.SIGCONT)
    expect(reply).to_have_attribute("data-status", "done")
    expect(chip).to_have_attribute("data-state", "ready")
    expect(reply.locator(".citation-chip").first).to_contain_text("food.md")
    assert list(conversation.documents.values_list("name", flat=True)) == ["food.md"]
    assert Document.objects.filter(owner=owner).count() == 1  # nothing kept of the refused one


def test_the_documents_page_lists_renames_attaches_and_deletes(page: Page, django_user_model: Any) -> None:
    owner = log_in(page, django_user_model, "librarian")
    conversation = conversations.conversation_create(user=owner, title="Holiday plans")
    page.get_by_role("link", name="Your documents").click()
    expect(page).to_have_url(re.compile(r"/documents/$"))
    expect(page.locator("#doc-status")).to_have_text("No documents yet: upload one above.")

    notes = FilePayload(name="notes.md", mimeType="text/markdown", buffer=NOTES)
    fake = FilePayload(name="fake.pdf", mimeType="application/pdf", buffer=b"not a PDF at all")
    page.set_input_files("#doc-file", files=[notes, fake])
    page.get_by_role("button", name="Upload", exact=True).click()
    uploaded = page.locator("#doc-rows tr", has_text="notes.md")
    expect(uploaded).to_have_attribute("data-state", "ready")  # polled until read
    page.screenshot(path=str(ARTIFACTS / "documents-page.png"), full_page=True)
    # A file whose content is not what its name says fails, with the reason.
    failed = page.locator("#doc-rows tr", has_text="fake.pdf")
    expect(failed).to_have_attribute("data-state", "failed")
    reason = Document.objects.get(owner=owner, name="fake.pdf").error
    assert reason
    expect(failed.locator(".doc-state .error-text")).to_have_text(reason)
    page.once("dialog", lambda confirm: confirm.accept())
    failed.get_by_role("button", name="Delete fake.pdf").click()
    expect(failed).to_have_count(0)

    row = page.locator(f'#doc-rows tr[data-id="{Document.objects.get(owner=owner).pk}"]')
    expect(row.locator(".doc-size")).to_have_text(f"{len(NOTES)} B")
    expect(row.locator(".doc-pages")).not_to_have_text("")

    row.get_by_role("button", name="Rename notes.md").click()
    field = row.get_by_role("textbox", name="New name for notes.md")
    field.fill("zorblandia-notes.md")
    field.press("Enter")
    expect(row.locator(".doc-name")).to_have_text("zorblandia-notes.md")
    document = Document.objects.get(owner=owner)
    assert document.name == "zorblandia-notes.md"

    row.get_by_role("button", name="Attach zorblandia-notes.md to a conversation").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_role("radio", name="Holiday plans")).to_be_checked()
    dialog.get_by_role("button", name="Attach", exact=True).click()
    expect(page.locator("#doc-notice")).to_contain_text("Attached zorblandia-notes.md to “Holiday plans”.")
    assert list(conversation.documents.all()) == [document]

    page.once("dialog", lambda confirm: confirm.accept())
    row.get_by_role("button", name="Delete zorblandia-notes.md").click()
    expect(page.locator("#doc-status")).to_have_text("No documents yet: upload one above.")
    assert not Document.objects.filter(owner=owner).exists()
