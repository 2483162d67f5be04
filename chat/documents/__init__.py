"""Documents a user uploads to chat with: reading each format into text, and chunking it.

Plain Python: no models and no settings here. The caller passes the limits in
(`ParseLimits`), so the same code runs in a web process, a worker or a child
process (`parse_isolated`).
"""

from __future__ import annotations

from chat.documents.chunking import Chunk, chunk
from chat.documents.parsing import (
    ParsedDocument,
    ParseLimits,
    Section,
    UnreadableDocument,
    clean_filename,
    parse,
    parse_isolated,
)

__all__ = [
    "Chunk",
    "ParseLimits",
    "ParsedDocument",
    "Section",
    "UnreadableDocument",
    "chunk",
    "clean_filename",
    "parse",
    "parse_isolated",
]
