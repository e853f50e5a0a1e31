"""Sequence numbers stay right across sessions: a client-side model checked against the store.

Two sessions (sans-IO, real store) run random STORE/EXPUNGE/APPEND/MOVE/COPY/FETCH/SEARCH/NOOP
commands. A model of each client's view is kept only from what the server *says*
(``EXISTS``, ``EXPUNGE``, ``FETCH (UID n)``), as a real client must. Whenever a session may
hear about expunges, its model must equal the store's UID list.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from apps.mail.imap import ImapSession
from apps.mail.store import MailStore

USER = "34" * 32 + "@mesh"
RAW = b"Subject: x\r\n\r\nbody\r\n"

_UNTAGGED = re.compile(rb"^\* (\d+) (EXISTS|EXPUNGE|FETCH \(UID (\d+))")
_VANISHED = re.compile(rb"^\* VANISHED ([0-9:,]+)$")
_FETCH = re.compile(rb"^\* (\d+) FETCH \((.*)\)$")
_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")
_UID = re.compile(rb"UID (\d+)")


async def _auth(user: str, password: str) -> bool:
    return True


class Client:
    """What a careful client knows: the UID at each sequence number (None: not yet seen)."""

    def __init__(self, store: MailStore) -> None:
        self.out = bytearray()
        self.session = ImapSession(store, _auth, USER, self._write)
        self.view: list[int | None] = []
        self.flags: dict[int, frozenset[str]] = {}  # what the server told (or we stored)
        self.n = 0
        # A QRESYNC client must know every UID: VANISHED names messages by UID only.
        self.qresync = False

    async def _write(self, data: bytes) -> None:
        self.out += data

    async def command(self, text: str) -> bytes:
        self.n += 1
        tag = f"c{self.n}"
        await self.session.receive_data(f"{tag} {text}\r\n".encode())
        data, self.out = bytes(self.out), bytearray()
        lines = data.split(b"\r\n")
        assert any(line.startswith(f"{tag} OK".encode()) for line in lines), data
        for line in lines:
            self._learn_flags(line)
            gone = _VANISHED.match(line)  # QRESYNC: expunges by UID (RFC 7162 3.2.10)
            if gone is not None:
                for piece in gone.group(1).decode().split(","):
                    low, _, high = piece.partition(":")
                    for uid in range(int(low), int(high or low) + 1):
                        assert uid in self.view, ("VANISHED for an unknown UID", uid)
                        self.view.remove(uid)
                continue
            m = _UNTAGGED.match(line)
            if m is None:
                continue
            seq = int(m.group(1))
            if m.group(2) == b"EXISTS":
                assert seq >= len(self.view), "EXISTS must never shrink the mailbox"
                self.view += [None] * (seq - len(self.view))
            elif m.group(2) == b"EXPUNGE":
                del self.view[seq - 1]
            else:
                uid = int(m.group(3))
                assert self.view[seq - 1] in (None, uid), (seq, uid, self.view)
                self.view[seq - 1] = uid
        if self.qresync and None in self.view and not text.startswith("UID FETCH"):
            for _ in range(5):
                await self.command("UID FETCH 1:* (UID)")
                if None not in self.view:
                    break
        return data

    def _learn_flags(self, line: bytes) -> None:
        m = _FETCH.match(line)
        if m is None:
            return
        flags, uid = _FLAGS.search(m.group(2)), _UID.search(m.group(2))
        seq = int(m.group(1))
        known = self.view[seq - 1] if seq <= len(self.view) else None
        target = int(uid.group(1)) if uid else known
        if flags is not None and target is not None:
            names = flags.group(1).decode().split()
            self.flags[target] = frozenset(f for f in names if f != "\\Recent")

    def stored_silently(self, uid: int | None, mode: str, flag: str) -> None:
        """A client applies its own .SILENT change to what it knows."""
        if uid is not None and uid in self.flags:
            old = self.flags[uid]
            self.flags[uid] = old | {flag} if mode == "+" else old - {flag}


ACTIONS = st.lists(
    st.tuples(
        st.integers(0, 1),
        st.sampled_from(
            [
                "APPEND",
                "DELETE_FIRST",
                "DELETE_LAST",
                "FLAG_FIRST",
                "UNFLAG_FIRST",
                "FETCH_UID_ONLY",
                "EXPUNGE",
                "UID_EXPUNGE",
                "MOVE",
                "COPY_IN",
                "FETCH",
                "SEARCH",
                "NOOP",
            ]
        ),
    ),
    min_size=1,
    max_size=25,
)


async def _act(client: Client, store: MailStore, action: str) -> None:
    count = len(client.view)
    if action == "APPEND":
        await client.command(f"APPEND INBOX {{{len(RAW)}+}}\r\n{RAW.decode()}")
    elif action == "DELETE_FIRST" and count:
        first = client.view[0]  # the message the client means, before any response arrives
        await client.command("STORE 1 +FLAGS.SILENT (\\Deleted)")
        client.stored_silently(first, "+", "\\Deleted")
    elif action == "FLAG_FIRST" and count:
        first = client.view[0]
        await client.command("STORE 1 +FLAGS.SILENT (\\Flagged)")
        client.stored_silently(first, "+", "\\Flagged")
    elif action == "UNFLAG_FIRST" and count:
        await client.command("STORE 1 -FLAGS (\\Flagged)")
    elif action == "FETCH_UID_ONLY" and count:
        await client.command("FETCH 1:* (UID)")
    elif action == "DELETE_LAST" and count:
        await client.command("STORE * +FLAGS (\\Deleted)")
    elif action == "EXPUNGE":
        await client.command("EXPUNGE")
    elif action == "UID_EXPUNGE":
        await client.command("UID EXPUNGE 1:*")
    elif action == "MOVE" and count:
        await client.command(f"MOVE {count} Trash")
    elif action == "COPY_IN":
        await store.deliver("INBOX", RAW)  # as if mail arrived from the mesh
    elif action == "FETCH" and count:
        await client.command("FETCH 1:* (UID FLAGS)")
    elif action == "SEARCH":
        await client.command("SEARCH UNDELETED")
    else:
        await client.command("NOOP")


@settings(max_examples=40, deadline=None)
@given(ACTIONS, st.booleans())
async def test_two_sessions_keep_exact_sequence_numbers(
    actions: list[tuple[int, str]], qresync: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = await MailStore.open(Path(tmp) / "mail.db")
        try:
            for _ in range(3):
                await store.deliver("INBOX", RAW)
            clients = [Client(store), Client(store)]
            for c in clients:
                await c.command(f"LOGIN {USER} pw")
                if qresync and c is clients[0]:
                    await c.command("ENABLE QRESYNC")
                    c.qresync = True
                await c.command("SELECT INBOX")
                assert len(c.view) == 3
                await c.command("FETCH 1:* (UID FLAGS)")
            for who, action in actions:
                await _act(clients[who], store, action)
                if action in ("NOOP", "EXPUNGE", "UID_EXPUNGE", "MOVE", "APPEND"):
                    await clients[who].command("UID FETCH 1:* (UID)")
                    assert clients[who].view == await store.list_uids("INBOX")
            for c in clients:
                await c.command("NOOP")
                await c.command("FETCH 1:* (UID)")
                assert c.view == await store.list_uids("INBOX")
                for uid, flags in c.flags.items():  # nothing changed behind the client's back
                    if uid in c.view:
                        assert flags == await store.get_flags("INBOX", uid), uid
                c.session.detach()
        finally:
            await store.close()
