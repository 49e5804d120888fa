"""The trainer: real learning in a short run, clear errors, checkpoints, adapters, plots."""

from __future__ import annotations


import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from agents import policy
from agents import train as train_module
from agents.envs import make
from agents.policy import AgentPolicy, CheckpointError, PolicyConfig, load_checkpoint, save_checkpoint
from agents.train import evaluate_run, train
from agents.train_config import AGGREGATES, CODECS, CORES, RATE_LOSSES, TrainConfig
from channel import codecs
from channel.rate import RATE_LOSSES as CHANNEL_RATE_LOSSES
from tests.conftest import DEVICES, SLOW_S


def test_config_lists_match_the_channel():
    assert CODECS == codecs.NAMES and RATE_LOSSES == CHANNEL_RATE_LOSSES
    assert (CORES, AGGREGATES) == (policy.CORES, policy.AGGREGATES)


@pytest.mark.parametrize("device", DEVICES)
def test_short_goal_run_learns_to_communicate(tmp_path, device):
    cfg = TrainConfig(updates=600, eval_every=300, batch=256, lam=0.01, entropy_coef=0.05, seed=3, device=device)
    s = train(cfg, tmp_path, progress=False)
    success = s["final"]["success_rate"]
    # the same policies with the messages silenced: what the listener manages alone
    assert success > 0.8 and success - s["no_communication_success"] > 0.2, (success, s["no_communication_success"])
    bits = s["final"]["agents"][0]["bits_per_message"]
    assert bits["float32"] == 32 * cfg.msg_dim and 0 < bits["range"] < bits["float32"]
    assert (tmp_path / "checkpoint.pt").exists() and (tmp_path / "train.jsonl").read_text().count("\n") == 2
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(tmp_path / "tensorboard"))
    board.Reload()
    evals = board.Scalars("success/eval")
    assert [e.value for e in evals] == pytest.approx([r["eval_success"] for r in s["history"]])
    assert "bits_per_message/range/agent0" in board.Tags()["scalars"]
    env = make("goal", 1, 0)
    _, policies, ck = load_checkpoint(tmp_path / "checkpoint.pt", "goal", env.obs_dim, env.n_actions, 2)
    assert len(policies) == 2 and len(ck["codec"]["models"]) == 2
    # `ddcl evaluate` on the saved checkpoint reproduces the run's held-out figures on the same
    # device (a CUDA env draws its episodes from CUDA's generator), and takes more episodes
    assert s["device"].startswith(device)
    again = evaluate_run(tmp_path, device=device)
    assert again["final"]["success_rate"] == success and again["no_communication_success"] == s["no_communication_success"]
    assert again["final"]["agents"][0]["bits_per_message"] == bits
    r = subprocess.run([sys.executable, "-m", "ddcl", "evaluate", str(tmp_path), "--episodes", "1024", "--seed", "9"],
                       capture_output=True, text=True, timeout=800)
    assert r.returncode == 0 and "over 1024 episodes" in r.stdout and "r(goal probability, bits)" in r.stdout, r.stderr
    per_goal = next(line for line in r.stdout.splitlines() if line.startswith("per goal"))
    goal_bits, goal_success = (part.split() for part in per_goal.split(": bits ")[1].split("; success "))
    assert len(goal_bits) == len(goal_success) >= 5 and all(0 <= float(x) <= 1 for x in goal_success), per_goal

    from agents.report import report

    pngs = report(tmp_path)
    assert [p.name for p in pngs] == ["learning_curves.png", "bits_per_goal.png"]
    assert all(p.stat().st_size > 10_000 for p in pngs)


@pytest.mark.parametrize("field, value, message", [
    ("env", "chess", "choose one of goal"),
    ("codec", "zip", "choose one of float32"),
    ("rate_loss", "vibes", "surrogate, codelength, entropy, expected"),
    ("lr", -1.0, "lr must be positive"),
    ("gamma", 1.5, "gamma"),
])
def test_bad_hyperparameters_are_clear_errors(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value}).validate()


def test_agent_count_defaults_to_the_env_and_refuses_another(tmp_path):
    # IC3Net's levels: 5/10/20 cars, 3/5/10 predators; the goal toy is a speaker and a listener
    assert [TrainConfig(env=e).agents for e in ("goal", "tj-easy", "tj-hard", "pp-easy", "pp-medium")] == [2, 5, 20, 3, 5]
    with pytest.raises(ValueError, match="pp-easy has 3 predators; run it with 3 agents, not 2"):
        TrainConfig(env="pp-easy", agents=2).validate()
    r = subprocess.run([sys.executable, "-m", "ddcl", "train", "--env", "pp-easy", "--updates", "2", "--batch", "4",
                        "--rollout", "3", "--eval-every", "1", "--out", str(tmp_path / "pp")],
                       capture_output=True, text=True, timeout=800)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "pp" / "config.json").read_text())["agents"] == 3


def test_train_cli_says_what_is_wrong_with_out(tmp_path):
    (tmp_path / "file").write_text("")
    r = subprocess.run([sys.executable, "-m", "ddcl", "train", "--out", str(tmp_path / "file")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "is a file, not a folder" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "ddcl", "evaluate", str(tmp_path)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "is not a `ddcl train` folder" in r.stderr and "Traceback" not in r.stderr


def test_a_stopped_training_still_evaluates_and_writes_its_checkpoint(tmp_path):
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "ddcl", "train", "--updates", "100000", "--batch", "16",
                          "--eval-every", "5", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + SLOW_S
        while not ((out / "train.jsonl").exists() and (out / "train.jsonl").read_text()):
            assert time.monotonic() < deadline and p.poll() is None, "training never reached its first evaluation"
            time.sleep(0.1)
        p.send_signal(signal.SIGTERM)
        stdout, stderr = p.communicate(timeout=SLOW_S)
    finally:
        p.kill()
    assert p.returncode == 130, stderr
    s = json.loads((out / "summary.json").read_text())
    assert 5 <= s["updates_done"] < 100000 and f"stopped at update {s['updates_done']} of 100000" in stdout
    assert f"stopping after update {s['updates_done']} of 100000" in stderr
    assert 0 <= s["final"]["success_rate"] <= 1
    env = make("goal", 1, 0, 2)
    load_checkpoint(out / "checkpoint.pt", "goal", env.obs_dim, env.n_actions, 2)  # a checkpoint agents can run


def test_checkpoints_for_another_env_or_shape_are_refused(tmp_path):
    cfg = PolicyConfig(obs_dim=16, n_actions=5)
    path = tmp_path / "ck.pt"
    save_checkpoint(path, "goal", cfg, [AgentPolicy(cfg), AgentPolicy(cfg)], {"name": "rice", "options": {}})
    with pytest.raises(CheckpointError, match="is for env 'goal'"):
        load_checkpoint(path, "tj-easy", 16, 5, 2)
    with pytest.raises(CheckpointError, match="obs_dim=16"):
        load_checkpoint(path, "goal", 17, 5, 2)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "junk.pt", "goal", 16, 5, 2)


def test_pettingzoo_adapter_runs_simple_speaker_listener():
    from mpe2 import simple_speaker_listener_v4

    env = make("pz:mpe2.simple_speaker_listener_v4", batch=3, seed=5, agents=2)
    assert (env.n_agents, env.obs_dim, env.n_actions) == (2, 11, 5)
    obs = env.reset()
    direct = simple_speaker_listener_v4.parallel_env(continuous_actions=False)
    ref, _ = direct.reset(seed=5 * 1_000_003 + 1)
    np.testing.assert_allclose(obs[0, 1], ref["listener_0"])
    np.testing.assert_allclose(obs[0, 0, :3], ref["speaker_0"])
    assert not obs[0, 0, 3:].any()  # padding
    for _ in range(30):
        obs, reward, done, success = env.step(np.random.default_rng(0).integers(0, 5, (3, 2)))
        assert reward.shape == (3,) and torch.isfinite(reward).all() and not success.any()
    s = train(TrainConfig(env="pz:mpe2.simple_speaker_listener_v4", updates=6, eval_every=3, batch=4, rollout=5,
                          codec="rice", rate_loss="surrogate"), progress=False)
    assert np.isfinite(s["final"]["agents"][0]["bits_per_message"]["rice"])


def test_gru_memory_carries_and_resets():
    torch.manual_seed(0)
    p = AgentPolicy(PolicyConfig(obs_dim=6, n_actions=3, msg_dim=4, hidden=16, core="gru"))
    obs = torch.randn(5, 6)
    h0, z0, state = p.speak(obs, p.initial_state(5))
    h1, z1, _ = p.speak(obs, state)
    assert not torch.allclose(z0, z1)  # the same observation, a different memory
    h2, z2, _ = p.speak(obs, state * 0)  # what the agent does where `first` is set
    assert torch.equal(z2, z0) and torch.equal(h2, h0)


@pytest.mark.parametrize("core", ["mlp", "gru"])
@pytest.mark.parametrize("aggregate", ["mean", "attention"])
@pytest.mark.parametrize("peers", [1, 3])
def test_the_forward_passes_are_the_layers_own_arithmetic(core, aggregate, peers):
    # speak and act call the layers' functions on their parameters (no Module.__call__):
    # bit for bit what calling the layers gives, so checkpoints act as they were trained
    # (one peer takes a shortcut past the mean)
    torch.manual_seed(2)
    p = AgentPolicy(PolicyConfig(obs_dim=6, n_actions=3, msg_dim=4, hidden=16, core=core, aggregate=aggregate))
    obs, state, heard = torch.randn(5, 6), torch.randn(5, 16), torch.randn(5, peers, 4)
    h, z, _ = p.speak(obs, state if core == "gru" else None)
    want_h = p.memory(p.body(obs), state) if core == "gru" else p.body(obs)
    assert torch.equal(h, want_h) and torch.equal(z, p.msg_head(want_h))
    if aggregate == "attention":
        weights = torch.softmax((p.key(heard) * p.query(h)[:, None, :]).sum(-1) / 2, dim=1)
        combined = (weights[..., None] * heard).sum(1)
    else:
        combined = heard.mean(1)
    assert torch.equal(p.act(h, heard), p.act_head(torch.cat([h, combined], dim=-1)))


def test_attention_is_a_convex_combination_of_heard_messages():
    torch.manual_seed(1)
    cfg = PolicyConfig(obs_dim=6, n_actions=3, msg_dim=4, hidden=16, aggregate="attention")
    p = AgentPolicy(cfg)
    h = torch.randn(5, 16)
    z = torch.randn(5, 1, 4)
    same = p.act(h, z.expand(5, 3, 4))  # three peers saying the same thing
    torch.testing.assert_close(same, p.act_head(torch.cat([h, z[:, 0]], dim=-1)))
    mixed = p.act(h, torch.randn(5, 3, 4))
    assert mixed.shape == (5, 3) and not torch.allclose(mixed, same)


def test_recurrent_attention_shared_policy_trains_and_reloads(tmp_path):
    cfg = TrainConfig(updates=6, eval_every=3, batch=8, rollout=5, core="gru", aggregate="attention", share=True)
    s = train(cfg, tmp_path, progress=False)
    assert np.isfinite(s["final"]["agents"][0]["bits_per_message"]["range"])
    env = make("goal", 1, 0)
    pcfg, policies, _ = load_checkpoint(tmp_path / "checkpoint.pt", "goal", env.obs_dim, env.n_actions, 2)
    assert (pcfg.core, pcfg.aggregate) == ("gru", "attention")
    a, b = (p.state_dict() for p in policies)
    assert all(torch.equal(a[k], b[k]) for k in a)  # one set of weights for both agents


@pytest.mark.parametrize("algo", ["a2c", "mappo"])
def test_no_comm_ablation_hears_nothing_and_its_checkpoint_says_so(tmp_path, algo):
    cfg = TrainConfig(algo=algo, comm=False, updates=4, eval_every=4, batch=16, rollout=5, seed=2)
    s = train(cfg, tmp_path, progress=False)
    # silenced at evaluation changes nothing for agents that never hear
    assert s["final"]["success_rate"] == s["no_communication_success"]
    env = make("goal", 1, 0)
    pcfg, policies, _ = load_checkpoint(tmp_path / "checkpoint.pt", "goal", env.obs_dim, env.n_actions, 2)
    assert pcfg.comm is False
    h = torch.randn(6, pcfg.hidden)
    with torch.no_grad():
        assert torch.equal(policies[0].act(h, torch.randn(6, 1, 4)), policies[0].act(h, torch.zeros(6, 1, 4)))
    talking = AgentPolicy(PolicyConfig(pcfg.obs_dim, pcfg.n_actions))
    with torch.no_grad():  # the same check fails for a policy that hears
        assert not torch.equal(talking.act(h, torch.randn(6, 1, 4)), talking.act(h, torch.zeros(6, 1, 4)))


def test_train_cli_rejects_bad_core_and_takes_share_flag(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ddcl", "train", "--core", "lstm", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "mlp, gru" in r.stderr
    r = subprocess.run([sys.executable, "-m", "ddcl", "train", "--help"], capture_output=True, text=True, timeout=120)
    assert "--share, --no-share" in r.stdout


def test_traffic_junction_team_learns_to_yield():
    """100 updates take tj-easy from the all-gas rate (about 27 %) well past it."""
    cfg = TrainConfig(env="tj-easy", agents=5, share=True, team_reward=True, adv_norm=True, lam=0.001, batch=256,
                      rollout=20, updates=100, eval_every=100, gamma=0.99, lr=0.003, entropy_coef=0.05)
    s = train(cfg, None, progress=False)
    assert s["final"]["success_rate"] > 0.6, s["final"]["success_rate"]


def test_init_continues_from_a_checkpoint_and_refuses_another_shape(tmp_path):
    first = TrainConfig(updates=4, eval_every=4, batch=8, rollout=5, share=True, seed=1)
    (tmp_path / "a").mkdir()
    train(first, tmp_path / "a", progress=False)
    saved = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["state_dicts"][0]
    # a learning rate too small to move the weights: the run ends where the checkpoint starts it
    again = TrainConfig(updates=1, eval_every=1, batch=8, rollout=5, share=True, seed=2, lr=1e-12,
                        init=str(tmp_path / "a" / "checkpoint.pt"))
    (tmp_path / "b").mkdir()
    train(again, tmp_path / "b", progress=False)
    ended = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["state_dicts"]
    assert all(torch.allclose(ended[k][name], saved[name], atol=1e-6) for k in (0, 1) for name in saved)
    fresh = policy.init_policies(PolicyConfig(16, 5), 2, seed=2)[0].state_dict()
    assert not torch.allclose(fresh["msg_head.weight"], saved["msg_head.weight"])
    with pytest.raises(CheckpointError, match="msg_dim=4 \\(this run: 2\\)"):
        train(TrainConfig(updates=1, batch=8, msg_dim=2, init=again.init), None, progress=False)


def test_progress_lines_come_between_evaluations(monkeypatch, capsys):
    monkeypatch.setattr(train_module, "PROGRESS_EVERY_S", 0.0)
    train(TrainConfig(updates=4, eval_every=4, batch=8, rollout=5), None, progress=True)
    lines = capsys.readouterr().err.splitlines()
    live = [x for x in lines if "eta" in x]
    assert [x.split()[2] for x in live] == ["1/4", "2/4", "3/4", "4/4"]
    assert "(25%)" in live[0] and "rate-loss bits" in live[0]
    assert sum("eval success" in x for x in lines) == 1


def test_the_command_line_parses_without_importing_torch():
    """`ddcl broker stats` and friends start in a fraction of a second: the parser takes
    env names, levels and choices from torch-free modules."""
    code = "import sys, ddcl.cli as c; c.build_parser(); print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert r.stdout.strip() == "False"


def test_real_bits_of_more_values_than_one_stream_takes():
    """A held-out evaluation of wide messages on many episodes has more values per step
    than one bitstream may hold; they are priced as several streams, not refused."""
    from agents.train import stream_bits
    from channel.frame import MAX_COUNT

    rice = codecs.get("rice")
    messages = np.zeros((MAX_COUNT // 128 + 1, 128), dtype=np.int64)
    one = rice.encode_bits(np.zeros(MAX_COUNT, dtype=np.int64))[1]
    assert stream_bits(rice, messages) > one
    assert stream_bits(rice, messages[:2]) == rice.encode_bits(messages[:2].reshape(-1))[1]


def test_evaluate_says_when_it_cannot_reproduce_a_run_trained_on_another_device(tmp_path):
    """A run trained on CUDA, evaluated on the CPU, sees other episodes (a CUDA env draws
    from CUDA's generator): `ddcl evaluate` says so instead of letting the figures pass
    for the run's own. The summary's device is the only record of where it trained."""
    train(TrainConfig(updates=2, eval_every=2, batch=8, rollout=5, device="cpu"), tmp_path, progress=False)

    def evaluate() -> str:
        r = subprocess.run([sys.executable, "-m", "ddcl", "evaluate", str(tmp_path), "--device", "cpu"],
                           capture_output=True, text=True, timeout=800)
        assert r.returncode == 0, r.stderr
        return r.stdout

    assert "note:" not in evaluate()
    summary = json.loads((tmp_path / "summary.json").read_text())
    (tmp_path / "summary.json").write_text(json.dumps(dict(summary, device="cuda:0")))
    assert "note: trained on cuda, evaluated on cpu: other episodes than the run's" in evaluate()
