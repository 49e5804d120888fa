"""Environments: one batched interface for the trainer and the networked world.

An env hosts B instances and N agent slots, as torch tensors on its device (CPU or CUDA):
    reset() -> obs (B, N, obs_dim) float32
    step(actions (B, N) int64, a tensor or anything torch.as_tensor takes)
        -> obs, reward (B,), done (B,) bool, success (B,) bool, new tensors each step
           (the world holds a step's until it writes that step's metrics)
(reward is (B, N) where the env sets `reward_per_agent`: each agent its own.)
Finished instances reset themselves; `done` and `success` describe the episode that
just ended there. `goal` is the DDCL paper's toy, `tj-*` IC3Net's Traffic Junction,
`pp-*` its Predator-Prey;
`pz:<module>` wraps any PettingZoo ParallelEnv (pettingzoo_adapter).
"""

from __future__ import annotations

from .levels import ENVS, PP_LEVELS, TJ_LEVELS, default_agents

__all__ = ["ENVS", "default_agents", "make"]


def make(name: str, batch: int, seed: int, agents: int = 2, device="cpu"):
    """An env by name; its module (and torch) is imported only here."""
    kw = dict(batch=batch, seed=seed, agents=agents, device=device)
    if name.startswith("pz:"):
        from .pettingzoo_adapter import PettingZooEnv

        return PettingZooEnv(name[3:], **kw)
    if name == "goal":
        from .goal import GoalEnv

        return GoalEnv(**kw)
    if name in TJ_LEVELS:
        from .traffic_junction import TrafficJunctionEnv

        return TrafficJunctionEnv(level=name, **kw)
    if name in PP_LEVELS:
        from .predator_prey import PredatorPreyEnv

        return PredatorPreyEnv(level=name, **kw)
    raise ValueError(f"unknown env {name!r}; choose one of {', '.join(ENVS)} or pz:<module>")
