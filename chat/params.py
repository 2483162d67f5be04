"""The one schema for the generation parameters a request may set, and how unset ones resolve.

Every surface (the page's settings and actions, `POST /chat`, `/v1`, `/api/v1`)
validates parameters with `ParamsIn` and words a refusal with `invalid_param`,
so one bad value gets the same answer everywhere: the field, what is allowed,
and what was sent. The ranges come from `inference.params`, which the worker
shares; the settings panel and the profile form show the same ranges
(`FORM_FIELDS`).

Resolution order for a field a request leaves out: the conversation's
settings, then the owner's profile defaults, then the site's defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from django.conf import settings
from ninja import Field, Schema
from pydantic import ConfigDict, StrictFloat, StrictInt, StrictStr
from pydantic import ValidationError as PydanticValidationError

from inference.grammar import grammar_problem, lark_grammar, schema_problem, schema_text
from inference.params import (
    MAX_SEED,
    MAX_STOP_LENGTH,
    MAX_STOP_STRINGS,
    REPETITION_PENALTY_RANGE,
    TEMPERATURE_RANGE,
    TOP_P_RANGE,
    GenerationParams,
    InvalidParameter,
)
from inference.tools import calls_grammar

# The parameters a person sets on the chat page and the profile page; programs
# may also send `stop`, `seed` and `response_schema` (on /v1, `response_format`).
CHAT_PARAM_FIELDS = ("max_new_tokens", "temperature", "top_p", "repetition_penalty")
PARAM_FIELDS = (*CHAT_PARAM_FIELDS, "stop", "seed", "response_schema")

Number = StrictFloat | StrictInt  # JSON numbers; never a string or a boolean
StopString = Annotated[StrictStr, Field(min_length=1, max_length=MAX_STOP_LENGTH)]


def _cap() -> int:
    return settings.GENERATION_MAX_NEW_TOKENS


class ParamsIn(Schema):
    """Generation parameters; each one left out (or null) resolves as the module says."""

    model_config = ConfigDict(extra="ignore")  # surfaces decide which other fields they take

    max_new_tokens: StrictInt | None = Field(
        None, ge=1, le=_cap(), description="Reply length limit, in tokens"
    )
    temperature: Number | None = Field(
        None, ge=TEMPERATURE_RANGE.low, le=TEMPERATURE_RANGE.high, description="0 is greedy"
    )
    top_p: Number | None = Field(None, gt=TOP_P_RANGE.low, le=TOP_P_RANGE.high)
    repetition_penalty: Number | None = Field(
        None, ge=REPETITION_PENALTY_RANGE.low, le=REPETITION_PENALTY_RANGE.high
    )
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)] | None = Field(
        None, description=f"A string or up to {MAX_STOP_STRINGS}; the reply ends before the first"
    )
    seed: StrictInt | None = Field(None, ge=0, le=MAX_SEED, description="Makes sampling repeatable")
    response_schema: dict[str, Any] | None = Field(
        None,
        description="The reply is a JSON document this JSON Schema accepts "
        '({"type": "object"}: any JSON object); local models are constrained to it',
    )


def allowed(field: str) -> str:
    """What a field allows, in the words every refusal uses."""
    return {
        "max_new_tokens": f"a whole number from 1 to {_cap()}",
        "temperature": f"a number in {TEMPERATURE_RANGE.describe()} (0 is greedy)",
        "top_p": f"a number in {TOP_P_RANGE.describe()}",
        "repetition_penalty": f"a number in {REPETITION_PENALTY_RANGE.describe()}",
        "stop": (
            f"a string or a list of at most {MAX_STOP_STRINGS} strings, "
            f"each 1 to {MAX_STOP_LENGTH} characters"
        ),
        "seed": f"a whole number from 0 to {MAX_SEED}",
        "response_schema": "a JSON Schema, as an object",
    }[field]


def invalid_param(field: str, value: Any) -> InvalidParameter:
    return InvalidParameter(field, f"must be {allowed(field)}, got {value!r}")


def params_in(raw: Mapping[str, Any]) -> ParamsIn:
    """Validate the parameters a request sent; InvalidParameter names the first bad one."""
    given = {field: raw.get(field) for field in PARAM_FIELDS if raw.get(field) is not None}
    try:
        parsed = ParamsIn.model_validate(given)
    except PydanticValidationError as exc:
        field = str(exc.errors()[0]["loc"][0])
        raise invalid_param(field, given.get(field)) from None
    except (ValueError, TypeError):  # a value pydantic cannot even compare (e.g. NaN) is still just bad
        field = next(iter(given))
        raise invalid_param(field, given[field]) from None
    if parsed.response_schema is not None:
        _check_schema(parsed)
    return parsed


def _check_schema(parsed: ParamsIn) -> None:
    """A schema the grammar can enforce, and nothing that could cut its document short."""
    assert parsed.response_schema is not None
    problem = schema_problem(schema_text(parsed.response_schema))
    if problem is not None:
        raise InvalidParameter("response_schema", f"this schema cannot be enforced: {problem}")
    if parsed.stop:
        raise InvalidParameter(
            "stop", "cannot be combined with a JSON schema: a stop string could cut the document short"
        )


def site_defaults() -> GenerationParams:
    return GenerationParams(max_new_tokens=settings.GENERATION_DEFAULT_MAX_NEW_TOKENS)


def over(given: ParamsIn, defaults: GenerationParams) -> GenerationParams:
    """`given`'s fields, with the ones it leaves out taken from `defaults`."""
    fields = given.model_dump(exclude_none=True)
    if isinstance(fields.get("stop"), str):
        fields["stop"] = [fields["stop"]]
    if "response_schema" in fields:  # stored and sent to the worker as JSON text
        fields["response_schema"] = schema_text(fields["response_schema"])
    merged = {**defaults.as_dict(), **fields}
    if merged["max_new_tokens"] > _cap():  # a default or stored value above a lowered cap
        merged["max_new_tokens"] = _cap()
    return GenerationParams.from_dict(merged)


def stored_over(stored: Mapping[str, Any], defaults: GenerationParams) -> GenerationParams:
    """Parameters saved earlier (a conversation's, a profile's) over `defaults`.

    A value saved before a limit was lowered is skipped rather than fatal.
    """
    fields = {}
    for field in CHAT_PARAM_FIELDS:
        try:
            fields[field] = getattr(params_in({field: stored.get(field)}), field)
        except InvalidParameter:
            continue
    return over(ParamsIn(**fields), defaults)


def chat_params(params: GenerationParams) -> dict[str, Any]:
    """The fields a person sets on the page, as stored and shown."""
    return {field: getattr(params, field) for field in CHAT_PARAM_FIELDS}


@dataclass(frozen=True)
class FormField:
    """What the settings panel and the profile form show and allow for one field."""

    min: float
    max: float
    step: float
    help: str


# HTML number inputs have no exclusive bounds: top_p's (0, 1] becomes 0.01 to 1 there.
FORM_FIELDS = {
    "max_new_tokens": FormField(1, _cap(), 1, allowed("max_new_tokens")),
    "temperature": FormField(TEMPERATURE_RANGE.low, TEMPERATURE_RANGE.high, 0.05, allowed("temperature")),
    "top_p": FormField(0.01, TOP_P_RANGE.high, 0.01, allowed("top_p")),
    "repetition_penalty": FormField(
        REPETITION_PENALTY_RANGE.low, REPETITION_PENALTY_RANGE.high, 0.01, allowed("repetition_penalty")
    ),
}


# --- Tools (function calling) ------------------------------------------------------

MAX_TOOLS = 32
FUNCTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"


class FunctionIn(Schema):
    """A function the model may call, as OpenAI declares one."""

    model_config = ConfigDict(extra="forbid")

    name: StrictStr = Field(..., pattern=FUNCTION_NAME)
    description: StrictStr | None = Field(None, max_length=2000)
    parameters: dict[str, Any] | None = Field(None, description="A JSON Schema of its arguments (an object)")
    strict: bool | None = None  # accepted: a required call always follows the schema


class ToolsIn(Schema):
    """The tools of a request: the functions, which of them the reply must call
    ("auto": as the model chooses; "none": none; "required": one or more; or a
    function's name), and whether it may call several at once."""

    model_config = ConfigDict(extra="forbid")

    functions: Annotated[list[FunctionIn], Field(min_length=1, max_length=MAX_TOOLS)]
    choice: StrictStr = "auto"
    parallel: bool = True

    @property
    def names(self) -> list[str]:
        return [function.name for function in self.functions]

    def declared(self) -> list[dict[str, Any]]:
        return [function.model_dump(exclude_none=True) for function in self.functions]


def tools_in(raw: Mapping[str, Any] | None) -> ToolsIn | None:
    """Validate a request's tools; InvalidParameter names the first bad part and what is allowed."""
    if raw is None:
        return None
    try:
        tools = ToolsIn.model_validate(raw)
    except PydanticValidationError as exc:
        error = exc.errors()[0]
        raise InvalidParameter(
            _tools_path(error["loc"]),
            f'{error["msg"]}; a tool is {{"type": "function", "function": {{"name": '
            f'(letters, digits, _ and -, at most 64), "description", "parameters": a JSON Schema}}}}, '
            f"at most {MAX_TOOLS} of them",
        ) from None
    for index, function in enumerate(tools.functions):
        if function.parameters is not None:
            if function.parameters.get("type", "object") != "object":
                raise InvalidParameter(
                    f"tools[{index}].function.parameters",
                    'must be a JSON Schema of an object ("type": "object"): the arguments are an object',
                )
            problem = schema_problem(schema_text(function.parameters))
            if problem is not None:
                raise InvalidParameter(
                    f"tools[{index}].function.parameters", f"this schema cannot be enforced: {problem}"
                )
    if len(set(tools.names)) != len(tools.names):
        raise InvalidParameter("tools", "each function needs a name of its own")
    if tools.choice not in ("auto", "none", "required", *tools.names):
        raise InvalidParameter(
            "tool_choice",
            f'must be "auto", "none", "required" or a declared function ({", ".join(tools.names)}), '
            f"got {tools.choice!r}",
        )
    return tools


def _tools_path(location: tuple[int | str, ...]) -> str:
    """Where in OpenAI's request a ToolsIn error is: tools[1].function.name, tool_choice, ..."""
    if location[0] == "functions" and len(location) > 1:
        return f"tools[{location[1]}].function" + "".join(f".{part}" for part in location[2:])
    return {"choice": "tool_choice", "parallel": "parallel_tool_calls"}.get(str(location[0]), "tools")


def tools_grammar(tools: ToolsIn) -> str | None:
    """The grammar a reply follows when it must call (None: it may answer in words)."""
    if tools.choice in ("auto", "none"):
        return None
    only = None if tools.choice == "required" else tools.choice
    grammar = calls_grammar(tools.declared(), only=only, parallel=tools.parallel)
    problem = grammar_problem(lark_grammar(grammar))
    if problem is not None:
        raise InvalidParameter("tools", f"these functions cannot be enforced together: {problem}")
    return grammar
