"""Versioned schema migrations of the mail store (SQLite).

Each migration is a list of statements run in one transaction together with the bump of
``schema_version``; a store opened by an older release is brought forward step by step and
a store written by a *newer* release is refused rather than damaged.
"""

from __future__ import annotations

__all__ = ["MIGRATIONS", "SCHEMA_VERSION"]

MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE mailboxes (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            special_use TEXT,
            subscribed INTEGER NOT NULL DEFAULT 1,
            uidvalidity INTEGER NOT NULL UNIQUE,
            uidnext INTEGER NOT NULL DEFAULT 1,
            modseq INTEGER NOT NULL DEFAULT 1,
            recent_uid INTEGER NOT NULL DEFAULT 0
        )""",
        # Every UIDVALIDITY ever handed out, so that a deleted and re-created mailbox can
        # never present an old value again (RFC 3501 section 2.3.1.1).
        "CREATE TABLE used_uidvalidity (value INTEGER PRIMARY KEY)",
        """CREATE TABLE bodies (
            id INTEGER PRIMARY KEY,
            raw BLOB NOT NULL,
            size INTEGER NOT NULL,
            header_size INTEGER NOT NULL,
            envelope BLOB NOT NULL,
            bodystructure BLOB NOT NULL,
            sent_date REAL
        )""",
        """CREATE TABLE messages (
            mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
            uid INTEGER NOT NULL,
            body_id INTEGER NOT NULL REFERENCES bodies(id),
            flags TEXT NOT NULL DEFAULT '',
            internal_date REAL NOT NULL,
            internal_tz INTEGER NOT NULL,
            modseq INTEGER NOT NULL,
            PRIMARY KEY (mailbox_id, uid)
        ) WITHOUT ROWID""",
        "CREATE INDEX messages_body ON messages(body_id)",
        """CREATE TABLE dedup (
            key TEXT PRIMARY KEY,
            mailbox_id INTEGER NOT NULL,
            uid INTEGER NOT NULL,
            created REAL NOT NULL
        )""",
        "CREATE INDEX dedup_created ON dedup(created)",
    ),
    # Mailbox names are Unicode text from version 2 on, no longer the modified UTF-7 a
    # client sent (RFC 3501 5.1.3). The conversion needs a decoder, so it is Python:
    # MailStore.open converts a store found at version 1 in the same open.
    2: ("UPDATE mailboxes SET name = name WHERE 0",),
}
SCHEMA_VERSION = max(MIGRATIONS)
