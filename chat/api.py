"""`POST /chat` and `POST /reset`, kept compatible with the prototypes' clients.

Answers are `{"success": true, ...}`; every error is `{"success": false,
"error": "..."}` with a fitting status (and Retry-After on 429 and 503). The
view parses, submits through the one submit path and waits for the worker
(`chat.delivery`): it never generates in the web process.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from ninja import Body
from ninja.errors import HttpError, ValidationError

from chat import delivery, selectors
from chat.auth import auth_user, http_error_message, json_api
from chat.lifecycle.submit import Submission
from chat.models import Message
from chat.params import PARAM_FIELDS
from chat.services import conversations


def _error(status: int, message: str, *, retry_after_s: int | None = None, **extra: Any) -> JsonResponse:
    response = JsonResponse({"success": False, "error": message, **extra}, status=status)
    if retry_after_s is not None:
        response["Retry-After"] = str(retry_after_s)
    return response


api = json_api(
    error=lambda status, message, code: _error(status, message),
    title="SanjAI chat (prototype-compatible)",
    urls_namespace="legacy",
    docs_url=None,
    openapi_url=None,
)

# The prototypes' fields, plus the ones every other surface takes. `documents`: ids
# of the caller's documents (POST /api/v1/documents) the conversation's replies search.
FIELDS = ("message", "conversation_id", "model", "documents", *PARAM_FIELDS)

NOT_A_JSON_OBJECT = 'The request body must be a JSON object, for example {"message": "Hello"}.'


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> JsonResponse:
    return _error(exc.status_code, http_error_message(exc, not_a_json_object=NOT_A_JSON_OBJECT))


@api.exception_handler(ValidationError)
def _invalid(request: HttpRequest, exc: ValidationError) -> JsonResponse:
    return _error(400, NOT_A_JSON_OBJECT)


@api.exception_handler(delivery.Problem)
def _problem(request: HttpRequest, exc: delivery.Problem) -> JsonResponse:
    ids = {"conversation_id": exc.conversation_id, "message_id": exc.message_id}
    return _error(
        exc.status,
        exc.message,
        retry_after_s=exc.retry_after_s,
        **{key: value for key, value in ids.items() if value is not None},
    )


def _parse_chat(payload: dict[str, Any]) -> Submission:
    message = payload.get("message")
    if not isinstance(message, str):
        raise HttpError(400, "message: must be a non-empty string.")
    conversation_id = payload.get("conversation_id")
    if conversation_id is not None and (
        isinstance(conversation_id, bool) or not isinstance(conversation_id, int) or conversation_id < 1
    ):
        raise HttpError(400, "conversation_id: must be a positive whole number or null.")
    model = payload.get("model") or ""
    if not isinstance(model, str):
        raise HttpError(400, "model: must be the name of a model (GET /v1/models) or null.")
    unknown = sorted(set(payload) - set(FIELDS))
    if unknown:
        raise HttpError(400, f"Unknown field(s): {', '.join(unknown)}. Allowed: {', '.join(FIELDS)}.")
    documents = payload.get("documents")  # checked by the submit path, as on every surface
    return Submission(
        content=message,
        conversation_id=conversation_id,
        params=payload,
        model=model,
        documents=() if documents is None else documents,
    )


@api.post("/chat")
async def chat(request: HttpRequest, payload: dict[str, Any] = Body(...)) -> JsonResponse:
    submission = _parse_chat(payload)
    user = auth_user(request)
    posted = await delivery.submit(user=user, submission=submission, prefer=request.headers.get("Prefer", ""))
    ids = {"conversation_id": posted.reply.conversation_id, "message_id": posted.reply.pk}
    try:
        async with delivery.ReplyWatch(user, posted.reply) as watch:
            reply = await watch.wait(settings.CHAT_REPLY_TIMEOUT_S)
    except Message.DoesNotExist:
        return _error(409, "The conversation was deleted while its reply was being generated.", **ids)
    if not reply.is_finished:
        return _error(
            504,
            f"No reply within {settings.CHAT_REPLY_TIMEOUT_S:g} s. The worker may still answer: "
            "the reply will appear in the conversation.",
            **ids,
        )
    if reply.status == Message.Status.FAILED:
        raise delivery.failure(reply)
    return JsonResponse(
        {
            "success": True,
            **ids,
            "user_message": posted.user_message.content,
            "reply": reply.content,
            "finish_reason": reply.finish_reason,
            "usage": selectors.message_usage(reply),
            # The passages the reply was given, each with its document and whether the reply cites it.
            "citations": reply.citations,
        }
    )


@api.post("/reset")
def reset(request: HttpRequest) -> JsonResponse:
    conversation = conversations.conversation_create(user=auth_user(request))
    return JsonResponse({"success": True, "conversation_id": conversation.pk})
