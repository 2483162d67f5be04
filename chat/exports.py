"""Conversations as portable files: JSON (re-importable) and Markdown (for reading)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chat.models import Conversation, Message

FORMAT = "sanjai.conversation"
VERSION = 1
MAX_IMPORT_MESSAGES = 10_000


class InvalidImport(ValueError):
    pass


def conversation_to_dict(conversation: Conversation, messages: list[Message]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "title": conversation.title,
        "system_prompt": conversation.system_prompt,
        "params": conversation.params,
        "created": conversation.created.isoformat(),
        "updated": conversation.updated.isoformat(),
        "messages": [
            {
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
            }
            for m in messages
        ],
    }


def conversation_to_markdown(conversation: Conversation, messages: list[Message]) -> str:
    lines = [f"# {conversation.title or 'Conversation'}", ""]
    lines.append(f"_Started {conversation.created:%Y-%m-%d %H:%M} UTC_")
    lines.append("")
    if conversation.system_prompt:
        lines += ["**System prompt:**", "", f"> {conversation.system_prompt}", ""]
    for message in messages:
        speaker = {"user": "You", "assistant": "SanjAI", "system": "System"}[message.role]
        note = "" if message.status == Message.Status.DONE else f" _({message.status})_"
        lines += [f"## {speaker}{note}", "", message.content or message.error or "", ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class ImportedMessage:
    role: str
    content: str


@dataclass(frozen=True)
class ImportedConversation:
    title: str
    system_prompt: str
    params: dict[str, Any]
    messages: list[ImportedMessage]


def parse_import(data: Any) -> ImportedConversation:
    """Check an uploaded export; InvalidImport says what is wrong."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InvalidImport(f'Not a SanjAI conversation export: expected "format": "{FORMAT}".')
    if data.get("version") != VERSION:
        raise InvalidImport(
            f"Unsupported export version {data.get('version')!r}; this SanjAI reads {VERSION}."
        )
    raw_messages = data.get("messages")
    if not isinstance(raw_messages, list) or len(raw_messages) > MAX_IMPORT_MESSAGES:
        raise InvalidImport(f'"messages" must be a list of at most {MAX_IMPORT_MESSAGES} messages.')
    messages = []
    for index, raw in enumerate(raw_messages):
        if (
            not isinstance(raw, dict)
            or raw.get("role") not in {"user", "assistant"}
            or not isinstance(raw.get("content"), str)
        ):
            raise InvalidImport(f"messages[{index}] needs a role of user or assistant and a text content.")
        messages.append(ImportedMessage(role=raw["role"], content=raw["content"]))
    title, system_prompt = data.get("title", ""), data.get("system_prompt", "")
    params = data.get("params", {})
    if not isinstance(title, str) or not isinstance(system_prompt, str) or not isinstance(params, dict):
        raise InvalidImport('"title" and "system_prompt" must be text and "params" an object.')
    return ImportedConversation(
        title=title[:200], system_prompt=system_prompt, params=params, messages=messages
    )
