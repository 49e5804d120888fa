"""The DEALER side: one class every role (agent, world, sync, CLI) talks to the broker with.

Its socket is broker/zmtp.py's ZmtpDealer (ZMTP from the role's own thread) where it
can serve, libzmq's DEALER otherwise (CURVE, non-TCP endpoints, DDCL_PEER_SOCKET=libzmq):
both behind the same send(parts) / recv(timeout_s) / close()."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable

import zmq

from . import protocol
from .zmtp import ZmtpDealer, ZmtpError

log = logging.getLogger("ddcl.peer")

SOCKET_ENV = "DDCL_PEER_SOCKET"  # zmtp (default) | libzmq: which DEALER the peers use


class BrokerError(RuntimeError):
    """The broker refused a request or did not answer in time."""


class BrokerLost(BrokerError):
    """The broker went silent mid-run for longer than the role waits for it."""


class Peer:
    """A registered DEALER connection to the broker. Use as a context manager."""

    def __init__(self, endpoint: str, role: bytes, wanted_id: bytes = b"", timeout_s: float = 10.0, ctx=None,
                 curve=None):
        self.sock = dealer(endpoint, curve, ctx)
        self.endpoint = endpoint
        self.role = role
        self.last_sent = self.last_heard = time.monotonic()
        self.id = b""  # until registered: _register reads the broker's answer itself
        self.reregistrations = 0  # times this peer registered again: a restarted broker, or one that gave it up for dead
        self._asked_again: float | None = None  # when this peer last registered again, until answered
        self._missed = False  # the broker has been silent past its liveness: said once per outage
        self.on_reregistered = None  # called when a broker takes this peer back, before its next message
        self.id = self._register(wanted_id, timeout_s) if role != b"cli" else b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self, bye: bool = True) -> None:
        if self.sock.closed:
            return
        if bye and self.id:
            self.sock.send([protocol.BYE])
        self.sock.close()

    def _register(self, wanted_id: bytes, timeout_s: float) -> bytes:
        self.sock.send([protocol.REGISTER, self.role, wanted_id])
        parts = self.recv(timeout_s)
        if parts is None:
            raise BrokerError(f"no answer from the broker at {self.endpoint} in {timeout_s}s")
        if parts[0] == protocol.ERROR:
            raise BrokerError(parts[1].decode(errors="replace"))
        if parts[0] != protocol.REGISTERED:
            raise BrokerError(f"unexpected reply to REGISTER: {parts[0]!r}")
        return parts[1]

    def send_parts(self, parts: list[bytes]) -> None:
        self.sock.send(parts)
        self.last_sent = time.monotonic()

    def broadcast_frame(self, frame: bytes) -> None:
        """An agent message: one ZeroMQ frame, broadcast by the broker to the peer agents."""
        self.send_parts([frame])

    def send_to(self, dest: bytes, body: bytes) -> None:
        self.send_parts([protocol.SEND, dest, body])

    def send_each(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        """(destination, body) pairs in one message: one send here and one receive in the
        broker, however many destinations."""
        self.send_parts([protocol.SEND, *(x for item in items for x in item)])

    def heartbeat_if_idle(self) -> float:
        """A heartbeat when nothing went out for HEARTBEAT_S; the time the next falls due."""
        if time.monotonic() - self.last_sent >= protocol.HEARTBEAT_S:
            self.send_parts([protocol.HEARTBEAT])
        return self.last_sent + protocol.HEARTBEAT_S

    def recv(self, timeout_s: float | None) -> list[bytes] | None:
        """The next message for the role, or None after timeout_s (None: wait forever).
        The broker's heartbeats and a re-registration with a restarted broker stay in here,
        and so do this peer's own heartbeats: a role that waits longer than the broker's
        liveness without sending (a world on a deadline a dead agent never meets) would
        otherwise be given up for dead, and what it sends next be lost."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            beat_at = self.heartbeat_if_idle() if self.id else None
            now = time.monotonic()
            wait = None if deadline is None else max(0.0, deadline - now)
            beat_first = beat_at is not None and (wait is None or now + wait > beat_at)  # a heartbeat falls due first
            try:
                parts = self.sock.recv(beat_at - now if beat_first else wait)
            except ZmtpError as e:  # the broker wants what this socket cannot speak: no answer would come
                raise BrokerError(str(e)) from None
            if parts is None and beat_first:
                continue  # the wait goes on after the heartbeat
            if parts is None:
                if self.id and not self._missed and self.silent_s() > protocol.LIVENESS * protocol.HEARTBEAT_S:
                    self._missed = True
                    log.warning("no word from the broker at %s for %.0f s; waiting for it", self.endpoint,
                                self.silent_s())
                return None
            self.last_heard = time.monotonic()
            if self._missed:
                self._missed = False
                log.warning("the broker at %s answers again", self.endpoint)
            if not self._liveness(parts):
                return parts

    def _liveness(self, parts: list[bytes]) -> bool:
        """Consume the broker's own liveness traffic (True), or leave a message to the role."""
        if len(parts) == 1 and parts[0] == protocol.HEARTBEAT:
            return True
        if not self.id or len(parts) != 2:
            return False
        if parts[0] == protocol.ERROR and parts[1] == protocol.REPLACED:
            raise BrokerError(f"{self.id.decode()} was taken over by a newer connection to the broker at "
                              f"{self.endpoint} (a restarted or second process with the same id): this one stops")
        if parts[0] == protocol.ERROR and parts[1] == protocol.NOT_REGISTERED:
            # the broker restarted, or gave this peer up for dead: one REGISTER answers a burst
            if self._asked_again is None or self.last_heard - self._asked_again > 0.5:
                self._asked_again = self.last_heard
                self.send_parts([protocol.REGISTER, self.role, self.id])
            return True
        if parts[0] == protocol.REGISTERED and parts[1] == self.id:
            if self._asked_again is not None:
                self._asked_again = None
                self.reregistrations += 1
                if self.on_reregistered:
                    self.on_reregistered()
            return True
        return False

    def silent_s(self) -> float:
        """Seconds since the broker last sent anything: past LIVENESS heartbeat intervals,
        it is gone."""
        return time.monotonic() - self.last_heard

    def request(self, parts: list[bytes], reply_cmd: bytes, timeout_s: float = 5.0):
        """Send a command and wait for its reply (ignoring anything else); msgpack-decoded."""
        self.send_parts(parts)
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            msg = self.recv(left)
            if msg is None:
                break
            if msg[0] == protocol.ERROR:
                raise BrokerError(msg[1].decode(errors="replace"))
            if msg[0] == reply_cmd:
                return protocol.unpack(msg[1])
        raise BrokerError(f"no reply from the broker at {self.endpoint} in {timeout_s}s")

    def stats(self, timeout_s: float = 5.0) -> dict:
        return self.request([protocol.STATS], protocol.STATS_REPLY, timeout_s)


class LibzmqDealer:
    """libzmq's DEALER behind ZmtpDealer's face: for CURVE and non-TCP endpoints, or all
    peers with DDCL_PEER_SOCKET=libzmq (what `ddcl bench net` compares against)."""

    def __init__(self, endpoint: str, curve=None, ctx=None):
        self.dropped = 0  # sends refused at the high-water mark, as ZmtpDealer drops over its limit
        self.sock = (ctx or zmq.Context.instance()).socket(zmq.DEALER)
        if curve is not None:
            curve.connect(self.sock)
        for opt, val in ((zmq.LINGER, 0), (zmq.SNDHWM, protocol.HWM), (zmq.RCVHWM, protocol.HWM), (zmq.MAXMSGSIZE, protocol.MAX_MSG_BYTES)):
            self.sock.setsockopt(opt, val)
        try:
            self.sock.connect(endpoint)
        except zmq.ZMQError as e:
            self.sock.close(0)
            raise BrokerError(protocol.bad_endpoint(endpoint, e.strerror)) from None

    @property
    def closed(self) -> bool:
        return self.sock.closed

    def send(self, parts: list[bytes]) -> None:
        try:
            protocol.send_parts(self.sock, parts, protocol.NOBLOCK)
        except zmq.Again:
            self.dropped += 1

    def recv(self, timeout_s: float | None) -> list[bytes] | None:
        protocol.set_timeout(self.sock, -1 if timeout_s is None else int(timeout_s * 1000))
        try:
            return protocol.recv_parts(self.sock)
        except zmq.Again:
            return None

    def close(self) -> None:
        self.sock.close(0)


def dealer(endpoint: str, curve=None, ctx=None) -> ZmtpDealer | LibzmqDealer:
    """The peer's socket: ZmtpDealer where it can serve (plain tcp://), libzmq's otherwise."""
    if curve is None and endpoint.startswith("tcp://") and os.environ.get(SOCKET_ENV, "zmtp") != "libzmq":
        try:
            return ZmtpDealer(endpoint)
        except ValueError as e:
            raise BrokerError(protocol.bad_endpoint(endpoint, str(e))) from None
    return LibzmqDealer(endpoint, curve, ctx)
