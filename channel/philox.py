"""Philox4x32-10 (Random123, Salmon et al. 2011), integer-only, on numpy arrays and torch.

Sender and receiver must draw *identical* dither on any device, so the generator is
built from 32-bit integer multiplies and xors only. numpy arrays go through a numba
kernel: 32x32->64 multiplies in uint64 are exact, and one compiled pass beats the ~40
array passes a ufunc version needs per block (3-20x measured, most at message sizes).
torch has no 32x32->64 multiply on int64 without overflow, so the torch path splits each
multiplier into 16-bit halves.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

M0, M1 = 0xD2511F53, 0xCD9E8D57  # round multipliers
W0, W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments
ROUNDS = 10
MASK32 = 0xFFFFFFFF
UNIFORM_SCALE = 2.0**-24  # (x >> 8) * 2**-24 is exact in float32 and float64


def _round_keys() -> list[tuple[int, int]]:
    return [((W0 * r) & MASK32, (W1 * r) & MASK32) for r in range(ROUNDS)]


_ROUND_KEYS = _round_keys()


def philox4x32_10(counter, key):
    """Philox4x32-10 of counter words (..., 4) under key words (..., 2) -> (..., 4) uint32.

    Args:
        counter: Counter words (..., 4): a numpy array or a torch tensor, any integer
            dtype holding 32-bit words.
        key: Key words (..., 2), of the same kind; leading dimensions broadcast.

    Returns:
        The random words (..., 4) as uint32, of the same kind as `counter` (a tensor on
        its device).
    """
    if isinstance(counter, torch.Tensor):
        words = philox_torch_i64(counter, torch.as_tensor(key, device=counter.device))
        return words.to(torch.uint32)
    return philox_numpy(counter, key)


def philox_numpy(counter, key) -> np.ndarray:
    counter = np.asarray(counter)
    key = np.asarray(key)
    if counter.shape[-1:] != (4,) or key.shape[-1:] != (2,):
        raise ValueError("counter must be shaped (..., 4) and key (..., 2)")
    shape = np.broadcast_shapes(counter.shape[:-1], key.shape[:-1])
    ctr = np.ascontiguousarray(np.broadcast_to(counter, shape + (4,)).reshape(-1, 4), dtype=np.uint32)
    k = np.ascontiguousarray(np.broadcast_to(key, shape + (2,)).reshape(-1, 2), dtype=np.uint32)
    out = np.empty_like(ctr)
    _philox_rows(ctr, k, out)
    return out.reshape(shape + (4,))


@njit(cache=True, nogil=True, inline="always")
def _block(x0, x1, x2, x3, k0, k1):
    """Ten rounds on one block of uint64-held 32-bit words."""
    mask = np.uint64(MASK32)
    for _ in range(ROUNDS):
        p0 = np.uint64(M0) * x0
        p1 = np.uint64(M1) * x2
        x0, x1, x2, x3 = (p1 >> np.uint64(32)) ^ x1 ^ k0, p1 & mask, (p0 >> np.uint64(32)) ^ x3 ^ k1, p0 & mask
        k0 = (k0 + np.uint64(W0)) & mask
        k1 = (k1 + np.uint64(W1)) & mask
    return x0, x1, x2, x3


@njit(cache=True, nogil=True)
def _philox_rows(ctr, key, out):
    """Rows of (4,) counters under rows of (2,) keys, in place into out; all uint32."""
    for i in range(ctr.shape[0]):
        out[i, 0], out[i, 1], out[i, 2], out[i, 3] = _block(
            np.uint64(ctr[i, 0]), np.uint64(ctr[i, 1]), np.uint64(ctr[i, 2]), np.uint64(ctr[i, 3]),
            np.uint64(key[i, 0]), np.uint64(key[i, 1]))


@njit(cache=True, nogil=True)
def uniform_blocks(n, k0, k1, c1, c2, c3, out):
    """n float32 uniforms into out: word j of block b (counter (b, c1, c2, c3)) is element
    4b + j. x >> 8 as int32 minus 2**23, times 2**-24, equals (x >> 8) * 2**-24 - 1/2
    exactly, and the int32 to float conversion vectorizes (uint32's does not)."""
    for b in range((n + 3) // 4):
        words = _block(np.uint64(b), np.uint64(c1), np.uint64(c2), np.uint64(c3), np.uint64(k0), np.uint64(k1))
        for j in range(min(4, n - 4 * b)):
            out[4 * b + j] = np.float32(np.int32(words[j] >> np.uint64(8)) - (1 << 23)) * np.float32(UNIFORM_SCALE)
    return out


def _mulhilo_i64(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of a * m for 32-bit a and m, with no int64 overflow."""
    p_lo = a * (m & 0xFFFF)  # < 2**48
    p_hi = a * (m >> 16)  # < 2**48
    lo = torch.bitwise_and(p_lo + torch.bitwise_and(p_hi, 0xFFFF).bitwise_left_shift(16), MASK32)
    hi = (p_hi + (p_lo >> 16)) >> 16
    return hi, lo


def philox_torch_i64(counter: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Philox4x32-10 on int64 tensors holding 32-bit words; returns int64 words (..., 4)."""
    if counter.shape[-1:] != (4,) or key.shape[-1:] != (2,):
        raise ValueError("counter must be shaped (..., 4) and key (..., 2)")
    ctr = torch.bitwise_and(counter.to(torch.int64), MASK32)
    k = torch.bitwise_and(key.to(device=ctr.device, dtype=torch.int64), MASK32)
    x0, x1, x2, x3 = ctr.unbind(-1)
    k0, k1 = k.unbind(-1)
    for w0, w1 in _ROUND_KEYS:
        hi0, lo0 = _mulhilo_i64(x0, M0)
        hi1, lo1 = _mulhilo_i64(x2, M1)
        # x0' = hi1 ^ x1 ^ k0, x2' = hi0 ^ x3 ^ k1, x1' = lo1, x3' = lo0
        x0 = hi1 ^ x1 ^ torch.bitwise_and(k0 + w0, MASK32)
        x2 = hi0 ^ x3 ^ torch.bitwise_and(k1 + w1, MASK32)
        x1, x3 = lo1, lo0
    return torch.stack(torch.broadcast_tensors(x0, x1, x2, x3), dim=-1)


def words_to_uniform_torch(words: torch.Tensor) -> torch.Tensor:
    """int64 words holding uint32 -> float32 uniforms in [-1/2, 1/2), exactly."""
    return (words >> 8).to(torch.float32) * UNIFORM_SCALE - 0.5
