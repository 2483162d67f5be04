"""The `/v1` request, as pydantic models, and its translation into the submit path's terms.

`parse_completion` validates a chat.completions body against
`ChatCompletionRequest` and answers what SanjAI needs (`CompletionRequest`:
the system prompt, the turns, the parameters under SanjAI's names).

Refusals keep OpenAI's shape and SanjAI's wording: the first problem found
becomes one `ApiError(400)` whose `param` is the field's path as OpenAI
writes it (`messages[2].content`) and whose message starts with it. An
unknown field is refused (`extra="forbid"`, as OpenAI does), except that a
field sent as null (or an empty list or object) counts as absent, so clients
that echo back full message objects (`"tool_calls": null`) work.
Parameters the submit path owns (temperature, top_p, stop, seed,
max_tokens, the schema's enforceability) are passed through and checked
there, as on every surface.

A user's message may carry file parts beside its text, as the SDKs send
them: `{"type": "file", "file": {"file_id": "file-12"}}` (POST /v1/files) or
`{"type": "file", "file": {"file_data": "data:application/pdf;base64,...",
"filename": "x.pdf"}}`. They become `CompletionRequest.files`; the text parts
are the message. Inline data fits the request body's limit
(DATA_UPLOAD_MAX_MEMORY_SIZE): larger files go through POST /v1/files.
"""

from __future__ import annotations

import base64
import binascii
import json
import mimetypes
import re
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from chat.lifecycle.submit import NewConversation, Submission
from inference.tools import ToolCall, call_text, result_text
from inference.types import Turn

SYSTEM_ROLES = frozenset({"system", "developer"})  # "developer" is OpenAI's newer name for it
RESPONSE_FORMATS = (
    '{"type": "text"}, {"type": "json_object"} or {"type": "json_schema", "json_schema": {...}}'
)
NOT_A_JSON_OBJECT = "The request body must be a JSON object."


class ApiError(Exception):
    """An OpenAI-style error: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s: int | None = None
        self.body = {"error": {"message": message, "type": kind, "param": param, "code": code}}


def invalid(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


# --- Files in a user's message -------------------------------------------------

FILE_ID_PREFIX = "file-"  # file-12 is document 12 (chat/openai/files.py)
_FILE_ID = re.compile(r"file-([0-9]{1,19})")
MAX_ID = 2**63 - 1  # the database's largest id


def file_id_number(value: str) -> int | None:
    """The document a `file-<n>` id names, or None when it is not such an id."""
    match = _FILE_ID.fullmatch(value)
    if match is None or not 1 <= int(match[1]) <= MAX_ID:
        return None
    return int(match[1])


@dataclass(frozen=True)
class FilePart:
    """A `{"type": "file", "file": {...}}` content part: an uploaded file, or one sent inline.

    `where` is the part's path in the request (messages[0].content[1].file), for errors.
    """

    where: str = ""
    file_id: str = ""  # "file-12"
    data: bytes = b""  # decoded file_data
    filename: str = ""


def file_part(value: Any, where: str) -> FilePart:
    """A content part's `file` object, checked (ApiError naming its field otherwise)."""
    if not isinstance(value, dict) or not value:
        raise invalid(
            f'{where}: must be {{"file_id": "file-12"}} or {{"file_data": "data:...;base64,...", '
            '"filename": "report.pdf"}.',
            param=where,
        )
    unknown = sorted(set(value) - {"file_id", "file_data", "filename"})
    if unknown:
        param = f"{where}.{unknown[0]}"
        raise invalid(
            f"Unrecognized request argument supplied: {param}. SanjAI does not support it.",
            param=param,
            code="unsupported_parameter",
        )
    if ("file_id" in value) == ("file_data" in value):
        raise invalid(f"{where}: send one of file_id and file_data.", param=where)
    if "file_id" in value:
        given = value["file_id"]
        if not isinstance(given, str) or file_id_number(given) is None:
            shown = repr(given)[:100]
            raise invalid(
                f"{where}.file_id: must be a file id from POST /v1/files (like file-12), got {shown}.",
                param=f"{where}.file_id",
            )
        return FilePart(where=f"{where}.file_id", file_id=given)
    mime, data = _inline(value["file_data"], f"{where}.file_data")
    filename = value.get("filename")
    if filename is None:
        extension = mimetypes.guess_extension(mime) if mime else None
        if extension is None:
            raise invalid(
                f"{where}.filename: needed with file_data (its extension says what the file is, "
                "as report.pdf).",
                param=f"{where}.filename",
            )
        filename = f"file{extension}"
    if not isinstance(filename, str):
        raise invalid(f"{where}.filename: must be a string.", param=f"{where}.filename")
    return FilePart(where=f"{where}.file_data", data=data, filename=filename)


def _inline(value: Any, where: str) -> tuple[str, bytes]:
    """file_data's media type and bytes: a data URL (data:application/pdf;base64,...) or bare base64."""
    if not isinstance(value, str) or not value:
        raise invalid(
            f"{where}: must be the file as a base64 data URL (data:application/pdf;base64,...).", param=where
        )
    mime = ""
    if value.startswith("data:"):
        head, comma, value = value.partition(",")
        if not comma or not head.endswith(";base64"):
            raise invalid(
                f"{where}: must be a base64 data URL (data:<media type>;base64,<data>).", param=where
            )
        mime = head.removeprefix("data:").removesuffix(";base64").split(";")[0]
    try:
        return mime, base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"{where}: is not valid base64.", param=where) from None


# --- Refusals inside validation ------------------------------------------------


def refuse(
    text: str, *, code: str | None = None, at: str = "", param: str | None = None
) -> PydanticCustomError:
    """A refusal raised by a validator: the message is the field's path, then `text`.

    `at` extends the path the error is found at (a content part's `[1]`);
    `param` replaces it (a rule an object checks about one of its fields);
    `code` is OpenAI's error code, if any.
    """
    return PydanticCustomError("sanjai", "{text}", {"text": text, "code": code, "at": at, "param": param})


def _absent(value: Any) -> bool:
    return value is None or value == [] or value == {}


def _present(data: Any) -> Any:
    """The fields of an object that count (null, [] and {} are absent), or `data` itself."""
    if isinstance(data, dict):
        return {key: value for key, value in data.items() if not _absent(value)}
    return data


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise refuse(f"must be true or false, got {value!r}.")
    return value


Boolean = Annotated[bool, BeforeValidator(_boolean)]


class _Object(BaseModel):
    """A JSON object of the request: unknown fields refused, absent ones dropped first."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    NOT_AN_OBJECT: ClassVar[str] = "must be an object."
    # Required fields whose own check words their absence (it gets None).
    REQUIRED: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _drop_absent(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise refuse(cls.NOT_AN_OBJECT)
        return {**dict.fromkeys(cls.REQUIRED), **_present(data)}


FILE_PART = '{"type": "file", "file": {"file_id": "file-12"}}'


def _content(value: Any, *, files_allowed: bool = False) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """A message's text, and its file parts (where each is, its `file` object) unchecked:
    they are checked with the message's place in the request known (files.file_part)."""
    files: list[tuple[str, Any]] = []
    if isinstance(value, list):  # content parts: text, and files in a user's message
        texts = []
        for index, part in enumerate(value):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "file" and files_allowed:
                unknown = sorted(set(part) - {"type", "file"})
                if unknown:
                    raise PydanticCustomError("unknown_field", "file part", {"at": f"[{index}].{unknown[0]}"})
                files.append((f"[{index}].file", part.get("file")))
                continue
            if kind != "text" or not isinstance(part.get("text"), str):
                text = '{"type": "text", "text": "..."}'
                allowed = f"text and file content parts are supported ({text} and {FILE_PART})"
                if not files_allowed:
                    allowed = f"text content parts are supported here ({text})"
                raise refuse(f"only {allowed}.", at=f"[{index}]")
            texts.append(part["text"])
        value = "".join(texts)
    if files and isinstance(value, str):
        return value, tuple(files)  # the question may be in another message of the turn
    if not isinstance(value, str) or not value.strip():
        raise refuse("must be a non-empty string.")
    return value, ()  # its length is checked by the submit path, as on every surface


def _role(value: Any) -> Any:
    if value not in ("system", "developer", "user", "assistant", "tool"):
        raise refuse(f"must be system, developer, user, assistant or tool, got {value!r}.")
    return value


class FunctionCall(_Object):
    name: str
    arguments: str  # JSON text, as OpenAI sends it

    def parsed(self) -> ToolCall:
        try:
            arguments = json.loads(self.arguments)
        except ValueError:
            raise refuse("must be a JSON object as text.") from None
        if not isinstance(arguments, dict):
            raise refuse("must be a JSON object as text.")
        return ToolCall(self.name, arguments)


class ToolCallIn(_Object):
    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Object):
    NOT_AN_OBJECT: ClassVar[str] = "must be an object with role and content."

    REQUIRED: ClassVar[tuple[str, ...]] = ("role",)

    role: Annotated[Literal["system", "developer", "user", "assistant", "tool"], BeforeValidator(_role)]
    content: str = ""  # checked below: an assistant message that calls tools may have none
    name: str | None = None  # accepted, not used
    tool_calls: list[ToolCallIn] = Field(default_factory=list)  # an assistant's calls
    tool_call_id: str | None = None  # a tool message's call (results are read in the calls' order)
    # Set from the content's file parts, never sent as such: (where in content, its `file` object).
    file_parts: tuple[tuple[str, Any], ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _content_checked(cls, data: Any) -> Any:
        if isinstance(data, dict) and "file_parts" in data:
            raise PydanticCustomError("unknown_field", "file_parts", {"at": ".file_parts"})
        if isinstance(data, dict) and data.get("role") == "tool" and data.get("content") in (None, ""):
            return {**data, "content": ""}  # a tool may return nothing
        if isinstance(data, dict) and not (data.get("role") == "assistant" and data.get("tool_calls")):
            try:
                text, files = _content(data.get("content"), files_allowed=data.get("role") == "user")
            except PydanticCustomError as exc:  # raised here, it would be located at the message
                at = ".content" + str((exc.context or {}).get("at", ""))
                if exc.type == "unknown_field":
                    raise PydanticCustomError("unknown_field", str(exc), {"at": at}) from None
                raise refuse(str(exc), at=at) from None
            data = {**data, "content": text, "file_parts": files}
        elif isinstance(data, dict) and data.get("content") is not None:
            data = {**data, "content": _content(data.get("content"))[0]}
        return data

    @model_validator(mode="after")
    def _its_role_fields(self) -> ChatMessage:
        if self.tool_calls and self.role != "assistant":
            raise refuse("only an assistant message makes tool calls.", at=".tool_calls")
        if self.tool_call_id is not None and self.role != "tool":
            raise refuse("only a tool message answers a call.", at=".tool_call_id")
        for index, call in enumerate(self.tool_calls):
            try:
                call.function.parsed()
            except PydanticCustomError as exc:
                raise refuse(str(exc), at=f".tool_calls[{index}].function.arguments") from None
        return self

    @property
    def calls(self) -> tuple[ToolCall, ...]:
        """tool_calls, with their arguments parsed."""
        return tuple(call.function.parsed() for call in self.tool_calls)


class StreamOptions(_Object):
    include_usage: Boolean = False


class JsonSchemaFormat(_Object):
    NOT_AN_OBJECT: ClassVar[str] = "must be an object with a name and a schema."
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str
    description: str | None = None
    # Not `schema`: pydantic's BaseModel has a method of that name.
    json_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"}, alias="schema")
    strict: bool | None = None  # accepted: a local reply always follows the schema

    @model_validator(mode="before")
    @classmethod
    def _named(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if not isinstance(data.get("name"), str) or not data["name"]:
                raise refuse(cls.NOT_AN_OBJECT)
            if "schema" in data and not isinstance(data["schema"], dict):
                raise refuse("must be a JSON Schema object.", at=".schema")
        return data


class ResponseFormat(_Object):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_of_three(cls, data: Any) -> Any:
        kind = data.get("type") if isinstance(data, dict) else None
        if kind not in ("text", "json_object", "json_schema"):
            raise refuse(f"must be {RESPONSE_FORMATS}, got {data!r}."[:500])
        if kind == "json_schema" and _absent(data.get("json_schema")):
            raise refuse(JsonSchemaFormat.NOT_AN_OBJECT, at=".json_schema")
        return data

    @model_validator(mode="after")
    def _fields_of_its_type(self) -> ResponseFormat:
        if self.type != "json_schema" and self.json_schema is not None:
            raise PydanticCustomError("unknown_field", "json_schema", {"at": ".json_schema"})
        return self

    def response_schema(self) -> dict[str, Any] | None:
        """The JSON Schema the reply must follow; None for plain text (json_object: any object)."""
        if self.type == "json_object":
            return {"type": "object"}
        if self.json_schema is not None:
            return self.json_schema.json_schema
        return None


def _only_one(value: Any) -> Any:
    if isinstance(value, bool) or value != 1:
        raise refuse(f"only n=1 is supported (one choice per request), got {value!r}.")
    return value


def _zero_penalty(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise refuse(f"must be a number, got {value!r}.")
    if value != 0:
        raise refuse(
            "SanjAI does not support it; send 0 or leave it out, and use "
            "repetition_penalty (1 to 2) to discourage repetition.",
            code="unsupported_parameter",
        )
    return value


def _no_logprobs(value: Any) -> Any:
    if _boolean(value):
        raise refuse("log probabilities are not supported.")
    return value


def _a_string(value: Any) -> Any:
    if not isinstance(value, str):
        raise refuse(f"must be a string, got {value!r}.")
    return value


def _a_model_name(value: Any) -> Any:
    if not isinstance(value, str) or not value:
        raise refuse("must name the served model (see GET /v1/models).")
    return value


def _messages(value: Any) -> Any:
    if not isinstance(value, list) or not value:
        raise refuse("must be a non-empty list of {role, content} objects.")
    return value


class FunctionIn(_Object):
    """A function's declaration; its fields are checked by the submit path (chat/params.py)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str


class ToolIn(_Object):
    type: Literal["function"]
    function: FunctionIn

    @model_validator(mode="before")
    @classmethod
    def _a_function(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("type") != "function":
            raise refuse(
                f'must be {{"type": "function", "function": {{...}}}}, got type {data.get("type")!r}.'
            )
        return data


def _tool_choice(value: Any) -> Any:
    """ "auto", "none", "required", or {"type": "function", "function": {"name": ...}} as its name."""
    if value in ("auto", "none", "required"):
        return value
    if isinstance(value, dict) and value.get("type") == "function":
        function = value.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str) and name:
            return name
    raise refuse(
        'must be "auto", "none", "required" or {"type": "function", "function": {"name": ...}}, '
        f"got {value!r}."[:300]
    )


class ChatCompletionRequest(_Object):
    """POST /v1/chat/completions, as SanjAI takes it. Fields are checked in this order."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("model", "messages")

    model: Annotated[str, BeforeValidator(_a_model_name)]
    messages: Annotated[list[ChatMessage], BeforeValidator(_messages)]
    n: Annotated[int, BeforeValidator(_only_one)] = 1
    frequency_penalty: Annotated[float, BeforeValidator(_zero_penalty)] = 0
    presence_penalty: Annotated[float, BeforeValidator(_zero_penalty)] = 0
    logprobs: Annotated[bool, BeforeValidator(_no_logprobs)] = False
    response_format: ResponseFormat | None = None
    tools: list[ToolIn] = Field(default_factory=list)
    tool_choice: Annotated[str, BeforeValidator(_tool_choice)] = "auto"
    parallel_tool_calls: Boolean = True
    user: Annotated[str | None, BeforeValidator(_a_string)] = None  # the caller's own records; unused
    stream: Boolean = False
    stream_options: StreamOptions | None = None
    store: Boolean = True
    # Checked by the submit path (chat/params.py), as on every surface.
    max_tokens: Any = None
    max_completion_tokens: Any = None
    temperature: Any = None
    top_p: Any = None
    stop: Any = None
    seed: Any = None
    repetition_penalty: Any = None  # a SanjAI extension, as in /chat

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.stream_options is not None and not self.stream:
            raise refuse("only allowed when stream is true.", param="stream_options")
        new, old = self.max_completion_tokens, self.max_tokens
        if new is not None and old is not None and new != old:
            raise refuse("disagrees with max_tokens; send one of them.", param="max_completion_tokens")
        if not self.tools and "tool_choice" in self.model_fields_set:
            raise refuse("needs tools to choose from.", param="tool_choice")
        return self

    def tools_spec(self) -> dict[str, Any] | None:
        """The tools as the submit path takes them (chat.params.ToolsIn), or None."""
        if not self.tools:
            return None
        return {
            "functions": [tool.function.model_dump() for tool in self.tools],
            "choice": self.tool_choice,
            "parallel": self.parallel_tool_calls,
        }


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    system_prompt: str
    turns: tuple[Turn, ...]  # alternating user/assistant, ending with the user's
    params: dict[str, Any]  # as sent, under SanjAI's names; the submit path validates them
    length_field: str  # which of OpenAI's two names set max_new_tokens, for errors
    sources: tuple[str, ...]  # where each turn came from ("messages[2].content"), for errors
    stream: bool
    include_usage: bool
    store: bool
    tools: dict[str, Any] | None = None  # as the submit path takes them
    tool_names: tuple[str, ...] = ()  # the functions a reply may call: what its calls are parsed against
    files: tuple[FilePart, ...] = ()  # the user messages' file parts, in order

    def submission(self, documents: tuple[int, ...] = ()) -> Submission:
        """The submission, with `documents`: the ids the file parts came to (files.attach)."""
        *history, question = self.turns
        return Submission(
            content=question.content,
            params=self.params,
            new_conversation=NewConversation(system_prompt=self.system_prompt, history=tuple(history)),
            model=self.model,
            tools=self.tools,
            documents=documents,
        )


def parse_completion(payload: Any) -> CompletionRequest:
    """Validate a chat.completions request; ApiError(400) names the first bad field."""
    try:
        body = ChatCompletionRequest.model_validate(payload)
    except ValidationError as exc:
        raise _refusal(exc) from None
    files = tuple(
        file_part(raw, f"messages[{index}].content{at}")
        for index, message in enumerate(body.messages)
        for at, raw in message.file_parts
    )
    system_prompt, turns, sources = _dialogue(body.messages)
    length_field = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    return CompletionRequest(
        model=body.model,
        system_prompt=system_prompt,
        turns=turns,
        params={
            "max_new_tokens": body.max_completion_tokens
            if body.max_completion_tokens is not None
            else body.max_tokens,
            "temperature": body.temperature,
            "top_p": body.top_p,
            "repetition_penalty": body.repetition_penalty,
            "stop": body.stop,
            "seed": body.seed,
            "response_schema": body.response_format.response_schema() if body.response_format else None,
        },
        length_field=length_field,
        sources=sources,
        stream=body.stream,
        include_usage=body.stream_options is not None and body.stream_options.include_usage,
        store=body.store,
        tools=body.tools_spec(),
        tool_names=tuple(tool.function.name for tool in body.tools) if body.tool_choice != "none" else (),
        files=files,
    )


def _dialogue(messages: list[ChatMessage]) -> tuple[str, tuple[Turn, ...], tuple[str, ...]]:
    """The system prompt, the dialogue, and where each turn came from.

    Consecutive turns of one role are joined; a joined turn is named after its
    last message. An assistant's tool calls become its turn's text and tool
    results a user turn, as the model reads them (inference/tools.py).
    """
    system: list[str] = []
    turns: list[Turn] = []
    sources: list[str] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if message.role == "tool":
            if not turns or not (
                (turns[-1].role == "assistant" and "<tool_call>" in turns[-1].content)
                or turns[-1].content.startswith("<tool_response>")
            ):
                raise invalid(
                    f"{where}: a tool message must follow an assistant message with tool_calls.", param=where
                )
            message = ChatMessage(role="user", content=result_text([message.content]))
        elif message.calls:
            message = ChatMessage(role="assistant", content=call_text(message.calls, message.content))
        if message.role in SYSTEM_ROLES:
            if turns:
                raise invalid(
                    f"{where}: system messages must come before the conversation's first user message.",
                    param=where,
                )
            system.append(message.content)
        elif not turns and message.role == "assistant":
            raise invalid(f"{where}: the first non-system message must be from the user.", param=where)
        elif turns and turns[-1].role == message.role:
            joined = "\n\n".join(text for text in (turns[-1].content, message.content) if text)
            turns[-1] = Turn(turns[-1].role, joined)
            sources[-1] = f"{where}.content"
        else:
            turns.append(Turn("user" if message.role == "user" else "assistant", message.content))
            sources.append(f"{where}.content")
    if not turns or turns[-1].role != "user":
        raise invalid("messages: the last message must be from the user.", param="messages")
    for turn, source in zip(turns, sources, strict=True):
        if not turn.content.strip():  # only file parts: nothing to ask about them
            raise invalid(
                f"{source}: a message with only file parts needs a text part too (the question about them).",
                param=source,
            )
    return "\n\n".join(system), tuple(turns), tuple(sources)


def _path(location: tuple[int | str, ...]) -> str:
    """A pydantic error location as OpenAI writes a field's path: messages[2].content."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _refusal(exc: ValidationError) -> ApiError:
    """The first problem of a request as one 400. Unknown fields come first, as
    a client's mistake that explains the rest; then the fields in their order."""
    errors = exc.errors()
    if not errors:
        return invalid(NOT_A_JSON_OBJECT)
    error = next((e for e in errors if e["type"] in ("extra_forbidden", "unknown_field")), errors[0])
    location = tuple(
        part for part in error["loc"] if not isinstance(part, str) or not part.startswith("function-")
    )
    context = error.get("ctx") or {}
    if not location and error["type"] == "sanjai" and not context.get("param"):
        return invalid(NOT_A_JSON_OBJECT)
    if error["type"] in ("extra_forbidden", "unknown_field"):  # the latter: a field of another type
        param = _path(location) + str(context.get("at", ""))
        return invalid(
            f"Unrecognized request argument supplied: {param}. SanjAI does not support it.",
            param=param,
            code="unsupported_parameter",
        )
    if error["type"] != "sanjai":  # a shape no check of ours words: pydantic's own message
        where = _path(location)
        return invalid(f"{where}: {error['msg']}." if where else NOT_A_JSON_OBJECT, param=where or None)
    param = context.get("param") or _path(location) + str(context.get("at", ""))
    return invalid(f"{param}: {context['text']}", param=param, code=context.get("code"))
