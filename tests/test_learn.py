"""Networked training (`ddcl up --train`): real processes and a real broker give the
parameters `ddcl train` gives in one process; the learning wire refuses hostile bytes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agents import learn_wire
from agents.learn import train_up
from agents.policy import load_checkpoint
from agents.train import evaluate_run, setup, train
from agents.train_config import TrainConfig
from broker import protocol
from channel import ChannelError, frame

# Short: CI has two cores. Three updates of 5 steps on 32 goal instances move every
# parameter by about 1e-2 (Adam's first steps are about lr each).
SHORT = dict(env="goal", updates=3, rollout=5, batch=32, eval_every=1000, seed=1, device="cpu")
# Both trainers run the same float32 operations on the same inputs, and the speaker adds
# its listeners' gradients in peer order where autograd adds them in the graph's order:
# a different reduction order may differ in the last bits (measured here: 0, bit for bit),
# and three Adam steps keep such a difference near lr * 1e-6.
TOLERANCE = 1e-6


def _parameters(run) -> list[dict]:
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    return ck["state_dicts"] + [ck["extra"]["critic"]]


# the last: 512 x 128 values a step, so each speaker's gradient goes in two frames (4 + 1 steps)
@pytest.mark.parametrize("core, wide", [("mlp", {}), ("gru", {}), ("mlp", {"batch": 512, "msg_dim": 128})])
def test_networked_updates_give_the_in_process_parameters(tmp_path, core, wide):
    cfg = dict(SHORT, core=core, **wide)
    (tmp_path / "local").mkdir()
    local = train(TrainConfig(**cfg), tmp_path / "local", progress=False)
    assert train_up(TrainConfig(**cfg), tmp_path / "net", progress=False) == 0
    here, there = _parameters(tmp_path / "local"), _parameters(tmp_path / "net")
    start = setup(TrainConfig(**cfg))
    init = [p.state_dict() for p in start.policies] + [start.critic.state_dict()]
    assert [sorted(m) for m in here] == [sorted(m) for m in there] and len(here) == 3  # 2 policies + the critic
    diff = max((a[k] - b[k]).abs().max().item() for a, b in zip(here, there) for k in a)
    moved = min(max((a[k] - i[k]).abs().max().item() for k in a) for a, i in zip(here, init))
    assert diff <= TOLERANCE < moved / 1000, (diff, moved)

    s = json.loads((tmp_path / "net" / "summary.json").read_text())
    assert s["updates_done"] == 3 and s["final"]["success_rate"] == local["final"]["success_rate"]
    # every listener sends each speaker T * B * D float32 values per update, up and down
    config = TrainConfig(**cfg)
    n, values = 2, config.rollout * config.batch * config.msg_dim
    frames = len(learn_wire.gradient_chunks(config.rollout, config.batch * config.msg_dim))
    assert frames == (2 if wide else 1)
    grad = s["networked"]["bytes_per_update"]["gradient"]
    assert grad["payload"] == 2 * n * (n - 1) * 4 * values and grad["header"] > 0 and grad["framing"] > 0
    assert s["networked"]["bytes_per_update"]["message"]["payload"] > 0
    # the folder is a `ddcl train` one: `ddcl evaluate` reruns its held-out figures
    again = evaluate_run(tmp_path / "net", device="cpu")
    assert again["final"]["success_rate"] == s["final"]["success_rate"]
    env = start.env
    load_checkpoint(tmp_path / "net" / "checkpoint.pt", "goal", env.obs_dim, env.n_actions, 2)


def test_gradient_frames_round_trip_and_float16_halves_the_payload():
    g = torch.randn(5, 32, 4) * 1e-3
    g[0, 0, 0] = 1e6  # beyond float16: saturates, never infinity
    wide = learn_wire.pack_gradient(1, 7, g, "float32")
    narrow = learn_wire.pack_gradient(1, 7, g, "float16")
    assert frame.unpack(wide).kind == frame.Kind.GRADIENT
    assert len(frame.unpack(wide).payload) == 2 * len(frame.unpack(narrow).payload) == 4 * g.numel()
    sender, back = learn_wire.unpack_gradient(wide, 7, (5, 32, 4), "float32")
    assert sender == 1 and np.array_equal(back, g.numpy())
    _, half = learn_wire.unpack_gradient(narrow, 7, (5, 32, 4), "float16")
    assert half[0, 0, 0] == 65504.0 and np.allclose(half.reshape(-1)[1:], g.numpy().reshape(-1)[1:], rtol=1e-3,
                                                       atol=1e-7)
    for update, shape, codec in ((8, (5, 32, 4), "float32"), (7, (5, 32, 3), "float32"), (7, (5, 32, 4), "float16")):
        with pytest.raises(learn_wire.WireError):  # another update, another size, another width
            learn_wire.unpack_gradient(wide, update, shape, codec)
    nan = learn_wire.pack_gradient(1, 7, torch.full((2,), float("nan")), "float32")
    with pytest.raises(learn_wire.WireError, match="NaN"):
        learn_wire.unpack_gradient(nan, 7, (2,), "float32")


def test_control_messages_refuse_what_does_not_fit():
    adv = learn_wire.pack_advantage(3, torch.ones(5, 32))
    assert learn_wire.unpack_advantage(adv, 3, (5, 32)).shape == (5, 32)
    with pytest.raises(learn_wire.WireError):
        learn_wire.unpack_advantage(adv, 3, (5, 64))  # a size this side did not ask for
    with pytest.raises(learn_wire.WireError):
        learn_wire.unpack_advantage(adv, 4, (5, 32))  # a stale update
    with pytest.raises(learn_wire.WireError):
        learn_wire.unpack_clip(learn_wire.pack_clip(2, float("inf")), 2)
    with pytest.raises(learn_wire.WireError):
        learn_wire.unpack_norms(protocol.pack({"op": learn_wire.NORMS, "update": 1, "norms": [1.0, -1.0], "rate_bits": 0.0,
                               "wire_bits": 0.0}), 1, 2)
    policy = setup(TrainConfig(**SHORT)).policies[0]
    state = policy.state_dict()
    req = learn_wire.parse(learn_wire.pack_tensors(learn_wire.STATE, state, agent=0), learn_wire.STATE)
    assert all(torch.equal(v, state[k]) for k, v in learn_wire.unpack_tensors(req, state).items())
    bad = learn_wire.parse(learn_wire.pack_tensors(learn_wire.STATE, {**state, "body.0.weight": torch.zeros(3, 3)}), learn_wire.STATE)
    with pytest.raises(learn_wire.WireError, match="shape"):
        learn_wire.unpack_tensors(bad, state)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_hostile_bytes_raise_only_typed_errors(data):
    like = {"w": torch.zeros(2, 2)}
    for parse in (lambda: learn_wire.unpack_gradient(data, 0, (2, 2), "float32"), lambda: learn_wire.unpack_advantage(data, 0, (2, 2)),
                  lambda: learn_wire.unpack_norms(data, 0, 2), lambda: learn_wire.unpack_clip(data, 0),
                  lambda: learn_wire.unpack_tensors(learn_wire.parse(data, learn_wire.STATE), like)):
        try:
            parse()
        except ChannelError:
            pass


def test_a_rollouts_gradient_goes_in_frames_of_whole_steps_under_the_limit():
    assert learn_wire.gradient_chunks(10, 512) == [10]
    assert learn_wire.gradient_chunks(20, 256 * 128) == [8, 8, 4]  # tj-easy's 128-value messages, B = 256
    assert learn_wire.gradient_chunks(3, learn_wire.GRAD_FRAME_VALUES * 2) == [1, 1, 1]  # a step alone may pass the target
    with pytest.raises(learn_wire.WireError, match="a frame holds"):
        learn_wire.gradient_chunks(3, frame.MAX_COUNT + 1)
    g = torch.randn(20, 256, 128)
    parts = learn_wire.gradient_frames(2, 5, g, "float32")
    assert len(parts) == 3 and all(len(p) < 4 * learn_wire.GRAD_FRAME_VALUES + 64 for p in parts)
    back = [learn_wire.unpack_gradient(p, 5, (steps, 256, 128), "float32")[1] for p, steps in zip(parts, [8, 8, 4])]
    assert np.array_equal(np.concatenate(back), g.numpy())
