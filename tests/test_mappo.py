"""MAPPO (`ddcl train --algo mappo`) and the transformer core: real updates on real envs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agents import mappo
from agents.envs import make
from agents.policy import AgentPolicy, PolicyConfig, initial_states, load_checkpoint
from agents.sampling import generators
from agents.train import evaluate_run, setup, train
from agents.train_config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def _rollout(cfg: TrainConfig, batched: bool):
    device, env, _, policies, critic, layers, per_agent, *_ = setup(cfg)
    peers = mappo.peer_index(cfg.agents, device)
    data, *_ = mappo.collect(env, env.reset(), initial_states(policies, cfg.batch, device), policies, layers, critic,
                             None, generators(cfg.seed, range(cfg.agents), device), peers, 0, per_agent, batched, cfg)
    return policies, critic, layers, peers, data


@pytest.mark.parametrize("core", ["mlp", "gru", "transformer"])
def test_a_few_updates_lower_the_loss_on_their_rollout(core):
    cfg = TrainConfig(algo="mappo", core=core, batch=32, rollout=5, ppo_epochs=4, minibatches=2, lr=3e-3, hidden=32)
    policies, critic, layers, peers, data = _rollout(cfg, batched=False)
    params = list({id(q): q for m in [*policies, critic] for q in m.parameters()}.values())
    opt = torch.optim.Adam(params + [q for layer in layers for q in layer.parameters()], lr=cfg.lr)
    rows = torch.arange(cfg.batch)
    adv, returns = mappo.gae(critic, None, data, cfg)
    before, _ = mappo.ppo_loss(policies, layers, critic, data, adv, returns, rows, peers, 0.01, False, cfg)
    figures = mappo.update(policies, layers, critic, None, opt, params, data, 0.01, peers,
                           torch.Generator().manual_seed(0), False, cfg)
    after, _ = mappo.ppo_loss(policies, layers, critic, data, adv, returns, rows, peers, 0.01, False, cfg)
    before, after = before.item(), after.item()
    assert after < before - 0.01, (before, after)
    assert figures["epochs"] == 4 and figures["approx_kl"] > 0  # the policy moved off the one that acted


def test_a_minibatch_draws_its_rows_dither_and_batched_agents_match_the_loop():
    """The update's recomputed messages are the rollout's: a minibatch of rows hears what
    those rows heard in the whole batch, and one batched shared module is the loop."""
    cfg = TrainConfig(algo="mappo", env="tj-easy", share=True, core="gru", batch=16, rollout=3, hidden=32)
    policies, critic, layers, peers, data = _rollout(cfg, batched=True)
    rows = torch.tensor([11, 2, 7])
    states = [s[rows] for s in data.states]
    with torch.no_grad():
        full, full_rate, _ = mappo.joint_forward(policies, layers, data.obs[1], data.states, 1, peers, batched=False)
        part, part_rate, _ = mappo.joint_forward(policies, layers, data.obs[1, rows], states, 1, peers, batched=True,
                                                 rows=rows, batch=cfg.batch)
    torch.testing.assert_close(part, full[rows])
    torch.testing.assert_close(part_rate, full_rate[rows])
    # the rollout's own log-probabilities are recomputed exactly: the ratio starts at 1
    adv, returns = mappo.gae(critic, None, data, cfg)
    _, figures = mappo.ppo_loss(policies, layers, critic, data, adv, returns, rows, peers, 0.0, True, cfg)
    assert abs(figures["approx_kl"]) < 1e-6 and figures["clip_fraction"] == 0


def test_value_norm_scales_returns_to_unit_size_and_back():
    norm = mappo.ValueNorm(2, "cpu")
    x = torch.randn(20, 64, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(norm.denormalize(x), x)  # nothing seen: the critic's output as it is
    returns = x * torch.tensor([50.0, 2.0]) - torch.tensor([300.0, 0.0])  # team-sized returns, and small ones
    norm.update(returns)
    scaled = norm.normalize(returns)
    torch.testing.assert_close(scaled.mean((0, 1)), torch.zeros(2), atol=1e-3, rtol=0)
    torch.testing.assert_close(scaled.std((0, 1)), torch.ones(2), atol=0.02, rtol=0)
    torch.testing.assert_close(norm.denormalize(scaled), returns, atol=1e-3, rtol=1e-4)


def _random_success(env_name: str, episodes: int, seed: int) -> float:
    env = make(env_name, episodes, seed)
    env.reset()
    gen = torch.Generator().manual_seed(seed)
    won = torch.zeros(episodes, dtype=torch.bool)
    for _ in range(env.max_steps):
        _, _, done, success = env.step(torch.randint(env.n_actions, (episodes, 2), generator=gen))
        won |= success
        if done.all():
            break
    return float(won.float().mean())


def test_tiny_mappo_run_beats_a_random_policy(tmp_path):
    cfg = TrainConfig(algo="mappo", updates=30, eval_every=30, batch=128, rollout=10, msg_dim=1, entropy_coef=0.05,
                      lr=3e-3, seed=1)
    s = train(cfg, tmp_path, progress=False)
    random = _random_success("goal", 1024, 5)
    assert s["final"]["success_rate"] > random + 0.2, (s["final"]["success_rate"], random)
    assert set(s["history"][0]) >= {"approx_kl", "clip_fraction", "value_loss", "eval_success"}
    again = evaluate_run(tmp_path)  # the checkpoint and config reload as A2C's do
    assert again["final"]["success_rate"] == s["final"]["success_rate"]


def test_the_transformer_core_attends_over_the_listener_and_every_peer():
    torch.manual_seed(0)
    p = AgentPolicy(PolicyConfig(obs_dim=6, n_actions=3, msg_dim=4, hidden=16, core="transformer"))
    obs, heard = torch.randn(5, 6), torch.randn(5, 3, 4)
    h, z, state = p.speak(obs)
    assert h.shape == (5, 16) and z.shape == (5, 4) and state is None
    for peers in (0, 1, 3):
        assert p.act(h, heard[:, :peers]).shape == (5, 3)
    # the block's output at the listener's token is full self-attention's at that token
    mix = p.mixer
    tokens = torch.cat([h[:, None], mix.embed(heard)], 1)
    q, k, v = (t.view(5, 4, 4, 4).transpose(1, 2) for t in mix.qkv(mix.norm1(tokens)).chunk(3, -1))
    attended = torch.softmax(q @ k.transpose(-1, -2) / 2, -1) @ v  # (B, heads, tokens, dh)
    out = tokens + mix.proj(attended.transpose(1, 2).reshape(5, 4, 16))
    full = out + mix.ff_out(torch.nn.functional.gelu(mix.ff_in(mix.norm2(out))))
    torch.testing.assert_close(mix(h, heard), full[:, 0])
    # the peers are a set: their order does not matter, what they say does
    torch.testing.assert_close(p.act(h, heard[:, [2, 0, 1]]), p.act(h, heard))
    assert not torch.allclose(p.act(h, heard), p.act(h, torch.randn(5, 3, 4)))


def test_mappo_transformer_trains_and_its_checkpoint_runs_networked(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    train(TrainConfig(algo="mappo", core="transformer", updates=4, eval_every=2, batch=16, rollout=5, minibatches=2),
          run, progress=False)
    rows = [json.loads(line) for line in (run / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[1]["loss"] != rows[0]["loss"]
    env = make("goal", 1, 0)
    pcfg, policies, _ = load_checkpoint(run / "checkpoint.pt", "goal", env.obs_dim, env.n_actions, 2)
    assert pcfg.core == "transformer" and policies[0].mixer is not None
    r = subprocess.run([sys.executable, "-m", "ddcl", "up", "--env", "goal", "--steps", "5", "--batch", "4",
                        "--checkpoint", str(run / "checkpoint.pt"), "--deadline", "30", "--out", str(tmp_path / "up")],
                       capture_output=True, text=True, timeout=300, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((tmp_path / "up" / "summary.json").read_text())["messages"]["delivered"] == 2 * 5


def test_networked_training_refuses_mappo():
    r = subprocess.run([sys.executable, "-m", "ddcl", "up", "--train", "--algo", "mappo", "--out", "/nonexistent/x"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2 and "networked training runs A2C" in r.stderr


@pytest.mark.parametrize("anneal", [False, True])
def test_anneal_lr_falls_linearly_to_zero(anneal):
    cfg = TrainConfig(algo="mappo", anneal_lr=anneal, lr=0.004, updates=4, eval_every=1, batch=8, rollout=3)
    s = mappo.train(cfg, None, progress=False)
    lrs = [row["lr"] for row in s["history"]]
    assert lrs == pytest.approx([0.004, 0.003, 0.002, 0.001] if anneal else [0.004] * 4)


@pytest.mark.parametrize("body_grad", [True, False])
def test_without_body_grad_the_message_trains_its_head_alone(body_grad):
    """--no-msg-body-grad: a loss on the message alone (its rate, what listeners make of it)
    leaves the body's gradient at zero and still moves the message head; the action head's
    loss reaches the body either way."""
    torch.manual_seed(0)
    p = AgentPolicy(PolicyConfig(obs_dim=6, n_actions=3, msg_dim=4, hidden=16))
    obs = torch.randn(8, 6)
    h, z, _ = p.speak(obs, None, body_grad)
    z.pow(2).sum().backward(retain_graph=True)
    body, head = p.body[0].weight.grad, p.msg_head.weight.grad
    assert head is not None and head.abs().sum() > 0
    assert (body is not None and body.abs().sum() > 0) == body_grad
    p.zero_grad()
    p.act(h, z[:, None]).sum().backward()
    assert p.body[0].weight.grad.abs().sum() > 0


TINY_TJ = dict(env="tj-easy", algo="mappo", batch=8, rollout=4, updates=3, eval_every=3, hidden=16, seed=3,
               device="cpu")


def _first_run(tmp_path: Path, **changes) -> str:
    """Three MAPPO updates of TINY_TJ (with `changes`) written to tmp_path/first -> its
    checkpoint's path."""
    (tmp_path / "first").mkdir()
    train(TrainConfig(**{**TINY_TJ, **changes}), tmp_path / "first", progress=False)
    return str(tmp_path / "first" / "checkpoint.pt")


def test_a_continued_run_goes_on_with_the_critic_priors_and_value_units(tmp_path):
    """--init carries the critic (where its reward columns fit), the learned rate priors and
    MAPPO's value normalizer: the continued run's normalizer holds the first run's history
    (its weight grows on from the saved one instead of restarting at 1 - beta), and a run
    with other reward columns gets a new critic."""
    base, init = TINY_TJ, _first_run(tmp_path)
    first = torch.load(init, weights_only=True)["extra"]
    (tmp_path / "again").mkdir()
    carried = setup(TrainConfig(**{**base, "init": init}))
    assert all(torch.equal(carried.critic.state_dict()[k], v) for k, v in first["critic"].items())
    fresh = setup(TrainConfig(**base)).layers[0].prior.logits
    for layer, prior in zip(carried.layers, first["priors"]):
        assert torch.equal(layer.prior.logits.detach(), prior) and not torch.equal(prior, fresh.detach())
    team = setup(TrainConfig(**{**base, "init": init, "team_reward": True})).critic.state_dict()
    assert team["net.2.weight"].shape[0] == 1 != first["critic"]["net.2.weight"].shape[0]
    train(TrainConfig(**{**base, "init": init, "updates": 1, "eval_every": 1}), tmp_path / "again", progress=False)
    again = torch.load(tmp_path / "again" / "checkpoint.pt", weights_only=True)["extra"]["value_norm"]
    beta = 0.99999
    assert float(first["value_norm"]["weight"]) == pytest.approx(1 - beta**3, rel=1e-3)
    assert float(again["weight"]) == pytest.approx(1 - beta**4, rel=1e-3)


@pytest.mark.parametrize("algo", ["a2c", "mappo"])
@pytest.mark.parametrize("body_grad", [True, False])
def test_the_trainers_pass_msg_body_grad_to_the_speakers(algo, body_grad):
    """The rate loss alone, through each trainer's own forward pass (A2C's communicate,
    MAPPO's loss with no advantage, entropy or value term): it reaches the body only with
    msg_body_grad."""
    from agents.train import communicate

    cfg = TrainConfig(algo=algo, batch=16, rollout=3, hidden=16, msg_body_grad=body_grad, entropy_coef=0.0,
                      value_coef=0.0)
    policies, critic, layers, peers, data = _rollout(cfg, batched=False)
    if algo == "a2c":
        _, _, rate, _, _ = communicate(policies, layers, data.obs[0], [None] * cfg.agents, cfg, 0)
        rate.sum().backward()
    else:
        zero = torch.zeros_like(data.values)
        loss, _ = mappo.ppo_loss(policies, layers, critic, data, zero, zero, torch.arange(cfg.batch), peers, 1.0,
                                 False, cfg)
        loss.backward()
    for p in policies:
        assert p.msg_head.weight.grad.abs().sum() > 0
        assert (p.body[0].weight.grad is not None and p.body[0].weight.grad.abs().sum() > 0) == body_grad


def test_a_critic_in_other_units_is_not_carried(tmp_path):
    """A MAPPO checkpoint whose critic learned normalized returns but which keeps no
    normalizer (or an A2C run continuing it, whose returns are raw) starts a new critic
    and says so."""
    base, init = TINY_TJ, _first_run(tmp_path)
    ck = torch.load(init, weights_only=True)
    saved = ck["extra"]["critic"]
    assert setup(TrainConfig(**{**base, "init": init})).notes == ()
    del ck["extra"]["value_norm"]
    torch.save(ck, tmp_path / "no-norm.pt")
    for cfg in (TrainConfig(**{**base, "init": str(tmp_path / "no-norm.pt")}),
                TrainConfig(**{**base, "algo": "a2c", "init": init})):
        s = setup(cfg)
        assert not torch.equal(s.critic.state_dict()["net.0.weight"], saved["net.0.weight"])
        assert "value_norm" not in s.carried and any("no critic that fits" in n for n in s.notes)


@pytest.mark.parametrize("core,aggregate", [("mlp", "mean"), ("mlp", "attention"), ("gru", "mean"),
                                            ("gru", "attention"), ("transformer", "mean")])
def test_a_deafened_policy_acts_as_it_did_silenced_and_can_learn_to_listen(core, aggregate):
    """deafen(): whatever is heard, the actions are exactly those the policy chose before
    on zeros (with no peer, and with --no-comm, as before); the zeroed weights still get
    gradients, so listening can be learned back."""
    torch.manual_seed(1)
    p = AgentPolicy(PolicyConfig(obs_dim=6, n_actions=3, msg_dim=4, hidden=16, core=core, aggregate=aggregate))
    mute = AgentPolicy(PolicyConfig(obs_dim=6, n_actions=3, msg_dim=4, hidden=16, core=core, aggregate=aggregate,
                                    comm=False))
    h, heard, alone = torch.randn(8, 16), 3 * torch.randn(8, 5, 4), torch.zeros(8, 0, 4)
    silenced, solo, muted = (p.act(h, torch.zeros_like(heard)).detach(), p.act(h, alone).detach(),
                             mute.act(h, heard).detach())
    assert not torch.allclose(p.act(h, heard), silenced)
    p.deafen()
    mute.deafen()
    assert torch.equal(p.act(h, heard), silenced)
    assert torch.equal(p.act(h, alone), solo) and torch.equal(mute.act(h, heard), muted)
    p.act(h, heard).logsumexp(-1).sum().backward()
    weight, cols = ((p.mixer.embed.weight, slice(None)) if core == "transformer" else
                    (p.act_head[0].weight, slice(16, None)))
    assert (weight[:, cols] == 0).all()
    assert weight.grad[:, cols].abs().sum() > 0


@pytest.mark.parametrize("share", [False, True])
def test_deafen_continues_a_run_with_only_its_listening_zeroed(tmp_path, share):
    """--deafen with --init: every agent's continued policy equals the checkpoint's but for
    the weights that read heard messages, so it acts on any message as the saved one on none."""
    base = {**TINY_TJ, "share": share, "init": _first_run(tmp_path, share=share)}
    saved, deaf = setup(TrainConfig(**base)).policies, setup(TrainConfig(**{**base, "deafen": True})).policies
    hidden = TINY_TJ["hidden"]
    h, heard = torch.randn(4, hidden), torch.randn(4, 4, 4)
    for before_policy, policy in zip(saved, deaf):
        before = before_policy.state_dict()
        for name, value in policy.state_dict().items():
            if name == "act_head.0.weight":
                assert torch.equal(value[:, :hidden], before[name][:, :hidden]) and (value[:, hidden:] == 0).all()
                assert before[name][:, hidden:].abs().sum() > 0
            else:
                assert torch.equal(value, before[name]), name
        assert torch.equal(policy.act(h, heard), before_policy.act(h, torch.zeros_like(heard)))


def test_critic_warmup_trains_the_critic_alone_then_everything(tmp_path):
    """--critic-warmup 2: a run stopped after its first update keeps the policies, the
    learned steps and the prior it started from (its logged policy lr is 0) while its
    critic has moved; run on, the policies, steps and prior move."""
    cfg = TrainConfig(**{**TINY_TJ, "updates": 3, "eval_every": 1, "critic_warmup": 2, "learn_delta": True,
                         "lam": 0.1, "lam_warmup": 0.0})
    start = setup(cfg)
    runs, lrs = {}, {}
    for name, stop in (("held", lambda: True), ("on", lambda: False)):
        (tmp_path / name).mkdir()
        lrs[name] = [row["lr"] for row in train(cfg, tmp_path / name, progress=False, should_stop=stop)["history"]]
        runs[name] = torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)
    policy, critic = start.policies[0].state_dict(), start.critic.state_dict()
    prior = start.layers[0].prior.logits.detach()
    held, on = runs["held"], runs["on"]
    assert lrs["held"] == [0.0] and lrs["on"] == [0.0, 0.0, cfg.lr]
    assert all(torch.equal(held["state_dicts"][0][k], v) for k, v in policy.items())
    assert any(not torch.equal(held["extra"]["critic"][k], v) for k, v in critic.items())
    assert tuple(held["codec"]["deltas"][0]) == start.layers[0].delta
    assert torch.equal(held["extra"]["priors"][0], prior)
    assert any(not torch.equal(on["state_dicts"][0][k], v) for k, v in policy.items())
    assert tuple(on["codec"]["deltas"][0]) != start.layers[0].delta
    assert not torch.equal(on["extra"]["priors"][0], prior)


@pytest.mark.parametrize("warmup,algo,match", [(1, "a2c", "MAPPO's"), (3, "mappo", r"\[0, updates"),
                                               (-1, "mappo", r"\[0, updates")])
def test_critic_warmup_is_mappos_and_shorter_than_the_run(warmup, algo, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{**TINY_TJ, "algo": algo, "critic_warmup": warmup}).validate()
