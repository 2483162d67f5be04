"""The full-text index behind chat/search.py, in each database's own engine.

SQLite: an FTS5 external-content table over chat_message (the text is not stored
twice), kept in sync by triggers. PostgreSQL: a generated tsvector column with a
GIN index (stored, so ranking reads it rather than re-parsing every match).

Only finished messages are indexed (every status but pending and streaming): a
reply being written is saved about once a second, and re-indexing each save would
cost more than it finds. The triggers' conditions are written so that what a
'delete' removes is exactly what was inserted, as FTS5 external content needs.

A warning for later migrations: Django alters a SQLite table by rebuilding it,
which drops its triggers; a migration that alters chat_message must create them
again (tests/test_search.py fails if they are gone). On PostgreSQL, changing the
type of chat_message.content needs the generated column dropped first.
"""

from django.db import migrations

UNINDEXED = "('pending', 'streaming')"  # chat.search.UNINDEXED_STATUSES

SQLITE_FORWARDS = [
    "CREATE VIRTUAL TABLE chat_message_fts USING fts5("
    " content, content='chat_message', content_rowid='id',"
    " tokenize='porter unicode61 remove_diacritics 2')",
    f"INSERT INTO chat_message_fts(rowid, content)"
    f" SELECT id, content FROM chat_message WHERE status NOT IN {UNINDEXED}",
    f"""CREATE TRIGGER chat_message_fts_insert AFTER INSERT ON chat_message
    WHEN new.status NOT IN {UNINDEXED} BEGIN
      INSERT INTO chat_message_fts(rowid, content) VALUES (new.id, new.content);
    END""",
    f"""CREATE TRIGGER chat_message_fts_delete AFTER DELETE ON chat_message
    WHEN old.status NOT IN {UNINDEXED} BEGIN
      INSERT INTO chat_message_fts(chat_message_fts, rowid, content) VALUES ('delete', old.id, old.content);
    END""",
    # One trigger, two statements in order: out with the old text, in with the new.
    f"""CREATE TRIGGER chat_message_fts_update AFTER UPDATE OF content, status ON chat_message BEGIN
      INSERT INTO chat_message_fts(chat_message_fts, rowid, content)
        SELECT 'delete', old.id, old.content
        WHERE old.status NOT IN {UNINDEXED}
          AND (new.status IN {UNINDEXED} OR old.content IS NOT new.content);
      INSERT INTO chat_message_fts(rowid, content)
        SELECT new.id, new.content
        WHERE new.status NOT IN {UNINDEXED}
          AND (old.status IN {UNINDEXED} OR old.content IS NOT new.content);
    END""",
]

SQLITE_BACKWARDS = [
    "DROP TRIGGER IF EXISTS chat_message_fts_update",
    "DROP TRIGGER IF EXISTS chat_message_fts_delete",
    "DROP TRIGGER IF EXISTS chat_message_fts_insert",
    "DROP TABLE IF EXISTS chat_message_fts",
]

# 'english': chat.search.POSTGRES_CONFIG (stemming like SQLite's porter tokenizer).
POSTGRES_FORWARDS = [
    "ALTER TABLE chat_message ADD COLUMN search_vector tsvector"
    " GENERATED ALWAYS AS (to_tsvector('english'::regconfig, content)) STORED",
    "CREATE INDEX chat_message_search ON chat_message USING gin (search_vector)",
]

POSTGRES_BACKWARDS = [
    "DROP INDEX IF EXISTS chat_message_search",
    "ALTER TABLE chat_message DROP COLUMN IF EXISTS search_vector",
]


class VendorSQL(migrations.RunSQL):
    """RunSQL on one database vendor only; a no-op on the others."""

    def __init__(self, vendor, sql, reverse_sql):
        super().__init__(sql, reverse_sql)
        self.vendor = vendor

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == self.vendor:
            super().database_forwards(app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == self.vendor:
            super().database_backwards(app_label, schema_editor, from_state, to_state)


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0010_share"),
    ]

    operations = [
        VendorSQL("sqlite", SQLITE_FORWARDS, SQLITE_BACKWARDS),
        VendorSQL("postgresql", POSTGRES_FORWARDS, POSTGRES_BACKWARDS),
    ]
