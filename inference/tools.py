"""Function calling in the Hermes format: tools described in the system prompt, calls and results as text.

The format is the one Qwen2.5, Qwen3 and the Hermes models are trained on,
and the one vLLM's `hermes` tool parser reads: the tools' JSON signatures in
the system prompt inside <tools></tools>, each call the model makes as

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

and each result handed back in a user turn inside <tool_response></tool_response>.
For those families the prompt is what their own chat template writes; any
other model is told the same format in the same words. A conversation's
calls and results are stored as this text, so follow-up turns need nothing
but the plain chat template.

- `tools_block`, `call_text`, `result_text`: the prompt's side;
- `parse_calls`: a reply's text into its content and its calls; text that
  does not hold well-formed calls of declared tools stays text, never an error;
- `calls_grammar`: the llguidance grammar a reply must follow when a call is
  required (OpenAI's tool_choice "required" or a named function): every call
  then parses and its arguments follow the tool's parameter schema.

Torch-free: the web process renders and parses; the worker constrains.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# The most calls one reply may make under a grammar (OpenAI sets none; a bound keeps replies finite).
MAX_CALLS = 8

CALL_START = "<tool_call>"
_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)

TOOLS_PROMPT = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{signatures}
</tools>

For each function call, return a json object with function name and arguments within \
<tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


def tools_block(functions: Sequence[Mapping[str, Any]]) -> str:
    """The system prompt's description of the tools (OpenAI's `function` objects)."""
    signatures = "\n".join(
        json.dumps({"type": "function", "function": dict(function)}, ensure_ascii=False)
        for function in functions
    )
    return TOOLS_PROMPT.format(signatures=signatures)


def call_text(calls: Sequence[ToolCall], content: str = "") -> str:
    """An assistant turn that made these calls, as the model writes it."""
    parts = [content.strip()] if content.strip() else []
    parts += [
        "<tool_call>\n"
        + json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)
        + "\n</tool_call>"
        for call in calls
    ]
    return "\n".join(parts)


def result_text(results: Sequence[str]) -> str:
    """A user turn handing back tool results, in the order of the calls."""
    return "\n".join(f"<tool_response>\n{result}\n</tool_response>" for result in results)


def parse_calls(text: str, names: Sequence[str]) -> tuple[str, list[ToolCall]]:
    """The text before the first call, and the calls; ("text", []) when they are not
    all well-formed calls of declared tools (then the whole reply is text)."""
    matches = list(_CALL.finditer(text))
    if not matches:
        return text, []
    calls = []
    for match in matches:
        try:
            body = json.loads(match.group(1))
        except ValueError:
            return text, []
        if not (
            isinstance(body, dict)
            and body.get("name") in names
            and isinstance(body.get("arguments", {}), dict)
        ):
            return text, []
        calls.append(ToolCall(body["name"], body.get("arguments", {})))
    return text[: matches[0].start()].strip(), calls


def _call_schema(function: Mapping[str, Any]) -> dict[str, Any]:
    """One call of `function` as a JSON Schema document of its own. The arguments'
    `$defs` (what pydantic writes for nested models) move to its root, where
    their `#/$defs/...` references resolve."""
    parameters = dict(function.get("parameters") or {"type": "object", "properties": {}})
    definitions = {key: parameters.pop(key) for key in ("$defs", "definitions") if key in parameters}
    return {
        "type": "object",
        "properties": {"name": {"const": function["name"]}, "arguments": parameters},
        "required": ["name", "arguments"],
        "additionalProperties": False,
        "x-guidance": {"whitespace_flexible": False},
        **definitions,
    }


def calls_grammar(
    functions: Sequence[Mapping[str, Any]], *, only: str | None = None, parallel: bool = True
) -> str:
    """A Lark grammar (llguidance's dialect) for a reply that is nothing but calls:
    of the function named `only`, or of any of `functions`; at most MAX_CALLS, or one."""
    chosen = [f for f in functions if only is None or f["name"] == only]
    more = f'("\\n" call){{0,{MAX_CALLS - 1}}}' if parallel else ""
    bodies = " | ".join(f"body{index}" for index in range(len(chosen)))
    rules = [f"start: call {more}", f'call: "<tool_call>\\n" ({bodies}) "\\n</tool_call>"']
    rules += [
        f"body{index}: %json {json.dumps(_call_schema(f), ensure_ascii=False)}"
        for index, f in enumerate(chosen)
    ]
    return "\n".join(rules) + "\n"
