"""Every hyperparameter of `ddcl train`, one line of doc each. Kept free of torch so the
`ddcl` command line starts fast (a test checks the parser never imports it)."""

from __future__ import annotations

from dataclasses import dataclass

from .envs import ENVS, default_agents, make

CODECS = ("float32", "expgolomb", "rice", "range")  # channel.codecs.NAMES (a test keeps them equal)
RATE_LOSSES = ("surrogate", "codelength", "entropy", "expected")  # channel.rate.RATE_LOSSES
CORES = ("mlp", "gru", "transformer")  # agents.policy's cores
ALGOS = ("a2c", "mappo")  # agents/train.py, agents/mappo.py
TRANSFORMER_HEADS = 4  # agents.policy.PolicyConfig.heads: the transformer core's hidden must divide by it
AGGREGATES = ("mean", "attention")  # agents.policy's ways to combine heard messages


@dataclass
class TrainConfig:
    env: str = "goal"  # environment name
    algo: str = "a2c"  # a2c (agents/train.py) | mappo (agents/mappo.py: PPO's clipped surrogate, GAE, minibatch epochs)
    agents: int = 0  # agent slots; 0: the env's own (tj/pp levels fix it; 2 otherwise)
    codec: str = "range"  # codec whose real bits are reported (and whose length `codelength` uses)
    rate_loss: str = "entropy"  # surrogate | codelength | entropy | expected (entropy's prior, exact mean real length)
    lam: float = 0.01  # rate penalty weight, per bit per message
    lam_warmup: float = 0.3  # fraction of updates over which lam ramps up from 0
    delta: float = 0.2  # quantization step
    learn_delta: bool = False  # learn a step per message dimension and agent (log-delta, from delta, at prior_lr)
    msg_dim: int = 4  # message dimensions
    hidden: int = 64  # hidden units
    core: str = "mlp"  # policy core: mlp | gru (memory, reset at episode starts) | transformer (attends over heard)
    aggregate: str = "mean"  # heard messages: mean (CommNet/IC3Net) | attention (TarMAC)
    comm: bool = True  # agents hear each other; --no-comm: the no-communication ablation (all hear zeros, trained and evaluated)
    share: bool = False  # one set of policy weights for every agent
    msg_body_grad: bool = True  # the message's gradients (rate, listeners') reach the body the action head reads too
    deafen: bool = False  # start the listeners deaf: zero the weights that read heard messages (the policy as silenced)
    batch: int = 256  # parallel env instances
    rollout: int = 10  # env steps per update
    updates: int = 1500  # gradient updates
    lr: float = 3e-3  # Adam learning rate
    gamma: float = 0.95  # discount
    entropy_coef: float = 0.01  # action-entropy bonus
    value_coef: float = 0.5  # value-loss weight
    team_reward: bool = False  # sum per-agent rewards into one team reward: one game, not N selfish ones
    adv_norm: bool = False  # scale advantages to unit std per update (large rewards: Traffic Junction's -10s)
    gae_lambda: float = 0.95  # mappo: GAE's lambda (1: the discounted returns A2C uses)
    ppo_epochs: int = 4  # mappo: passes over each rollout
    minibatches: int = 1  # mappo: each pass splits the env instances (whole rollouts each) into this many (MAPPO: 1)
    clip_coef: float = 0.2  # mappo: the probability ratio's clip in the surrogate
    target_kl: float = 0.0  # mappo: end an update's passes once the approximate KL exceeds this; 0: never
    value_norm: bool = True  # mappo: the critic learns returns scaled by their running mean and std (MAPPO's ValueNorm)
    max_grad_norm: float = 1.0  # mappo: gradient-norm clip (a2c clips at 1.0 too)
    critic_warmup: int = 0  # mappo: the first updates train the critic alone, so a continued run's first advantages are not a new critic's noise
    anneal_lr: bool = False  # mappo: the policy's learning rate falls linearly to 0 over the updates (CleanRL's PPO)
    prior_radius: int = 16  # the entropy/expected prior covers -radius..radius, escape beyond
    prior_lr: float = 1e-2  # Adam learning rate of the entropy/expected prior's logits
    init: str = ""  # checkpoint (same env and shape) whose policies, steps, prior, critic and value norm (where they fit) this run goes on from
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
        if self.algo not in ALGOS:
            raise ValueError(f"unknown algo {self.algo!r}; choose one of {', '.join(ALGOS)}")
        for name in ("delta", "lr", "batch", "rollout", "updates", "msg_dim", "hidden", "ppo_epochs", "minibatches",
                     "clip_coef", "max_grad_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.core not in CORES or self.aggregate not in AGGREGATES:
            raise ValueError(f"core must be one of {', '.join(CORES)}; aggregate one of {', '.join(AGGREGATES)}")
        if self.core == "transformer" and (self.aggregate != "mean" or self.hidden % TRANSFORMER_HEADS):
            raise ValueError(f"the transformer core attends over heard messages itself (leave --aggregate at mean) "
                             f"and needs --hidden divisible by {TRANSFORMER_HEADS}")
        if self.minibatches > self.batch:
            raise ValueError(f"minibatches ({self.minibatches}) cannot exceed batch ({self.batch})")
        if not 0 <= self.gae_lambda <= 1 or self.target_kl < 0:
            raise ValueError("gae_lambda must be in [0, 1] and target_kl >= 0")
        if self.critic_warmup and self.algo != "mappo":
            raise ValueError("critic_warmup is MAPPO's (--algo mappo)")
        if not 0 <= self.critic_warmup < self.updates:
            raise ValueError(f"critic_warmup ({self.critic_warmup}) must be in [0, updates ({self.updates}))")
        if self.lam < 0 or not 0 < self.gamma <= 1 or not 0 <= self.lam_warmup <= 1:
            raise ValueError("lam must be >= 0, gamma in (0, 1] and lam_warmup in [0, 1]")
        if self.env in ENVS:
            make(self.env, 1, 0, self.agents)  # an env with a fixed slot count refuses another
