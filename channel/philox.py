"""Philox4x32-10 (Random123, Salmon et al. 2011), integer-only, in numpy and torch.

Sender and receiver must draw *identical* dither on any device, so the generator is
built from 32-bit integer multiplies and xors only. torch has no 32x32->64 multiply on
int64 without overflow, so the torch path splits each multiplier into 16-bit halves;
the numpy path multiplies in uint64, which is exact for 32-bit factors.
"""

from __future__ import annotations

import functools
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

M0, M1 = 0xD2511F53, 0xCD9E8D57  # round multipliers
W0, W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments
ROUNDS = 10
MASK32 = 0xFFFFFFFF
UNIFORM_SCALE = 2.0**-24  # (x >> 8) * 2**-24 is exact in float32 and float64
_LO, _HI = (0, 1) if sys.byteorder == "little" else (1, 0)  # uint32 halves of a uint64

# Blocks per numpy chunk: one round's working set stays in the L2 cache.
_NP_CHUNK = 1 << 15


def _round_keys() -> list[tuple[int, int]]:
    return [((W0 * r) & MASK32, (W1 * r) & MASK32) for r in range(ROUNDS)]


_ROUND_KEYS = _round_keys()


def philox4x32_10(counter, key):
    """Philox4x32-10 of counter words (..., 4) under key words (..., 2) -> (..., 4) uint32.

    Accepts numpy arrays or torch tensors (any integer dtype holding 32-bit words);
    leading dimensions broadcast. Returns the same kind as `counter`.
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
    ctr = np.broadcast_to(counter, shape + (4,)).reshape(-1, 4).astype(np.uint32).T
    k = np.broadcast_to(key, shape + (2,)).reshape(-1, 2).astype(np.uint32).T
    return philox_rows_numpy(ctr, k).T.reshape(shape + (4,))


def philox_python(ctr: tuple[int, int, int, int], key: tuple[int, int]) -> tuple[int, int, int, int]:
    """One block in plain Python ints: for messages of a few values, numpy's per-call
    overhead (about 40 ufunc calls) costs more than the arithmetic."""
    x0, x1, x2, x3 = ctr
    k0, k1 = key
    for w0, w1 in _ROUND_KEYS:
        p0, p1 = M0 * x0, M1 * x2
        x0, x1, x2, x3 = (p1 >> 32) ^ x1 ^ ((k0 + w0) & MASK32), p1 & MASK32, (p0 >> 32) ^ x3 ^ ((k1 + w1) & MASK32), p0 & MASK32
    return x0, x1, x2, x3


def philox_rows_numpy(ctr: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Philox on uint32 words shaped (4, n) under keys (2, n) or (2, 1); returns (4, n)."""
    n = ctr.shape[1]
    out = np.empty((4, n), dtype=np.uint32)
    for lo in range(0, n, _NP_CHUNK):
        hi = min(n, lo + _NP_CHUNK)
        keys = key if key.shape[1] == 1 else key[:, lo:hi]
        for j, word in enumerate(_rounds_numpy(ctr[:, lo:hi], keys)):
            out[j, lo:hi] = word
    return out


def uniform_blocks_numpy(ctr: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Philox on counters (4, n) under one key (2, 1) -> 4n float32 uniforms, block-major.

    Chunks run on a small thread pool (numpy releases the GIL inside ufuncs) and each
    is converted while still in cache. x >> 8 fits an int32, whose float conversion is
    a SIMD instruction (uint32's is not), and (x - 2**23) * 2**-24 equals
    x * 2**-24 - 1/2 exactly.
    """
    n = ctr.shape[1]
    out = np.empty((n, 4), dtype=np.float32)

    def run(lo: int) -> None:
        hi = min(n, lo + _NP_CHUNK)
        t = np.empty(hi - lo, dtype=np.uint32)
        s = t.view(np.int32)
        for j, word in enumerate(_rounds_numpy(ctr[:, lo:hi], key)):
            np.right_shift(word, 8, out=t)
            s -= 1 << 23
            np.multiply(s, np.float32(UNIFORM_SCALE), out=out[lo:hi, j])

    starts = range(0, n, _NP_CHUNK)
    if len(starts) == 1:
        run(0)
    else:
        list(_pool().map(run, starts))
    return out.reshape(-1)


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="philox")


def _rounds_numpy(ctr: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, ...]:
    """Ten rounds on one chunk; returns the four output words, each shaped (n,).

    The two multiplies of a round run as one (2, n) uint64 product, and its 32-bit
    halves are read as strided uint32 views of that product, so a round costs one
    multiply and two xors. Two product buffers alternate because the next round
    still reads the low halves of the previous product.
    """
    n = ctr.shape[1]
    a = ctr[[0, 2]].astype(np.uint64)  # the words that get multiplied
    b = ctr[[1, 3]]
    mult = np.array([[M0], [M1]], dtype=np.uint64)
    prods = [np.empty((2, n), dtype=np.uint64) for _ in range(2)]
    nxt = np.empty((2, n), dtype=np.uint64)
    for r, (w0, w1) in enumerate(_ROUND_KEYS):
        p = prods[r % 2]
        np.multiply(a, mult, out=p)
        halves = p.view(np.uint32).reshape(2, n, 2)
        # x0' = hi1 ^ x1 ^ k0, x2' = hi0 ^ x3 ^ k1, x1' = lo1, x3' = lo0
        np.bitwise_xor(halves[::-1, :, _HI], b, out=nxt, casting="unsafe")
        nxt ^= (key + np.array([[w0], [w1]], dtype=np.uint32)).astype(np.uint64)
        a, nxt = nxt, a
        b = halves[::-1, :, _LO]
    return a[0], b[0], a[1], b[1]


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
