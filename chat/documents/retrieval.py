"""The passages a reply is given from its conversation's documents, and how it cites them.

Before a reply is generated, its question is searched over the documents
attached to the conversation that are ready (chat.documents.search). The
best passages, within DOCUMENT_CONTEXT_TOKENS, go into the question's turn,
each under a numbered marker the model is asked to cite as [n]. When all of
the attached text fits that budget, it is given whole instead, in document
order (as LM Studio's "full context" does), and nothing is left to a search.

The passages given are stored on the reply as its citations, each marked
`cited` once the reply's text names its marker: a reviewer can then tell a
passage the search missed from one the model ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from django.conf import settings
from django.db.models import Sum
from django.db.models.functions import Length

from chat.documents.search import search
from chat.models import Conversation, Document, DocumentChunk

# Tokens are counted as characters / 4, the usual rate for English text; the
# budget is a bound on the prompt the passages add, not an exact count.
CHARS_PER_TOKEN = 4
MARKER = re.compile(r"\[(\d{1,3})\]")
# Short: on a small model's context every token of it is one less for the passages.
INSTRUCTIONS = (
    "Answer from these passages of the user's documents, citing them like [1]; "
    "if they lack the answer, say so."
)


@dataclass(frozen=True)
class Citation:
    n: int  # its marker: [n]
    document_id: int | None  # None in an imported conversation (chat.exports)
    document: str  # the document's name when it was retrieved
    page: int | None
    heading: str
    chunk_id: int | None
    passage: str
    score: float | None  # the search's; None when the documents were given whole
    cited: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ready_documents(*, conversation: Conversation) -> list[Document]:
    return list(conversation.documents.filter(owner_id=conversation.owner_id, status=Document.Status.READY))


def passages_for(
    *, conversation: Conversation, question: str, fits: Callable[[list[Citation]], bool] = lambda given: True
) -> list[Citation]:
    """The passages of the conversation's ready documents to give a reply to `question`.

    `fits` says whether a prompt with these passages still fits the model's
    context (the worker knows; the budget is only an estimate): the whole text
    is given only if it fits, and the weakest passages are left out until the rest do.
    """
    documents = {document.pk: document for document in ready_documents(conversation=conversation)}
    if not documents:
        return []
    budget = settings.DOCUMENT_CONTEXT_TOKENS * CHARS_PER_TOKEN
    chunks = DocumentChunk.objects.filter(document_id__in=documents)
    whole = chunks.aggregate(chars=Sum(Length("text")))["chars"] or 0
    if whole <= budget:
        ordered = list(chunks.order_by("document__created", "document_id", "ordinal"))
        citations = _citations(documents, ordered, {chunk.pk: None for chunk in ordered}, budget)
        if fits(citations):
            return citations
    hits = search(
        user_id=conversation.owner_id,
        document_ids=list(documents),
        query=question,
        k=settings.DOCUMENT_PASSAGES,
    )
    found = chunks.in_bulk([hit.chunk_id for hit in hits])
    best = [found[hit.chunk_id] for hit in hits if hit.chunk_id in found]
    citations = _citations(documents, best, {hit.chunk_id: round(hit.score, 6) for hit in hits}, budget)
    while citations and not fits(citations):
        citations.pop()
    return citations


def _citations(
    documents: dict[int, Document], given: list[DocumentChunk], scores: dict[int, float | None], budget: int
) -> list[Citation]:
    """The chunks as numbered citations, as many as fit `budget` characters."""
    citations: list[Citation] = []
    used = 0
    for chunk in given:
        if used + len(chunk.text) > budget:
            break
        used += len(chunk.text)
        citations.append(
            Citation(
                n=len(citations) + 1,
                document_id=chunk.document_id,
                document=documents[chunk.document_id].name,
                page=chunk.page,
                heading=chunk.heading,
                chunk_id=chunk.pk,
                passage=chunk.text,
                score=scores[chunk.pk],
            )
        )
    return citations


def _source(citation: Citation) -> str:
    where = [citation.document]
    if citation.page is not None:
        where.append(f"page {citation.page}")
    if citation.heading:
        where.append(citation.heading)
    return ", ".join(where)


def question_with_passages(question: str, citations: list[Citation]) -> str:
    """The question's turn as the model sees it: the instructions, the passages, then the question."""
    if not citations:
        return question
    passages = "\n\n".join(f"[{c.n}] ({_source(c)})\n{c.passage}" for c in citations)
    return f"{INSTRUCTIONS}\n\n{passages}\n\nQuestion: {question}"


def mark_cited(citations: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """The stored citations with `cited` set for each marker the reply's text names."""
    named = {int(number) for number in MARKER.findall(text)}
    return [{**citation, "cited": citation["n"] in named} for citation in citations]
