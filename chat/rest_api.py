"""The REST API for the app's own data, under /api/v1/.

Conversations (list, search, create, rename, pin, archive, file in a folder, delete),
their messages (list the branch being viewed or every branch, post, switch branch),
replies (poll, cancel), folders, and full-text search over your messages (chat/search.py). Posting a message
answers 202 at once with the ids; the reply arrives over the conversation's websocket,
or by polling `GET /api/v1/messages/{id}` until its status is done, failed or cancelled.

The OpenAPI schema is served at /api/v1/openapi.json and browsable at
/api/v1/docs. Programs authenticate with `Authorization: Bearer <api key>`;
the browser's session works too, with the CSRF token in `X-CSRFToken` for
writes. Anyone else's ids answer 404, exactly like ids that do not exist.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, JsonResponse
from ninja import Field, File, Path, Query, Schema, Status, UploadedFile
from ninja.errors import HttpError, ValidationError
from pydantic import ConfigDict, StrictBool

from chat import delivery, search, selectors
from chat.auth import auth_user, http_error_message, json_api
from chat.lifecycle.status import NotCancellable, reply_cancel
from chat.lifecycle.submit import Submission
from chat.lifecycle.tools import step_answer
from chat.models import MAX_ID, Conversation, Document, Folder, MemoryFact, Message, Preset, ToolStep
from chat.params import PARAM_FIELDS, ParamsIn, invalid_param
from chat.services import conversations, documents, feedback, folders, limits, memory, presets, sharing
from chat.share_views import share_url
from chat.tools import services as tool_services
from inference.params import InvalidParameter


def _error(status: int, detail: str) -> JsonResponse:
    return JsonResponse({"detail": detail}, status=status)


api = json_api(
    error=lambda status, message, code: _error(status, message),
    title="SanjAI REST API",
    version="1",
    description=(
        "Conversations and messages of the signed-in user. Authenticate with "
        "`Authorization: Bearer <api key>` (keys are made on the profile page), or with the "
        "browser session plus the `X-CSRFToken` header for writes. A posted message answers "
        "202 at once; poll `GET /api/v1/messages/{id}` (or listen on the websocket) for the reply."
    ),
    urls_namespace="rest_api",
    docs_url="/docs",
    openapi_url="/openapi.json",
)

MAX_OFFSET = 1_000_000_000
PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
TITLE_CHARS = 200

ConversationId = Annotated[int, Path(..., ge=1, le=MAX_ID, description="A conversation of yours")]
MessageId = Annotated[int, Path(..., ge=1, le=MAX_ID, description="A message of yours")]


# --- Schemas -------------------------------------------------------------------


class ErrorOut(Schema):
    detail: str


class PageQuery(Schema):
    limit: int = Field(PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE, description="Items per page")
    offset: int = Field(0, ge=0, le=MAX_OFFSET, description="Items to skip")


class ConversationQuery(PageQuery):
    q: str | None = Field(
        None, max_length=200, description="Only conversations whose title or messages contain this"
    )
    archived: bool | None = Field(
        None, description="true: only archived conversations; false: only the others; left out: all"
    )


class MessageQuery(PageQuery):
    branches: Literal["current", "all"] = Field(
        "current",
        description="current: the branch being viewed (as the chat page shows it); "
        "all: every message of every branch, oldest first (follow `parent_id` for the tree)",
    )


class ConversationOut(Schema):
    id: int
    title: str
    system_prompt: str
    model: str = Field(description="The model its replies come from")
    preset_id: int | None = Field(description="The preset it started from, if any")
    use_memory: bool = Field(description="Its replies see your memory (GET /api/v1/memory)")
    folder_id: int | None = Field(description="The folder it is filed in; null: the main list")
    pinned: bool = Field(description="Shown on top of the chat page's list")
    archived: bool = Field(description="Left out of the chat page's list, shown in its Archived view")
    created: datetime
    updated: datetime

    @staticmethod
    def resolve_pinned(conversation: Conversation) -> bool:
        return conversation.pinned_at is not None

    @staticmethod
    def resolve_archived(conversation: Conversation) -> bool:
        return conversation.archived_at is not None


class PresetOut(Schema):
    id: int
    name: str
    slug: str = Field(description="On /v1 the preset is the model id preset:<slug>")
    description: str
    system_prompt: str
    model: str = Field(description="Its model; empty: the default one")
    params: dict[str, Any] = Field(description="The parameters it sets (the chat page's)")
    published: bool = Field(description="Offered to everybody by an admin")
    mine: bool = Field(description="Yours to change")
    created: datetime
    updated: datetime

    @staticmethod
    def resolve_mine(preset: Preset, context: dict[str, Any]) -> bool:
        return bool(preset.owner_id == auth_user(context["request"]).pk)


class PresetIn(Schema):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., max_length=100)
    description: str = Field("", max_length=300)
    system_prompt: str = Field("", description=f"At most {settings.CHAT_MAX_MESSAGE_CHARS} characters")
    model: str = Field("", max_length=100, description="A model from GET /v1/models; empty: the default")
    params: dict[str, Any] = Field(
        default_factory=dict, description="max_new_tokens, temperature, top_p, repetition_penalty"
    )


class PresetPatch(Schema):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=100)
    description: str | None = Field(None, max_length=300)
    system_prompt: str | None = None
    model: str | None = Field(None, max_length=100)
    params: dict[str, Any] | None = None


class FolderOut(Schema):
    id: int
    name: str
    preset_id: int | None = Field(description="New chats started in it start from this preset")
    created: datetime


class FolderIn(Schema):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., max_length=folders.NAME_CHARS, description="Unique among yours, whatever the case")
    preset_id: int | None = Field(None, ge=1, le=MAX_ID, description="A preset of yours or a published one")


class FolderPatch(Schema):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=folders.NAME_CHARS)
    preset_id: int | None = Field(None, ge=1, le=MAX_ID, description="null: no preset")


class ConversationIn(Schema):
    title: str = Field("", max_length=TITLE_CHARS)
    folder_id: int | None = Field(None, ge=1, le=MAX_ID, description="File it in this folder of yours")
    preset_id: int | None = Field(
        None, ge=1, le=MAX_ID, description="Start from this preset: its system prompt, model and parameters"
    )
    model: str = Field("", max_length=100, description="A model from GET /v1/models; left out: the default")
    system_prompt: str | None = Field(
        None,
        description="Left out: the default system prompt from your profile. "
        f"At most {settings.CHAT_MAX_MESSAGE_CHARS} characters",
    )


class ConversationPatch(Schema):
    title: str | None = Field(None, max_length=TITLE_CHARS)
    model: str | None = Field(None, max_length=100, description="A model from GET /v1/models")
    system_prompt: str | None = Field(
        None, description=f"At most {settings.CHAT_MAX_MESSAGE_CHARS} characters"
    )
    pinned: bool | None = Field(None, description="Pin to the top of the list, or unpin")
    archived: bool | None = Field(None, description="Archive (which also unpins), or unarchive")
    use_memory: bool | None = Field(None, description="Let its replies see your memory, or not")
    folder_id: int | None = Field(
        None, ge=1, le=MAX_ID, description="Move it into this folder of yours; null: back to the main list"
    )


class Usage(Schema):
    prompt_tokens: int
    completion_tokens: int


class FeedbackOut(Schema):
    rating: Literal["up", "down"]
    comment: str


class ShareIn(Schema):
    model_config = ConfigDict(extra="forbid")

    show_owner: bool = Field(False, description="Show your name on the shared page")


class ShareOut(Schema):
    url: str = Field(description="The read-only page anyone with this link may read, no login needed")
    show_owner: bool
    created: datetime
    updated: datetime = Field(description="When the snapshot was last taken")


class FeedbackIn(Schema):
    model_config = ConfigDict(extra="forbid")

    rating: Literal["up", "down"]
    comment: str = Field("", max_length=feedback.COMMENT_CHARS)


class CitationOut(Schema):
    n: int = Field(description="Its marker in the reply's prompt and text: [n]")
    document_id: int | None = Field(description="Null in an imported conversation")
    document: str = Field(description="The document's name when it was retrieved")
    page: int | None
    heading: str
    chunk_id: int | None
    passage: str
    score: float | None = Field(description="The search's score; null when the documents were given whole")
    cited: bool = Field(description="Whether the reply's text cites it as [n]")


class MessageOut(Schema):
    id: int
    conversation_id: int
    parent_id: int | None = Field(
        description="The message this one follows (null: a first message). Regenerated replies "
        "and edited messages are siblings: they share a parent"
    )
    role: Literal["system", "user", "assistant"]
    content: str = Field(description="For a reply being generated: the text saved so far")
    status: Literal["pending", "streaming", "tool_wait", "done", "failed", "cancelled"] = Field(
        description="tool_wait: paused on the tools it called (GET /messages/{id}/tool-steps)"
    )
    finish_reason: str = Field(description="stop, length, cancelled or timeout; empty until finished")
    error_code: str
    error: str = Field(description="Why a failed reply failed, readable")
    usage: Usage | None = Field(description="Token counts of a finished reply")
    feedback: FeedbackOut | None = Field(description="Your rating of this reply, if any")
    citations: list[CitationOut] = Field(
        description="For a reply: the passages of the conversation's documents it was given"
    )
    created: datetime
    finished_at: datetime | None

    @staticmethod
    def resolve_usage(message: Message) -> dict[str, int] | None:
        if message.prompt_tokens is None and message.completion_tokens is None:
            return None
        return selectors.message_usage(message)

    @staticmethod
    def resolve_feedback(message: Message) -> dict[str, str] | None:
        return selectors.message_feedback(message)


class MessageIn(ParamsIn):
    """A message; generation parameters left out resolve as on every surface."""

    model_config = ConfigDict(extra="forbid")  # a misspelt parameter is refused, as on /chat and /v1

    # Its length is checked by the submit path, after stripping, as on every surface.
    content: str = Field(
        ...,
        description=f"Not blank; at most {settings.CHAT_MAX_MESSAGE_CHARS} characters",
    )
    model: str = Field(
        "", max_length=100, description="Answer with this model from now on; left out: the conversation's"
    )
    documents: list[Annotated[int, Field(ge=1, le=MAX_ID)]] = Field(
        [],
        max_length=settings.DOCUMENTS_PER_CONVERSATION,
        description="Ids of your documents to attach to the conversation first; the reply searches them",
    )


class PostedOut(Schema):
    conversation_id: int
    user_message: MessageOut
    reply: MessageOut = Field(description="Pending: poll GET /api/v1/messages/{reply.id}")


class ConversationPage(Schema):
    count: int
    limit: int
    offset: int
    items: list[ConversationOut]


class MessagePage(Schema):
    count: int
    limit: int
    offset: int
    items: list[MessageOut]


class SearchQueryIn(Schema):
    q: str = Field(
        ...,
        min_length=1,
        max_length=search.MAX_QUERY_CHARS,
        description=f"Words to find (at most {search.MAX_TERMS}); every one must match, the last "
        "also as a prefix. Operators and quotes are read as plain text",
    )
    limit: int = Field(PAGE_SIZE, ge=1, le=search.MAX_LIMIT, description="Results per page")
    offset: int = Field(0, ge=0, le=search.MAX_OFFSET, description="Results to skip")


class SearchHitOut(Schema):
    conversation_id: int
    message_id: int
    title: str = Field(description="The conversation's title")
    role: Literal["system", "user", "assistant"]
    snippet: str = Field(description="HTML: the text around the match, escaped, matched words in <mark>")
    created: datetime = Field(description="When the message was written")
    archived: bool = Field(description="The conversation is archived")
    url: str = Field(description="The chat page, scrolled to the message")


class SearchPageOut(Schema):
    limit: int
    offset: int
    next_offset: int | None = Field(description="The offset of the next page; null: this is the last")
    items: list[SearchHitOut]


# Every operation may answer these; each adds its own.
ERRORS: dict[int, type[Schema]] = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut}
WITH_404 = {**ERRORS, 404: ErrorOut}


# --- Errors --------------------------------------------------------------------


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> JsonResponse:
    message = http_error_message(exc, not_a_json_object="The request body must be a JSON object.")
    return _error(exc.status_code, message)


@api.exception_handler(delivery.Problem)
def _problem(request: HttpRequest, exc: delivery.Problem) -> JsonResponse:
    message = exc.message
    if exc.field == "message":  # this API calls the new message `content`
        message = "content: " + message.split(": ", 1)[-1]
    response = _error(exc.status, message)
    if exc.retry_after_s is not None:
        response["Retry-After"] = str(exc.retry_after_s)
    return response


@api.exception_handler(limits.InvalidInput)
def _invalid_input(request: HttpRequest, exc: limits.InvalidInput) -> JsonResponse:
    return _error(400, str(exc))


@api.exception_handler(InvalidParameter)
def _invalid_parameter(request: HttpRequest, exc: InvalidParameter) -> JsonResponse:
    return _error(400, str(exc))


@api.exception_handler(limits.ModelNotDeclared)
def _no_such_model(request: HttpRequest, exc: limits.ModelNotDeclared) -> JsonResponse:
    return _error(404, str(exc))


@api.exception_handler(limits.ModelNotAllowed)
def _model_not_allowed(request: HttpRequest, exc: limits.ModelNotAllowed) -> JsonResponse:
    return _error(403, str(exc))


def _field_problem(field: str, value: Any) -> str | None:
    """The wording every surface uses for a bad message or parameter."""
    if field in PARAM_FIELDS:
        return str(invalid_param(field, value))
    if field == "content":
        try:
            limits.check_message("content", value if isinstance(value, str) else "")
        except limits.InvalidInput as exc:
            return str(exc)
    return None


@api.exception_handler(ValidationError)
def _invalid(request: HttpRequest, exc: ValidationError) -> JsonResponse:
    sent = _json_body(request)
    problems = []
    for error in exc.errors:
        where = [str(part) for part in error.get("loc", ()) if part not in ("body", "payload")]
        shared = _field_problem(where[0], sent.get(where[0])) if where else None
        if shared is not None:
            problems.append(shared)
        else:
            msg = error.get("msg", "invalid")
            problems.append(f"{'.'.join(where)}: {msg}" if where else msg)
    return _error(400, "Invalid request. " + "; ".join(dict.fromkeys(problems)))


def _json_body(request: HttpRequest) -> dict[str, Any]:
    """The JSON object sent, for quoting a bad value back; {} if it is not one.

    A multipart upload (POST /documents) is not JSON, and its body has been read as a stream."""
    if request.content_type != "application/json":
        return {}
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _not_found(kind: str, id_: int) -> HttpError:
    return HttpError(404, f"{kind} {id_} not found.")


def _page(items: QuerySet[Any], page: PageQuery) -> dict[str, Any]:
    return {
        "count": items.count(),
        "limit": page.limit,
        "offset": page.offset,
        "items": list(items[page.offset : page.offset + page.limit]),
    }


# --- Conversations -------------------------------------------------------------


@api.get("/conversations", response={200: ConversationPage, **ERRORS}, tags=["conversations"])
def conversation_list(request: HttpRequest, query: Query[ConversationQuery]) -> dict[str, Any]:
    """Your conversations, most recently active first."""
    if query.q:
        conversations = selectors.conversation_search(user=auth_user(request), query=query.q)
    else:
        conversations = selectors.conversation_list(user=auth_user(request))
    if query.archived is not None:
        conversations = conversations.filter(archived_at__isnull=not query.archived)
    return _page(conversations, query)


@api.post("/conversations", response={201: ConversationOut, **WITH_404}, tags=["conversations"])
def conversation_create(request: HttpRequest, payload: ConversationIn) -> Status[Conversation]:
    """Start a conversation; it becomes the one `POST /chat` continues."""
    user = auth_user(request)
    preset = None
    if payload.preset_id is not None:
        try:
            preset = selectors.preset_usable(user=user, preset_id=payload.preset_id)
        except Preset.DoesNotExist:
            raise _not_found("Preset", payload.preset_id) from None
    folder = _own_folder(request, payload.folder_id) if payload.folder_id is not None else None
    conversation = conversations.conversation_create(
        user=user,
        title=" ".join(payload.title.split()),
        system_prompt=payload.system_prompt,
        model=payload.model,
        preset=preset,
    )
    if folder is not None:
        folders.conversation_move(user=user, conversation_id=conversation.pk, folder_id=folder.pk)
        conversation.folder = folder
    return Status(201, conversation)


@api.get(
    "/conversations/{conversation_id}", response={200: ConversationOut, **WITH_404}, tags=["conversations"]
)
def conversation_detail(request: HttpRequest, conversation_id: ConversationId) -> Conversation:
    return _conversation(request, conversation_id)


def _conversation(request: HttpRequest, conversation_id: int) -> Conversation:
    try:
        return selectors.conversation_get(user=auth_user(request), conversation_id=conversation_id)
    except Conversation.DoesNotExist:
        raise _not_found("Conversation", conversation_id) from None


@api.patch(
    "/conversations/{conversation_id}", response={200: ConversationOut, **WITH_404}, tags=["conversations"]
)
def conversation_update(
    request: HttpRequest, conversation_id: ConversationId, payload: ConversationPatch
) -> Conversation:
    """Rename a conversation, change its system prompt (used from its next reply on) or
    its model, pin or archive it, move it into a folder or out (`folder_id`: null)."""
    user = auth_user(request)
    move = "folder_id" in payload.model_fields_set  # sent as null: out of its folder
    if move and payload.folder_id is not None:
        _own_folder(request, payload.folder_id)  # 404 before anything changes
    try:
        conversation = conversations.conversation_update(
            user=user,
            conversation_id=conversation_id,
            title=payload.title,
            system_prompt=payload.system_prompt,
            model=payload.model,
            pinned=payload.pinned,
            archived=payload.archived,
            use_memory=payload.use_memory,
        )
    except Conversation.DoesNotExist:
        raise _not_found("Conversation", conversation_id) from None
    if move:  # last: a refused change above leaves the conversation where it was
        try:
            folders.conversation_move(user=user, conversation_id=conversation_id, folder_id=payload.folder_id)
        except Folder.DoesNotExist:  # deleted since the check above
            raise _not_found("Folder", payload.folder_id or 0) from None
        conversation.folder_id = payload.folder_id
    return conversation


class MemoryFactOut(Schema):
    id: int
    text: str
    created: datetime


class MemoryFactIn(Schema):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(..., description=f"1 to {memory.MAX_FACT_CHARS} characters: a fact to keep about you")


@api.get("/memory", response={200: list[MemoryFactOut], **ERRORS}, tags=["memory"])
def memory_list(request: HttpRequest) -> list[MemoryFact]:
    """The facts you keep; they join the system prompt of replies in conversations that use memory."""
    return list(selectors.memory_list(user=auth_user(request)))


@api.post("/memory", response={201: MemoryFactOut, **ERRORS}, tags=["memory"])
def memory_add(request: HttpRequest, payload: MemoryFactIn) -> Status[MemoryFact]:
    return Status(201, memory.memory_add(user=auth_user(request), text=payload.text))


MemoryFactId = Annotated[int, Path(..., ge=1, le=MAX_ID, description="A fact of yours")]


@api.delete("/memory/{fact_id}", response={204: None, **WITH_404}, tags=["memory"])
def memory_forget(request: HttpRequest, fact_id: MemoryFactId) -> Status[None]:
    try:
        memory.memory_delete(user=auth_user(request), fact_id=fact_id)
    except MemoryFact.DoesNotExist:
        raise _not_found("Fact", fact_id) from None
    return Status(204, None)


FolderId = Annotated[int, Path(..., ge=1, le=MAX_ID, description="A folder of yours")]


def _own_folder(request: HttpRequest, folder_id: int) -> Folder:
    try:
        return selectors.folder_get(user=auth_user(request), folder_id=folder_id)
    except Folder.DoesNotExist:
        raise _not_found("Folder", folder_id) from None


@api.get("/folders", response={200: list[FolderOut], **ERRORS}, tags=["folders"])
def folder_list(request: HttpRequest) -> list[Folder]:
    """Your folders, by name."""
    return list(selectors.folder_list(user=auth_user(request)))


@api.post("/folders", response={201: FolderOut, **ERRORS}, tags=["folders"])
def folder_create(request: HttpRequest, payload: FolderIn) -> Status[Folder]:
    """Make a folder (at most 200); file conversations in it with PATCH /conversations/{id}."""
    return Status(201, folders.folder_create(user=auth_user(request), **payload.model_dump()))


@api.patch("/folders/{folder_id}", response={200: FolderOut, **WITH_404}, tags=["folders"])
def folder_update(request: HttpRequest, folder_id: FolderId, payload: FolderPatch) -> Folder:
    """Rename a folder or change its preset (`preset_id`: null for none)."""
    sent = payload.model_fields_set
    try:
        return folders.folder_update(
            user=auth_user(request),
            folder_id=folder_id,
            name=payload.name,
            preset_id=payload.preset_id,
            clear_preset="preset_id" in sent and payload.preset_id is None,
        )
    except Folder.DoesNotExist:
        raise _not_found("Folder", folder_id) from None


@api.delete("/folders/{folder_id}", response={204: None, **WITH_404}, tags=["folders"])
def folder_delete(request: HttpRequest, folder_id: FolderId) -> Status[None]:
    """Delete a folder; its conversations are kept, back in the main list."""
    try:
        folders.folder_delete(user=auth_user(request), folder_id=folder_id)
    except Folder.DoesNotExist:
        raise _not_found("Folder", folder_id) from None
    return Status(204, None)


PresetId = Annotated[int, Path(..., ge=1, le=MAX_ID, description="A preset of yours")]


@api.get("/presets", response={200: list[PresetOut], **ERRORS}, tags=["presets"])
def preset_list(request: HttpRequest) -> list[Preset]:
    """Your presets, then the ones an admin published for everybody."""
    return list(selectors.preset_list(user=auth_user(request)))


@api.post("/presets", response={201: PresetOut, **WITH_404}, tags=["presets"])
def preset_create(request: HttpRequest, payload: PresetIn) -> Status[Preset]:
    """Make a preset: a new chat (or a /v1 request for model preset:<slug>) starts from it."""
    return Status(201, presets.preset_create(user=auth_user(request), **payload.model_dump()))


@api.patch("/presets/{preset_id}", response={200: PresetOut, **WITH_404}, tags=["presets"])
def preset_update(request: HttpRequest, preset_id: PresetId, payload: PresetPatch) -> Preset:
    """Change one of your presets; conversations started from it keep what they copied."""
    try:
        return presets.preset_update(user=auth_user(request), preset_id=preset_id, **payload.model_dump())
    except Preset.DoesNotExist:
        raise _not_found("Preset", preset_id) from None


@api.delete("/presets/{preset_id}", response={204: None, **WITH_404}, tags=["presets"])
def preset_delete(request: HttpRequest, preset_id: PresetId) -> Status[None]:
    try:
        presets.preset_delete(user=auth_user(request), preset_id=preset_id)
    except Preset.DoesNotExist:
        raise _not_found("Preset", preset_id) from None
    return Status(204, None)


@api.delete("/conversations/{conversation_id}", response={204: None, **WITH_404}, tags=["conversations"])
def conversation_delete(request: HttpRequest, conversation_id: ConversationId) -> Status[None]:
    """Delete a conversation and all its messages."""
    try:
        conversations.conversation_delete(user=auth_user(request), conversation_id=conversation_id)
    except Conversation.DoesNotExist:
        raise _not_found("Conversation", conversation_id) from None
    return Status(204, None)


@api.post(
    "/conversations/{conversation_id}/share",
    response={200: ShareOut, **WITH_404, 403: ErrorOut, 409: ErrorOut},
    tags=["conversations"],
)
def conversation_share(
    request: HttpRequest, conversation_id: ConversationId, payload: ShareIn
) -> Status[dict[str, Any]]:
    """Share the branch shown as a read-only page, or bring the share up to it (same URL).

    403 when this server does not share (SHARING=off); 409 when nothing is finished yet.
    """
    try:
        share = sharing.share_save(
            user=auth_user(request), conversation_id=conversation_id, show_owner=payload.show_owner
        )
    except Conversation.DoesNotExist:
        raise _not_found("Conversation", conversation_id) from None
    except (sharing.SharingOff, sharing.NothingToShare) as exc:
        raise HttpError(403 if isinstance(exc, sharing.SharingOff) else 409, str(exc)) from None
    return Status(
        200,
        {
            "url": share_url(request, share),
            "show_owner": share.show_owner,
            "created": share.created,
            "updated": share.updated,
        },
    )


@api.delete(
    "/conversations/{conversation_id}/share", response={204: None, **WITH_404}, tags=["conversations"]
)
def conversation_unshare(request: HttpRequest, conversation_id: ConversationId) -> Status[None]:
    """Stop sharing: the link answers 404 from now on."""
    try:
        revoked = sharing.share_revoke(user=auth_user(request), conversation_id=conversation_id)
    except Conversation.DoesNotExist:
        raise _not_found("Conversation", conversation_id) from None
    if not revoked:
        raise HttpError(404, f"Conversation {conversation_id} is not shared.")
    return Status(204, None)


# --- Search --------------------------------------------------------------------


@api.get("/search", response={200: SearchPageOut, **ERRORS}, tags=["search"])
def message_search(request: HttpRequest, query: Query[SearchQueryIn]) -> dict[str, Any]:
    """Your messages containing these words, best match first (archived conversations too)."""
    try:
        page = search.message_search(
            user=auth_user(request), query=query.q, limit=query.limit, offset=query.offset
        )
    except search.InvalidSearch as exc:
        raise HttpError(400, str(exc)) from None
    return {
        "limit": query.limit,
        "offset": query.offset,
        "next_offset": page.next_offset,
        "items": [{**vars(hit), "url": hit.url} for hit in page.hits],
    }


# --- Messages ------------------------------------------------------------------


@api.get(
    "/conversations/{conversation_id}/messages",
    response={200: MessagePage, **WITH_404},
    tags=["messages"],
)
def message_list(
    request: HttpRequest, conversation_id: ConversationId, page: Query[MessageQuery]
) -> dict[str, Any]:
    """A conversation's messages, oldest first: the branch being viewed, or with
    `branches=all` every branch's."""
    try:
        conversation = selectors.conversation_get(user=auth_user(request), conversation_id=conversation_id)
    except Conversation.DoesNotExist:
        raise _not_found("Conversation", conversation_id) from None
    if page.branches == "all":
        return _page(selectors.conversation_messages(conversation=conversation), page)
    return _page(selectors.conversation_branch_messages(conversation=conversation), page)


@api.post(
    "/conversations/{conversation_id}/messages",
    response={202: PostedOut, **WITH_404, 409: ErrorOut, 429: ErrorOut, 503: ErrorOut},
    tags=["messages"],
)
def message_post(
    request: HttpRequest, conversation_id: ConversationId, payload: MessageIn
) -> Status[dict[str, Any]]:
    """Post a message and queue the reply; answers at once.

    409 while the conversation's previous reply is still running; 429 (with
    Retry-After) over your limit of replies running at once or started per
    minute; 503 when no worker is up (your message is saved, the reply marked
    failed).
    """
    submission = Submission(
        content=payload.content,
        conversation_id=conversation_id,
        params=payload.dict(exclude={"content", "model", "documents"}),
        model=payload.model,
        documents=payload.documents,
    )
    posted = delivery.submit_sync(
        user=auth_user(request), submission=submission, prefer=request.headers.get("Prefer", "")
    )
    posted.reply.refresh_from_db()
    return Status(
        202,
        {
            "conversation_id": conversation_id,
            "user_message": posted.user_message,
            "reply": posted.reply,
        },
    )


@api.get("/messages/{message_id}", response={200: MessageOut, **WITH_404}, tags=["messages"])
def message_detail(request: HttpRequest, message_id: MessageId) -> Message:
    """One message; poll a reply here until its status is done, failed or cancelled."""
    try:
        return selectors.message_get(user=auth_user(request), message_id=message_id)
    except Message.DoesNotExist:
        raise _not_found("Message", message_id) from None


@api.put("/messages/{message_id}/feedback", response={200: FeedbackOut, **WITH_404}, tags=["messages"])
def feedback_put(request: HttpRequest, message_id: MessageId, payload: FeedbackIn) -> dict[str, str] | None:
    """Rate a finished reply up or down, with an optional comment; rating again changes it."""
    try:
        feedback.feedback_set(
            user=auth_user(request), message_id=message_id, rating=payload.rating, comment=payload.comment
        )
    except Message.DoesNotExist:
        raise _not_found("Message", message_id) from None
    return selectors.message_feedback(selectors.message_get(user=auth_user(request), message_id=message_id))


@api.delete("/messages/{message_id}/feedback", response={204: None, **WITH_404}, tags=["messages"])
def feedback_delete(request: HttpRequest, message_id: MessageId) -> Status[None]:
    """Take your rating of a reply back."""
    try:
        feedback.feedback_clear(user=auth_user(request), message_id=message_id)
    except Message.DoesNotExist:
        raise _not_found("Message", message_id) from None
    return Status(204, None)


@api.post(
    "/messages/{message_id}/branch",
    response={200: ConversationOut, **WITH_404, 409: ErrorOut},
    tags=["messages"],
)
def message_branch(request: HttpRequest, message_id: MessageId) -> Conversation:
    """Make the branch through this message the one viewed (and continued by the next
    message): it ends down the message's newest replies. 409 while a reply is being written."""
    try:
        return conversations.branch_switch(user=auth_user(request), message_id=message_id)
    except Message.DoesNotExist:
        raise _not_found("Message", message_id) from None
    except limits.ConversationBusy as exc:
        raise HttpError(409, str(exc)) from None


@api.post("/messages/{message_id}/cancel", response={200: MessageOut, **WITH_404}, tags=["messages"])
def message_cancel(request: HttpRequest, message_id: MessageId) -> Message:
    """Stop a reply. A queued one stops at once; a running one keeps the text so far.

    Cancelling a finished reply changes nothing; a user message answers 400.
    """
    try:
        return reply_cancel(user=auth_user(request), message_id=message_id)
    except Message.DoesNotExist:
        raise _not_found("Message", message_id) from None
    except NotCancellable as exc:
        raise HttpError(400, str(exc)) from None


# --- Documents -------------------------------------------------------------------


class DocumentOut(Schema):
    id: int
    name: str
    kind: str
    status: Literal["processing", "ready", "failed"]
    size_bytes: int
    page_count: int | None
    progress: int = Field(..., description="0-100 while it is read")
    error: str = Field(..., description="Why it could not be read, when failed")
    created: datetime


DocumentId = Annotated[int, Path(..., ge=1, le=MAX_ID, description="A document of yours")]


class PassageOut(Schema):
    id: int = Field(description="A citation's chunk_id")
    ordinal: int = Field(description="Its place in the document, from 0")
    page: int | None
    heading: str
    text: str


class PassagePage(Schema):
    count: int
    limit: int
    offset: int
    items: list[PassageOut]


class PassageQuery(PageQuery):
    around: int | None = Field(
        None,
        ge=1,
        le=MAX_ID,
        description="A passage's id: the page is the ones around it (a citation's chunk_id)",
    )


class DocumentRenameIn(Schema):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=1000, description="Cut to its last path component")


class AttachIn(Schema):
    model_config = ConfigDict(extra="forbid")

    document_ids: list[Annotated[int, Field(ge=1, le=MAX_ID)]] = Field(
        ..., min_length=1, max_length=settings.DOCUMENTS_PER_CONVERSATION
    )


@api.get("/documents", response={200: list[DocumentOut], **ERRORS}, tags=["documents"])
def document_list(request: HttpRequest) -> list[Document]:
    """Your documents, newest first."""
    return list(documents.document_list(user=auth_user(request)))


@api.post("/documents", response={201: DocumentOut, 413: ErrorOut, **ERRORS}, tags=["documents"])
def document_upload(request: HttpRequest, file: File[UploadedFile]) -> Status[Document]:
    """Upload a file (multipart field `file`); it is read in the background: poll until ready or failed.

    PDF, DOCX, PPTX, XLSX, CSV, HTML, Markdown, text and code files. Over
    DOCUMENT_MAX_BYTES, or past your storage budget, it is refused with 413.
    """
    user = auth_user(request)
    size_limit = settings.DOCUMENT_MAX_BYTES
    if file.size is not None and file.size > size_limit:
        # Refused before the file is read into memory.
        raise HttpError(
            413, f"file: {file.name} is over {size_limit / 1_000_000:g} MB, the most a document may be."
        )
    try:
        document = documents.document_upload(user=user, name=file.name or "", data=file.read(size_limit + 1))
    except (documents.DocumentTooLarge, limits.QuotaExceeded) as exc:
        raise HttpError(413, str(exc)) from None
    return Status(201, document)


@api.get("/documents/{document_id}", response={200: DocumentOut, **WITH_404}, tags=["documents"])
def document_get(request: HttpRequest, document_id: DocumentId) -> Document:
    try:
        return documents.document_get(user=auth_user(request), document_id=document_id)
    except Document.DoesNotExist:
        raise _not_found("Document", document_id) from None


@api.delete("/documents/{document_id}", response={204: None, **WITH_404}, tags=["documents"])
def document_delete(request: HttpRequest, document_id: DocumentId) -> Status[None]:
    """Delete the document, its passages and its stored file."""
    try:
        documents.document_delete(user=auth_user(request), document_id=document_id)
    except Document.DoesNotExist:
        raise _not_found("Document", document_id) from None
    return Status(204, None)


@api.get("/documents/{document_id}/passages", response={200: PassagePage, **WITH_404}, tags=["documents"])
def document_passages(
    request: HttpRequest, document_id: DocumentId, query: Query[PassageQuery]
) -> dict[str, Any]:
    """The document's passages in order, as it was read: a citation is shown in its document.

    With `around`, the page holds the passages around that one (`limit` of them, it in the middle)."""
    try:
        document = documents.document_get(user=auth_user(request), document_id=document_id)
    except Document.DoesNotExist:
        raise _not_found("Document", document_id) from None
    passages = document.chunks.order_by("ordinal")
    if query.around is not None:
        ordinal = passages.filter(pk=query.around).values_list("ordinal", flat=True).first()
        if ordinal is None:
            raise HttpError(404, f"Passage {query.around} is not in document {document_id}.")
        query = query.model_copy(update={"offset": max(0, ordinal - (query.limit - 1) // 2)})
    return _page(passages, query)


@api.patch("/documents/{document_id}", response={200: DocumentOut, **WITH_404}, tags=["documents"])
def document_rename(request: HttpRequest, document_id: DocumentId, payload: DocumentRenameIn) -> Document:
    """Rename the document."""
    try:
        return documents.document_rename(user=auth_user(request), document_id=document_id, name=payload.name)
    except Document.DoesNotExist:
        raise _not_found("Document", document_id) from None


@api.get(
    "/conversations/{conversation_id}/documents",
    response={200: list[DocumentOut], **WITH_404},
    tags=["documents"],
)
def conversation_document_list(request: HttpRequest, conversation_id: ConversationId) -> list[Document]:
    """The documents attached to the conversation, which its replies search."""
    conversation = _conversation(request, conversation_id)
    return list(conversation.documents.filter(owner=conversation.owner).order_by("created", "pk"))


@api.post(
    "/conversations/{conversation_id}/documents",
    response={200: list[DocumentOut], **WITH_404},
    tags=["documents"],
)
def conversation_document_attach(
    request: HttpRequest, conversation_id: ConversationId, payload: AttachIn
) -> list[Document]:
    """Attach documents of yours; the conversation's next replies search them. Answers the attached list."""
    conversation = _conversation(request, conversation_id)
    try:
        found = documents.documents_owned(user=auth_user(request), ids=payload.document_ids)
    except Document.DoesNotExist as exc:
        raise HttpError(404, str(exc)) from None
    with transaction.atomic():
        documents.documents_attach(conversation=conversation, documents=found)
    return list(conversation.documents.order_by("created", "pk"))


@api.delete(
    "/conversations/{conversation_id}/documents/{document_id}",
    response={204: None, **WITH_404},
    tags=["documents"],
)
def conversation_document_detach(
    request: HttpRequest, conversation_id: ConversationId, document_id: DocumentId
) -> Status[None]:
    """Detach a document: later replies stop searching it (it stays among your documents)."""
    conversation = _conversation(request, conversation_id)
    try:
        documents.documents_detach(conversation=conversation, document_id=document_id)
    except Document.DoesNotExist:
        raise _not_found("Attached document", document_id) from None
    return Status(204, None)


# --- MCP tools (chat/tools/, docs/user-guide/tools.md) -----------------------------

StepId = Annotated[int, Path(..., ge=1, le=MAX_ID, description="A tool call of one of your replies")]


class McpToolOut(Schema):
    name: str
    description: str
    approval: Literal["ask", "auto"] = Field(description="ask: each call waits for your approval")


class McpServerOut(Schema):
    name: str
    description: str
    tools: list[McpToolOut] = Field(description="As the server listed them last")

    @staticmethod
    def resolve_tools(server: Any) -> list[Any]:
        return [tool for tool in server.tools.all() if tool.enabled]


class McpServersIn(Schema):
    model_config = ConfigDict(extra="forbid")

    servers: list[Annotated[str, Field(max_length=64)]] = Field(
        ..., max_length=50, description="Names of servers (GET /api/v1/mcp-servers); []: no tools"
    )


class ToolStepOut(Schema):
    id: int
    round: int = Field(description="The generation pass that made the call, from 1")
    ordinal: int
    server: str
    tool: str
    arguments: dict[str, Any]
    approval: Literal["ask", "auto"]
    status: Literal["awaiting_approval", "queued", "running", "done", "error", "refused"]
    result: str = Field(description="What went back into the prompt (cut at MCP_TOOL_OUTPUT_MAX_CHARS)")
    is_error: bool = Field(description="The tool itself reported an error")
    truncated: bool
    error: str = Field(description="Why there is no result: the server failed, a limit, or a refusal")
    started_at: str | None
    finished_at: str | None
    duration_ms: int | None


class ApprovalIn(Schema):
    model_config = ConfigDict(extra="forbid")

    approve: StrictBool = Field(..., description="true runs the call; false refuses it (the model is told)")


@api.get("/mcp-servers", response={200: list[McpServerOut], **ERRORS}, tags=["tools"])
def mcp_server_list(request: HttpRequest) -> list[Any]:
    """The MCP servers an admin declared, with their tools: a conversation may use any of them."""
    return tool_services.servers_offered(user=auth_user(request))


@api.get(
    "/conversations/{conversation_id}/mcp-servers", response={200: list[str], **WITH_404}, tags=["tools"]
)
def conversation_mcp_servers(request: HttpRequest, conversation_id: ConversationId) -> list[str]:
    """The names of the servers whose tools the conversation's replies may call."""
    conversation = _conversation(request, conversation_id)
    return list(conversation.mcp_servers.order_by("name").values_list("name", flat=True))


@api.put(
    "/conversations/{conversation_id}/mcp-servers", response={200: list[str], **WITH_404}, tags=["tools"]
)
def conversation_mcp_servers_set(
    request: HttpRequest, conversation_id: ConversationId, payload: McpServersIn
) -> list[str]:
    """Let the conversation's next replies call the tools of exactly these servers."""
    conversation = _conversation(request, conversation_id)
    try:
        servers = tool_services.conversation_servers_set(conversation=conversation, names=payload.servers)
    except ValueError as exc:
        raise HttpError(400, str(exc)) from None
    return sorted(server.name for server in servers)


@api.get("/messages/{message_id}/tool-steps", response={200: list[ToolStepOut], **WITH_404}, tags=["tools"])
def message_tool_steps(request: HttpRequest, message_id: MessageId) -> list[dict[str, Any]]:
    """The reply's tool calls in order: arguments, approval, result or error, and times."""
    try:
        reply = selectors.message_get(user=auth_user(request), message_id=message_id)
    except Message.DoesNotExist:
        raise _not_found("Message", message_id) from None
    return [tool_services.step_payload(step) for step in reply.tool_steps.order_by("ordinal")]


@api.post(
    "/tool-steps/{step_id}/approval",
    response={200: ToolStepOut, 409: ErrorOut, **WITH_404},
    tags=["tools"],
)
def tool_step_approval(request: HttpRequest, step_id: StepId, payload: ApprovalIn) -> dict[str, Any]:
    """Approve or refuse a call that waits for you; a call already decided answers 409."""
    user = auth_user(request)
    try:
        before = tool_services.step_get(user=user, step_id=step_id).status
        step = step_answer(user=user, step_id=step_id, approve=payload.approve)
    except ToolStep.DoesNotExist:
        raise _not_found("Tool call", step_id) from None
    if before != ToolStep.Status.AWAITING_APPROVAL:
        raise HttpError(409, f"Tool call {step_id} is not waiting for approval: it is {step.status}.")
    return tool_services.step_payload(step)
