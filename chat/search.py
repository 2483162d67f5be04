"""Full-text search over the user's own messages, in the database's own engine (a selector).

SQLite: the FTS5 table `chat_message_fts`, ranked by bm25, snippets by `snippet()`.
PostgreSQL: the generated `search_vector` column, ranked by ts_rank, snippets by
ts_headline. Both are made and kept in sync by migration 0011; only finished
messages are in them (a reply being written is not, until it ends).

A query is reduced to its words (letters and digits) before it reaches either
engine: every word must match, the last one also as a prefix (results while
typing). No operator syntax passes through, so `"`, `AND(` or `NEAR` are words or
nothing, never an error. Each search costs at most three queries and returns at
most MAX_LIMIT hits.

The sidebar's filter stays a substring match (chat.selectors): it narrows the list
of conversations by title as you type, part-words included, which this does not.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth.models import User
from django.contrib.postgres.search import SearchHeadline, SearchQuery, SearchRank, SearchVectorField
from django.db import connection
from django.db.models import F, Value
from django.db.models.expressions import RawSQL
from django.db.models.functions import Replace
from django.urls import reverse

from chat.models import Message

MAX_QUERY_CHARS = 200
MAX_TERMS = 10
MAX_LIMIT = 50
MAX_OFFSET = 500  # deeper than this, a better query finds it sooner than paging
MIN_PREFIX_CHARS = 3  # a one- or two-letter prefix matches nearly everything
SNIPPET_WORDS = 16
UNINDEXED_STATUSES = (Message.Status.PENDING, Message.Status.STREAMING)  # as in migration 0011
POSTGRES_CONFIG = "english"  # as in migration 0011

# Marks around matched words that no text should contain (Unicode private use):
# the engines insert them, and `_snippet_html` turns them into <mark> after escaping.
START, STOP = "\ue000", "\ue001"
# ts_headline drops whatever its parser reads as an HTML tag ("<b>", "<div>"): the
# text goes in with < and > swapped for these, and comes back with them restored.
LT, GT = "\ue002", "\ue003"
WORD = re.compile(r"[^\W_]+")


class InvalidSearch(ValueError):
    """A query that cannot be searched; the message says what would be."""


@dataclass(frozen=True)
class SearchHit:
    message_id: int
    conversation_id: int
    title: str
    role: str
    snippet: str  # HTML: the text escaped, matched words in <mark>
    created: datetime
    archived: bool

    @property
    def url(self) -> str:
        """The conversation page, scrolled to the message (static/js/search.js)."""
        page = reverse("conversation", kwargs={"conversation_id": self.conversation_id})
        return f"{page}#message-{self.message_id}"


@dataclass(frozen=True)
class SearchPage:
    hits: list[SearchHit]
    next_offset: int | None  # the offset of the next page; None: this is the last


def search_terms(query: str) -> list[str]:
    """The words searched for; InvalidSearch if there are none or too many."""
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidSearch(f"q: at most {MAX_QUERY_CHARS} characters.")
    terms = [term.lower() for term in WORD.findall(query)]
    if not terms:
        raise InvalidSearch("q: type at least one word (letters or digits).")
    if len(terms) > MAX_TERMS:
        raise InvalidSearch(f"q: at most {MAX_TERMS} words.")
    return terms


def message_search(*, user: User, query: str, limit: int = 20, offset: int = 0) -> SearchPage:
    """The user's messages matching `query`, best first, archived conversations included.

    Raises InvalidSearch for a query with no words, and for a limit or offset
    out of bounds.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidSearch(f"limit: from 1 to {MAX_LIMIT}.")
    if not 0 <= offset <= MAX_OFFSET:
        raise InvalidSearch(f"offset: from 0 to {MAX_OFFSET}.")
    terms = search_terms(query)
    search = _postgres_page if connection.vendor == "postgresql" else _sqlite_page
    ranked = search(user, terms, limit + 1, offset)
    hits = _hits(user, ranked[:limit])
    return SearchPage(hits=hits, next_offset=offset + limit if len(ranked) > limit else None)


def _prefixed(terms: list[str]) -> list[tuple[str, bool]]:
    last = len(terms) - 1
    return [(term, i == last and len(term) >= MIN_PREFIX_CHARS) for i, term in enumerate(terms)]


# --- SQLite: FTS5 --------------------------------------------------------------------


def fts5_query(terms: list[str]) -> str:
    """An FTS5 MATCH expression: each word a quoted string (so never an operator), all required."""
    return " ".join(
        '"' + term.replace('"', '""') + '"' + ("*" if prefix else "") for term, prefix in _prefixed(terms)
    )


def _sqlite_page(user: User, terms: list[str], limit: int, offset: int) -> list[tuple[int, str]]:
    match = fts5_query(terms)
    with connection.cursor() as cursor:
        # The ranking first, without snippets: SQLite would build one for every
        # match before sorting. The owner's filter is in the same query, so
        # nobody's messages are ranked into another user's page.
        cursor.execute(
            "SELECT m.id FROM chat_message_fts"
            " JOIN chat_message m ON m.id = chat_message_fts.rowid"
            " JOIN chat_conversation c ON c.id = m.conversation_id"
            " WHERE chat_message_fts MATCH %s AND c.owner_id = %s"
            " ORDER BY bm25(chat_message_fts), m.id DESC LIMIT %s OFFSET %s",
            [match, user.pk, limit, offset],
        )
        ids = [row[0] for row in cursor.fetchall()]
        if not ids:
            return []
        marks = ", ".join(["%s"] * len(ids))
        cursor.execute(
            f"SELECT rowid, snippet(chat_message_fts, 0, %s, %s, '…', {SNIPPET_WORDS})"  # noqa: S608 (only placeholders)
            f" FROM chat_message_fts WHERE chat_message_fts MATCH %s AND rowid IN ({marks})",
            [START, STOP, match, *ids],
        )
        snippets = dict(cursor.fetchall())
    return [(pk, snippets.get(pk, "")) for pk in ids]


# --- PostgreSQL: tsvector -------------------------------------------------------------


def tsquery(terms: list[str]) -> str:
    """A to_tsquery expression: each word quoted as a lexeme, all required (&)."""
    return " & ".join(f"'{term}'" + (":*" if prefix else "") for term, prefix in _prefixed(terms))


def _postgres_page(user: User, terms: list[str], limit: int, offset: int) -> list[tuple[int, str]]:
    query = SearchQuery(tsquery(terms), search_type="raw", config=POSTGRES_CONFIG)
    # The column migration 0011 adds; the model does not declare it (SQLite has none).
    vector = RawSQL('"chat_message"."search_vector"', [], output_field=SearchVectorField())
    ranked = list(
        Message.objects.filter(conversation__owner=user)
        .exclude(status__in=UNINDEXED_STATUSES)
        .annotate(document=vector)
        .filter(document=query)
        .annotate(rank=SearchRank(vector, query))
        .order_by("-rank", "-id")
        .values_list("id", flat=True)[offset : offset + limit]
    )
    if not ranked:
        return []
    # Headlines for this page only: ts_headline re-reads the whole text of each.
    headline = SearchHeadline(
        Replace(Replace(F("content"), Value("<"), Value(LT)), Value(">"), Value(GT)),
        query,
        config=POSTGRES_CONFIG,
        start_sel=START,
        stop_sel=STOP,
        max_words=SNIPPET_WORDS + 4,
        min_words=SNIPPET_WORDS // 2,
    )
    snippets = dict(
        Message.objects.filter(pk__in=ranked).annotate(snippet=headline).values_list("id", "snippet")
    )
    return [(pk, snippets.get(pk, "")) for pk in ranked]


# --- Both ---------------------------------------------------------------------------


def _hits(user: User, ranked: list[tuple[int, str]]) -> list[SearchHit]:
    rows = Message.objects.filter(pk__in=[pk for pk, _ in ranked], conversation__owner=user).select_related(
        "conversation"
    )
    messages = {message.pk: message for message in rows}
    hits = []
    for pk, snippet in ranked:
        message = messages.get(pk)
        if message is None:  # deleted between the two queries
            continue
        hits.append(
            SearchHit(
                message_id=pk,
                conversation_id=message.conversation_id,
                title=message.conversation.title,
                role=message.role,
                snippet=snippet_html(snippet),
                created=message.created,
                archived=message.conversation.archived_at is not None,
            )
        )
    return hits


def snippet_html(text: str) -> str:
    """The engine's snippet as HTML: everything escaped, marked words in <mark>.

    Only the engine's own marks make tags, paired; a stray mark character in a
    message's text opens nothing it does not close.
    """
    out: list[str] = []
    marked = False
    for part in re.split(f"([{START}{STOP}])", " ".join(text.split())):
        if part == START and not marked:
            out.append("<mark>")
            marked = True
        elif part == STOP and marked:
            out.append("</mark>")
            marked = False
        elif part not in (START, STOP):
            out.append(html.escape(part.replace(LT, "<").replace(GT, ">")))
    if marked:
        out.append("</mark>")
    return "".join(out)
