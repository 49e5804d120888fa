"""Predator-Prey (IC3Net, `mixed` mode), vectorized over B instances in torch; REFERENCE.md section 3.

N predators and one stationary prey on a dim x dim grid, all on distinct random cells.
Actions: 0 up, 1 right, 2 down, 3 left, 4 stay; a move off the grid stays put. A
predator that reaches the prey stays on it. Reward per predator per step: -0.05, or 0
while on the prey. The episode ends when every predator is on the prey (success) or
after max_steps (failure).

Observation per predator, IC3Net's vocabulary of BASE + 4 channels (BASE = dim^2): the
(2v+1)^2 vision square, each cell one-hot over its location id (0..BASE-1) or outside
(BASE + 1), plus the prey count (BASE + 2) and the predator count (BASE + 3). Channel
BASE is never set, as in IC3Net. With vision 0 a predator sees only its own cell: where
it is, and whether the prey is there.
"""

from __future__ import annotations

import numpy as np
import torch

from .grid import VisionGrid
from .levels import PP_LEVELS as LEVELS

STEP_PENALTY = -0.05
MOVES = [(-1, 0), (0, 1), (1, 0), (0, -1), (0, 0)]  # up right down left stay


class PredatorPreyEnv:
    n_actions = 5
    reward_per_agent = True  # step's reward is (B, N), as IC3Net trains

    def __init__(self, batch: int, seed: int, agents: int | None = None, level: str = "pp-easy", device="cpu"):
        lv = LEVELS[level]
        if agents not in (None, lv.predators):
            raise ValueError(f"{level} has {lv.predators} predators; run it with {lv.predators} agents, not {agents}")
        self.level, self.batch, self.n_agents = lv, batch, lv.predators
        self.max_steps = lv.max_steps
        self.device = torch.device(device)
        self.rng = torch.Generator(self.device).manual_seed(seed)
        base = lv.dim * lv.dim
        self.prey_channel, self.predator_channel = base + 2, base + 3
        cells = np.arange(base).reshape(lv.dim, lv.dim)
        self.vision = VisionGrid(cells, vocab=base + 4, radius=lv.vision, outside=base + 1, device=self.device)
        self.obs_dim = self.vision.obs_dim
        self.moves = torch.tensor(MOVES, device=self.device)
        self.pred = torch.zeros((batch, self.n_agents, 2), dtype=torch.int64, device=self.device)
        self.prey = torch.zeros((batch, 2), dtype=torch.int64, device=self.device)
        self.reached = torch.zeros((batch, self.n_agents), dtype=torch.bool, device=self.device)
        self.t = torch.zeros(batch, dtype=torch.int64, device=self.device)

    def _reset(self, mask: torch.Tensor) -> None:
        n = int(mask.sum())
        if not n:
            return
        dim = self.level.dim
        # distinct cells: the first N + 1 of a random permutation per instance
        noise = torch.rand((n, dim * dim), generator=self.rng, device=self.device)
        cells = noise.argsort(dim=1)[:, : self.n_agents + 1]
        where = torch.stack([cells // dim, cells % dim], dim=-1)
        self.pred[mask] = where[:, :-1]
        self.prey[mask] = where[:, -1]
        self.reached[mask] = False
        self.t[mask] = 0

    def reset(self) -> torch.Tensor:
        self._reset(torch.ones(self.batch, dtype=torch.bool, device=self.device))
        return self._obs()

    def step(self, actions):
        move = self.moves[torch.as_tensor(actions, device=self.device)] * ~self.reached[..., None]
        self.pred = (self.pred + move).clamp(0, self.level.dim - 1)
        on_prey = (self.pred == self.prey[:, None, :]).all(dim=-1)
        self.reached |= on_prey
        reward = torch.where(on_prey, 0.0, STEP_PENALTY)
        self.t += 1
        success = self.reached.all(dim=1)
        done = success | (self.t >= self.max_steps)
        self._reset(done)
        return self._obs(), reward, done, success

    def _obs(self) -> torch.Tensor:
        return self.vision.view(self.pred, [(self.prey_channel, self.prey[:, None, :]),
                                            (self.predator_channel, self.pred)])
