"""The ``chat.*`` control methods (the TUI and ``mesh chat`` use only these)."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from apps.chat.envelope import MAX_BODY
from core import MeshError, NodeEvent, UnknownContact, UsageError, fit_reply, unsafe_reason

if TYPE_CHECKING:
    from apps.chat.service import ChatService

__all__ = ["ChatControl", "trust_of"]

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
MAX_LIMIT = 1000


def _want(params: dict[str, Any], name: str, kind: type = str) -> Any:
    if name not in params:
        raise UsageError(f"missing parameter {name!r}")
    value = params[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UsageError(f"parameter {name!r} must be a {kind.__name__}")
    return value


def _limit(params: dict[str, Any], default: int) -> int:
    value = params.get("limit", default)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_LIMIT:
        raise UsageError(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return value


def _before(params: dict[str, Any], name: str) -> int | None:
    value = params.get(name)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise UsageError(f"{name} must be a whole number")
    return value


def _hex_id(text: Any, what: str) -> bytes:
    try:
        raw = bytes.fromhex(str(text))
    except ValueError:
        raw = b""
    if len(raw) != 16:
        raise UsageError(f"{what} must be a 32-hex message id")
    return raw


def _parse_key(text: str) -> bytes | None:
    word = text.strip().lower().removesuffix("@mesh")
    if len(word) != 64:
        return None
    try:
        return bytes.fromhex(word)
    except ValueError:
        return None


class ChatControl:
    def __init__(self, service: ChatService) -> None:
        self.s = service

    def methods(self) -> dict[str, Handler]:
        return {
            "chat.info": self.info,
            "chat.send": self.send,
            "chat.history": self.history,
            "chat.conversations": self.conversations,
            "chat.requests": self.requests,
            "chat.accept": self.accept,
            "chat.ignore": self.ignore,
            "chat.read": self.read,
            "chat.search": self.search,
            "chat.typing": self.typing,
            "chat.retry": self.retry,
            "chat.security": self.security,
            "chat.security.ack": self.security_ack,
            "chat.mute": self.mute,
            "chat.receipts": self.receipts,
        }

    # -- helpers ----------------------------------------------------------------------
    def _changed(self, key: bytes, **fields: Any) -> None:
        """A conversation's flags changed: ``chat.conversation`` tells every attached
        client (another UI on the same node)."""
        self.s.node.events.publish(NodeEvent("chat.conversation", {"key": key.hex(), **fields}))

    async def key_of(self, name: str) -> bytes:
        key = _parse_key(name)
        if key is not None:
            return key
        if self.s.contacts is not None:
            try:
                return bytes((await self.s.contacts.resolve(name)).key)
            except UnknownContact:
                # not a contact: maybe the start of a conversation's key (a request)
                if (found := await self._conversation_prefix(name)) is None:
                    raise
                return found
        if (found := await self._conversation_prefix(name)) is None:
            raise UsageError(f"{name!r} is not a key or key@mesh (this node has no contacts)")
        return found

    async def _conversation_prefix(self, name: str) -> bytes | None:
        """The one conversation whose key starts with ``name`` (8+ hex digits)."""
        prefix = name.strip().lower().removesuffix("@mesh")
        if len(prefix) < 8 or prefix.strip("0123456789abcdef"):
            return None
        hits = await self.s.db.keys_starting(prefix)
        if len(hits) > 1:
            raise UsageError(
                f"{name!r} is the start of more than one conversation's key: give more of it"
            )
        return bytes.fromhex(hits[0]) if hits else None

    async def _contact(self, params: dict[str, Any]) -> bytes:
        key = await self.key_of(_want(params, "contact"))
        if key == self.s.node.key:
            raise UsageError("that is this node's own key: chat needs another node")
        return key

    async def _conversation_json(self, conv: dict[str, Any], contact: Any) -> dict[str, Any]:
        key = bytes.fromhex(conv["key"])
        trust = trust_of(contact)
        return {
            "key": conv["key"],
            "alias": getattr(contact, "alias", None) if contact is not None else None,
            "trust": trust,
            "unread": conv["unread"],
            "online": self.s.is_online(key),
            "request": conv["request"] and not conv["accepted"] and trust == "unknown",
            "last": conv["last"],
            "muted": conv["muted"],
            "read_receipts": conv["read_receipts"],
        }

    # -- methods ----------------------------------------------------------------------
    async def info(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "key": self.s.node.key.hex(),
            "address": f"{self.s.node.key.hex()}@mesh",
            "node_address": str(self.s.node.address),
            "max_body_bytes": MAX_BODY,
            "port": self.s.port,
            "signing": self.s.signing,
            "signer": self.s.signer_key.hex(),
            "expiry_days": self.s.config.expiry_days,
            "refused": dict(self.s.refused),
        }

    async def send(self, params: dict[str, Any]) -> dict[str, Any]:
        key = await self._contact(params)
        body = _want(params, "body")
        if not body.strip():
            raise UsageError("the message is empty")
        unsafe = unsafe_reason(body)
        if unsafe is not None:
            raise UsageError(
                f"the message has {unsafe}; only newlines and tabs may be in a message"
            )
        if self.s.contacts is not None and trust_of(await self.s.contacts.get(key)) == "blocked":
            raise UsageError(
                "you blocked this contact; unblock first (mesh contacts unblock CONTACT)"
            )
        if len(body.encode()) > MAX_BODY:
            raise UsageError(
                f"the message is {len(body.encode())} bytes; the limit is {MAX_BODY} (UTF-8)"
            )
        reply = params.get("reply_to")
        reply_to = _hex_id(reply, "reply_to") if reply else None
        return await self.s.send(key, body, reply_to)

    async def history(self, params: dict[str, Any]) -> dict[str, Any]:
        """The newest ``limit`` messages before ``before_seq`` (oldest first), cut to
        the reply budget in bytes (the oldest go first); ``more`` says older remain."""
        key = await self._contact(params)
        limit = _limit(params, 200)
        before = _before(params, "before_seq")
        search = params.get("search")
        if search:
            found = await self.s.db.search(
                str(search), conversation=key, limit=limit, before_seq=before
            )
            page, cut = fit_reply(found)
            return {"messages": list(reversed(page)), "more": cut or len(found) == limit}
        messages, more = await self.s.db.history(key, limit=limit, before_seq=before)
        newest_first, cut = fit_reply(messages[::-1])
        return {"messages": newest_first[::-1], "more": more or cut}

    async def conversations(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Conversations by last activity, at most ``limit`` (default 200) and the reply
        budget in bytes; each ``last`` message's body is cut to a preview
        (``last.truncated``)."""
        convs = await self.s.db.conversations(
            limit=_limit(params, 200), requests_only=bool(params.get("requests_only"))
        )
        contacts: dict[str, Any] = {}
        if self.s.contacts is not None:
            with contextlib.suppress(Exception):
                contacts = {bytes(c.key).hex(): c for c in await self.s.contacts.list()}
        out = [await self._conversation_json(c, contacts.get(c["key"])) for c in convs]
        known = {c["key"] for c in out}
        for hexkey, contact in contacts.items():  # contacts with no message yet
            if params.get("requests_only"):
                break
            if hexkey not in known and trust_of(contact) == "trusted":
                empty = {"key": hexkey, "unread": 0, "request": False, "accepted": True,
                         "last": None, "muted": False, "read_receipts": True}  # fmt: skip
                out.append(await self._conversation_json(empty, contact))
        shown = [c for c in out if c["trust"] != "blocked"]
        return fit_reply(shown)[0]

    async def requests(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        found = await self.conversations({**params, "requests_only": True})
        return [c for c in found if c["request"]]

    async def accept(self, params: dict[str, Any]) -> dict[str, Any]:
        key = await self._contact(params)
        if self.s.contacts is not None and trust_of(await self.s.contacts.get(key)) != "trusted":
            await self.s.contacts.add(key)
        await self.s.db.set_flag(key, "accepted", True)
        await self.s.db.set_flag(key, "request", False)
        self.s.stranger_bytes = await self.s.db.stranger_bytes()  # no longer a stranger's
        self._changed(key, accepted=True, request=False, trust="trusted")
        return {"key": key.hex(), "trust": "trusted"}

    async def ignore(self, params: dict[str, Any]) -> dict[str, Any]:
        key = await self._contact(params)
        await self.s.db.set_flag(key, "request", False)
        trust = (
            trust_of(await self.s.contacts.get(key)) if self.s.contacts is not None else "unknown"
        )
        self._changed(key, request=False, trust=trust)
        return {"key": key.hex(), "trust": trust}

    async def read(self, params: dict[str, Any]) -> dict[str, int]:
        key = await self._contact(params)
        marked = await self.s.mark_read(key)
        if marked:
            self._changed(key, unread=0)
        return {"marked": marked}

    async def search(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Hits newest first, at most ``limit`` and the reply budget in bytes; the next
        page is ``before_seq`` = the last hit's ``seq``."""
        text = _want(params, "text")
        conv = await self._contact(params) if params.get("contact") else None
        found = await self.s.db.search(
            text,
            conversation=conv,
            limit=_limit(params, 50),
            before_seq=_before(params, "before_seq"),
        )
        return fit_reply(found)[0]

    async def typing(self, params: dict[str, Any]) -> dict[str, Any]:
        key = await self._contact(params)
        self.s.send_typing(key, bool(params.get("active", True)))
        return {}

    async def retry(self, params: dict[str, Any]) -> dict[str, Any]:
        return await self.s.retry(_hex_id(_want(params, "id"), "id"))

    async def security(self, params: dict[str, Any]) -> dict[str, Any]:
        """A page of security records, newest first: ``limit`` (default 100),
        ``before_id`` (the last page's ``next``), ``unacknowledged`` (only those)."""
        before = params.get("before_id")
        if before is not None:
            try:
                before = int(str(before))
            except ValueError:
                raise UsageError("before_id must be a security record id") from None
        records, more = await self.s.db.security(
            limit=_limit(params, 100),
            before_id=before,
            unacknowledged=bool(params.get("unacknowledged", False)),
        )
        records, cut = fit_reply(records)
        total, unacked = await self.s.db.security_counts()
        return {
            "records": records,
            "more": more or cut,
            "next": records[-1]["id"] if records and (more or cut) else None,
            "total": total,
            "unacknowledged": unacked,
        }

    async def security_ack(self, params: dict[str, Any]) -> dict[str, Any]:
        """Acknowledge one record (``id``), a contact's (``contact``) or all (``all``)."""
        if params.get("all"):
            key = await self._contact(params) if params.get("contact") else None
            changed = await self.s.db.ack_security(key=key)
        else:
            try:
                rid = int(str(_want(params, "id")))
            except ValueError:
                raise UsageError("id must be a security record id") from None
            changed = await self.s.db.ack_security(rid)
            if not changed:
                raise MeshError(f"no security record {rid}")
        if changed:
            self.s.node.events.publish(
                NodeEvent(
                    "chat.security.acked", {"id": params.get("id"), "all": bool(params.get("all"))}
                )
            )
        return {"acknowledged": changed}

    async def mute(self, params: dict[str, Any]) -> dict[str, Any]:
        key = await self._contact(params)
        muted = bool(params.get("muted", True))
        await self.s.db.set_flag(key, "muted", muted)
        self._changed(key, muted=muted)
        return {"key": key.hex(), "muted": muted}

    async def receipts(self, params: dict[str, Any]) -> dict[str, Any]:
        key = await self._contact(params)
        on = bool(params.get("read_receipts", True))
        await self.s.db.set_flag(key, "read_receipts", on)
        self._changed(key, read_receipts=on)
        return {"key": key.hex(), "read_receipts": on}


def trust_of(contact: Any) -> str:
    if contact is None:
        return "unknown"
    trust = getattr(contact, "trust", "unknown")
    return str(getattr(trust, "value", trust))
