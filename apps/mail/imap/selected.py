"""Commands of the selected state: FETCH, STORE, COPY, MOVE, EXPUNGE, SEARCH, CLOSE, UNSELECT.

Each handler returns the text of the tagged OK, or raises :class:`CommandFailed`.
"""

from __future__ import annotations

import dataclasses
import logging

from ..store import MailboxNotFound, StoreError, normalize_flags
from .base import CommandFailed, SessionBase, State, atom, bad
from .fetch import FetchItem, parse_fetch_items, render_fetch
from .parser import Command, Value
from .qresync import parse_fetch_modifiers, vanished_earlier
from .search import NEED_BODY, NEED_NOTHING, SearchContext, parse_search
from .seqset import SequenceSet
from .wire import render_flags, uid_set_text

__all__ = ["SelectedCommands"]

log = logging.getLogger(__name__)

META_CHUNK = 2000  # messages per store round trip when no message bytes are needed
BODY_CHUNK = 100  # ... and when they are: bounds memory for FETCH 1:* BODY[]


def _chunks(items: list[tuple[int, int]], size: int) -> list[list[tuple[int, int]]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class SelectedCommands(SessionBase):
    async def cmd_fetch(self, cmd: Command, uid_mode: bool = False) -> str:
        view = self.require_view()
        if len(cmd.args) not in (2, 3):
            raise bad("FETCH needs a sequence set, items and optionally (CHANGEDSINCE n)")
        targets = view.resolve(cmd.args[0], uid_mode)
        try:
            request = parse_fetch_items(cmd.args[1], uid_command=uid_mode)
        except ValueError as exc:
            raise bad(str(exc)) from None
        changed_since = None
        if len(cmd.args) == 3:  # RFC 7162 sections 3.1.4.1 and 3.2.6
            modifiers = parse_fetch_modifiers(cmd.args[2], uid_mode=uid_mode, qresync=self.qresync)
            changed_since = modifiers.changed_since
            self.condstore = True
            log.debug(
                "FETCH %s CHANGEDSINCE %s%s",
                view.name,
                changed_since,
                " VANISHED" if modifiers.vanished else "",
            )
            if modifiers.vanished:
                info = await self.store.mailbox(view.name)
                entries, _ = await self.store.entries(view.name)
                # Still in this session's view = not yet reported: not "earlier".
                present = sorted(set(view.uids) | {uid for uid, _, _ in entries})
                within = SequenceSet.parse(atom(cmd.args[0], "UID set"))
                await self.write(vanished_earlier(present, info.uidnext, within))
        if any(i.name == "MODSEQ" for i in request.items):
            self.condstore = True
        elif changed_since is not None:
            request = dataclasses.replace(request, items=(*request.items, FetchItem("MODSEQ")))
        has_flags = any(i.name == "FLAGS" for i in request.items)
        extra = (
            (FetchItem("FLAGS"), FetchItem("MODSEQ")) if self.condstore else (FetchItem("FLAGS"),)
        )
        with_flags = dataclasses.replace(request, items=(*request.items, *extra))
        size = BODY_CHUNK if request.needs_header else META_CHUNK
        for chunk in _chunks(targets, size):
            uids = [uid for _, uid in chunk]
            metas = {m.uid: m for m in await self.store.fetch_meta(view.name, uids)}
            raws: dict[int, bytes] = {}
            if request.needs_header:
                raws = await self.store.fetch_bodies(
                    view.name, uids, header_only=not request.needs_body
                )
            changed: set[int] = set()
            if request.sets_seen and not view.readonly:
                unseen = [u for u in uids if u in metas and "\\Seen" not in metas[u].flags]
                if unseen:
                    new, _ = await self.store.store_flags_ex(view.name, unseen, "+", ["\\Seen"])
                    for uid, (flags, modseq) in new.items():
                        metas[uid] = dataclasses.replace(metas[uid], flags=flags, modseq=modseq)
                    changed = set(new)
            out: list[bytes] = []
            for seq, uid in chunk:
                meta = metas.get(uid)
                if meta is None:
                    continue  # expunged by another session; reported later
                if changed_since is not None and meta.modseq <= changed_since:
                    continue
                use = with_flags if uid in changed and not has_flags else request
                if has_flags or uid in changed:
                    view.flags[uid] = meta.flags  # told now; otherwise sync reports it later
                out.append(render_fetch(seq, meta, use, raws.get(uid), view.shown_flags(uid)))
            await self.write(b"".join(out))
        return "FETCH completed"

    async def cmd_store(self, cmd: Command, uid_mode: bool = False) -> str:
        view = self.require_view()
        args = list(cmd.args)
        unchanged_since = None
        if len(args) > 1 and isinstance(args[1], list):  # RFC 7162 section 3.1.3
            unchanged_since = _modifier(args.pop(1), "UNCHANGEDSINCE")
            self.condstore = True
        if len(args) < 3:
            raise bad("STORE needs a sequence set, an item and flags")
        if view.readonly:
            raise CommandFailed("NO", "the mailbox is selected read-only (EXAMINE)")
        targets = view.resolve(args[0], uid_mode)
        item = atom(args[1], "STORE item").upper()
        silent = item.endswith(".SILENT")
        base = item.removesuffix(".SILENT")
        modes = {"FLAGS": "", "+FLAGS": "+", "-FLAGS": "-"}
        if base not in modes:
            raise bad(f"unknown STORE item {item!r}: use FLAGS, +FLAGS or -FLAGS")
        flags = [f for f in _flag_args(tuple(args[2:])) if f != "\\Recent"]
        try:
            new, modified = await self.store.store_flags_ex(
                view.name, [u for _, u in targets], modes[base], flags,
                unchanged_since=unchanged_since,
            )  # fmt: skip
        except StoreError as exc:
            raise bad(str(exc)) from None
        out: list[bytes] = []
        for seq, uid in targets:
            if uid not in new:
                continue
            flags_now, modseq = new[uid]
            known = view.flags.get(uid, frozenset())
            changed = known != flags_now
            # .SILENT only spares the client what it asked for; changes made meanwhile by
            # another session are still reported.
            surprise = flags_now != _apply(modes[base], known, flags)
            view.flags[uid] = flags_now
            show_flags = not silent or surprise
            parts = [b"FLAGS " + render_flags(view.shown_flags(uid))] if show_flags else []
            if uid_mode:
                parts.append(b"UID %d" % uid)
            if self.condstore and (changed or show_flags):
                parts.append(b"MODSEQ (%d)" % modseq)  # even .SILENT reports it (3.1.3)
            if show_flags or (self.condstore and changed):
                out.append(b"* %d FETCH (%s)\r\n" % (seq, b" ".join(parts)))
        if out:
            await self.write(b"".join(out))
        if modified:
            numbers = modified if uid_mode else [view.seq_of(u) or 0 for u in modified]
            return f"[MODIFIED {uid_set_text(sorted(numbers))}] conditional STORE failed"
        return "STORE completed"

    async def _copy_or_move(self, cmd: Command, uid_mode: bool, move: bool) -> str:
        view = self.require_view()
        verb = "MOVE" if move else "COPY"
        if len(cmd.args) != 2:
            raise bad(f"{verb} needs a sequence set and a mailbox")
        if move and view.readonly:
            raise CommandFailed("NO", "the mailbox is selected read-only (EXAMINE)")
        targets = view.resolve(cmd.args[0], uid_mode)
        target = self.mailbox_arg(cmd.args[1])
        try:
            info = await self.store.mailbox(target)
            op = self.store.move if move else self.store.copy
            pairs = await op(view.name, [u for _, u in targets], target)
        except MailboxNotFound:
            raise CommandFailed("NO", f"no mailbox named {target!r}", "TRYCREATE") from None
        if not pairs:
            return f"{verb} completed (nothing matched)"
        code = (
            f"COPYUID {info.uidvalidity} {uid_set_text(p[0] for p in pairs)} "
            f"{uid_set_text(p[1] for p in pairs)}"
        )
        if not move:
            return f"[{code}] COPY completed"
        moved = f"* OK [{code}] moved\r\n".encode()
        await self.write(moved + self.forget([src for src, _ in pairs]))
        return "MOVE completed"

    async def cmd_copy(self, cmd: Command, uid_mode: bool = False) -> str:
        return await self._copy_or_move(cmd, uid_mode, move=False)

    async def cmd_move(self, cmd: Command, uid_mode: bool = False) -> str:
        return await self._copy_or_move(cmd, uid_mode, move=True)

    async def cmd_expunge(self, cmd: Command, uid_mode: bool = False) -> str:
        view = self.require_view()
        if view.readonly:
            raise CommandFailed("NO", "the mailbox is selected read-only (EXAMINE)")
        limit = None
        if uid_mode:
            if len(cmd.args) != 1:
                raise bad("UID EXPUNGE needs a UID set")
            limit = [u for _, u in view.resolve(cmd.args[0], True)]
        elif cmd.args:
            raise bad("EXPUNGE takes no arguments")
        gone = await self.store.expunge(view.name, limit)
        out = self.forget(gone)
        if out:
            await self.write(out)
        return "EXPUNGE completed"

    async def cmd_search(self, cmd: Command, uid_mode: bool = False) -> str:
        view = self.require_view()
        try:
            criteria = parse_search(list(cmd.args))
        except LookupError:
            raise CommandFailed(
                "NO", "unsupported charset", "BADCHARSET (UTF-8 US-ASCII)"
            ) from None
        except ValueError as exc:
            raise bad(str(exc)) from None
        metas = await self.store.fetch_meta(view.name, view.uids)
        max_uid = view.uids[-1] if view.uids else 0
        contexts = [
            SearchContext(
                view.seq_of(m.uid) or 0,
                m,
                m.flags,
                m.uid in view.recent,
                len(view.uids),
                max_uid,
            )
            for m in metas
            if view.seq_of(m.uid)
        ]
        hits: list[int] = []
        step = (len(contexts) or 1) if criteria.needs == NEED_NOTHING else BODY_CHUNK
        for i in range(0, len(contexts), step):
            batch = contexts[i : i + step]
            if criteria.needs != NEED_NOTHING:
                raws = await self.store.fetch_bodies(
                    view.name, [c.meta.uid for c in batch], header_only=criteria.needs != NEED_BODY
                )
                for c in batch:
                    c.raw = raws.get(c.meta.uid, b"")
            hits.extend((c.meta.uid if uid_mode else c.seq) for c in batch if criteria.predicate(c))
        tail = b""
        if criteria.modseq:
            self.condstore = True
            if hits:
                wanted = set(hits)
                highest = max(
                    c.meta.modseq for c in contexts if (c.meta.uid if uid_mode else c.seq) in wanted
                )
                tail = b" (MODSEQ %d)" % highest
        await self.write(b"* SEARCH" + b"".join(b" %d" % n for n in hits) + tail + b"\r\n")
        return "SEARCH completed"

    async def cmd_check(self, cmd: Command) -> str:
        self.require_view()
        return "CHECK completed"

    async def cmd_close(self, cmd: Command) -> str:
        view = self.require_view()
        if not view.readonly:
            await self.store.expunge(view.name)
        self.view = None
        self.set_state(State.AUTHENTICATED)
        return "CLOSE completed"

    async def cmd_unselect(self, cmd: Command) -> str:
        self.require_view()
        self.view = None
        self.set_state(State.AUTHENTICATED)
        return "UNSELECT completed"

    async def cmd_uid(self, cmd: Command) -> str:
        handlers = {
            "UID FETCH": self.cmd_fetch,
            "UID STORE": self.cmd_store,
            "UID COPY": self.cmd_copy,
            "UID MOVE": self.cmd_move,
            "UID SEARCH": self.cmd_search,
            "UID EXPUNGE": self.cmd_expunge,
        }
        handler = handlers.get(cmd.name)
        if handler is None:
            raise bad(f"unknown command {cmd.name}")
        return await handler(cmd, True)


def _apply(mode: str, old: frozenset[str], flags: list[str]) -> frozenset[str]:
    change = normalize_flags(flags)
    return old | change if mode == "+" else old - change if mode == "-" else change


def _modifier(value: Value, name: str) -> int:
    """``(NAME n)`` as in ``(CHANGEDSINCE 12)`` / ``(UNCHANGEDSINCE 12)``."""
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not isinstance(value[0], str)
        or value[0].upper() != name
        or not isinstance(value[1], str)
        or not value[1].isdigit()
    ):
        raise bad(f"expected ({name} <mod-sequence>)")
    return int(value[1])


def _flag_args(values: tuple[Value, ...]) -> list[str]:
    flags: list[str] = []
    for value in values:
        items = value if isinstance(value, list) else [value]
        for item in items:
            flags.append(atom(item, "flag"))
    return flags
