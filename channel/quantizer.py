"""The DDCL quantizer, round form with subtractive dither.

    m = round(z / delta + u),   z_hat = delta * (m - u),   u ~ U[-1/2, 1/2) shared.

The error z_hat - z is uniform on (-delta/2, delta/2) and independent of z, so the
straight-through gradient d z_hat / d z = 1 is unbiased. Where delta is learned, the same
view (z_hat = z + delta * e, e uniform on (-1/2, 1/2) and independent of z and delta)
gives d z_hat / d delta = e = (z_hat - z) / delta: larger noise where the step grows. Training and deployment call
the same arithmetic: float32 division, addition, round-half-to-even and multiplication
are correctly rounded IEEE operations in torch (CPU and CUDA) and numba alike, so the
receiver's numpy reconstruction equals the sender's torch z_hat bit for bit.

The numpy side is a numba kernel: a message is a few values, and the dozen numpy calls
it replaces cost several times the arithmetic, on every message of every step.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

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
        if ctx.needs_input_grad[1]:
            ctx.save_for_backward(z, delta, z_hat)
        return z_hat, m

    @staticmethod
    def backward(ctx, grad_zhat, grad_m):
        grad_z = grad_zhat if ctx.needs_input_grad[0] else None  # straight-through: d z_hat / d z = 1
        grad_delta = None
        if ctx.needs_input_grad[1]:  # d z_hat / d delta = e, the scaled error, summed onto delta's shape
            z, delta, z_hat = ctx.saved_tensors
            grad_delta = _sum_to(grad_zhat * ((z_hat - z) / delta), delta.shape)
        return grad_z, grad_delta, None


def _sum_to(g: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """g summed over the leading axes that broadcasting added to a tensor of `shape`."""
    if len(shape) == 0:
        return g.sum()
    return g.reshape(-1, *shape).sum(0)


def _check_range(y_abs_max: float) -> None:
    if not y_abs_max < M_LIMIT:  # NaN fails this comparison too
        raise QuantizerError(
            f"cannot quantize: |z/delta| reaches {y_abs_max}; it must be finite and "
            f"below {M_LIMIT}"
        )


def quantize(z: torch.Tensor, delta, u: torch.Tensor, check: bool = True):
    """Quantize z with step delta (scalar or per last dimension) and dither u.

    Args:
        z: The messages, a float tensor on any device.
        delta: The step: a positive float, or a tensor of one per last dimension (one
            that requires grad gets the scaled error ``(z_hat - z) / delta``).
        u: The dither, shaped like z, in [-1/2, 1/2) (`uniform_torch`).
        check: Refuse non-finite or out-of-range input before anything can be encoded
            (one device sync).

    Returns:
        (z_hat, m): ``z_hat = delta * (m - u)`` with the identity gradient to z; m the
        integers ``round(z / delta + u)`` (as z's dtype) that go on the wire.

    Raises:
        QuantizerError: with `check`, z holds NaN, infinity or |z / delta| >= 2**31.
    """
    delta = torch.as_tensor(delta, dtype=z.dtype, device=z.device)
    if torch.is_grad_enabled() and (z.requires_grad or delta.requires_grad):
        z_hat, m = _DitheredRound.apply(z, delta, u)
    else:  # no gradient wanted (evaluation): the same arithmetic without autograd's bookkeeping
        z_hat, m = _dithered_round(z, delta, u)
    if check and m.numel():
        _check_range(float(m.abs().max()))  # NaN and inf in z reach m unchanged
    return z_hat, m


def quantize_numpy(z: np.ndarray, delta, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The numpy twin of `quantize`, bit for bit, without a gradient.

    Args:
        z: The messages (cast to float32).
        delta: The step: a scalar, or one per last dimension.
        u: The dither, shaped like z (`uniform_numpy`).

    Returns:
        (z_hat, m): float32 and int64 arrays shaped like z.

    Raises:
        QuantizerError: z holds NaN, infinity or |z / delta| >= 2**31, or u or delta
            does not fit z's shape.
    """
    z, u, delta = _float32(z), _float32(u), _float32(delta).reshape(-1)
    _check_shapes(z, delta, u)
    z_hat, m = np.empty_like(z), np.empty(z.shape, dtype=np.int64)
    bad = _quantize(z, delta, u, m, z_hat)
    if bad >= 0:
        _check_range(abs(float(z.flat[bad]) / float(delta[bad % delta.size])))
    return z_hat, m


def dequantize_numpy(m: np.ndarray, delta, u: np.ndarray) -> np.ndarray:
    """The receiver's reconstruction ``z_hat = delta * (m - u)``.

    Args:
        m: The integers heard (as the codec decoded them).
        delta: The sender's step: a scalar, or one per last dimension.
        u: The sender's dither, regenerated here, shaped like m.

    Returns:
        z_hat as float32, shaped like m: the sender's `quantize_numpy` z_hat, bit for bit.

    Raises:
        QuantizerError: u or delta does not fit m's shape.
    """
    m, u, delta = np.ascontiguousarray(m, dtype=np.int64), _float32(u), _float32(delta).reshape(-1)
    _check_shapes(m, delta, u)
    z_hat = np.empty(m.shape, dtype=np.float32)
    _dequantize(m, delta, u, z_hat)
    return z_hat


def _float32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _check_shapes(values: np.ndarray, delta: np.ndarray, u: np.ndarray) -> None:
    """The kernels index without bounds checks: a dither value per element, and one step
    or one per last dimension, or QuantizerError."""
    if u.size != values.size or delta.size not in (1, values.shape[-1] if values.ndim else 1):
        raise QuantizerError(f"{u.size} dither values and {delta.size} steps for values shaped {values.shape}")


# The kernels walk the arrays flat (contiguous, any shape), with delta[i % len(delta)].


@njit(cache=True, nogil=True)
def _quantize(z, delta, u, m, z_hat) -> int:
    """m and z_hat element by element in float32; the index of the first out-of-range
    z / delta (NaN included), or -1."""
    z, u, m, z_hat = z.reshape(z.size), u.reshape(u.size), m.reshape(m.size), z_hat.reshape(z_hat.size)
    for i in range(z.size):
        d = delta[i % delta.size]
        y = z[i] / d
        if not abs(y) < M_LIMIT:
            return i
        q = np.rint(y + u[i])  # round half to even, as torch.round
        m[i] = np.int64(q)
        z_hat[i] = d * (q - u[i])
    return -1


@njit(cache=True, nogil=True)
def _dequantize(m, delta, u, z_hat) -> None:
    m, u, z_hat = m.reshape(m.size), u.reshape(u.size), z_hat.reshape(z_hat.size)
    for i in range(m.size):
        z_hat[i] = delta[i % delta.size] * (np.float32(m[i]) - u[i])
