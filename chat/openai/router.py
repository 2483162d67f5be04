"""The `/v1` routes: models, `POST /v1/chat/completions`, and files (`/v1/files`).

Each route parses (chat/openai/protocol.py), authenticates, and hands over
to serving (chat/openai/serving.py); every refusal and failure is answered
in OpenAI's error envelope.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.http import FileResponse, HttpRequest, HttpResponseBase, JsonResponse
from django.http.multipartparser import MultiPartParserError
from ninja import Body
from ninja.errors import HttpError, ValidationError

from chat import selectors
from chat.auth import auth_user, json_api
from chat.lifecycle.submit import PRESET_PREFIX
from chat.models import Preset
from chat.openai import files, serving
from chat.openai.protocol import NOT_A_JSON_OBJECT, ApiError, invalid, parse_completion
from chat.services import limits, policies


def _api_error(request: HttpRequest | None, exc: ApiError) -> JsonResponse:
    response = JsonResponse(exc.body, status=exc.status)
    if exc.retry_after_s is not None:
        response["Retry-After"] = str(exc.retry_after_s)
    return response


def _envelope(status: int, message: str, code: str) -> JsonResponse:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return _api_error(None, ApiError(status, message, kind=kind, code=code))


api = json_api(
    error=_envelope,
    sessions=False,  # programs only: no browser session, so no CSRF to think about
    unauthenticated="Missing or invalid API key: send 'Authorization: Bearer <api key>' "
    "(keys are made on the profile page or with `make apikey`).",
    title="SanjAI OpenAI-compatible API",
    version="1",
    urls_namespace="openai",
    docs_url=None,  # OpenAI's own API reference documents this surface
    openapi_url=None,
)
api.exception_handler(ApiError)(_api_error)
api.add_router("", "chat.openai.embeddings.router")  # POST /v1/embeddings, when an embedding model is set


@api.exception_handler(ValidationError)
def _not_an_object(request: HttpRequest, exc: ValidationError) -> JsonResponse:
    return _api_error(request, invalid(NOT_A_JSON_OBJECT))


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> JsonResponse:
    message = NOT_A_JSON_OBJECT if exc.status_code == 400 else str(exc)
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return _api_error(request, ApiError(exc.status_code, message, kind=kind))


# --- Models --------------------------------------------------------------------


def _served_models(user: User) -> list[selectors.ServedModel]:
    """The declared models the user's groups let them use (chat.services.policies)."""
    served = selectors.model_list(registry=settings.MODEL_REGISTRY, redis_url=settings.REDIS_URL)
    mine = policies.allowance(user=user)
    return [model for model in served if mine.allows(model.name)]


def _model_object(model: selectors.ServedModel) -> dict[str, Any]:
    """OpenAI's model object, with SanjAI's live state beside it (clients ignore fields they don't know)."""
    return {
        "id": model.name,
        "object": "model",
        "created": int(model.since),
        "owned_by": "sanjai",
        "kind": model.kind,
        "state": model.state,  # ready, loading or no_worker
        "workers": model.workers,
    }


def _preset_object(preset: Preset, served: dict[str, selectors.ServedModel]) -> dict[str, Any]:
    """A preset as a model id of its own: its model's live state, under `preset:<slug>`."""
    model = served.get(preset.model or str(settings.MODEL_REGISTRY.default))
    return {
        **(_model_object(model) if model is not None else {}),
        "id": f"{PRESET_PREFIX}{preset.slug}",
        "created": int(preset.created.timestamp()),
        "kind": "preset",
        "preset": {"name": preset.name, "model": model.name if model else preset.model},
    }


@api.get("/models")
def models(request: HttpRequest) -> JsonResponse:
    """The declared models, then the caller's presets (own, then published) as model ids."""
    user = auth_user(request)
    served = _served_models(user)
    by_name = {model.name: model for model in served}
    # A preset of a model the user may not use would only be refused: not listed either.
    presets = [p for p in selectors.preset_list(user=user) if not p.model or p.model in by_name]
    data = [_model_object(model) for model in served] + [_preset_object(p, by_name) for p in presets]
    return JsonResponse({"object": "list", "data": data})


@api.get("/models/{model_id}")
def model_detail(request: HttpRequest, model_id: str) -> JsonResponse:
    """A declared model the caller may use, or one of their presets (whose model they may use)."""
    user = auth_user(request)
    preset = None
    if model_id.startswith(PRESET_PREFIX):
        try:
            preset = selectors.preset_by_slug(user=user, slug=model_id.removeprefix(PRESET_PREFIX))
        except Preset.DoesNotExist:
            raise ApiError(
                404, f"model: {model_id!r} is not one of your presets.", param="model", code="model_not_found"
            ) from None
    try:
        # The one wording for a model that is not declared, or not the caller's to use.
        name = limits.check_model(preset.model if preset is not None else model_id, user=user)
    except limits.ModelNotDeclared as exc:
        raise ApiError(404, str(exc), param="model", code="model_not_found") from None
    except limits.ModelNotAllowed as exc:
        raise ApiError(403, str(exc), kind="permission_error", param="model", code=exc.code) from None
    served = {model.name: model for model in _served_models(user)}
    return JsonResponse(_preset_object(preset, served) if preset is not None else _model_object(served[name]))


# --- Completions ---------------------------------------------------------------


@api.post("/chat/completions")
async def chat_completions(request: HttpRequest, payload: dict[str, Any] = Body(...)) -> HttpResponseBase:
    parsed = parse_completion(payload)
    user = auth_user(request)
    return await serving.complete(user=user, request=parsed, prefer=request.headers.get("Prefer", ""))


# --- Files -----------------------------------------------------------------------

MULTIPART = "POST /v1/files takes multipart/form-data with the fields file and purpose (user_data)."


@api.post("/files")
def file_upload(request: HttpRequest) -> JsonResponse:
    """A file for chat (multipart `file`, `purpose: user_data`); read in the background (status)."""
    user = auth_user(request)
    if request.content_type != "multipart/form-data":
        raise invalid(MULTIPART)
    try:
        fields, sent = dict(request.POST.lists()), dict(request.FILES.lists())
    except MultiPartParserError as exc:
        raise invalid(f"{MULTIPART} The body could not be read as one: {exc}") from None
    document = files.upload(user=user, fields=fields, files=sent)
    return JsonResponse(files.file_object(document))


def _number(request: HttpRequest, name: str, default: int) -> int:
    value = request.GET.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise invalid(f"{name}: must be a whole number, got {value!r}."[:300], param=name) from None


@api.get("/files")
def file_list(request: HttpRequest) -> JsonResponse:
    """The caller's files, newest first (`order=asc` for oldest), `limit` a page, `after` a cursor."""
    user = auth_user(request)
    known = {"limit", "order", "after", "purpose"}
    unknown = sorted(set(request.GET) - known)
    if unknown:
        raise invalid(
            f"Unrecognized request argument supplied: {unknown[0]}. SanjAI takes {', '.join(sorted(known))}.",
            param=unknown[0],
            code="unsupported_parameter",
        )
    return JsonResponse(
        files.page(
            user=user,
            limit=_number(request, "limit", files.LIST_LIMIT),
            order=request.GET.get("order", "desc"),
            after=request.GET.get("after", ""),
            purpose=request.GET.get("purpose", ""),
        )
    )


@api.get("/files/{file_id}")
def file_detail(request: HttpRequest, file_id: str) -> JsonResponse:
    return JsonResponse(files.file_object(files.owned(user=auth_user(request), value=file_id)))


@api.delete("/files/{file_id}")
def file_delete(request: HttpRequest, file_id: str) -> JsonResponse:
    """Delete the file: its document, passages and stored bytes (conversations that used it lose it)."""
    user = auth_user(request)
    document = files.owned(user=user, value=file_id)
    files.delete(user=user, document=document)
    return JsonResponse({"id": file_id, "object": "file", "deleted": True})


@api.get("/files/{file_id}/content")
def file_content(request: HttpRequest, file_id: str) -> FileResponse:
    """The file's bytes as uploaded."""
    document = files.owned(user=auth_user(request), value=file_id)
    return FileResponse(
        files.content(document),
        as_attachment=True,
        filename=document.name,
        content_type="application/octet-stream",
    )
