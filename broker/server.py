"""The broker: one ROUTER socket, one loop. Registers peers, routes, keeps heartbeats,
applies faults, and accounts every byte in and out (broker/accounting.py)."""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from channel import ChannelError, frame

from . import protocol as P
from . import trace
from .accounting import Accounting
from .bus import Hub, Publisher
from .faults import CLOCK_KINDS, FaultError, FaultTable

log = logging.getLogger("ddcl.broker")


@dataclass
class PeerInfo:
    id: bytes
    role: bytes
    routing: bytes
    last_seen: float
    last_sent: float = 0.0
    link: str = field(init=False)  # the id as text: what accounting and faults call this peer
    index: int | None = field(init=False)  # agent-K's K; None for the other roles

    def __post_init__(self):
        self.link = self.id.decode(errors="replace")
        self.index = P.agent_index(self.id) if self.role == b"agent" else None


class Broker:
    def __init__(self, endpoint: str = P.DEFAULT_ENDPOINT, heartbeat_s: float = P.HEARTBEAT_S, ctx=None,
                 log_dir: Path | None = None, bus: Publisher | None = None, run: str = "default", curve=None):
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        for opt, val in (
            (zmq.ROUTER_MANDATORY, 1),  # unroutable sends raise instead of vanishing
            (zmq.ROUTER_HANDOVER, 1),  # a restarted peer with the same routing id takes over
            (zmq.LINGER, 0),
            (zmq.MAXMSGSIZE, P.MAX_MSG_BYTES),
            (zmq.SNDHWM, P.HWM),
            (zmq.RCVHWM, P.HWM),
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
        self.replaced: set[bytes] = set()  # connections whose id a newer registration took over
        self.acct = Accounting()
        self.faults = FaultTable()
        self.scheduled: list[tuple[int, dict]] = []  # (world step, fault request) from a faults file
        self.pending: list = []  # heap of (due time, seq, peer id, parts, payload) for delayed copies
        self.reorder: dict[tuple[str, str], list] = {}
        self.seq = itertools.count()
        self.fault_log = open(Path(log_dir) / "faults.jsonl", "a") if log_dir else None
        self.relay_every = 1  # world steps relayed to the sync service (it may ask for fewer)
        self.bus = bus  # an MQTT publisher; None: the embedded hub below serves the bus
        self.hub = Hub(run)
        self.started = time.monotonic()
        trace.name("broker")
        self.publish_faults()  # none yet: a listing an earlier broker left retained on MQTT would say otherwise

    # -- the loop ---------------------------------------------------------------

    def serve(self, should_stop=lambda: False) -> None:
        next_check = time.monotonic() + self.heartbeat_s
        try:
            while not should_stop():
                wait = self.heartbeat_s / 4
                if self.pending:
                    wait = max(0.0, min(wait, self.pending[0][0] - time.monotonic()))
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
                if time.monotonic() >= next_check:
                    self.expire_dead()
                    self.heartbeat_quiet()
                    next_check = time.monotonic() + self.heartbeat_s
        finally:
            if self.fault_log:
                self.fault_log.close()
            self.sock.close(0)

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

    # -- receiving ----------------------------------------------------------------

    def handle(self, routing: bytes, parts: list[bytes]) -> None:
        pid = self.by_routing.get(routing)
        peer = self.peers[pid] if pid else None
        link = peer.link if peer else "?"
        if peer:
            peer.last_seen = time.monotonic()
        if len(parts) == 1 and P.is_channel_frame(parts[0]):
            self._agent_message(peer, link, parts)
            return
        cmd = parts[0] if parts else b""
        if cmd == P.SEND and len(parts) >= 3 and len(parts) % 2:
            self._send(peer, routing, link, parts)
            return
        if cmd == P.REGISTER and len(parts) == 3:
            self._register(routing, parts)  # accounts under the id it grants
            return
        self.acct.record("up", "control", link, parts)
        if pid is None and cmd not in (P.STATS, P.CONTROL, P.PUBLISH, P.SUBSCRIBE):
            self.acct.other["rejected"] += 1
            self.refuse_unknown(routing, "?")
        elif cmd == P.HEARTBEAT and len(parts) == 1:
            pass
        elif cmd == P.STATS and len(parts) == 1:
            self.reply(routing, link, [P.STATS_REPLY, P.pack(self.stats())])
        elif cmd == P.CONTROL and len(parts) == 2:
            self.reply(routing, link, [P.CONTROL_REPLY, P.pack(self.control(parts[1]))])
        elif cmd == P.PUBLISH and len(parts) == 4:
            self.publish(parts[1].decode(errors="replace"), parts[2], retain=parts[3] == b"1")
        elif cmd == P.SUBSCRIBE and len(parts) == 2:
            for msg in self.hub.subscribe(routing, parts[1].decode(errors="replace")):
                self.reply(routing, link, msg)
        elif cmd == P.BYE and len(parts) == 1:
            self._forget(pid)
            self.publish_status(pid, "offline")
        else:
            self.acct.other["rejected"] += 1
            self.reply(routing, link, [P.ERROR, b"malformed command"])

    def _register(self, routing: bytes, parts: list[bytes]) -> None:
        _, role, wanted = parts
        pid = self._grant_id(routing, role, wanted)
        self.acct.record("up", "control", (pid or b"?").decode(errors="replace"), parts)
        if pid is None:
            return
        old = self.peers.get(pid)
        if old is not None and old.routing != routing:
            log.info("peer %s re-registered: the new connection takes over", pid.decode())
            self.by_routing.pop(old.routing, None)
            self.replaced.add(old.routing)
        self.peers[pid] = PeerInfo(pid, role, routing, time.monotonic())
        self.by_routing[routing] = pid
        self.reply(routing, pid.decode(), [P.REGISTERED, pid])
        self.publish_status(pid, "online")
        if role == b"agent" and any(self.faults.clock_of(pid.decode()).values()):
            self._push_clock(pid.decode())  # a restarted agent gets its clock faults back

    def refuse_unknown(self, routing: bytes, link: str) -> None:
        """An unregistered connection is told to register; one whose id was taken over is
        told so, or it would register again and take the id back, and two live processes
        would trade one id forever."""
        self.reply(routing, link, [P.ERROR, P.REPLACED if routing in self.replaced else P.NOT_REGISTERED])

    def _grant_id(self, routing: bytes, role: bytes, wanted: bytes) -> bytes | None:
        """The id this registration gets, or None after replying with an ERROR."""
        if role not in P.ROLES:
            self.reply(routing, "?", [P.ERROR, b"unknown role %s" % role[:32]])
            return None
        if role == b"agent":
            if wanted and P.agent_index(wanted) is None:
                self.reply(routing, "?", [P.ERROR, b"agent ids look like agent-K"])
                return None
            return wanted or self._free_agent_id()
        return wanted or role

    def _free_agent_id(self) -> bytes:
        k = 0
        while P.agent_id(k) in self.peers:
            k += 1
        return P.agent_id(k)

    def _step(self, step: int) -> None:
        if step == 0:  # a new run: a broker outlives runs (compose), and each run's figures are its own
            self.acct = Accounting()
        self.acct.mark_step(step)
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

    def agents(self) -> list[PeerInfo]:
        return [p for p in self.peers.values() if p.role == b"agent"]

    def _agent_message(self, sender: PeerInfo | None, link: str, parts: list[bytes]) -> None:
        acct = self.acct
        acct.messages["sent"] += 1
        try:
            f = frame.unpack(parts[0])
            if sender is None or sender.index is None or f.kind != frame.Kind.MESSAGE:
                raise ChannelError("agent messages come from registered agents")
            if f.sender != sender.index:
                raise ChannelError("frame sender does not match the registered id")
        except ChannelError:
            acct.record("up", "message", link, parts)
            acct.messages["rejected"] += 1
            return
        header = len(parts[0]) - len(f.payload)
        recipients = [p for p in self.agents() if p is not sender]
        ok = bool(recipients)
        for peer in recipients:
            copies, delay = self.faults.link_plan(link, peer.link)
            if copies == 0:
                ok = False
                acct.other["fault_dropped"] = acct.other.get("fault_dropped", 0) + 1
            for _ in range(copies):
                if not self.route(peer, parts, len(f.payload), header, f.count, delay, link):
                    ok = False
        # counted once it is on its way: the copies are the step's critical path, the count is not
        acct.record("up", "message", link, parts, len(f.payload))
        acct.record_float32("up", header, f.count)
        acct.messages["delivered" if ok else "dropped"] += 1

    def route(self, peer: PeerInfo, parts, payload: int, header: int, count: int, delay: float, src: str) -> bool:
        """An agent-message copy: now, after a delay, or through a reorder window."""
        dst = peer.link
        window = self.faults.reorder_window(src, dst)
        if delay > 0 or window > 1:
            item = (time.monotonic() + delay, next(self.seq), peer.id, parts, payload, header, count)
            if window > 1:
                buf = self.reorder.setdefault((src, dst), [])
                buf.append(item)
                if len(buf) >= window:
                    self.faults.rng.shuffle(buf)
                    for i, it in enumerate(buf):  # released shuffled, in one burst
                        heapq.heappush(self.pending, (it[0], next(self.seq) + i, *it[2:]))
                    buf.clear()
            else:
                heapq.heappush(self.pending, item)
            return True
        return self._deliver_message(peer, parts, payload, header, count)

    def _deliver_message(self, peer: PeerInfo, parts, payload: int, header: int, count: int) -> bool:
        if self.deliver(peer, parts, "message", payload):
            self.acct.record_float32("down", header, count)
            return True
        return False

    def release_due(self) -> None:
        now = time.monotonic()
        while self.pending and self.pending[0][0] <= now:
            _, _, pid, parts, payload, header, count = heapq.heappop(self.pending)
            peer = self.peers.get(pid)
            if peer is None or not self._deliver_message(peer, parts, payload, header, count):
                self.acct.other["dropped"] += 1

    def flush_reorder(self) -> None:
        for buf in self.reorder.values():
            for it in buf:
                heapq.heappush(self.pending, it)
            buf.clear()

    def _send(self, sender: PeerInfo | None, routing: bytes, link: str, parts: list[bytes]) -> None:
        """SEND: one or more (destination, body) pairs, each delivered as DELIVER from the
        sender; the world sends every agent its observations in one. Channel frames are
        checked, and a malformed one refuses the whole message."""
        pairs = [(parts[i], parts[i + 1]) for i in range(1, len(parts), 2)]
        payloads = []
        for _, body in pairs:
            if not P.is_channel_frame(body):
                payloads.append(None)
                continue
            try:
                f = frame.unpack(body)
            except ChannelError:
                self.acct.record("up", "env", link, parts)
                self.acct.other["rejected"] += 1
                self.reply(routing, link, [P.ERROR, b"malformed frame"])
                return
            payloads.append(len(f.payload))
            if sender and sender.id == P.WORLD_ID and f.kind == frame.Kind.OBSERVATION and f.stamp != self.acct.step:
                self._step(f.stamp)
        kind = "control" if None in payloads else "env"
        if sender is None:
            self.acct.other["rejected"] += 1
            self.refuse_unknown(routing, link)
        else:
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

    # -- sending --------------------------------------------------------------------

    def deliver(self, peer: PeerInfo, parts: list[bytes], kind: str, payload: int) -> bool:
        try:
            P.send_parts(self.sock, [peer.routing, *parts], P.NOBLOCK)
        except zmq.ZMQError:  # EHOSTUNREACH (gone) or EAGAIN (its queue is full)
            return False
        peer.last_sent = time.monotonic()
        self.acct.record("down", kind, peer.link, parts, payload)
        return True

    def reply(self, routing: bytes, link: str, parts: list[bytes]) -> None:
        try:
            P.send_parts(self.sock, [routing, *parts], P.NOBLOCK)
        except zmq.ZMQError:
            return
        self.acct.record("down", "control", link, parts)

    # -- faults and control ---------------------------------------------------------

    def control(self, request: bytes) -> dict:
        """CONTROL requests: fault-add, fault-list, fault-clear, step-relay. Errors change nothing."""
        try:
            req = P.unpack(request)
        except Exception:  # msgpack raises several unrelated types on garbage
            return {"ok": False, "error": "malformed control message"}
        if not isinstance(req, dict):
            return {"ok": False, "error": "a control request is a map with an 'op'"}
        op = req.get("op")
        try:
            if op == "fault-add":
                fault = self.faults.validate(req, {p.link for p in self.agents()})
                self.faults.add(fault, self.acct.step)
                self._fault_changed("add", [fault])
                return {"ok": True, "fault": fault.as_dict()}
            if op == "fault-clear":
                fid = req.get("id")
                if fid is not None and (isinstance(fid, bool) or not isinstance(fid, int)):
                    raise FaultError(f"fault id must be an integer, got {fid!r}")
                gone = self.faults.clear(fid)
                self._fault_changed("clear", gone)
                return {"ok": True, "cleared": [f.as_dict() for f in gone]}
            if op == "fault-list":
                return {"ok": True, "faults": self.faults.listing(), "step": self.acct.step}
            if op == "step-relay":
                every = req.get("every")
                if isinstance(every, bool) or not isinstance(every, int) or every < 0:
                    raise FaultError(f"step-relay needs every >= 0, got {every!r}")
                self.relay_every = every
                return {"ok": True, "every": every}
        except FaultError as e:
            return {"ok": False, "error": str(e)}
        return {"ok": False, "error": f"unknown control op {op!r}; use fault-add, fault-list, fault-clear or step-relay"}

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
            self.flush_reorder()
        self.publish_faults()

    def _push_clock(self, agent: str) -> None:
        peer = self.peers.get(agent.encode())
        if peer:
            body = P.pack({"op": "clock", **self.faults.clock_of(agent)})
            self.deliver(peer, [P.DELIVER, P.BROKER_ID, body], "control", 0)

    # -- telemetry ------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, retain: bool) -> None:
        if self.bus is not None:
            self.bus.publish(topic, payload, retain=retain)
            return
        for routing, parts in self.hub.publish(topic, payload, retain):
            try:
                P.send_parts(self.sock, [routing, *parts], P.NOBLOCK)
            except zmq.ZMQError:  # a subscriber that went away
                self.hub.drop(routing)
                continue
            self.acct.record("down", "control", "bus", parts)

    def publish_faults(self) -> None:
        self.publish("faults", json.dumps(self.faults.listing()).encode(), retain=True)

    def publish_status(self, pid: bytes, status: str) -> None:
        self.publish(f"status/{pid.decode(errors='replace')}", status.encode(), retain=True)

    # -- introspection ----------------------------------------------------------------

    def stats(self) -> dict:
        s = self.acct.snapshot()
        s["peers"] = {p.link: p.role.decode() for p in self.peers.values()}
        s["uptime_s"] = time.monotonic() - self.started
        s["faults"] = self.faults.listing()
        return s
