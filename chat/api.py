"""`POST /chat` and `POST /reset`, kept compatible with the prototypes' clients.

Answers are `{"success": true, ...}`; every error is `{"success": false,
"error": "..."}` with a fitting status. The view stores the message, queues
the job and waits for the worker: it never generates in the web process.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from ninja import Body, NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

from chat import selectors, services
from chat.auth import api_key_auth, auth_user, http_error_message, session_auth
from chat.events import subscribe
from chat.models import Conversation, Message
from inference.params import InvalidParameter, parse_params

logger = logging.getLogger(__name__)

api = NinjaAPI(
    title="SanjAI chat (prototype-compatible)",
    urls_namespace="legacy",
    auth=[api_key_auth, session_auth],
    docs_url=None,
    openapi_url=None,
)

# A failed reply's error code -> the status /chat answers with.
FAILURE_STATUS = {"context_overflow": 400, "worker_unavailable": 503, "timeout": 504}
PARAM_FIELDS = ("max_new_tokens", "temperature", "top_p", "repetition_penalty")


def _error(status: int, message: str, **extra: Any) -> JsonResponse:
    return JsonResponse({"success": False, "error": message, **extra}, status=status)


@api.exception_handler(AuthenticationError)
def _unauthenticated(request: HttpRequest, exc: Exception) -> JsonResponse:
    return _error(401, "Authentication required: log in, or send 'Authorization: Bearer <api key>'.")


NOT_A_JSON_OBJECT = 'The request body must be a JSON object, for example {"message": "Hello"}.'


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> JsonResponse:
    return _error(exc.status_code, http_error_message(exc, not_a_json_object=NOT_A_JSON_OBJECT))


@api.exception_handler(ValidationError)
def _invalid(request: HttpRequest, exc: ValidationError) -> JsonResponse:
    return _error(400, NOT_A_JSON_OBJECT)


def _parse_chat(payload: dict[str, Any]) -> tuple[str, int | None, Any]:
    message = payload.get("message")
    if not isinstance(message, str) or not message.strip():
        raise HttpError(400, "message: must be a non-empty string.")
    if len(message) > settings.CHAT_MAX_MESSAGE_CHARS:
        raise HttpError(
            400, f"message: must be at most {settings.CHAT_MAX_MESSAGE_CHARS} characters, got {len(message)}."
        )
    conversation_id = payload.get("conversation_id")
    if conversation_id is not None and (
        isinstance(conversation_id, bool) or not isinstance(conversation_id, int) or conversation_id < 1
    ):
        raise HttpError(400, "conversation_id: must be a positive whole number or null.")
    unknown = sorted(set(payload) - {"message", "conversation_id", *PARAM_FIELDS})
    if unknown:
        allowed = ", ".join(["message", "conversation_id", *PARAM_FIELDS])
        raise HttpError(400, f"Unknown field(s): {', '.join(unknown)}. Allowed: {allowed}.")
    try:
        params = parse_params(
            {field: payload.get(field) for field in PARAM_FIELDS},
            max_new_tokens_cap=settings.GENERATION_MAX_NEW_TOKENS,
            defaults=services.default_params(),
        )
    except InvalidParameter as exc:
        raise HttpError(400, str(exc)) from None
    return message, conversation_id, params


@api.post("/chat")
async def chat(request: HttpRequest, payload: dict[str, Any] = Body(...)) -> JsonResponse:
    content, conversation_id, params = _parse_chat(payload)
    user = auth_user(request)
    try:
        posted = await sync_to_async(services.message_post)(
            user=user, content=content, params=params, conversation_id=conversation_id
        )
    except Conversation.DoesNotExist:
        raise HttpError(404, f"Conversation {conversation_id} not found.") from None
    reply = posted.reply
    ids = {"conversation_id": reply.conversation_id, "message_id": reply.pk}
    try:
        async with subscribe(reply.conversation_id) as events:
            await sync_to_async(services.reply_enqueue)(reply=reply)
            await events.wait_for_finish(reply.pk, settings.CHAT_REPLY_TIMEOUT_S)
    except services.WorkerUnavailable as exc:
        return _error(503, f"{exc} Your message was saved.", **ids)
    except (redis.RedisError, OSError) as exc:
        logger.warning("channel layer unreachable: %s", exc)
        error = f"The message broker at {settings.REDIS_URL} is unreachable."
        await sync_to_async(services.reply_fail)(reply_id=reply.pk, code="worker_unavailable", error=error)
        return _error(503, f"{error} Your message was saved.", **ids)
    # The stored row is the truth; the event only says when to look.
    reply = await sync_to_async(selectors.message_get)(user=user, message_id=reply.pk)
    if not reply.is_finished:
        return _error(
            504,
            f"No reply within {settings.CHAT_REPLY_TIMEOUT_S:g} s. The worker may still answer: "
            "the reply will appear in the conversation.",
            **ids,
        )
    if reply.status == Message.Status.FAILED:
        return _error(FAILURE_STATUS.get(reply.error_code, 500), reply.error, **ids)
    return JsonResponse(
        {
            "success": True,
            **ids,
            "user_message": posted.user_message.content,
            "reply": reply.content,
            "finish_reason": reply.finish_reason,
            "usage": {
                "prompt_tokens": reply.prompt_tokens or 0,
                "completion_tokens": reply.completion_tokens or 0,
            },
        }
    )


@api.post("/reset")
def reset(request: HttpRequest) -> JsonResponse:
    conversation = services.conversation_create(user=auth_user(request))
    return JsonResponse({"success": True, "conversation_id": conversation.pk})
