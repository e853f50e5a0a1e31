"""Sans-IO: a peer loses its session state (it restarted: a new session manager with the
same identity) while the other side still holds their session.

Upstream (ironwood) answers traffic for an unknown session with an init of keys it forgets
at once: the sender adopts keys nobody holds and heals only once a later init carries a
newer whole-second timestamp, so every packet in between is lost (the outside trial saw
streams come up 13-40 s after the restart). Here the restarted side keeps the keys of its
answer, the stale side starts a new session (and reports it opened), and the packet the
restarted side could not read is sent again in the new session: one round trip.
"""

from __future__ import annotations

from core.embedded.session import SessionConfig, SessionManager, SessionType
from core.identity import Identity
from tests.embedded.test_session_manager import Clock, Pair


def _pair(config: SessionConfig | None = None) -> Pair:
    clock = Clock()
    a_id, b_id = Identity.generate(), Identity.generate()
    return Pair(
        clock,
        a_id,
        b_id,
        SessionManager(a_id.seed, clock=clock.mono, wallclock=clock.unix, config=config),
        SessionManager(b_id.seed, clock=clock.mono, wallclock=clock.unix, config=config),
    )


def _established(config: SessionConfig | None = None) -> Pair:
    pair = _pair(config)
    pair.a.write_to(pair.key("b"), b"hello")
    pair.pump()
    pair.b.write_to(pair.key("a"), b"hi")
    pair.pump()
    assert pair.delivered == {"a": [b"hi"], "b": [b"hello"]}
    pair.a.take_opened()
    pair.b.take_opened()
    pair.delivered = {"a": [], "b": []}
    return pair


def _restart_b(pair: Pair, config: SessionConfig | None = None) -> None:
    pair.b = SessionManager(
        pair.b_id.seed, clock=pair.clock.mono, wallclock=pair.clock.unix, config=config
    )


def test_the_first_packet_after_a_peer_restart_arrives_within_one_round_trip() -> None:
    pair = _established()
    pair.clock.advance(20.0)
    _restart_b(pair)
    pair.wire.clear()
    pair.a.write_to(pair.key("b"), b"syn")
    pair.pump()
    assert pair.delivered["b"] == [b"syn"]
    kinds = [(src, data[0]) for src, data in pair.wire]
    # A's stale traffic, B's answering init, A's ack and the packet sent again.
    assert kinds[:4] == [
        ("a", SessionType.TRAFFIC),
        ("b", SessionType.INIT),
        ("a", SessionType.ACK),
        ("a", SessionType.TRAFFIC),
    ]
    assert pair.a.counters["peer_restarted"] == 1


def test_the_stale_side_reports_a_new_session_and_both_directions_work() -> None:
    pair = _established()
    pair.clock.advance(20.0)
    (before,) = pair.a.sessions()
    _restart_b(pair)
    pair.a.write_to(pair.key("b"), b"one")
    pair.pump()
    assert pair.a.take_opened() == [pair.key("b")]  # the node's session.up for B
    (after,) = pair.a.sessions()
    assert before.uptime >= 20.0 and after.uptime < 1.0  # a new session, not the stale one
    for n in range(5):
        pair.clock.advance(0.1)
        pair.a.write_to(pair.key("b"), b"a%d" % n)
        pair.b.write_to(pair.key("a"), b"b%d" % n)
        pair.pump()
    assert pair.delivered["b"] == [b"one"] + [b"a%d" % n for n in range(5)]
    assert pair.delivered["a"] == [b"b%d" % n for n in range(5)]
    assert pair.a.take_opened() == []


def test_a_lost_answer_is_sent_again_without_waiting_for_the_next_write() -> None:
    pair = _established()
    pair.clock.advance(20.0)
    _restart_b(pair)
    pair.a.write_to(pair.key("b"), b"syn")
    for data in pair.collect("a"):
        pair.b.handle_data(pair.key("a"), data)
    assert [d[0] for d in pair.collect("b")] == [SessionType.INIT]  # lost on the way
    retry_at = pair.b.next_retry()
    assert retry_at is not None and retry_at - pair.clock.now <= 0.3
    pair.b.retry()
    assert pair.collect("b") == []  # not due yet
    pair.clock.advance(0.3)
    pair.b.retry()
    pair.pump()  # the second answer gets through: the first packet still arrives
    assert pair.delivered["b"] == [b"syn"]
    assert pair.b.counters["answer_retried"] == 1
    pair.clock.advance(5.0)
    pair.b.retry()
    assert pair.collect("b") == [] and pair.b.next_retry() is None  # session open: done


def test_answer_retries_stop_after_the_configured_delays() -> None:
    config = SessionConfig(answer_retries=(0.25, 0.5))
    pair = _established(config)
    _restart_b(pair, config)
    stranger = Identity.generate().public_key
    pair.b.handle_data(stranger, b"\x03" * 80)  # traffic for a session B does not have
    sent = len(pair.b.events())
    for _ in range(10):
        pair.clock.advance(0.5)
        pair.b.retry()
        sent += len(pair.b.events())
    assert sent == 3  # the answer and two retries, then nothing
    assert pair.b.next_retry() is None


def test_old_packets_are_not_sent_again_after_a_restart() -> None:
    pair = _established()
    pair.clock.advance(10.0)  # well past resend_window since "hello"
    _restart_b(pair)
    pair.b.write_to(pair.key("a"), b"back")  # B opens the session itself
    pair.pump()
    assert pair.delivered["a"] == [b"back"]
    assert pair.delivered["b"] == []  # "hello" is not delivered a second time
    assert pair.a.take_opened() == [pair.key("b")]


def test_a_repeated_init_of_one_handshake_does_not_reset_the_session() -> None:
    pair = _pair()
    pair.a.write_to(pair.key("b"), b"x1")
    pair.clock.advance(1.0)
    pair.a.write_to(pair.key("b"), b"x2")  # a second init with the same keys, newer stamp
    first, second = pair.collect("a")
    pair.b.handle_data(pair.key("a"), first)
    pair.b.handle_data(pair.key("a"), second)
    assert pair.b.counters["peer_restarted"] == 0
    assert pair.b.take_opened() == [pair.key("a")]
    pair.pump()
    assert pair.delivered["b"] == [b"x2"]


def test_a_restart_within_the_same_second_heals_on_the_next_second() -> None:
    # Inits are stamped in whole seconds (the wire's rule, kept for interop): an init no
    # newer than the stale session's is ignored, so the same-second case waits a second.
    pair = _established()
    pair.clock.advance(0.1)
    _restart_b(pair)
    pair.a.write_to(pair.key("b"), b"early")
    pair.pump()
    assert pair.delivered["b"] == []
    pair.clock.advance(1.0)
    pair.b.retry()
    pair.pump()
    pair.a.write_to(pair.key("b"), b"later")
    pair.pump()
    assert b"later" in pair.delivered["b"]
