"""The DDCL paper's goal toy (REFERENCE.md section 2), with one or more listeners.

8x8 grid. Agent 0, the speaker, is stationary and sees the goal; every other agent is a
listener that sees its own cell, hears the messages and moves (stay/N/S/E/W). +1 when
the listeners are all on the goal, -0.01 per other step; the episode ends then or after
50 steps. Goals are drawn with weights 200/100/50/25/12/1 (entropy 1.81 bits);
listeners start off the goal. With 2 agents this is exactly the paper's toy; more
agents exist so the networked benchmark can scale N. Observations: one-hot x, one-hot y.
"""

from __future__ import annotations

import numpy as np
import torch

SIZE = 8
MAX_STEPS = 50
GOALS = np.array([(0, 0), (7, 7), (3, 4), (4, 3), (1, 6), (6, 1)], dtype=np.int64)
WEIGHTS = np.array([200, 100, 50, 25, 12, 1], dtype=np.float64)
GOAL_P = WEIGHTS / WEIGHTS.sum()
MOVES = [(0, 0), (0, 1), (0, -1), (1, 0), (-1, 0)]  # stay N S E W


def cell(x, y):
    """A grid position as one index, x * SIZE + y: what the env keeps."""
    return x * SIZE + y


def _tables() -> tuple[np.ndarray, np.ndarray]:
    """Per cell: the cell each move leads to (clamped at the border), and the observation
    of standing there (one-hot x, one-hot y). A step is then two table lookups: at B = 1
    each torch op costs more than its arithmetic, and the world steps on the lockstep's
    critical path."""
    x, y = np.divmod(np.arange(SIZE * SIZE), SIZE)
    moves = np.stack([cell(np.clip(x + dx, 0, SIZE - 1), np.clip(y + dy, 0, SIZE - 1)) for dx, dy in MOVES], axis=1)
    seen = np.zeros((SIZE * SIZE, 2 * SIZE), dtype=np.float32)
    seen[np.arange(SIZE * SIZE), x] = seen[np.arange(SIZE * SIZE), SIZE + y] = 1.0
    return moves, seen


NEXT_CELL, ONE_HOT = _tables()


class GoalEnv:
    obs_dim = 2 * SIZE
    n_actions = 5
    max_steps = MAX_STEPS

    def __init__(self, batch: int, seed: int, agents: int = 2, device="cpu"):
        if agents < 2:
            raise ValueError("the goal env needs a speaker and at least one listener (agents >= 2)")
        self.batch = batch
        self.n_agents = agents
        self.device = torch.device(device)
        self.rng = torch.Generator(self.device).manual_seed(seed)
        self.goal_cells = torch.as_tensor(cell(GOALS[:, 0], GOALS[:, 1]), device=self.device)
        self.goal_p = torch.as_tensor(GOAL_P, device=self.device)
        self.next_cell = torch.as_tensor(NEXT_CELL, device=self.device)
        self.one_hot = torch.as_tensor(ONE_HOT, device=self.device)
        self.goal_idx = torch.zeros(batch, dtype=torch.int64, device=self.device)
        self.goal = torch.zeros((batch, 1), dtype=torch.int64, device=self.device)  # cells
        self.pos = torch.zeros((batch, agents - 1), dtype=torch.int64, device=self.device)  # the listeners' cells
        self.t = torch.zeros(batch, dtype=torch.int64, device=self.device)

    def _reset(self, mask: torch.Tensor) -> None:
        n = int(mask.sum())
        if not n:
            return
        g = torch.multinomial(self.goal_p, n, replacement=True, generator=self.rng)
        # any cell but the goal
        cells = torch.randint(0, SIZE * SIZE - 1, (n, self.n_agents - 1), generator=self.rng, device=self.device)
        goal = self.goal_cells[g][:, None]
        self.goal_idx[mask] = g
        self.goal[mask] = goal
        self.pos[mask] = cells + (cells >= goal)
        self.t[mask] = 0

    def _obs(self) -> torch.Tensor:
        return self.one_hot[torch.cat([self.goal, self.pos], dim=1)]  # (B, N, obs_dim): what each agent sees

    def reset(self) -> torch.Tensor:
        self._reset(torch.ones(self.batch, dtype=torch.bool, device=self.device))
        return self._obs()

    def step(self, actions):
        self.pos = self.next_cell[self.pos, torch.as_tensor(actions, device=self.device)[:, 1:]]
        self.t += 1
        success = (self.pos == self.goal).all(dim=1)
        done = success | (self.t >= MAX_STEPS)
        reward = torch.where(success, 1.0, -0.01)
        self._reset(done)
        return self._obs(), reward, done, success
