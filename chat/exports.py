"""Conversations as portable files: JSON (re-importable) and Markdown (for reading)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chat.branches import Tree
from chat.models import Conversation, Message

FORMAT = "sanjai.conversation"
# 2: messages carry "id" and "parent_id" (the tree of branches) and the export its
# "current_id" (the leaf of the branch being viewed). 1 (before branches): one line.
VERSION = 2
READABLE_VERSIONS = {1, 2}
MAX_IMPORT_MESSAGES = 10_000
MAX_IMPORT_CITATIONS = 50  # per reply (DOCUMENT_PASSAGES, or a small document given whole)
MAX_PASSAGE_CHARS = 10_000  # a chunk is about 1,350 at most


class InvalidImport(ValueError):
    pass


def import_too_large(max_bytes: int) -> str:
    return f"The file is larger than {max_bytes / 1_000_000:g} MB, the most an import may be."


def conversation_to_dict(conversation: Conversation, messages: list[Message]) -> dict[str, Any]:
    """Every message of every branch, parents before children, each naming its parent."""
    messages = sorted(messages, key=lambda m: m.pk)
    tree = Tree.of((m.pk, m.parent_id) for m in messages)
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
            }
            for m in messages
        ],
    }


def conversation_to_markdown(conversation: Conversation, messages: list[Message]) -> str:
    """The branch being viewed, then every other branch from where it leaves what came before."""
    by_id = {m.pk: m for m in messages}
    tree = Tree.of((m.pk, m.parent_id) for m in messages)
    siblings = tree.children()
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


def _quote(message: Message, length: int = 60) -> str:
    text = " ".join((message.content or message.error).split())
    return text if len(text) <= length else text[: length - 1] + "…"


@dataclass(frozen=True)
class ImportedMessage:
    role: str
    content: str
    parent: int | None = None  # the index of the message it follows in the import; None: a first one
    citations: tuple[dict[str, Any], ...] = ()  # a reply's, without the other server's row ids


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
        citations = _citations(index, raw.get("citations", [])) if raw["role"] == "assistant" else ()
        messages.append(
            ImportedMessage(role=raw["role"], content=raw["content"], parent=parent, citations=citations)
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
