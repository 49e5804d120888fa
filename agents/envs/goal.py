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

SIZE = 8
MAX_STEPS = 50
GOALS = np.array([(0, 0), (7, 7), (3, 4), (4, 3), (1, 6), (6, 1)], dtype=np.int64)
WEIGHTS = np.array([200, 100, 50, 25, 12, 1], dtype=np.float64)
GOAL_P = WEIGHTS / WEIGHTS.sum()
MOVES = np.array([(0, 0), (0, 1), (0, -1), (1, 0), (-1, 0)], dtype=np.int64)  # stay N S E W


class GoalEnv:
    obs_dim = 2 * SIZE
    n_actions = 5
    max_steps = MAX_STEPS

    def __init__(self, batch: int, seed: int, agents: int = 2):
        if agents < 2:
            raise ValueError("the goal env needs a speaker and at least one listener (agents >= 2)")
        self.batch = batch
        self.n_agents = agents
        self.rng = np.random.default_rng(seed)
        self.goal_idx = np.zeros(batch, dtype=np.int64)
        self.pos = np.zeros((batch, agents - 1, 2), dtype=np.int64)
        self.t = np.zeros(batch, dtype=np.int64)

    def _reset(self, mask: np.ndarray) -> None:
        n = int(mask.sum())
        if not n:
            return
        g = self.rng.choice(len(GOALS), size=n, p=GOAL_P)
        cells = self.rng.integers(0, SIZE * SIZE - 1, size=(n, self.n_agents - 1))  # any cell but the goal
        goal_cell = (GOALS[g, 0] * SIZE + GOALS[g, 1])[:, None]
        cells = cells + (cells >= goal_cell)
        self.goal_idx[mask] = g
        self.pos[mask] = np.stack([cells // SIZE, cells % SIZE], axis=-1)
        self.t[mask] = 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros((self.batch, self.n_agents, self.obs_dim), dtype=np.float32)
        b = np.arange(self.batch)[:, None]
        goal = GOALS[self.goal_idx][:, None, :]
        where = np.concatenate([goal, self.pos], axis=1)  # (B, N, 2): what each agent sees
        a = np.arange(self.n_agents)[None, :]
        obs[b, a, where[..., 0]] = 1
        obs[b, a, SIZE + where[..., 1]] = 1
        return obs

    def reset(self) -> np.ndarray:
        self._reset(np.ones(self.batch, dtype=bool))
        return self._obs()

    def step(self, actions: np.ndarray):
        move = MOVES[np.asarray(actions)[:, 1:]]
        self.pos = np.clip(self.pos + move, 0, SIZE - 1)
        self.t += 1
        success = np.all(self.pos == GOALS[self.goal_idx][:, None, :], axis=(1, 2))
        done = success | (self.t >= MAX_STEPS)
        reward = np.where(success, 1.0, -0.01).astype(np.float32)
        self._reset(done)
        return self._obs(), reward, done, success
