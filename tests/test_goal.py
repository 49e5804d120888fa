"""The goal toy against REFERENCE.md section 2, and every env on every torch device."""

import numpy as np
import pytest
import torch

from agents.envs import ENVS, make
from agents.envs.goal import GOALS, MAX_STEPS, SIZE, GoalEnv, cell
from tests.conftest import DEVICES

STAY, NORTH, SOUTH, EAST, WEST = range(5)


def test_goals_follow_the_paper_weights_and_listeners_start_off_the_goal():
    env = make("goal", 60_000, 3)
    env.reset()
    freq = np.bincount(env.goal_idx.numpy(), minlength=6) / 60_000
    np.testing.assert_allclose(freq, np.array([200, 100, 50, 25, 12, 1]) / 388, atol=0.006)
    assert not (env.cells[:, 1:] == env.cells[:, :1]).any()


# GoalEnv steps numpy views of its tensors on the CPU and the tensors elsewhere: the
# hand-built cases below run both bodies, on the tensors a caller sees


@pytest.mark.parametrize("numpy_views", [True, False])
def test_observations_are_one_hot_goal_for_the_speaker_and_own_cell_for_listeners(numpy_views):
    env = GoalEnv(1, 0, agents=3, numpy_views=numpy_views)
    env.reset()
    env.goal_idx[0] = 2
    env.cells[0] = torch.tensor([cell(*GOALS[2]), cell(0, 7), cell(5, 1)])
    obs = env.step(torch.tensor([[STAY, STAY, STAY]]))[0][0]
    want = np.zeros((3, 2 * SIZE), dtype=np.float32)
    for k, (x, y) in enumerate([GOALS[2], (0, 7), (5, 1)]):
        want[k, x], want[k, SIZE + y] = 1, 1
    np.testing.assert_array_equal(obs.numpy(), want)


@pytest.mark.parametrize("numpy_views", [True, False])
def test_moves_clamp_at_the_border_and_reaching_the_goal_pays_one_and_ends(numpy_views):
    env = GoalEnv(1, 0, numpy_views=numpy_views)
    env.reset()
    env.goal_idx[0] = 0
    env.cells[0] = torch.tensor([cell(0, 0), cell(1, 0)])
    _, r, done, ok = env.step(torch.tensor([[STAY, SOUTH]]))  # y - 1 at the border: stays
    assert env.cells[0, 1] == cell(1, 0) and r[0] == pytest.approx(-0.01) and not done[0]
    _, r, done, ok = env.step(torch.tensor([[STAY, WEST]]))
    assert r[0] == 1.0 and done[0] and ok[0] and r.dtype == torch.float32
    assert env.t[0] == 0 and env.cells[0, 1] != env.cells[0, 0]  # a new episode began


@pytest.mark.parametrize("numpy_views", [True, False])
def test_an_episode_times_out_after_fifty_steps(numpy_views):
    env = GoalEnv(1, 0, numpy_views=numpy_views)
    env.reset()
    env.goal_idx[0] = 1
    env.cells[0] = torch.tensor([cell(7, 7), cell(0, 0)])
    for t in range(MAX_STEPS):
        _, r, done, ok = env.step(torch.tensor([[STAY, STAY]]))
        assert bool(done[0]) == (t == MAX_STEPS - 1) and not ok[0] and r[0] == pytest.approx(-0.01)


def test_numpy_views_and_torch_tensors_step_alike():
    gen = torch.Generator().manual_seed(4)
    for batch, agents in [(1, 2), (9, 4)]:
        fast, ref = GoalEnv(batch, 7, agents), GoalEnv(batch, 7, agents, numpy_views=False)
        assert torch.equal(fast.reset(), ref.reset())
        for _ in range(3 * MAX_STEPS):
            a = torch.randint(0, 5, (batch, agents), generator=gen)
            for x, y in zip(fast.step(a), ref.step(a)):
                assert x.dtype == y.dtype and torch.equal(x, y)
        assert torch.equal(fast.cells, ref.cells) and torch.equal(fast.t, ref.t)
        assert torch.equal(fast.goal_idx, ref.goal_idx)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(ENVS))
def test_every_env_runs_batched_on_the_device_and_is_seeded(name, device):
    env = make(name, 16, 5, None if name != "goal" else 2, device=device)
    ref = make(name, 16, 5, None if name != "goal" else 2)
    obs, obs_ref = env.reset(), ref.reset()
    assert obs.device.type == device and obs.shape == (16, env.n_agents, env.obs_dim) and obs.dtype == torch.float32
    assert device != "cpu" or torch.equal(obs, obs_ref)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2 * env.max_steps):
        a = torch.randint(0, env.n_actions, (16, env.n_agents), generator=gen)
        out, out_ref = env.step(a.to(device)), ref.step(a)
        assert [x.device.type for x in out] == [device] * 4
        assert out[2].dtype == out[3].dtype == torch.bool
        if device == "cpu":  # the same seed, the same episodes (CUDA draws from its own generator)
            for x, y in zip(out, out_ref):
                assert torch.equal(x, y)
