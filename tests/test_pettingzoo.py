"""The PettingZoo side: PettingZoo's own API and seed tests (which nobody here wrote) on
the DDCL wrapper around mpe2's speaker-listener and the goal toy, and what the wrapper
puts in observations and infos."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from mpe2 import simple_speaker_listener_v4
from pettingzoo.test import parallel_api_test, parallel_seed_test

from agents.envs.goal import GoalEnv
from agents.pettingzoo import DDCLParallelEnv, GoalParallelEnv
from channel import ShapeError, codecs
from channel.torch import DDCL

ENVS = {
    "mpe2 speaker-listener + DDCL": lambda: DDCLParallelEnv(simple_speaker_listener_v4.parallel_env(), msg_dim=4),
    "goal + DDCL": lambda: DDCLParallelEnv(GoalParallelEnv(), msg_dim=4),
    "goal, 3 listeners + DDCL (range)": lambda: DDCLParallelEnv(GoalParallelEnv(listeners=3), msg_dim=2, codec="range"),
    "goal": lambda: GoalParallelEnv(),
}


@pytest.mark.parametrize("name", ENVS)
def test_pettingzoo_parallel_api_and_seed_tests_pass(name, capsys):
    # the API test reports most problems as warnings, not failures: here each one fails
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parallel_api_test(ENVS[name](), num_cycles=1000)
        parallel_seed_test(ENVS[name], num_cycles=300)
    assert "Passed Parallel API test" in capsys.readouterr().out


@settings(max_examples=25, deadline=None)
@given(messages=hnp.arrays(np.float32, (2, 4), elements=st.floats(-30, 30, width=32)), seed=st.integers(0, 2**32 - 1))
def test_each_agent_hears_the_others_messages_through_real_bitstreams(messages, seed):
    env = DDCLParallelEnv(GoalParallelEnv(), msg_dim=4, delta=0.25, codec="rice", epoch_seed=3)
    obs, _ = env.reset(seed=seed)
    assert all(not o["heard"].any() for o in obs.values())  # nothing heard before the first step
    layer = DDCL(4, delta=0.25, codec="rice", run_seed=seed, epoch_seed=3)
    for step in range(2):
        speaker, listener = messages[step % 2], messages[1 - step % 2]
        obs, _, _, _, infos = env.step({"speaker_0": {"action": 0, "message": speaker},
                                        "listener_0": {"action": 0, "message": listener}})  # stays off the goal
        # the wrapper's noise is the layer's at (run seed = the reset seed, the agent's index, the step)
        for sender, (agent, z) in enumerate([("speaker_0", speaker), ("listener_0", listener)]):
            z_hat = layer(torch.from_numpy(z[None]), step, sender)
            other = "listener_0" if agent == "speaker_0" else "speaker_0"
            assert np.array_equal(obs[other]["heard"][0], z_hat[0].numpy())
            assert infos[agent]["message_bits"] == layer.bits()
            assert infos[agent]["message_float32_bits"] == 128


def test_a_silent_agent_is_heard_as_zeros_and_bad_messages_are_refused():
    env = DDCLParallelEnv(GoalParallelEnv(listeners=2), msg_dim=3, codec="expgolomb")
    env.reset(seed=0)
    loud = np.full(3, 2.0, dtype=np.float32)
    obs, _, _, _, infos = env.step({"speaker_0": {"action": 0, "message": loud}})
    assert obs["listener_0"]["heard"].shape == (2, 3)  # speaker_0, listener_1
    assert np.abs(obs["listener_0"]["heard"][0] - 2.0).max() <= 0.1 and not obs["listener_0"]["heard"][1].any()
    assert "message_bits" in infos["speaker_0"] and "message_bits" not in infos["listener_1"]
    with pytest.raises(ShapeError, match="shaped"):
        env.step({"speaker_0": {"action": 0, "message": np.zeros(4, dtype=np.float32)}})


def test_the_goal_parallel_env_is_the_batched_goal_env():
    """Same seed, same moves: the ParallelEnv's observations and rewards are those of the
    batched env the trainer uses (one instance), and its last observation is the final
    state, where the batched env would already show the next episode."""
    rng = np.random.default_rng(7)
    par, batched = GoalParallelEnv(), GoalEnv(1, seed=21)
    obs, _ = par.reset(seed=21)
    ref = batched.reset()[0].numpy()
    assert np.array_equal(obs["speaker_0"], ref[0]) and np.array_equal(obs["listener_0"], ref[1])
    for t in range(60):
        move = int(rng.integers(0, 5))
        obs, rew, term, trunc, infos = par.step({"speaker_0": 0, "listener_0": move})
        ref_obs, ref_rew, ref_done, ref_success = batched.step(torch.tensor([[0, move]]))
        assert rew["listener_0"] == pytest.approx(float(ref_rew[0])) and infos["listener_0"]["success"] == bool(ref_success[0])
        assert term["listener_0"] == bool(ref_success[0]) and trunc["listener_0"] == bool(ref_done[0] and not ref_success[0])
        if ref_done[0]:
            break
        assert np.array_equal(obs["listener_0"], ref_obs[0, 1].numpy())
    assert par.agents == [] and ref_done[0]
    if term["listener_0"]:  # on the goal: the listener sees what the speaker sees
        assert np.array_equal(obs["listener_0"], obs["speaker_0"])



def test_the_docs_wrapper_snippet_runs():
    import re

    from tests.conftest import ROOT

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "layer.md").read_text(), re.S)
    scope: dict = {}
    exec(compile(blocks[1], "docs/layer.md", "exec"), scope)
    assert scope["obs"]["listener_0"]["heard"].shape == (1, 4)
    assert 0 < scope["infos"]["speaker_0"]["message_bits"] < 128
