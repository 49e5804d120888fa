"""Predator-Prey against IC3Net's definition (REFERENCE.md section 3), scenario by scenario."""

import numpy as np
import pytest
import torch

from agents.envs import make
from agents.envs.predator_prey import LEVELS, STEP_PENALTY

UP, RIGHT, DOWN, LEFT, STAY = range(5)


def make_pp(name, batch, seed=0):
    return make(name, batch, seed, LEVELS[name].predators)


def placed(name, pred, prey):
    """One instance with predators and the prey where a test wants them."""
    env = make_pp(name, 1)
    env.reset()
    env.pred[0] = torch.tensor(pred)
    env.prey[0] = torch.tensor(prey)
    return env


@pytest.mark.parametrize("name, dim, predators, steps, obs_dim", [
    ("pp-easy", 5, 3, 20, 1 * (25 + 4)),  # vision 0: the own cell only
    ("pp-medium", 10, 5, 40, 9 * (100 + 4)),
    ("pp-hard", 20, 10, 80, 9 * (400 + 4)),
])
def test_levels_match_ic3net_sizes(name, dim, predators, steps, obs_dim):
    env = make_pp(name, 64)
    assert (env.n_agents, env.n_actions, env.max_steps, env.obs_dim) == (predators, 5, steps, obs_dim)
    obs = env.reset()
    assert obs.shape == (64, predators, obs_dim)
    cells = np.concatenate([env.pred, env.prey[:, None]], axis=1)
    flat = cells[..., 0] * dim + cells[..., 1]
    assert all(len(set(row)) == predators + 1 for row in flat)  # distinct starting cells
    assert cells.min() >= 0 and cells.max() < dim
    with pytest.raises(ValueError, match=f"{predators} predators"):
        make(name, 1, 0, predators + 1)


def test_moves_follow_ic3net_and_stop_at_the_border():
    env = placed("pp-easy", [(0, 0), (2, 2), (4, 4)], (0, 4))
    env.step(np.array([[UP, RIGHT, DOWN]]))
    assert env.pred[0].tolist() == [[0, 0], [2, 3], [4, 4]]  # up and down off the grid: stay
    env.step(np.array([[LEFT, DOWN, STAY]]))
    assert env.pred[0].tolist() == [[0, 0], [3, 3], [4, 4]]


def test_a_predator_on_the_prey_stays_and_costs_nothing():
    env = placed("pp-easy", [(1, 1), (3, 3), (4, 4)], (1, 2))
    obs, r, done, ok = env.step(np.array([[RIGHT, STAY, STAY]]))
    assert env.reached[0].tolist() == [True, False, False] and not done[0]
    np.testing.assert_allclose(r[0], [0.0, STEP_PENALTY, STEP_PENALTY])
    assert r.shape == (1, 3)
    env.step(np.array([[LEFT, STAY, STAY]]))
    assert env.pred[0, 0].tolist() == [1, 2]  # it cannot leave


def test_all_on_the_prey_ends_the_episode_with_success():
    env = placed("pp-easy", [(1, 1), (1, 3), (0, 2)], (1, 2))
    _, r, done, ok = env.step(np.array([[RIGHT, LEFT, DOWN]]))
    assert done[0] and ok[0] and not r.any()
    assert env.t[0] == 0 and not env.reached.any()  # the instance started a new episode


def test_time_runs_out_without_success():
    env = placed("pp-easy", [(0, 0), (0, 1), (1, 0)], (4, 4))
    for t in range(env.max_steps):
        _, r, done, ok = env.step(np.full((1, 3), STAY))
        assert done[0] == (t == env.max_steps - 1) and not ok[0]
        np.testing.assert_allclose(r[0], STEP_PENALTY)


def test_vision_square_shows_location_outside_prey_and_predators():
    env = placed("pp-medium", [(0, 0), (1, 1), (5, 5), (9, 9), (9, 8)], (1, 0))
    base = 100
    obs = env._obs()[0].reshape(5, 3, 3, base + 4)
    corner = obs[0]  # the predator at (0, 0): row -1 and column -1 are outside
    assert corner[0, :, base + 1].all() and corner[:, 0, base + 1].all()
    assert corner[1, 1, 0] == 1 and corner[2, 2, 11] == 1  # location ids row * dim + col
    assert corner[2, 1, base + 2] == 1 and corner[..., base + 2].sum() == 1  # the prey at (1, 0)
    assert corner[1, 1, base + 3] == 1 and corner[2, 2, base + 3] == 1 and corner[..., base + 3].sum() == 2
    assert obs[3, 1, 0, base + 3] == 1  # (9, 9) sees its neighbour (9, 8) on its left
    assert not obs[..., base].any()  # IC3Net leaves channel BASE empty
    assert obs[2, ..., base + 2].sum() == 0  # (5, 5) cannot see the prey


def test_easy_predators_see_only_their_cell():
    env = placed("pp-easy", [(2, 2), (3, 3), (0, 1)], (2, 2))
    obs = env._obs()[0]
    assert obs[0, 12] == 1 and obs[0, 25 + 2] == 1 and obs[0, 25 + 3] == 1  # cell 12, the prey, itself
    assert obs[1, 25 + 2] == 0 and obs[1].sum() == 2  # elsewhere: its cell and itself


def towards_prey(env):
    d = env.prey[:, None, :] - env.pred
    return np.select([d[..., 0] < 0, d[..., 1] > 0, d[..., 0] > 0, d[..., 1] < 0], [UP, RIGHT, DOWN, LEFT], STAY)


def test_knowing_where_the_prey_is_solves_easy_and_wandering_does_not(scripted_success):
    # what communication can buy: one predator that finds the prey could tell the others
    assert scripted_success(make_pp("pp-easy", 512, 3), towards_prey, 5) > 0.99
    rng = np.random.default_rng(0)
    assert scripted_success(make_pp("pp-easy", 512, 3), lambda env: rng.integers(0, 5, env.pred.shape[:2]), 5) < 0.3
