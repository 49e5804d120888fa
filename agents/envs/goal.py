"""The DDCL paper's goal toy (REFERENCE.md section 2).

8x8 grid. Agent 0, the speaker, is stationary and sees the goal; agent 1, the listener,
sees its own cell, hears the message and moves (stay/N/S/E/W). +1 on reaching the goal,
-0.01 per other step; the episode ends on the goal or after 50 steps. Goals are drawn
with weights 200/100/50/25/12/1 (entropy 1.81 bits); the listener starts off the goal.
Observations are one-hot x and one-hot y (16 values) for both agents.
"""

from __future__ import annotations

import numpy as np

SIZE = 8
MAX_STEPS = 50
GOALS = np.array([(0, 0), (7, 7), (3, 4), (4, 3), (1, 6), (6, 1)], dtype=np.int64)
WEIGHTS = np.array([200, 100, 50, 25, 12, 1], dtype=np.float64)
GOAL_P = WEIGHTS / WEIGHTS.sum()
MOVES = np.array([(0, 0), (0, 1), (0, -1), (1, 0), (-1, 0)], dtype=np.int64)  # stay N S E W


class GoalEnv:
    n_agents = 2
    obs_dim = 2 * SIZE
    n_actions = 5
    max_steps = MAX_STEPS

    def __init__(self, batch: int, seed: int):
        self.batch = batch
        self.rng = np.random.default_rng(seed)
        self.goal_idx = np.zeros(batch, dtype=np.int64)
        self.pos = np.zeros((batch, 2), dtype=np.int64)
        self.t = np.zeros(batch, dtype=np.int64)

    def _reset(self, mask: np.ndarray) -> None:
        n = int(mask.sum())
        if not n:
            return
        g = self.rng.choice(len(GOALS), size=n, p=GOAL_P)
        cells = self.rng.integers(0, SIZE * SIZE - 1, size=n)  # any cell but the goal
        goal_cell = GOALS[g, 0] * SIZE + GOALS[g, 1]
        cells = cells + (cells >= goal_cell)
        self.goal_idx[mask] = g
        self.pos[mask] = np.stack([cells // SIZE, cells % SIZE], axis=1)
        self.t[mask] = 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros((self.batch, 2, self.obs_dim), dtype=np.float32)
        rows = np.arange(self.batch)
        goal = GOALS[self.goal_idx]
        obs[rows, 0, goal[:, 0]] = 1
        obs[rows, 0, SIZE + goal[:, 1]] = 1
        obs[rows, 1, self.pos[:, 0]] = 1
        obs[rows, 1, SIZE + self.pos[:, 1]] = 1
        return obs

    def reset(self) -> np.ndarray:
        self._reset(np.ones(self.batch, dtype=bool))
        return self._obs()

    def step(self, actions: np.ndarray):
        move = MOVES[np.asarray(actions)[:, 1]]
        self.pos = np.clip(self.pos + move, 0, SIZE - 1)
        self.t += 1
        success = np.all(self.pos == GOALS[self.goal_idx], axis=1)
        done = success | (self.t >= MAX_STEPS)
        reward = np.where(success, 1.0, -0.01).astype(np.float32)
        self._reset(done)
        return self._obs(), reward, done, success
