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

import re

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

# Ops: the "op" of a msgpack map, the body of a CONTROL or of a DELIVER that is not a
# channel frame. Every one, by who sends it to whom.
# operator -> broker, in CONTROL; the reply is {"ok": bool, ...}:
FAULT_ADD = "fault-add"  # a fault from now on, as a faults file would schedule it: reproducible runs
FAULT_LIST = "fault-list"  # the faults in force and the world step, to read a run's state
FAULT_CLEAR = "fault-clear"  # one fault by id, or all (id None): back to a clean network
STEP_RELAY = "step-relay"  # sync -> broker: relay every Nth world step only; a wake-up each step slows the lockstep
CONTROL_OPS = (FAULT_ADD, FAULT_LIST, FAULT_CLEAR, STEP_RELAY)
# broker and sync service -> agents, in DELIVER:
CLOCK = "clock"  # broker -> agent: its clock faults, again after a restart, which would lose them
# agent <-> sync: the current and next epoch seeds, asked at start, after a restart, or by a
# healing agent whose clock passed a rotation no beacon announced
EPOCH = "epoch"
BEACON = "beacon"  # sync -> all agents: a reference step and time to keep clocks honest, the next epoch ahead
# world <-> agents, in DELIVER (agents/lockstep.py carries the rest of that exchange):
HELLO = "hello"  # world -> all: JOIN, so agents a dead world left configured join this one
JOIN = "join"  # agent -> world: answered with CONFIG
CONFIG = "config"  # world -> agent: the run's settings, since an agent starts knowing none
READY = "ready"  # agent -> world: policy built and warm; step 0 waits, a cold CUDA device outlasts a deadline
END = "end"  # world -> agents: the run is over; each answers with its report
AGENT_STATS = "agent-stats"  # agent -> world: that report, for the run's summary
# learning world <-> learners, per update (agents/learn_wire.py carries their fields):
LEARN_CONFIG = "learn-config"  # world -> learner: the run's settings and the gradient codec
ADVANTAGE = "advantage"  # world -> learner: the rollout's advantages, which only the world's critic knows
GRAD_NORMS = "grad-norms"  # learner -> world: its gradient norms, so one global clip can be set
CLIP = "clip"  # world -> learners: that clip, so every party scales its gradients alike
PRIOR = "prior"  # learner -> peers: its learned range model, which their decoders must share
STATE_ASK = "state?"  # world -> learner: send STATE, for an evaluation or the checkpoint
STATE = "state"  # learner -> world: its policy's and prior's tensors
LEARNER_STATS = "learner-stats"  # learner -> world: its report at the end, for the run's summary
# a learner that rejoined, or a restarted broker, voids the update under way: every party
# goes back to the last update all of them saved, and the world redoes the next one
ROLLBACK = "rollback"  # world -> learners: {to: that update, round}; resent until answered
ROLLED = "rolled"  # learner -> world: {round}: restored, sends nothing more of the voided update
RESUME = "resume"  # world -> learners: {round}: all restored; what a learner holds from before is stale

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
HEARTBEAT_S = 1.0
LIVENESS = 3  # intervals of silence before a peer is dead
FINISH_WAIT_S = 3.0  # the longest a world waits for its agents' reports after END
MAX_MSG_BYTES = 1 << 22  # default largest message (all its frames): B = 4096 observations fit
HWM = 100_000  # a peer's queues: its own traffic only
# The broker's queues per connection, each way. libzmq counts messages, not bytes: a
# connection can make the broker hold at most this many of its messages (each under
# twice the size limit), and past it libzmq stops reading from that connection until the
# broker catches up. A lockstep peer has a few messages in flight; a flood is slowed to
# the broker's pace instead of piling up in its memory.
BROKER_HWM = 100

# Bounds on what a connection can make the broker hold or say: everything read from the
# network is hostile until checked.
MAX_AGENTS = WORLD_SENDER  # agent-0 .. agent-254: a channel frame's sender is one byte, 0xFF the world's
MAX_PEERS = MAX_AGENTS + 64  # registered connections of every role
# Open files of a `ddcl broker serve` process, connections included. Each TCP connection
# costs libzmq about 12 KB before it says a word; the kernel's limit (often 2**20) would
# let a flood of idle connections grow the broker without bound. At this cap libzmq
# stops accepting and keeps serving the connections it has.
MAX_OPEN_FILES = 1024
MAX_ID_BYTES = 20  # the longest id any role's grammar allows ("cli-" + 16)
MAX_PARTS = 2 * MAX_AGENTS + 3  # a SEND to every agent: command + (destination, body) pairs
MAX_TOPIC_BYTES = 256
MAX_RETAINED = 1024  # retained bus topics, all publishers together
MAX_RETAINED_PER_PEER = 64
MAX_RETAINED_BYTES = 1 << 16  # one retained payload
MAX_SUBSCRIBERS = 64  # connections holding bus subscriptions: each publication is a send to each
MAX_FILTERS = 16  # subscriptions per connection
STRIKES = 100  # rule breaks before the broker ignores a connection for good
ECHO_BYTES = 200  # the most of a peer's input any reply or log line repeats


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


_AGENT_ID = re.compile(rb"agent-(0|[1-9][0-9]{0,2})")
_CLI_ID = re.compile(rb"cli(-[0-9a-z]{1,16})?")


def agent_index(peer_id: bytes) -> int | None:
    """K of a canonical agent-K below MAX_AGENTS, else None. Checked on bytes, before any
    decoding or int(): ids come from the network."""
    m = _AGENT_ID.fullmatch(peer_id) if len(peer_id) <= MAX_ID_BYTES else None
    if m is None or int(m[1]) >= MAX_AGENTS:
        return None
    return int(m[1])


def valid_id(role: bytes, peer_id: bytes) -> bool:
    """The id grammar per role: agent-K (K < MAX_AGENTS, no leading zeros), `world`,
    `sync`, `cli` or cli-<up to 16 of [0-9a-z]>. Every valid id is ASCII."""
    if role == b"agent":
        return agent_index(peer_id) is not None
    if role == b"cli":
        return len(peer_id) <= MAX_ID_BYTES and _CLI_ID.fullmatch(peer_id) is not None
    return peer_id == role and role in (WORLD_ID, SYNC_ID)


def clip(text: str, limit: int = ECHO_BYTES) -> str:
    """Text made from peer input, cut to `limit` characters with its full length noted."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def shown(data: bytes | str, limit: int = ECHO_BYTES) -> str:
    """Peer input as it may appear in a reply or a log line: repr'd, at most `limit`
    characters of it, with the full length when cut."""
    text = repr(data[:limit])
    return text if len(data) <= limit else f"{text}... ({len(data)} bytes)"
