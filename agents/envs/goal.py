"""The DDCL paper's goal toy (REFERENCE.md section 2), with one or more listeners.

8x8 grid. Agent 0, the speaker, is stationary and sees the goal; every other agent is a
listener that sees its own cell, hears the messages and moves (stay/N/S/E/W). +1 when
the listeners are all on the goal, -0.01 per other step; the episode ends then or after
50 steps. Goals are drawn with weights 200/100/50/25/12/1 (entropy 1.81 bits);
listeners start off the goal. With 2 agents this is exactly the paper's toy; more
agents exist so the networked benchmark can scale N. Observations: one-hot x, one-hot y.
"""

from __future__ import annotations

from types import SimpleNamespace

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
    of standing there (one-hot x, one-hot y). A step is then two table lookups."""
    x, y = np.divmod(np.arange(SIZE * SIZE), SIZE)
    moves = np.stack([cell(np.clip(x + dx, 0, SIZE - 1), np.clip(y + dy, 0, SIZE - 1)) for dx, dy in MOVES], axis=1)
    seen = np.zeros((SIZE * SIZE, 2 * SIZE), dtype=np.float32)
    seen[np.arange(SIZE * SIZE), x] = seen[np.arange(SIZE * SIZE), SIZE + y] = 1.0
    return moves, seen


NEXT_CELL, ONE_HOT = _tables()
REWARDS = np.array([-0.01, 1.0], dtype=np.float32)  # indexed by success


class GoalEnv:
    """The state is torch tensors on the env's device. `step` and `_reset` work on it
    through `_a`: on the CPU numpy views of the same memory, where the world steps one
    instance per lockstep step on its critical path and a torch op costs several numpy
    ones (41 against 17 us a step at B = 1); the tensors themselves elsewhere. Every op
    there is spelled the same in both libraries, so one body serves both (and the tests
    run the torch one on the CPU with numpy_views=False)."""

    obs_dim = 2 * SIZE
    n_actions = 5
    max_steps = MAX_STEPS

    def __init__(self, batch: int, seed: int, agents: int = 2, device="cpu", numpy_views: bool | None = None,
                 auto_reset: bool = True):
        if agents < 2:
            raise ValueError("the goal env needs a speaker and at least one listener (agents >= 2)")
        self.batch = batch
        self.n_agents = agents
        # False: a finished instance keeps its last state until reset() (a PettingZoo env's
        # final observation); the batched runs restart instances in place
        self.auto_reset = auto_reset
        self.device = torch.device(device)
        self.rng = torch.Generator(self.device).manual_seed(seed)
        self.goal_p = torch.as_tensor(GOAL_P, device=self.device)
        self.goal_idx = torch.zeros(batch, dtype=torch.int64, device=self.device)
        self.cells = torch.zeros((batch, agents), dtype=torch.int64, device=self.device)  # the goal's, each listener's
        self.t = torch.zeros(batch, dtype=torch.int64, device=self.device)
        if numpy_views is None:
            numpy_views = self.device.type == "cpu"
        elif numpy_views and self.device.type != "cpu":
            raise ValueError(f"numpy views need the CPU, not {self.device}")
        if numpy_views:
            self._array, self._tensor = torch.Tensor.numpy, torch.from_numpy
        else:
            self._array = self._tensor = lambda x: x

        def table(values: np.ndarray):
            return self._array(torch.as_tensor(values, device=self.device))

        self._a = SimpleNamespace(goal_cells=table(cell(GOALS[:, 0], GOALS[:, 1])), next_cell=table(NEXT_CELL),
                                  one_hot=table(ONE_HOT), rewards=table(REWARDS), goal_idx=self._array(self.goal_idx),
                                  cells=self._array(self.cells), t=self._array(self.t))

    def _reset(self, mask) -> None:
        n = int(mask.sum())
        if not n:
            return
        a = self._a
        g = self._array(torch.multinomial(self.goal_p, n, replacement=True, generator=self.rng))
        # any cell but the goal
        cells = self._array(torch.randint(0, SIZE * SIZE - 1, (n, self.n_agents - 1), generator=self.rng,
                                          device=self.device))
        goal = a.goal_cells[g][:, None]
        a.goal_idx[mask] = g
        a.cells[mask, :1] = goal
        a.cells[mask, 1:] = cells + (cells >= goal)
        a.t[mask] = 0

    def reset(self) -> torch.Tensor:
        self._reset(self._array(torch.ones(self.batch, dtype=torch.bool, device=self.device)))
        return self._tensor(self._a.one_hot[self._a.cells])

    def step(self, actions):
        a = self._a
        moves = self._array(torch.as_tensor(actions, device=self.device))
        a.cells[:, 1:] = a.next_cell[a.cells[:, 1:], moves[:, 1:]]
        a.t += 1
        success = (a.cells[:, 1:] == a.cells[:, :1]).all(1)
        done = success | (a.t >= MAX_STEPS)
        reward = a.rewards[success * 1]
        if self.auto_reset:
            self._reset(done)
        return tuple(map(self._tensor, (a.one_hot[a.cells], reward, done, success)))
