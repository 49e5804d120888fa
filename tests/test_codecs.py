import math

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channel import CodecError, codecs
from channel.codecs import CategoricalModel
from channel.codecs.bits import VALUE_LIMIT
from channel.rate import entropy_bits

INT_CODECS = ["expgolomb", "rice", "range"]

small_ints = st.lists(st.integers(-40, 40), max_size=300)
wide_ints = st.lists(st.integers(-VALUE_LIMIT, VALUE_LIMIT), max_size=60)
mixed_ints = st.lists(st.one_of(st.integers(-3, 3), st.integers(-VALUE_LIMIT, VALUE_LIMIT)), max_size=200)


def roundtrip(codec, values):
    data, nbits = codec.encode_bits(values)
    assert isinstance(data, bytes)
    assert math.ceil(nbits / 8) == len(data)  # the bit count is the real stream's
    assert data == codec.encode(values)
    out = codec.decode(data, len(values))
    np.testing.assert_array_equal(out, np.asarray(values, dtype=out.dtype))
    return nbits


@pytest.mark.parametrize("name", INT_CODECS)
@settings(max_examples=150, deadline=None)
@given(values=st.one_of(small_ints, wide_ints, mixed_ints))
def test_integer_codecs_round_trip(name, values):
    roundtrip(codecs.get(name), values)


@settings(max_examples=150, deadline=None)
@given(values=st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), max_size=100))
def test_float32_round_trip(values):
    assert roundtrip(codecs.get("float32"), values) == 32 * len(values)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.integers(-12, 12), min_size=1, max_size=120),
    dims=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
)
def test_range_with_a_per_position_model_round_trips(values, dims, seed):
    rng = np.random.default_rng(seed)
    model = CategoricalModel(-8, rng.random((dims, 18)) + 1e-3)  # values -8..8 + escape
    revived = CategoricalModel.from_dict(msgpack.unpackb(msgpack.packb(model.to_dict())))
    a, b = codecs.get("range", model=model), codecs.get("range", model=revived.to_dict())
    data = a.encode(values)
    np.testing.assert_array_equal(b.decode(data, len(values)), values)


# H.264 se(v) codewords (ITU-T H.264 table 9-3): value -> bits.
SE_V = {0: "1", 1: "010", -1: "011", 2: "00100", -2: "00101", 3: "00110", -3: "00111", 4: "0001000"}


def test_expgolomb_matches_h264_se_v():
    codec = codecs.get("expgolomb")
    for value, code in SE_V.items():
        data, nbits = codec.encode_bits([value])
        assert "".join(f"{b:08b}" for b in data)[:nbits] == code
    data, nbits = codec.encode_bits(list(SE_V))
    assert "".join(f"{b:08b}" for b in data)[:nbits] == "".join(SE_V.values())


@pytest.mark.parametrize("b", [3, 10])
def test_rice_is_near_entropy_for_laplace_data(b):
    m = np.round(np.random.default_rng(b).laplace(0, b, 4096)).astype(np.int64)
    bits = codecs.get("rice").encode_bits(m)[1] / m.size
    assert bits < 1.03 * entropy_bits(m)


def test_range_spends_under_a_bit_on_likely_zeros():
    model = CategoricalModel(-1, [0.05, 0.9, 0.05, 1e-4])
    m = np.zeros(1000, dtype=np.int64)
    m[::50] = 1
    assert codecs.get("range", model=model).encode_bits(m)[1] < 0.5 * m.size


def test_escapes_carry_values_outside_tables_and_unary_limits():
    values = [0, 1, -1, VALUE_LIMIT, -VALUE_LIMIT, 0, 2, 70_000]
    for name in INT_CODECS:
        roundtrip(codecs.get(name), values)


@pytest.mark.parametrize("name", INT_CODECS)
def test_unrepresentable_values_raise_codec_error(name):
    codec = codecs.get(name)
    for bad in ([VALUE_LIMIT + 1], [-(2**40)], [0.5], [float("nan")], ["x"]):
        with pytest.raises(CodecError):
            codec.encode(np.array(bad))


@pytest.mark.parametrize("name", codecs.NAMES)
def test_decode_rejects_wrong_counts_and_trailing_bytes(name):
    codec = codecs.get(name)
    values = [1, -2, 3, 0, 5]
    data = codec.encode(values)
    for count in (-1, 4, 6, 1 << 30):
        with pytest.raises(CodecError):
            codec.decode(data, count)
    with pytest.raises(CodecError):
        codec.decode(data + b"\x01", len(values))
    with pytest.raises(CodecError):
        codec.decode(data[:-1], len(values))


def test_unknown_codec_and_bad_options_are_clear_errors():
    with pytest.raises(CodecError, match="float32, expgolomb, rice, range"):
        codecs.get("huffman")
    with pytest.raises(CodecError):
        codecs.get("rice", model=None)
    with pytest.raises(ValueError):
        CategoricalModel(0, [[-1.0, 2.0]])


def rice_reference(values, k: int) -> str:
    """The documented layout, written out bit by bit as text (channel/codecs/rice.py doc):
    k in 5 bits, k remainder planes MSB first, unary quotients capped at 32, escapes."""
    u = [2 * v if v >= 0 else -2 * v - 1 for v in values]
    planes = "".join(str((x >> j) & 1) for j in range(k - 1, -1, -1) for x in u)
    unary = "".join("0" * min(x >> k, 32) + "1" for x in u)
    escapes = "".join(f"{x >> k:032b}" for x in u if x >> k >= 32)
    return f"{k:05b}" + planes + unary + escapes


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.one_of(st.integers(-3, 3), st.integers(-300, 300), st.integers(-VALUE_LIMIT, VALUE_LIMIT)),
                       min_size=1, max_size=200))
def test_rice_bytes_follow_the_documented_layout(values):
    data, nbits = codecs.get("rice").encode_bits(values)
    stream = "".join(f"{b:08b}" for b in data)
    k = int(stream[:5], 2)
    expected = rice_reference(values, k)
    assert stream == expected + "0" * (-len(expected) % 8) and nbits == len(expected)


def test_compiled_kernels_stay_in_bounds_on_hostile_bytes(tmp_path):
    # numba does not check indices: rerun the fuzz pass with its bounds checks compiled in,
    # where any out-of-range read or write raises IndexError, an untyped failure.
    import os
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_BOUNDSCHECK="1", NUMBA_CACHE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "ddcl", "bench", "fuzz", "--inputs", "20000", "--seed", "3"],
                       env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "untyped failures: 0" in r.stdout


@pytest.mark.parametrize("name", codecs.NAMES)
@settings(max_examples=150, deadline=None)
@given(values=st.one_of(small_ints, mixed_ints), where=st.floats(0, 1, exclude_max=True))
def test_a_flipped_bit_decodes_to_values_or_a_codec_error(name, values, where):
    """A corrupt link fault's copy: the receiver gets as many values as the header says,
    or a CodecError it counts as a bad frame; nothing else escapes."""
    from broker.faults import flipped

    codec = codecs.get(name)
    data = codec.encode(values)
    if not data:
        return
    try:
        out = codec.decode(flipped(data, int(where * 8 * len(data))), len(values))
    except CodecError:
        return
    assert len(out) == len(values)
