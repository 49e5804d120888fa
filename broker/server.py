"""The broker: one ROUTER socket, one loop. Registers peers, routes, keeps heartbeats,
and accounts every byte in and out (broker/accounting.py)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import zmq

from channel import ChannelError, frame

from . import protocol as P
from .accounting import Accounting

log = logging.getLogger("ddcl.broker")


@dataclass
class PeerInfo:
    id: bytes
    role: bytes
    routing: bytes
    last_seen: float


class Broker:
    def __init__(self, endpoint: str = P.DEFAULT_ENDPOINT, heartbeat_s: float = P.HEARTBEAT_S, ctx=None):
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
        self.sock.bind(endpoint)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.heartbeat_s = heartbeat_s
        self.peers: dict[bytes, PeerInfo] = {}
        self.by_routing: dict[bytes, bytes] = {}
        self.acct = Accounting()
        self.started = time.monotonic()

    # -- the loop ---------------------------------------------------------------

    def serve(self, should_stop=lambda: False) -> None:
        next_check = time.monotonic() + self.heartbeat_s
        try:
            while not should_stop():
                if self.sock.poll(int(self.heartbeat_s * 250)):
                    for _ in range(10_000):  # drain what is queued, then look at the clock
                        try:
                            msg = self.sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self.handle(msg[0], msg[1:])
                if time.monotonic() >= next_check:
                    self.expire_dead()
                    next_check = time.monotonic() + self.heartbeat_s
        finally:
            self.sock.close(0)

    def expire_dead(self) -> None:
        limit = time.monotonic() - P.LIVENESS * self.heartbeat_s
        for pid, info in list(self.peers.items()):
            if info.last_seen < limit:
                log.warning("peer %s silent for %d intervals: dead", pid.decode(), P.LIVENESS)
                self._forget(pid)

    def _forget(self, pid: bytes) -> None:
        info = self.peers.pop(pid, None)
        if info and self.by_routing.get(info.routing) == pid:
            del self.by_routing[info.routing]

    # -- receiving ----------------------------------------------------------------

    def handle(self, routing: bytes, parts: list[bytes]) -> None:
        pid = self.by_routing.get(routing)
        link = (pid or b"?").decode(errors="replace")
        if pid:
            self.peers[pid].last_seen = time.monotonic()
        if len(parts) == 1 and P.is_channel_frame(parts[0]):
            self._agent_message(pid, link, parts)
            return
        cmd = parts[0] if parts else b""
        if cmd == P.SEND and len(parts) == 3:
            self._send(pid, routing, link, parts)
            return
        if cmd == P.REGISTER and len(parts) == 3:
            self._register(routing, parts)  # accounts under the id it grants
            return
        self.acct.record("up", "control", link, parts)
        if pid is None and cmd != P.STATS and cmd != P.CONTROL:
            self.acct.other["rejected"] += 1
            self.reply(routing, "?", [P.ERROR, b"register first"])
        elif cmd == P.HEARTBEAT and len(parts) == 1:
            pass
        elif cmd == P.STEP and len(parts) == 2:
            try:
                self.acct.mark_step(int(P.unpack(parts[1])))
            except Exception:  # msgpack raises several unrelated types on garbage
                self.acct.other["rejected"] += 1
        elif cmd == P.STATS and len(parts) == 1:
            self.reply(routing, link, [P.STATS_REPLY, P.pack(self.stats())])
        elif cmd == P.CONTROL and len(parts) == 2:
            self.reply(routing, link, [P.CONTROL_REPLY, P.pack(self.control(parts[1]))])
        elif cmd == P.BYE and len(parts) == 1:
            self._forget(pid)
        else:
            self.acct.other["rejected"] += 1
            self.reply(routing, link, [P.ERROR, b"malformed command"])

    def _register(self, routing: bytes, parts: list[bytes]) -> None:
        _, role, wanted = parts
        pid = self._grant_id(routing, role, wanted)
        self.acct.record("up", "control", (pid or b"?").decode(errors="replace"), parts)
        if pid is not None:
            old = self.peers.get(pid)
            if old is not None and old.routing != routing:
                log.info("peer %s re-registered: the new connection takes over", pid.decode())
                self.by_routing.pop(old.routing, None)
            self.peers[pid] = PeerInfo(pid, role, routing, time.monotonic())
            self.by_routing[routing] = pid
            self.reply(routing, pid.decode(), [P.REGISTERED, pid])

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

    def _agent_message(self, pid, link: str, parts: list[bytes]) -> None:
        acct = self.acct
        acct.messages["sent"] += 1
        try:
            f = frame.unpack(parts[0])
            if pid is None or P.agent_index(pid) is None or f.kind != frame.Kind.MESSAGE:
                raise ChannelError("agent messages come from registered agents")
            if f.sender != P.agent_index(pid):
                raise ChannelError("frame sender does not match the registered id")
        except ChannelError:
            acct.record("up", "message", link, parts)
            acct.messages["rejected"] += 1
            return
        header = len(parts[0]) - len(f.payload)
        acct.record("up", "message", link, parts, len(f.payload))
        acct.record_float32("up", header, f.count)
        recipients = [p for p in self.peers.values() if p.role == b"agent" and p.id != pid]
        ok = bool(recipients)
        for peer in recipients:
            if self.deliver(peer, parts, "message", len(f.payload)):
                acct.record_float32("down", header, f.count)
            else:
                ok = False
        acct.messages["delivered" if ok else "dropped"] += 1

    def _send(self, pid, routing: bytes, link: str, parts: list[bytes]) -> None:
        _, dest, body = parts
        kind, payload = "control", 0
        if P.is_channel_frame(body):
            try:
                f = frame.unpack(body)
                kind, payload = "env", len(f.payload)
            except ChannelError:
                self.acct.record("up", "env", link, parts)
                self.acct.other["rejected"] += 1
                self.reply(routing, link, [P.ERROR, b"malformed frame"])
                return
        self.acct.record("up", kind, link, parts, payload)
        if pid is None:
            self.acct.other["rejected"] += 1
            self.reply(routing, link, [P.ERROR, b"register first"])
            return
        peer = self.peers.get(dest)
        if peer is None:
            self.acct.other["unknown_destination"] += 1
            return
        if not self.deliver(peer, [P.DELIVER, pid, body], kind, payload):
            self.acct.other["dropped"] += 1

    # -- sending --------------------------------------------------------------------

    def deliver(self, peer: PeerInfo, parts: list[bytes], kind: str, payload: int) -> bool:
        try:
            self.sock.send_multipart([peer.routing] + parts, zmq.NOBLOCK)
        except zmq.ZMQError:  # EHOSTUNREACH (gone) or EAGAIN (its queue is full)
            return False
        self.acct.record("down", kind, peer.id.decode(), parts, payload)
        return True

    def reply(self, routing: bytes, link: str, parts: list[bytes]) -> None:
        try:
            self.sock.send_multipart([routing] + parts, zmq.NOBLOCK)
        except zmq.ZMQError:
            return
        self.acct.record("down", "control", link, parts)

    # -- introspection ----------------------------------------------------------------

    def stats(self) -> dict:
        s = self.acct.snapshot()
        s["peers"] = {p.id.decode(): p.role.decode() for p in self.peers.values()}
        s["uptime_s"] = time.monotonic() - self.started
        return s

    def control(self, request: bytes) -> dict:
        """Control requests (faults, issue 4) arrive here; none are defined yet."""
        return {"ok": False, "error": "no control requests are supported by this broker"}
