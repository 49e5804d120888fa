"""The broker: one ROUTER socket, one loop. Receive a message, dispatch it on its command
byte through the verb table, repeat; between messages, send what link faults held back
and expire the silent. This unit registers peers and routes SEND; agent messages
(broker/relay.py), the operator's verbs (broker/control.py), the bus (broker/telemetry.py)
and byte accounting (broker/accounting.py) have units of their own.

Everything a connection sends is hostile until checked: sizes and part counts first,
then the command's shape, then ids by their grammar (broker/protocol.py), all before any
decoding. A message that breaks a rule is counted on its own line, answered with at most
ECHO_BYTES of itself, and is a strike against its connection; past STRIKES the broker
ignores that connection. No input ends the loop or touches another peer's traffic.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zmq

from channel import ChannelError, frame

from . import protocol
from . import trace
from .accounting import Accounting
from .bus import Hub, Publisher
from .control import Control
from .faults import FaultTable
from .faults_file import Scheduled
from .registry import PeerInfo, Refused, Registry, Remembered, grant_id
from .relay import Relay
from .telemetry import Telemetry

log = logging.getLogger("ddcl.broker")

DRAIN = 10_000  # messages handled back to back before the loop looks at the clock


@dataclass(frozen=True)
class Verb:
    handle: Callable[[bytes, "PeerInfo | None", list[bytes]], None]  # (routing id, peer or None, parts)
    parts: Callable[[int], bool]  # whether a message of this many parts is well formed
    open: bool = False  # unregistered connections may use it (tools and bus subscribers register nothing)


def router(ctx, endpoint: str, max_message: int, curve) -> zmq.Socket:
    sock = ctx.socket(zmq.ROUTER)
    for opt, val in (
        (zmq.ROUTER_MANDATORY, 1),  # unroutable sends raise instead of vanishing
        (zmq.ROUTER_HANDOVER, 1),  # a restarted peer with the same routing id takes over
        (zmq.LINGER, 0),
        # one frame over twice the limit never reaches memory: libzmq reads its size and
        # closes the connection; between the two, the broker counts and drops it
        (zmq.MAXMSGSIZE, 2 * max_message),
        (zmq.SNDHWM, protocol.BROKER_HWM),
        (zmq.RCVHWM, protocol.BROKER_HWM),
    ):
        sock.setsockopt(opt, val)
    if curve:
        curve.serve(sock)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError:
        sock.close(0)
        raise
    return sock


class Broker:
    def __init__(self, endpoint: str = protocol.DEFAULT_ENDPOINT, heartbeat_s: float = protocol.HEARTBEAT_S, ctx=None,
                 log_dir: Path | None = None, bus: Publisher | None = None, run: str = "default", curve=None,
                 max_message: int = protocol.MAX_MSG_BYTES, bundle: float | None = None):
        self.ctx = ctx or zmq.Context.instance()
        self.sock = router(self.ctx, endpoint, max_message, curve)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.max_message = max_message
        self.heartbeat_s = heartbeat_s
        self.registry = Registry()
        self.strikes = Remembered()  # routing id -> rule breaks
        self.ignored = Remembered()  # connections past STRIKES
        self.acct = Accounting()
        self.faults = FaultTable()
        self.relay_every = 1  # world steps relayed to the sync service (it may ask for fewer)
        self.started = time.monotonic()
        self.relay = Relay(self, bundle)  # bundle: how long a partial bundle waits (s), or None
        self.control = Control(self, log_dir)
        self.telemetry = Telemetry(self, bus, run)
        self.verbs = {  # command -> its verb; every shape and rule checked in handle()
            protocol.REGISTER: Verb(self.on_register, lambda n: n == 3, open=True),
            protocol.HEARTBEAT: Verb(self.on_heartbeat, lambda n: n == 1),
            protocol.SEND: Verb(self.on_send, lambda n: n >= 3 and n % 2 == 1),
            protocol.STATS: Verb(self.control.on_stats, lambda n: n == 1, open=True),
            protocol.CONTROL: Verb(self.control.on_control, lambda n: n == 2, open=True),
            protocol.PUBLISH: Verb(self.telemetry.on_publish, lambda n: n == 4),
            protocol.SUBSCRIBE: Verb(self.telemetry.on_subscribe, lambda n: n == 2, open=True),
            protocol.BYE: Verb(self.on_bye, lambda n: n == 1),
        }
        trace.name("broker")
        self.telemetry.publish_faults()  # none yet: a listing an earlier broker retained on MQTT says otherwise

    @property
    def peers(self) -> dict[bytes, PeerInfo]:
        return self.registry.peers

    @property
    def hub(self) -> Hub:
        return self.telemetry.hub

    def schedule(self, entries: list[Scheduled]) -> None:
        self.control.schedule(entries)

    # -- the loop ---------------------------------------------------------------

    def serve(self, should_stop=lambda: False) -> None:
        next_check = time.monotonic() + self.heartbeat_s
        try:
            while not should_stop():
                self.receive(self.wait_s())
                self.release_due()
                if time.monotonic() >= next_check:
                    self.expire_dead()
                    self.heartbeat_quiet()
                    next_check = time.monotonic() + self.heartbeat_s
        finally:
            self.control.close()
            self.sock.close(0)

    def wait_s(self) -> float:
        """Until the next look at the clock: sooner when a held copy or bundle is due."""
        due = self.relay.next_due()
        wait = self.heartbeat_s / 4
        return wait if due is None else max(0.0, min(wait, due - time.monotonic()))

    def receive(self, wait_s: float) -> None:
        """Wait up to wait_s for a message, then handle it and what is queued behind it."""
        protocol.set_timeout(self.sock, int(wait_s * 1000))
        flags = 0
        for _ in range(DRAIN):
            if flags and not protocol.readable(self.sock):
                break
            try:
                msg = protocol.recv_parts(self.sock, flags)
            except zmq.Again:
                break
            trace.mark("recv")
            self.handle(msg[0], msg[1:])
            trace.mark("handled")
            flags = protocol.NOBLOCK

    def handle(self, routing: bytes, parts: list[bytes]) -> None:
        """One message from one connection: checked, then dispatched on its command."""
        if routing in self.ignored:
            self.acct.refuse("ignored", parts)
            return
        if self.oversized(routing, parts):
            return
        peer = self.registry.of(routing)
        if peer:
            peer.last_seen = time.monotonic()
        if len(parts) == 1 and protocol.is_channel_frame(parts[0]):
            self.relay.on_agent_message(routing, peer, parts)
            return
        verb = self.verbs.get(parts[0])
        if verb is not None and peer is None and not verb.open:
            self.refuse_unknown(routing, parts)
        elif verb is None or not verb.parts(len(parts)):
            self.break_rule(routing, "malformed", parts, b"malformed command")
        else:
            verb.handle(routing, peer, parts)

    def oversized(self, routing: bytes, parts: list[bytes]) -> bool:
        """Too many parts or bytes: refused before anything reads them."""
        if not parts or len(parts) > protocol.MAX_PARTS:
            self.break_rule(routing, "malformed", parts, b"no parts, or too many")
            return True
        size = 0
        for part in parts:
            size += len(part)
        if size > self.max_message:
            self.break_rule(routing, "oversize", parts, b"message of %d bytes over the limit of %d" % (
                size, self.max_message))
            return True
        return False

    def break_rule(self, routing: bytes, why: str, parts: list[bytes], reply: bytes | None,
                   agent_message: bool = False) -> None:
        """A refused message: counted on its line and as rejected (an agent message's
        rejection, or another's), answered (ERROR, when `reply`), a strike against its
        connection. Past STRIKES, the connection is ignored from then on."""
        self.acct.refuse(why, parts)
        (self.acct.messages if agent_message else self.acct.other)["rejected"] += 1
        strikes = self.strikes.get(routing, 0) + 1
        self.strikes.note(routing, strikes)
        if strikes > protocol.STRIKES:
            self.ignore(routing)
        elif reply is not None:
            self.reply(routing, "?", [protocol.ERROR, reply])

    def ignore(self, routing: bytes) -> None:
        pid = self.registry.by_routing.get(routing)
        log.warning("connection %s (%s) broke the rules %d times: ignored from now on", routing.hex(),
                    pid.decode() if pid else "unregistered", protocol.STRIKES)
        self.ignored.note(routing, True)
        self.strikes.pop(routing, None)
        self.reply(routing, "?", [protocol.ERROR, b"too many bad messages: ignored from now on"])
        if pid:
            self.registry.forget(pid)
            self.telemetry.publish_status(pid, "offline")

    def release_due(self) -> None:
        self.relay.release_due()

    def expire_dead(self) -> None:
        limit = time.monotonic() - protocol.LIVENESS * self.heartbeat_s
        for pid, info in list(self.peers.items()):
            if info.last_seen < limit:
                log.warning("peer %s silent for %d intervals: dead", pid.decode(), protocol.LIVENESS)
                self.registry.forget(pid)
                self.telemetry.publish_status(pid, "offline")  # the last will

    def heartbeat_quiet(self) -> None:
        """A heartbeat to every peer sent nothing for an interval: the lockstep's peers hear
        from the broker every step and get none; an idle one learns the broker lives."""
        quiet = time.monotonic() - self.heartbeat_s
        for peer in list(self.peers.values()):
            if peer.last_sent < quiet:
                self.deliver(peer, [protocol.HEARTBEAT], "control", 0)

    # -- registration -------------------------------------------------------------

    def on_register(self, routing: bytes, _peer, parts: list[bytes]) -> None:
        _, role, wanted = parts
        try:
            pid = grant_id(role, wanted, self.peers)
            self.acct.record("up", "control", pid.decode(), parts)
            peer = self.registry.admit(pid, role, routing)
        except Refused as e:
            self.break_rule(routing, "malformed", parts, e.why)
            return
        self.strikes.pop(routing, None)
        self.reply(routing, peer.link, [protocol.REGISTERED, pid])
        if role != b"cli":  # a tool's id is not a component's status
            self.telemetry.publish_status(pid, "online")
        if role == b"agent" and any(self.faults.clock_of(peer.link).values()):
            self.control.push_clock(peer.link)  # a restarted agent gets its clock faults back

    def refuse_unknown(self, routing: bytes, parts: list[bytes]) -> None:
        """An unregistered connection is told to register; one whose id was taken over is
        told so, or it would register again and take the id back, and two live processes
        would trade one id forever."""
        self.break_rule(routing, "unregistered", parts,
                        protocol.REPLACED if routing in self.registry.replaced else protocol.NOT_REGISTERED)

    def on_heartbeat(self, _routing: bytes, peer: PeerInfo, parts: list[bytes]) -> None:
        self.acct.record("up", "control", peer.link, parts)

    def on_bye(self, _routing: bytes, peer: PeerInfo, parts: list[bytes]) -> None:
        self.acct.record("up", "control", peer.link, parts)
        self.registry.forget(peer.id)
        if peer.role != b"cli":
            self.telemetry.publish_status(peer.id, "offline")

    # -- SEND ---------------------------------------------------------------------------

    def on_send(self, routing: bytes, sender: PeerInfo, parts: list[bytes]) -> None:
        """SEND: one or more (destination, body) pairs, each delivered as DELIVER from the
        sender; the world sends every agent its observations in one. Channel frames are
        checked, and a malformed one refuses the whole message."""
        dests, bodies = parts[1::2], parts[2::2]
        try:
            frames = [self.sent_frame(sender, body) for body in bodies]
        except ChannelError:
            self.break_rule(routing, "malformed", parts, b"malformed frame")
            return
        kind = ("control" if None in frames else
                "gradient" if all(f.kind == frame.Kind.GRADIENT for f in frames) else "env")
        payloads = [0 if f is None else len(f.payload) for f in frames]
        for dest, body, payload in zip(dests, bodies, payloads):
            self.deliver_body(sender, dest, body, kind, payload)
        self.acct.record("up", kind, sender.link, parts, sum(payloads))  # after: off the critical path

    def sent_frame(self, sender: PeerInfo, body: bytes) -> frame.Frame | None:
        """A SEND body as a channel frame, None for a msgpack map. The world's first
        observation with a new stamp marks the step."""
        if not protocol.is_channel_frame(body):
            return None
        f = frame.unpack(body)
        if sender.id == protocol.WORLD_ID and f.kind == frame.Kind.OBSERVATION and f.stamp != self.acct.step:
            self.new_step(f.stamp)
        return f

    def deliver_body(self, sender: PeerInfo, dest: bytes, body: bytes, kind: str, payload: int) -> None:
        if dest == protocol.ALL_AGENTS:
            for peer in self.registry.agents():
                if sender.id == protocol.SYNC_ID and self.faults.blocks_beacon(peer.link):
                    self.acct.other["beacons_lost"] = self.acct.other.get("beacons_lost", 0) + 1
                    continue
                self.deliver(peer, [protocol.DELIVER, sender.id, body], kind, payload)
            return
        peer = self.peers.get(dest)
        if peer is None:
            self.acct.other["unknown_destination"] += 1
            return
        if not self.deliver(peer, [protocol.DELIVER, sender.id, body], kind, payload):
            self.acct.other["dropped"] += 1

    def new_step(self, step: int) -> None:
        if step == 0:  # a new run: a broker outlives runs (compose), and each run's figures are its own
            self.acct = Accounting()
        self.acct.mark_step(step)
        self.relay.new_step()
        self.control.run_scheduled(step)
        sync = self.peers.get(protocol.SYNC_ID)
        if sync and self.relay_every and step % self.relay_every == 0:
            # the sync service keeps time by the world's steps, only those it asked for:
            # waking it every step costs the lockstep a context switch on small machines
            self.deliver(sync, [protocol.STEP, protocol.pack(step)], "control", 0)

    # -- sending --------------------------------------------------------------------

    def deliver(self, peer: PeerInfo, parts: list[bytes], kind: str, payload: int) -> bool:
        try:
            protocol.send_parts(self.sock, [peer.routing, *parts], protocol.NOBLOCK)
        except zmq.ZMQError:  # EHOSTUNREACH (gone) or EAGAIN (its queue is full)
            return False
        peer.last_sent = time.monotonic()
        self.acct.record("down", kind, peer.link, parts, payload)
        return True

    def reply(self, routing: bytes, link: str, parts: list[bytes]) -> bool:
        """Whether it went: a connection that is gone or reads nothing gets none."""
        try:
            protocol.send_parts(self.sock, [routing, *parts], protocol.NOBLOCK)
        except zmq.ZMQError:
            return False
        self.acct.record("down", "control", link, parts)
        return True

    def stats(self) -> dict:
        s = self.acct.snapshot()
        s["peers"] = {p.link: p.role.decode() for p in self.peers.values()}
        s["uptime_s"] = time.monotonic() - self.started
        s["faults"] = self.faults.listing()
        s["ignored_connections"] = len(self.ignored)
        return s
