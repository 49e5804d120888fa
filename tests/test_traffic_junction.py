"""Traffic Junction against IC3Net's definition (REFERENCE.md section 3), scenario by scenario."""

import dataclasses

import numpy as np
import pytest
import torch

from agents.envs import make
from agents.envs.traffic_junction import CRASH_PENALTY, STEP_PENALTY

MID = 3  # easy: a 7x7 grid, roads on row 3 and column 3


def empty(batch=1, seed=0):
    env = make("tj-easy", batch, seed, 5)
    env.reset()
    env.level = dataclasses.replace(env.level, add_rate=0.0)  # no arrivals unless placed
    return env


def place(env, slot, path, loc, b=0):
    env.alive[b, slot], env.path[b, slot], env.loc[b, slot] = True, path, loc


def test_easy_matches_ic3net_sizes():
    env = make("tj-easy", 3, 0, 5)
    assert (env.obs_dim, env.n_agents, env.n_actions, env.max_steps, env.size) == (137, 5, 2, 20, 7)
    assert env.reset().shape == (3, 5, 137)
    with pytest.raises(ValueError, match="5 car slots"):
        make("tj-easy", 1, 0, 2)


def test_a_lone_car_drives_its_route_and_leaves():
    env = empty()
    place(env, 2, path=0, loc=0)  # top to bottom along column 3
    rewards = []
    for t in range(6):
        obs, r, done, _ = env.step(np.zeros((1, 5), dtype=np.int64))
        rewards.append(float(r[0, 2]))
        assert r[0].sum() == r[0, 2]  # only live cars are rewarded
        assert env.alive[0, 2] and tuple(env._cells()[0, 2]) == (t + 1, MID)
    np.testing.assert_allclose(rewards, [STEP_PENALTY * w for w in range(1, 7)], rtol=1e-6)
    obs, r, _, _ = env.step(np.zeros((1, 5), dtype=np.int64))  # past the last cell: gone
    assert not env.alive[0, 2] and not r[0].any() and not obs[0, 2].any()


def test_braking_holds_the_car_and_is_observed():
    env = empty()
    place(env, 0, path=1, loc=2)
    obs, r, _, _ = env.step(np.array([[1, 0, 0, 0, 0]]))
    assert env.loc[0, 0] == 2 and obs[0, 0, 0] == 1.0 and obs[0, 0, 1] == 1.0  # last act brake, route 1 of 0..1
    assert r[0, 0] == pytest.approx(STEP_PENALTY) and r.shape == (1, 5)


def test_crossing_cars_collide_and_fail_the_episode():
    env = empty()
    place(env, 0, path=0, loc=MID - 1)  # one cell above the centre
    place(env, 1, path=1, loc=MID - 1)  # one cell left of it
    _, r, _, _ = env.step(np.zeros((1, 5), dtype=np.int64))
    np.testing.assert_allclose(r[0, :2], CRASH_PENALTY + STEP_PENALTY)  # each car in the crash
    assert env.alive[0, :2].all()  # collisions do not remove cars
    for _ in range(env.max_steps - 1):
        _, _, done, success = env.step(np.ones((1, 5), dtype=np.int64))
    assert done[0] and not success[0]


def test_vision_square_sees_road_outside_and_cars():
    env = empty()
    place(env, 0, path=0, loc=1)  # cell (1, 3)
    place(env, 1, path=0, loc=2)  # cell (2, 3), right below it
    obs = env._obs()[0, 0, 2:].reshape(3, 3, env.vision.vocab)
    base = env.vision.vocab - 3
    assert obs[1, 1, base + 2] == 1 and obs[2, 1, base + 2] == 1 and obs[0, 1, base + 2] == 0
    assert obs[1, 0, base] == 1 and obs[1, 2, base] == 1  # beside the column road: outside
    assert obs[:, 1, :base + 2].sum() == 3  # the column above, here and below: road cells


def test_cars_arrive_at_the_add_rate_while_slots_are_free():
    env = make("tj-easy", 4000, 1, 5)
    env.reset()
    env.step(np.zeros((4000, 5), dtype=np.int64))
    per_route = np.bincount(env.path[env.alive], minlength=2) / 4000
    np.testing.assert_allclose(per_route, [0.3, 0.3], atol=0.03)


# IC3Net's finish points (traffic_helper.get_add_mat), written out for n x n grids
def finish_points(kind, n):
    m, t = n // 2, n // 3
    if kind == "medium":
        return {(0, m), (n - 1, m - 1), (m - 1, 0), (m, n - 1)}
    return {(0, t - 1), (0, 2 * t + 1), (t - 2, 0), (2 * t, 0), (n - 1, t - 2), (n - 1, 2 * t), (t - 1, n - 1),
            (2 * t + 1, n - 1)}


@pytest.mark.parametrize("name,kind,slots,size,obs_dim,per_arrival", [
    ("tj-medium", "medium", 10, 14, 2 + 9 * 59, [3] * 4),
    ("tj-hard", "hard", 20, 18, 2 + 9 * 147, [7] * 8),
])
def test_medium_and_hard_road_layouts_match_ic3net(name, kind, slots, size, obs_dim, per_arrival):
    env = make(name, 1, 0, slots)
    assert (env.obs_dim, env.size, env.npath) == (obs_dim, size, sum(per_arrival))
    assert [len(r) for r in env.routes] == per_arrival  # 12 and 56 paths: nPr(roads, 2)
    ends = set()
    for path, length in zip(env.paths.numpy(), env.path_len.numpy()):
        cells = path[:length]
        assert (np.abs(np.diff(cells, axis=0)).sum(axis=1) == 1).all()  # one cell per step
        assert len({tuple(c) for c in cells}) == length  # never revisits a cell
        ends.add(tuple(cells[-1]))
    assert ends == finish_points(kind, size)
    # medium, from the top: straight down, right (west) on the first junction cell, left one cell later
    if kind == "medium":
        assert [tuple(env.paths[i, env.path_len[i] - 1]) for i in range(3)] == [(13, 6), (6, 0), (7, 13)]


def yield_and_queue(env) -> torch.Tensor:
    """A hand-written easy-level driver: the column road yields at the junction to a car
    on (or about to enter) the row road, the row road to a car in it, and a car brakes
    behind a braking car. What IC3Net's task asks the agents to learn."""
    brake = torch.zeros_like(env.alive)
    before, at = (env.loc == MID - 1), (env.loc == MID)
    row = env.alive & (env.path == 1)
    col = env.alive & (env.path == 0)
    brake |= col & before & (row & (before | at)).any(dim=1, keepdim=True)
    brake |= row & before & (col & at).any(dim=1, keepdim=True)
    for _ in range(env.size):  # queues: brake behind a braking car on the same path
        ahead = (brake[:, None, :] & (env.path[:, None, :] == env.path[:, :, None])
                 & (env.loc[:, None, :] == env.loc[:, :, None] + 1)).any(dim=2)
        brake |= env.alive & ahead
    return brake.long()


def test_easy_level_is_solvable_by_yielding_and_all_gas_is_not(scripted_success):
    assert scripted_success(make("tj-easy", 256, 7, 5), yield_and_queue, 10) > 0.95
    all_gas = scripted_success(make("tj-easy", 256, 7, 5), lambda env: np.zeros(env.alive.shape, dtype=np.int64), 10)
    assert all_gas < 0.5  # IC3Net's crashes happen
