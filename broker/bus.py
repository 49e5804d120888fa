"""The control/telemetry bus: MQTT-style topics `ddcl/<run>/...`, two backends.

- `embedded` (the default): through our own ZeroMQ broker, no extra server. The broker
  keeps retained messages and subscriptions (`Hub`) and publishes a dead peer's
  last will ("offline") when its heartbeats stop.
- `mqtt://host:port`: aiomqtt (>=2.5,<3) against a real MQTT broker such as Mosquitto;
  the will is MQTT's own.

Components publish through a synchronous `Publisher` (their loops are synchronous);
tools and tests read through the async `BusClient` (aiomqtt's shape: an async context
manager, `publish`, `subscribe`, `async for m in client.messages`).

Topics: status/<id> (retained, will "offline"), epoch (retained), faults (retained),
metrics (per step).
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlparse

import zmq
import zmq.asyncio

from . import protocol

EMBEDDED = "embedded"
# a clean exit sends what it queued: on a loaded machine the MQTT thread may need seconds
BUS_FLUSH_S = 15.0


class BusError(RuntimeError):
    """The bus URL is invalid or its server cannot be reached."""


@dataclass(frozen=True)
class BusMessage:
    topic: str
    payload: bytes
    retain: bool


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT filter matching: `+` one level, `#` the rest (including the parent level)."""
    p, t = pattern.split("/"), topic.split("/")
    for i, part in enumerate(p):
        if part == "#":
            return True
        if i >= len(t) or (part != "+" and part != t[i]):
            return False
    return len(p) == len(t)


def parse_url(url: str) -> tuple[str, int] | None:
    """None for the embedded bus, else (host, port) of an MQTT server."""
    if url == EMBEDDED:
        return None
    u = urlparse(url)
    if u.scheme != "mqtt" or not u.hostname:
        raise BusError(f"bus must be 'embedded' or mqtt://host:port, got {url!r}")
    return u.hostname, u.port or 1883


def full_topic(run: str, topic: str) -> str:
    return f"ddcl/{run}/{topic}"


class BusRefused(ValueError):
    """A publication or subscription the embedded hub will not take: a bad topic or
    filter, or one over the hub's caps (broker/protocol.py). Nothing was changed."""


def topic_text(raw: bytes, what: str, wildcards: bool) -> str:
    """A topic or filter from the network, checked before it is decoded or kept."""
    if not 0 < len(raw) <= protocol.MAX_TOPIC_BYTES:
        raise BusRefused(f"{what} must be 1..{protocol.MAX_TOPIC_BYTES} bytes, got {len(raw)}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BusRefused(f"{what} is not UTF-8: {protocol.shown(raw)}") from None
    if "\0" in text:
        raise BusRefused(f"{what} holds a NUL")
    levels = text.split("/")
    if not wildcards and any(c in text for c in "+#"):
        raise BusRefused(f"a topic holds no wildcards: {protocol.shown(text)}")
    if wildcards and any(("#" in lv and (lv != "#" or i != len(levels) - 1)) or ("+" in lv and lv != "+")
                         for i, lv in enumerate(levels)):
        raise BusRefused(f"bad filter {protocol.shown(text)}: '#' only as the last level, '+' only as a whole level")
    return text


class Hub:
    """The embedded bus inside the broker: retained messages and subscriptions, each
    bounded (protocol.MAX_RETAINED*, MAX_SUBSCRIBERS, MAX_FILTERS)."""

    def __init__(self, run: str):
        self.run = run
        self.retained: dict[str, tuple[bytes, bytes]] = {}  # topic -> (payload, publisher id)
        self.retained_by: dict[bytes, int] = {}  # publisher id -> retained topics it holds
        self.subs: dict[bytes, set[str]] = {}  # routing id -> filters

    def publish(self, raw_topic: bytes | str, payload: bytes, retain: bool,
                publisher: bytes = protocol.BROKER_ID) -> list[tuple[bytes, list[bytes]]]:
        """(routing id, parts) for every subscriber this publication reaches; BusRefused
        for a bad topic or a retained message over the caps."""
        topic = raw_topic if isinstance(raw_topic, str) else topic_text(raw_topic, "topic", wildcards=False)
        topic = topic if topic.startswith("ddcl/") else full_topic(self.run, topic)
        if retain:
            self._retain(topic, payload, publisher)
        msg = [protocol.BUS_MESSAGE, topic.encode(), payload, b"0"]
        return [(r, msg) for r, fs in self.subs.items() if any(topic_matches(f, topic) for f in fs)]

    def _retain(self, topic: str, payload: bytes, publisher: bytes) -> None:
        old = self.retained.get(topic)
        if payload:
            if len(payload) > protocol.MAX_RETAINED_BYTES:
                raise BusRefused(f"retained payload of {len(payload)} bytes over {protocol.MAX_RETAINED_BYTES}")
            # the broker's own (status of each id, the fault table) are bounded by the id
            # grammar, and must not be crowded out by peers' topics
            if publisher != protocol.BROKER_ID and (old is None or old[1] != publisher):
                if old is None and len(self.retained) >= protocol.MAX_RETAINED:
                    raise BusRefused(f"the hub holds {protocol.MAX_RETAINED} retained topics already")
                if self.retained_by.get(publisher, 0) >= protocol.MAX_RETAINED_PER_PEER:
                    raise BusRefused(f"{protocol.shown(publisher)} holds {protocol.MAX_RETAINED_PER_PEER} retained topics already")
            self._forget_retained(topic)
            self.retained[topic] = (payload, publisher)
            self.retained_by[publisher] = self.retained_by.get(publisher, 0) + 1
        else:
            self._forget_retained(topic)  # MQTT: an empty retained payload clears

    def _forget_retained(self, topic: str) -> None:
        old = self.retained.pop(topic, None)
        if old is not None:
            left = self.retained_by[old[1]] - 1
            if left:
                self.retained_by[old[1]] = left
            else:
                del self.retained_by[old[1]]

    def subscribe(self, routing: bytes, raw_pattern: bytes) -> list[list[bytes]]:
        """Add a subscription; what to send at once: the acknowledgement, then the retained
        messages it matches (none for a repeat, which the subscriber sends to probe).
        BusRefused for a bad filter or one over the caps (see `full`)."""
        pattern = topic_text(raw_pattern, "filter", wildcards=True)
        known = self.subs.get(routing)
        ack = [protocol.SUBSCRIBED, raw_pattern]
        if known is not None and pattern in known:
            return [ack]
        if known is None and self.full():
            raise BusRefused(f"the hub serves {protocol.MAX_SUBSCRIBERS} subscribers already")
        if known is not None and len(known) >= protocol.MAX_FILTERS:
            raise BusRefused(f"{protocol.MAX_FILTERS} subscriptions per connection at most")
        self.subs.setdefault(routing, set()).add(pattern)
        return [ack] + [[protocol.BUS_MESSAGE, t.encode(), v, b"1"] for t, (v, _) in self.retained.items()
                        if topic_matches(pattern, t)]

    def full(self) -> bool:
        return len(self.subs) >= protocol.MAX_SUBSCRIBERS

    def drop(self, routing: bytes) -> None:
        self.subs.pop(routing, None)


class Publisher:
    """Synchronous publishing for component loops: embedded (over the component's own
    broker connection) or MQTT (aiomqtt on a background thread, with a last will)."""

    def __init__(self, url: str, run: str, identifier: str, peer=None):
        self.run = run
        self.identifier = identifier
        self.peer = peer
        self.server = parse_url(url)
        self._q: queue.Queue | None = None
        if self.server is not None:
            self._q = queue.Queue()
            self._ready = threading.Event()
            self._error: BaseException | None = None
            self._thread = threading.Thread(target=self._run_mqtt, name="mqtt-bus", daemon=True)
            self._thread.start()
            if not self._ready.wait(10) or self._error:
                raise BusError(f"cannot reach MQTT at {url}: {self._error or 'timeout'}")
        self.publish(f"status/{identifier}", b"online", retain=True)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        full = full_topic(self.run, topic)
        if self._q is not None:
            self._q.put((full, payload, retain))
        elif self.peer is not None:
            self.peer.send_parts([protocol.PUBLISH, full.encode(), payload, b"1" if retain else b"0"])

    def close(self) -> None:
        self.publish(f"status/{self.identifier}", b"offline", retain=True)
        if self._q is not None:
            self._q.put(None)
            self._thread.join(BUS_FLUSH_S)

    def _run_mqtt(self) -> None:
        asyncio.run(self._mqtt_main())

    async def _mqtt_main(self) -> None:
        import aiomqtt

        host, port = self.server
        will = aiomqtt.Will(full_topic(self.run, f"status/{self.identifier}"), b"offline", qos=1, retain=True)
        try:
            async with aiomqtt.Client(host, port, identifier=f"ddcl-{self.run}-{self.identifier}", will=will) as client:
                self._ready.set()
                loop = asyncio.get_running_loop()
                while (item := await loop.run_in_executor(None, self._q.get)) is not None:
                    topic, payload, retain = item
                    await client.publish(topic, payload, qos=1, retain=retain)
        except Exception as e:  # surfaced to the constructor when it happens at connect
            self._error = e
            self._ready.set()


class BusClient:
    """Async reader/writer on either backend; `async with BusClient(url, run) as c:`.

    Embedded, `subscribe` waits for the broker's acknowledgement (BusError after
    `timeout_s`), and a subscriber silent for a heartbeat interval sends its SUBSCRIBEs
    again: that proves the broker alive (`silent_s`) and restores the subscriptions on a
    broker restarted in place. On MQTT, a lost server raises BusError."""

    def __init__(self, url: str, run: str, broker: str = protocol.DEFAULT_ENDPOINT, identifier: str = "ddcl-client",
                 timeout_s: float = 3.0):
        self.server = parse_url(url)
        self.url = url
        self.run = run
        self.broker = broker
        self.identifier = identifier
        self.timeout_s = timeout_s
        self._filters: list[bytes] = []  # embedded: the subscriptions, to send again
        self._early: deque[BusMessage] = deque()  # embedded: messages that came before an acknowledgement
        self._heard = self._probed = 0.0
        self._published = float("-inf")  # embedded: when this client last published (it registers first)
        self._id = b"cli-" + os.urandom(6).hex().encode()  # embedded: its id, once it publishes

    async def __aenter__(self):
        if self.server is not None:
            import aiomqtt

            self._mqtt = aiomqtt.Client(*self.server, identifier=f"{self.identifier}-{id(self)}")
            try:
                await self._mqtt.__aenter__()
            except aiomqtt.MqttError as e:
                raise BusError(f"cannot reach MQTT at {self.url}: {e}") from None
        else:
            self._ctx = zmq.asyncio.Context()
            self._sock = self._ctx.socket(zmq.DEALER)
            self._sock.setsockopt(zmq.LINGER, 1000)  # a publish just before the exit still goes out
            try:
                self._sock.connect(self.broker)
            except zmq.ZMQError as e:
                self._sock.close(0)
                self._ctx.term()
                raise BusError(protocol.bad_endpoint(self.broker, e.strerror)) from None
            self._heard = self._probed = asyncio.get_running_loop().time()
        return self

    async def __aexit__(self, *exc):
        if self.server is not None:
            await self._mqtt.__aexit__(*exc)
        else:
            self._sock.close()
            self._ctx.term()

    async def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Embedded, only registered peers publish: the first publication registers this
        client as a `cli-...` peer, and one after a silence the broker would take for death
        registers it again."""
        full = full_topic(self.run, topic)
        if self.server is not None:
            await self._mqtt.publish(full, payload, qos=1, retain=retain)
            return
        loop = asyncio.get_running_loop()
        if loop.time() - self._published > (protocol.LIVENESS - 1) * protocol.HEARTBEAT_S:
            await self._register()
        await self._sock.send_multipart([protocol.PUBLISH, full.encode(), payload, b"1" if retain else b"0"])
        self._published = loop.time()

    async def _register(self) -> None:
        await self._sock.send_multipart([protocol.REGISTER, b"cli", self._id])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while (left := deadline - loop.time()) > 0:
            parts = await self._receive(left)
            if parts == [protocol.REGISTERED, self._id]:
                return
            if parts and parts[0] == protocol.ERROR:
                raise BusError(f"the broker at {self.broker} refused to register {self._id.decode()}: "
                               f"{protocol.shown(parts[1:])}")
            if (m := _bus_message(parts)) is not None:
                self._early.append(m)
        raise BusError(f"no reply from the broker at {self.broker} in {self.timeout_s:.1f}s")

    async def subscribe(self, pattern: str = "#") -> None:
        full = full_topic(self.run, pattern)
        if self.server is not None:
            await self._mqtt.subscribe(full, qos=1)
            return
        self._filters.append(full.encode())
        await self._sock.send_multipart([protocol.SUBSCRIBE, full.encode()])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while (left := deadline - loop.time()) > 0:
            if (parts := await self._receive(left)) == [protocol.SUBSCRIBED, full.encode()]:
                return
            if (m := _bus_message(parts)) is not None:
                self._early.append(m)
        raise BusError(f"no reply from the broker at {self.broker} in {self.timeout_s:.1f}s")

    def silent_s(self) -> float:
        """Seconds since the embedded broker last answered (0 on MQTT, which raises instead)."""
        return asyncio.get_running_loop().time() - self._heard if self.server is None else 0.0

    async def next_message(self, timeout_s: float) -> BusMessage | None:
        """The next message, or None after timeout_s."""
        if self.server is not None:
            import aiomqtt

            try:
                m = await asyncio.wait_for(anext(self._mqtt.messages), timeout_s)
            except asyncio.TimeoutError:
                return None
            except aiomqtt.MqttError as e:
                raise BusError(f"lost MQTT at {self.url}: {e}") from None
            return BusMessage(str(m.topic), bytes(m.payload), bool(m.retain))
        if self._early:
            return self._early.popleft()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (left := deadline - loop.time()) > 0:
            quiet = loop.time() - max(self._heard, self._probed)
            if quiet >= protocol.HEARTBEAT_S and self._filters:
                for f in self._filters:
                    await self._sock.send_multipart([protocol.SUBSCRIBE, f])
                self._probed, quiet = loop.time(), 0.0
            parts = await self._receive(min(left, protocol.HEARTBEAT_S - quiet))
            if (m := _bus_message(parts)) is not None:
                return m
        return None

    async def _receive(self, wait_s: float) -> list[bytes] | None:
        """The next message from the embedded broker within wait_s, noted as a sign of life."""
        # poll, then recv: cancelling a pending recv can lose a message (pyzmq #1925)
        if not await self._sock.poll(max(1, int(wait_s * 1000))):
            return None
        parts = await self._sock.recv_multipart()
        self._heard = asyncio.get_running_loop().time()
        return parts


def _bus_message(parts: list[bytes] | None) -> BusMessage | None:
    if parts and parts[0] == protocol.BUS_MESSAGE and len(parts) == 4:
        return BusMessage(parts[1].decode(errors="replace"), parts[2], parts[3] == b"1")
    return None
