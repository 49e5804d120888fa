"""Property tests for what the broker reads from the network: the id grammar, the bus
hub's checks and caps, the link-fault line, and the broker's handler driven with any
sequence of messages from several connections."""

from __future__ import annotations

import random

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from broker import protocol
from broker.bus import BusRefused, Hub
from broker.linkline import LinkLine
from broker.server import Broker
from channel import codecs, frame

RICE = codecs.get("rice")


@given(st.binary(max_size=40))
def test_agent_index_takes_any_bytes_and_accepts_only_canonical_ids(raw):
    k = protocol.agent_index(raw)
    if k is None:
        assert not protocol.valid_id(b"agent", raw)
    else:
        assert 0 <= k < protocol.MAX_AGENTS and protocol.agent_id(k) == raw


def test_agent_ids_round_trip_and_the_grammar_holds_at_its_edges():
    assert all(protocol.agent_index(protocol.agent_id(k)) == k for k in range(protocol.MAX_AGENTS))
    for bad in (b"agent-255", b"agent-007", b"agent--1", b"agent-1 ", b"agent-" + b"9" * 5000, b"agent-\xd9\xa3"):
        assert protocol.agent_index(bad) is None
    assert protocol.valid_id(b"world", b"world") and not protocol.valid_id(b"world", b"\xc5")
    assert protocol.valid_id(b"cli", b"cli-0a9z") and not protocol.valid_id(b"cli", b"cli-" + b"a" * 17)


@given(st.sampled_from(protocol.ROLES + (b"x",)), st.binary(max_size=64))
def test_every_valid_id_is_short_ascii(role, raw):
    if protocol.valid_id(role, raw):
        assert len(raw) <= protocol.MAX_ID_BYTES and raw.decode("ascii")


@given(st.binary(max_size=600), st.binary(max_size=300), st.booleans())
def test_the_hub_takes_any_topic_bytes_and_raises_only_bus_refused(topic, payload, retain):
    hub = Hub("r")
    try:
        hub.publish(topic, payload, retain, b"agent-1")
    except BusRefused:
        assert not hub.retained
        return
    assert len(topic) <= protocol.MAX_TOPIC_BYTES and b"#" not in topic and b"+" not in topic


@given(st.binary(max_size=600))
def test_the_hub_takes_any_filter_bytes_and_raises_only_bus_refused(pattern):
    hub = Hub("r")
    try:
        replies = hub.subscribe(b"conn", pattern)
    except BusRefused:
        assert not hub.subs
        return
    assert replies[0] == [protocol.SUBSCRIBED, pattern]


def test_the_hub_caps_subscribers_filters_and_retained_topics():
    hub = Hub("r")
    for k in range(protocol.MAX_SUBSCRIBERS):
        hub.subscribe(b"c%d" % k, b"ddcl/#")
    with pytest.raises(BusRefused, match="subscribers"):
        hub.subscribe(b"one more", b"ddcl/#")
    for k in range(protocol.MAX_FILTERS - 1):
        hub.subscribe(b"c0", b"ddcl/%d" % k)
    with pytest.raises(BusRefused, match="per connection"):
        hub.subscribe(b"c0", b"ddcl/x")
    publishers = [b"agent-%d" % k for k in range(protocol.MAX_RETAINED // protocol.MAX_RETAINED_PER_PEER + 1)]
    for pub in publishers:
        for k in range(protocol.MAX_RETAINED_PER_PEER):
            try:
                hub.publish(b"%s/%d" % (pub, k), b"v", True, pub)
            except BusRefused as e:
                assert "retained topics already" in str(e)
    assert len(hub.retained) == protocol.MAX_RETAINED
    hub.publish("status/agent-0", b"online", True)  # the broker's own are never crowded out
    assert len(hub.retained) == protocol.MAX_RETAINED + 1
    hub.publish(b"agent-0/0", b"", True, b"agent-0")  # an empty retained payload clears
    assert len(hub.retained) == protocol.MAX_RETAINED and hub.retained_by[b"agent-0"] == protocol.MAX_RETAINED_PER_PEER - 1


def test_a_reorder_window_releases_its_copies_shuffled_and_delays_hold_in_order():
    line = LinkLine(random.Random(0))
    for k in range(8):
        line.hold(("agent-0", "agent-1"), 0.0, 8, b"agent-1", [b"%d" % k], 1, 4, 1)
    out = [h.parts[0] for h in line.due()]
    assert sorted(out) == [b"%d" % k for k in range(8)] and out != sorted(out)
    for k, delay in enumerate((0.02, 0.0, 0.01)):
        line.hold(("a", "b"), delay, 1, b"b", [b"%d" % k], 1, 4, 1)
    assert [h.parts[0] for h in line.due()] == [b"1"]
    assert len(line) == 2 and line.next_due() is not None


# -- the handler under any sequence of messages ---------------------------------------

def _frame(sender: int, values: list[int]) -> bytes:
    return frame.pack(kind=frame.Kind.MESSAGE, sender=sender, codec=RICE.wire_id, count=len(values),
                      payload=RICE.encode(values))


COMMANDS = [protocol.REGISTER, protocol.HEARTBEAT, protocol.SEND, protocol.STATS, protocol.CONTROL, protocol.PUBLISH, protocol.SUBSCRIBE, protocol.BYE, b"\x3f", b""]
IDS = [b"", b"agent-0", b"agent-1", b"agent-254", b"agent-255", b"agent-01", b"world", b"sync", b"cli-ab",
       b"\xc5", b"agent-" + b"9" * 5000, b"*"]
part = st.one_of(
    st.sampled_from(COMMANDS + IDS + list(protocol.ROLES)),
    st.binary(max_size=40),
    st.builds(_frame, st.integers(0, 255), st.lists(st.integers(-50, 50), min_size=1, max_size=6)),
    st.builds(protocol.pack, st.dictionaries(st.sampled_from(["op", "kind", "target", "value", "id", "every"]),
                                      st.one_of(st.sampled_from(list(protocol.CONTROL_OPS) + ["skew", "delay", "*"]),
                                                st.integers(-5, 10**9), st.floats(), st.binary(max_size=8)))),
)
message = st.one_of(
    st.tuples(st.sampled_from([protocol.REGISTER]), st.sampled_from(protocol.ROLES + (b"x",)), st.sampled_from(IDS)).map(list),
    st.lists(part, min_size=0, max_size=7),
)


class BrokerUnderFire(RuleBasedStateMachine):
    """Several connections send anything, in any order; the broker's handler never raises
    and its bounds and identities hold after every message."""

    @initialize()
    def start(self):
        self.ctx = zmq.Context()
        self.broker = Broker("tcp://127.0.0.1:0", ctx=self.ctx, max_message=4096)

    @rule(conn=st.integers(0, 5), parts=message)
    def send(self, conn, parts):
        self.broker.handle(b"\x00conn%d" % conn, parts)

    @rule(conn=st.integers(0, 5), k=st.integers(0, 3))
    def register_agent(self, conn, k):
        self.broker.handle(b"\x00conn%d" % conn, [protocol.REGISTER, b"agent", protocol.agent_id(k)])

    @rule(conn=st.integers(0, 5), kind=st.sampled_from(["skew", "drift", "delay", "drop", "duplicate", "reorder",
                                                         "beacon-loss", "stale-seed"]),
          where=st.sampled_from(["*", "agent-0", "agent-1", "agent-0>agent-1"]), value=st.integers(0, 5))
    def add_fault(self, conn, kind, where, value):
        req = {"op": protocol.FAULT_ADD, "kind": kind, "target": where, "value": value}
        self.broker.handle(b"\x00conn%d" % conn, [protocol.CONTROL, protocol.pack(req)])

    @rule(conn=st.integers(0, 5), sender=st.integers(0, 3), values=st.lists(st.integers(-9, 9), min_size=1, max_size=4))
    def agent_message(self, conn, sender, values):
        self.broker.handle(b"\x00conn%d" % conn, [_frame(sender, values)])

    @rule()
    def tick(self):
        self.broker.release_due()
        self.broker.expire_dead()
        self.broker.heartbeat_quiet()

    @invariant()
    def bounded_and_accounted(self):
        if not hasattr(self, "broker"):
            return
        b = self.broker
        m = b.acct.messages
        assert m["sent"] == m["delivered"] + m["dropped"] + m["rejected"]
        assert len(b.peers) <= protocol.MAX_PEERS and len(b.hub.retained) <= protocol.MAX_RETAINED + protocol.MAX_PEERS + 1
        assert all(protocol.valid_id(p.role, p.id) for p in b.peers.values())
        assert b.stats()["steps"] >= 0

    def teardown(self):
        if hasattr(self, "broker"):
            self.broker.sock.close(0)
            self.ctx.term()


BrokerUnderFire.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None,
                                             suppress_health_check=[HealthCheck.too_slow])
test_the_broker_handler_survives_any_message_sequence = BrokerUnderFire.TestCase
