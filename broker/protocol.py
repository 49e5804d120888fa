"""Wire protocol between the broker and its peers: every constant in one place.

A peer is a DEALER; the broker one ROUTER. Two message shapes travel:

- a DDCL agent message: ONE ZeroMQ frame holding a channel frame (first byte 0x40..0x7F,
  the channel's version 1); the broker broadcasts it to the sender's peer agents. One
  frame keeps an agent message's overhead to the channel header plus 2 bytes of ZMTP.
- a command: a multipart message whose first frame is one command byte (0x01..0x3F):

    REGISTER   [cmd, role, wanted id or b""]      -> REGISTERED [cmd, id] | ERROR
    HEARTBEAT  [cmd]                              both ways; any message also proves liveness
    SEND       [cmd, destination id, body, ...]   -> to each destination: DELIVER [cmd, src, body]
                                                     (one or more destination-body pairs)
    STEP       [cmd, step (msgpack)]              broker -> sync service: a lockstep boundary
    STATS      [cmd]                              -> STATS_REPLY [cmd, msgpack dict]
    CONTROL    [cmd, msgpack request]             -> CONTROL_REPLY [cmd, msgpack reply]
    PUBLISH    [cmd, topic, payload, retain 0|1]  embedded bus: to matching subscribers
    SUBSCRIBE  [cmd, topic filter]                -> SUBSCRIBED [cmd, filter], then the retained
                                                     BUS_MESSAGE [cmd, topic, payload, retain]...
    BYE        [cmd]                              the peer leaves
    ERROR      [cmd, utf-8 text]                  the broker refused the last message

Liveness runs both ways: the broker counts a peer dead after LIVENESS silent heartbeat
intervals, and sends HEARTBEAT to every peer it has sent nothing to for an interval, so a
peer can tell a dead broker from a quiet one. A restarted broker knows no one: it answers
a peer's traffic with ERROR NOT_REGISTERED, and the peer registers again under its id;
a connection whose id a newer registration took over gets ERROR REPLACED and stops.
A bus subscriber registers nothing: silent for an interval, it sends its SUBSCRIBEs again
(a repeat is only acknowledged), so it learns the broker lives, and a restarted broker
gets its subscriptions back.

SEND to ALL_AGENTS reaches every agent (the sync service's beacons); messages the broker
itself originates (clock faults for an agent) come as DELIVER from BROKER_ID.

A SEND body is a channel frame (observations, actions) or a msgpack map (control
between world and agents); the broker checks channel frames strictly. The world's first
observation frame with a new step stamp marks the step boundary: no message of its own.
"""

from __future__ import annotations

import msgpack
import zmq

REGISTER = b"\x01"
REGISTERED = b"\x02"
HEARTBEAT = b"\x03"
SEND = b"\x04"
DELIVER = b"\x05"
STEP = b"\x06"
STATS = b"\x07"
STATS_REPLY = b"\x08"
ERROR = b"\x09"
BYE = b"\x0a"
CONTROL = b"\x0b"
CONTROL_REPLY = b"\x0c"
PUBLISH = b"\x0d"
SUBSCRIBE = b"\x0e"
BUS_MESSAGE = b"\x0f"
SUBSCRIBED = b"\x10"

NOT_REGISTERED = b"register first"  # ERROR text: the broker does not know this connection
REPLACED = b"id taken over by a newer connection"  # ERROR text: a restarted process holds this id now

ROLES = (b"agent", b"world", b"sync", b"cli")
WORLD_ID = b"world"
SYNC_ID = b"sync"
BROKER_ID = b"broker"
ALL_AGENTS = b"*"
WORLD_SENDER = 0xFF  # the world's sender id inside channel frames

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
HEARTBEAT_S = 1.0
LIVENESS = 3  # intervals of silence before a peer is dead
MAX_MSG_BYTES = 1 << 22  # MAXMSGSIZE: larger messages are cut off by libzmq itself
HWM = 100_000


# plain ints: pyzmq's send_multipart and socket-option properties build Flag enums on every
# call, which costs three times the send itself for a lockstep step's few-byte messages
NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_RCVMORE = int(zmq.RCVMORE)
_RCVTIMEO = int(zmq.RCVTIMEO)
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)


def send_parts(sock: zmq.Socket, parts: list[bytes], flags: int = 0) -> None:
    """sock.send_multipart(parts, flags), for a list of bytes."""
    more = flags | _SNDMORE
    for part in parts[:-1]:
        sock.send(part, more)
    sock.send(parts[-1], flags)


def recv_parts(sock: zmq.Socket, flags: int = 0) -> list[bytes]:
    """sock.recv_multipart(flags), without its per-part option lookup through Flag enums
    (a quarter of a 5-part receive)."""
    parts = [sock.recv(flags)]
    while sock.get(_RCVMORE):
        parts.append(sock.recv(flags))
    return parts


def readable(sock: zmq.Socket) -> bool:
    """A message is queued: cheaper to ask than a non-blocking receive's zmq.Again."""
    return bool(sock.get(_EVENTS) & _POLLIN)


def set_timeout(sock: zmq.Socket, ms: int) -> None:
    """The socket's receive timeout (-1: none): a receive timeout, not a poll, because
    Socket.poll builds a Poller per call and roles wait several times per step."""
    sock.set(_RCVTIMEO, ms)


def is_channel_frame(part: bytes) -> bool:
    return len(part) > 0 and part[0] >> 6 == 1


SHORT_FRAME_MAX = 255  # ZMTP 3: a body up to this size has a 1-byte size, a longer one 8 bytes


def zmtp_framing(size: int) -> int:
    """ZMTP 3 bytes around one frame body: flags + 1-byte size up to SHORT_FRAME_MAX, else
    flags + 8-byte size."""
    return 2 if size <= SHORT_FRAME_MAX else 9


def bad_endpoint(endpoint: str, why: str) -> str:
    """Why connecting to `endpoint` failed at once: its form is checked there, not its
    reachability."""
    return f"cannot connect to {endpoint!r}: {why} (endpoints look like tcp://host:port)"


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes):
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def agent_id(index: int) -> bytes:
    return b"agent-%d" % index


def agent_index(peer_id: bytes) -> int | None:
    if peer_id.startswith(b"agent-") and peer_id[6:].isdigit():
        return int(peer_id[6:])
    return None
