import numpy as np
import pytest
import torch

from channel import NoiseKey, philox4x32_10, uniform_numpy, uniform_torch
from channel.noise import uniform_torch_i64
from tests.conftest import DEVICES

# Random123 known answers (REFERENCE.md section 4): counter, key -> output words.
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("counter,key,expected", KNOWN_ANSWERS)
def test_known_answers_numpy(counter, key, expected):
    out = philox4x32_10(np.array(counter, dtype=np.uint32), np.array(key, dtype=np.uint32))
    assert out.dtype == np.uint32
    assert tuple(int(x) for x in out) == expected


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("counter,key,expected", KNOWN_ANSWERS)
def test_known_answers_torch(counter, key, expected, device):
    out = philox4x32_10(
        torch.tensor(counter, dtype=torch.int64, device=device),
        torch.tensor(key, dtype=torch.int64, device=device),
    )
    assert out.dtype == torch.uint32
    assert tuple(out.cpu().to(torch.int64).tolist()) == expected


@pytest.mark.parametrize("device", DEVICES)
def test_numpy_and_torch_identical_on_random_inputs(device):
    rng = np.random.default_rng(7)
    ctr = rng.integers(0, 2**32, size=(5000, 4), dtype=np.uint32)
    key = rng.integers(0, 2**32, size=(5000, 2), dtype=np.uint32)
    ref = philox4x32_10(ctr, key)
    got = philox4x32_10(
        torch.from_numpy(ctr.astype(np.int64)).to(device), torch.from_numpy(key.astype(np.int64)).to(device)
    )
    np.testing.assert_array_equal(got.cpu().to(torch.int64).numpy(), ref.astype(np.int64))


def test_broadcast_single_key_equals_per_row_key():
    rng = np.random.default_rng(1)
    ctr = rng.integers(0, 2**32, size=(100_000, 4), dtype=np.uint32)  # several chunks
    key = np.array([12345, 678], dtype=np.uint32)
    np.testing.assert_array_equal(philox4x32_10(ctr, key), philox4x32_10(ctr, np.tile(key, (len(ctr), 1))))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [1, 3, 4, 5, 4097, 200_001])
def test_uniforms_identical_across_implementations(n, device):
    key = NoiseKey(run_seed=0xDEADBEEF, epoch_seed=0x123456, sender=7)
    for step in (0, 1, -3, 2**40 + 5):
        a = uniform_numpy(n, key, step)
        b = uniform_torch(n, key, step, device=device).cpu().numpy()
        c = uniform_torch_i64(n, key, step, 0, device).cpu().numpy()
        assert a.dtype == np.float32 and a.shape == (n,)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_uniforms_follow_the_block_layout_and_exact_conversion():
    key = NoiseKey(5, 6, 7)
    n = 10
    words = philox4x32_10(
        np.array([[b, 3, 0, 0] for b in range(3)], dtype=np.uint32), np.array(key.words(), dtype=np.uint32)
    ).reshape(-1)[:n]
    expected = np.array([(int(w) >> 8) / 2**24 - 0.5 for w in words], dtype=np.float64)
    np.testing.assert_array_equal(uniform_numpy(n, key, 3).astype(np.float64), expected)


def test_uniforms_are_uniform_and_streams_differ():
    key = NoiseKey(1, 2, 3)
    u = uniform_numpy(200_000, key, 0)
    assert u.min() >= -0.5 and u.max() < 0.5
    hist, _ = np.histogram(u, bins=20, range=(-0.5, 0.5))
    expected = len(u) / 20
    chi2 = float(((hist - expected) ** 2 / expected).sum())
    assert chi2 < 43.8  # chi-square, 19 dof, p = 0.001
    for other in (NoiseKey(1, 2, 4), NoiseKey(1, 3, 3), NoiseKey(2, 2, 3)):
        assert not np.array_equal(u[:64], uniform_numpy(64, other, 0))
    assert not np.array_equal(u[:64], uniform_numpy(64, key, 1))
    assert not np.array_equal(u[:64], uniform_numpy(64, key, 0, domain=1))


def test_noise_key_rejects_out_of_range_fields():
    for bad in ({"run_seed": -1}, {"epoch_seed": 1 << 24}, {"sender": 256}):
        fields = {"run_seed": 1, "epoch_seed": 1, "sender": 1} | bad
        with pytest.raises(ValueError):
            NoiseKey(**fields)
