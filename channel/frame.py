"""The frame: a compact header and a codec payload. One layout, packed and parsed here.

    byte 0   version (2 bits) | kind (3 bits) | codec wire id (3 bits)
    byte 1   sender id
    byte 2   stamp mode (2 bits) | stamp bits - 1 (6 bits; zero unless mode is LOW)
    stamp    FULL: the step as a zigzag LEB128 varint; LOW: ceil(K / 8) bytes, big-endian
    count    LEB128 varint: values in the message
    payload  the codec's bytes, to the end of the frame

A 4-value message with no stamp has a 4-byte header; with a full step below 2**13, 6.
The parser checks every field before it is used and raises FrameError, nothing else.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

from .errors import FrameError

VERSION = 1
# The codec field's values; each codec class takes its wire id from here. The frame
# imports no codec, so parsing frames (the broker's part) needs neither torch nor numba.
CODEC_IDS = {"float32": 0, "expgolomb": 1, "rice": 2, "range": 3}
_CODEC_WIRE_IDS = frozenset(CODEC_IDS.values())
MAX_COUNT = 1 << 20  # values in one message: bounds every allocation a decoder makes
MAX_FRAME_BYTES = 1 << 22  # larger input is refused before it is looked at
MAX_SENDER = 0xFF
MAX_STAMP_BITS = 32
_MAX_VARINT_BYTES = 10  # a 64-bit value


class Kind(IntEnum):
    """What a frame carries."""

    MESSAGE = 0  # an agent's DDCL message to its peers
    OBSERVATION = 1
    ACTION = 2
    GRADIENT = 3  # a listener's dL/dz_hat for a speaker's messages of one update (agents/learn_wire.py)


class StampMode(IntEnum):
    """What a frame tells of its sender's step, so a receiver finds the sender's dither."""

    NONE = 0  # implicit: the receiver uses its own clock view
    FULL = 1  # the sender's full step
    LOW = 2  # the step's K low bits


# by value, without Enum's lookup machinery on every frame (three times a field's parse)
_KINDS = {m.value: m for m in Kind}
_STAMP_MODES = {m.value: m for m in StampMode}


def _member(members: dict, value, what: str):
    member = members.get(value) if isinstance(value, int) else None
    if member is None:
        raise FrameError(f"{value!r} is not a valid {what}")
    return member


class Frame(NamedTuple):
    """A parsed frame (`unpack`): the fields `pack` took."""

    kind: Kind
    sender: int
    codec: int  # wire id: CODEC_IDS
    count: int
    payload: bytes
    stamp_mode: StampMode = StampMode.NONE
    stamp: int = 0
    stamp_bits: int = 0  # K, for StampMode.LOW


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(data: bytes, pos: int, what: str) -> tuple[int, int]:
    v = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos + i >= len(data):
            raise FrameError(f"truncated frame: {what} runs past the end")
        b = data[pos + i]
        v |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            if b == 0 and i > 0:
                raise FrameError(f"overlong varint in {what}")
            return v, pos + i + 1
    raise FrameError(f"varint in {what} is longer than {_MAX_VARINT_BYTES} bytes")


def pack(
    *,
    kind: int,
    sender: int,
    codec: int,
    count: int,
    payload: bytes,
    stamp_mode: int = StampMode.NONE,
    stamp: int = 0,
    stamp_bits: int = 0,
) -> bytes:
    """Build a frame.

    Args:
        kind: A `Kind`.
        sender: The sender id, 0..255.
        codec: The payload codec's ``wire_id``.
        count: How many values the payload holds, 0..MAX_COUNT.
        payload: The codec's bytes.
        stamp_mode: A `StampMode`: what the frame tells of the sender's step.
        stamp: The sender's step (FULL), or the step whose low bits are sent (LOW).
        stamp_bits: LOW only: how many low bits, 1..MAX_STAMP_BITS.

    Returns:
        The frame's bytes (at most MAX_FRAME_BYTES).

    Raises:
        FrameError: a field out of range (a bug on the sending side).
    """
    kind, stamp_mode = _member(_KINDS, kind, "Kind"), _member(_STAMP_MODES, stamp_mode, "StampMode")
    if codec not in _CODEC_WIRE_IDS:
        raise FrameError(f"unknown codec id {codec}")
    if not 0 <= sender <= MAX_SENDER:
        raise FrameError(f"sender must be 0..{MAX_SENDER}, got {sender}")
    if not 0 <= count <= MAX_COUNT:
        raise FrameError(f"count must be 0..{MAX_COUNT}, got {count}")
    head = bytearray([(VERSION << 6) | (kind << 3) | codec, sender])
    if stamp_mode == StampMode.LOW:
        if not 1 <= stamp_bits <= MAX_STAMP_BITS:
            raise FrameError(f"stamp bits must be 1..{MAX_STAMP_BITS}, got {stamp_bits}")
        head.append((stamp_mode << 6) | (stamp_bits - 1))
        head += (stamp & ((1 << stamp_bits) - 1)).to_bytes(-(-stamp_bits // 8), "big")
    else:
        if stamp_bits:
            raise FrameError("stamp bits are only for StampMode.LOW")
        head.append(stamp_mode << 6)
        if stamp_mode == StampMode.FULL:
            if not -(2**62) <= stamp < 2**62:
                raise FrameError(f"stamp out of range: {stamp}")
            head += _varint((stamp << 1) ^ (stamp >> 63))
    head += _varint(count)
    frame = bytes(head) + bytes(payload)
    if len(frame) > MAX_FRAME_BYTES:
        raise FrameError(f"frame of {len(frame)} bytes exceeds {MAX_FRAME_BYTES}")
    return frame


def unpack(data) -> Frame:
    """Parse a frame strictly (it comes from the network: untrusted).

    Args:
        data: The frame's bytes.

    Returns:
        A `Frame` (kind, sender, codec, count, payload, stamp_mode, stamp, stamp_bits).

    Raises:
        FrameError: any defect: not bytes, too long, truncated, an unknown version,
            kind, codec or stamp mode, an overlong varint, a count beyond MAX_COUNT.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FrameError(f"a frame is bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_FRAME_BYTES:
        raise FrameError(f"frame of {len(data)} bytes exceeds {MAX_FRAME_BYTES}")
    if len(data) < 4:
        raise FrameError(f"truncated frame: {len(data)} bytes")
    b0, sender, b2 = data[0], data[1], data[2]
    if b0 >> 6 != VERSION:
        raise FrameError(f"unsupported frame version {b0 >> 6}")
    kind = _member(_KINDS, (b0 >> 3) & 0x7, "Kind")
    stamp_mode = _member(_STAMP_MODES, b2 >> 6, "StampMode")
    codec = b0 & 0x7
    if codec not in _CODEC_WIRE_IDS:
        raise FrameError(f"unknown codec id {codec}")
    pos, stamp, stamp_bits = 3, 0, 0
    if stamp_mode == StampMode.LOW:
        stamp_bits = (b2 & 0x3F) + 1
        if stamp_bits > MAX_STAMP_BITS:
            raise FrameError(f"stamp bits {stamp_bits} exceed {MAX_STAMP_BITS}")
        width = -(-stamp_bits // 8)
        if pos + width > len(data):
            raise FrameError("truncated frame: stamp runs past the end")
        stamp = int.from_bytes(data[pos : pos + width], "big")
        if stamp >> stamp_bits:
            raise FrameError("stamp has bits above its declared width")
        pos += width
    else:
        if b2 & 0x3F:
            raise FrameError("stamp width set without a LOW stamp")
        if stamp_mode == StampMode.FULL:
            z, pos = _read_varint(data, pos, "stamp")
            if z >= 2**63:
                raise FrameError("stamp out of range")
            stamp = (z >> 1) ^ -(z & 1)
    count, pos = _read_varint(data, pos, "count")
    if count > MAX_COUNT:
        raise FrameError(f"count {count} exceeds {MAX_COUNT}")
    return Frame(kind, sender, codec, count, data[pos:], stamp_mode, stamp, stamp_bits)


def resolve_low_stamp(low: int, bits: int, local_step: int) -> int:
    """The step whose `bits` low bits are `low`, nearest the receiver's own view: exact
    while the two clocks differ by less than 2**(bits - 1)."""
    span = 1 << bits
    return local_step + ((low - local_step + span // 2) % span) - span // 2
