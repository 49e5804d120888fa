"""Every hyperparameter of `ddcl train`, one line of doc each. Kept free of torch so the
`ddcl` command line starts fast (a test checks the parser never imports it)."""

from __future__ import annotations

from dataclasses import dataclass

from .envs import ENVS, default_agents, make

CODECS = ("float32", "expgolomb", "rice", "range")  # channel.codecs.NAMES (a test keeps them equal)
RATE_LOSSES = ("surrogate", "codelength", "entropy", "expected")  # channel.rate.RATE_LOSSES
CORES = ("mlp", "gru")  # agents.policy's cores
AGGREGATES = ("mean", "attention")  # agents.policy's ways to combine heard messages


@dataclass
class TrainConfig:
    env: str = "goal"  # environment name
    agents: int = 0  # agent slots; 0: the env's own (tj/pp levels fix it; 2 otherwise)
    codec: str = "range"  # codec whose real bits are reported (and whose length `codelength` uses)
    rate_loss: str = "entropy"  # surrogate | codelength | entropy | expected (entropy's prior, exact mean real length)
    lam: float = 0.01  # rate penalty weight, per bit per message
    lam_warmup: float = 0.3  # fraction of updates over which lam ramps up from 0
    delta: float = 0.2  # quantization step
    learn_delta: bool = False  # learn a step per message dimension and agent (log-delta, from delta, at prior_lr)
    msg_dim: int = 4  # message dimensions
    hidden: int = 64  # hidden units
    core: str = "mlp"  # policy core: mlp | gru (memory, reset at episode starts)
    aggregate: str = "mean"  # heard messages: mean (CommNet/IC3Net) | attention (TarMAC)
    share: bool = False  # one set of policy weights for every agent
    batch: int = 256  # parallel env instances
    rollout: int = 10  # env steps per update
    updates: int = 1500  # gradient updates
    lr: float = 3e-3  # Adam learning rate
    gamma: float = 0.95  # discount
    entropy_coef: float = 0.01  # action-entropy bonus
    value_coef: float = 0.5  # value-loss weight
    team_reward: bool = False  # sum per-agent rewards into one team reward: one game, not N selfish ones
    adv_norm: bool = False  # scale advantages to unit std per update (large rewards: Traffic Junction's -10s)
    prior_radius: int = 16  # the entropy/expected prior covers -radius..radius, escape beyond
    prior_lr: float = 1e-2  # Adam learning rate of the entropy/expected prior's logits
    init: str = ""  # checkpoint (same env and shape) whose policies this run starts from; critic and prior start anew
    seed: int = 0  # everything random derives from this
    eval_every: int = 250  # updates between evaluations
    device: str = "auto"  # auto | cpu | cuda

    def __post_init__(self):
        if self.agents == 0:
            self.agents = default_agents(self.env)

    def validate(self) -> None:
        if self.env not in ENVS and not self.env.startswith("pz:"):
            raise ValueError(f"unknown env {self.env!r}; choose one of {', '.join(ENVS)} or pz:<module>")
        if self.codec not in CODECS:
            raise ValueError(f"unknown codec {self.codec!r}; choose one of {', '.join(CODECS)}")
        if self.rate_loss not in RATE_LOSSES:
            raise ValueError(f"unknown rate loss {self.rate_loss!r}; choose one of {', '.join(RATE_LOSSES)}")
        for name in ("delta", "lr", "batch", "rollout", "updates", "msg_dim", "hidden"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.core not in CORES or self.aggregate not in AGGREGATES:
            raise ValueError(f"core must be one of {', '.join(CORES)}; aggregate one of {', '.join(AGGREGATES)}")
        if self.lam < 0 or not 0 < self.gamma <= 1 or not 0 <= self.lam_warmup <= 1:
            raise ValueError("lam must be >= 0, gamma in (0, 1] and lam_warmup in [0, 1]")
        if self.env in ENVS:
            make(self.env, 1, 0, self.agents)  # an env with a fixed slot count refuses another
