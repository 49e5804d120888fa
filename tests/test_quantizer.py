import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from channel import NoiseKey, QuantizerError, dequantize_numpy, quantize, quantize_numpy, uniform_numpy, uniform_torch
from tests.conftest import DEVICES


def ks_uniform(x: np.ndarray, lo: float, hi: float) -> float:
    """Kolmogorov-Smirnov statistic of samples x against U(lo, hi)."""
    x = np.sort((x - lo) / (hi - lo))
    n = len(x)
    i = np.arange(1, n + 1)
    return float(max((i / n - x).max(), (x - (i - 1) / n).max()))


KS_CRIT = 1.95  # sqrt(n) * D at p = 0.001


def dithered_error(z: np.ndarray, delta: float, step: int = 0, rx_step: int | None = None) -> np.ndarray:
    key = NoiseKey(11, 22, 3)
    u_tx = uniform_torch(z.size, key, step)
    z_hat, m = quantize(torch.from_numpy(z.astype(np.float32)), delta, u_tx)
    u_rx = uniform_numpy(z.size, key, step if rx_step is None else rx_step)
    rx = dequantize_numpy(m.numpy(), delta, u_rx)
    return rx.astype(np.float64) - z.astype(np.float32).astype(np.float64)


@pytest.mark.parametrize("offset", [0.0, 0.25, 0.5, 0.8])
def test_error_is_uniform_whatever_z_is(offset):
    # A constant z: without dither its error would be one value; with dither it must be
    # uniform on (-delta/2, delta/2) and centred, for every offset from the grid.
    delta, n = 0.2, 40_000
    z = np.full(n, (3 + offset) * delta)
    e = dithered_error(z, delta)
    assert np.all(np.abs(e) <= delta / 2 * (1 + 1e-5))
    assert math.sqrt(n) * ks_uniform(e, -delta / 2, delta / 2) < KS_CRIT
    assert abs(e.mean()) < 4 * delta / math.sqrt(12 * n)


def test_error_uncorrelated_with_z_and_variance_delta2_over_12():
    rng = np.random.default_rng(0)
    delta, n = 0.5, 100_000
    z = rng.laplace(0, 2.0, n)
    e = dithered_error(z, delta)
    r = np.corrcoef(z, e)[0, 1]
    assert abs(r) < 4 / math.sqrt(n)
    assert abs(e.var() / (delta**2 / 12) - 1) < 0.03
    # ... and with e^2 too: the error's spread does not depend on z's grid offset.
    frac = np.abs(z / delta - np.round(z / delta))
    assert abs(np.corrcoef(frac, e**2)[0, 1]) < 4 / math.sqrt(n)


def test_the_statistics_reject_a_desynchronized_receiver():
    # The same checks fail when the receiver subtracts the wrong noise (clock skew):
    # the error spread then grows to delta^2 (|f|(1-|f|) + 1/12) (REFERENCE section 1).
    delta, n = 0.2, 40_000
    z = np.full(n, 3.25 * delta)
    e = dithered_error(z, delta, step=5, rx_step=6)
    assert math.sqrt(n) * ks_uniform(e, -delta / 2, delta / 2) > KS_CRIT
    expected_var = delta**2 * (0.25 * 0.75 + 1 / 12)
    assert abs(e.var() / expected_var - 1) < 0.05


def test_identity_gradient():
    z = torch.randn(64, 4, requires_grad=True)
    u = uniform_torch(256, NoiseKey(1, 1, 1), 0).view(64, 4)
    z_hat, _ = quantize(z, torch.tensor([0.1, 0.2, 0.5, 1.0]), u)
    w = torch.randn(64, 4)
    (z_hat * w).sum().backward()
    torch.testing.assert_close(z.grad, w, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_and_numpy_twins_agree_bit_for_bit(device):
    """The trainer quantizes with torch on its device, with the dither drawn there; the
    receiver rebuilds z_hat with numpy on the CPU. Both must give the same bits."""
    rng = np.random.default_rng(3)
    z = rng.normal(0, 3, 10_000).astype(np.float32)
    delta = np.float32(0.37)
    u = uniform_numpy(z.size, NoiseKey(9, 9, 9), 12)
    u_dev = uniform_torch(z.size, NoiseKey(9, 9, 9), 12, device=device)
    z_hat, m = quantize(torch.from_numpy(z).to(device), float(delta), u_dev)
    assert z_hat.device.type == m.device.type == device
    z_hat, m = z_hat.cpu().numpy(), m.cpu().numpy()
    z_hat_np, m_np = quantize_numpy(z, delta, u)
    np.testing.assert_array_equal(m.astype(np.int64), m_np)
    np.testing.assert_array_equal(z_hat, z_hat_np)
    np.testing.assert_array_equal(z_hat, dequantize_numpy(m_np, delta, u))


@settings(max_examples=60, deadline=None)
@given(batch=st.integers(1, 9), dims=st.integers(1, 6), per_dim=st.booleans(), scale=st.floats(0.01, 100),
       seed=st.integers(0, 2**32 - 1), step=st.integers(-1000, 10**6))
def test_numpy_twin_matches_torch_for_any_shape_and_steps(batch, dims, per_dim, scale, seed, step):
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((batch, dims)) * scale).astype(np.float32)
    delta = rng.uniform(0.05, 2.0, dims).astype(np.float32) if per_dim else np.float32(rng.uniform(0.05, 2.0))
    u = uniform_numpy(z.size, NoiseKey(seed, 3, 1), step).reshape(z.shape)
    z_hat, m = quantize(torch.from_numpy(z), torch.from_numpy(np.asarray(delta)), torch.from_numpy(u))
    z_hat_np, m_np = quantize_numpy(z, delta, u)
    assert z_hat_np.shape == m_np.shape == z.shape and m_np.dtype == np.int64
    np.testing.assert_array_equal(m_np, m.numpy().astype(np.int64))
    np.testing.assert_array_equal(z_hat_np, z_hat.numpy())
    np.testing.assert_array_equal(dequantize_numpy(m_np, delta, u), z_hat.numpy())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 1e12])
def test_non_finite_or_huge_input_is_refused_before_encoding(bad, device):
    z = torch.tensor([0.0, bad], device=device)
    with pytest.raises(QuantizerError):
        quantize(z, 0.1, torch.zeros(2, device=device))
    z = z.cpu()
    with pytest.raises(QuantizerError):
        quantize_numpy(z.numpy(), 0.1, np.zeros(2, dtype=np.float32))


def test_the_numpy_twin_refuses_dither_or_steps_that_do_not_fit():
    z, u = np.zeros((3, 4), dtype=np.float32), np.zeros(12, dtype=np.float32)
    with pytest.raises(QuantizerError):
        quantize_numpy(z, 0.1, u[:11])  # the kernel would read past the dither
    with pytest.raises(QuantizerError):
        quantize_numpy(z, np.full(3, 0.1), u)  # three steps for four dimensions
    with pytest.raises(QuantizerError):
        dequantize_numpy(np.zeros((3, 4), dtype=np.int64), 0.1, u[:6])
    assert quantize_numpy(z, np.full(4, 0.1), u)[1].shape == (3, 4)
