"""The broker against a hostile client on the same network: a real broker process and
raw libzmq DEALERs that send what no well-behaved peer would. No input ends it, bloats
it, skews its per-step figures, or costs a good peer a message."""

from __future__ import annotations

import os
import socket

import zmq

from broker import protocol
from broker.peer import Peer
from channel import codecs, frame
from tests.conftest import free_port, stats, until, wait_port

RICE = codecs.get("rice")
# a ZMTP 3.0 greeting offering NULL: a connection that got past TCP and says no more
ZMTP_NULL_GREETING = b"\xff" + bytes(8) + b"\x7f\x03\x00" + b"NULL".ljust(20, b"\0") + bytes(32)


def message(sender: int, values) -> bytes:
    return frame.pack(kind=frame.Kind.MESSAGE, sender=sender, codec=RICE.wire_id, count=len(values),
                      payload=RICE.encode(values))


class Raw:
    """A bare libzmq DEALER: sends anything, reads replies with a deadline."""

    def __init__(self, endpoint: str):
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def send(self, *parts: bytes) -> None:
        self.sock.send_multipart(list(parts))

    def reply(self, timeout_s: float = 5.0) -> list[bytes] | None:
        while self.sock.poll(int(timeout_s * 1000)):
            parts = self.sock.recv_multipart()
            if parts != [protocol.HEARTBEAT]:
                return parts
        return None

    def close(self) -> None:
        self.sock.close(0)


def broker(procs, *extra: str) -> str:
    port = free_port()
    procs.start("broker", "broker", "serve", "--bind", f"tcp://127.0.0.1:{port}", *extra)
    wait_port(port)
    return f"tcp://127.0.0.1:{port}"


def alive_and_serving(procs, ep: str) -> None:
    """The broker process lives, and two new agents still exchange a message."""
    assert procs.procs["broker"].poll() is None, procs.log("broker")
    with Peer(ep, b"agent") as a, Peer(ep, b"agent") as b:
        data = message(protocol.agent_index(a.id), [1, 0, -1])
        a.broadcast_frame(data)
        assert b.recv(5) == [data]


def test_hostile_registrations_get_short_errors_and_the_broker_lives(procs):
    ep = broker(procs)
    raw = Raw(ep)
    cases = [
        (b"world", b"\xc5"),  # not UTF-8: once ended the broker in its reply path
        (b"agent", b"agent-" + b"9" * 5000),  # once ended it in int(): over Python's digit limit
        (b"agent", b"agent-007"),  # not canonical: would be agent-7 in a frame's sender byte
        (b"agent", b"agent-255"),  # no sender byte left for it: 0xFF is the world's
        (b"sync", b"rogue"),
        (b"cli", b"cli-" + b"x" * 100_000),
        (b"wizard" * 1000, b""),
    ]
    for role, wanted in cases:
        raw.send(protocol.REGISTER, role, wanted)
        reply = raw.reply()
        assert reply is not None and reply[0] == protocol.ERROR, (role[:20], wanted[:20], reply)
        assert len(reply[1]) < 2 * protocol.ECHO_BYTES
    raw.close()
    s = stats(ep)
    assert s["peers"] == {}
    assert s["refused"]["malformed"]["messages"] == len(cases)
    alive_and_serving(procs, ep)


def test_frames_from_unregistered_connections_never_count_as_agent_messages(procs):
    ep = broker(procs)
    with Peer(ep, b"agent") as a0, Peer(ep, b"agent") as a1:
        good = message(0, [3, 1, 0, 0])
        a0.broadcast_frame(good)
        assert a1.recv(5) == [good]
        before = stats(ep)
        raw = Raw(ep)
        forged = message(0, [9, 9, 9, 9])  # channel-looking, claiming agent-0's sender byte
        for _ in range(200):
            raw.send(forged)
        assert raw.reply()[0] == protocol.ERROR
        a0.broadcast_frame(good)
        assert a1.recv(5) == [good]
        after = until(ep, lambda s: s["refused"]["unregistered"]["messages"] + s["refused"]["ignored"]["messages"] == 200)
        raw.close()
    assert after["totals"]["up"]["message"]["total"] == 2 * before["totals"]["up"]["message"]["total"]
    assert after["messages"] == {"sent": 2, "delivered": 2, "dropped": 0, "rejected": 0}
    refused = after["refused"]  # past its strikes, the connection is ignored: a line of its own
    assert refused["unregistered"]["messages"] == protocol.STRIKES + 1
    assert refused["unregistered"]["messages"] + refused["ignored"]["messages"] == 200
    assert refused["unregistered"]["bytes"] + refused["ignored"]["bytes"] == 200 * (len(forged) + 2)


def test_only_registered_peers_publish_and_retained_topics_are_capped(procs):
    ep = broker(procs)
    raw = Raw(ep)
    for k in range(protocol.STRIKES):  # unregistered: refused, nothing retained
        raw.send(protocol.PUBLISH, b"ddcl/default/junk/%d" % k, b"x" * 1000, b"1")
        assert raw.reply() == [protocol.ERROR, protocol.NOT_REGISTERED]
    raw.close()
    raw = Raw(ep)
    raw.send(protocol.REGISTER, b"cli", b"cli-flood")
    assert raw.reply() == [protocol.REGISTERED, b"cli-flood"]
    for k in range(100):  # registered: the first MAX_RETAINED_PER_PEER are kept
        raw.send(protocol.PUBLISH, b"ddcl/default/flood/%d" % k, b"y" * 100, b"1")
    raw.send(protocol.PUBLISH, b"ddcl/default/big", b"z" * (protocol.MAX_RETAINED_BYTES + 1), b"1")
    sub = Raw(ep)
    sub.send(protocol.SUBSCRIBE, b"ddcl/#")
    got = []
    while (parts := sub.reply(2.0)) is not None:
        got.append(parts)
    topics = [p[1] for p in got if p[0] == protocol.BUS_MESSAGE]
    assert got[0] == [protocol.SUBSCRIBED, b"ddcl/#"]
    assert sum(t.startswith(b"ddcl/default/flood/") for t in topics) == protocol.MAX_RETAINED_PER_PEER
    assert not any(t.startswith(b"ddcl/default/junk/") or t == b"ddcl/default/big" for t in topics)
    raw.close()
    sub.close()
    s = until(ep, lambda s: s["refused"]["unregistered"]["messages"] == protocol.STRIKES)
    assert s["refused"]["malformed"]["messages"] == 100 - protocol.MAX_RETAINED_PER_PEER + 1
    alive_and_serving(procs, ep)


def test_replies_repeat_at_most_a_bounded_part_of_their_input(procs):
    ep = broker(procs)
    with Peer(ep, b"cli") as cli:
        target = "a" * 3_000_000  # once answered with a 3 MB error repeating it
        reply = cli.request([protocol.CONTROL, protocol.pack({"op": protocol.FAULT_ADD, "kind": "skew", "target": target, "value": 1})],
                            protocol.CONTROL_REPLY)
        assert not reply["ok"] and len(reply["error"]) < 3 * protocol.ECHO_BYTES
        reply = cli.request([protocol.CONTROL, protocol.pack({"op": "x" * 1_000_000})], protocol.CONTROL_REPLY)
        assert not reply["ok"] and len(reply["error"]) < 3 * protocol.ECHO_BYTES
    assert len(procs.log("broker")) < 10_000


def test_oversize_messages_are_counted_and_dropped_and_others_go_on(procs):
    ep = broker(procs, "--max-message", "4096")
    raw = Raw(ep)
    raw.send(protocol.STATS, b"x" * 3000, b"y" * 3000)  # over the limit in all, each frame under it
    reply = raw.reply()
    assert reply[0] == protocol.ERROR and b"over the limit of 4096" in reply[1]
    raw.send(protocol.STATS)
    assert raw.reply()[0] == protocol.STATS_REPLY  # the same connection, still served
    raw.close()
    s = stats(ep)
    # the command byte and two 3000-byte frames, with ZMTP's 2 and 2 x 9 bytes of framing
    assert s["refused"]["oversize"] == {"messages": 1, "bytes": 1 + 6000 + 2 + 2 * 9}
    alive_and_serving(procs, ep)


def test_a_connection_past_its_strikes_is_ignored_and_the_rest_served(procs):
    ep = broker(procs)
    with Peer(ep, b"agent") as a0, Peer(ep, b"agent") as a1:
        bad = Raw(ep)
        for _ in range(protocol.STRIKES + 50):
            bad.send(b"\x3f", b"junk")
        good = message(0, [1, 2])
        a0.broadcast_frame(good)
        assert a1.recv(5) == [good]
        errors = []
        while (parts := bad.reply(1.0)) is not None:
            errors.append(parts)
        bad.close()
        s = until(ep, lambda s: s["refused"]["ignored"]["messages"] == 50 - 1)
    assert len(errors) == protocol.STRIKES + 1 and errors[-1][1].startswith(b"too many bad messages")
    assert s["ignored_connections"] == 1
    assert s["refused"]["ignored"]["messages"] == 50 - 1
    assert s["messages"]["delivered"] == 1


def test_a_flood_of_idle_connections_stops_at_the_open_file_cap(procs):
    """Past the cap libzmq accepts no more; the broker holds no more than the cap and
    serves the peers it has, and new ones once the flood ends."""
    ep = broker(procs)
    pid = procs.procs["broker"].pid
    host, port = ep[len("tcp://"):].rsplit(":", 1)
    with Peer(ep, b"agent") as a0, Peer(ep, b"agent") as a1:
        flood = []
        try:
            # past the cap, within libzmq's listen backlog (100): more would wait in connect()
            for _ in range(protocol.MAX_OPEN_FILES + 50):
                s = socket.create_connection((host, int(port)), timeout=10)
                s.sendall(ZMTP_NULL_GREETING)
                flood.append(s)
                for peer in (a0, a1):  # a flood takes seconds: the broker must not give them up
                    peer.heartbeat_if_idle()
            good = message(protocol.agent_index(a0.id), [3, 1])
            a0.broadcast_frame(good)
            assert a1.recv(5) == [good]
            assert procs.procs["broker"].poll() is None, procs.log("broker")
            assert len(os.listdir(f"/proc/{pid}/fd")) <= protocol.MAX_OPEN_FILES
        finally:
            for s in flood:
                s.close()
    alive_and_serving(procs, ep)
