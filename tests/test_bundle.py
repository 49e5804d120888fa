"""The broker's per-recipient bundles: the step's messages go out together, each
recipient gets the others' frames in one message, a missing speaker costs one wait,
and the bytes counted are the bytes a per-message delivery counts."""

from __future__ import annotations

from types import SimpleNamespace

from broker import protocol
from broker import bundle
from broker.bundle import Bundler, Spoken
from broker.peer import Peer
from channel import codecs, frame
from tests.conftest import SLOW_S, free_port, stats, wait_port

RICE = codecs.get("rice")


def spoken(sender: bytes) -> Spoken:
    return Spoken(sender, b"\x40" + sender, 1, 2, 3)


def senders(bundles: list[list[Spoken]]) -> list[list[bytes]]:
    return [[s.sender for s in b] for b in bundles]


def test_a_bundle_goes_out_once_every_expected_speaker_spoke_this_step():
    b = Bundler(wait_s=10.0)
    assert senders(b.add(spoken(b"a"))) == [[b"a"]]  # nothing expected yet: at once
    assert senders(b.add(spoken(b"b"))) == [[b"b"]]  # a newcomer waits for no one who went already
    assert b.add(spoken(b"a")) == []  # a again: a new step, a and b expected
    assert senders(b.add(spoken(b"b"))) == [[b"a", b"b"]]
    assert b.add(spoken(b"b")) == [] and senders(b.new_step()) == [[b"b"]]  # a step boundary sends what is held


def test_a_silent_speaker_costs_one_wait_and_is_expected_no_more(monkeypatch):
    # a clock the test moves: on a loaded machine more than the 50 ms wait could pass
    # between two lines, and a bundle "not yet overdue" would be
    now = [1000.0]
    monkeypatch.setattr(bundle, "time", SimpleNamespace(monotonic=lambda: now[0]))
    b = Bundler(wait_s=0.05)
    for who in (b"a", b"b", b"a", b"b"):
        b.add(spoken(who))  # a and b expected
    assert b.add(spoken(b"a")) == []  # b silent: a waits
    assert b.overdue() is None
    now[0] += 0.06
    assert senders([b.overdue()]) == [[b"a"]]
    assert b.expected == {b"a"} and b.due() is None
    assert senders(b.add(spoken(b"a"))) == [[b"a"]]  # the next step: a alone, at once


def message(sender: int, values) -> bytes:
    return frame.pack(kind=frame.Kind.MESSAGE, sender=sender, codec=RICE.wire_id, count=len(values),
                      payload=RICE.encode(values))


def exchange(procs, bundle: bool, name: str) -> tuple[list, dict]:
    """Three agents speak for three rounds; what agent-0 received, and the broker's figures."""
    port = free_port()
    # a long wait: a loaded machine's pauses between the three sends must not split a bundle
    procs.start(name, "broker", "serve", "--bind", f"tcp://127.0.0.1:{port}",
                *(["--bundle", "--bundle-wait", "3000"] if bundle else ["--no-bundle"]))
    wait_port(port)
    ep = f"tcp://127.0.0.1:{port}"
    got = []
    with Peer(ep, b"agent") as a0, Peer(ep, b"agent") as a1, Peer(ep, b"agent") as a2:
        for r in range(3):
            for k, peer in enumerate((a0, a1, a2)):
                peer.broadcast_frame(message(k, [r, k]))
            heard = []
            while len(heard) < 2:
                msg = a0.recv(SLOW_S)
                assert msg is not None, f"agent-0 heard {len(heard)} of round {r}'s 2 messages in {SLOW_S} s"
                heard += msg
                got.append(len(heard))
            for peer in (a1, a2):  # the others' copies too, so nothing is left queued
                n = 0
                while n < 2:
                    msg = peer.recv(SLOW_S)
                    assert msg is not None, f"{peer.id.decode()} heard {n} of round {r}'s 2 messages in {SLOW_S} s"
                    n += len(msg)
        s = stats(ep)
    return got, s


def test_bundled_and_single_delivery_count_the_same_bytes(procs):
    single_got, single = exchange(procs, False, "single")
    bundled_got, bundled = exchange(procs, True, "bundled")
    assert single_got == [1, 2] * 3  # two messages a round
    # round 0: each speaker is new and goes at once; then each round is one bundle
    assert bundled_got == [1, 2, 2, 2]
    for s in (single, bundled):
        assert s["messages"] == {"sent": 9, "delivered": 9, "dropped": 0, "rejected": 0}
    for d in ("up", "down"):
        assert bundled["totals"][d]["message"] == single["totals"][d]["message"]
        assert bundled["float32_bytes_per_step"] == single["float32_bytes_per_step"]
