"""What world and agents exchange besides agent messages: observation and action frames."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents import lockstep
from channel import ChannelError, frame


@settings(max_examples=60, deadline=None)
@given(batch=st.integers(1, 8), agents=st.integers(1, 6), dim=st.integers(1, 40), step=st.integers(0, 2**40),
       seed=st.integers(0, 2**32 - 1))
def test_each_agent_gets_its_own_observations_back(batch, agents, dim, step, seed):
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((batch, agents, dim)).astype(np.float32)
    first = rng.random(batch) < 0.5
    frames = lockstep.pack_obs(step, obs, first)
    assert len(frames) == agents
    for k, data in enumerate(frames):
        got_step, got_obs, got_first = lockstep.unpack_obs(frame.unpack(data), batch, dim)
        assert got_step == step
        np.testing.assert_array_equal(got_obs, obs[:, k])
        np.testing.assert_array_equal(got_first, first)


@settings(max_examples=60, deadline=None)
@given(actions=st.lists(st.integers(0, 4), min_size=1, max_size=64), sender=st.integers(0, 254),
       step=st.integers(0, 2**40))
def test_actions_round_trip_and_out_of_range_ones_are_refused(actions, sender, step):
    a = np.array(actions, dtype=np.int64)
    f = frame.unpack(lockstep.pack_actions(sender, step, a))
    assert (f.sender, f.stamp) == (sender, step)
    np.testing.assert_array_equal(lockstep.unpack_actions(f, a.size, 5), a)
    with pytest.raises(ChannelError):
        lockstep.unpack_actions(f, a.size, int(a.max()))  # one action past the env's range
    with pytest.raises(ChannelError):
        lockstep.unpack_actions(f, a.size + 1, 5)  # a frame for another batch


def test_an_observation_frame_of_the_wrong_size_is_refused():
    data = lockstep.pack_obs(3, np.zeros((2, 1, 4), dtype=np.float32), np.ones(2, dtype=bool))[0]
    with pytest.raises(ChannelError):
        lockstep.unpack_obs(frame.unpack(data), 2, 5)
