"""DDCL as one torch layer: put it between any sender's message head and its receivers.

    ddcl = DDCL(4, delta=0.2, codec="range", rate_loss="expected")
    z_hat = ddcl(z, step, sender)            # quantized for real, straight-through gradient
    loss = task_loss + lam * ddcl.rate_loss()
    ddcl.bits()                              # the real bitstream length of that call

The dither comes from the Philox streams the networked agents draw (key: run seed, epoch
seed, sender; counter: step), so a policy trained with this layer runs over the broker
unchanged, and `encode` / `decode` are the very path an agent process sends and hears
with. Nothing here opens a socket or a process.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from . import codecs
from .codecs import CategoricalModel, Codec, RangeCodec, stream_bits
from .errors import DeltaError, DtypeError, LayerError, ShapeError
from .noise import MAX_SENDER, NoiseKey, uniform_numpy, uniform_torch
from .quantizer import dequantize_numpy, quantize, quantize_numpy
from .rate import PRIOR_LOSSES, RATE_LOSSES, FactorizedPrior, rate_bits

__all__ = ["DDCL", "Encoded"]

_REDUCTIONS = ("mean", "sum", "none")
_F32_NP = np.dtype(np.float32)
_STEP_RANGE = (-(2**63), 2**64 - 1)  # what the noise counter's two 32-bit step words hold
# a learned step stays in here (log-delta is clamped): exp() can neither reach 0 nor
# overflow, and |z / delta| stays far below the quantizer's 2**31 for any sane z
LEARNED_DELTA_RANGE = (1e-6, 1e6)
_LOG_DELTA_RANGE = tuple(math.log(x) for x in LEARNED_DELTA_RANGE)


class Encoded(NamedTuple):
    """One message batch as it goes on the wire (`DDCL.encode`)."""

    z_hat: np.ndarray  # float32, shaped like z: what every receiver reconstructs
    symbols: np.ndarray  # int64, shaped like z: the integers m the codec wrote
    payload: bytes  # the codec's bytes
    bits: int  # the bitstream's length in bits, before the last byte's padding


class _Call(NamedTuple):
    """What `forward` keeps of its last call for `rate_loss`, `bits` and `symbols`."""

    z: torch.Tensor
    z_hat: torch.Tensor
    m: torch.Tensor  # float32 integers, as the quantizer returns them
    senders: tuple[int, ...] | None  # None: one sender for the whole tensor


class DDCL(nn.Module):
    """Differentiable Discrete Communication Learning as a layer (arXiv 2511.01554).

    ``m = round(z / delta + u)``, ``z_hat = delta * (m - u)`` with dither ``u`` shared by
    sender and receiver: the error is uniform on (-delta/2, delta/2) and independent of
    z, so the straight-through gradient ``d z_hat / d z = 1`` is unbiased. The integers m
    are real: `bits` encodes them with the chosen codec.

    Args:
        dim: Message values per sender (the last dimension of z).
        delta: Quantization step: one positive number, or one per dimension. With
            ``learn_delta``, where the learned steps start.
        codec: A codec name (``float32``, ``expgolomb``, ``rice``, ``range``) or a
            `channel.codecs.Codec`. With ``range`` by name and an ``entropy`` or
            ``expected`` rate loss, the range coder's model is the learned prior.
        rate_loss: ``surrogate`` (the paper's), ``codelength`` (the codec's smooth
            length), ``entropy`` or ``expected`` (a learned prior; see `prior`).
        run_seed: The run's noise seed (32 bits): the networked run's sync service's.
        epoch_seed: The epoch's noise seed (24 bits); the project's trainer uses 1.
        prior_radius: The learned prior covers -radius..radius, an escape beyond.
        check: Refuse non-finite or out-of-range z (one device sync per call).
        learn_delta: Learn one step per dimension with the layer's other parameters
            (as ``log_delta``, so it stays positive): the task's gradient shrinks a step
            (its noise hurts), the rate loss grows it (fewer integers to code).

    Attributes:
        prior: The learnable `channel.rate.FactorizedPrior` (a submodule: its logits
            are parameters, saved in ``state_dict``), or None for the other rate losses.
        log_delta: With ``learn_delta``, the parameter (dim,) whose exp (clamped to
            LEARNED_DELTA_RANGE) is the step; else None.
        delta: The step as it quantizes now: a float, or a tuple of one per dimension
            (with ``learn_delta``, the current float32 values, exactly: pass them as
            ``delta`` to a fixed layer and it quantizes bit for bit the same).

    Raises:
        ShapeError: dim is not a positive integer, or delta has the wrong length.
        DeltaError: delta is not finite and positive.
        LayerError: an unknown rate loss, seeds outside their bits, a radius below 1.
        CodecError: an unknown codec name.
    """

    def __init__(self, dim: int, *, delta: float | Sequence[float] = 0.2, codec: str | Codec = "range",
                 rate_loss: str = "surrogate", run_seed: int = 0, epoch_seed: int = 1, prior_radius: int = 16,
                 check: bool = True, learn_delta: bool = False):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ShapeError(f"dim must be a positive integer, got {dim!r}")
        if rate_loss not in RATE_LOSSES:
            raise LayerError(f"unknown rate loss {rate_loss!r}; choose one of {', '.join(RATE_LOSSES)}")
        self.dim = dim
        self._fixed_delta = _check_delta(delta, dim)
        # the quantizer's step: the plain float where one step serves all (the trainer's
        # arithmetic, bit for bit), else a buffer that follows the layer across devices
        self.register_buffer("_delta_t", torch.tensor(self._fixed_delta, dtype=torch.float32).reshape(-1),
                             persistent=False)
        self._fixed_delta_np = np.asarray(self._fixed_delta, dtype=np.float32)
        self.register_parameter("log_delta", None)
        if learn_delta:
            lo, hi = LEARNED_DELTA_RANGE
            if not np.all((self._fixed_delta_np >= lo) & (self._fixed_delta_np <= hi)):
                raise DeltaError(f"a learned delta starts in {lo:g}..{hi:g}, got {delta!r}")
            self.log_delta = nn.Parameter(torch.log(self._delta_t.expand(dim).clone()))
        self._learned_np: tuple[tuple, np.ndarray] | None = None
        self.rate_name = rate_loss
        try:  # seeds outside their bits are refused now, not at the first call
            NoiseKey(run_seed, epoch_seed, 0)
        except (TypeError, ValueError) as e:
            raise LayerError(f"bad noise seeds: {e}") from None
        if isinstance(prior_radius, bool) or not isinstance(prior_radius, int) or prior_radius < 1:
            raise LayerError(f"prior_radius must be a positive integer, got {prior_radius!r}")
        self.run_seed, self.epoch_seed = run_seed, epoch_seed
        self.check = check
        self.prior = FactorizedPrior(dim, prior_radius) if rate_loss in PRIOR_LOSSES else None
        self._codec = codecs.get(codec) if isinstance(codec, str) else codec
        if not isinstance(self._codec, Codec):
            raise LayerError(f"codec must be a codec name or a channel.codecs.Codec, got {codec!r}")
        # the prior is the range coder's model only where the caller left the model to the layer
        self._codec_from_prior = self.prior is not None and codec == "range"
        self._prior_codec: tuple[tuple, RangeCodec] | None = None
        self._last: _Call | None = None

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, delta={self.delta}, codec={self._codec.name!r}, rate_loss={self.rate_name!r}, "
                f"run_seed={self.run_seed}, epoch_seed={self.epoch_seed}, learn_delta={self.log_delta is not None}")

    @property
    def delta(self) -> float | tuple[float, ...]:
        """The step as it quantizes now (see the class doc)."""
        if self.log_delta is None:
            return self._fixed_delta
        return tuple(float(x) for x in self._delta_np)

    # ----- the differentiable path -----

    def forward(self, z: torch.Tensor, step: int, sender: int | Sequence[int] = 0) -> torch.Tensor:
        """Quantize z with the dither of (run seed, epoch seed, sender) at `step`.

        Args:
            z: float32 messages shaped (..., dim), on any device. With one sender, all of
                z is that sender's batch (its dither runs over z's elements in order, as
                an agent's (B, dim) message). With a sequence of N senders, z is shaped
                (..., N, dim) and z[..., k, :] is sender[k]'s batch.
            step: The step the dither is drawn for (the networked agent's clock view).
            sender: The sender id (0..255), or one per slot of z's second-to-last axis.

        Returns:
            z_hat, shaped like z: ``delta * (m - u)``, with the identity gradient to z.

        Raises:
            DtypeError: z is not a float32 tensor.
            ShapeError: z's last dimension is not dim, or its sender axis not len(sender).
            LayerError: step or sender is not an integer in range.
            QuantizerError: z holds NaN, infinity, or |z / delta| >= 2**31 (with check).
        """
        senders = self._check_call(z, step, sender)
        if senders is None:
            u = uniform_torch(z.numel(), self._key(sender), step, device=z.device).view_as(z)
        else:  # each sender's batch draws what that sender's own agent would draw for it
            per = z.select(-2, 0).shape
            u = torch.stack([uniform_torch(per.numel(), self._key(s), step, device=z.device).view(per)
                             for s in senders], dim=-2)
        z_hat, m = quantize(z, self._delta(), u, check=self.check)
        self._last = _Call(z, z_hat, m, senders)
        return z_hat

    def rate_loss(self, reduction: str = "mean") -> torch.Tensor:
        """The rate term of the last call, in bits per message, differentiable in z (and
        in the prior's logits for ``entropy`` and ``expected``).

        Args:
            reduction: ``mean`` over messages (a scalar to add to a loss), ``sum``, or
                ``none``: one value per message, shaped z.shape[:-1].

        Returns:
            The selected rate loss's bits.

        Raises:
            LayerError: no call yet, or an unknown reduction.
        """
        last = self._last_call()
        if reduction not in _REDUCTIONS:
            raise LayerError(f"reduction must be one of {', '.join(_REDUCTIONS)}, got {reduction!r}")
        bits = rate_bits(self.rate_name, last.z, last.z_hat, self._delta(), self._codec, self.prior)
        return bits if reduction == "none" else bits.mean() if reduction == "mean" else bits.sum()

    # ----- the real bits, off the gradient path -----

    def symbols(self) -> torch.Tensor:
        """The integers m of the last call: what the codec writes.

        Returns:
            An int64 tensor shaped like z, on z's device.

        Raises:
            LayerError: no call yet.
        """
        return self._last_call().m.long()

    @property
    def codec(self) -> Codec:
        """The codec `bits`, `encode` and `decode` use. For ``range`` with a learned prior
        it is rebuilt from the prior's current probabilities whenever they have changed."""
        if not self._codec_from_prior:
            return self._codec
        logits = self.prior.logits
        # an optimizer step or load_state_dict writes the logits in place, bumping _version
        stamp = (logits.data_ptr(), logits._version)
        if self._prior_codec is None or self._prior_codec[0] != stamp:
            self._prior_codec = (stamp, RangeCodec(self.export_model()))
        return self._prior_codec[1]

    def export_model(self) -> CategoricalModel:
        """The learned prior as the range codec's model.

        Returns:
            A `channel.codecs.CategoricalModel` (``codecs.get("range", model=...)`` takes it).

        Raises:
            LayerError: the rate loss learns no prior (only ``entropy`` and ``expected`` do).
        """
        if self.prior is None:
            raise LayerError(f"the {self.rate_name} rate loss learns no prior; use entropy or expected")
        return self.prior.export()

    def bits(self, per_message: bool = False) -> int | np.ndarray:
        """The real length of the last call's messages under `codec`, encoded now.

        Args:
            per_message: False: the bits of each sender's batch as one bitstream (split
                every MAX_COUNT values), summed over senders: what the networked agents
                put on the wire for that batch. True: each message (one row of dim
                values) as a bitstream of its own, shaped z.shape[:-1].

        Returns:
            An int, or an int64 array of per-message bits.

        Raises:
            LayerError: no call yet.
        """
        last = self._last_call()
        m = last.m.detach().cpu().numpy().astype(np.int64)
        codec = self.codec
        if per_message:
            rows = m.reshape(-1, self.dim)
            return np.array([codec.encode_bits(r)[1] for r in rows], dtype=np.int64).reshape(m.shape[:-1])
        if last.senders is None:
            return stream_bits(codec, m)
        return sum(stream_bits(codec, m[..., k, :]) for k in range(len(last.senders)))

    # ----- the wire: what an agent process sends and hears -----

    def encode(self, z, step: int, sender: int, epoch_seed: int | None = None) -> Encoded:
        """Quantize and encode one sender's batch for the wire, without autograd: the
        numpy twin of `forward` (the same z_hat bit for bit) plus the codec.

        Args:
            z: float32 messages (..., dim): a tensor (any device) or a numpy array.
            step: The dither's step (the sender's clock view).
            sender: The sender id (0..255).
            epoch_seed: This step's epoch seed, where a sync service changes it; default
                the layer's.

        Returns:
            An `Encoded` (z_hat, symbols, payload, bits).

        Raises:
            DtypeError, ShapeError, LayerError: as `forward`.
            QuantizerError: z holds NaN, infinity, or |z / delta| >= 2**31.
            CodecError: the codec cannot write these integers.
        """
        z_np = z.detach().cpu().numpy() if isinstance(z, torch.Tensor) else np.asarray(z)
        self._check_call(z_np, step, sender, one_sender=True)
        u = uniform_numpy(z_np.size, self._key(sender, epoch_seed), step).reshape(z_np.shape)
        z_hat, m = quantize_numpy(z_np, self._delta_np, u)
        payload, nbits = self.codec.encode_bits(m.reshape(-1))
        return Encoded(z_hat, m, payload, nbits)

    def decode(self, payload: bytes, shape, step: int, sender: int, epoch_seed: int | None = None) -> np.ndarray:
        """A receiver's reconstruction of `encode`'s payload, with the dither regenerated.

        Args:
            payload: The codec's bytes.
            shape: The batch's shape, (..., dim).
            step, sender, epoch_seed: Those the sender encoded with (what the sync mode
                lets the receiver know).

        Returns:
            z_hat as float32 numpy, shaped `shape`.

        Raises:
            ShapeError: shape's last dimension is not dim.
            CodecError: the payload is not a valid bitstream of that many values.
        """
        shape = tuple(shape)
        if not shape or shape[-1] != self.dim:
            raise ShapeError(f"messages shaped {shape}: the last dimension must be dim={self.dim}")
        count = math.prod(shape)
        m = self.codec.decode(payload, count).reshape(shape)
        u = uniform_numpy(count, self._key(sender, epoch_seed), step).reshape(shape)
        return dequantize_numpy(m, self._delta_np, u)

    # ----- saved state -----

    def get_extra_state(self) -> dict:
        """What the saved prior means: a state loaded into a layer of another shape,
        step or loss would price messages with a table that was never learned for them."""
        # a learned step is a parameter of the state itself; a fixed one must match
        return {"dim": self.dim, "delta": "learned" if self.log_delta is not None else self._fixed_delta,
                "rate_loss": self.rate_name,
                "prior_radius": None if self.prior is None else -self.prior.lo}

    def set_extra_state(self, state: dict) -> None:
        mine = self.get_extra_state()
        differ = {k: (v, mine.get(k)) for k, v in dict(state).items() if mine.get(k) != v}
        if differ:
            raise LayerError("the saved DDCL state does not fit this layer: "
                             + ", ".join(f"{k} saved {a!r}, here {b!r}" for k, (a, b) in differ.items()))

    def __getstate__(self) -> dict:
        # a copy (copy.deepcopy for a target network, pickling) takes no last call: its
        # tensors belong to a graph, which deepcopy refuses; the prior's codec is rebuilt
        state = self.__dict__.copy()
        state["_last"] = state["_prior_codec"] = state["_learned_np"] = None
        return state

    # ----- helpers -----

    def _delta(self):
        """The step as the torch path takes it: a float, a buffer, or the learned tensor
        (with its gradient to log_delta)."""
        if self.log_delta is not None:
            return torch.exp(self.log_delta.clamp(*_LOG_DELTA_RANGE))
        return self._fixed_delta if isinstance(self._fixed_delta, float) else self._delta_t

    @property
    def _delta_np(self) -> np.ndarray:
        """The step as the numpy wire path takes it: float32, the torch path's values
        exactly (computed by it, on the parameter's device), rebuilt when log_delta changes."""
        if self.log_delta is None:
            return self._fixed_delta_np
        stamp = (self.log_delta.data_ptr(), self.log_delta._version)  # an optimizer step or a load bumps it
        if self._learned_np is None or self._learned_np[0] != stamp:
            with torch.no_grad():
                self._learned_np = (stamp, self._delta().cpu().numpy().astype(np.float32))
        return self._learned_np[1]

    def _key(self, sender: int, epoch_seed: int | None = None) -> NoiseKey:
        return NoiseKey(self.run_seed, self.epoch_seed if epoch_seed is None else epoch_seed, sender)

    def _last_call(self) -> _Call:
        if self._last is None:
            raise LayerError("the layer has not been called yet: call it on a message first")
        return self._last

    def _check_call(self, z, step, sender, one_sender: bool = False) -> tuple[int, ...] | None:
        """Typed errors for what the quantizer would take silently or fail on obscurely;
        the senders as a tuple, or None for a single one. On every agent's message: the
        common case (a float32 array, plain ints) costs a few attribute reads."""
        if not isinstance(z, (torch.Tensor, np.ndarray)):
            raise DtypeError(f"DDCL takes a float32 tensor, got {type(z).__name__}")
        # identity first: comparing a numpy dtype with a torch one costs 0.4 us a message
        if z.dtype is not _F32_NP and z.dtype is not torch.float32 and z.dtype != np.float32:
            raise DtypeError(f"DDCL takes float32 messages, got {z.dtype}: convert with .float() "
                             "(the wire reconstructs float32, bit for bit)")
        if z.ndim == 0 or z.shape[-1] != self.dim:
            raise ShapeError(f"messages shaped {tuple(z.shape)}: the last dimension must be dim={self.dim}")
        _check_int(step, "step", *_STEP_RANGE)
        if type(sender) is int or one_sender or not isinstance(sender, (Sequence, np.ndarray)):
            _check_int(sender, "sender", 0, MAX_SENDER)
            return None
        senders = tuple(_check_int(s, "sender", 0, MAX_SENDER) for s in sender)
        if not senders or z.ndim < 2 or z.shape[-2] != len(senders):
            raise ShapeError(f"{len(senders)} senders need messages shaped (..., {len(senders)}, {self.dim}), "
                             f"got {tuple(z.shape)}")
        return senders


def _check_int(value, name: str, lo: int, hi: int) -> int:
    if type(value) is int and lo <= value <= hi:  # the common case, first
        return value
    try:
        if isinstance(value, (bool, np.bool_)):
            raise TypeError
        v = operator.index(value)
    except TypeError:
        raise LayerError(f"{name} must be an integer, got {value!r}") from None
    if not lo <= v <= hi:
        raise LayerError(f"{name} must be in {lo}..{hi}, got {v}")
    return v


def _check_delta(delta, dim: int) -> float | tuple[float, ...]:
    """One finite positive step as a float, or `dim` of them as a tuple."""
    try:
        values = np.asarray(delta.detach().cpu() if isinstance(delta, torch.Tensor) else delta, dtype=np.float64)
    except (TypeError, ValueError):
        raise DeltaError(f"delta must be a positive number or one per dimension, got {delta!r}") from None
    if values.ndim > 1 or (values.ndim == 1 and values.size != dim):
        raise ShapeError(f"delta must be one number or {dim} (one per dimension), got shape {values.shape}")
    if not (np.all(np.isfinite(values)) and np.all(values > 0)):
        raise DeltaError(f"delta must be finite and positive, got {delta!r}")
    return float(values) if values.ndim == 0 else tuple(float(x) for x in values)
