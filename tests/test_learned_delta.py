"""Learned precision (`ddcl train --learn-delta`): a quantization step per message
dimension, learned as log-delta with the policy, carried in the checkpoint beside the
range models, and used alike by the sender and every receiver on the wire."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
import torch

from agents.envs import make
from agents.inprocess import run_inprocess
from agents.message import MessageChannel
from agents.policy import CheckpointError, load_checkpoint
from agents.run_config import RunConfig
from agents.train import evaluate_run, train
from agents.train_config import TrainConfig
from channel import LayerError, NoiseKey, uniform_numpy
from channel.torch import LEARNED_DELTA_RANGE, DDCL
from tests.conftest import ddcl


def test_the_gradient_reaches_log_delta_the_task_down_and_the_rate_up():
    """d z_hat / d delta is the scaled error e = (z_hat - z) / delta: the noise power
    (z_hat - z)^2, a task's cost of imprecision, grows with delta; the rate shrinks."""
    torch.manual_seed(0)
    layer = DDCL(4, delta=0.3, rate_loss="surrogate", learn_delta=True)
    z = torch.randn(256, 4) * 2
    z_hat = layer(z.clone().requires_grad_(), 3, 1)
    noise = ((z_hat - z) ** 2).mean()
    (g_task,) = torch.autograd.grad(noise, layer.log_delta)
    delta = torch.exp(layer.log_delta.detach())
    # the chain rule by hand: d noise / d z_hat * e, summed per dimension, times d delta / d log-delta
    e = (z_hat.detach() - z) / delta
    want = (2 * (z_hat.detach() - z) / z.numel() * e).sum(0) * delta
    torch.testing.assert_close(g_task, want)
    assert torch.all(g_task > 0)  # more noise with a larger step: the task pushes delta down

    layer(z.clone().requires_grad_(), 3, 1)
    (g_rate,) = torch.autograd.grad(layer.rate_loss(), layer.log_delta)
    assert torch.all(g_rate < 0)  # fewer bits with a larger step: the rate pushes delta up

    fixed = DDCL(4, delta=0.3)  # nothing learned: no parameter, the step unchanged
    assert fixed.log_delta is None and list(fixed.parameters()) == [] and fixed.delta == 0.3


@pytest.mark.parametrize("way", ["shrink", "grow"])
def test_delta_stays_positive_and_finite_and_the_wire_follows_it(way):
    """Adam driving log-delta hard either way: the step stays inside LEARNED_DELTA_RANGE,
    and after every move the wire path quantizes with exactly the forward's step."""
    torch.manual_seed(1)
    layer = DDCL(3, delta=0.2, learn_delta=True, codec="rice")
    opt = torch.optim.Adam(layer.parameters(), lr=5.0)
    z = torch.randn(8, 3) * 1e-3
    for step in range(40):
        (layer.log_delta.sum() * (1 if way == "shrink" else -1)).backward()
        opt.step()
        opt.zero_grad()
        z_hat = layer(z, step, 0)
        sent = layer.encode(z, step, 0)
        np.testing.assert_array_equal(z_hat.detach().numpy(), sent.z_hat)
        np.testing.assert_array_equal(layer.decode(sent.payload, z.shape, step, 0), sent.z_hat)
    d = np.array(layer.delta)
    assert np.all(np.isfinite(d)) and np.all(d > 0)
    lo, hi = LEARNED_DELTA_RANGE
    assert np.all(d >= lo * (1 - 1e-6)) and np.all(d <= hi * (1 + 1e-6))
    assert np.all(d < 1e-5) if way == "shrink" else np.all(d > 1e5)  # it did go the whole way


def test_layer_state_round_trip_and_a_fixed_layer_with_the_learned_steps_is_the_same_channel():
    torch.manual_seed(2)
    layer = DDCL(3, delta=0.25, learn_delta=True, rate_loss="expected", prior_radius=6)
    with torch.no_grad():
        layer.log_delta += torch.tensor([0.5, -0.7, 0.1])
    again = DDCL(3, delta=1.0, learn_delta=True, rate_loss="expected", prior_radius=6)
    again.load_state_dict(layer.state_dict())
    assert again.delta == layer.delta != (0.25,) * 3
    with pytest.raises(LayerError, match="delta"):  # a fixed layer is not a learned one's state
        DDCL(3, delta=0.25, rate_loss="expected", prior_radius=6).load_state_dict(layer.state_dict(), strict=False)
    z = torch.randn(5, 3)
    fixed = DDCL(3, delta=layer.delta, rate_loss="expected", prior_radius=6)
    assert torch.equal(fixed(z, 9, 2), layer(z, 9, 2))  # the exported floats are the float32 steps exactly


def tiny(out, **kw) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(**{**dict(env="goal", msg_dim=3, updates=6, eval_every=3, batch=16, rollout=5, seed=5,
                                learn_delta=True, lam=0.05, lam_warmup=0.0, device="cpu"), **kw})
    return train(cfg, out, progress=False)


def test_the_checkpoint_carries_the_learned_steps(tmp_path):
    s = tiny(tmp_path)
    env = make("goal", 1, 0, 2)
    _, _, ck = load_checkpoint(tmp_path / "checkpoint.pt", "goal", env.obs_dim, env.n_actions, 2)
    deltas = ck["codec"]["deltas"]
    assert deltas == s["deltas"] and np.array(deltas).shape == (2, 3)
    assert all(d != pytest.approx(0.2, abs=1e-6) for row in deltas for d in row)  # six updates moved each step
    channel = MessageChannel.from_checkpoint(ck["codec"], "range", 2, 3, 0.2, run_seed=5)
    assert [layer.delta for layer in channel.layers] == [tuple(d) for d in deltas]
    # `ddcl evaluate` reruns the held-out evaluation with those steps: the same figures
    again = evaluate_run(tmp_path, device="cpu")
    assert again["final"]["success_rate"] == s["final"]["success_rate"]
    assert again["final"]["agents"] == s["final"]["agents"] and again["deltas"] == deltas
    # steps that are not one finite positive number per agent and dimension are refused
    for bad in ([[0.1, -0.2, 0.3]] * 2, [[0.1, 0.2]] * 2, [[0.1, float("nan"), 0.3]] * 2, "big"):
        ck["codec"]["deltas"] = bad
        torch.save(ck, tmp_path / "bad.pt")
        with pytest.raises(CheckpointError, match="learned steps"):
            load_checkpoint(tmp_path / "bad.pt", "goal", env.obs_dim, env.n_actions, 2)


@pytest.mark.parametrize("algo", ["a2c", "mappo"])
def test_a_run_continued_from_learned_steps_starts_from_them(tmp_path, algo):
    """--init with --learn-delta goes on from the checkpoint's steps (a prior_lr of 0 keeps
    them where they were, so the continued run's steps are exactly those); without
    --learn-delta the continuation is refused, as its policies were trained on that grid."""
    first = tiny(tmp_path / "first", algo=algo)
    init = str(tmp_path / "first" / "checkpoint.pt")
    again = tiny(tmp_path / "again", algo=algo, init=init, updates=1, eval_every=1, prior_lr=0.0)
    assert again["deltas"] == first["deltas"]
    assert all(d != pytest.approx(0.2, abs=1e-6) for row in again["deltas"] for d in row)
    with pytest.raises(CheckpointError, match="continue it with --learn-delta"):
        tiny(tmp_path / "fixed", algo=algo, init=init, learn_delta=False)


def test_a_short_training_moves_delta_apart_per_dimension(tmp_path):
    """Sixty updates of the goal toy: every step leaves 0.2, and the dimensions part ways
    (each has its own gradient). Without --learn-delta nothing moves."""
    s = tiny(tmp_path, updates=60, eval_every=30, batch=64, msg_dim=4)
    d = np.array(s["deltas"])
    assert np.all(np.abs(np.log(d / 0.2)) > 0.01)
    assert all(np.unique(row).size == 4 for row in d)  # a step of its own per dimension
    assert s["delta_spread"] == [[float(np.min(r)), float(np.median(r)), float(np.max(r))] for r in d]
    fixed = tiny(tmp_path / "fixed", updates=2, eval_every=2, learn_delta=False)
    assert "deltas" not in fixed
    env = make("goal", 1, 0, 2)
    _, _, ck = load_checkpoint(tmp_path / "fixed" / "checkpoint.pt", "goal", env.obs_dim, env.n_actions, 2)
    assert ck["codec"]["deltas"] is None


def test_networked_up_with_a_learned_delta_checkpoint_decodes_what_the_in_process_run_does(tmp_path):
    """`ddcl up` with the checkpoint: every message is delivered and decoded, and each
    agent's sent and received z_hat equal the in-process run's bit for bit, on the learned
    grid (z_hat / delta + u an integer with the learned steps, not with the config's)."""
    tiny(tmp_path / "train", updates=20, eval_every=20, batch=32, msg_dim=4)
    checkpoint = tmp_path / "train" / "checkpoint.pt"
    out, steps = tmp_path / "up", 20
    r = ddcl("up", "--env", "goal", "--steps", str(steps), "--batch", "3", "--codec", "range", "--seed", "4",
             "--checkpoint", str(checkpoint), "--record", "--deadline", "30", "--out", str(out), timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["messages"]["delivered"] == 2 * steps and s["bad_frames"] == 0 and s["silent_peers"] == 0
    assert s["desync"]["messages"] == 2 * steps and s["desync"]["desynced_fraction"] == 0
    cfg = RunConfig(env="goal", agents=2, steps=steps, batch=3, codec="range", seed=4)
    torch.set_num_threads(1)
    expected = run_inprocess(cfg, run_seed=4, epoch_seed=1, checkpoint=str(checkpoint))
    deltas = np.array(json.loads((tmp_path / "train" / "summary.json").read_text())["deltas"], dtype=np.float32)
    for k in range(2):
        got = pickle.loads((out / f"record-agent-{k}.pkl").read_bytes())
        assert len(got) == len(expected[k]) == steps
        for g, e in zip(got, expected[k]):
            np.testing.assert_array_equal(g["z_hat"], e["z_hat"])
            np.testing.assert_array_equal(g["received"][1 - k], e["received"][1 - k])
            np.testing.assert_array_equal(g["actions"], e["actions"])
    sent = pickle.loads((out / "record-agent-0.pkl").read_bytes())
    heard = pickle.loads((out / "record-agent-1.pkl").read_bytes())
    for x, y in zip(sent, heard):
        np.testing.assert_array_equal(x["z_hat"], y["received"][0])  # the receiver's bytes -> the sender's z_hat
        u = uniform_numpy(x["z_hat"].size, NoiseKey(4, 1, 0), x["step"]).reshape(x["z_hat"].shape)
        on_grid = x["z_hat"].astype(np.float64) / deltas[0] + u
        assert np.abs(on_grid - np.round(on_grid)).max() < 1e-3
        config_grid = x["z_hat"].astype(np.float64) / 0.2 + u
        assert np.abs(config_grid - np.round(config_grid)).max() > 1e-2
    assert math.isclose(s["delta"], float(np.mean(deltas)), rel_tol=1e-6)


def test_networked_training_refuses_learn_delta_with_a_reason():
    """`ddcl up --train` learners exchange priors, not steps: a peer would decode with a
    stale step, so the option is refused there before anything starts."""
    from agents.learn import config_for

    with pytest.raises(ValueError, match="--learn-delta trains in one place"):
        config_for({"learn_delta": True})
