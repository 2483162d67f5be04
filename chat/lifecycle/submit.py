"""Submit: the one way a reply starts.

`reply_submit` is the only way in for every surface (the page's send,
regenerate and edit; `POST /chat`; `/v1/chat/completions`; the REST API's
post). It checks the input and the rules (`chat.services.limits`), resolves
the parameters (`chat.params`), stores the user's message and a pending
reply in one transaction, and hands the job to `chat.lifecycle.dispatch`
once that has committed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from chat import params as chat_params
from chat import selectors
from chat.events import send_event
from chat.lifecycle import dispatch
from chat.lifecycle.status import reply_pending_create
from chat.lifecycle.sweep import fail_lost_replies
from chat.models import Conversation, Message, Preset, Profile
from chat.services import limits
from chat.services.conversations import conversation_create
from chat.services.documents import documents_attach, documents_owned
from chat.services.profiles import params_for_new_conversations
from inference.params import GenerationParams, InvalidParameter
from inference.tools import tools_block
from inference.types import Turn

logger = logging.getLogger(__name__)

TITLE_LENGTH = 60


def conversation_title(text: str) -> str:
    """A conversation's title when nobody named it: the start of its first message."""
    return " ".join(text.split())[:TITLE_LENGTH]


class NothingToRegenerate(Exception):
    pass


Action = Literal["send", "regenerate", "edit"]
PRESET_PREFIX = "preset:"  # a model id that names a preset (chat.services.presets)


@dataclass(frozen=True)
class NewConversation:
    """A conversation the submission itself creates, so none is ever stored empty.

    The OpenAI API's exchange gives a system prompt and earlier turns. The chat
    page's new chat gives `system_prompt=None`: the conversation is made as
    `conversation_create` makes it (the owner's default system prompt and
    parameters), and becomes the one `POST /chat` continues.
    """

    system_prompt: str | None = ""
    history: tuple[Turn, ...] = ()  # alternating user and assistant turns before the question
    folder_id: int | None = None  # file it in this folder of the user's (Folder.DoesNotExist otherwise)


@dataclass(frozen=True)
class Submission:
    """What a surface asks for, parsed from its own format; `reply_submit` applies the rules."""

    action: Action = "send"
    content: str = ""  # the new message (send) or the changed last message (edit)
    conversation_id: int | None = None  # None: the user's current conversation (POST /chat)
    params: Mapping[str, Any] = field(default_factory=dict)  # as sent; left out = resolved
    new_conversation: NewConversation | None = None  # instead of conversation_id
    model: str = ""  # a declared model, kept for the conversation's next turns; "" = the conversation's
    # Functions the reply may call (chat.params.ToolsIn's fields), for a new conversation:
    # described in its system prompt, and a call enforced when one is required.
    tools: Mapping[str, Any] | None = None
    # While the model's workers are still loading it (or starting), the reply
    # waits in the queue for them; False: refuse it at once (503 model_loading).
    wait_for_model: bool = True
    # The user's documents to attach to the conversation before the reply; it
    # searches them (a reply waits while one is still being read). As sent:
    # checked to be a list of ids here, once for every surface.
    documents: Sequence[int] = ()


@dataclass(frozen=True)
class PostedMessage:
    user_message: Message  # the question the reply answers
    reply: Message  # the assistant placeholder, pending (failed if no worker could take it)


def params_for(*, conversation: Conversation) -> GenerationParams:
    """Conversation settings over the owner's profile defaults over the site defaults."""
    return chat_params.stored_over(conversation.params, params_for_new_conversations(user=conversation.owner))


def reply_submit(*, user: User, submission: Submission) -> PostedMessage:
    """Store a question and its pending reply within the rules, then queue the job.

    Raises, with nothing stored: InvalidInput or InvalidParameter (bad input,
    naming the field), Conversation.DoesNotExist, Folder.DoesNotExist or
    Document.DoesNotExist (not the user's), NothingToRegenerate, ModelNotDeclared,
    ModelNotAllowed, ConversationBusy, TooManyReplies, QuotaExceeded, RateLimited.
    Raises WorkerUnavailable after storing, with the reply marked failed.
    """
    content = submission.content
    if submission.action != "regenerate":
        content = limits.check_message("message", content)
    given = chat_params.params_in(submission.params)
    tools = _tools(submission, given)
    # Compiled here, outside the transaction below: it depends on the input alone.
    tools_grammar = chat_params.tools_grammar(tools) if tools is not None else None
    preset = _preset(user, submission)
    documents = documents_owned(user=user, ids=submission.documents)
    if (new := submission.new_conversation) is not None:
        limits.check_length("system_prompt", new.system_prompt or "")
        limits.check_history(len(new.history))
        for index, turn in enumerate(new.history):
            limits.check_length(f"history[{index}]", turn.content)
        if new.folder_id is not None:  # before anything is stored
            selectors.folder_get(user=user, folder_id=new.folder_id)

    if new is None and submission.conversation_id is not None:
        # A reply whose worker died blocks its conversation only until the
        # sweeper ends it; end it now rather than answer 409. Outside the
        # transaction: it asks Redis, and the write lock must not wait on that.
        # Looked up first: a foreign key filter with an id past the database's
        # integers fails in the driver instead of matching nothing (a 500).
        continued = selectors.conversation_get(user=user, conversation_id=submission.conversation_id)
        fail_lost_replies(conversation_id=continued.pk, user=user)

    with transaction.atomic():
        profile = limits.lock_profile(user=user)
        if new is not None:
            conversation = _new_conversation(
                user, new, content, tools, preset
            )  # rolled back if refused below
        else:
            conversation = _conversation(user, profile, submission.conversation_id)
            limits.check_idle(conversation=conversation)
        if documents:
            documents_attach(conversation=conversation, documents=documents)
        asked = preset.model if preset is not None else submission.model
        model = limits.check_model(asked or conversation.model, user=user)
        if tools is not None:
            limits.check_tools(model=model)
        if submission.model:
            conversation.model = model
        limits.check_concurrency(user=user)
        now = timezone.now()
        limits.check_quota(user=user, profile=profile, now=now)
        limits.take_rate_token(profile=profile, now=now)
        question, earlier = _question(conversation, submission.action, content)
        reply = reply_pending_create(
            conversation=conversation,
            question=question,
            params=replace(
                chat_params.over(given, params_for(conversation=conversation)),
                response_grammar=tools_grammar,
            ).as_dict(),
            model=model,
        )
        if not conversation.title:
            conversation.title = conversation_title(question.content)
        conversation.current_leaf = reply  # the new reply's branch is the one shown
        if new is not None and new.folder_id is not None:
            conversation.folder_id = new.folder_id
        conversation.save(update_fields=["title", "model", "current_leaf", "folder", "updated"])
        for message in (*earlier, reply):
            send_event(conversation.pk, created_event(message))
    dispatch.reply_enqueue(reply=reply, wait_for_model=submission.wait_for_model)
    return PostedMessage(user_message=question, reply=reply)


def _conversation(user: User, profile: Profile, conversation_id: int | None) -> Conversation:
    """The conversation to continue; it becomes the one `POST /chat` continues next."""
    if conversation_id is None:
        if profile.current_conversation_id is not None:
            return selectors.conversation_get(user=user, conversation_id=profile.current_conversation_id)
        conversation = Conversation.objects.create(owner=user, system_prompt=profile.default_system_prompt)
    else:
        conversation = selectors.conversation_get(user=user, conversation_id=conversation_id)
    if profile.current_conversation_id != conversation.pk:
        profile.current_conversation = conversation
        profile.save(update_fields=["current_conversation"])
    return conversation


def _tools(submission: Submission, given: chat_params.ParamsIn) -> chat_params.ToolsIn | None:
    """The submission's tools, checked; they come with a new conversation and without a schema."""
    tools = chat_params.tools_in(submission.tools)
    if tools is None:
        return None
    if submission.new_conversation is None or submission.new_conversation.system_prompt is None:
        raise InvalidParameter(
            "tools", "are declared with a conversation's first request (as /v1 sends them)"
        )
    if given.response_schema is not None:
        raise InvalidParameter("tools", "cannot be combined with a JSON response format; send one of them")
    # Their description joins the system prompt: it fits the same limit.
    limits.check_length("tools", tools_block(tools.declared()))
    return tools


def _preset(user: User, submission: Submission) -> Preset | None:
    """The preset a `preset:<slug>` model id names (own, else published), for a new conversation."""
    if not submission.model.startswith(PRESET_PREFIX):
        return None
    try:
        preset = selectors.preset_by_slug(user=user, slug=submission.model.removeprefix(PRESET_PREFIX))
    except Preset.DoesNotExist:
        names = ", ".join(f"{PRESET_PREFIX}{preset.slug}" for preset in selectors.preset_list(user=user))
        raise limits.ModelNotDeclared(
            f"model: {submission.model!r} does not exist here; your presets are {names or 'none yet'}"
            " (GET /v1/models)."
        ) from None
    if submission.new_conversation is None:
        raise limits.InvalidInput("model", "a preset starts a new conversation; start a new chat from it.")
    return preset


def _new_conversation(
    user: User,
    new: NewConversation,
    content: str,
    tools: chat_params.ToolsIn | None = None,
    preset: Preset | None = None,
) -> Conversation:
    """The page's new chat, or the OpenAI API's exchange (which does not become the
    conversation `POST /chat` continues). A preset's system prompt comes first,
    then the request's; tools the model may call are described after them. The
    preset's parameters become the conversation's, under the request's own. The
    owner's memory is not used: a program's prompt is what it sent."""
    if new.system_prompt is None:  # titled from the question by the caller
        return conversation_create(user=user, preset=preset)
    first = new.history[0].content if new.history else content
    parts = [preset.system_prompt if preset is not None else "", new.system_prompt.strip()]
    if tools is not None and tools.choice != "none":
        parts.append(tools_block(tools.declared()))
    conversation = Conversation.objects.create(
        owner=user,
        title=conversation_title(first),
        system_prompt="\n\n".join(part for part in parts if part),
        preset=preset,
        params=dict(preset.params) if preset is not None else {},
        # A program's exchange (/v1) says all its prompt itself: the owner's memory stays out.
        use_memory=False,
    )
    parent = None
    for turn in new.history:  # one branch; the question follows its last turn
        parent = Message.objects.create(
            conversation=conversation, parent=parent, role=turn.role, content=turn.content
        )
    conversation.current_leaf = parent
    return conversation


def _question(conversation: Conversation, action: Action, content: str) -> tuple[Message, list[Message]]:
    """The user message the new reply answers, and the new messages to announce.

    Nothing is replaced: a regenerated reply becomes a sibling of the one on
    the branch being viewed, an edited question a sibling of the question
    (with its new reply below it), and both versions stay in the tree.
    """
    branch = selectors.conversation_branch(conversation=conversation).messages
    if action == "send":
        question = Message.objects.create(
            conversation=conversation,
            parent=branch[-1] if branch else None,
            role=Message.Role.USER,
            content=content,
            status=Message.Status.DONE,
        )
        return question, [question]
    found = next((m for m in reversed(branch) if m.role == Message.Role.USER), None)
    if action == "regenerate":
        if found is None or branch[-1].role != Message.Role.ASSISTANT:
            raise NothingToRegenerate("There is no reply to regenerate yet.")
        return found, []
    if found is None:
        raise NothingToRegenerate("There is no message to edit yet.")
    question = Message.objects.create(
        conversation=conversation,
        parent_id=found.parent_id,
        role=Message.Role.USER,
        content=content,
        status=Message.Status.DONE,
    )
    return question, [question]


def created_event(message: Message) -> dict[str, Any]:
    """A new message, with its parent and its siblings: a page showing the parent hides
    what followed it there (another branch now) and shows this one, "n/m"."""
    siblings = Message.objects.filter(conversation_id=message.conversation_id, parent_id=message.parent_id)
    return {
        "type": "message.created",
        "message_id": message.pk,
        "role": message.role,
        "message": selectors.message_branch_payload(
            message, list(siblings.order_by("id").values_list("id", flat=True))
        ),
    }
