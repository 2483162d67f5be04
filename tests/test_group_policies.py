"""Group policies: which models a group's members may use, their budgets and concurrency.

Driven through the same four surfaces as tests/test_reply_rules.py (the page's
websocket, POST /chat, /v1/chat/completions, REST), plus the listings.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from django.utils import timezone

from chat.lifecycle.submit import NewConversation, Submission, reply_submit
from chat.models import Conversation, GroupPolicy, Message, Preset, Profile, Usage
from chat.services import conversations
from chat.services.limits import ModelNotAllowed, QuotaExceeded
from chat.services.policies import Allowance, allowance
from inference import registry
from tests.conftest import submit
from tests.test_reply_rules import CODE_STATUS, Outcome, Surfaces, accepted, user_messages

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("queued", "two_models")]

SURFACES = ["page", "chat", "v1", "rest"]


@pytest.fixture
def two_models(settings: Any, dead_redis_url: str) -> None:
    settings.CHAT_REPLY_TIMEOUT_S = 0.2  # /chat and /v1 stop waiting at once: no worker runs here
    settings.REDIS_URL = dead_redis_url
    settings.MODEL_REGISTRY = registry.parse(
        {
            "default": "tiny",
            "models": {
                "tiny": {"kind": "local", "path": "/models/tiny.gguf"},
                "big": {"kind": "local", "path": "/models/big.gguf"},
            },
        }
    )


def ask(user: Any, model: str) -> Any:
    """A new conversation's first message, through the one submit path, for `model`."""
    return reply_submit(
        user=user, submission=Submission(content="Hi", model=model, new_conversation=NewConversation())
    )


def join(user: Any, name: str, **policy: Any) -> Group:
    group = Group.objects.create(name=name)
    GroupPolicy.objects.create(group=group, **policy)
    user.groups.add(group)
    return group


class ModelSurfaces(Surfaces):
    """The surfaces, asking for a named model the way each one does."""

    def page(self, conversation: Conversation | None, content: str, params: dict[str, Any]) -> Outcome:
        # The page picks the model in its settings panel: it is the conversation's.
        assert conversation is not None
        Conversation.objects.filter(pk=conversation.pk).update(model=params.pop("model"))
        return super().page(conversation, content, params)


@pytest.fixture
def surfaces(owner: Any, owner_key: str, monkeypatch: pytest.MonkeyPatch) -> ModelSurfaces:
    monkeypatch.setitem(CODE_STATUS, "model_not_allowed", 403)  # the page's error code, as a status
    return ModelSurfaces(owner, owner_key)


@pytest.mark.parametrize("surface", SURFACES)
def test_a_model_the_groups_do_not_allow_is_403_naming_it_and_nothing_is_stored(
    surfaces: ModelSurfaces, owner: Any, surface: str
) -> None:
    join(owner, "students", allowed_models=["tiny"])
    conversation = conversations.conversation_create(user=owner)
    before = user_messages(owner), Conversation.objects.count()
    outcome = surfaces.send(surface, conversation, "Hello", model="big")
    assert outcome.status == 403
    assert "'big'" in outcome.error and "may use are tiny" in outcome.error
    assert (user_messages(owner), Conversation.objects.count()) == before
    # The allowed model is answered.
    assert accepted(surface, surfaces.send(surface, conversation, "Hello", model="tiny"))


def test_a_user_in_no_group_with_a_policy_may_use_every_model(owner: Any) -> None:
    owner.groups.add(Group.objects.create(name="no policy"))
    assert allowance(user=owner).models is None
    assert ask(owner, "big").reply.model == "big"


def test_models_are_the_union_of_the_groups_and_an_empty_list_allows_all(owner: Any) -> None:
    join(owner, "a", allowed_models=["tiny"])
    join(owner, "b", allowed_models=["big"])
    assert allowance(user=owner).models == frozenset({"tiny", "big"})
    join(owner, "c", allowed_models=[])
    assert allowance(user=owner).models is None


def test_v1_models_and_the_page_list_only_the_allowed_models(
    client: Client, owner: Any, owner_key: str
) -> None:
    join(owner, "students", allowed_models=["big"])
    response = client.get("/v1/models", headers={"Authorization": f"Bearer {owner_key}"})
    assert [model["id"] for model in response.json()["data"]] == ["big"]
    detail = client.get("/v1/models/tiny", headers={"Authorization": f"Bearer {owner_key}"})
    assert detail.status_code == 403 and detail.json()["error"]["code"] == "model_not_allowed"

    client.force_login(owner)
    page = client.get("/")
    assert page.context["models"] == ["big"]
    # The site's default (tiny) is not theirs: their default is their first allowed model.
    assert page.context["model"] == "big"
    assert [m["name"] for m in client.get("/status/").json()["models"]] == ["big"]
    # And a reply with no model asked for comes from it.
    assert submit(owner, "Hi").reply.model == "big"


def test_a_conversation_cannot_be_switched_to_a_model_not_allowed(
    client: Client, owner: Any, owner_key: str
) -> None:
    """Refused when it is chosen, not only at the next send: the conversation keeps its model."""
    join(owner, "students", allowed_models=["tiny"])
    conversation = submit(owner, "Hi").user_message.conversation
    refused = client.patch(
        f"/api/v1/conversations/{conversation.pk}",
        {"model": "big"},
        content_type="application/json",
        headers={"Authorization": f"Bearer {owner_key}"},
    )
    assert refused.status_code == 403 and "'big'" in refused.json()["detail"]
    conversation.refresh_from_db()
    assert conversation.model in ("", "tiny")


def test_the_most_generous_groups_budget_wins_and_the_users_own_still_applies(
    owner: Any, settings: Any
) -> None:
    settings.QUOTA_DAILY_TOKENS = 100
    settings.QUOTA_MONTHLY_TOKENS = 1000
    settings.MAX_CONCURRENT_REPLIES = 2
    join(owner, "small", daily_token_limit=500, monthly_token_limit=5000)
    join(owner, "large", daily_token_limit=2000)  # monthly: the site default, 1000
    assert allowance(user=owner) == Allowance(models=None, daily=2000, monthly=5000, concurrent=2)
    join(owner, "unlimited", daily_token_limit=0, max_concurrent_replies=0)  # 0: no limit
    assert allowance(user=owner) == Allowance(models=None, daily=0, monthly=5000, concurrent=0)

    Group.objects.get(name="unlimited").delete()
    Usage.objects.create(user=owner, day=timezone.localdate(), model="tiny", prompt_tokens=1500)
    assert ask(owner, "tiny").reply  # 1,500 tokens: within the larger group's 2,000
    Profile.objects.update_or_create(user=owner, defaults={"daily_token_limit": 1000})
    with pytest.raises(QuotaExceeded, match="1,500 of your 1,000 tokens for this day"):
        ask(owner, "tiny")


@pytest.mark.parametrize("surface", ["page", "v1", "rest"])
def test_a_groups_concurrency_limit_applies(
    surfaces: ModelSurfaces, owner: Any, surface: str, settings: Any
) -> None:
    settings.MAX_CONCURRENT_REPLIES = 5
    join(owner, "one at a time", max_concurrent_replies=1)
    submit(owner, "First")
    before = Message.objects.count()
    outcome = surfaces.send(surface, conversations.conversation_create(user=owner), "Second", model="tiny")
    assert outcome.status == 429 and "at most 1 may run at once" in outcome.error
    assert Message.objects.count() == before


def test_the_group_admin_edits_the_policy_and_names_an_undeclared_model(
    client: Client, django_user_model: Any
) -> None:
    admin = django_user_model.objects.create_superuser("root", password="pw-for-tests")
    client.force_login(admin)
    page = client.get("/admin/auth/group/add/")
    assert page.status_code == 200 and b"Declared models the members may use" in page.content
    form = {
        "name": "students",
        "policy-TOTAL_FORMS": "1",
        "policy-INITIAL_FORMS": "0",
        "policy-MIN_NUM_FORMS": "0",
        "policy-MAX_NUM_FORMS": "1",
        "policy-0-allowed_models": '["tiny", "huge"]',
        "policy-0-daily_token_limit": "5000",
    }
    refused = client.post("/admin/auth/group/add/", form)
    assert (
        refused.status_code == 200
        and b"Not declared here: huge. The models are tiny, big." in refused.content
    )
    assert not Group.objects.exists()
    saved = client.post("/admin/auth/group/add/", {**form, "policy-0-allowed_models": '["tiny"]'})
    assert saved.status_code == 302
    policy = GroupPolicy.objects.get(group__name="students")
    assert policy.allowed_models == ["tiny"] and policy.daily_token_limit == 5000
    assert policy.monthly_token_limit is None and policy.max_concurrent_replies is None


def test_v1_refuses_a_model_not_allowed_in_openais_error_form(
    client: Client, owner: Any, owner_key: str
) -> None:
    join(owner, "students", allowed_models=["tiny"])
    body = {"model": "big", "messages": [{"role": "user", "content": "Hi"}]}
    response = client.post(
        "/v1/chat/completions",
        body,
        content_type="application/json",
        headers={"Authorization": f"Bearer {owner_key}"},
    )
    assert response.status_code == 403
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "permission_error",
        "model_not_allowed",
        "model",
    )
    assert not Conversation.objects.exists()


def test_a_policy_naming_only_models_no_longer_declared_allows_none(owner: Any) -> None:
    join(owner, "legacy", allowed_models=["retired"])
    with pytest.raises(ModelNotAllowed, match="the models you may use are none"):
        ask(owner, "")  # not even the site's default
    assert not Conversation.objects.exists()


def test_the_usage_report_sums_by_group(admin_client: Client, owner: Any, other_user: Any) -> None:
    """Each group's members' tokens; a member of two groups counts in both, the groupless together."""
    today = timezone.localdate()
    join(owner, "students")
    both = join(other_user, "staff")
    owner.groups.add(both)
    Usage.objects.create(
        user=owner, day=today, model="tiny", replies=2, prompt_tokens=100, completion_tokens=20
    )
    Usage.objects.create(
        user=other_user, day=today, model="tiny", replies=1, prompt_tokens=10, completion_tokens=5
    )
    loner = User.objects.create_user("loner", password="pw-for-tests")
    Usage.objects.create(user=loner, day=today, model="big", replies=1, prompt_tokens=1, completion_tokens=1)
    page = admin_client.get("/admin/chat/usage/report/")
    assert [(r.group, r.model, r.replies, r.total_tokens) for r in page.context["groups"]] == [
        ("staff", "tiny", 3, 135),
        ("students", "tiny", 2, 120),
        ("", "big", 1, 2),
    ]
    assert "(no group)" in page.content.decode()
    exported = admin_client.get("/admin/chat/usage/report/", {"format": "csv", "by": "group"})
    assert list(csv.reader(io.StringIO(exported.content.decode())))[:2] == [
        ["group", "model", "replies", "prompt_tokens", "completion_tokens", "total_tokens"],
        ["staff", "tiny", "3", "110", "25", "135"],
    ]


def test_a_preset_of_a_model_not_allowed_is_neither_listed_nor_described(
    client: Client, owner: Any, owner_key: str
) -> None:
    Preset.objects.create(owner=owner, name="Big thinker", slug="big-thinker", model="big")
    Preset.objects.create(owner=owner, name="Small talk", slug="small-talk", model="tiny")
    join(owner, "students", allowed_models=["tiny"])
    auth = {"Authorization": f"Bearer {owner_key}"}
    listed = [model["id"] for model in client.get("/v1/models", headers=auth).json()["data"]]
    assert listed == ["tiny", "preset:small-talk"]
    refused = client.get("/v1/models/preset:big-thinker", headers=auth)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "model_not_allowed"
    assert client.get("/v1/models/preset:small-talk", headers=auth).json()["id"] == "preset:small-talk"
