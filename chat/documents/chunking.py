"""Split a parsed document into overlapping chunks for retrieval.

Each section (a PDF page, a slide, a sheet, the text under one heading) is
chunked on its own, so a chunk never spans two pages and always carries the
page and heading a citation needs. Within a section, text is cut at paragraph
breaks first, then sentence ends, then spaces; a word longer than a chunk is
the only thing ever cut mid-way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from chat.documents.parsing import ParsedDocument

# Latin and CJK sentence ends (the full-width forms written as escapes).
SENTENCE_END = re.compile(r"(?<=[.!?\u3002\uff01\uff1f])\s+")


@dataclass(frozen=True)
class Chunk:
    ordinal: int  # 0-based, in document order
    text: str
    page: int | None
    heading: str


def chunk(doc: ParsedDocument, *, target_chars: int = 1200, overlap_chars: int = 150) -> list[Chunk]:
    """Chunks of at most `target_chars` characters (plus up to `overlap_chars` carried over)."""
    if target_chars < 1 or not 0 <= overlap_chars < target_chars:
        raise ValueError("target_chars must be positive and overlap_chars in [0, target_chars)")
    chunks: list[Chunk] = []
    for section in doc.sections:
        for text in _pack(_pieces(section.text, target_chars), target_chars, overlap_chars):
            chunks.append(Chunk(ordinal=len(chunks), text=text, page=section.page, heading=section.heading))
    return chunks


def _pieces(text: str, limit: int) -> list[str]:
    """Paragraphs, each no longer than `limit`: long ones cut into sentences, then words."""
    pieces: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        if len(paragraph) <= limit:
            pieces.append(paragraph)
            continue
        for sentence in SENTENCE_END.split(paragraph):
            pieces.extend([sentence] if len(sentence) <= limit else _words(sentence, limit))
    return pieces


def _words(text: str, limit: int) -> list[str]:
    out: list[str] = []
    current = ""
    for word in text.split(" "):
        while len(word) > limit:  # no space to cut at: a hash, a URL, a base64 blob
            if current:
                out.append(current)
                current = ""
            out.append(word[:limit])
            word = word[limit:]
        candidate = f"{current} {word}" if current else word
        if len(candidate) <= limit:
            current = candidate
        else:
            out.append(current)
            current = word
    if current:
        out.append(current)
    return out


def _pack(pieces: list[str], limit: int, overlap: int) -> list[str]:
    """Greedily join pieces up to `limit`; each chunk after the first opens with the last
    `overlap` characters of the one before (from a word start), so a sentence cut
    at a boundary is still found whole in one of the two."""
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        separator = "\n\n" if current else ""
        if current and len(current) + len(separator) + len(piece) > limit:
            chunks.append(current)
            current = _tail(current, overlap)
            separator = " " if current else ""
        current = f"{current}{separator}{piece}"
    if current:
        chunks.append(current)
    return chunks


def _tail(text: str, overlap: int) -> str:
    if overlap == 0:
        return ""
    tail = text[-overlap:]
    space = tail.find(" ")
    # Start at a word: drop the partial first word unless the tail is one word.
    return tail[space + 1 :].lstrip() if 0 <= space < len(tail) - 1 else tail.lstrip()
