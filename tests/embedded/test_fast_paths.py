"""The fast paths for established sessions, beside the general paths they shortcut:
same bytes on the wire, same results, and back to the general path when anything they
cached changes. Sans-IO (fake clocks, in-memory links)."""

from __future__ import annotations

from core.embedded.session import SessionType
from core.embedded.wire import PacketType, Traffic
from tests.embedded.test_net_sansio import Lab
from tests.embedded.test_session_manager import make_pair


def test_seal_and_receive_carry_traffic_of_an_established_session_both_ways() -> None:
    p = make_pair()
    assert p.a.seal(p.b_id.public_key, b"x") is None  # no session: use write_to
    p.a.write_to(p.b_id.public_key, b"open")
    p.pump()
    for n in range(5):
        packet = p.a.seal(p.b_id.public_key, b"a%d" % n)
        assert packet is not None and packet[0] == SessionType.TRAFFIC
        assert p.a.pending == 0  # nothing queued on the fast path
        assert p.b.receive(p.a_id.public_key, packet) == b"a%d" % n
        assert p.b.pending == 0
    # the general path reads what the fast path wrote, and the other way round
    p.a.write_to(p.b_id.public_key, b"general")
    p.pump()
    assert p.delivered["b"] == [b"open", b"general"]
    back = p.b.seal(p.a_id.public_key, b"reply")
    assert back is not None
    p.a.handle_data(p.b_id.public_key, back)
    p.collect("a")
    assert p.delivered["a"] == [b"reply"]


def test_the_fast_path_drops_replays_and_resyncs_on_garbage_like_the_general_path() -> None:
    p = make_pair()
    p.a.write_to(p.b_id.public_key, b"open")
    p.pump()
    packet = p.a.seal(p.b_id.public_key, b"once")
    assert packet is not None
    assert p.b.receive(p.a_id.public_key, packet) == b"once"
    assert p.b.receive(p.a_id.public_key, packet) is None
    assert p.b.counters["replayed"] == 1
    fresh = p.a.seal(p.b_id.public_key, b"next")
    assert fresh is not None
    assert p.b.receive(p.a_id.public_key, fresh[:-1] + bytes([fresh[-1] ^ 1])) is None
    assert p.b.counters["undecryptable"] == 1
    assert [data[0] for data in p.collect("b")] == [SessionType.INIT]  # asks to resync
    assert p.b.receive(p.a_id.public_key, b"") is None


def test_seal_keeps_working_across_key_ratchets() -> None:
    p = make_pair()
    p.a.write_to(p.b_id.public_key, b"open")
    p.pump()
    for step in range(8):
        p.clock.advance(20)  # past the 60 s rotation interval twice: the keys ratchet
        for side, other in (("a", "b"), ("b", "a")):
            message = b"%s%d" % (side.encode(), step)
            packet = p.manager(side).seal(p.key(other), message)
            assert packet is not None
            assert p.manager(other).receive(p.key(side), packet) == message
        p.pump()
    assert p.a.counters == p.b.counters == {}  # nothing dropped on the way


def _queued(lab: Lab, a: int, b: int) -> bytes:
    """Everything router ``a`` has for router ``b``, taken off the link."""
    for x, sx, y, sy in lab.links:
        if (x, y) == (a, b):
            return sx.data_to_send(1 << 30)
        if (y, x) == (a, b):
            return sy.data_to_send(1 << 30)
    raise AssertionError("no such link")


def chain() -> Lab:
    lab = Lab(3)  # router 0 has the lowest key: the root, between 1 and 2
    lab.connect(1, 0)
    lab.connect(0, 2)
    lab.pump()
    for _ in range(4):
        lab.tick()
    for a, b in ((1, 2), (2, 1)):
        lab.routers[a].send(lab.routers[b].key, b"lookup")  # path found, packet sent
        lab.pump()
        lab.routers[a].send(lab.routers[b].key, b"routed")  # on the route now cached
        lab.pump()
        assert lab.inbox[b] == [(lab.routers[a].key, b"lookup"), (lab.routers[a].key, b"routed")]
    return lab


def test_own_traffic_on_a_cached_route_is_framed_as_the_general_path_frames_it() -> None:
    lab = chain()
    src, dst = lab.routers[1], lab.routers[2]
    info = src.pathfinder.paths[dst.key]
    general = Traffic((), (), src.key, dst.key, 2**64 - 1, b"payload")
    src.pathfinder.handle_own_traffic(general, lab.clock.now)  # the general path
    expected = _queued(lab, 1, 0)
    src.send(dst.key, b"payload")  # the fast path (route cached by chain()'s packet)
    assert src._routes[dst.key].info is info
    assert _queued(lab, 1, 0) == expected
    assert expected[1] == PacketType.TRAFFIC  # one short frame: length, type, body
    assert info.traffic == b"payload"  # the pathfinder's traffic cache, as before


def test_a_cached_route_follows_a_tree_change() -> None:
    lab = chain()
    src, dst = lab.routers[1], lab.routers[2]
    route = src._routes[dst.key]
    lab.connect(1, 2)  # a direct link: the tree changes, so does the best next hop
    for _ in range(4):
        lab.tick()
    src.send(dst.key, b"direct")
    lab.pump()
    assert lab.inbox[2][-1] == (src.key, b"direct")
    assert src._routes[dst.key] is not route
    lab.disconnect(1, 2)
    lab.disconnect(1, 0)
    for _ in range(4):
        lab.tick()
    before = len(lab.inbox[2])
    src.send(dst.key, b"nowhere")  # no link at all: nothing cached is used
    lab.pump()
    assert len(lab.inbox[2]) == before


def test_traffic_for_us_at_our_coordinates_is_delivered_and_other_traffic_forwarded() -> None:
    lab = chain()
    for n in range(3):
        lab.routers[1].send(lab.routers[2].key, b"%d" % n)
        lab.routers[2].send(lab.routers[1].key, b"back%d" % n)
    lab.pump()
    assert [d for _, d in lab.inbox[2]][2:] == [b"0", b"1", b"2"]
    assert [d for _, d in lab.inbox[1]][2:] == [b"back0", b"back1", b"back2"]
    assert lab.inbox[0] == []  # the root forwarded, delivered nothing
