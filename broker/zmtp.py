"""A ZMTP 3.1 DEALER on a plain TCP socket: the peers' end of the broker's ROUTER.

libzmq moves every message through its I/O thread: one more thread to wake per message
on each side. A lockstep step is six hops that each find their threads asleep, so on a
small machine those wake-ups are a large part of the step (docs/notes/latency.md,
fifteenth session: the step 18–24 % shorter with this socket in the peers). This class
speaks the same wire protocol (ZMTP 3.1, RFC 37: NULL mechanism, Socket-Type DEALER)
from the caller's own thread: a send is one non-blocking write, a receive a poll and a
read. The broker keeps its libzmq ROUTER and all its options, and sees an ordinary
DEALER. `broker/peer.py` picks libzmq's DEALER instead for CURVE and for endpoints other
than tcp://.

What it keeps of libzmq's DEALER: it connects lazily and retries every RECONNECT_S
while the broker is away, holding what is sent meanwhile up to MAX_QUEUED_BYTES (then it
drops and counts, like a high-water mark); it answers PINGs; a malformed stream or a
frame over the size limit drops the connection, as libzmq does. Unlike libzmq it
connects and shakes hands in the caller's thread, so an attempt on a broker that does
not answer blocks for up to CONNECT_TIMEOUT_S. A broker that wants another mechanism
(CURVE) makes the next receive raise ZmtpError: waiting would never get an answer.
"""

from __future__ import annotations

import logging
import math
import select
import socket
import struct
import time

from . import protocol

log = logging.getLogger("ddcl.zmtp")

RECONNECT_S = 0.1  # libzmq's default reconnect interval
CONNECT_TIMEOUT_S = 1.0  # each step of a connection attempt: name lookup, connect, handshake
MAX_QUEUED_BYTES = 64 << 20  # unsent bytes held for the broker before sends are dropped
READ_BYTES = 1 << 16

MORE, LONG, COMMAND = 0x01, 0x02, 0x04
SIGNATURE = b"\xff" + bytes(8) + b"\x7f"
GREETING = SIGNATURE + b"\x03\x01" + b"NULL".ljust(20, b"\0") + b"\0" + bytes(31)  # 3.1, NULL, as-server 0
GREETING_BYTES = 64
CURVE_HINT = "CURVE: pass the same --keys DIR as the broker"


class ZmtpError(Exception):
    """The broker speaks something this socket cannot: another mechanism, or not ZMTP 3."""


class Malformed(ZmtpError):
    """The byte stream broke the protocol; the connection that carried it is dropped."""


def _head(flags: int, size: int) -> bytes:
    return bytes((flags, size)) if size <= protocol.SHORT_FRAME_MAX else bytes((flags | LONG,)) + size.to_bytes(8, "big")


def encode(parts: list[bytes]) -> bytes:
    """One message as ZMTP frames (protocol.zmtp_framing bytes of head each)."""
    last = len(parts) - 1
    return b"".join(_head(MORE if i < last else 0, len(p)) + p for i, p in enumerate(parts))


def command(name: bytes, data: bytes = b"") -> bytes:
    body = bytes((len(name),)) + name + data
    return _head(COMMAND, len(body)) + body


def _property(name: bytes, value: bytes) -> bytes:
    return bytes((len(name),)) + name + struct.pack(">I", len(value)) + value


READY = command(b"READY", _property(b"Socket-Type", b"DEALER") + _property(b"Identity", b""))  # as libzmq's


class Decoder:
    """The broker's byte stream, fed in whatever pieces the socket gives, back into its
    greeting, commands and messages. Raises Malformed (or ZmtpError, for a mechanism it
    cannot speak) on a stream that breaks the protocol."""

    def __init__(self, max_frame: int = protocol.MAX_MSG_BYTES):
        self.max_frame = max_frame
        self.buf = bytearray()
        self.pos = 0
        self.parts: list[bytes] = []  # a message's frames so far
        self.greeted = False

    def feed(self, data: bytes) -> None:
        if self.pos and self.pos == len(self.buf):
            self.buf.clear()
            self.pos = 0
        elif self.pos > READ_BYTES:
            del self.buf[:self.pos]
            self.pos = 0
        self.buf += data

    def next(self) -> tuple | None:
        """("message", parts) or ("command", name, data), or None until more bytes come.
        The greeting is checked and consumed on the way."""
        buf = self.buf
        if not self.greeted:
            if len(buf) - self.pos < GREETING_BYTES:
                return None
            self._greeting(bytes(buf[self.pos:self.pos + GREETING_BYTES]))
            self.pos += GREETING_BYTES
            self.greeted = True
        while True:
            pos, have = self.pos, len(buf) - self.pos
            if have < 2:
                return None
            flags = buf[pos]
            if flags & ~(MORE | LONG | COMMAND):
                raise Malformed(f"frame flags {flags:#04x}: reserved bits set")
            if flags & LONG:
                if have < 9:
                    return None
                size, head = int.from_bytes(buf[pos + 1:pos + 9], "big"), 9
            else:
                size, head = buf[pos + 1], 2
            if size > self.max_frame:
                raise Malformed(f"a frame of {size} bytes, over the {self.max_frame}-byte limit")
            if have < head + size:
                return None
            body = bytes(buf[pos + head:pos + head + size])
            self.pos = pos + head + size
            if flags & COMMAND:
                if flags & MORE or self.parts or not body or body[0] + 1 > len(body):
                    raise Malformed("a malformed command frame")
                return "command", body[1:1 + body[0]], body[1 + body[0]:]
            self.parts.append(body)
            if not flags & MORE:
                parts, self.parts = self.parts, []
                return "message", parts

    @staticmethod
    def _greeting(g: bytes) -> None:
        if g[0] != 0xFF or g[9] != 0x7F:
            raise Malformed("not a ZMTP peer (bad signature)")
        if g[10] < 3:
            raise ZmtpError(f"the broker speaks ZMTP {g[10]}.{g[11]}; this socket speaks 3.x")
        mechanism = g[12:32].rstrip(b"\0")
        if mechanism != b"NULL":
            raise ZmtpError(f"the broker wants the {mechanism.decode(errors='replace')} mechanism"
                            + (f" ({CURVE_HINT})" if mechanism == b"CURVE" else ""))


def tcp_address(endpoint: str) -> tuple[str, int]:
    """tcp://host:port (host a name, an IPv4 address or a bracketed IPv6 one); ValueError
    otherwise."""
    if not endpoint.startswith("tcp://"):
        raise ValueError("not a tcp:// endpoint")
    host, sep, port = endpoint[6:].rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("Invalid argument")
    return host.strip("[]"), int(port)


class ZmtpDealer:
    """send(parts) and recv(timeout_s) -> parts | None, as a libzmq DEALER connected to
    `endpoint` would. One thread uses it at a time."""

    def __init__(self, endpoint: str):
        self.address = tcp_address(endpoint)
        self.endpoint = endpoint
        self.sock: socket.socket | None = None  # connected and past the handshake
        self.poller = select.poll()
        self.decoder: Decoder | None = None  # the connection's stream, past the handshake
        self.out = bytearray()  # bytes for the connected broker that the kernel has not taken yet
        self.held = bytearray()  # messages sent while there was no connection
        self.refused: str | None = None  # why the broker will never answer this socket
        self.waiting_out = False  # registered for POLLOUT
        self.next_attempt = 0.0
        self.dropped = 0  # messages dropped over MAX_QUEUED_BYTES
        self.closed = False
        self._connect()

    # -- connection -------------------------------------------------------------

    def _connect(self) -> None:
        self.next_attempt = time.monotonic() + RECONNECT_S
        try:
            s = socket.create_connection(self.address, timeout=CONNECT_TIMEOUT_S)
        except OSError:
            return  # not listening yet, or gone: the next send or receive tries again
        try:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.decoder = self._handshake(s)
        except ZmtpError as e:
            s.close()
            self.refused = f"{self.endpoint}: {e}"
            return
        except OSError:
            s.close()
            return
        s.setblocking(False)
        self.sock, self.out, self.held = s, self.held, bytearray()
        self.poller.register(s, select.POLLIN)
        self.waiting_out = False
        self._flush()

    @staticmethod
    def _handshake(s: socket.socket) -> Decoder:
        """Greeting and READY both ways before any message (libzmq drops a connection whose
        first message comes before its own READY went out). The decoder, past the READY."""
        s.sendall(GREETING + READY)
        dec = Decoder()
        while (item := dec.next()) is None:
            try:
                data = s.recv(READ_BYTES)
            except ConnectionResetError:  # closed with our READY unread
                data = b""
            if not data:
                if len(dec.buf) >= len(SIGNATURE):  # where libzmq hangs up on a mechanism it won't speak
                    raise ZmtpError("the broker closed the connection in the ZMTP handshake: it wants another "
                                    f"mechanism than NULL ({CURVE_HINT})")
                raise ConnectionResetError("closed in the handshake")
            dec.feed(data)
        if item[:2] != ("command", b"READY"):
            raise Malformed(f"the broker's handshake sent {item[:2]!r} before READY")
        return dec

    def _drop(self, why: str) -> None:
        log.debug("connection to %s dropped: %s", self.endpoint, why)
        self.poller.unregister(self.sock)
        self.sock.close()
        self.sock = None
        self.out = bytearray()  # what was in flight is lost, as with libzmq
        self.next_attempt = time.monotonic() + RECONNECT_S

    def close(self) -> None:
        """Unlike libzmq with LINGER 0, what the kernel already took still goes out."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.closed = True

    # -- sending ----------------------------------------------------------------

    def send(self, parts: list[bytes]) -> None:
        self._write(encode(parts))

    def _write(self, data: bytes) -> None:
        pending = self.held if self.sock is None else self.out
        if len(pending) + len(data) > MAX_QUEUED_BYTES:
            if not self.dropped:
                log.warning("%d MiB wait for the broker at %s: further sends are dropped until it takes them",
                            len(pending) >> 20, self.endpoint)
            self.dropped += 1
            return
        pending += data
        if self.sock is not None:
            self._flush()
        elif time.monotonic() >= self.next_attempt:
            self._connect()

    def _flush(self) -> None:
        try:
            n = self.sock.send(self.out)
        except BlockingIOError:
            n = 0
        except OSError as e:
            self._drop(str(e))
            return
        del self.out[:n]
        if bool(self.out) != self.waiting_out:  # poll for room only while bytes wait for it
            self.waiting_out = not self.waiting_out
            self.poller.modify(self.sock, select.POLLIN | (select.POLLOUT if self.waiting_out else 0))

    # -- receiving --------------------------------------------------------------

    def recv(self, timeout_s: float | None) -> list[bytes] | None:
        """The next message, or None after timeout_s (None: wait for one)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if self.refused:
                raise ZmtpError(self.refused)
            if self.sock is not None and (msg := self._next()) is not None:
                return msg
            left = None if deadline is None else deadline - time.monotonic()
            if self.sock is None:
                if left is not None and left <= 0:
                    return None
                wait = self.next_attempt - time.monotonic()
                time.sleep(max(0.0, wait if left is None else min(wait, left)))
                if time.monotonic() >= self.next_attempt:
                    self._connect()
                continue
            wait_ms = -1 if left is None else max(0, math.ceil(left * 1000))
            events = self.poller.poll(wait_ms)
            if not events and wait_ms == 0:  # a message already in the kernel is still returned
                return None
            for _, event in events:
                if event & select.POLLOUT:
                    self._flush()
                if self.sock is not None and event & (select.POLLIN | select.POLLERR | select.POLLHUP):
                    self._read()

    def _read(self) -> None:
        try:
            data = self.sock.recv(READ_BYTES)
        except BlockingIOError:
            return
        except OSError as e:
            self._drop(str(e))
            return
        if not data:
            self._drop("closed by the broker")
            return
        self.decoder.feed(data)

    def _next(self) -> list[bytes] | None:
        """The next whole message already read; commands are handled on the way."""
        while True:
            try:
                item = self.decoder.next()
            except Malformed as e:
                log.warning("dropping the connection to %s: %s", self.endpoint, e)
                self._drop(str(e))
                return None
            if item is None:
                return None
            if item[0] == "message":
                return item[1]
            if item[1] == b"PING":  # the data: a 2-byte TTL, then the context PONG echoes
                self._write(command(b"PONG", item[2][2:]))
            elif item[1] == b"ERROR":
                self._drop(f"ERROR from the broker: {item[2][1:].decode(errors='replace')}")
                return None
