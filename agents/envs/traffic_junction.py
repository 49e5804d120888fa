"""Traffic Junction (IC3Net), vectorized over B instances in torch; REFERENCE.md section 3.

N agent slots are cars. Each step every arrival point adds a car with probability
`add_rate` while a slot is free: a random free slot, a random route from that point, at
the route's first cell. Actions: 0 gas (one cell along the route; past its last cell
the car leaves and its slot frees), 1 brake. Reward per live car per step: -0.01 x
steps since it entered, -10 for each car sharing its cell (a collision; collisions do
not remove cars). An episode runs max_steps; success: no collision in it.

Observation per car, IC3Net's `bool` vocabulary: last action, route id / (npath - 1),
and the (2v+1)^2 vision square, each cell one-hot over road-cell ids (0..BASE-1),
outside (BASE), and a car count (channel BASE + 2). A free slot observes all zeros.
IC3Net's quirks are kept, since the published numbers come from them: BASE is computed
from dim before easy's grid grows to dim + 1, so the last road ids share channels with
outside; a slot keeps its last action when a new car takes it; free slots count as cars
at cell (0, 0) in the count channel.
"""

from __future__ import annotations

import numpy as np
import torch

from .grid import VisionGrid
from .levels import TJ_LEVELS as LEVELS

GAS, BRAKE = 0, 1
STEP_PENALTY = -0.01
CRASH_PENALTY = -10.0


BASE_PER_DIM = {"easy": 2, "medium": 4, "hard": 8}  # IC3Net's vocabulary size, BASE = k * dim
S, N, E, W = (1, 0), (-1, 0), (0, 1), (0, -1)  # headings (d row, d column)
STRAIGHT, RIGHT, LEFT = range(3)  # IC3Net's turn order, which numbers the routes


def road_blocks(kind: str, n: int) -> list[tuple[slice, slice]]:
    """Road rows first, then road columns: the order IC3Net numbers road cells in."""
    m, t = n // 2, n // 3
    rows = {"easy": [slice(m, m + 1)], "medium": [slice(m - 1, m + 1)],
            "hard": [slice(t - 2, t), slice(2 * t, 2 * t + 2)]}[kind]
    return [(r, slice(None)) for r in rows] + [(slice(None), r) for r in rows]


def arrivals(kind: str, n: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(cell, heading) of each arrival point, in IC3Net's order (traffic keeps right)."""
    m, t = n // 2, n // 3
    return {
        "easy": [((0, m), S), ((m, 0), E)],
        "medium": [((0, m - 1), S), ((n - 1, m), N), ((m, 0), E), ((m - 1, n - 1), W)],
        "hard": [((0, t - 2), S), ((0, 2 * t), S), ((t - 1, 0), E), ((2 * t + 1, 0), E),
                 ((n - 1, t - 1), N), ((n - 1, 2 * t + 1), N), ((t - 2, n - 1), W), ((2 * t, n - 1), W)],
    }[kind]


def trace(start, heading, turns, junction: np.ndarray) -> tuple[np.ndarray, int]:
    """Drive from start to the grid's edge, taking turns[i] at the i-th junction met (then
    straight): a right turn on the junction's first cell, a left one cell further, so the
    car ends in the lane of its new direction. Returns (cells, junctions met)."""
    n = junction.shape[0]
    (y, x), (dy, dx) = start, heading
    path, met, left_in = [(y, x)], 0, -1
    while True:
        if left_in == 0:
            dy, dx = -dx, dy
        left_in -= 1
        y, x = y + dy, x + dx
        if not (0 <= y < n and 0 <= x < n):
            return np.array(path), met
        entering = junction[y, x] and not junction[path[-1]]
        path.append((y, x))
        if entering:
            turn = turns[met] if met < len(turns) else STRAIGHT
            met += 1
            if turn == RIGHT:
                dy, dx = dx, -dy
            elif turn == LEFT:
                left_in = 1


def routes_of(kind: str, n: int, junction: np.ndarray) -> list[list[np.ndarray]]:
    """Per arrival point, its paths: every first turn, then (hard) every second turn where
    the path meets a second junction; easy has one straight road per arrival."""
    out = []
    for start, heading in arrivals(kind, n):
        if kind == "easy":
            out.append([trace(start, heading, (), junction)[0]])
            continue
        paths = []
        for first in (STRAIGHT, RIGHT, LEFT):
            for second in (STRAIGHT, RIGHT, LEFT) if kind == "hard" else (STRAIGHT,):
                path, met = trace(start, heading, (first, second), junction)
                paths.append(path)
                if met < 2:  # the second turn never came: one path for this first turn
                    break
        out.append(paths)
    return out


class TrafficJunctionEnv:
    n_actions = 2
    reward_per_agent = True  # step's reward is (B, N): each car its own, as IC3Net trains

    def __init__(self, batch: int, seed: int, agents: int | None = None, level: str = "tj-easy", device="cpu"):
        lv = LEVELS[level]
        if agents not in (None, lv.slots):
            raise ValueError(f"{level} has {lv.slots} car slots; run it with {lv.slots} agents, not {agents}")
        self.level, self.batch, self.n_agents = lv, batch, lv.slots
        self.max_steps = lv.max_steps
        self.device = dev = torch.device(device)
        self.rng = torch.Generator(dev).manual_seed(seed)
        size = lv.dim + 1 if lv.kind == "easy" else lv.dim  # easy's grid is one larger than --dim
        self.size = size
        grid = np.full((size, size), -1)
        blocks = road_blocks(lv.kind, size)
        on_road = np.zeros((2, size, size), dtype=bool)  # on a road row, on a road column
        start = 0
        for i, block in enumerate(blocks):
            cells = grid[block].size
            grid[block] = np.arange(start, start + cells).reshape(grid[block].shape)
            start += cells
            on_road[int(i >= len(blocks) // 2)][block] = True
        self.routes = routes_of(lv.kind, size, on_road[0] & on_road[1])
        paths = [p for r in self.routes for p in r]  # route id = index here
        self.npath = len(paths)
        path_len = np.array([len(p) for p in paths])
        padded = np.zeros((self.npath, path_len.max(), 2), dtype=np.int64)
        for i, p in enumerate(paths):
            padded[i, : len(p)] = p
        self.paths, self.path_len = torch.from_numpy(padded).to(dev), torch.from_numpy(path_len).to(dev)
        # per arrival point: the id of its first path (its paths are numbered on from there)
        self.route_first = [sum(len(r) for r in self.routes[:i]) for i in range(len(self.routes))]
        base = BASE_PER_DIM[lv.kind] * lv.dim
        self.car_channel = base + 2
        self.vision = VisionGrid(np.where(grid >= 0, grid, base), vocab=base + 3, radius=lv.vision, outside=base,
                                 device=dev)
        self.obs_dim = 2 + self.vision.obs_dim
        shape = (batch, self.n_agents)
        self.alive = torch.zeros(shape, dtype=torch.bool, device=dev)
        self.path = torch.zeros(shape, dtype=torch.int64, device=dev)
        self.loc = torch.zeros(shape, dtype=torch.int64, device=dev)  # index along the path
        self.wait = torch.zeros(shape, dtype=torch.int64, device=dev)
        self.last_act = torch.zeros(shape, dtype=torch.int64, device=dev)
        self.t = torch.zeros(batch, dtype=torch.int64, device=dev)
        self.failed = torch.zeros(batch, dtype=torch.bool, device=dev)

    def _cells(self) -> torch.Tensor:
        """(B, N, 2) each car's cell; free slots at (0, 0) as in IC3Net."""
        cells = self.paths[self.path, torch.minimum(self.loc, self.path_len[self.path] - 1)]
        return torch.where(self.alive[..., None], cells, 0)

    def _reset(self, mask: torch.Tensor) -> None:
        for a in (self.alive, self.path, self.loc, self.wait, self.last_act):
            a[mask] = 0
        self.t[mask] = 0
        self.failed[mask] = False

    def reset(self) -> torch.Tensor:
        """An empty junction: cars arrive at the end of each step, as in IC3Net."""
        self._reset(torch.ones(self.batch, dtype=torch.bool, device=self.device))
        return self._obs()

    def _add_cars(self) -> None:
        def uniform(*shape):
            return torch.rand(shape, generator=self.rng, device=self.device)

        for first, paths in zip(self.route_first, self.routes):
            free = ~self.alive
            add = free.any(dim=1) & (uniform(self.batch) <= self.level.add_rate)
            slot = torch.where(free, uniform(*free.shape), -1.0).argmax(dim=1)  # a random free slot
            choice = first + (uniform(self.batch) * len(paths)).long().clamp(max=len(paths) - 1)
            sel = add.nonzero()[:, 0], slot[add]
            self.alive[sel] = True
            self.path[sel] = choice[add]
            self.loc[sel] = 0
            self.wait[sel] = 0

    def step(self, actions):
        alive = self.alive.clone()
        self.wait += alive
        brake = alive & (torch.as_tensor(actions, device=self.device) == BRAKE)
        gas = alive & ~brake
        self.last_act[brake] = BRAKE
        self.loc += gas
        leaving = gas & (self.loc >= self.path_len[self.path])
        self.alive &= ~leaving
        self.wait[leaving] = 0
        self.last_act[gas & ~leaving] = GAS
        self._add_cars()
        cells = self._cells()
        flat = cells[..., 0] * self.size + cells[..., 1]
        same = (flat[:, :, None] == flat[:, None, :]) & self.alive[:, None, :]
        crashed = self.alive & (same.sum(dim=2) > 1)
        # in float64, then float32: -0.01 * wait rounds as IC3Net's numpy does
        reward = torch.where(self.alive, STEP_PENALTY * self.wait.double() + CRASH_PENALTY * crashed, 0.0).float()
        self.failed |= crashed.any(dim=1)
        self.t += 1
        done = self.t >= self.max_steps
        success = done & ~self.failed
        if done.any():
            self._reset(done)
        return self._obs(), reward, done, success

    def _obs(self) -> torch.Tensor:
        cells = self._cells()
        view = self.vision.view(cells, [(self.car_channel, cells)])  # free slots count too, at (0, 0)
        obs = torch.cat([self.last_act[..., None].float() / (self.n_actions - 1),
                         self.path[..., None].float() / max(self.npath - 1, 1), view], dim=2)
        return torch.where(self.alive[..., None], obs, 0.0)
