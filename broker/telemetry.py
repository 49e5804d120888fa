"""The broker's end of the bus (broker/bus.py): what it publishes itself, each peer's
status and the faults in force, and, with no MQTT server, the embedded hub's PUBLISH and
SUBSCRIBE verbs. The hub keeps the retained messages and subscriptions; this glue sends
what it decides, and forgets a subscriber a send cannot reach.
"""

from __future__ import annotations

import json

from .bus import BusRefused, Hub, Publisher, topic_text
from .protocol import BROKER_ID, HEARTBEAT
from .registry import PeerInfo


class Telemetry:
    def __init__(self, broker, bus: Publisher | None, run: str):
        self.broker = broker
        self.bus = bus  # an MQTT publisher; None: the embedded hub serves the bus
        self.hub = Hub(run)

    # -- verbs --------------------------------------------------------------------------

    def on_subscribe(self, routing: bytes, peer: PeerInfo | None, parts: list[bytes]) -> None:
        """Open to every connection: a bus subscriber registers nothing."""
        broker = self.broker
        if routing not in self.hub.subs and self.hub.full():
            self.prune_subscribers()
        try:
            replies = self.hub.subscribe(routing, parts[1])
        except BusRefused as e:
            broker.break_rule(routing, "malformed", parts, str(e).encode())
            return
        broker.acct.record("up", "control", peer.link if peer else "?", parts)
        for msg in replies:  # up to MAX_RETAINED: none more once the subscriber's queue is full
            if not broker.reply(routing, "bus", msg):
                break

    def on_publish(self, routing: bytes, peer: PeerInfo, parts: list[bytes]) -> None:
        broker = self.broker
        if parts[3] not in (b"0", b"1"):
            broker.break_rule(routing, "malformed", parts, b"malformed command")
            return
        try:
            self.publish(parts[1], parts[2], retain=parts[3] == b"1", publisher=peer.id)
        except BusRefused as e:
            broker.break_rule(routing, "malformed", parts, str(e).encode())
            return
        broker.acct.record("up", "control", peer.link, parts)

    # -- publishing -----------------------------------------------------------------------

    def publish(self, topic: bytes | str, payload: bytes, retain: bool, publisher: bytes = BROKER_ID) -> None:
        """To the MQTT server or the embedded hub's subscribers; BusRefused for a topic or
        retained message the hub will not take."""
        if self.bus is not None:
            self.bus.publish(topic if isinstance(topic, str) else topic_text(topic, "topic", wildcards=False),
                             payload, retain=retain)
            return
        for routing, parts in self.hub.publish(topic, payload, retain, publisher):
            self.to_subscriber(routing, parts)

    def publish_faults(self) -> None:
        self.publish("faults", json.dumps(self.broker.faults.listing()).encode(), retain=True)

    def publish_status(self, pid: bytes, status: str) -> None:
        self.publish(f"status/{pid.decode()}", status.encode(), retain=True)

    # -- subscribers ----------------------------------------------------------------------

    def to_subscriber(self, routing: bytes, parts: list[bytes]) -> None:
        """A send to a bus subscriber; one that is gone or reads nothing is forgotten."""
        if not self.broker.reply(routing, "bus", parts):
            self.hub.drop(routing)

    def prune_subscribers(self) -> None:
        """Forget subscribers whose connection is gone: a send to one fails at once."""
        for routing in list(self.hub.subs):
            self.to_subscriber(routing, [HEARTBEAT])
