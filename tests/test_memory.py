"""Memory: the facts a user keeps reach their replies, unless a conversation switches them off."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from chat import selectors
from chat.models import MemoryFact
from chat.services import conversations, memory
from chat.services.limits import InvalidInput
from tests.conftest import submit

pytestmark = pytest.mark.django_db


def test_a_fact_is_kept_once_within_its_bounds(owner: User, settings: Any) -> None:
    settings.MEMORY_MAX_FACTS = 2
    kept = memory.memory_add(user=owner, text="  I write   Python;  answer with code first. ")
    assert kept.text == "I write Python; answer with code first."
    with pytest.raises(InvalidInput, match="in your memory already"):
        memory.memory_add(user=owner, text="i write python; answer with code first.")
    with pytest.raises(InvalidInput, match="1 to 500 characters"):
        memory.memory_add(user=owner, text="x" * 501)
    with pytest.raises(InvalidInput, match="1 to 500 characters"):
        memory.memory_add(user=owner, text="   ")
    memory.memory_add(user=owner, text="My name is Ana.")
    with pytest.raises(InvalidInput, match="holds 2 facts"):
        memory.memory_add(user=owner, text="I live in Lisbon.")


def test_the_facts_reach_the_prompt_of_a_reply_and_not_with_the_switch_off(
    owner: User, other_user: User, queued: list[int], settings: Any
) -> None:
    memory.memory_add(user=owner, text="I write Python.")
    memory.memory_add(user=owner, text="My name is Ana.")
    memory.memory_add(user=other_user, text="I am someone else.")
    conversation = conversations.conversation_create(user=owner, system_prompt="Be brief.")
    posted = submit(owner, "Who am I?", conversation_id=conversation.pk)
    (system, question) = selectors.reply_turns(reply=posted.reply)
    assert system.role == "system" and question.content == "Who am I?"
    assert system.content == (
        "Be brief.\n\nWhat the user asked you to remember about them:\n- I write Python.\n- My name is Ana."
    )
    # Within the budget: the newest facts that fit, in the order they were kept.
    settings.MEMORY_PROMPT_CHARS = len(selectors.MEMORY_HEADING) + len("\n- My name is Ana.")
    assert selectors.reply_turns(reply=posted.reply)[0].content.endswith(":\n- My name is Ana.")
    conversations.conversation_settings_update(
        user=owner, conversation_id=conversation.pk, system_prompt="Be brief.", params={}, use_memory=False
    )
    posted.reply.conversation.refresh_from_db()
    assert selectors.reply_turns(reply=posted.reply)[0].content == "Be brief."


def test_the_page_keeps_a_fact_on_a_click_and_the_profile_lists_and_forgets_it(
    client: Client, owner: User, other_user: User
) -> None:
    client.force_login(owner)
    kept = client.post(
        "/profile/memory/", {"text": "I prefer metric units."}, content_type="application/json"
    )
    assert kept.status_code == 201 and kept.json()["text"] == "I prefer metric units."
    refused = client.post("/profile/memory/", {"text": ""}, content_type="application/json")
    assert refused.status_code == 400 and "1 to 500 characters" in refused.json()["error"]
    assert client.post("/profile/memory/", {"text": "Answer in French."}).status_code == 302
    again = client.post("/profile/memory/", {"text": "answer in french."})
    assert again.status_code == 400  # shown again with what was typed, and why
    assert (
        'value="answer in french."' in again.content.decode()
        and "in your memory already" in again.content.decode()
    )
    page = client.get("/profile/").content.decode()
    assert "I prefer metric units." in page and "Answer in French." in page
    assert 'name="text" maxlength="500"' in page  # the form holds the limit the server keeps
    export = json.loads(client.get("/profile/export/?format=json").content)
    assert export["memory"] == ["I prefer metric units.", "Answer in French."]
    theirs = memory.memory_add(user=other_user, text="Not yours.")
    assert client.post(f"/profile/memory/{theirs.pk}/forget/").status_code == 404
    fact = MemoryFact.objects.get(owner=owner, text="Answer in French.")
    assert client.post(f"/profile/memory/{fact.pk}/forget/").status_code == 302
    assert list(selectors.memory_list(user=owner).values_list("text", flat=True)) == [
        "I prefer metric units."
    ]


def test_the_settings_panel_switches_memory_off_for_one_conversation(client: Client, owner: User) -> None:
    client.force_login(owner)
    conversation = conversations.conversation_create(user=owner)
    assert conversation.use_memory is True
    answer = client.post(
        f"/c/{conversation.pk}/settings/",
        {"system_prompt": "", "use_memory": False},
        content_type="application/json",
    )
    assert answer.status_code == 200 and answer.json()["use_memory"] is False
    conversation.refresh_from_db()
    assert conversation.use_memory is False


def test_the_rest_api_keeps_lists_and_forgets_facts_and_switches_a_conversation(
    client: Client, owner_key: str, owner: User, other_user: User
) -> None:
    from tests.test_rest_api import Rest

    rest = Rest(client, owner_key)
    status, fact = rest.call("post", "/memory", {"text": "I am vegetarian."})
    assert status == 201 and fact["text"] == "I am vegetarian."
    assert rest.call("post", "/memory", {"text": "i am VEGETARIAN."})[0] == 400
    assert [f["text"] for f in rest.call("get", "/memory")[1]] == ["I am vegetarian."]
    theirs = memory.memory_add(user=other_user, text="Theirs.")
    assert rest.call("delete", f"/memory/{theirs.pk}")[0] == 404
    conversation = conversations.conversation_create(user=owner)
    status, changed = rest.call("patch", f"/conversations/{conversation.pk}", {"use_memory": False})
    assert status == 200 and changed["use_memory"] is False
    assert rest.call("delete", f"/memory/{fact['id']}")[0] == 204
    assert rest.call("get", "/memory")[1] == []


def test_a_programs_exchange_leaves_the_owners_memory_out(owner: User, queued: list[int]) -> None:
    from chat.lifecycle.submit import NewConversation, Submission, reply_submit

    memory.memory_add(user=owner, text="Always answer in French.")
    posted = reply_submit(
        user=owner,
        submission=Submission(
            content="Return JSON.", new_conversation=NewConversation(system_prompt="Be exact.")
        ),
    )
    assert selectors.reply_turns(reply=posted.reply)[0].content == "Be exact."
