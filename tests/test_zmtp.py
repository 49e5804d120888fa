"""The peers' ZMTP DEALER: its parser (property tests) and the real thing against
libzmq's ROUTER, the broker's socket."""

from __future__ import annotations

import select
import time

import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from broker import protocol
from broker.curve import generate
from broker.peer import BrokerError, Peer
from broker.zmtp import GREETING, READY, Decoder, Malformed, ZmtpDealer, ZmtpError, command, encode, tcp_address
from tests.conftest import SLOW_S, free_port, wait_port
from tests.test_broker import message

SERVER_GREETING = GREETING[:32] + b"\x01" + GREETING[33:]  # as-server 1, as libzmq's ROUTER sends it
parts_st = st.lists(st.binary(max_size=600), min_size=1, max_size=4)


def decode_all(dec: Decoder) -> list:
    out = []
    while (item := dec.next()) is not None:
        out.append(item)
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(parts_st, max_size=6), st.data())
def test_any_split_of_the_stream_gives_back_the_messages(messages, data):
    stream = SERVER_GREETING + READY + b"".join(encode(m) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    dec, items = Decoder(), []
    for a, b in zip([0, *cuts], [*cuts, len(stream)]):
        dec.feed(stream[a:b])
        items += decode_all(dec)
    assert items[0][:2] == ("command", b"READY")
    assert [parts for kind, parts in items[1:]] == messages
    assert all(kind == "message" for kind, _ in items[1:])


def test_frames_are_what_zmtp_and_the_broker_count():
    # hand-built from RFC 37: flags, 1-byte size up to 255, else LONG and an 8-byte size
    assert encode([b"ab", b"c"]) == b"\x01\x02ab\x00\x01c"
    assert encode([b"x" * 256]) == b"\x02" + (256).to_bytes(8, "big") + b"x" * 256
    for size in (0, 255, 256, 70000):
        assert len(encode([b"y" * size])) - size == protocol.zmtp_framing(size)
    assert command(b"PONG", b"ctx") == b"\x04\x08\x04PONGctx"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_after_the_greeting_is_a_typed_error_or_a_wait(junk):
    dec = Decoder(max_frame=1000)
    dec.feed(SERVER_GREETING + junk)
    try:
        decode_all(dec)
    except Malformed:
        pass


@pytest.mark.parametrize("stream, error, words", [
    (b"HTTP/1.1 200 OK\r\n" + bytes(60), Malformed, "bad signature"),
    (SERVER_GREETING[:12] + b"CURVE".ljust(20, b"\0") + SERVER_GREETING[32:], ZmtpError, "--keys"),
    (SERVER_GREETING[:10] + b"\x02\x00" + SERVER_GREETING[12:], ZmtpError, "ZMTP 2.0"),
    (SERVER_GREETING + b"\x08\x00", Malformed, "reserved bits"),
    (SERVER_GREETING + b"\x02" + (2000).to_bytes(8, "big"), Malformed, "over the 1000-byte limit"),
    (SERVER_GREETING + b"\x05\x05\x04PING", Malformed, "command"),  # a command can't be multi-part
])
def test_a_broken_stream_says_what_broke(stream, error, words):
    dec = Decoder(max_frame=1000)
    dec.feed(stream)
    with pytest.raises(error, match=words):
        decode_all(dec)


@pytest.mark.parametrize("endpoint, ok", [
    ("tcp://127.0.0.1:5555", ("127.0.0.1", 5555)), ("tcp://broker:80", ("broker", 80)),
    ("tcp://[::1]:7", ("::1", 7)), ("tcp://host", None), ("tcp://:5", None), ("tcp://h:0", None),
    ("tcp://h:99999", None), ("tcp://h:x", None), ("ipc:///tmp/s", None),
])
def test_endpoints(endpoint, ok):
    if ok:
        assert tcp_address(endpoint) == ok
    else:
        with pytest.raises(ValueError):
            tcp_address(endpoint)


def router(port: int, **opts) -> zmq.Socket:
    s = zmq.Context.instance().socket(zmq.ROUTER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.ROUTER_MANDATORY, 1)
    for opt, val in opts.items():
        s.setsockopt(getattr(zmq, opt), val)
    s.bind(f"tcp://127.0.0.1:{port}")
    return s


def drive_until_routed(d: ZmtpDealer, r: zmq.Socket) -> None:
    """Run the dealer (it connects, greets and sends inside recv) until the router has a
    message: nothing comes back to the dealer meanwhile."""
    deadline = time.monotonic() + SLOW_S
    while not r.poll(0):
        assert time.monotonic() < deadline, f"nothing reached the router in {SLOW_S} s"
        assert d.recv(0.05) is None


def test_talks_to_libzmq_router_both_ways_and_waits_for_it():
    port = free_port()
    d = ZmtpDealer(f"tcp://127.0.0.1:{port}")  # nothing listens yet: held, sent once it does
    d.send([b"first", b""])
    assert d.recv(0.3) is None and d.sock is None
    r = router(port)
    try:
        drive_until_routed(d, r)  # the connection and handshake happen in here
        routing, *got = r.recv_multipart()
        assert got == [b"first", b""]
        for parts in ([b"a"], [b"", b"x" * 300, b"b"], [b"y" * 100_000]):
            d.send(parts)
            assert r.recv_multipart()[1:] == parts
            r.send_multipart([routing, *parts])
            assert d.recv(30) == parts
        r.send_multipart([routing, b"waiting"])
        assert select.select([d.sock], [], [], SLOW_S)[0], "the router's message never reached the socket"
        assert d.recv(0) == [b"waiting"]  # already here: a zero timeout still returns it
        assert d.recv(0) is None
    finally:
        d.close()
        r.close()


def test_reconnects_to_a_restarted_router():
    port = free_port()
    r = router(port)
    d = ZmtpDealer(f"tcp://127.0.0.1:{port}")
    try:
        d.send([b"one"])
        drive_until_routed(d, r)
        assert r.recv_multipart()[1:] == [b"one"]
        r.close()
        deadline = time.monotonic() + SLOW_S
        while d.sock is not None and time.monotonic() < deadline:
            d.recv(0.05)  # sees the close
        assert d.sock is None
        r = router(port)
        d.send([b"two"])  # held until the new broker is there and ready
        drive_until_routed(d, r)
        assert r.recv_multipart()[1:] == [b"two"]
    finally:
        d.close()
        r.close()


def test_answers_libzmq_heartbeats_so_the_router_keeps_the_connection():
    port = free_port()
    # a PING every 50 ms, each to be answered within 1 s: time enough for a loaded machine
    r = router(port, HEARTBEAT_IVL=50, HEARTBEAT_TIMEOUT=1000)
    d = ZmtpDealer(f"tcp://127.0.0.1:{port}")
    try:
        d.send([b"hello"])
        drive_until_routed(d, r)
        routing = r.recv_multipart()[0]
        deadline = time.monotonic() + 3.0  # three timeouts' worth of PINGs
        while time.monotonic() < deadline:
            assert d.recv(0.05) is None
        assert d.sock is not None
        r.send_multipart([routing, b"still here"])  # ROUTER_MANDATORY: raises if the connection went
        assert d.recv(30) == [b"still here"]
    finally:
        d.close()
        r.close()


def test_a_curve_broker_is_named_at_once_not_waited_for(procs, tmp_path):
    generate(tmp_path / "keys")
    port = free_port()
    ep = f"tcp://127.0.0.1:{port}"
    procs.start("broker", "broker", "serve", "--bind", ep, "--keys", str(tmp_path / "keys"))
    wait_port(port)
    t = time.monotonic()
    with pytest.raises(BrokerError, match="another mechanism than NULL.*--keys"):
        Peer(ep, b"agent", timeout_s=2 * SLOW_S)
    assert time.monotonic() - t < SLOW_S  # named as the handshake fails, not after the timeout


def test_libzmq_dealer_still_serves_on_request(procs, monkeypatch):
    ep = procs.broker()
    monkeypatch.setenv("DDCL_PEER_SOCKET", "libzmq")
    with Peer(ep, b"agent") as a0:
        monkeypatch.delenv("DDCL_PEER_SOCKET")
        with Peer(ep, b"agent") as a1:
            assert type(a0.sock).__name__ == "LibzmqDealer" and isinstance(a1.sock, ZmtpDealer)
            data = message(0, [1, 2, 3])
            a0.broadcast_frame(data)
            assert a1.recv(5) == [data]


def test_holds_sends_for_an_absent_broker_up_to_a_limit_then_drops_and_counts(monkeypatch):
    import broker.zmtp as zmtp

    monkeypatch.setattr(zmtp, "MAX_QUEUED_BYTES", 100)
    port = free_port()
    d = ZmtpDealer(f"tcp://127.0.0.1:{port}")
    for k in range(10):
        d.send([b"%d" % k, bytes(20)])  # 2 + 1 and 2 + 20 bytes on the wire: four fit in 100
    assert d.dropped == 6
    r = router(port)
    try:
        drive_until_routed(d, r)  # connects and sends what it held
        got = [r.recv_multipart()[1] for _ in range(4) if r.poll(30_000)]
        assert got == [b"0", b"1", b"2", b"3"] and r.poll(200) == 0
    finally:
        d.close()
        r.close()
