"""Synchronized dither: the uniforms sender and receiver both derive from one Philox key.

Key words: (run seed, epoch seed << 8 | sender). Counter words: (element block, step low
32 bits, step high 32 bits, domain tag). Element i of a message is word i % 4 of block
i // 4, so a message of n values costs ceil(n / 4) Philox blocks and any device yields
the same floats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .philox import MASK32, philox_torch_i64, uniform_blocks, words_to_uniform_torch

DOMAIN_MESSAGE = 0  # dither of agent messages; other tags keep future streams apart
DOMAIN_GRADIENT = 1  # dither of gradients sent back to a speaker (networked learning)
MAX_SENDER = 0xFF
MAX_EPOCH_SEED = 0xFFFFFF


@dataclass(frozen=True)
class NoiseKey:
    """Who draws the noise: run seed (32 bits), epoch seed (24 bits), sender id (8 bits).

    Args:
        run_seed: The run's seed, 0..2**32 - 1 (the sync service's, in a networked run).
        epoch_seed: The epoch's seed, 0..2**24 - 1.
        sender: The sending agent's id, 0..255.

    Raises:
        ValueError: a field outside its bits.
    """

    run_seed: int
    epoch_seed: int
    sender: int

    def __post_init__(self):
        if not 0 <= self.run_seed <= MASK32:
            raise ValueError(f"run_seed must fit 32 bits, got {self.run_seed}")
        if not 0 <= self.epoch_seed <= MAX_EPOCH_SEED:
            raise ValueError(f"epoch_seed must fit 24 bits, got {self.epoch_seed}")
        if not 0 <= self.sender <= MAX_SENDER:
            raise ValueError(f"sender must be 0..{MAX_SENDER}, got {self.sender}")

    def words(self) -> tuple[int, int]:
        """The Philox key.

        Returns:
            (run seed, epoch seed << 8 | sender): two 32-bit words.
        """
        return self.run_seed, (self.epoch_seed << 8) | self.sender


def _step_words(step: int) -> tuple[int, int]:
    """A signed step (a skewed clock can read below zero) as two 32-bit words."""
    s = step & 0xFFFFFFFFFFFFFFFF
    return s & MASK32, s >> 32


def uniform_numpy(n: int, key: NoiseKey, step: int, domain: int = DOMAIN_MESSAGE) -> np.ndarray:
    """n float32 dither values in [-1/2, 1/2) for (key, step, domain).

    Args:
        n: How many values.
        key: Whose stream (run seed, epoch seed, sender).
        step: The counter: any integer a 64-bit word holds (a skewed clock reads below 0).
        domain: The stream's use (DOMAIN_MESSAGE for messages): one key, disjoint streams.

    Returns:
        A float32 array of n values: the same for the same arguments, on any machine.
    """
    s_lo, s_hi = _step_words(step)
    k0, k1 = key.words()
    return uniform_blocks(n, k0, k1, s_lo, s_hi, domain, np.empty(n, dtype=np.float32))


def uniform_torch(
    n: int, key: NoiseKey, step: int, domain: int = DOMAIN_MESSAGE, device="cpu"
) -> torch.Tensor:
    """The same n values as `uniform_numpy`, bit for bit, as a float32 tensor on `device`.
    On the CPU this is the numpy generator (faster there); elsewhere the int64 torch one.

    Args:
        n, key, step, domain: As `uniform_numpy`.
        device: The torch device the values are drawn on.

    Returns:
        A float32 tensor of n values on `device`.
    """
    if torch.device(device).type == "cpu":
        return torch.from_numpy(uniform_numpy(n, key, step, domain))
    return uniform_torch_i64(n, key, step, domain, device)


def uniform_torch_i64(n: int, key: NoiseKey, step: int, domain: int, device) -> torch.Tensor:
    """The int64 torch generator, on any device (CUDA's path; tested on the CPU too)."""
    blocks = -(-n // 4)
    s_lo, s_hi = _step_words(step)
    ctr = torch.empty((blocks, 4), dtype=torch.int64, device=device)
    ctr[:, 0] = torch.arange(blocks, device=device)
    ctr[:, 1], ctr[:, 2], ctr[:, 3] = s_lo, s_hi, domain
    k = torch.tensor(key.words(), dtype=torch.int64, device=device)
    words = philox_torch_i64(ctr, k).reshape(-1)[:n]
    return words_to_uniform_torch(words)
