"""Search over a user's document chunks: lexical in the database, dense when configured, fused.

Lexical search needs no model and no new server. On SQLite it is an FTS5
table kept in step with chat_documentchunk by triggers, ranked by BM25; on
PostgreSQL a generated tsvector column under a GIN index, ranked by
ts_rank_cd (migration 0019_document_search). A question is matched word by
word (any word may match: a question's wording seldom repeats a passage's),
with English stemming, so "costs" finds "cost".

With an embedding model configured (chat.documents.dense), its ranking and
the lexical one are fused (chat.documents.ranking.fuse).

Every query is filtered by the owner as well as by the document ids the
caller gives: retrieval never crosses users, whatever ids it is handed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection

from django.db import connection

from chat.documents import dense
from chat.documents.ranking import Hit, fuse
from inference.embedding import EmbeddingError

logger = logging.getLogger(__name__)

# Common English words: matched by nearly every chunk, they only slow FTS5
# down (PostgreSQL's "english" configuration drops them itself).
STOP_WORDS = frozenset(
    """a an and are as at be but by can do does for from had has have how i if in is it its me my no not
    of on or our so than that the their them then there these they this to was we were what when where
    which who why will with would you your""".split()  # noqa: SIM905 (a list of 60 strings reads worse)
)
MAX_QUERY_WORDS = 64  # a pasted page is searched by its first words, not all of them
WORD = re.compile(r"\w+")


def query_words(query: str) -> list[str]:
    """The distinct words of `query` worth matching, lower-cased, in order."""
    words: list[str] = []
    for word in WORD.findall(query.lower()):
        if word not in STOP_WORDS and word not in words:
            words.append(word)
    return words[:MAX_QUERY_WORDS]


def lexical_search(*, user_id: int, document_ids: Collection[int], query: str, k: int) -> list[Hit]:
    """The `k` chunks of the user's `document_ids` that best match `query`'s words, best first."""
    words = query_words(query)
    ids = sorted({int(i) for i in document_ids})
    if not words or not ids or k < 1:
        return []
    # Only placeholders are formatted into the SQL; every value is a parameter.
    owned = f"d.owner_id = %s AND c.document_id IN ({', '.join(['%s'] * len(ids))})"
    if connection.vendor == "postgresql":
        sql = (
            "SELECT c.id, ts_rank_cd(c.search, q) AS rank "  # noqa: S608
            "FROM chat_documentchunk c JOIN chat_document d ON d.id = c.document_id, "
            f"to_tsquery('english', %s) q WHERE c.search @@ q AND {owned} "
            "ORDER BY rank DESC, c.id LIMIT %s"
        )
        params: list[str | int] = [" | ".join(words), user_id, *ids, k]
    else:
        # bm25() is lower for better matches; the heading counts half as much as the text.
        sql = (
            "SELECT c.id, -bm25(chat_documentchunk_fts, 1.0, 0.5) AS rank "  # noqa: S608
            "FROM chat_documentchunk_fts JOIN chat_documentchunk c ON c.id = chat_documentchunk_fts.rowid "
            "JOIN chat_document d ON d.id = c.document_id "
            f"WHERE chat_documentchunk_fts MATCH %s AND {owned} "
            "ORDER BY rank DESC, c.id LIMIT %s"
        )
        params = [" OR ".join(f'"{word}"' for word in words), user_id, *ids, k]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [Hit(chunk_id=row[0], score=float(row[1])) for row in cursor.fetchall()]


def search(*, user_id: int, document_ids: Collection[int], query: str, k: int) -> list[Hit]:
    """The `k` best chunks for `query`: lexical, fused with dense search when an embedding model is set.

    An embedder that fails (a remote one that is down) leaves the lexical ranking alone."""
    lexical = lexical_search(user_id=user_id, document_ids=document_ids, query=query, k=k)
    if not dense.enabled():
        return lexical
    try:
        vectors = dense.dense_search(user_id=user_id, document_ids=document_ids, query=query, k=k)
    except EmbeddingError as exc:
        logger.warning("dense search unavailable (%s); answering from the lexical ranking", exc)
        return lexical
    return fuse([lexical, vectors], k=k)
