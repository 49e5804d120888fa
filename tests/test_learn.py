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
F32, F16, DDCL = (learn_wire.GradCodec(name, run_seed=5) for name in ("float32", "float16", "ddcl"))
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
    # the learners' priors come home for --init as the in-process run's do
    priors = [torch.load(run / "checkpoint.pt", weights_only=True)["extra"]["priors"]
              for run in (tmp_path / "local", tmp_path / "net")]
    assert len(priors[1]) == 2 and all((a - b).abs().max() <= TOLERANCE for a, b in zip(*priors))

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
    wide = F32.pack(1, 0, 7, 0, g)
    narrow = F16.pack(1, 0, 7, 0, g)
    assert frame.unpack(wide).kind == frame.Kind.GRADIENT
    assert len(frame.unpack(wide).payload) == 2 * len(frame.unpack(narrow).payload) == 4 * g.numel()
    sender, back = F32.unpack(wide, 0, 7, 0, (5, 32, 4))
    assert sender == 1 and np.array_equal(back, g.numpy())
    _, half = F16.unpack(narrow, 0, 7, 0, (5, 32, 4))
    assert half[0, 0, 0] == 65504.0 and np.allclose(half.reshape(-1)[1:], g.numpy().reshape(-1)[1:], rtol=1e-3,
                                                       atol=1e-7)
    for update, shape, codec in ((8, (5, 32, 4), F32), (7, (5, 32, 3), F32), (7, (5, 32, 4), F16), (7, (5, 32, 4), DDCL)):
        with pytest.raises(learn_wire.WireError):  # another update, another size, another width or codec
            codec.unpack(wide, 0, update, 0, shape)
    nan = F32.pack(1, 0, 7, 0, torch.full((2,), float("nan")))
    with pytest.raises(learn_wire.WireError, match="NaN"):
        F32.unpack(nan, 0, 7, 0, (2,))


def test_ddcl_gradients_are_unbiased_within_half_a_step_and_smaller():
    """Subtractive dither: the receiver's gradient is within step / 2 of the sent one
    (step = the chunk's largest magnitude / DDCL_LEVELS), its error averages out over
    updates, and a gradient of mostly small values costs a fraction of float16."""
    torch.manual_seed(0)
    g = torch.randn(4, 64, 8) * torch.rand(4, 64, 8) ** 4  # heavy-tailed, like dL/dz_hat
    step = float(g.abs().max()) / learn_wire.DDCL_LEVELS
    errors = []
    for update in range(200):
        data = DDCL.pack(2, 0, update, 0, g)
        sender, back = DDCL.unpack(data, 0, update, 0, tuple(g.shape))
        assert sender == 2 and np.abs(back - g.numpy()).max() <= step / 2 * (1 + 1e-5)
        errors.append(back - g.numpy())
    # the mean of 200 independent errors, each uniform on (-step/2, step/2): sd step / sqrt(12 * 200)
    assert np.abs(np.mean(errors, axis=0)).max() < 5 * step / np.sqrt(12 * 200)
    assert np.abs(np.mean(errors[0])) < 5 * step / np.sqrt(12 * g.numel())
    assert len(frame.unpack(data).payload) < 0.5 * 2 * g.numel()  # under half of float16's bytes
    other = learn_wire.GradCodec("ddcl", run_seed=6)  # another run's dither: not this gradient
    assert np.abs(other.unpack(data, 0, 199, 0, tuple(g.shape))[1] - g.numpy()).max() > step / 2
    zero = DDCL.pack(2, 0, 0, 0, torch.zeros(3))
    assert np.array_equal(DDCL.unpack(zero, 0, 0, 0, (3,))[1], np.zeros(3))


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
    for parse in (lambda: F32.unpack(data, 0, 0, 0, (2, 2)), lambda: DDCL.unpack(data, 0, 0, 0, (2, 2)),
                  lambda: learn_wire.unpack_advantage(data, 0, (2, 2)),
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
    parts = F32.frames(2, 0, 5, g)
    assert len(parts) == 3 and all(len(p) < 4 * learn_wire.GRAD_FRAME_VALUES + 64 for p in parts)
    back = [F32.unpack(p, 0, 5, k, (steps, 256, 128))[1] for k, (p, steps) in enumerate(zip(parts, [8, 8, 4]))]
    assert np.array_equal(np.concatenate(back), g.numpy())
    parts = DDCL.frames(2, 0, 5, g)  # each chunk its own dither: a chunk read as another is off
    assert np.abs(DDCL.unpack(parts[1], 0, 5, 1, (8, 256, 128))[1] - g[8:16].numpy()).max() <= float(g[8:16].abs().max()) / 128 * 1.0001
    assert np.abs(DDCL.unpack(parts[1], 0, 5, 0, (8, 256, 128))[1] - g[8:16].numpy()).max() > float(g[8:16].abs().max()) / 128


def test_ddcl_gradients_train_networked_near_the_exact_run_for_a_fraction_of_the_bytes(tmp_path):
    """--grad-codec ddcl: the run goes on with quantized gradients (not equal to the exact
    run, but near it: the dither keeps each update's gradient unbiased), and the gradient
    payload per update is a fraction of float32's T * B * D * 4 bytes per link."""
    cfg = TrainConfig(**SHORT)
    (tmp_path / "local").mkdir()
    train(cfg, tmp_path / "local", progress=False)
    assert train_up(TrainConfig(**SHORT), tmp_path / "net", grad_codec="ddcl", progress=False) == 0
    here, there = _parameters(tmp_path / "local"), _parameters(tmp_path / "net")
    start = setup(TrainConfig(**SHORT))
    init = [p.state_dict() for p in start.policies] + [start.critic.state_dict()]
    diff = max((a[k] - b[k]).abs().max().item() for a, b in zip(here[:2], there[:2]) for k in a)
    moved = min(max((a[k] - i[k]).abs().max().item() for k in a) for a, i in zip(here[:2], init[:2]))
    assert TOLERANCE < diff < moved, (diff, moved)
    s = json.loads((tmp_path / "net" / "summary.json").read_text())
    assert s["networked"]["grad_codec"] == "ddcl" and s["updates_done"] == 3
    float32_payload = 2 * cfg.rollout * cfg.batch * cfg.msg_dim * 4  # two links, each way one
    assert 0 < s["networked"]["bytes_per_update"]["gradient"]["payload"] < float32_payload / 4
