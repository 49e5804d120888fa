"""Rate losses: what each one prices, checked against the real quantizer and code lengths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from channel import NoiseKey, quantize, uniform_torch
from channel.codecs import CategoricalModel
from channel.rate import FactorizedPrior, rate_bits, surrogate_bits

DELTA = 0.2


def test_surrogate_is_the_papers_formula():
    z = torch.tensor([[0.0, DELTA, -DELTA, 3.5 * DELTA]])
    expected = 0 + math.log2(3) + math.log2(3) + math.log2(8)
    assert surrogate_bits(z, DELTA).item() == pytest.approx(expected, rel=1e-6)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-6.0, 6.0), min_size=1, max_size=4), st.integers(0, 2**31 - 1))
def test_expected_is_the_mean_real_length_over_the_dither(y, seed):
    """The `expected` loss against the real thing: quantize z with many dither draws,
    price each m with the model's ideal code length, average."""
    dims = len(y)
    prior = FactorizedPrior(dims, radius=8)
    with torch.no_grad():
        prior.logits.add_(torch.randn(prior.logits.shape, generator=torch.Generator().manual_seed(seed)))
    z = torch.tensor(y, dtype=torch.float32) * DELTA
    draws = 20_000
    u = uniform_torch(draws * dims, NoiseKey(seed, 1, 0), 0).view(draws, dims)
    _, m = quantize(z.expand(draws, dims), DELTA, u)
    model = CategoricalModel(prior.lo, prior.probs().detach().double().numpy())
    monte_carlo = model.bits(m.numpy()).sum(-1).mean()
    exact = rate_bits("expected", z[None], None, DELTA, prior=prior).item()
    spread = model.bits(m.numpy()).sum(-1).std() / math.sqrt(draws)
    assert abs(exact - monte_carlo) < 5 * spread + 1e-3, (exact, monte_carlo)


def test_expected_pushes_a_quiet_value_onto_the_integer_and_the_relaxed_density_barely_does():
    """Why `expected` exists: a prior sure of 0 (-log2 P(1) = 28.9 bits), a value at
    z / delta = 0.02. The dither makes m = 1 two times in a hundred, so the real cost is
    0.58 bits; `expected` prices exactly that, and its gradient points at 0 as hard as
    anywhere in the cell, while the relaxed density is nearly flat there (0.449 bits
    against its 0.443 floor) and its gradient is two orders of magnitude weaker."""
    prior = FactorizedPrior(1, radius=4)
    with torch.no_grad():
        prior.logits.fill_(-20.0)
        prior.logits[0, 4] = 0.0  # value 0
    z = torch.tensor([[0.02 * DELTA]], requires_grad=True)
    bits = rate_bits("expected", z, None, DELTA, prior=prior)
    assert bits.item() == pytest.approx(0.02 * 20 / math.log(2), rel=1e-3)  # 2 % of -log2 P(1)
    (g_expected,) = torch.autograd.grad(bits.sum(), z)
    draws = 4096
    zs = z.detach().expand(draws, 1).clone().requires_grad_(True)
    u = uniform_torch(draws, NoiseKey(3, 1, 0), 0).view(draws, 1)
    z_hat, _ = quantize(zs, DELTA, u)
    (g_relaxed,) = torch.autograd.grad(rate_bits("entropy", zs, z_hat, DELTA, prior=prior).mean(), zs)
    assert g_expected.item() > 0 and g_relaxed.sum().item() > 0
    assert g_expected.item() > 10 * g_relaxed.sum().item()


def test_prior_losses_need_a_prior():
    z = torch.zeros(2, 3)
    for name in ("entropy", "expected"):
        with pytest.raises(ValueError, match=f"the {name} rate loss needs a FactorizedPrior"):
            rate_bits(name, z, z, DELTA)


def test_expected_trains_and_exports_the_range_model():
    from agents.train import train
    from agents.train_config import TrainConfig

    s = train(TrainConfig(rate_loss="expected", updates=3, eval_every=3, batch=8, rollout=5), None, progress=False)
    assert np.isfinite(s["final"]["agents"][0]["bits_per_message"]["range"])
    assert len(s["final"]["models"]) == 2
