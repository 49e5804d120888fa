"""Any PettingZoo `ParallelEnv` behind the batched env interface: B independent copies.

Env name `pz:<module>` (e.g. `pz:mpe2.simple_speaker_listener_v4`); the module's
`parallel_env(...)` builds each copy. Observations are flattened and zero-padded to the
largest agent's size; an action beyond an agent's Discrete space wraps modulo its size;
the team reward is the mean over agents; an instance resets when any agent is done.
PettingZoo has no notion of success, so `success` is always False. PettingZoo steps each
copy in Python on the CPU; the batch goes to the device as tensors.
"""

from __future__ import annotations

import importlib

import numpy as np
import torch


class PettingZooEnv:
    def __init__(self, module: str, batch: int, seed: int, agents: int | None = None, device="cpu", **env_kwargs):
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            raise ValueError(f"cannot import PettingZoo env module {module!r}: {e}") from None
        env_kwargs.setdefault("continuous_actions", False)
        self.envs = [mod.parallel_env(**env_kwargs) for _ in range(batch)]
        self.names = list(self.envs[0].possible_agents)
        if agents is not None and agents != len(self.names):
            raise ValueError(f"{module} has {len(self.names)} agents, not {agents}")
        spaces = [self.envs[0].action_space(a) for a in self.names]
        if not all(hasattr(s, "n") for s in spaces):
            raise ValueError(f"{module}: only Discrete action spaces are supported")
        self.sizes = np.array([s.n for s in spaces])
        self.n_agents = len(self.names)
        self.obs_dim = max(int(np.prod(self.envs[0].observation_space(a).shape)) for a in self.names)
        self.n_actions = int(self.sizes.max())
        self.max_steps = env_kwargs.get("max_cycles", 25)
        self.batch = batch
        self.device = torch.device(device)
        self.seed = seed
        self._episode = 0

    def _pack(self, obs_dicts) -> torch.Tensor:
        out = np.zeros((self.batch, self.n_agents, self.obs_dim), dtype=np.float32)
        for b, obs in enumerate(obs_dicts):
            for k, name in enumerate(self.names):
                o = np.asarray(obs[name], dtype=np.float32).reshape(-1)
                out[b, k, : o.size] = o
        return torch.from_numpy(out).to(self.device)

    def _reset_one(self, b: int):
        self._episode += 1
        obs, _ = self.envs[b].reset(seed=self.seed * 1_000_003 + self._episode)
        return obs

    def reset(self) -> torch.Tensor:
        self.last = [self._reset_one(b) for b in range(self.batch)]
        return self._pack(self.last)

    def step(self, actions):
        actions = torch.as_tensor(actions).cpu().numpy() % self.sizes
        reward = np.zeros(self.batch, dtype=np.float32)
        done = np.zeros(self.batch, dtype=bool)
        for b, env in enumerate(self.envs):
            obs, rew, term, trunc, _ = env.step({n: int(actions[b, k]) for k, n in enumerate(self.names)})
            reward[b] = np.mean([rew[n] for n in self.names])
            if any(term.values()) or any(trunc.values()) or not env.agents:
                done[b] = True
                obs = self._reset_one(b)
            self.last[b] = obs
        done_t = torch.from_numpy(done).to(self.device)
        return self._pack(self.last), torch.from_numpy(reward).to(self.device), done_t, torch.zeros_like(done_t)
