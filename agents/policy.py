"""The agent policy and the checkpoint format the trainer writes and agents load."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .train_config import AGGREGATES, CORES, TRANSFORMER_HEADS  # the choices live with the torch-free config

CHECKPOINT_FORMAT = "ddcl-checkpoint/1"


@dataclass
class PolicyConfig:
    obs_dim: int  # observation values per agent
    n_actions: int  # discrete actions
    msg_dim: int = 4  # message dimensions (the paper's goal toy: 4)
    hidden: int = 64  # hidden units
    delta: float = 0.2  # quantization step (the paper's goal toy: 1/5)
    core: str = "mlp"  # mlp (no memory) | gru (recurrent, reset at episode starts) | transformer (attends over heard)
    aggregate: str = "mean"  # how heard messages combine: mean (CommNet/IC3Net) | attention (TarMAC)
    heads: int = TRANSFORMER_HEADS  # transformer core: attention heads (hidden must divide by it)
    comm: bool = True  # False: hears zeros whatever is said (the no-communication ablation, kept in its checkpoint)


class _Layers(NamedTuple):
    """The policy's layers in forward order, held outside nn.Module's registry: a tuple
    is a plain attribute, where a registered submodule is looked up through
    Module.__getattr__ and Sequential.__getitem__ on every pass."""

    body: nn.Linear
    memory: nn.GRUCell | None
    msg: nn.Linear
    query: nn.Linear | None
    key: nn.Linear | None
    act_in: nn.Linear
    act_out: nn.Linear
    mixer: TokenMixer | None


class TokenMixer(nn.Module):
    """The transformer core's block: the listener's observation token (its hidden state)
    and one token per heard message (the message embedded to hidden width), one pre-norm
    self-attention block (multi-head attention, then a feed-forward layer, each residual).

    Only the listener's own token is read out, so only its query is computed: the same
    output as the full block's at that token, at 1 / (1 + peers) of the attention's and
    the feed-forward layer's cost."""

    def __init__(self, hidden: int, msg_dim: int, heads: int):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"the transformer core needs hidden ({hidden}) divisible by heads ({heads})")
        self.heads = heads
        self.embed = nn.Linear(msg_dim, hidden)  # a heard message's token
        self.norm1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.ff_in = nn.Linear(hidden, 2 * hidden)
        self.ff_out = nn.Linear(2 * hidden, hidden)

    def forward(self, h: torch.Tensor, heard: torch.Tensor) -> torch.Tensor:
        """(B, hidden) own token, (B, peers, D) heard -> (B, hidden) own token's output."""
        tokens = torch.cat([h[:, None], _linear(self.embed, heard)], dim=1)  # (B, 1 + peers, hidden)
        x = F.layer_norm(tokens, tokens.shape[-1:], self.norm1.weight, self.norm1.bias)
        b, n, width = x.shape
        w, bias = self.qkv.weight, self.qkv.bias
        q = F.linear(x[:, 0], w[:width], bias[:width]).view(b, self.heads, 1, -1)
        k, v = F.linear(x, w[width:], bias[width:]).view(b, n, 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        mixed = F.scaled_dot_product_attention(q, k, v).reshape(b, width)  # (B, heads, 1, dh) -> (B, hidden)
        out = h + _linear(self.proj, mixed)
        y = F.layer_norm(out, out.shape[-1:], self.norm2.weight, self.norm2.bias)
        return out + _linear(self.ff_out, F.gelu(_linear(self.ff_in, y)))


class AgentPolicy(nn.Module):
    """obs (+ memory) -> hidden -> message z; (hidden, heard z_hat) -> action logits.
    The transformer core speaks as the MLP does and hears through a `TokenMixer`.

    `state` is the GRU's memory, (B, hidden), or None for the MLP; callers zero its rows
    where an episode starts. Heard messages come stacked per peer, (B, peers, D): the mean,
    or attention with the query from the listener's hidden state and keys from each
    message (TarMAC with the key derived from the value, so nothing extra goes on the wire).
    """

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.cfg = cfg
        self.body = nn.Sequential(nn.Linear(cfg.obs_dim, cfg.hidden), nn.Tanh())
        self.memory = nn.GRUCell(cfg.hidden, cfg.hidden) if cfg.core == "gru" else None
        self.msg_head = nn.Linear(cfg.hidden, cfg.msg_dim)
        if cfg.aggregate == "attention":
            self.query = nn.Linear(cfg.hidden, cfg.msg_dim)
            self.key = nn.Linear(cfg.msg_dim, cfg.msg_dim)
        # the transformer's block reads the heard messages itself: its output alone feeds the head
        self.mixer = TokenMixer(cfg.hidden, cfg.msg_dim, cfg.heads) if cfg.core == "transformer" else None
        self.act_head = nn.Sequential(
            nn.Linear(cfg.hidden + (0 if self.mixer else cfg.msg_dim), cfg.hidden), nn.Tanh(),
            nn.Linear(cfg.hidden, cfg.n_actions)
        )
        attention = cfg.aggregate == "attention"
        self.layers = _Layers(self.body[0], self.memory, self.msg_head, self.query if attention else None,
                              self.key if attention else None, self.act_head[0], self.act_head[2], self.mixer)

    def initial_state(self, batch: int, device="cpu") -> torch.Tensor | None:
        return torch.zeros(batch, self.cfg.hidden, device=device) if self.memory is not None else None

    # The forward passes call the layers' functions on their parameters, not the modules:
    # the same arithmetic and state_dict, without nn.Module.__call__'s hook checks, which
    # at an agent's B = 1 cost as much as the layers themselves (measured: 2x per pass).

    def speak(self, obs: torch.Tensor, state: torch.Tensor | None = None, body_grad: bool = True):
        """-> (hidden, z, next state). Without `body_grad` the message head reads a detached
        hidden state: what the message costs, and what listeners make of it, then train the
        head alone and leave the features the actions are chosen from to the task."""
        layers = self.layers
        h = torch.tanh(_linear(layers.body, obs))
        if (m := layers.memory) is not None:
            h = torch.gru_cell(h, state, m.weight_ih, m.weight_hh, m.bias_ih, m.bias_hh)
            state = h
        return h, _linear(layers.msg, h if body_grad else h.detach()), state

    @torch.no_grad()
    def deafen(self) -> None:
        """Zero the weights that read heard messages: the policy then acts as it does
        silenced, whatever it hears, and learns from there what is worth reading. (The
        transformer's heard tokens become its embedding's bias, as zeros would be.)"""
        if self.mixer is not None:
            self.mixer.embed.weight.zero_()
        else:
            self.act_head[0].weight[:, self.cfg.hidden:].zero_()

    def act(self, h: torch.Tensor, heard: torch.Tensor) -> torch.Tensor:
        layers = self.layers
        if not self.cfg.comm:
            heard = torch.zeros_like(heard)
        if layers.mixer is not None:
            return _linear(layers.act_out, torch.tanh(_linear(layers.act_in, layers.mixer(h, heard))))
        if heard.shape[1] == 0:
            combined = heard.new_zeros(heard.shape[0], self.cfg.msg_dim)
        elif layers.key is not None:  # attention
            scores = (_linear(layers.key, heard) * _linear(layers.query, h)[:, None, :]).sum(-1) / self.cfg.msg_dim**0.5
            combined = (torch.softmax(scores, dim=1)[..., None] * heard).sum(1)
        elif heard.shape[1] == 1:  # one peer: its message is the mean, bit for bit, one reduction fewer
            combined = heard[:, 0]
        else:
            combined = heard.mean(1)
        return _linear(layers.act_out, torch.tanh(_linear(layers.act_in, torch.cat([h, combined], dim=-1))))


def _linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, layer.weight, layer.bias)


def initial_states(policies: list[AgentPolicy], batch: int, device="cpu") -> list[torch.Tensor | None]:
    return [p.initial_state(batch, device) for p in policies]


def forget(state: torch.Tensor | None, first) -> torch.Tensor | None:
    """The memory with the rows where an episode starts (`first`, (B,) bool, numpy or
    torch) zeroed; None stays None."""
    if state is None:
        return None
    return state * ~torch.as_tensor(first, device=state.device)[:, None]


def init_policies(cfg: PolicyConfig, n_agents: int, seed: int, shared: bool = False) -> list[AgentPolicy]:
    """Agent k's untrained policy depends only on (cfg, seed, k): every process agrees.
    With `shared`, every agent holds agent 0's module (parameter sharing)."""
    if cfg.core not in CORES or cfg.aggregate not in AGGREGATES:
        raise ValueError(f"core must be one of {', '.join(CORES)} and aggregate one of {', '.join(AGGREGATES)}")
    out = []
    for k in range(n_agents):
        torch.manual_seed(seed * 1000 + k)
        out.append(out[0] if shared and out else AgentPolicy(cfg))
    return out


class CheckpointError(ValueError):
    """A checkpoint is unreadable or does not fit the run."""


def save_checkpoint(path, env: str, cfg: PolicyConfig, policies: list[AgentPolicy], codec: dict, extra=None) -> None:
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "env": env,
            "policy": asdict(cfg),
            "n_agents": len(policies),
            "state_dicts": [p.state_dict() for p in policies],
            "codec": codec,  # {"name": ..., "options": {...}, "models": per agent, "deltas": per agent or None}
            "extra": extra or {},
        },
        Path(path),
    )


def load_checkpoint(path, env: str, obs_dim: int, n_actions: int, n_agents: int) -> tuple[PolicyConfig, list[AgentPolicy], dict]:
    try:
        ck = torch.load(Path(path), map_location="cpu", weights_only=True)  # no code from files
    except Exception as e:  # torch.load raises OSError, RuntimeError, UnpicklingError, EOFError...
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
    if ck["env"] != env:
        raise CheckpointError(f"checkpoint {path} is for env {ck['env']!r}, not {env!r}")
    cfg = PolicyConfig(**ck["policy"])
    if (cfg.obs_dim, cfg.n_actions, ck["n_agents"]) != (obs_dim, n_actions, n_agents):
        raise CheckpointError(
            f"checkpoint {path} has obs_dim={cfg.obs_dim}, n_actions={cfg.n_actions}, "
            f"agents={ck['n_agents']}; the run needs {obs_dim}, {n_actions}, {n_agents}"
        )
    _check_deltas(path, checkpoint_deltas(ck), n_agents, cfg.msg_dim)
    policies = []
    for sd in ck["state_dicts"]:
        p = AgentPolicy(cfg)
        try:
            p.load_state_dict(sd)
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint {path} does not fit the policy: {e}") from None
        policies.append(p)
    return cfg, policies, ck


def checkpoint_deltas(ck: dict) -> list | None:
    """The learned steps a checkpoint carries (agent k's at k), or None where they were fixed."""
    return (ck.get("codec") or {}).get("deltas")


def _check_deltas(path, deltas, n_agents: int, msg_dim: int) -> None:
    """Learned steps, where the checkpoint has them: one per dimension per agent, each
    finite and positive (CheckpointError), before any agent quantizes with them."""
    if deltas is None:
        return
    try:
        values = np.asarray(deltas, dtype=np.float64)
    except (TypeError, ValueError):
        values = None
    if values is None or values.shape != (n_agents, msg_dim) or not np.all(np.isfinite(values) & (values > 0)):
        raise CheckpointError(f"checkpoint {path} has learned steps that are not {n_agents} x {msg_dim} finite "
                              f"positive numbers")
