"""Documents attached to conversations, citations on replies, and the lexical index.

The index lives in the database itself (chat.documents.search): an FTS5 table
kept in step with chat_documentchunk by triggers on SQLite, a generated
tsvector column with a GIN index on PostgreSQL. Both stem English words
(porter / the "english" configuration) and ignore accents and case.
"""

import importlib

from django.db import migrations, models

# Adding Message.citations rebuilds chat_message on SQLite, which drops the
# message search index's triggers (see migration 0011): they are made again.
_MESSAGE_SEARCH = importlib.import_module("chat.migrations.0011_message_search")
MESSAGE_TRIGGERS = [
    "DROP TRIGGER IF EXISTS chat_message_fts_insert",
    "DROP TRIGGER IF EXISTS chat_message_fts_delete",
    "DROP TRIGGER IF EXISTS chat_message_fts_update",
    *(sql for sql in _MESSAGE_SEARCH.SQLITE_FORWARDS if sql.lstrip().startswith("CREATE TRIGGER")),
]

SQLITE = [
    "CREATE VIRTUAL TABLE chat_documentchunk_fts USING fts5("
    "text, heading, content='chat_documentchunk', content_rowid='id', "
    "tokenize='porter unicode61 remove_diacritics 2')",
    "CREATE TRIGGER chat_documentchunk_fts_insert AFTER INSERT ON chat_documentchunk BEGIN "
    "INSERT INTO chat_documentchunk_fts(rowid, text, heading) VALUES (new.id, new.text, new.heading); END",
    "CREATE TRIGGER chat_documentchunk_fts_delete AFTER DELETE ON chat_documentchunk BEGIN "
    "INSERT INTO chat_documentchunk_fts(chat_documentchunk_fts, rowid, text, heading) "
    "VALUES ('delete', old.id, old.text, old.heading); END",
    "CREATE TRIGGER chat_documentchunk_fts_update AFTER UPDATE ON chat_documentchunk BEGIN "
    "INSERT INTO chat_documentchunk_fts(chat_documentchunk_fts, rowid, text, heading) "
    "VALUES ('delete', old.id, old.text, old.heading); "
    "INSERT INTO chat_documentchunk_fts(rowid, text, heading) VALUES (new.id, new.text, new.heading); END",
    # Chunks written before the index existed.
    "INSERT INTO chat_documentchunk_fts(chat_documentchunk_fts) VALUES ('rebuild')",
]
SQLITE_UNDO = [
    "DROP TRIGGER IF EXISTS chat_documentchunk_fts_insert",
    "DROP TRIGGER IF EXISTS chat_documentchunk_fts_delete",
    "DROP TRIGGER IF EXISTS chat_documentchunk_fts_update",
    "DROP TABLE IF EXISTS chat_documentchunk_fts",
]
POSTGRES = [
    "ALTER TABLE chat_documentchunk ADD COLUMN search tsvector GENERATED ALWAYS AS "
    "(setweight(to_tsvector('english', heading), 'B') || to_tsvector('english', text)) STORED",
    "CREATE INDEX chat_documentchunk_search ON chat_documentchunk USING gin (search)",
]
POSTGRES_UNDO = [
    "DROP INDEX IF EXISTS chat_documentchunk_search",
    "ALTER TABLE chat_documentchunk DROP COLUMN IF EXISTS search",
]


def _run(statements: dict[str, list[str]]):
    def run(apps, schema_editor) -> None:
        for sql in statements.get(schema_editor.connection.vendor, []):
            schema_editor.execute(sql)

    return run


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0018_oidc_identity"),
    ]

    operations = [
        migrations.AddField(
            model_name="conversation",
            name="documents",
            field=models.ManyToManyField(blank=True, related_name="conversations", to="chat.document"),
        ),
        migrations.AddField(
            model_name="message",
            name="citations",
            field=models.JSONField(blank=True, default=list),
        ),
        migrations.RunPython(
            _run({"sqlite": MESSAGE_TRIGGERS}), _run({"sqlite": MESSAGE_TRIGGERS})
        ),
        migrations.RunPython(
            _run({"sqlite": SQLITE, "postgresql": POSTGRES}),
            _run({"sqlite": SQLITE_UNDO, "postgresql": POSTGRES_UNDO}),
        ),
    ]
