"""The DDCL quantizer, round form with subtractive dither.

    m = round(z / delta + u),   z_hat = delta * (m - u),   u ~ U[-1/2, 1/2) shared.

The error z_hat - z is uniform on (-delta/2, delta/2) and independent of z, so the
straight-through gradient d z_hat / d z = 1 is unbiased. Training and deployment call
the same arithmetic: float32 division, addition, round-half-to-even and multiplication
are correctly rounded IEEE operations in torch (CPU and CUDA) and numpy alike, so the
receiver's numpy reconstruction equals the sender's torch z_hat bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import QuantizerError

# |m| stays below 2**31 so every codec can take it; z / delta beyond this is refused.
M_LIMIT = 2**31 - 1


def _dithered_round(z, delta, u):
    m = torch.round(z / delta + u)
    return delta * (m - u), m


class _DitheredRound(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, delta, u):
        z_hat, m = _dithered_round(z, delta, u)
        ctx.mark_non_differentiable(m)
        return z_hat, m

    @staticmethod
    def backward(ctx, grad_zhat, grad_m):
        return grad_zhat, None, None  # straight-through: d z_hat / d z = 1


def _check_range(y_abs_max: float) -> None:
    if not y_abs_max < M_LIMIT:  # NaN fails this comparison too
        raise QuantizerError(
            f"cannot quantize: max |z/delta| is {y_abs_max}; it must be finite and "
            f"below {M_LIMIT}"
        )


def quantize(z: torch.Tensor, delta, u: torch.Tensor, check: bool = True):
    """Quantize z with step delta (scalar or per last dimension) and dither u.

    Returns (z_hat, m): z_hat carries the identity gradient to z; m holds the integers
    (as float32) that go on the wire. With `check`, non-finite or out-of-range input
    raises QuantizerError before anything can be encoded (costs one device sync).
    """
    delta = torch.as_tensor(delta, dtype=z.dtype, device=z.device)
    if torch.is_grad_enabled() and z.requires_grad:
        z_hat, m = _DitheredRound.apply(z, delta, u)
    else:  # no gradient wanted (evaluation): the same arithmetic without autograd's bookkeeping
        z_hat, m = _dithered_round(z, delta, u)
    if check and m.numel():
        _check_range(float(m.abs().max()))  # NaN and inf in z reach m unchanged
    return z_hat, m


def quantize_numpy(z: np.ndarray, delta, u: np.ndarray) -> np.ndarray:
    """numpy twin of `quantize` for code that has no torch tensors: returns int64 m."""
    z = np.asarray(z, dtype=np.float32)
    delta = np.asarray(delta, dtype=np.float32)
    y = z / delta
    _check_range(float(np.abs(y).max()) if y.size else 0.0)
    return np.round(y + u).astype(np.int64)


def dequantize_numpy(m: np.ndarray, delta, u: np.ndarray) -> np.ndarray:
    """The receiver's reconstruction z_hat = delta * (m - u) in float32."""
    delta = np.asarray(delta, dtype=np.float32)
    return delta * (np.asarray(m).astype(np.float32) - u)
