"""Folders of conversations: kept per user, in the sidebar, in REST, in export and import."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from chat import selectors
from chat.models import Conversation, Folder, Message
from chat.services import conversations, folders, presets
from chat.services.limits import InvalidInput
from tests.test_rest_api import Rest

pytestmark = pytest.mark.django_db


@pytest.fixture
def page(owner: User) -> Client:
    client = Client()
    client.force_login(owner)
    return client


def titled(user: User, title: str) -> Conversation:
    return conversations.conversation_create(user=user, title=title)


def test_names_are_checked_trimmed_and_unique_per_user_whatever_the_case(
    owner: User, other_user: User
) -> None:
    work = folders.folder_create(user=owner, name="  Work   notes ")
    assert work.name == "Work notes"
    with pytest.raises(InvalidInput, match="already have a folder named “WORK NOTES”"):
        folders.folder_create(user=owner, name="WORK NOTES")
    for bad in ("", "   ", "x" * 101):
        with pytest.raises(InvalidInput, match="name: must be 1 to 100 characters"):
            folders.folder_create(user=owner, name=bad)
    assert folders.folder_create(user=other_user, name="Work notes").owner == other_user  # theirs apart
    home = folders.folder_create(user=owner, name="Home")
    with pytest.raises(InvalidInput, match="already have a folder"):
        folders.folder_update(user=owner, folder_id=home.pk, name="work NOTES")
    assert folders.folder_update(user=owner, folder_id=work.pk, name="work notes").name == "work notes"
    assert [f.name for f in selectors.folder_list(user=owner)] == ["Home", "work notes"]


def test_the_number_of_folders_is_bounded(owner: User, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(folders, "MAX_FOLDERS", 2)
    folders.folder_create(user=owner, name="One")
    folders.folder_create(user=owner, name="Two")
    with pytest.raises(InvalidInput, match="you have 2 folders, the most one may keep"):
        folders.folder_create(user=owner, name="Three")


def test_nobody_touches_another_users_folder(owner: User, other_user: User) -> None:
    theirs = folders.folder_create(user=other_user, name="Private")
    mine = titled(owner, "Mine")
    for attempt in (
        lambda: selectors.folder_get(user=owner, folder_id=theirs.pk),
        lambda: folders.folder_update(user=owner, folder_id=theirs.pk, name="Taken"),
        lambda: folders.folder_delete(user=owner, folder_id=theirs.pk),
        lambda: folders.conversation_move(user=owner, conversation_id=mine.pk, folder_id=theirs.pk),
    ):
        with pytest.raises(Folder.DoesNotExist):
            attempt()
    mine_folder = folders.folder_create(user=owner, name="Mine")
    theirs_chat = titled(other_user, "Theirs")
    with pytest.raises(Conversation.DoesNotExist):
        folders.conversation_move(user=owner, conversation_id=theirs_chat.pk, folder_id=mine_folder.pk)
    assert Folder.objects.get(pk=theirs.pk).name == "Private"
    assert Conversation.objects.get(pk=mine.pk).folder is None


def test_a_folders_preset_must_be_one_the_user_may_use(owner: User, other_user: User) -> None:
    private = presets.preset_create(user=other_user, name="Theirs")
    with pytest.raises(InvalidInput, match=f"preset_id: {private.pk} is not one of your presets"):
        folders.folder_create(user=owner, name="Work", preset_id=private.pk)
    tutor = presets.preset_create(user=owner, name="Tutor")
    work = folders.folder_create(user=owner, name="Work", preset_id=tutor.pk)
    assert work.preset == tutor
    assert folders.folder_update(user=owner, folder_id=work.pk, clear_preset=True).preset is None
    folders.folder_update(user=owner, folder_id=work.pk, preset_id=tutor.pk)
    presets.preset_delete(user=owner, preset_id=tutor.pk)
    assert Folder.objects.get(pk=work.pk).preset is None  # SET_NULL: the folder stays


def test_the_sidebar_lists_filed_conversations_under_their_folders_only(owner: User) -> None:
    work = folders.folder_create(user=owner, name="Work")
    folders.folder_create(user=owner, name="Empty")
    filed, archived = titled(owner, "Filed"), titled(owner, "Old")
    titled(owner, "Loose")
    folders.conversation_move(user=owner, conversation_id=filed.pk, folder_id=work.pk)
    folders.conversation_move(user=owner, conversation_id=archived.pk, folder_id=work.pk)
    conversations.conversation_update(user=owner, conversation_id=archived.pk, archived=True)

    with CaptureQueriesContext(connection) as queries:
        shown = selectors.folder_sidebar(user=owner)
    assert len(queries) == 2
    assert [(entry.folder.name, [c.title for c in entry.conversations]) for entry in shown] == [
        ("Empty", []),
        ("Work", ["Filed"]),
    ]
    main = selectors.conversation_sidebar(user=owner)
    assert [c.title for c in main.conversations] == ["Loose"]
    # A search finds filed ones too; the Archived view keeps archived ones whatever their folder.
    assert [c.title for c in selectors.conversation_sidebar(user=owner, query="Filed").conversations] == [
        "Filed"
    ]
    assert [c.title for c in selectors.conversation_sidebar(user=owner, archived=True).conversations] == [
        "Old"
    ]


def test_deleting_a_folder_keeps_its_conversations_in_the_main_list(owner: User) -> None:
    work = folders.folder_create(user=owner, name="Work")
    filed = titled(owner, "Filed")
    before = Conversation.objects.get(pk=filed.pk).updated
    folders.conversation_move(user=owner, conversation_id=filed.pk, folder_id=work.pk)
    assert Conversation.objects.get(pk=filed.pk).updated == before  # moving is not activity
    folders.folder_delete(user=owner, folder_id=work.pk)
    assert Conversation.objects.get(pk=filed.pk).folder is None
    assert [c.title for c in selectors.conversation_sidebar(user=owner).conversations] == ["Filed"]


def test_the_rest_api_makes_renames_moves_into_and_deletes_folders(
    client: Client, owner_key: str, owner: User, other_user: User
) -> None:
    rest = Rest(client, owner_key)
    status, work = rest.call("post", "/folders", {"name": "Work"})
    assert status == 201 and work["name"] == "Work" and work["preset_id"] is None
    status, error = rest.call("post", "/folders", {"name": "work"})
    assert status == 400 and "already have a folder named “work”" in error["detail"]
    status, error = rest.call("post", "/folders", {"name": "x" * 101})
    assert status == 400 and "name" in error["detail"] and "100 characters" in error["detail"]
    assert rest.call("post", "/folders", {"name": "A", "colour": "red"})[0] == 400
    tutor = presets.preset_create(user=owner, name="Tutor")
    status, renamed = rest.call("patch", f"/folders/{work['id']}", {"name": "Job", "preset_id": tutor.pk})
    assert status == 200 and renamed["name"] == "Job" and renamed["preset_id"] == tutor.pk
    status, kept = rest.call("patch", f"/folders/{work['id']}", {"name": "Jobs"})
    assert kept["preset_id"] == tutor.pk  # left out: unchanged
    assert rest.call("patch", f"/folders/{work['id']}", {"preset_id": None})[1]["preset_id"] is None
    assert rest.call("get", "/folders") == (200, [{**renamed, "name": "Jobs", "preset_id": None}])

    status, chat = rest.call("post", "/conversations", {"title": "Report", "folder_id": work["id"]})
    assert status == 201 and chat["folder_id"] == work["id"]
    status, moved = rest.call("patch", f"/conversations/{chat['id']}", {"folder_id": None})
    assert status == 200 and moved["folder_id"] is None
    status, moved = rest.call(
        "patch", f"/conversations/{chat['id']}", {"folder_id": work["id"], "pinned": True}
    )
    assert moved["folder_id"] == work["id"] and moved["pinned"] is True
    assert (
        rest.call("patch", f"/conversations/{chat['id']}", {"title": "Q3 report"})[1]["folder_id"]
        == work["id"]
    )

    theirs = folders.folder_create(user=other_user, name="Private")
    for method, path, body in [
        ("patch", f"/folders/{theirs.pk}", {"name": "Mine now"}),
        ("delete", f"/folders/{theirs.pk}", None),
        ("patch", f"/conversations/{chat['id']}", {"folder_id": theirs.pk}),
        ("post", "/conversations", {"folder_id": theirs.pk}),
    ]:
        status, error = rest.call(method, path, body)
        assert status == 404 and error == {"detail": f"Folder {theirs.pk} not found."}, (method, path)
    assert Conversation.objects.get(pk=chat["id"]).folder_id == work["id"]  # the refused move left it
    status, error = rest.call("patch", f"/conversations/{chat['id']}", {"folder_id": None, "model": "nope"})
    assert status == 404 and "nope" in error["detail"]
    assert Conversation.objects.get(pk=chat["id"]).folder_id == work["id"]  # nothing of a refused PATCH
    assert Conversation.objects.filter(owner=owner).count() == 1  # the refused create made nothing

    assert rest.call("delete", f"/folders/{work['id']}") == (204, None)
    assert rest.call("get", f"/conversations/{chat['id']}")[1]["folder_id"] is None


def test_export_names_the_folder_and_import_files_it_in_one_of_that_name(page: Client, owner: User) -> None:
    work = folders.folder_create(user=owner, name="Work")
    chat = titled(owner, "Report")
    Message.objects.create(conversation=chat, role="user", content="Summarise Q3.")
    folders.conversation_move(user=owner, conversation_id=chat.pk, folder_id=work.pk)
    exported = json.loads(page.get(f"/c/{chat.pk}/export/?format=json").content)
    assert exported["folder"] == "Work"
    everything = json.loads(page.get(reverse("export_all")).content)
    assert [c["folder"] for c in everything["conversations"]] == ["Work"]

    def upload(data: dict[str, Any]) -> Conversation:
        content = json.dumps(data).encode()
        page.post(
            "/import/", {"file": SimpleUploadedFile("c.json", content, content_type="application/json")}
        )
        return Conversation.objects.filter(owner=owner).order_by("-pk").first()  # type: ignore[return-value]

    assert upload(exported).folder == work  # the existing folder of that name
    folders.folder_delete(user=owner, folder_id=work.pk)
    copy = upload({**exported, "folder": "work"})
    assert copy.folder is not None and copy.folder.name == "work"  # made, as it was missing
    assert upload({**exported, "folder": None}).folder is None
    refused = page.post(
        "/import/",
        {"file": SimpleUploadedFile("c.json", json.dumps({**exported, "folder": 7}).encode())},
        follow=True,
    )
    assert "folder&quot; must be the name of a folder, or null" in refused.content.decode()


def test_a_new_chat_in_a_folder_is_filed_there_and_starts_from_its_preset(
    page: Client, owner: User, other_user: User, queued: list[int]
) -> None:
    tutor = presets.preset_create(user=owner, name="Python tutor", system_prompt="Code first.")
    work = folders.folder_create(user=owner, name="Work", preset_id=tutor.pk)
    home = page.get(f"/?folder={work.pk}").content.decode()
    assert f'data-folder-id="{work.pk}" data-start-preset="python-tutor"' in home
    assert "In the folder Work" in home
    theirs = folders.folder_create(user=other_user, name="Private")
    assert page.get(f"/?folder={theirs.pk}").status_code == 404

    start = reverse("conversation_start")
    refused = page.post(start, {"content": "Hi", "folder_id": theirs.pk}, content_type="application/json")
    assert refused.status_code == 404 and refused.json()["error"] == f"Folder {theirs.pk} not found."
    bad = page.post(start, {"content": "Hi", "folder_id": "work"}, content_type="application/json")
    assert bad.status_code == 400 and "folder_id: must be the id of a folder" in bad.json()["error"]
    assert not Conversation.objects.exists()

    # What the page sends: the folder's id, and its preset chosen (folders.js clicks its chip).
    body = {"content": "How do I read a file?", "folder_id": work.pk, "model": "preset:python-tutor"}
    response = page.post(start, body, content_type="application/json")
    assert response.status_code == 201
    made = Conversation.objects.get(pk=response.json()["conversation"]["id"])
    assert made.folder == work and made.preset == tutor and made.system_prompt == "Code first."
    assert len(queued) == 1
    sidebar = page.get(reverse("sidebar_page")).content.decode()
    assert f'data-folder-id="{work.pk}"' in sidebar and "How do I read a file?" in sidebar
    assert 'data-action="move"' in sidebar


def test_the_sidebar_page_shows_folders_only_on_the_main_lists_first_page(page: Client, owner: User) -> None:
    folders.folder_create(user=owner, name="Work")
    assert 'aria-label="Folder Work"' in page.get("/").content.decode()
    assert 'aria-label="Folder Work"' not in page.get("/?archived=1").content.decode()
    assert 'aria-label="Folder Work"' not in page.get("/?q=report").content.decode()
