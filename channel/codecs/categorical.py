"""The probability model the `range` codec and the `entropy` and `expected` rate losses share.

Per message position d (element i uses row i % D), a table over the values
lo .. lo + K - 1 plus one escape symbol; an escaped value costs the escape symbol and
32 raw bits. The model is explicit and serializable so both ends can hold the same one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MAX_TABLE = 1 << 16  # symbols per row, escape included
MAX_ROWS = 1 << 12
ESCAPE_RAW_BITS = 32


@dataclass(frozen=True, eq=False)
class CategoricalModel:
    """The range coder's model: per message dimension, the probabilities of the values
    lo .. lo + K - 1, then of the escape symbol (a value outside, written raw).

    Args:
        lo: The table's lowest value.
        probs: (D, K + 1) non-negative weights (a 1-D row: D = 1), normalized per row;
            message dimension d uses row d % D.

    Raises:
        ValueError: a shape beyond the limits, weights that are not finite and
            non-negative with a positive row sum, or lo out of range.
    """

    lo: int
    probs: np.ndarray

    def __post_init__(self):
        p = np.array(self.probs, dtype=np.float64)
        if p.ndim == 1:
            p = p[None, :]
        if p.ndim != 2 or not 1 <= p.shape[0] <= MAX_ROWS or not 2 <= p.shape[1] <= MAX_TABLE:
            raise ValueError(
                f"probs must be (D, K + 1) with 1 <= D <= {MAX_ROWS} and "
                f"2 <= K + 1 <= {MAX_TABLE}; got shape {p.shape}"
            )
        if not np.all(np.isfinite(p)) or np.any(p < 0) or np.any(p.sum(axis=1) <= 0):
            raise ValueError("probs must be finite, non-negative, with positive row sums")
        if not -(2**31) < int(self.lo) < 2**31 - p.shape[1]:
            raise ValueError(f"lo out of range: {self.lo}")
        object.__setattr__(self, "lo", int(self.lo))
        object.__setattr__(self, "probs", p / p.sum(axis=1, keepdims=True))

    @property
    def dims(self) -> int:
        return self.probs.shape[0]

    @property
    def size(self) -> int:
        """K: table values per row, escape excluded."""
        return self.probs.shape[1] - 1

    @classmethod
    def laplace(cls, scale: float = 2.0, radius: int = 32, escape: float = 1e-4, dims: int = 1):
        """A discretized Laplace(0, scale): the range codec's default model.

        Args:
            scale: The Laplace scale, in steps.
            radius: The table covers -radius .. radius.
            escape: The escape symbol's probability.
            dims: Rows (message dimensions), all alike.

        Returns:
            The `CategoricalModel`.
        """
        v = np.arange(-radius, radius + 1, dtype=np.float64)
        cdf = lambda x: np.where(x < 0, 0.5 * np.exp(x / scale), 1 - 0.5 * np.exp(-x / scale))  # noqa: E731
        p = (cdf(v + 0.5) - cdf(v - 0.5)) * (1 - escape)
        row = np.append(p, escape)
        return cls(-radius, np.tile(row, (dims, 1)))

    def to_dict(self) -> dict:
        """The model as plain data.

        Returns:
            ``{"lo": int, "probs": nested lists}`` (JSON, msgpack); `from_dict` reads it back.
        """
        return {"lo": self.lo, "probs": self.probs.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "CategoricalModel":
        """The model of a `to_dict` dict.

        Args:
            d: The dict (from a checkpoint or a peer: checked).

        Returns:
            The `CategoricalModel`.

        Raises:
            ValueError: not such a dict, or an invalid model.
        """
        try:
            return cls(int(d["lo"]), np.asarray(d["probs"], dtype=np.float64))
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a CategoricalModel dict: {e}") from None

    def bits(self, m: np.ndarray) -> np.ndarray:
        """The ideal code length of integer values.

        Args:
            m: Integers shaped (..., D) (or any shape when D = 1).

        Returns:
            -log2 P(m) per value (float64, shaped like m); an escape costs its raw bits too.
        """
        m = np.asarray(m, dtype=np.int64)
        idx = m - self.lo
        esc = (idx < 0) | (idx >= self.size)
        rows = np.broadcast_to(np.arange(m.shape[-1]) % self.dims if m.ndim else 0, m.shape)
        p = self.probs[rows, np.where(esc, self.size, idx)]
        return -np.log2(p) + ESCAPE_RAW_BITS * esc

    def relaxed_bits(self, y: torch.Tensor) -> torch.Tensor:
        """The bits of noisy values under the table, differentiable in y.

        Args:
            y: ``z_hat / delta`` shaped (..., D).

        Returns:
            Bits per element, shaped like y.
        """
        probs = torch.as_tensor(self.probs, dtype=y.dtype, device=y.device)
        return table_bits(y, probs, self.lo)


def table_bits(y: torch.Tensor, probs: torch.Tensor, lo: int, expected: bool = False) -> torch.Tensor:
    """Bits of y under the table, differentiable in y and probs. Two readings:

    - default: -log2 of the probability of y + U(-1/2, 1/2) under the table's
      piecewise-constant density, a linear interpolation of neighbouring masses (y is a
      noisy z_hat / delta).
    - `expected`: the exact mean over the dither of -log2 P(round(y + u)), u ~ U[-1/2, 1/2):
      m is floor(y) + 1 with probability frac(y), else floor(y), so the code lengths are
      interpolated (y is the clean z / delta). This is what the range coder spends under
      this table; unlike the density it has a kink at each integer, so a value that should
      carry nothing is pushed all the way onto one, where the dither costs it nothing.

    y is shaped (..., D); probs (D, K + 1) or (1, K + 1), rows summing to 1. Beyond the
    table the escape cost holds, plus a log slope that points back in.
    """
    rows, k1 = probs.shape
    k = k1 - 1
    if rows == 1:
        probs = probs.expand(y.shape[-1], k1)
    esc = probs[:, k:] * 2.0**-ESCAPE_RAW_BITS
    ext = torch.cat([esc, probs[:, :k], esc], dim=1)  # index 0 is lo - 1, k + 1 is lo + k
    t = y - lo + 1
    tc = t.clamp(0, k + 1)
    j = tc.detach().floor().clamp(max=k).long()
    f = tc - j
    table = ext.expand(*y.shape[:-1], *ext.shape)
    p0 = table.gather(-1, j.unsqueeze(-1)).squeeze(-1)
    p1 = table.gather(-1, (j + 1).unsqueeze(-1)).squeeze(-1)
    bits = -(1 - f) * torch.log2(p0) - f * torch.log2(p1) if expected else -torch.log2((1 - f) * p0 + f * p1)
    return bits + torch.log2(1 + (t - tc).abs())
