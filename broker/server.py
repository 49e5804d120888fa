"""The broker: one ROUTER socket, one loop. Registers peers, routes, keeps heartbeats,
applies faults, and accounts every byte in and out (broker/accounting.py).

Everything a connection sends is hostile until checked: sizes and part counts first,
then the command's shape, then ids by their grammar (broker/protocol.py), all before any
decoding. A message that breaks a rule is counted on its own line, answered with at most
ECHO_BYTES of itself, and is a strike against its connection; past STRIKES the broker
ignores that connection. No input ends the loop or touches another peer's traffic.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from channel import ChannelError, frame

from . import protocol as P
from . import trace
from .accounting import Accounting
from .bundle import Bundler, Spoken
from .bus import BusRefused, Hub, Publisher, topic_text
from .faults import CLOCK_KINDS, FaultError, FaultTable, flipped
from .linkline import LinkLine

log = logging.getLogger("ddcl.broker")

MAX_REMEMBERED = 4096  # connections whose strikes, bans or take-overs the broker remembers


@dataclass
class PeerInfo:
    id: bytes  # valid for its role (protocol.valid_id): ASCII
    role: bytes
    routing: bytes
    last_seen: float
    last_sent: float = 0.0
    link: str = field(init=False)  # the id as text: what accounting and faults call this peer
    index: int | None = field(init=False)  # agent-K's K; None for the other roles

    def __post_init__(self):
        self.link = self.id.decode("ascii")
        self.index = P.agent_index(self.id) if self.role == b"agent" else None


@dataclass(frozen=True)
class Verb:
    handle: Callable[[bytes, "PeerInfo | None", list[bytes]], None]  # (routing id, peer or None, parts)
    parts: Callable[[int], bool]  # whether a message of this many parts is well formed
    open: bool = False  # unregistered connections may use it (tools and bus subscribers register nothing)


class Remembered(OrderedDict):
    """A bounded map of connection routing ids: the oldest are forgotten first, so no
    stream of new connections grows the broker."""

    def note(self, key: bytes, value) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > MAX_REMEMBERED:
            self.popitem(last=False)


class Broker:
    def __init__(self, endpoint: str = P.DEFAULT_ENDPOINT, heartbeat_s: float = P.HEARTBEAT_S, ctx=None,
                 log_dir: Path | None = None, bus: Publisher | None = None, run: str = "default", curve=None,
                 max_message: int = P.MAX_MSG_BYTES, bundle: float | None = None):
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.max_message = max_message
        for opt, val in (
            (zmq.ROUTER_MANDATORY, 1),  # unroutable sends raise instead of vanishing
            (zmq.ROUTER_HANDOVER, 1),  # a restarted peer with the same routing id takes over
            (zmq.LINGER, 0),
            # one frame over twice the limit never reaches memory: libzmq reads its size and
            # closes the connection; between the two, the broker counts and drops it
            (zmq.MAXMSGSIZE, 2 * max_message),
            (zmq.SNDHWM, P.BROKER_HWM),
            (zmq.RCVHWM, P.BROKER_HWM),
        ):
            self.sock.setsockopt(opt, val)
        if curve:
            curve.serve(self.sock)
        try:
            self.sock.bind(endpoint)
        except zmq.ZMQError:
            self.sock.close(0)
            raise
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.heartbeat_s = heartbeat_s
        self.peers: dict[bytes, PeerInfo] = {}
        self.by_routing: dict[bytes, bytes] = {}
        self.replaced = Remembered()  # connections whose id a newer registration took over
        self.strikes = Remembered()  # routing id -> rule breaks
        self.ignored = Remembered()  # connections past STRIKES
        self.acct = Accounting()
        self.faults = FaultTable()
        self.line = LinkLine(self.faults.rng)
        # bundle: how long a partial bundle waits (s); None: every message forwarded on its own
        self.bundler = Bundler(bundle) if bundle is not None else None
        self.scheduled: list[tuple[int, dict]] = []  # (world step, fault request) from a faults file
        self.fault_log = open(Path(log_dir) / "faults.jsonl", "a") if log_dir else None
        self.relay_every = 1  # world steps relayed to the sync service (it may ask for fewer)
        self.bus = bus  # an MQTT publisher; None: the embedded hub below serves the bus
        self.hub = Hub(run)
        self.started = time.monotonic()
        self.verbs = {  # command -> its verb; every shape and rule checked in handle()
            P.REGISTER: Verb(self.on_register, lambda n: n == 3, open=True),
            P.HEARTBEAT: Verb(self.on_heartbeat, lambda n: n == 1),
            P.SEND: Verb(self.on_send, lambda n: n >= 3 and n % 2 == 1),
            P.STATS: Verb(self.on_stats, lambda n: n == 1, open=True),
            P.CONTROL: Verb(self.on_control, lambda n: n == 2, open=True),
            P.PUBLISH: Verb(self.on_publish, lambda n: n == 4),
            P.SUBSCRIBE: Verb(self.on_subscribe, lambda n: n == 2, open=True),
            P.BYE: Verb(self.on_bye, lambda n: n == 1),
        }
        trace.name("broker")
        self.publish_faults()  # none yet: a listing an earlier broker left retained on MQTT would say otherwise

    # -- the loop ---------------------------------------------------------------

    def serve(self, should_stop=lambda: False) -> None:
        next_check = time.monotonic() + self.heartbeat_s
        try:
            while not should_stop():
                wait = self.heartbeat_s / 4
                for due in (self.line.next_due(), self.bundler and self.bundler.due()):
                    if due is not None:
                        wait = max(0.0, min(wait, due - time.monotonic()))
                P.set_timeout(self.sock, int(wait * 1000))
                flags = 0
                for _ in range(10_000):  # wait for one, drain what is queued, then look at the clock
                    if flags and not P.readable(self.sock):
                        break
                    try:
                        msg = P.recv_parts(self.sock, flags)
                    except zmq.Again:
                        break
                    trace.mark("recv")
                    self.handle(msg[0], msg[1:])
                    trace.mark("handled")
                    flags = P.NOBLOCK
                self.release_due()
                if self.bundler and (bundle := self.bundler.overdue()):
                    self.send_bundle(bundle)
                if time.monotonic() >= next_check:
                    self.expire_dead()
                    self.heartbeat_quiet()
                    next_check = time.monotonic() + self.heartbeat_s
        finally:
            if self.fault_log:
                self.fault_log.close()
            self.sock.close(0)

    def handle(self, routing: bytes, parts: list[bytes]) -> None:
        """One message from one connection: checked, then dispatched on its command."""
        if routing in self.ignored:
            self.acct.refuse("ignored", parts)
            return
        if not parts or len(parts) > P.MAX_PARTS:
            self.break_rule(routing, "malformed", parts, b"no parts, or too many")
            return
        size = 0
        for part in parts:
            size += len(part)
        if size > self.max_message:
            self.break_rule(routing, "oversize", parts, b"message of %d bytes over the limit of %d" % (
                size, self.max_message))
            return
        pid = self.by_routing.get(routing)
        peer = self.peers[pid] if pid else None
        if peer:
            peer.last_seen = time.monotonic()
        if len(parts) == 1 and P.is_channel_frame(parts[0]):
            self.on_agent_message(routing, peer, parts)
            return
        verb = self.verbs.get(parts[0])
        if verb is not None and peer is None and not verb.open:
            self.refuse_unknown(routing, parts)
        elif verb is None or not verb.parts(len(parts)):
            self.break_rule(routing, "malformed", parts, b"malformed command")
        else:
            verb.handle(routing, peer, parts)

    def break_rule(self, routing: bytes, why: str, parts: list[bytes], reply: bytes | None,
                   agent_message: bool = False) -> None:
        """A refused message: counted on its line and as rejected (an agent message's
        rejection, or another's), answered (ERROR, when `reply`), a strike against its
        connection. Past STRIKES, the connection is ignored from then on."""
        self.acct.refuse(why, parts)
        (self.acct.messages if agent_message else self.acct.other)["rejected"] += 1
        strikes = self.strikes.get(routing, 0) + 1
        self.strikes.note(routing, strikes)
        if strikes > P.STRIKES:
            self.ignore(routing)
        elif reply is not None:
            self.reply(routing, "?", [P.ERROR, reply])

    def ignore(self, routing: bytes) -> None:
        pid = self.by_routing.get(routing)
        log.warning("connection %s (%s) broke the rules %d times: ignored from now on", routing.hex(),
                    pid.decode() if pid else "unregistered", P.STRIKES)
        self.ignored.note(routing, True)
        self.strikes.pop(routing, None)
        self.reply(routing, "?", [P.ERROR, b"too many bad messages: ignored from now on"])
        if pid:
            self._forget(pid)
            self.publish_status(pid, "offline")

    def expire_dead(self) -> None:
        limit = time.monotonic() - P.LIVENESS * self.heartbeat_s
        for pid, info in list(self.peers.items()):
            if info.last_seen < limit:
                log.warning("peer %s silent for %d intervals: dead", pid.decode(), P.LIVENESS)
                self._forget(pid)
                self.publish_status(pid, "offline")  # the last will

    def heartbeat_quiet(self) -> None:
        """A heartbeat to every peer sent nothing for an interval: the lockstep's peers hear
        from the broker every step and get none; an idle one learns the broker lives."""
        quiet = time.monotonic() - self.heartbeat_s
        for peer in list(self.peers.values()):
            if peer.last_sent < quiet:
                self.deliver(peer, [P.HEARTBEAT], "control", 0)

    def _forget(self, pid: bytes) -> None:
        info = self.peers.pop(pid, None)
        if info and self.by_routing.get(info.routing) == pid:
            del self.by_routing[info.routing]

    # -- registration -------------------------------------------------------------

    def on_register(self, routing: bytes, _peer, parts: list[bytes]) -> None:
        _, role, wanted = parts
        pid, why = self._grant_id(role, wanted)
        if pid is None:
            self.break_rule(routing, "malformed", parts, why)
            return
        self.acct.record("up", "control", pid.decode(), parts)
        old = self.peers.get(pid)
        if old is not None and old.routing != routing:
            log.info("peer %s re-registered: the new connection takes over", pid.decode())
            self.by_routing.pop(old.routing, None)
            self.replaced.note(old.routing, True)
        elif old is None and len(self.peers) >= P.MAX_PEERS:
            self.break_rule(routing, "malformed", parts, b"the broker serves %d peers already" % P.MAX_PEERS)
            return
        if (prior := self.by_routing.get(routing)) not in (None, pid):
            self._forget(prior)  # one connection, one id: the last it registered
        self.strikes.pop(routing, None)
        self.peers[pid] = PeerInfo(pid, role, routing, time.monotonic())
        self.by_routing[routing] = pid
        self.reply(routing, pid.decode(), [P.REGISTERED, pid])
        if role != b"cli":  # a tool's id is not a component's status
            self.publish_status(pid, "online")
        if role == b"agent" and any(self.faults.clock_of(pid.decode()).values()):
            self._push_clock(pid.decode())  # a restarted agent gets its clock faults back

    def _grant_id(self, role: bytes, wanted: bytes) -> tuple[bytes | None, bytes]:
        """(the id this registration gets, b"") or (None, why not)."""
        if role not in P.ROLES:
            return None, b"unknown role " + P.shown(role, 32).encode()
        if not wanted:
            return (self._free_agent_id(), b"no free agent id") if role == b"agent" else (role, b"")
        if not P.valid_id(role, wanted):
            rule = {b"agent": b"agent ids look like agent-K, K < %d" % P.MAX_AGENTS,
                    b"cli": b"cli ids look like cli or cli-<up to 16 of 0-9a-z>"}.get(role, b"its id is " + role)
            return None, b"bad %s id %s: %s" % (role, P.shown(wanted, 32).encode(), rule)
        return wanted, b""

    def _free_agent_id(self) -> bytes | None:
        return next((P.agent_id(k) for k in range(P.MAX_AGENTS) if P.agent_id(k) not in self.peers), None)

    def refuse_unknown(self, routing: bytes, parts: list[bytes]) -> None:
        """An unregistered connection is told to register; one whose id was taken over is
        told so, or it would register again and take the id back, and two live processes
        would trade one id forever."""
        self.break_rule(routing, "unregistered", parts, P.REPLACED if routing in self.replaced else P.NOT_REGISTERED)

    # -- verbs of registered peers ---------------------------------------------------

    def on_heartbeat(self, _routing: bytes, peer: PeerInfo, parts: list[bytes]) -> None:
        self.acct.record("up", "control", peer.link, parts)

    def on_bye(self, _routing: bytes, peer: PeerInfo, parts: list[bytes]) -> None:
        self.acct.record("up", "control", peer.link, parts)
        self._forget(peer.id)
        if peer.role != b"cli":
            self.publish_status(peer.id, "offline")

    def on_agent_message(self, routing: bytes, sender: PeerInfo | None, parts: list[bytes]) -> None:
        """An agent's DDCL message, broadcast to its peer agents. Only a registered agent's
        well-formed message counts as one; anything else is refused on its own line."""
        if sender is None:
            self.refuse_unknown(routing, parts)
            return
        acct = self.acct
        if sender.index is None:  # the world or a tool sent a bare channel frame
            self.break_rule(routing, "malformed", parts, b"agent messages come from registered agents")
            return
        try:
            f = frame.unpack(parts[0])
            if f.kind != frame.Kind.MESSAGE:
                raise ChannelError("not a message frame")
            if f.sender != sender.index:
                raise ChannelError("frame sender does not match the registered id")
        except ChannelError:
            acct.messages["sent"] += 1
            self.break_rule(routing, "malformed", parts, None, agent_message=True)
            return
        link = sender.link
        header = len(parts[0]) - len(f.payload)
        if self.bundler is not None and not self.faults.faults:  # link faults act on each copy: none bundled then
            acct.record("up", "message", link, parts, len(f.payload))
            acct.record_float32("up", header, f.count)
            for bundle in self.bundler.add(Spoken(sender.id, parts[0], len(f.payload), header, f.count)):
                self.send_bundle(bundle)
            return
        acct.messages["sent"] += 1
        recipients = [p for p in self.agents() if p is not sender]
        ok = bool(recipients)
        for peer in recipients:
            plan = self.faults.link_plan(link, peer.link, len(parts[0]), len(f.payload))
            if plan.copies == 0:
                ok = False
                acct.other["fault_dropped"] = acct.other.get("fault_dropped", 0) + 1
            sent = parts if plan.flip is None else [flipped(parts[0], 8 * header + plan.flip)]
            for _ in range(plan.copies):
                if not self.route(peer, sent, len(f.payload), header, f.count, plan.delay, link):
                    ok = False
        # counted once it is on its way: the copies are the step's critical path, the count is not
        acct.record("up", "message", link, parts, len(f.payload))
        acct.record_float32("up", header, f.count)
        acct.messages["delivered" if ok else "dropped"] += 1

    def send_bundle(self, bundle: list[Spoken]) -> None:
        """Each agent gets one message of the bundle's frames but its own; each frame is
        accounted as the copy it is, and each message as delivered once every recipient
        has its copy."""
        acct = self.acct
        failed: set[bytes] = set()
        recipients = self.agents()
        for peer in recipients:
            mine = [s for s in bundle if s.sender != peer.id]
            if not mine:
                continue
            if self.deliver(peer, [s.data for s in mine], "message", sum(s.payload for s in mine)):
                for s in mine:
                    acct.record_float32("down", s.header, s.count)
            else:
                failed.update(s.sender for s in mine)
        for s in bundle:  # a held message counts as sent once it goes: the identity holds at every moment
            heard = any(p.id != s.sender for p in recipients)
            acct.messages["sent"] += 1
            acct.messages["delivered" if heard and s.sender not in failed else "dropped"] += 1

    def agents(self) -> list[PeerInfo]:
        return [p for p in self.peers.values() if p.role == b"agent"]

    def route(self, peer: PeerInfo, parts, payload: int, header: int, count: int, delay: float, src: str) -> bool:
        """An agent-message copy: now, after a delay, or through a reorder window."""
        window = self.faults.reorder_window(src, peer.link)
        if delay > 0 or window > 1:
            self.line.hold((src, peer.link), delay, window, peer.id, parts, payload, header, count)
            return True
        return self._deliver_message(peer, parts, payload, header, count)

    def _deliver_message(self, peer: PeerInfo, parts, payload: int, header: int, count: int) -> bool:
        if self.deliver(peer, parts, "message", payload):
            self.acct.record_float32("down", header, count)
            return True
        return False

    def release_due(self) -> None:
        for held in self.line.due():
            peer = self.peers.get(held.dest)
            if peer is None or not self._deliver_message(peer, held.parts, held.payload, held.header, held.count):
                self.acct.other["dropped"] += 1

    def on_send(self, routing: bytes, sender: PeerInfo, parts: list[bytes]) -> None:
        """SEND: one or more (destination, body) pairs, each delivered as DELIVER from the
        sender; the world sends every agent its observations in one. Channel frames are
        checked, and a malformed one refuses the whole message."""
        link = sender.link
        pairs = [(parts[i], parts[i + 1]) for i in range(1, len(parts), 2)]
        payloads = []
        gradients = 0
        for _, body in pairs:
            if not P.is_channel_frame(body):
                payloads.append(None)
                continue
            try:
                f = frame.unpack(body)
            except ChannelError:
                self.break_rule(routing, "malformed", parts, b"malformed frame")
                return
            payloads.append(len(f.payload))
            gradients += f.kind == frame.Kind.GRADIENT
            if sender.id == P.WORLD_ID and f.kind == frame.Kind.OBSERVATION and f.stamp != self.acct.step:
                self._step(f.stamp)
        kind = "control" if None in payloads else "gradient" if gradients == len(pairs) else "env"
        for (dest, body), payload in zip(pairs, payloads):
            self._deliver_body(sender, dest, body, kind, payload or 0)
        self.acct.record("up", kind, link, parts, sum(n or 0 for n in payloads))  # after: off the critical path

    def _deliver_body(self, sender: PeerInfo, dest: bytes, body: bytes, kind: str, payload: int) -> None:
        if dest == P.ALL_AGENTS:
            for peer in self.agents():
                if sender.id == P.SYNC_ID and self.faults.blocks_beacon(peer.link):
                    self.acct.other["beacons_lost"] = self.acct.other.get("beacons_lost", 0) + 1
                    continue
                self.deliver(peer, [P.DELIVER, sender.id, body], kind, payload)
            return
        peer = self.peers.get(dest)
        if peer is None:
            self.acct.other["unknown_destination"] += 1
            return
        if not self.deliver(peer, [P.DELIVER, sender.id, body], kind, payload):
            self.acct.other["dropped"] += 1

    def _step(self, step: int) -> None:
        if step == 0:  # a new run: a broker outlives runs (compose), and each run's figures are its own
            self.acct = Accounting()
        self.acct.mark_step(step)
        if self.bundler:
            for bundle in self.bundler.new_step():
                self.send_bundle(bundle)
        while self.scheduled and self.scheduled[0][0] <= step:
            _, req = self.scheduled.pop(0)
            reply = self.control(P.pack(req))
            if not reply.get("ok"):
                log.warning("scheduled fault %s at step %d failed: %s", req, step, reply.get("error"))
        sync = self.peers.get(P.SYNC_ID)
        if sync and self.relay_every and step % self.relay_every == 0:
            # the sync service keeps time by the world's steps, only those it asked for:
            # waking it every step costs the lockstep a context switch on small machines
            self.deliver(sync, [P.STEP, P.pack(step)], "control", 0)

    # -- verbs open to every connection: tools and bus subscribers register nothing ----

    def on_stats(self, routing: bytes, peer: PeerInfo | None, parts: list[bytes]) -> None:
        self.acct.record("up", "control", peer.link if peer else "?", parts)
        self.reply(routing, "?", [P.STATS_REPLY, P.pack(self.stats())])

    def on_control(self, routing: bytes, peer: PeerInfo | None, parts: list[bytes]) -> None:
        self.acct.record("up", "control", peer.link if peer else "?", parts)
        self.reply(routing, "?", [P.CONTROL_REPLY, P.pack(self.control(parts[1]))])

    def on_subscribe(self, routing: bytes, peer: PeerInfo | None, parts: list[bytes]) -> None:
        if routing not in self.hub.subs and self.hub.full():
            self.prune_subscribers()
        try:
            replies = self.hub.subscribe(routing, parts[1])
        except BusRefused as e:
            self.break_rule(routing, "malformed", parts, str(e).encode())
            return
        self.acct.record("up", "control", peer.link if peer else "?", parts)
        for msg in replies:  # up to MAX_RETAINED: none more once the subscriber's queue is full
            if not self.reply(routing, "bus", msg):
                break

    def prune_subscribers(self) -> None:
        """Forget subscribers whose connection is gone: a send to one fails at once."""
        for routing in list(self.hub.subs):
            self.to_subscriber(routing, [P.HEARTBEAT])

    def on_publish(self, routing: bytes, peer: PeerInfo, parts: list[bytes]) -> None:
        if parts[3] not in (b"0", b"1"):
            self.break_rule(routing, "malformed", parts, b"malformed command")
            return
        try:
            self.publish(parts[1], parts[2], retain=parts[3] == b"1", publisher=peer.id)
        except BusRefused as e:
            self.break_rule(routing, "malformed", parts, str(e).encode())
            return
        self.acct.record("up", "control", peer.link, parts)

    # -- sending --------------------------------------------------------------------

    def deliver(self, peer: PeerInfo, parts: list[bytes], kind: str, payload: int) -> bool:
        try:
            P.send_parts(self.sock, [peer.routing, *parts], P.NOBLOCK)
        except zmq.ZMQError:  # EHOSTUNREACH (gone) or EAGAIN (its queue is full)
            return False
        peer.last_sent = time.monotonic()
        self.acct.record("down", kind, peer.link, parts, payload)
        return True

    def reply(self, routing: bytes, link: str, parts: list[bytes]) -> bool:
        """Whether it went: a connection that is gone or reads nothing gets none."""
        try:
            P.send_parts(self.sock, [routing, *parts], P.NOBLOCK)
        except zmq.ZMQError:
            return False
        self.acct.record("down", "control", link, parts)
        return True

    # -- faults and control ---------------------------------------------------------

    def control(self, request: bytes) -> dict:
        """CONTROL requests (protocol.CONTROL_OPS). Errors change nothing."""
        try:
            req = P.unpack(request)
        except Exception:  # msgpack raises several unrelated types on garbage
            return {"ok": False, "error": "malformed control message"}
        if not isinstance(req, dict):
            return {"ok": False, "error": "a control request is a map with an 'op'"}
        op = req.get("op")
        try:
            if op == P.FAULT_ADD:
                fault = self.faults.validate(req, {p.link for p in self.agents()})
                self.faults.add(fault, self.acct.step)
                self._fault_changed("add", [fault])
                return {"ok": True, "fault": fault.as_dict()}
            if op == P.FAULT_CLEAR:
                fid = req.get("id")
                if fid is not None and (isinstance(fid, bool) or not isinstance(fid, int)):
                    raise FaultError(f"fault id must be an integer, got {P.clip(repr(fid))}")
                gone = self.faults.clear(fid)
                self._fault_changed("clear", gone)
                return {"ok": True, "cleared": [f.as_dict() for f in gone]}
            if op == P.FAULT_LIST:
                return {"ok": True, "faults": self.faults.listing(), "step": self.acct.step}
            if op == P.STEP_RELAY:
                every = req.get("every")
                if isinstance(every, bool) or not isinstance(every, int) or every < 0:
                    raise FaultError(f"step-relay needs every >= 0, got {P.clip(repr(every))}")
                self.relay_every = every
                return {"ok": True, "every": every}
        except FaultError as e:
            return {"ok": False, "error": str(e)}
        return {"ok": False, "error": f"unknown control op {P.clip(repr(op))}; use {', '.join(P.CONTROL_OPS)}"}

    def schedule(self, entries: list[tuple[int, dict]]) -> None:
        self.scheduled = sorted(entries, key=lambda e: e[0])

    def _fault_changed(self, action: str, faults) -> None:
        for f in faults:
            log.info("fault %s: %s", action, f.as_dict())
            if self.fault_log:
                self.fault_log.write(json.dumps({"action": action, "step": self.acct.step, "time": time.time(),
                                                 "fault": f.as_dict()}) + "\n")
                self.fault_log.flush()
            if f.kind in CLOCK_KINDS:
                self._push_clock(f.target)
        if any(f.kind == "reorder" for f in faults) and action == "clear":
            self.line.flush_windows()
        self.publish_faults()

    def _push_clock(self, agent: str) -> None:
        peer = self.peers.get(agent.encode())
        if peer:
            body = P.pack({"op": P.CLOCK, **self.faults.clock_of(agent)})
            self.deliver(peer, [P.DELIVER, P.BROKER_ID, body], "control", 0)

    # -- telemetry ------------------------------------------------------------------

    def publish(self, topic: bytes | str, payload: bytes, retain: bool, publisher: bytes = P.BROKER_ID) -> None:
        """To the MQTT server or the embedded hub's subscribers; BusRefused for a topic or
        retained message the hub will not take."""
        if self.bus is not None:
            self.bus.publish(topic if isinstance(topic, str) else topic_text(topic, "topic", wildcards=False),
                             payload, retain=retain)
            return
        for routing, parts in self.hub.publish(topic, payload, retain, publisher):
            self.to_subscriber(routing, parts)

    def to_subscriber(self, routing: bytes, parts: list[bytes]) -> None:
        """A send to a bus subscriber; one that is gone or reads nothing is forgotten."""
        if not self.reply(routing, "bus", parts):
            self.hub.drop(routing)

    def publish_faults(self) -> None:
        self.publish("faults", json.dumps(self.faults.listing()).encode(), retain=True)

    def publish_status(self, pid: bytes, status: str) -> None:
        self.publish(f"status/{pid.decode()}", status.encode(), retain=True)

    # -- introspection ----------------------------------------------------------------

    def stats(self) -> dict:
        s = self.acct.snapshot()
        s["peers"] = {p.link: p.role.decode() for p in self.peers.values()}
        s["uptime_s"] = time.monotonic() - self.started
        s["faults"] = self.faults.listing()
        s["ignored_connections"] = len(self.ignored)
        return s
