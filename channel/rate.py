"""Rate losses: what a message costs, in bits, as a differentiable function of z.

- `surrogate`: the paper's sum log2(2|z|/delta + 1). Not a code length (0 bits for m = 0,
  breaks Kraft's inequality), so reports always show real bits beside it.
- `codelength`: the selected codec's own smooth length (`Codec.smooth_bits`).
- `entropy`: -log2 P(m) under a learned factorized prior, relaxed through the dither
  noise (z_hat / delta is m - u: the value plus uniform noise), exportable as the
  CategoricalModel that the `range` codec then uses.
- `expected`: the same prior, but the exact mean over the dither of -log2 P(m) given z:
  the range coder's real length under that model. Its kink at each integer drives quiet
  dimensions exactly onto a value; the relaxed density is flat there, and across many
  dimensions the dither then leaks bits through every one that sits slightly off.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .codecs.base import Codec
from .codecs.categorical import CategoricalModel, table_bits

RATE_LOSSES = ("surrogate", "codelength", "entropy", "expected")
PRIOR_LOSSES = ("entropy", "expected")  # the ones that learn a FactorizedPrior


def surrogate_bits(z: torch.Tensor, delta) -> torch.Tensor:
    """The paper's rate surrogate, differentiable in z.

    Args:
        z: Messages shaped (..., dim).
        delta: The step: a float, or a tensor of one per dimension.

    Returns:
        ``sum log2(2 |z| / delta + 1)`` over the last dimension: bits per message.
    """
    return torch.log2(2 * z.abs() / torch.as_tensor(delta, dtype=z.dtype, device=z.device) + 1).sum(-1)


def codelength_bits(z_hat: torch.Tensor, delta, codec: Codec) -> torch.Tensor:
    """Per-message smooth length of `codec`, summed over the last dimension."""
    y = z_hat / torch.as_tensor(delta, dtype=z_hat.dtype, device=z_hat.device)
    return codec.smooth_bits(y).sum(-1)


class FactorizedPrior(nn.Module):
    """A learnable table per message dimension over -radius .. radius plus an escape:
    the `entropy` and `expected` rate losses' prior, and (`export`) the range coder's model.

    Args:
        dims: Message dimensions (one table row each).
        radius: The table covers -radius .. radius; values beyond escape.

    Attributes:
        logits: The parameter (dims, 2 * radius + 2); it starts at a discretized Laplace.
        lo: The table's lowest value, -radius.
    """

    def __init__(self, dims: int, radius: int = 16):
        super().__init__()
        self.lo = -radius
        # Start from a discretized Laplace(0, 1) with a little escape mass, not uniform:
        # initial messages near zero then cost a few bits, not log2(2 * radius + 2) each.
        v = torch.arange(-radius, radius + 1, dtype=torch.float32).abs()
        start = torch.cat([-v, torch.tensor([-float(radius)])])
        self.logits = nn.Parameter(start.repeat(dims, 1))

    def probs(self) -> torch.Tensor:
        """The table's probabilities.

        Returns:
            softmax of the logits, (dims, 2 * radius + 2), differentiable in them.
        """
        return torch.softmax(self.logits, dim=-1)

    def bits(self, z: torch.Tensor, delta, expected: bool = False) -> torch.Tensor:
        """Bits per message under the table, differentiable in the input and the logits.

        Args:
            z: z_hat (the relaxed -log2 P), or with `expected` the clean z, shaped (..., dims).
            delta: The step: a float, or a tensor of one per dimension.
            expected: The exact mean real length over the dither, instead of the relaxed one.

        Returns:
            Bits summed over the last dimension, shaped z.shape[:-1].
        """
        y = z / torch.as_tensor(delta, dtype=z.dtype, device=z.device)
        return table_bits(y, self.probs(), self.lo, expected).sum(-1)

    def export(self) -> CategoricalModel:
        """The table as it stands, off the gradient path.

        Returns:
            A `CategoricalModel`: ``codecs.get("range", model=...)`` takes it.
        """
        return CategoricalModel(self.lo, self.probs().detach().cpu().double().numpy())


def rate_bits(
    name: str,
    z: torch.Tensor,
    z_hat: torch.Tensor,
    delta,
    codec: Codec | None = None,
    prior: FactorizedPrior | None = None,
) -> torch.Tensor:
    """The selected rate loss, per message.

    Args:
        name: ``surrogate``, ``codelength``, ``entropy`` or ``expected`` (`RATE_LOSSES`).
        z: The clean messages (..., dim).
        z_hat: Their quantized values (`quantize`).
        delta: The step: a float, or a tensor of one per dimension.
        codec: The codec whose smooth length ``codelength`` takes.
        prior: The `FactorizedPrior` that ``entropy`` and ``expected`` take.

    Returns:
        Bits per message, shaped z.shape[:-1], differentiable in z (and the prior).

    Raises:
        ValueError: an unknown name, or the codec or prior it needs is missing.
    """
    if name == "surrogate":
        return surrogate_bits(z, delta)
    if name == "codelength":
        if codec is None:
            raise ValueError("the codelength rate loss needs a codec")
        return codelength_bits(z_hat, delta, codec)
    if name in PRIOR_LOSSES:
        if prior is None:
            raise ValueError(f"the {name} rate loss needs a FactorizedPrior")
        return prior.bits(z, delta, expected=True) if name == "expected" else prior.bits(z_hat, delta)
    raise ValueError(f"unknown rate loss {name!r}; choose one of {', '.join(RATE_LOSSES)}")


def entropy_bits(values: np.ndarray) -> float:
    """Empirical entropy, bits per value, of integer samples."""
    _, counts = np.unique(np.asarray(values), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())
