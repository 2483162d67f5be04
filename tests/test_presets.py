"""Presets (assistants): kept per user, published by an admin, started from on every surface."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from chat.lifecycle.submit import NewConversation, Submission, reply_submit
from chat.models import Conversation, Preset
from chat.services import presets
from chat.services.limits import InvalidInput, ModelNotDeclared
from inference import registry
from inference.params import InvalidParameter
from tests.test_rest_api import Rest

pytestmark = pytest.mark.django_db

TUTOR = {
    "name": "Python tutor",
    "description": "Explains with code first",
    "system_prompt": "You teach Python. Answer with code first.",
    "params": {"temperature": 0.2, "max_new_tokens": 64},
}


@pytest.fixture
def two_models(settings: Any) -> Any:
    settings.MODEL_REGISTRY = registry.Registry(
        models=(
            registry.LocalModel(name="small", path="/models/small.gguf"),
            registry.LocalModel(name="big", path="/models/big.gguf"),
        ),
        default="small",
    )
    return settings


def test_a_preset_keeps_its_fields_checked_and_gets_a_slug_of_its_own(owner: User, two_models: Any) -> None:
    first = presets.preset_create(user=owner, model="big", **TUTOR)
    second = presets.preset_create(user=owner, **{**TUTOR, "name": "Python   Tutor"})
    assert (first.slug, second.slug) == ("python-tutor", "python-tutor-2")
    assert first.params == {"temperature": 0.2, "max_new_tokens": 64} and first.model == "big"
    with pytest.raises(InvalidParameter, match="temperature"):
        presets.preset_create(user=owner, name="Hot", params={"temperature": 9})
    with pytest.raises(InvalidInput, match="seed cannot be kept in a preset"):
        presets.preset_create(user=owner, name="Seeded", params={"seed": 1})
    with pytest.raises(ModelNotDeclared, match="'huge' does not exist"):
        presets.preset_create(user=owner, name="Huge", model="huge")
    with pytest.raises(InvalidInput, match="name"):
        presets.preset_create(user=owner, name="  !!  ")
    renamed = presets.preset_update(user=owner, preset_id=second.pk, name="Rust tutor")
    assert renamed.slug == "rust-tutor"


def test_only_its_owner_changes_a_preset_and_others_see_it_once_published(
    owner: User, other_user: User
) -> None:
    mine = presets.preset_create(user=owner, **TUTOR)
    for change in (
        lambda: presets.preset_update(user=other_user, preset_id=mine.pk, name="Taken"),
        lambda: presets.preset_delete(user=other_user, preset_id=mine.pk),
    ):
        with pytest.raises(Preset.DoesNotExist):
            change()
    from chat import selectors

    assert list(selectors.preset_list(user=other_user)) == []
    assert presets.preset_publish(preset=mine, published=True)
    assert list(selectors.preset_list(user=other_user)) == [mine]
    # Two published presets cannot share a slug: /v1's preset:<slug> names one.
    theirs = presets.preset_create(user=other_user, **TUTOR)
    assert not presets.preset_publish(preset=theirs, published=True)
    # Their own preset of that slug comes before the published one.
    assert selectors.preset_by_slug(user=other_user, slug="python-tutor") == theirs


def test_the_rest_api_manages_presets_and_starts_conversations_from_them(
    client: Client, owner_key: str, other_user: User, two_models: Any
) -> None:
    rest = Rest(client, owner_key)
    status, made = rest.call("post", "/presets", {**TUTOR, "model": "big"})
    assert status == 201 and made["slug"] == "python-tutor" and made["mine"] is True
    assert rest.call("post", "/presets", {**TUTOR, "name": "Hot", "params": {"top_p": 0}})[0] == 400
    status, changed = rest.call("patch", f"/presets/{made['id']}", {"description": "Code first."})
    assert status == 200 and changed["description"] == "Code first."
    status, listed = rest.call("get", "/presets")
    assert [p["id"] for p in listed] == [made["id"]]

    status, conversation = rest.call("post", "/conversations", {"preset_id": made["id"]})
    assert status == 201 and conversation["preset_id"] == made["id"]
    stored = Conversation.objects.get(pk=conversation["id"])
    assert stored.system_prompt == TUTOR["system_prompt"] and stored.model == "big"
    assert stored.params == TUTOR["params"]

    hidden = presets.preset_create(user=other_user, name="Private")
    assert rest.call("post", "/conversations", {"preset_id": hidden.pk})[0] == 404
    assert rest.call("delete", f"/presets/{hidden.pk}")[0] == 404
    assert rest.call("delete", f"/presets/{made['id']}")[0] == 204
    assert Conversation.objects.get(pk=stored.pk).preset is None  # it keeps what it copied
    assert Conversation.objects.get(pk=stored.pk).system_prompt == TUTOR["system_prompt"]


def test_a_v1_style_submission_of_a_preset_takes_its_prompt_model_and_parameters(
    owner: User, queued: list[int], two_models: Any
) -> None:
    preset = presets.preset_create(user=owner, model="big", **TUTOR)
    posted = reply_submit(
        user=owner,
        submission=Submission(
            content="How do I read a file?",
            params={"max_new_tokens": 32},  # the request's own, over the preset's
            new_conversation=NewConversation(system_prompt="Be brief."),
            model="preset:python-tutor",
        ),
    )
    conversation = posted.reply.conversation
    assert conversation.preset == preset and posted.reply.model == "big"
    assert conversation.system_prompt == f"{TUTOR['system_prompt']}\n\nBe brief."
    assert posted.reply.params["temperature"] == 0.2 and posted.reply.params["max_new_tokens"] == 32
    assert queued == [posted.reply.pk]
    with pytest.raises(ModelNotDeclared, match="your presets are preset:python-tutor"):
        reply_submit(
            user=owner,
            submission=Submission(
                content="Hi", new_conversation=NewConversation(system_prompt=""), model="preset:nope"
            ),
        )


def test_the_profile_page_makes_and_deletes_presets_and_keeps_a_refused_one_typed(
    client: Client, owner: User, other_user: User
) -> None:
    client.force_login(owner)
    fields = {
        "preset-name": "Translator",
        "preset-description": "",
        "preset-system_prompt": "Translate into French.",
        "preset-model": "",
        "preset-max_new_tokens": "64",
        "preset-temperature": "0.3",
        "preset-top_p": "0.9",
        "preset-repetition_penalty": "1.05",
    }
    assert client.post("/profile/presets/", fields).status_code == 302
    made = Preset.objects.get(owner=owner)
    assert made.system_prompt == "Translate into French." and made.params["temperature"] == 0.3
    refused = client.post("/profile/presets/", {**fields, "preset-name": "!!!", "preset-temperature": "0.5"})
    assert refused.status_code == 400
    page = refused.content.decode()
    assert "at least one letter or digit" in page and 'value="0.5"' in page  # what was typed stays
    theirs = presets.preset_create(user=other_user, name="Theirs")
    assert client.post(f"/profile/presets/{theirs.pk}/delete/").status_code == 404
    assert client.post(f"/profile/presets/{made.pk}/delete/").status_code == 302
    assert not Preset.objects.filter(owner=owner).exists()


def test_an_edited_published_preset_waits_for_the_admin_again_and_names_may_be_any_script(
    owner: User, other_user: User
) -> None:
    from chat import selectors

    published = presets.preset_create(user=owner, **TUTOR)
    assert presets.preset_publish(preset=published, published=True)
    presets.preset_update(user=owner, preset_id=published.pk, description=TUTOR["description"])
    assert Preset.objects.get(pk=published.pk).published  # nothing changed: still published
    presets.preset_update(user=owner, preset_id=published.pk, system_prompt="Now something else.")
    assert not Preset.objects.get(pk=published.pk).published
    assert selectors.preset_list(user=other_user) == []
    assert presets.preset_create(user=owner, name="日本語の先生").slug == "日本語の先生"
    # A published preset whose slug the user's own has is not listed beside it.
    theirs = presets.preset_create(user=other_user, name="Python tutor")
    assert presets.preset_publish(preset=theirs, published=True)
    assert [p.pk for p in selectors.preset_list(user=owner) if p.slug == "python-tutor"] == [published.pk]
