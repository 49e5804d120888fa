import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channel import ChannelError, FrameError, codecs, frame
from channel.frame import Frame, Kind, StampMode, resolve_low_stamp


@st.composite
def frames(draw):
    mode = draw(st.sampled_from(list(StampMode)))
    bits = draw(st.integers(1, 32)) if mode == StampMode.LOW else 0
    if mode == StampMode.LOW:
        stamp = draw(st.integers(0, 2**bits - 1))
    elif mode == StampMode.FULL:
        stamp = draw(st.integers(-(2**62), 2**62 - 1))
    else:
        stamp = 0
    return Frame(
        kind=draw(st.sampled_from(list(Kind))),
        sender=draw(st.integers(0, 255)),
        codec=draw(st.sampled_from(sorted(codecs.BY_WIRE_ID))),
        count=draw(st.integers(0, 1 << 20)),
        payload=draw(st.binary(max_size=64)),
        stamp_mode=mode,
        stamp=stamp,
        stamp_bits=bits,
    )


@settings(max_examples=500, deadline=None)
@given(f=frames())
def test_frame_round_trip(f):
    assert frame.unpack(frame.pack(**f._asdict())) == f


def test_typical_headers_are_small():
    payload = codecs.get("rice").encode([0, 1, -1, 2])
    base = dict(kind=Kind.MESSAGE, sender=3, codec=2, count=4, payload=payload)
    assert len(frame.pack(**base)) - len(payload) == 4
    assert len(frame.pack(**base, stamp_mode=StampMode.FULL, stamp=5000)) - len(payload) == 6
    assert len(frame.pack(**base, stamp_mode=StampMode.LOW, stamp=3, stamp_bits=2)) - len(payload) == 5


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x42",
        bytes([0x00, 0, 0, 0]),  # version 0
        bytes([0x40 | 0x07, 0, 0, 0]),  # codec id 7
        bytes([0x40 | (7 << 3), 0, 0, 0]),  # kind 7
        bytes([0x40, 0, 0xC0, 0]),  # stamp mode 3
        bytes([0x40, 0, 0x05, 0]),  # stamp width without LOW
        bytes([0x40, 0, 0x40]),  # FULL stamp missing
        bytes([0x40, 0, 0x40, 0x80, 0x00, 0]),  # overlong varint
        bytes([0x40, 0, 0x00, 0xFF, 0xFF, 0xFF, 0x7F]),  # count too large
        bytes([0x40, 0, 0x00] + [0xFF] * 11),  # endless varint
        bytes([0x40, 0, 0x81, 0xFF, 0]),  # LOW 2-bit stamp with high bits set
        b"\x40" * (frame.MAX_FRAME_BYTES + 1),
    ],
)
def test_malformed_frames_raise_frame_error(data):
    with pytest.raises(FrameError):
        frame.unpack(data)


def test_non_bytes_input_is_a_frame_error():
    with pytest.raises(FrameError):
        frame.unpack("not bytes")


@settings(max_examples=300, deadline=None)
@given(local=st.integers(-(2**40), 2**40), skew=st.integers(-(2**15) + 1, 2**15 - 1), bits=st.integers(17, 32))
def test_low_stamps_resolve_within_half_their_span(local, skew, bits):
    sent = local + skew
    assert resolve_low_stamp(sent & ((1 << bits) - 1), bits, local) == sent


def test_low_stamp_k2_resolves_skew_of_one_but_not_two():
    assert resolve_low_stamp(11 & 3, 2, 10) == 11
    assert resolve_low_stamp(9 & 3, 2, 10) == 9
    assert resolve_low_stamp(12 & 3, 2, 10) == 8  # ambiguous beyond +-2**(k-1): wraps


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=80))
def test_random_bytes_raise_only_typed_errors(data):
    try:
        f = frame.unpack(data)
        codecs.BY_WIRE_ID[f.codec]().decode(f.payload, min(f.count, 4096))
    except ChannelError:
        pass


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), name=st.sampled_from(codecs.NAMES))
def test_mutated_frames_raise_only_typed_errors(seed, name):
    rng = np.random.default_rng(seed)
    codec = codecs.get(name)
    values = np.round(rng.laplace(0, 3, rng.integers(1, 64)))
    data = bytearray(frame.pack(kind=0, sender=1, codec=codec.wire_id, count=values.size, payload=codec.encode(values)))
    for _ in range(rng.integers(1, 4)):
        data[rng.integers(len(data))] ^= 1 << rng.integers(8)
    try:
        f = frame.unpack(bytes(data))
        codecs.BY_WIRE_ID[f.codec]().decode(f.payload, f.count)
    except ChannelError:
        pass
