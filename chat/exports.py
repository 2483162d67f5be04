"""Conversations as portable files: JSON (re-importable) and Markdown (for reading)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chat.branches import Tree
from chat.models import Conversation, McpTool, Message, ToolStep
from chat.tools.services import step_payload

FORMAT = "sanjai.conversation"
# 2: messages carry "id" and "parent_id" (the tree of branches) and the export its
# "current_id" (the leaf of the branch being viewed). 1 (before branches): one line.
VERSION = 2
READABLE_VERSIONS = {1, 2}
MAX_IMPORT_MESSAGES = 10_000
MAX_IMPORT_CITATIONS = 50  # per reply (DOCUMENT_PASSAGES, or a small document given whole)
MAX_PASSAGE_CHARS = 10_000  # a chunk is about 1,350 at most
MAX_IMPORT_TOOL_STEPS = 100  # per reply (MCP_MAX_STEPS_PER_REPLY is far less)
MAX_TOOL_TEXT_CHARS = 100_000  # a step's result or error (MCP_TOOL_OUTPUT_MAX_CHARS is far less)
FINISHED_STEPS = {ToolStep.Status.DONE, ToolStep.Status.ERROR, ToolStep.Status.REFUSED}


class InvalidImport(ValueError):
    pass


def import_too_large(max_bytes: int) -> str:
    return f"The file is larger than {max_bytes / 1_000_000:g} MB, the most an import may be."


def conversation_to_dict(conversation: Conversation, messages: list[Message]) -> dict[str, Any]:
    """Every message of every branch, parents before children, each naming its parent."""
    messages = sorted(messages, key=lambda m: m.pk)
    tree = Tree.of((m.pk, m.parent_id) for m in messages)
    steps = _steps_of(messages)
    return {
        "format": FORMAT,
        "version": VERSION,
        "title": conversation.title,
        # By name: ids mean nothing on another server; an import files it in a folder of this name.
        "folder": conversation.folder.name if conversation.folder else None,
        "system_prompt": conversation.system_prompt,
        "params": conversation.params,
        "created": conversation.created.isoformat(),
        "updated": conversation.updated.isoformat(),
        "current_id": tree.leaf(conversation.current_leaf_id),
        "messages": [
            {
                "id": m.pk,
                "parent_id": m.parent_id,
                "role": m.role,
                "content": m.content,
                "status": m.status,
                "created": m.created.isoformat(),
                **({"error": m.error} if m.error else {}),
                **(
                    {"usage": {"prompt_tokens": m.prompt_tokens, "completion_tokens": m.completion_tokens}}
                    if m.completion_tokens is not None
                    else {}
                ),
                **({"citations": m.citations} if m.citations else {}),
                **({"tool_steps": [_step_dict(step) for step in steps[m.pk]]} if m.pk in steps else {}),
            }
            for m in messages
        ],
    }


def _steps_of(messages: list[Message]) -> dict[int, list[ToolStep]]:
    """The replies' tool calls, in one query, by reply."""
    by_reply: dict[int, list[ToolStep]] = {}
    replies = [m.pk for m in messages if m.role == Message.Role.ASSISTANT]
    for step in ToolStep.objects.filter(reply_id__in=replies).order_by("reply_id", "ordinal"):
        by_reply.setdefault(step.reply_id, []).append(step)
    return by_reply


# What the page's payload has that means nothing in another server's copy.
_LOCAL_STEP_FIELDS = frozenset({"id", "ordinal", "duration_ms"})


def _step_dict(step: ToolStep) -> dict[str, Any]:
    """A tool call as exported: the page's payload, the server by name (ids mean nothing elsewhere)."""
    return {key: value for key, value in step_payload(step).items() if key not in _LOCAL_STEP_FIELDS}


def conversation_to_markdown(conversation: Conversation, messages: list[Message]) -> str:
    """The branch being viewed, then every other branch from where it leaves what came before."""
    by_id = {m.pk: m for m in messages}
    tree = Tree.of((m.pk, m.parent_id) for m in messages)
    siblings = tree.children()
    steps = _steps_of(messages)
    lines = [f"# {conversation.title or 'Conversation'}", ""]
    lines.append(f"_Started {conversation.created:%Y-%m-%d %H:%M} UTC_")
    lines.append("")
    if conversation.system_prompt:
        lines += ["**System prompt:**", "", f"> {conversation.system_prompt}", ""]

    def section(ids: list[int], level: str) -> None:
        for message_id in ids:
            message = by_id[message_id]
            speaker = {"user": "You", "assistant": "SanjAI", "system": "System"}[message.role]
            note = "" if message.status == Message.Status.DONE else f" _({message.status})_"
            versions = siblings[message.parent_id]
            if len(versions) > 1:
                note += f" _(version {versions.index(message_id) + 1} of {len(versions)})_"
            lines.extend([f"{level} {speaker}{note}", "", message.content or message.error or "", ""])
            lines.extend(_tool_lines(steps.get(message_id, [])))
            lines.extend(_sources(message.citations))

    shown = tree.path(tree.leaf(conversation.current_leaf_id))
    section(shown, "##")
    written = set(shown)
    others = [leaf for leaf in sorted(tree.parents) if leaf not in siblings and leaf not in written]
    if others:
        lines += ["---", "", "## Other branches", ""]
    for number, leaf in enumerate(others, start=1):
        path = tree.path(leaf)
        new = [message_id for message_id in path if message_id not in written]
        fork = tree.parents[new[0]]
        where = "from the start" if fork is None else f"after “{_quote(by_id[fork])}”"
        lines += [f"### Branch {number}, {where}", ""]
        section(new, "####")
        written.update(new)
    return "\n".join(lines)


def _sources(citations: list[dict[str, Any]]) -> list[str]:
    """A reply's citations as a Markdown list under it: marker, source, then the passage quoted."""
    if not citations:
        return []
    lines = ["Sources:", ""]
    for c in citations:
        page = f"page {c['page']}" if c.get("page") is not None else ""
        where = ", ".join(part for part in (c["document"], page, c.get("heading") or "") if part)
        quoted = " ".join(c["passage"].split())
        lines.append(f"- [{c['n']}] {where}{' (cited)' if c.get('cited') else ''}: “{quoted[:300]}”")
    return [*lines, ""]


def _tool_lines(steps: list[ToolStep]) -> list[str]:
    """A reply's tool calls as a Markdown list: the call, its outcome, and what came back."""
    if not steps:
        return []
    lines = ["Tool calls:", ""]
    for step in steps:
        arguments = json.dumps(step.arguments, ensure_ascii=False)
        took = f", {step.duration_ms} ms" if step.duration_ms is not None else ""
        answer = " ".join((step.error or step.result).split())
        lines.append(f"- `{step.server_name}.{step.tool}({arguments})` ({step.status}{took}): {answer[:300]}")
    return [*lines, ""]


def _quote(message: Message, length: int = 60) -> str:
    text = " ".join((message.content or message.error).split())
    return text if len(text) <= length else text[: length - 1] + "…"


@dataclass(frozen=True)
class ImportedMessage:
    role: str
    content: str
    parent: int | None = None  # the index of the message it follows in the import; None: a first one
    citations: tuple[dict[str, Any], ...] = ()  # a reply's, without the other server's row ids
    tool_steps: tuple[dict[str, Any], ...] = ()  # a reply's tool calls (ToolStep fields), finished ones


@dataclass(frozen=True)
class ImportedConversation:
    title: str
    system_prompt: str
    params: dict[str, Any]
    messages: list[ImportedMessage]  # parents before children
    current: int | None = None  # the index of the current branch's leaf; None: the last message
    folder: str = ""  # the name of the folder it was filed in; "": none


def parse_import(data: Any) -> ImportedConversation:
    """Check an uploaded export; InvalidImport says what is wrong.

    An export from before branches (no "parent_id" anywhere) is one branch, in its order.
    """
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InvalidImport(f'Not a SanjAI conversation export: expected "format": "{FORMAT}".')
    if data.get("version") not in READABLE_VERSIONS:
        raise InvalidImport(
            f"Unsupported export version {data.get('version')!r}; this SanjAI reads "
            f"{', '.join(map(str, sorted(READABLE_VERSIONS)))}."
        )
    raw_messages = data.get("messages")
    if not isinstance(raw_messages, list) or len(raw_messages) > MAX_IMPORT_MESSAGES:
        raise InvalidImport(f'"messages" must be a list of at most {MAX_IMPORT_MESSAGES} messages.')
    tree = any(isinstance(raw, dict) and "parent_id" in raw for raw in raw_messages)
    index_of: dict[Any, int] = {}  # an exported id -> its index
    messages = []
    for index, raw in enumerate(raw_messages):
        if (
            not isinstance(raw, dict)
            or raw.get("role") not in {"user", "assistant"}
            or not isinstance(raw.get("content"), str)
        ):
            raise InvalidImport(f"messages[{index}] needs a role of user or assistant and a text content.")
        parent = index - 1 if index else None  # one branch
        if tree:
            parent = _parent_index(index, raw, index_of)
            index_of[raw["id"]] = index
        reply = raw["role"] == "assistant"
        citations = _citations(index, raw.get("citations", [])) if reply else ()
        steps = _tool_steps(index, raw.get("tool_steps", [])) if reply else ()
        messages.append(
            ImportedMessage(
                role=raw["role"], content=raw["content"], parent=parent, citations=citations, tool_steps=steps
            )
        )
    title, system_prompt = data.get("title", ""), data.get("system_prompt", "")
    params = data.get("params", {})
    if not isinstance(title, str) or not isinstance(system_prompt, str) or not isinstance(params, dict):
        raise InvalidImport('"title" and "system_prompt" must be text and "params" an object.')
    folder = data.get("folder") or ""
    if not isinstance(folder, str):
        raise InvalidImport('"folder" must be the name of a folder, or null.')
    current = index_of.get(data.get("current_id")) if tree and _is_id(data.get("current_id")) else None
    return ImportedConversation(
        title=title[:200],
        system_prompt=system_prompt,
        params=params,
        messages=messages,
        current=current,
        folder=folder,
    )


def _citations(index: int, raw: Any) -> tuple[dict[str, Any], ...]:
    """A reply's citations as exported: the passages stay readable; the ids of the documents
    and chunks they came from are dropped (they name rows of the server that exported them)."""
    where = f"messages[{index}].citations"
    if not isinstance(raw, list) or len(raw) > MAX_IMPORT_CITATIONS:
        raise InvalidImport(f"{where} must be a list of at most {MAX_IMPORT_CITATIONS} citations.")
    kept = []
    for number, item in enumerate(raw):
        if not (
            isinstance(item, dict)
            and type(item.get("n")) is int
            and isinstance(item.get("document"), str)
            and isinstance(item.get("passage"), str)
            and len(item["passage"]) <= MAX_PASSAGE_CHARS
            and (item.get("page") is None or type(item["page"]) is int)
            and isinstance(item.get("heading", ""), str)
            and (item.get("score") is None or isinstance(item["score"], int | float))
        ):
            raise InvalidImport(
                f"{where}[{number}] needs a number n, a document name and a passage of at most "
                f"{MAX_PASSAGE_CHARS} characters (page a number or null, score a number or null)."
            )
        kept.append(
            {
                "n": item["n"],
                "document_id": None,
                "document": item["document"][:255],
                "page": item.get("page"),
                "heading": item.get("heading", "")[:500],
                "chunk_id": None,
                "passage": item["passage"],
                "score": item.get("score"),
                "cited": item.get("cited") is True,
            }
        )
    return tuple(kept)


def _tool_steps(index: int, raw: Any) -> tuple[dict[str, Any], ...]:
    """A reply's tool calls as exported, finished ones only: they are a record, never run again."""
    where = f"messages[{index}].tool_steps"
    if not isinstance(raw, list) or len(raw) > MAX_IMPORT_TOOL_STEPS:
        raise InvalidImport(f"{where} must be a list of at most {MAX_IMPORT_TOOL_STEPS} tool calls.")
    kept = []
    for number, item in enumerate(raw, start=1):
        texts = ("server", "tool", "result", "error")
        if not (
            isinstance(item, dict)
            and all(isinstance(item.get(key, ""), str) for key in texts)
            and item.get("tool")
            and isinstance(item.get("arguments", {}), dict)
            and item.get("status") in FINISHED_STEPS
            and item.get("approval", "auto") in McpTool.Approval.values
            and all(len(item.get(key, "")) <= MAX_TOOL_TEXT_CHARS for key in ("result", "error"))
            and all(_time_or_none(item.get(key)) for key in ("decided_at", "started_at", "finished_at"))
        ):
            raise InvalidImport(
                f"{where}[{number - 1}] needs a tool name, arguments as an object, a status of done, "
                f"error or refused, an approval of ask or auto, texts of at most {MAX_TOOL_TEXT_CHARS} "
                "characters and ISO 8601 times (or null)."
            )
        kept.append(
            {
                "round": item["round"] if type(item.get("round")) is int and item["round"] > 0 else 1,
                "ordinal": number,
                "server_name": item.get("server", "")[:64],
                "tool": item["tool"][:200],
                "called_as": str(item.get("called_as") or item["tool"])[:270],
                "arguments": item.get("arguments", {}),
                "approval": item.get("approval", "auto"),
                "status": item["status"],
                "result": item.get("result", ""),
                "is_error": item.get("is_error") is True,
                "truncated": item.get("truncated") is True,
                "error": item.get("error", ""),
                **{key: _time(item.get(key)) for key in ("decided_at", "started_at", "finished_at")},
            }
        )
    return tuple(kept)


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def _time_or_none(value: Any) -> bool:
    if value is None:
        return True
    try:
        return isinstance(value, str) and datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


def _is_id(value: Any) -> bool:
    return isinstance(value, int | str) and not isinstance(value, bool)


def _parent_index(index: int, raw: dict[str, Any], index_of: dict[Any, int]) -> int | None:
    message_id, parent_id = raw.get("id"), raw.get("parent_id")
    if not _is_id(message_id) or message_id in index_of:
        raise InvalidImport(f'messages[{index}] needs an "id" of its own (a number or text).')
    if parent_id is None:
        return None
    if not _is_id(parent_id) or parent_id not in index_of:
        raise InvalidImport(f'messages[{index}]: "parent_id" must be null or a message listed before it.')
    return index_of[parent_id]
