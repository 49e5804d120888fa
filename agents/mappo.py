"""`ddcl train --algo mappo`: PPO with a centralized value (MAPPO), DDCL in the message path.

Each update collects `rollout` steps of `batch` env instances with the policies as they
are, then makes `ppo_epochs` passes over that data in `minibatches` minibatches of env
instances (whole rollouts each, so the GRU core replays its memory from the rollout's
start). Every pass recomputes the messages: each agent speaks, its message goes through
its own DDCL layer with the dither of the step it was sent at (the rollout's), the
listeners act on what they heard, and the clipped surrogate's gradient flows through
z_hat into the speaker, as in the A2C trainer. The value sees the joint observation;
advantages are GAE(gamma, gae_lambda).

Loss = sum over agents of (clipped surrogate - entropy_coef * entropy)
       + value_coef * value + lam * rate bits per message   (A2C's weighting, PPO's terms)

Evaluation, the final range model, the checkpoint and the run folder are the A2C
trainer's (agents/train.py), so `ddcl evaluate` and `ddcl up --checkpoint` read the run.
Reads top to bottom: the joint forward pass, rollout, advantages, loss, update, train.
"""

from __future__ import annotations

import sys
import time
from typing import NamedTuple

import torch
from torch import nn

from .policy import forget, initial_states
from .sampling import generators, sample
from .train import (PROGRESS_EVERY_S, eval_row, finish, fits, lam_at, live_line, log_row, say, setup,
                    step_reward, stopped, tensorboard_writer)
from .train_config import TrainConfig


def peer_index(n: int, device) -> torch.Tensor:
    """(N, N - 1): row k lists the agents k hears, in the A2C trainer's order."""
    return torch.tensor([[j for j in range(n) if j != k] for k in range(n)], dtype=torch.long, device=device)


def joint_forward(policies, layers, obs, states, step: int, peers, batched: bool, rows=None, batch: int = 0,
                  body_grad: bool = True):
    """One communication round of every agent on obs (b, N, obs_dim) -> (logits (b, N, A),
    rate bits (b, N), next states). With `batched` (one shared policy), all N agents run
    as one (b * N) batch through one module; else a Python loop over agents. `rows`: the
    minibatch's env instances among `batch`, whose dither they must draw. `body_grad`:
    AgentPolicy.speak's."""
    b, n = obs.shape[:2]
    if batched:
        p = policies[0]
        state = None if states[0] is None else torch.stack(states, 1).flatten(0, 1)
        h, z, state = p.speak(obs.flatten(0, 1), state, body_grad)
        h, z = h.view(b, n, -1), z.view(b, n, -1)
        states = [None] * n if state is None else list(state.view(b, n, -1).unbind(1))
    else:
        spoken = [p.speak(obs[:, k], states[k], body_grad) for k, p in enumerate(policies)]
        h, z = torch.stack([s[0] for s in spoken], 1), torch.stack([s[1] for s in spoken], 1)
        states = [s[2] for s in spoken]
    z_hats, rates = [], []
    for k, layer in enumerate(layers):
        zk = z[:, k]
        if rows is not None:  # the dither runs over the whole batch in order: put the rows where they were
            zk = zk.new_zeros(batch, zk.shape[-1]).index_copy(0, rows, zk)
        z_hat, rate = layer(zk, step, k), layer.rate_loss("none")
        z_hats.append(z_hat if rows is None else z_hat[rows])
        rates.append(rate if rows is None else rate[rows])
    heard = torch.stack(z_hats, 1)[:, peers]  # (b, N, N - 1, D)
    if batched:
        logits = policies[0].act(h.flatten(0, 1), heard.flatten(0, 1)).view(b, n, -1)
    else:
        logits = torch.stack([p.act(h[:, k], heard[:, k]) for k, p in enumerate(policies)], 1)
    return logits, torch.stack(rates, 1), states


class ValueNorm:
    """Running mean and std of the value targets, per value column (MAPPO's ValueNorm:
    debiased exponential averages, beta close to 1: nearly the whole history)."""

    def __init__(self, n_values: int, device, beta: float = 0.99999):
        self.beta = beta
        self.mean = torch.zeros(n_values, device=device)
        self.mean_sq = torch.zeros(n_values, device=device)
        self.weight = torch.zeros((), device=device)

    def update(self, targets: torch.Tensor) -> None:
        flat = targets.reshape(-1, targets.shape[-1])
        self.mean.mul_(self.beta).add_((1 - self.beta) * flat.mean(0))
        self.mean_sq.mul_(self.beta).add_((1 - self.beta) * flat.pow(2).mean(0))
        self.weight.mul_(self.beta).add_(1 - self.beta)

    def _stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.mean / self.weight.clamp(min=1e-5)
        var = (self.mean_sq / self.weight.clamp(min=1e-5) - mean.pow(2)).clamp(min=1e-2)
        return mean, var.sqrt()

    def _tensors(self) -> dict:
        return {"mean": self.mean, "mean_sq": self.mean_sq, "weight": self.weight}

    def state(self) -> dict:
        """What a checkpoint keeps: the critic's outputs are in these units."""
        return {k: v.cpu() for k, v in self._tensors().items()}

    def carry(self, saved) -> bool:
        """A checkpoint's `state()` into this one where it fits -> whether it did."""
        mine = self._tensors()
        if not fits(saved, mine):
            return False
        for k, v in mine.items():
            v.copy_(saved[k])
        return True

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats()
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        if not self.weight:  # nothing seen yet: the critic's output as it is
            return x
        mean, std = self._stats()
        return x * std + mean


class Rollout(NamedTuple):
    obs: torch.Tensor  # (T, B, N, obs_dim)
    actions: torch.Tensor  # (T, B, N)
    logp: torch.Tensor  # (T, B, N): the acting policy's
    values: torch.Tensor  # (T, B, V): V = N per-agent values or 1 for the team
    rewards: torch.Tensor  # (T, B, V)
    dones: torch.Tensor  # (T, B): the episode ended at this step (the next obs starts a new one)
    steps: list  # the DDCL step of each t: the dither its messages were drawn with
    states: list  # each agent's memory at the rollout's start (None for memoryless cores)
    last_obs: torch.Tensor  # (B, N, obs_dim): after the last step, for the bootstrap


@torch.no_grad()
def collect(env, obs, states, policies, layers, critic, norm: ValueNorm | None, gens, peers, step: int, per_agent: bool,
            batched: bool, cfg: TrainConfig):
    """cfg.rollout steps of every instance -> (Rollout, obs, states, episodes, successes)."""
    start = [None if s is None else s.clone() for s in states]
    buf = {k: [] for k in ("obs", "actions", "logp", "values", "rewards", "dones")}
    steps, episodes, successes = [], 0, 0
    for t in range(cfg.rollout):
        logits, _, states = joint_forward(policies, layers, obs, states, step + t, peers, batched)
        drawn = [sample(logits[:, k], gen) for k, gen in enumerate(gens)]  # each agent its own generator
        actions, logp, _ = (torch.stack(x, 1) for x in zip(*drawn))
        buf["obs"].append(obs)
        value = critic(obs)
        buf["values"].append(norm.denormalize(value) if norm else value)
        obs, reward, done, success = env.step(actions)
        states = [forget(s, done) for s in states]
        buf["actions"].append(actions)
        buf["logp"].append(logp)
        buf["rewards"].append(step_reward(reward, per_agent, cfg.batch))
        buf["dones"].append(done.float())
        steps.append(step + t)
        episodes += done.sum()  # tensors: no device sync per step
        successes += success.sum()
    data = Rollout(**{k: torch.stack(v) for k, v in buf.items()}, steps=steps, states=start, last_obs=obs)
    return data, obs, states, episodes, successes


@torch.no_grad()
def gae(critic, norm: ValueNorm | None, data: Rollout, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimates and the value targets -> (adv, returns), (T, B, V)."""
    next_value = critic(data.last_obs)
    next_value = norm.denormalize(next_value) if norm else next_value
    adv = torch.zeros_like(data.values)
    last = torch.zeros_like(next_value)
    for t in reversed(range(cfg.rollout)):
        alive = 1.0 - data.dones[t][:, None]
        delta = data.rewards[t] + cfg.gamma * next_value * alive - data.values[t]
        last = delta + cfg.gamma * cfg.gae_lambda * alive * last
        adv[t] = last
        next_value = data.values[t]
    returns = adv + data.values
    if cfg.adv_norm:  # every agent's advantages of the update together, as MAPPO normalizes them
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    return adv, returns


def ppo_loss(policies, layers, critic, data: Rollout, adv, targets, rows, peers, lam: float, batched: bool,
             cfg: TrainConfig) -> tuple[torch.Tensor, dict]:
    """The loss on the env instances `rows` (whole rollouts), recomputed with the policies
    as they are now, the critic fit to `targets` (the returns, normalized with value_norm)
    -> (loss, figures)."""
    batch = data.obs.shape[1]
    states = [None if s is None else s[rows] for s in data.states]
    logps, ents, rates = [], [], []
    for t, step in enumerate(data.steps):
        logits, rate, states = joint_forward(policies, layers, data.obs[t, rows], states, step, peers, batched,
                                             rows=None if len(rows) == batch else rows, batch=batch,
                                             body_grad=cfg.msg_body_grad)
        dist = torch.distributions.Categorical(logits=logits)
        logps.append(dist.log_prob(data.actions[t, rows]))
        ents.append(dist.entropy())
        rates.append(rate)
        states = [forget(s, data.dones[t, rows].bool()) for s in states]
    logp, ent, rate = torch.stack(logps), torch.stack(ents), torch.stack(rates)  # (T, b, N)
    log_ratio = logp - data.logp[:, rows]
    ratio = log_ratio.exp()
    a = adv[:, rows]  # (T, b, V): a team column broadcasts over the agents
    surrogate = torch.max(-a * ratio, -a * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef))
    value = critic(data.obs[:, rows].flatten(0, 1)).view_as(targets[:, rows])
    value_loss = (value - targets[:, rows]).pow(2).mean()
    # the sum of each agent's own policy loss, as the A2C trainer weighs them; rate: the mean over messages
    policy_loss = surrogate.mean((0, 1)).sum() - cfg.entropy_coef * ent.mean((0, 1)).sum()
    loss = policy_loss + cfg.value_coef * value_loss + lam * rate.mean()
    with torch.no_grad():
        figures = {"loss": float(loss), "value_loss": float(value_loss), "entropy": float(ent.mean()),
                   "approx_kl": float(((ratio - 1) - log_ratio).mean()),
                   "clip_fraction": float(((ratio - 1).abs() > cfg.clip_coef).float().mean()),
                   "rate_bits": float(rate.mean())}
    return loss, figures


def update(policies, layers, critic, norm: ValueNorm | None, opt, params, data: Rollout, lam: float, peers,
           shuffle: torch.Generator, batched: bool, cfg: TrainConfig) -> dict:
    """ppo_epochs passes over the rollout in minibatches of env instances -> the last
    minibatch's figures (and the passes made: target_kl may end them early)."""
    adv, returns = gae(critic, norm, data, cfg)
    if norm:
        norm.update(returns)
        returns = norm.normalize(returns)
    batch = data.obs.shape[1]
    figures = {}
    for epoch in range(cfg.ppo_epochs):
        # one minibatch is the whole batch in its own order: its dither needs no placing
        order = (torch.randperm(batch, generator=shuffle) if cfg.minibatches > 1 else torch.arange(batch)).to(
            data.obs.device)
        for rows in order.chunk(cfg.minibatches):
            loss, figures = ppo_loss(policies, layers, critic, data, adv, returns, rows, peers, lam, batched, cfg)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
        if cfg.target_kl and figures["approx_kl"] > cfg.target_kl:
            break
    figures["epochs"] = epoch + 1
    return figures


def train(cfg: TrainConfig, out=None, progress=True, should_stop=lambda: False, batched: bool | None = None) -> dict:
    """As agents.train.train, with PPO's update. `batched`: run the agents as one batch
    (default: with --share, where they hold one module)."""
    cfg.validate()
    device, env, pcfg, policies, critic, layers, per_agent, carried, notes = setup(cfg)
    say(notes)
    batched = cfg.share if batched is None else batched
    if batched and any(p is not policies[0] for p in policies):
        raise ValueError("batched agents need one shared policy (--share)")
    policy_params = list({id(q): q for p in policies for q in p.parameters()}.values())  # shared: once
    prior_params = [q for layer in layers for q in layer.parameters()]  # the priors and learned steps
    critic_params = list(critic.parameters())
    params = policy_params + critic_params
    opt = torch.optim.Adam([{"params": policy_params}, {"params": critic_params},
                            {"params": prior_params, "lr": cfg.prior_lr}], lr=cfg.lr, eps=1e-5)
    gens = generators(cfg.seed, range(cfg.agents), device)
    shuffle = torch.Generator().manual_seed(cfg.seed)  # minibatch order, on the CPU
    peers = peer_index(cfg.agents, device)
    norm = ValueNorm(critic.net[-1].out_features, device) if cfg.value_norm else None
    if norm and cfg.init and not norm.carry(carried.get("value_norm")):  # the critic's units start anew
        say([f"{cfg.init} has no value normalizer for this critic: a new one"])
    log = open(out / "train.jsonl", "w") if out else None
    board = tensorboard_writer(out)
    obs = env.reset()
    states = initial_states(policies, cfg.batch, device)
    episodes = successes = 0
    start = last_line = time.monotonic()
    step = 0
    history = []
    for upd in range(1, cfg.updates + 1):
        # annealed: small late steps, since at a constant rate a learned policy can be unlearned
        lr = cfg.lr * (1 - (upd - 1) / cfg.updates) if cfg.anneal_lr else cfg.lr
        # the critic learns alone: the policies, steps and priors hold (their gradients still
        # fill Adam's moments and count in the norm clip, as in the updates after)
        held = upd <= cfg.critic_warmup
        for group, rate in zip(opt.param_groups, (0.0 if held else lr, lr, 0.0 if held else cfg.prior_lr)):
            group["lr"] = rate
        data, obs, states, n_ep, n_succ = collect(env, obs, states, policies, layers, critic, norm, gens, peers, step,
                                                  per_agent, batched, cfg)
        step += cfg.rollout
        episodes, successes = episodes + n_ep, successes + n_succ
        figures = update(policies, layers, critic, norm, opt, params, data, lam_at(cfg, upd), peers, shuffle, batched,
                         cfg)
        if progress and time.monotonic() - last_line >= PROGRESS_EVERY_S:
            print(live_line(upd, cfg.updates, step * cfg.batch, time.monotonic() - start,
                            int(successes) / max(int(episodes), 1), figures["rate_bits"]),
                  file=sys.stderr, flush=True)
            last_line = time.monotonic()
        if upd % cfg.eval_every == 0 or upd == cfg.updates:
            row = eval_row(policies, layers, cfg, upd, step * cfg.batch, time.monotonic() - start,
                           int(successes) / max(int(episodes), 1), figures["rate_bits"])
            row.update({k: v for k, v in figures.items() if k != "rate_bits"}, lr=opt.param_groups[0]["lr"])
            history.append(row)
            log_row(row, cfg, log, board, progress)
            episodes = successes = 0
            last_line = time.monotonic()
        if stopped(should_stop, upd, cfg, progress):
            break
    return finish(out, cfg, pcfg, policies, critic, layers, history, upd, time.monotonic() - start, step * cfg.batch,
                  device, log, board, norm.state() if norm else None)

