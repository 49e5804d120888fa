"""Who the broker knows: registered peers by id and by connection, which id a
registration gets, and a bounded memory of connections it has reason to remember.

Ids come from the network: a role must be one of protocol.ROLES and an id must fit its
role's grammar (protocol.valid_id) before the broker decodes or keeps either.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from .protocol import MAX_AGENTS, MAX_PEERS, ROLES, agent_id, agent_index, shown, valid_id

log = logging.getLogger("ddcl.broker")

MAX_REMEMBERED = 4096  # connections whose strikes, bans or take-overs the broker remembers
ID_RULES = {  # what a refused id is told about its role's grammar
    b"agent": b"agent ids look like agent-K, K < %d" % MAX_AGENTS,
    b"cli": b"cli ids look like cli or cli-<up to 16 of 0-9a-z>",
}


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
        self.index = agent_index(self.id) if self.role == b"agent" else None


class Refused(ValueError):
    """A registration the broker does not grant; `why` goes back in its ERROR."""

    def __init__(self, why: bytes):
        super().__init__(why.decode("ascii", "replace"))
        self.why = why


def grant_id(role: bytes, wanted: bytes, taken) -> bytes:
    """The id a registration for `role` gets: `wanted`, the role's own, or for an agent
    that names none the lowest agent-K not in `taken`."""
    if role not in ROLES:
        raise Refused(b"unknown role " + shown(role, 32).encode())
    if not wanted and role == b"agent":
        free = next((agent_id(k) for k in range(MAX_AGENTS) if agent_id(k) not in taken), None)
        if free is None:
            raise Refused(b"no free agent id")
        return free
    if not wanted:
        return role
    if not valid_id(role, wanted):
        rule = ID_RULES.get(role, b"its id is " + role)
        raise Refused(b"bad %s id %s: %s" % (role, shown(wanted, 32).encode(), rule))
    return wanted


class Remembered(OrderedDict):
    """A bounded map of connection routing ids: the oldest are forgotten first, so no
    stream of new connections grows the broker."""

    def note(self, key: bytes, value) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > MAX_REMEMBERED:
            self.popitem(last=False)


class Registry:
    def __init__(self):
        self.peers: dict[bytes, PeerInfo] = {}
        self.by_routing: dict[bytes, bytes] = {}
        self.replaced = Remembered()  # connections whose id a newer registration took over

    def of(self, routing: bytes) -> PeerInfo | None:
        pid = self.by_routing.get(routing)
        return self.peers[pid] if pid else None

    def agents(self) -> list[PeerInfo]:
        return [p for p in self.peers.values() if p.role == b"agent"]

    def admit(self, pid: bytes, role: bytes, routing: bytes) -> PeerInfo:
        """The peer `pid` on this connection from now on. A restarted process takes its
        id over from its old connection; a new id is Refused once MAX_PEERS are here."""
        old = self.peers.get(pid)
        if old is not None and old.routing != routing:
            log.info("peer %s re-registered: the new connection takes over", pid.decode())
            self.by_routing.pop(old.routing, None)
            self.replaced.note(old.routing, True)
        elif old is None and len(self.peers) >= MAX_PEERS:
            raise Refused(b"the broker serves %d peers already" % MAX_PEERS)
        if (prior := self.by_routing.get(routing)) not in (None, pid):
            self.forget(prior)  # one connection, one id: the last it registered
        peer = self.peers[pid] = PeerInfo(pid, role, routing, time.monotonic())
        self.by_routing[routing] = pid
        return peer

    def forget(self, pid: bytes) -> None:
        info = self.peers.pop(pid, None)
        if info and self.by_routing.get(info.routing) == pid:
            del self.by_routing[info.routing]
