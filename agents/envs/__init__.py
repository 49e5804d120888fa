"""Environments: one batched interface for the trainer and the networked world.

An env hosts B instances and N agent slots, as torch tensors on its device (CPU or CUDA):
    reset() -> obs (B, N, obs_dim) float32
    step(actions (B, N) int64, a tensor or anything torch.as_tensor takes)
        -> obs, reward (B,), done (B,) bool, success (B,) bool
(reward is (B, N) where the env sets `reward_per_agent`: each agent its own.)
Finished instances reset themselves; `done` and `success` describe the episode that
just ended there. `goal` is the DDCL paper's toy, `tj-*` IC3Net's Traffic Junction,
`pp-*` its Predator-Prey;
`pz:<module>` wraps any PettingZoo ParallelEnv (pettingzoo_adapter).
"""

from __future__ import annotations

from functools import partial

from . import predator_prey, traffic_junction
from .goal import GoalEnv

ENVS = {
    "goal": GoalEnv,
    **{name: partial(traffic_junction.TrafficJunctionEnv, level=name) for name in traffic_junction.LEVELS},
    **{name: partial(predator_prey.PredatorPreyEnv, level=name) for name in predator_prey.LEVELS},
}


def default_agents(name: str) -> int:
    """Agent slots when none are given: Traffic Junction's cars and Predator-Prey's
    predators are fixed by the level; everything else starts with 2."""
    if name in traffic_junction.LEVELS:
        return traffic_junction.LEVELS[name].slots
    if name in predator_prey.LEVELS:
        return predator_prey.LEVELS[name].predators
    return 2


def make(name: str, batch: int, seed: int, agents: int = 2, device="cpu"):
    if name.startswith("pz:"):
        from .pettingzoo_adapter import PettingZooEnv

        return PettingZooEnv(name[3:], batch, seed, agents, device=device)
    try:
        cls = ENVS[name]
    except KeyError:
        raise ValueError(f"unknown env {name!r}; choose one of {', '.join(ENVS)} or pz:<module>") from None
    return cls(batch=batch, seed=seed, agents=agents, device=device)
