"""The call service in the node process: signaling on the mesh, calls, the call log,
control methods and events.

- Signaling: a mesh stream per call on :data:`SIGNALING_PORT` (5311). The caller is the
  stream's authenticated source address and key, never what a frame claims.
- Who may ring: trusted contacts (``ring = "contacts"``, the default) or everyone but
  blocked keys (``ring = "everyone"``); others get ``reject not-a-contact``. A second
  call while in one gets ``reject busy``. No answer within ``ring_timeout`` (45 s):
  missed on both sides.
- Control methods: ``call.place``, ``call.answer``, ``call.reject``, ``call.hangup``,
  ``call.update``, ``call.status``, ``call.stats``, ``call.log``, ``call.info``.
- Events: ``call.incoming``, ``call.state``, ``call.missed``, ``call.ended`` (the
  summary the CLI prints).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apps.video import sdp
from apps.video import signaling as sig
from apps.video.page.lazy import PAGE_FILE, LazyPage, parse_page_setting
from apps.video.ring import Ringer
from apps.video.store import LOG_FILE_NAME, CallLog
from core import (
    BaseService,
    ConnectionLimiter,
    MeshError,
    NodeEvent,
    PeerRateLimiter,
    Trust,
    UnknownContact,
    UsageError,
    address_for_key,
    parse_key,
    peer_address,
    peer_key,
    within,
)

if TYPE_CHECKING:
    from apps.video.call import Call, CallOptions
    from core import Node

__all__ = ["CallService", "VideoConfig", "create_service"]

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
_REJECT_RESULTS = {"declined": "rejected", "busy": "busy", "not-a-contact": "not-a-contact"}
MAX_HANDSHAKES = 8  # incoming streams still before their first frame
FIRST_FRAME_TIMEOUT = 10.0
FINISHED_KEPT = 32
REFUSALS_LOGGED = 5  # refused calls logged per peer per minute
PULSE_TICK = 0.25  # how often an active call looks for its peer's packets
HANGUP_FLUSH = 1.0  # a hang-up waits this long at most for its frame to go out
UPDATES_SHOWN = 5  # a peer's update frames published a second (the rest coalesced)
RINGS_UNANSWERED = 3  # after 3 unanswered rings from a peer within RINGS_WINDOW,
RINGS_WINDOW = 120.0  # its calls get busy until the oldest is that old
RINGS_PEERS = 1024  # peers remembered for that


@dataclass(frozen=True)
class VideoConfig:
    port: int = sig.SIGNALING_PORT
    ring: str = "contacts"
    ring_timeout: float = 45.0
    keepalive: float = 5.0
    idle_timeout: float = 20.0
    connect_timeout: float = 20.0
    dial_timeout: float = 15.0
    # An active call ends when nothing (media, RTCP, ICE) came from the peer for this
    # long: a peer gone for good (killed, its link cut) ends the call within ~3 s, a
    # shorter link flap is ridden out (media resumes on the same call).
    lost_after: float = 2.5
    name: str = ""
    page: str = "127.0.0.1:0"  # the call page (apps/video/page): 127.0.0.1:PORT or "off"

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> VideoConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(raw) - known
        if unknown:
            raise UsageError(f"[video] has unknown settings: {', '.join(sorted(unknown))}")
        config = cls(**{k: v for k, v in raw.items() if v is not None})
        if config.ring not in ("contacts", "everyone"):
            raise UsageError('[video] ring must be "contacts" or "everyone"')
        if not 0 <= int(config.port) < 65536:
            raise UsageError("[video] port must be 0-65535")
        parse_page_setting(config.page)
        for name in (
            "ring_timeout",
            "keepalive",
            "idle_timeout",
            "connect_timeout",
            "dial_timeout",
            "lost_after",
        ):
            if not float(getattr(config, name)) > 0:
                raise UsageError(f"[video] {name} must be > 0 seconds")
        return config


@dataclass
class _Session:
    call: Call
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    offer: sdp.IncomingSdp | None = None
    answering: bool = False
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    # The peer's update frames: shown at most UPDATES_SHOWN a second, the last always.
    updates_shown: deque[float] = field(default_factory=lambda: deque(maxlen=UPDATES_SHOWN))
    update_due: asyncio.TimerHandle | None = None


class CallService(BaseService):
    def __init__(
        self,
        node: Node,
        config: VideoConfig,
        data_dir: Path,
    ) -> None:
        self.node = node
        self.config = config
        self.data_dir = data_dir
        self.contacts = node.contacts  # the node's one list, shared with chat and mail
        self.log: CallLog | None = None
        self._server: Any = None
        self._sessions: dict[str, _Session] = {}
        self._finished: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()
        # Refused calls are logged and announced at most 5 a minute per peer.
        self._refusals = PeerRateLimiter(burst=REFUSALS_LOGGED, per_minute=REFUSALS_LOGGED)
        # A peer re-ringing in a loop cannot keep this node ringing (or busy) for ever.
        self._unanswered: OrderedDict[bytes, deque[float]] = OrderedDict()
        # Streams still before their first frame: 2 per peer, MAX_HANDSHAKES in all.
        self._handshakes = ConnectionLimiter(per_peer=2, total=MAX_HANDSHAKES)
        self.refused_frames = 0
        self.sent_sdp: deque[str] = deque(maxlen=64)  # the last SDPs sent, for checks
        self.port = config.port
        self.page: LazyPage | None = None
        self.ringer = Ringer(self)  # an incoming call rings where the person is

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        self.log = await CallLog.open(self.data_dir / LOG_FILE_NAME)
        try:
            self._server = await self.node.start_server(self._incoming, self.config.port)
        except BaseException:
            await self.log.close()
            raise
        self.port = self._server.port
        page_port = parse_page_setting(self.config.page)
        if page_port is not None:
            page = LazyPage(self, page_port, self.data_dir / PAGE_FILE)
            try:
                await page.start()
            except BaseException:
                self._server.close()
                await self.log.close()
                raise
            self.page = page

    async def close(self) -> None:
        await self.ringer.close()
        if self.page is not None:
            page, self.page = self.page, None
            await page.close()
        if self._server is not None:
            self._server.close()
        for session in list(self._sessions.values()):
            await self._send(session, sig.Hangup(session.call.id))
            session.call.fire(sig.Trigger.HANGUP)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for session in list(self._sessions.values()):
            await self._finish(session)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        if self.log is not None:
            await self.log.close()
            self.log = None

    def endpoints(self) -> dict[str, Any]:
        found = {"signaling": f"[{self.node.address}]:{self.port}", "ring": self.config.ring}
        if self.page is not None:
            found["page"] = self.page.url  # without its token
        return found

    def control_methods(self) -> dict[str, Handler]:
        return {
            "call.info": self._m_info,
            "call.place": self._m_place,
            "call.answer": self._m_answer,
            "call.reject": self._m_reject,
            "call.hangup": self._m_hangup,
            "call.update": self._m_update,
            "call.status": self._m_status,
            "call.stats": self._m_stats,
            "call.log": self._m_log,
            "call.page": self._m_page,
        }

    def _own(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- events -------------------------------------------------------------------------
    def _publish(self, kind: str, data: dict[str, Any]) -> None:
        self.node.events.publish(NodeEvent(kind, data))

    def _on_state(self, call: Call, old: sig.CallState, new: sig.CallState) -> None:
        log.info("call %s %s: %s -> %s", call.id[:8], call.role.value, old.value, new.value)
        session = self._sessions.get(call.id)
        if session is None or session.call is not call:
            return  # refused before it rang (a stranger, busy, a bad offer): no UI to move
        self._publish("call.state", {**call.to_json(), "previous": old.value})
        if old is sig.CallState.RINGING and call.role is sig.Role.CALLEE:
            self.ringer.stopped(call.id)

    def current(self) -> Call | None:
        for session in self._sessions.values():
            if session.call.state is not sig.CallState.ENDED:
                return session.call
        return None

    # -- who may call -------------------------------------------------------------------
    async def _screen(self, call: Call) -> str | None:
        """None if the caller may ring us, else the reject reason; notes the caller's
        alias in our contacts on the call, and remembers a stranger as unknown (like a
        message request)."""
        contact = await self.contacts.get(call.peer_key)
        call.alias = contact.alias if contact is not None else None
        trust = contact.trust if contact is not None else Trust.UNKNOWN
        if trust is Trust.BLOCKED:
            return "not-a-contact"
        if self.config.ring == "everyone":
            return None
        if trust is not Trust.TRUSTED:
            if contact is None:
                await self.contacts.seen(call.peer_key)
            return "not-a-contact"
        return None

    async def _resolve(self, name: str) -> tuple[bytes, str | None]:
        """The key (and our alias for it) that ``name`` means: a contact's alias, key
        or key@mesh, or any key or key@mesh (the callee decides whether it rings)."""
        try:
            contact = await self.contacts.resolve(name)
        except UnknownContact:
            try:
                return parse_key(name), None
            except UsageError:
                raise UnknownContact(
                    f"{name!r} is not a contact (mesh contacts list), a key or key@mesh"
                ) from None
        return contact.key, contact.alias

    # -- signaling I/O ------------------------------------------------------------------
    async def _send(self, session: _Session, frame: sig.Frame) -> None:
        writer = session.writer
        if writer is None or writer.is_closing():
            return
        if isinstance(frame, sig.CallFrame | sig.Accept):
            self.sent_sdp.append(frame.sdp)
        try:
            writer.write(sig.encode_frame(frame))
            await within(writer.drain(), self.config.idle_timeout)
        except (ConnectionError, OSError, TimeoutError) as exc:
            log.info("call %s: signaling write failed: %s", session.call.id[:8], exc)

    async def _drive(self, session: _Session, conn: sig.SignalingConnection) -> None:
        """Run one call's signaling until it ends, then finish it."""
        call = session.call
        helpers = [
            asyncio.ensure_future(self._read_loop(session, conn)),
            asyncio.ensure_future(self._keepalive(session)),
            asyncio.ensure_future(self._ring_timer(session)),
        ]
        session.tasks.update(helpers)
        try:
            await call.ended.wait()
        finally:
            for task in session.tasks:
                task.cancel()
            await asyncio.gather(*session.tasks, return_exceptions=True)
            await self._finish(session)

    async def _read_loop(self, session: _Session, conn: sig.SignalingConnection) -> None:
        call, reader = session.call, session.reader
        assert reader is not None
        while True:
            try:
                data = await within(reader.read(65536), self.config.idle_timeout)
            except TimeoutError:
                call.fire(sig.Trigger.FAIL, result="failed", detail="the peer went silent")
                return
            except (ConnectionError, OSError) as exc:
                call.fire(sig.Trigger.FAIL, result="failed", detail=f"signaling lost: {exc}")
                return
            if not data:
                self._peer_gone(call)
                return
            try:
                conn.receive_data(data)
                while (frame := conn.next_event()) is not None:
                    if frame.call != call.id:
                        raise sig.RemoteProtocolError("frame for another call on this stream")
                    await self._on_frame(session, frame)
            except sig.RemoteProtocolError as exc:
                self.refused_frames += 1
                await self._send(session, sig.Hangup(call.id, "failed", str(exc)[:200]))
                call.fire(sig.Trigger.FAIL, result="failed", detail=f"peer: {exc}")
                return

    def _peer_gone(self, call: Call) -> None:
        if call.state in (sig.CallState.ACTIVE, sig.CallState.CONNECTING):
            call.fire(sig.Trigger.HANGUP)
        elif call.role is sig.Role.CALLEE:
            call.fire(sig.Trigger.HANGUP, result="missed", detail="the caller went away")
        else:
            call.fire(sig.Trigger.FAIL, result="failed", detail="the callee closed the stream")

    async def _keepalive(self, session: _Session) -> None:
        while True:
            await asyncio.sleep(self.config.keepalive)
            await self._send(session, sig.Keepalive(session.call.id))

    async def _ring_timer(self, session: _Session) -> None:
        call = session.call
        grace = 0.0 if call.role is sig.Role.CALLER else min(5.0, self.config.ring_timeout)
        await asyncio.sleep(self.config.ring_timeout + grace)
        if call.state in (sig.CallState.DIALING, sig.CallState.RINGING):
            await self._send(session, sig.Hangup(call.id, "no-answer"))
            result = "no-answer" if call.role is sig.Role.CALLER else "missed"
            call.fire(sig.Trigger.TIMEOUT, result=result, detail="no answer")

    async def _media_watch(self, session: _Session) -> None:
        call = session.call
        try:
            await within(call.connected.wait(), self.config.connect_timeout)
        except TimeoutError:
            await self._send(session, sig.Hangup(call.id, "failed", "media did not connect"))
            call.fire(sig.Trigger.FAIL, result="failed", detail="media did not connect")
            return
        call.fire(sig.Trigger.MEDIA_UP)
        await self._pulse(session)

    async def _pulse(self, session: _Session) -> None:
        """End the active call once the peer has been silent for ``lost_after``: a peer
        alive sends media, and RTCP receiver reports at least every 1.5 s even when it
        sends nothing. Silence is counted in ticks of at most twice PULSE_TICK, so a stalled
        event loop (a loaded machine) does not pass for a lost peer."""
        call = session.call
        heard, silent = -1, 0.0
        last = asyncio.get_running_loop().time()
        while call.state is sig.CallState.ACTIVE:
            await asyncio.sleep(PULSE_TICK)
            now = asyncio.get_running_loop().time()
            count = sum(conn.counters.heard for conn in call.ice)
            if count != heard:
                heard, silent = count, 0.0
            else:
                silent += min(now - last, 2 * PULSE_TICK)
            last = now
            if silent >= self.config.lost_after:
                why = f"connection lost: nothing from the peer for {self.config.lost_after:g} s"
                log.info("call %s: %s", call.id[:8], why)
                # a word to the peer if it can still hear; no wait
                self._write_now(session, sig.Hangup(call.id, "failed", why))
                call.fire(sig.Trigger.HANGUP, detail=why, result="answered")
                return

    def _spawn(self, session: _Session, coro: Coroutine[Any, Any, None]) -> None:
        """A task of this call's, cancelled and awaited when it ends (``_drive``)."""
        if session.call.state is sig.CallState.ENDED:
            coro.close()  # too late: nothing would await it
            return
        session.tasks.add(asyncio.ensure_future(coro))

    # -- frames -------------------------------------------------------------------------
    async def _on_frame(self, session: _Session, frame: sig.Frame) -> None:
        call = session.call
        if isinstance(frame, sig.Keepalive):
            return
        if isinstance(frame, sig.Update):
            call.remote_update.update(frame.fields())
            self._show_update(session)
            return
        if isinstance(frame, sig.Hangup):
            if call.answered_at is not None:
                call.fire(sig.Trigger.HANGUP)
            elif call.role is sig.Role.CALLEE:
                call.fire(sig.Trigger.HANGUP, result="missed", detail="the caller hung up")
            else:
                result = "no-answer" if frame.reason == "no-answer" else "failed"
                call.fire(sig.Trigger.HANGUP, result=result, detail=frame.detail or frame.reason)
            return
        if call.role is sig.Role.CALLER:
            await self._caller_frame(session, frame)
        else:
            raise sig.RemoteProtocolError(f"a caller may not send {frame.TYPE}")

    def _show_update(self, session: _Session) -> None:
        """Publish the peer's changed state: at once while within UPDATES_SHOWN a second,
        else once, a second later, with whatever it is then (a flood of update frames
        is a handful of events, and the last state is never lost)."""
        if session.update_due is not None:
            return  # already due: it will carry this change too
        now = asyncio.get_running_loop().time()
        shown = session.updates_shown
        wait = 0.0 if len(shown) < UPDATES_SHOWN else shown[0] + 1.0 - now
        call = session.call

        def publish() -> None:
            session.update_due = None
            if call.state is sig.CallState.ENDED:
                return
            shown.append(asyncio.get_running_loop().time())
            self._publish("call.state", {**call.to_json(), "previous": call.state.value})

        if wait <= 0:
            publish()
        else:
            session.update_due = asyncio.get_running_loop().call_later(wait, publish)

    async def _caller_frame(self, session: _Session, frame: sig.Frame) -> None:
        call = session.call
        if isinstance(frame, sig.Ringing):
            call.fire(sig.Trigger.RINGING)
        elif isinstance(frame, sig.Reject):
            call.fire(sig.Trigger.REJECT, result=_REJECT_RESULTS[frame.reason], detail=frame.reason)
        elif isinstance(frame, sig.Accept):
            if not call.machine.can(sig.Trigger.ANSWER):
                raise sig.RemoteProtocolError(f"accept in state {call.state.value}")
            try:
                await call.accept_answer(frame.sdp)
            except sdp.SdpError as exc:
                self.refused_frames += 1
                await self._send(session, sig.Hangup(call.id, "failed", f"bad answer: {exc}"))
                call.fire(sig.Trigger.FAIL, result="failed", detail=f"bad answer SDP: {exc}")
                return
            call.fire(sig.Trigger.ANSWER)
            self._spawn(session, self._media_watch(session))
        else:
            raise sig.RemoteProtocolError(f"a callee may not send {frame.TYPE}")

    # -- incoming -----------------------------------------------------------------------
    async def _incoming(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._take_call(reader, writer)
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _first_frame(
        self, reader: asyncio.StreamReader, conn: sig.SignalingConnection
    ) -> sig.Frame:
        async with asyncio.timeout(FIRST_FRAME_TIMEOUT):
            while (frame := conn.next_event()) is None:
                data = await reader.read(65536)
                if not data:
                    raise sig.RemoteProtocolError("stream closed before a call frame")
                conn.receive_data(data)
        return frame

    async def _take_call(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = peer_address(writer.transport)
        if peer is None:
            return
        key = peer_key(writer.transport) or await self.node.key_for_address(peer)
        if key is None or address_for_key(key) != peer:
            log.warning("call from %s refused: its key is unknown", peer)
            return
        if not self._handshakes.acquire(peer):
            log.info("call from %s refused: too many unfinished signaling streams", peer)
            return
        conn = sig.SignalingConnection()
        try:
            frame = await self._first_frame(reader, conn)
            if not isinstance(frame, sig.CallFrame):
                raise sig.RemoteProtocolError(f"expected a call frame, got {frame.TYPE}")
        except (sig.RemoteProtocolError, TimeoutError, ConnectionError, OSError) as exc:
            self.refused_frames += 1
            log.info("signaling from %s refused: %s", peer, exc)
            with contextlib.suppress(Exception):
                zero = "0" * 32
                writer.write(sig.encode_frame(sig.Hangup(zero, "failed", str(exc)[:200])))
            return
        finally:
            self._handshakes.release(peer)
        from apps.video.call import Call  # aiortc: loaded with the first call

        call = Call(
            self.node,
            sig.Role.CALLEE,
            bytes(key),
            peer,
            call_id=frame.call,
            media=frame.media,
            remote_name=frame.name,
            on_state=self._on_state,
        )
        session = _Session(call, writer, reader)
        reason = await self._screen(call)
        if reason is None and not await self._take_offer(session, frame):
            return
        # No await from this check to the registration below: two calls arriving
        # together cannot both ring.
        if reason is None and (self.current() is not None or call.id in self._sessions):
            reason = "busy"
        if reason is None and self._rang_out(call.peer_key):
            reason = "busy"  # ringing again and again: not for ever
            log.info("call from %s refused: %d unanswered rings already", peer, RINGS_UNANSWERED)
        if reason is not None:
            await self._refuse(session, reason)
            return
        self._sessions[call.id] = session
        await self._send(session, sig.Ringing(call.id))
        self._publish("call.incoming", call.to_json())
        self.ringer.incoming(call)
        await self._drive(session, conn)

    def _rang_out(self, key: bytes) -> bool:
        """True while ``key`` has rung RINGS_UNANSWERED times unanswered in RINGS_WINDOW."""
        ends = self._unanswered.get(key)
        now = asyncio.get_running_loop().time()
        return ends is not None and len(ends) == RINGS_UNANSWERED and now - ends[0] < RINGS_WINDOW

    def _note_unanswered(self, key: bytes) -> None:
        ends = self._unanswered.pop(key, None) or deque(maxlen=RINGS_UNANSWERED)
        ends.append(asyncio.get_running_loop().time())
        self._unanswered[key] = ends
        while len(self._unanswered) > RINGS_PEERS:
            self._unanswered.popitem(last=False)

    async def _take_offer(self, session: _Session, frame: sig.CallFrame) -> bool:
        """Validate and keep the caller's offer; False (the call failed) if refused."""
        call = session.call
        try:
            session.offer = sdp.incoming(frame.sdp, call.peer_address)
            if session.offer.media != frame.media:
                raise sdp.SdpError("the SDP's media differ from the call frame's")
        except sdp.SdpError as exc:
            self.refused_frames += 1
            await self._send(session, sig.Hangup(call.id, "failed", f"bad offer: {exc}"))
            call.fire(sig.Trigger.FAIL, result="failed", detail=f"bad offer SDP: {exc}")
            if self._refusals.allow(call.peer_key):
                await self._finish(session)  # logged, at most REFUSALS_LOGGED a minute
            else:
                await call.close()
            return False
        return True

    async def _refuse(self, session: _Session, reason: str) -> None:
        call = session.call
        await self._send(session, sig.Reject(call.id, reason))
        result = "missed" if reason == "busy" else "not-a-contact"
        call.fire(sig.Trigger.REJECT, result=result, detail=f"refused: {reason}")
        if self._refusals.allow(call.peer_key):
            await self._finish(session)  # logged and announced
        else:
            await call.close()  # a peer ringing over and over is not logged each time

    # -- outgoing -----------------------------------------------------------------------
    async def place(self, contact: str, options: CallOptions) -> Call:
        if self.current() is not None:
            raise UsageError("already in a call: hang up first (mesh call hangup)")
        key, alias = await self._resolve(contact)
        if key == self.node.key:
            raise UsageError("that is this node's own key")
        from apps.video.call import Call  # aiortc: loaded with the first call

        call = Call(self.node, sig.Role.CALLER, key, address_for_key(key), on_state=self._on_state)
        if options.audio_only:
            call.media = ("audio",)
        call.alias = alias
        session = _Session(call)
        try:
            offer = await call.offer(options)
        except BaseException:
            await call.close()
            raise
        if self.current() is not None:  # a call came in while the offer was made
            await call.close()
            raise UsageError("a call came in meanwhile: answer or reject it first")
        self._sessions[call.id] = session
        self._own(self._dial(session, offer))
        return call

    async def _dial(self, session: _Session, offer: str) -> None:
        call = session.call
        try:
            session.reader, session.writer = await self.node.open_connection(
                call.peer_address, self.config.port, timeout=self.config.dial_timeout
            )
        except (MeshError, OSError, TimeoutError) as exc:
            why = str(exc) or f"no answer on the mesh within {self.config.dial_timeout:g} s"
            call.fire(sig.Trigger.FAIL, result="failed", detail=f"cannot reach the callee: {why}")
            await self._finish(session)
            return
        try:
            name = self.config.name
            await self._send(session, sig.CallFrame(call.id, offer, call.media, name))
            await self._drive(session, sig.SignalingConnection())
        finally:
            session.writer.close()

    # -- the end ------------------------------------------------------------------------
    async def _finish(self, session: _Session) -> None:
        call = session.call
        if call.summary is not None:
            return
        summary = await call.finish()
        rang = self._sessions.pop(call.id, None) is session and call.role is sig.Role.CALLEE
        if rang and call.answered_at is None:
            self._note_unanswered(call.peer_key)
        self._finished[call.id] = summary
        while len(self._finished) > FINISHED_KEPT:
            self._finished.popitem(last=False)
        if self.log is not None:
            try:
                await self.log.add(summary)
            except Exception as exc:  # the call is over either way
                log.error("call log write failed: %s", exc)
        if summary["result"] in ("missed", "no-answer"):
            self._publish("call.missed", summary)
        self._publish("call.ended", summary)

    # -- control methods ----------------------------------------------------------------
    def _session(self, params: dict[str, Any]) -> _Session:
        wanted = params.get("id")
        for session in self._sessions.values():
            if session.call.state is sig.CallState.ENDED:
                continue
            if wanted is None or session.call.id == wanted:
                return session
        raise UsageError("no such call in progress" if wanted else "no call in progress")

    async def _m_info(self, params: dict[str, Any]) -> dict[str, Any]:
        return {**self.endpoints(), "port": self.port, "address": str(self.node.address)}

    async def _m_place(self, params: dict[str, Any]) -> dict[str, Any]:
        contact = params.get("contact")
        if not isinstance(contact, str) or not contact:
            raise UsageError("call.place needs a contact (alias, key or key@mesh)")
        from apps.video.call import CallOptions

        call = await self.place(contact, CallOptions.from_params(params))
        return call.to_json()

    def _ringing(self, params: dict[str, Any]) -> _Session:
        session = self._session(params)
        call = session.call
        if call.role is not sig.Role.CALLEE or call.state is not sig.CallState.RINGING:
            raise UsageError("no incoming call is ringing")
        return session

    async def _m_answer(self, params: dict[str, Any]) -> dict[str, Any]:
        from apps.video.call import CallOptions

        return await self.answer_with(params, CallOptions.from_params(params))

    async def answer_with(self, params: dict[str, Any], options: CallOptions) -> dict[str, Any]:
        """``call.answer`` with options built in this process (the page's tracks)."""
        session = self._ringing(params)
        call = session.call
        assert session.offer is not None
        if session.answering:
            raise UsageError("this call is already being answered")
        session.answering = True
        try:
            answer = await call.answer(session.offer, options)
        except UsageError:  # a source that does not open: the call keeps ringing
            session.answering = False
            await call.close()
            raise
        except Exception as exc:
            if call.state is not sig.CallState.ENDED:
                raise
            answer = ""
            log.info("call %s ended while being answered: %s", call.id[:8], exc)
        if call.state is sig.CallState.ENDED:  # the caller gave up meanwhile
            await call.close()
            raise UsageError(f"the call ended before it was answered ({call.result})")
        await self._send(session, sig.Accept(call.id, answer))
        call.fire(sig.Trigger.ANSWER)
        self._spawn(session, self._media_watch(session))
        return call.to_json()

    async def _m_reject(self, params: dict[str, Any]) -> dict[str, Any]:
        session = self._ringing(params)
        call = session.call
        await self._send(session, sig.Reject(call.id, "declined"))
        call.fire(sig.Trigger.REJECT, result="rejected", detail="declined")
        return call.to_json()

    async def _m_hangup(self, params: dict[str, Any]) -> dict[str, Any]:
        session = self._session(params)
        call = session.call
        if call.role is sig.Role.CALLEE and call.state is sig.CallState.RINGING:
            return await self._m_reject(params)
        # Hung up here at once, whatever the stream to the peer does (its drain could
        # wait up to idle_timeout); the frame follows as the stream allows, and a peer
        # that does not get it ends the call when our media stop (lost_after).
        self._write_now(session, sig.Hangup(call.id))
        if call.answered_at is None:
            call.fire(sig.Trigger.HANGUP, result="no-answer", detail="cancelled")
        else:
            call.fire(sig.Trigger.HANGUP)
        writer = session.writer
        if writer is not None and not writer.is_closing():
            with contextlib.suppress(ConnectionError, OSError, TimeoutError, RuntimeError):
                async with asyncio.timeout(HANGUP_FLUSH):
                    await writer.drain()
        return call.to_json()

    def _write_now(self, session: _Session, frame: sig.Frame) -> None:
        writer = session.writer
        if writer is not None and not writer.is_closing():
            with contextlib.suppress(ConnectionError, OSError, RuntimeError):
                writer.write(sig.encode_frame(frame))

    async def _m_update(self, params: dict[str, Any]) -> dict[str, Any]:
        session = self._session(params)
        changed = session.call.update(
            audio_muted=params.get("audio_muted"),
            video_off=params.get("video_off"),
            source=params.get("source"),
        )
        if changed:
            await self._send(session, sig.Update(session.call.id, **changed))
            # Every page and UI on this node shows the same state (a second tab, the CLI).
            call = session.call
            self._publish("call.state", {**call.to_json(), "previous": call.state.value})
        return {"changed": changed, **session.call.to_json()}

    async def _m_status(self, params: dict[str, Any]) -> dict[str, Any]:
        wanted = params.get("id")
        if wanted is not None and wanted in self._finished:
            return self._finished[wanted]
        if wanted is not None and wanted in self._sessions:  # ended, summary on its way
            ending = self._sessions[wanted].call
            if ending.state is sig.CallState.ENDED:
                return {**ending.to_json(), "final": False}
        try:
            session = self._session(params)
        except UsageError:
            return {"state": "idle"}
        call = session.call
        stats = await call.stats() if params.get("stats", True) else None
        return {**call.to_json(), "stats": stats, "setup_s": call.setup_s()}

    async def _m_stats(self, params: dict[str, Any]) -> dict[str, Any]:
        return await self._session(params).call.stats()

    async def _m_page(self, params: dict[str, Any]) -> dict[str, Any]:
        """The call page's URL with its token (the control socket is the owner's alone);
        with ``contact``, a URL preset on it (the person presses Call: a URL never dials)."""
        if self.page is None:
            raise UsageError('the call page is off ([video] page = "off")')
        if params.get("new_token"):
            await self.page.new_token()
        contact = params.get("contact")
        key = None
        if contact:
            found: Any = await self._resolve(str(contact))
            key = (found[0] if isinstance(found, tuple) else found).hex()
        return {"url": self.page.url_with_token(key), "page": self.page.url}

    async def _m_log(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        assert self.log is not None
        limit = int(params.get("limit", 50))
        return await self.log.recent(limit)


def create_service(node: Node, config: Mapping[str, Any], data_dir: Path) -> CallService:
    return CallService(node, VideoConfig.from_mapping(config), data_dir)
