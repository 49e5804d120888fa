"""`ddcl train`: A2C with a learned (centralized) value baseline; every agent's message goes
through the real DDCL channel (Philox dither, quantizer, straight-through gradient), and
the listener's policy gradient flows through z_hat into the speaker (DIAL/DDCL style).

Loss = policy + value_coef * value - entropy_coef * entropy + lam * rate bits per message.
Evaluation runs greedy episodes and encodes the messages for real with every codec:
bits per message are bytes on the wire, the surrogate is reported beside them. The final
range model (saved in the checkpoint, used by both ends) is refit to the trained policy's
message frequencies. With learn_delta each agent's layer also learns its quantization step
per dimension; the checkpoint carries the steps beside the range models.
Reads top to bottom: config, setup, rollout, update, evaluation, checkpoint.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from channel import codecs
from channel.codecs import CategoricalModel, stream_bits
from channel.rate import surrogate_bits
from channel.torch import DDCL

from .agent import pick_device
from .envs import make
from .policy import (CheckpointError, PolicyConfig, checkpoint_deltas, forget, init_policies, initial_states,
                     load_checkpoint, save_checkpoint)
from .sampling import generators, sample
from .train_config import TrainConfig

CALIBRATION_PSEUDO_COUNT = 0.01  # per symbol, added to the counted frequencies
EPOCH_SEED = 1  # training uses one fixed epoch; the networked run asks the sync service
PROGRESS_EVERY_S = 15.0  # live line between evaluations: often enough to see a run move, rarely enough not to flood a log

# DDCL steps key the dither: evaluation and calibration count theirs from far above any
# step training reaches, so neither replays a training step's dither nor the other's
EVAL_STEP_BASE = 10**9
CALIBRATION_STEP_BASE = 2 * 10**9
# Environment seeds are the run seed plus a prime (the 1,000th, 10,000th and 1,000,000th):
# each rollout gets instances of its own, none of them training's
CALIBRATION_SEED_OFFSET = 7919  # the rollout the final range model is refit on
EVAL_SEED_OFFSET = 104729  # the evaluations between updates
HELD_OUT_SEED_OFFSET = 15485863  # the final evaluation: instances no update and no earlier evaluation saw


class Critic(nn.Module):
    """Value of the joint observation: one for a team reward, one per agent where the env
    rewards each agent (Traffic Junction: each car its own)."""

    def __init__(self, n_inputs: int, hidden: int, n_values: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_inputs, hidden), nn.Tanh(), nn.Linear(hidden, n_values))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs.flatten(1))  # (B, n_values)


def channel_layers(cfg: TrainConfig, device, deltas: list | None = None, learn: bool = False) -> list[DDCL]:
    """Agent k's channel: the public DDCL layer, keyed by the run seed and EPOCH_SEED as
    the networked agents key theirs, with its own prior for the entropy/expected losses.
    Its steps: `deltas` (agent k's at k, as trained) where given, else cfg.delta; with
    `learn` (a training run's --learn-delta) it learns them on from there."""
    return [DDCL(cfg.msg_dim, delta=deltas[k] if deltas else cfg.delta, codec=cfg.codec, rate_loss=cfg.rate_loss,
                 run_seed=cfg.seed, epoch_seed=EPOCH_SEED, prior_radius=cfg.prior_radius,
                 learn_delta=learn).to(device) for k in range(cfg.agents)]


def fits(saved, mine: dict) -> bool:
    """Whether a checkpoint's tensors `saved` match `mine` name for name and shape for
    shape: --init checks a part whole before it loads any of it, so a part that does not
    fit starts anew instead of half loaded."""
    return (isinstance(saved, dict) and saved.keys() == mine.keys()
            and all(isinstance(saved[k], torch.Tensor) and saved[k].shape == v.shape for k, v in mine.items()))


def carry_priors(layers: list[DDCL], saved) -> bool:
    """A checkpoint's learned priors (agent k's at k) into the layers where they fit ->
    whether they did. A continued brief step that starts from the initial table prices
    what the cars learned to say near zero at a bit or more again, and its messages
    spread before they shrink back."""
    if not isinstance(saved, list) or any(layer.prior is None for layer in layers):
        return False
    mine = {k: layer.prior.logits for k, layer in enumerate(layers)}
    if not fits(dict(enumerate(saved)), mine):
        return False
    with torch.no_grad():
        for k, logits in mine.items():
            logits.copy_(saved[k])
    return True


def layer_deltas(layers: list[DDCL]) -> list:
    """Each agent's step as its layer quantizes now (a float, or one per dimension)."""
    return [layer.delta for layer in layers]


def delta_spread(deltas: list) -> list[list[float]]:
    """Per agent: the min, median and max of its per-dimension steps."""
    return [np.quantile(np.asarray(d, dtype=np.float64), [0, 0.5, 1]).tolist() for d in deltas]


def communicate(policies, layers, obs, states, cfg, step, silence: bool = False, rate: bool = True):
    """One round: every agent speaks through its DDCL layer and acts on what it heard
    (nothing, with `silence`: the no-communication ablation). Returns the next states;
    the rate loss (None without `rate`: evaluation does not price it)."""
    hs, z_hats, ms, rates, surrogates, nexts = [], [], [], [], [], []
    for k, (p, layer) in enumerate(zip(policies, layers)):
        h, z, state = p.speak(obs[:, k], states[k], cfg.msg_body_grad)
        z_hat = layer(z, step, k)
        hs.append(h)
        z_hats.append(z_hat)
        ms.append(layer.symbols())
        nexts.append(state)
        if rate:
            rates.append(layer.rate_loss("none"))
        surrogates.append(surrogate_bits(z.detach(), layer.delta))
    n = len(policies)
    logits = []
    for k, p in enumerate(policies):
        heard = torch.stack([z_hats[j] for j in range(n) if j != k], dim=1)  # (B, peers, D)
        if silence:
            heard = torch.zeros_like(heard)
        logits.append(p.act(hs[k], heard))
    return (torch.stack(logits, 1), torch.stack(ms, 1), torch.stack(rates, 1) if rate else None,
            torch.stack(surrogates, 1), nexts)


@torch.no_grad()
def evaluate(policies, layers, cfg: TrainConfig, seed: int, models: list[CategoricalModel] | None = None,
             silence: bool = False) -> dict:
    """Greedy episodes on cfg.batch fresh instances; real bits of every codec per agent."""
    device = next(policies[0].parameters()).device
    env = make(cfg.env, cfg.batch, seed, cfg.agents, device)
    obs = env.reset()
    states = initial_states(policies, cfg.batch, device)
    active = np.ones(cfg.batch, dtype=bool)
    success = np.zeros(cfg.batch, dtype=bool)
    length = np.full(cfg.batch, env.max_steps)  # steps taken: Predator-Prey's metric
    sent: list[list[np.ndarray]] = [[] for _ in range(cfg.agents)]  # per agent: (active, D) per step
    goals: list[np.ndarray] = []  # the goal toy's goal per active instance and step: bits per goal
    has_goals = hasattr(env, "goal_idx")
    first_goal = env.goal_idx.cpu().numpy() if has_goals else np.zeros(cfg.batch, int)
    surrogate = np.zeros(cfg.agents)
    count = 0
    for step in range(env.max_steps):
        logits, m, _, sur, states = communicate(policies, layers, obs, states, cfg, EVAL_STEP_BASE + step, silence,
                                                rate=False)
        m = m.cpu().numpy().astype(np.int64)
        for k in range(cfg.agents):
            sent[k].append(m[active, k])
        if has_goals:
            goals.append(env.goal_idx.cpu().numpy()[active])
        surrogate += sur[torch.from_numpy(active).to(device)].sum(0).cpu().numpy()
        count += int(active.sum())
        obs, _, done, succ = env.step(logits.argmax(-1))
        states = [forget(s, done) for s in states]
        done, succ = done.cpu().numpy(), succ.cpu().numpy()
        success |= active & succ
        length[active & done] = step + 1
        active &= ~done
        if not active.any():
            break
    if models is None:
        models = ([layer.export_model() for layer in layers] if layers[0].prior is not None else
                  calibrate(policies, cfg, seed + CALIBRATION_SEED_OFFSET, layer_deltas(layers)))
    result = {"success_rate": float(success.mean()), "episode_steps": float(length.mean()), "messages": count,
              "agents": [],
              "success_by_goal": {int(g): float(success[first_goal == g].mean()) for g in np.unique(first_goal)}}
    for k in range(cfg.agents):
        coders = {name: codecs.get(name, model=models[k]) if name == "range" else codecs.get(name)
                  for name in codecs.NAMES}
        per_codec = {name: sum(stream_bits(c, batch) for batch in sent[k]) / count for name, c in coders.items()}
        per_goal = {}
        if has_goals:
            all_m, all_g = np.concatenate(sent[k]), np.concatenate(goals)
            for g in np.unique(all_g):
                sel = all_m[all_g == g]
                per_goal[int(g)] = stream_bits(coders[cfg.codec], sel) / len(sel)
        result["agents"].append({"bits_per_message": per_codec, "surrogate_bits": float(surrogate[k] / count),
                                 "bits_per_goal": per_goal})
    result["models"] = [m.to_dict() for m in models]
    return result


@torch.no_grad()
def calibrate(policies, cfg: TrainConfig, seed: int, deltas: list | None = None) -> list[CategoricalModel]:
    """The range codec's shared model, fit to the policies as they are (and to their
    trained `deltas`): per-agent, per-dimension value frequencies from a calibration
    rollout (its own seed). A learned prior lags the policy it trains beside; the final
    model is refit this way."""
    device = next(policies[0].parameters()).device
    env = make(cfg.env, cfg.batch, seed, cfg.agents, device)
    layers = channel_layers(cfg, device, deltas)
    r = cfg.prior_radius
    # a small pseudo-count keeps every symbol codable without taxing each of many quiet dimensions
    counts = np.full((cfg.agents, cfg.msg_dim, 2 * r + 2), CALIBRATION_PSEUDO_COUNT)  # escape last
    obs = env.reset()
    states = initial_states(policies, cfg.batch, device)
    for step in range(env.max_steps):
        logits, m, _, _, states = communicate(policies, layers, obs, states, cfg, CALIBRATION_STEP_BASE + step,
                                              rate=False)
        m = m.cpu().numpy().astype(np.int64)
        idx = np.where(np.abs(m) <= r, m + r, 2 * r + 1)
        for k in range(cfg.agents):
            for d in range(cfg.msg_dim):
                np.add.at(counts[k, d], idx[:, k, d], 1)
        obs, _, done, _ = env.step(logits.argmax(-1))
        states = [forget(s, done) for s in states]
    return [CategoricalModel(-r, counts[k]) for k in range(cfg.agents)]


def held_out(policies, cfg: TrainConfig, seed: int, deltas: list | None = None) -> tuple[dict, dict]:
    """The final evaluation, on instances no update saw: the range model refit on a
    calibration rollout of its own, then cfg.batch greedy episodes on held-out instances
    with messages and with them silenced (steps: `deltas` as trained, else cfg.delta).
    `ddcl evaluate` reruns it on a checkpoint."""
    layers = channel_layers(cfg, next(policies[0].parameters()).device, deltas)
    models = calibrate(policies, cfg, seed + CALIBRATION_SEED_OFFSET, deltas)
    final = evaluate(policies, layers, cfg, seed + HELD_OUT_SEED_OFFSET, models=models)
    silent = evaluate(policies, layers, cfg, seed + HELD_OUT_SEED_OFFSET,
                      models=[CategoricalModel(0, [1, 1])] * cfg.agents, silence=True)
    return final, silent


def _trained_on(run: Path) -> str | None:
    """The kind of device the run trained on ('cpu', 'cuda'), from its summary (None when
    that is unreadable)."""
    try:
        return torch.device(json.loads((run / "summary.json").read_text())["device"]).type
    except (OSError, ValueError, KeyError, TypeError, RuntimeError):
        return None


def evaluate_run(run: Path, episodes: int | None = None, seed: int | None = None, device: str = "auto") -> dict:
    """`held_out` on a `ddcl train` folder's checkpoint: by default on the run's own batch
    and seed (which reproduces its final figures), or on `episodes` fresh instances."""
    run = Path(run)
    try:
        saved = json.loads((run / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{run} is not a `ddcl train` folder (config.json: {e})") from None
    cfg = TrainConfig(**{k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__})
    cfg.batch = episodes or cfg.batch
    cfg.seed = cfg.seed if seed is None else seed
    env = make(cfg.env, 1, 0, cfg.agents)
    _, policies, ck = load_checkpoint(run / "checkpoint.pt", cfg.env, env.obs_dim, env.n_actions, cfg.agents)
    dev = pick_device(device)
    deltas = checkpoint_deltas(ck)
    final, silent = held_out([p.to(dev).eval() for p in policies], cfg, cfg.seed, deltas)
    out = {"config": asdict(cfg), "final": final, "no_communication_success": silent["success_rate"],
           "device": dev.type, "trained_on": _trained_on(run)}
    if deltas is not None:
        out["deltas"], out["delta_spread"] = deltas, delta_spread(deltas)
    if cfg.env == "goal":
        out["goal_frequency_fit"] = goal_fit(final, cfg.codec)
    return out


def starting_point(cfg: TrainConfig, pcfg: PolicyConfig) -> tuple[list, list | None, dict]:
    """The policies of checkpoint cfg.init, which must have this run's shape, the steps
    they learned with --learn-delta (None if fixed): a continued run learns on from those,
    since the policies were trained on that grid; and the checkpoint's extra (its critic)."""
    saved, policies, ck = load_checkpoint(cfg.init, cfg.env, pcfg.obs_dim, pcfg.n_actions, cfg.agents)
    differ = [f"{k}={v} (this run: {getattr(pcfg, k)})" for k, v in asdict(saved).items() if getattr(pcfg, k) != v]
    if differ:
        raise CheckpointError(f"checkpoint {cfg.init} has {', '.join(differ)}; pass the same options to continue it")
    deltas = checkpoint_deltas(ck)
    if deltas is not None and not cfg.learn_delta:
        raise CheckpointError(f"checkpoint {cfg.init} learned its steps; continue it with --learn-delta")
    extra = ck.get("extra")
    return ([policies[0]] * cfg.agents if cfg.share else policies), deltas, extra if isinstance(extra, dict) else {}


def carry_critic(critic: Critic, extra: dict, normalized: bool) -> bool:
    """The checkpoint's critic into `critic` where it fits -> whether it did: the same
    agents, hidden and reward columns, and outputs in the same units (`normalized`: scaled
    by MAPPO's value normalizer, which the checkpoint must then carry too). A continued
    run that starts with an untrained critic, or one read in other units, spends its
    first updates on noise for advantages, and a trained policy drifts on it."""
    saved, config = extra.get("critic"), extra.get("train_config")
    if not isinstance(config, dict) or (config.get("algo") == "mappo" and bool(config.get("value_norm"))) != normalized:
        return False
    if normalized and not isinstance(extra.get("value_norm"), dict):
        return False
    if not fits(saved, critic.state_dict()):
        return False
    critic.load_state_dict(saved)
    return True


def continuation(layers: list[DDCL], value_norm: dict | None = None) -> dict:
    """What a run's checkpoint keeps for `--init` beside the policies and the critic: each
    layer's learned prior (None without one) and MAPPO's value normalizer."""
    priors = [None if layer.prior is None else layer.prior.logits.detach().cpu() for layer in layers]
    return {"priors": priors, **({"value_norm": value_norm} if value_norm else {})}


class Setup(NamedTuple):
    device: torch.device
    env: object  # cfg.batch instances of cfg.env, seeded with cfg.seed
    pcfg: PolicyConfig
    policies: list  # agent k's policy at index k (one module at every index with cfg.share)
    critic: Critic
    layers: list[DDCL]  # agent k's channel at index k
    per_agent: bool  # a value and an advantage per agent (else one for the team)
    carried: dict  # what cfg.init's checkpoint carries beside the policies that fits this run ({} without --init)
    notes: tuple  # what a continued run starts anew, for the trainer to say


def setup(cfg: TrainConfig) -> Setup:
    """Everything a run starts from, a function of cfg alone: the networked world and
    each learner process call this too, so every party starts from the same parameters
    (the critic's initialization follows the policies' on the global torch RNG)."""
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    env = make(cfg.env, cfg.batch, cfg.seed, cfg.agents, device)
    pcfg = PolicyConfig(env.obs_dim, env.n_actions, cfg.msg_dim, cfg.hidden, cfg.delta, cfg.core, cfg.aggregate,
                        comm=cfg.comm)
    start, deltas, carried = (starting_point(cfg, pcfg) if cfg.init else
                              (init_policies(pcfg, cfg.agents, cfg.seed, cfg.share), None, {}))
    policies = [p.to(device) for p in start]
    if cfg.deafen:  # a step that makes the messages cheap makes them noisy: actions that do not read them stay put
        for p in set(policies):  # shared: one module
            p.deafen()
    per_agent = getattr(env, "reward_per_agent", False) and not cfg.team_reward
    critic = Critic(cfg.agents * env.obs_dim, cfg.hidden, cfg.agents if per_agent else 1)
    notes = []
    if cfg.init and not carry_critic(critic, carried, cfg.algo == "mappo" and cfg.value_norm):
        carried = {k: v for k, v in carried.items() if k not in ("critic", "value_norm")}
        notes.append(f"{cfg.init} has no critic that fits this run (reward columns or value units differ): a new one")
    layers = channel_layers(cfg, device, deltas, learn=cfg.learn_delta)
    priced = any(layer.prior is not None for layer in layers)
    if cfg.init and priced and not carry_priors(layers, carried.get("priors")):
        notes.append(f"{cfg.init} has no rate prior that fits this run: it starts from the initial table")
    return Setup(device, env, pcfg, policies, critic.to(device), layers, per_agent, carried, tuple(notes))


def say(notes) -> None:
    """A continued run's notes (what it starts anew) on stderr, however quiet the run."""
    for note in notes:
        print(f"[train] {note}", file=sys.stderr, flush=True)


def step_reward(reward: torch.Tensor, per_agent: bool, batch: int) -> torch.Tensor:
    """One step's rewards as the critic values them: (B, N) per agent, or (B, 1) for the team."""
    if reward.ndim == 2 and not per_agent:
        reward = reward.sum(dim=1)
    return reward.reshape(batch, -1)


def advantages(critic, last_obs, rewards, dones, values, cfg: TrainConfig):
    """Discounted returns bootstrapped from the critic's value of the observation after
    the rollout, and the advantages (scaled to unit std over every agent's, with
    adv_norm) -> (returns, values, adv), each (T, B, 1 or N)."""
    with torch.no_grad():
        ret = critic(last_obs)
    returns = []
    for r, d in zip(reversed(rewards), reversed(dones)):
        ret = r + cfg.gamma * ret * (1 - d)
        returns.append(ret)
    returns = torch.stack(returns[::-1])
    values = torch.stack(values)
    adv = (returns - values).detach()
    if cfg.adv_norm:  # else the entropy bonus is nothing beside advantages of tens
        adv = adv / (adv.std() + 1e-8)
    return returns, values, adv


def adv_column(adv: torch.Tensor, k: int) -> torch.Tensor:
    """Agent k's advantages, (T, B): its own, or the team's when there is one column."""
    return adv[..., k if adv.shape[-1] > 1 else 0]


def lam_at(cfg: TrainConfig, update: int) -> float:
    """The rate weight at `update`: learn to talk, then to be brief."""
    return cfg.lam * min(1.0, update / max(cfg.lam_warmup * cfg.updates, 1))


def agent_loss(logp, adv, ent, rate, lam: float, cfg: TrainConfig) -> torch.Tensor:
    """Agent k's share of the loss from its (T, B) log-probabilities, advantages, action
    entropies and rate bits: its log-probability weighs its own advantage (the team's,
    when shared); the rate is the mean over all N agents' messages, 1/N of it each."""
    return -(logp * adv).mean() - cfg.entropy_coef * ent.mean() + lam * rate.mean() / cfg.agents


def train(cfg: TrainConfig, out: Path | None = None, progress=True, should_stop=lambda: False) -> dict:
    """Trains, evaluates on held-out instances, writes OUT. Stopped (`should_stop`, polled
    once per update), it ends the current update and still evaluates and writes what it has."""
    if cfg.algo == "mappo":
        from .mappo import train as train_mappo

        return train_mappo(cfg, out, progress, should_stop)
    cfg.validate()
    device, env, pcfg, policies, critic, layers, per_agent, _, notes = setup(cfg)
    say(notes)
    params = list({id(q): q for m in [*policies, critic] for q in m.parameters()}.values())  # shared: once
    prior_params = [q for layer in layers for q in layer.parameters()]  # the entropy/expected priors
    opt = torch.optim.Adam([{"params": params}, {"params": prior_params, "lr": cfg.prior_lr}], lr=cfg.lr)
    gens = generators(cfg.seed, range(cfg.agents), device)
    log = open(out / "train.jsonl", "w") if out else None
    board = tensorboard_writer(out)
    obs = env.reset()
    states = initial_states(policies, cfg.batch, device)
    episodes = successes = 0
    start = last_line = time.monotonic()
    step = 0
    history = []
    for update in range(1, cfg.updates + 1):
        logps, values, ents, rewards, dones, rates = [], [], [], [], [], []
        states = [s.detach() if s is not None else None for s in states]  # backprop through this rollout only
        for _ in range(cfg.rollout):
            logits, _, rate, _, states = communicate(policies, layers, obs, states, cfg, step)
            drawn = [sample(logits[:, k], gen) for k, gen in enumerate(gens)]
            actions, logp, ent = (torch.stack(x, 1) for x in zip(*drawn))  # (B, N) each
            values.append(critic(obs))
            obs, reward, done, success = env.step(actions)
            states = [forget(s, done) for s in states]
            logps.append(logp)
            ents.append(ent)
            rewards.append(step_reward(reward, per_agent, cfg.batch))
            dones.append(done.float()[:, None])
            rates.append(rate)
            episodes += done.sum()  # tensors: no device sync per step
            successes += success.sum()
            step += 1
        returns, values, adv = advantages(critic, obs, rewards, dones, values, cfg)
        logps, ents, rates = torch.stack(logps), torch.stack(ents), torch.stack(rates)  # (T, B, N)
        rate_mean = rates.mean()
        lam = lam_at(cfg, update)
        # the sum of each agent's own loss: what a networked learner computes alone
        loss = cfg.value_coef * (returns - values).pow(2).mean() + sum(
            agent_loss(logps[..., k], adv_column(adv, k), ents[..., k], rates[..., k], lam, cfg)
            for k in range(cfg.agents))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if progress and time.monotonic() - last_line >= PROGRESS_EVERY_S:
            print(live_line(update, cfg.updates, step * cfg.batch, time.monotonic() - start,
                            int(successes) / max(int(episodes), 1), float(rate_mean.detach())),
                  file=sys.stderr, flush=True)
            last_line = time.monotonic()
        if update % cfg.eval_every == 0 or update == cfg.updates:
            row = eval_row(policies, layers, cfg, update, step * cfg.batch, time.monotonic() - start,
                           int(successes) / max(int(episodes), 1), float(rate_mean.detach()))
            history.append(row)
            log_row(row, cfg, log, board, progress)
            episodes = successes = 0
            last_line = time.monotonic()
        if stopped(should_stop, update, cfg, progress):
            break
    return finish(out, cfg, pcfg, policies, critic, layers, history, update, time.monotonic() - start,
                  step * cfg.batch, device, log, board)


def stopped(should_stop, update: int, cfg: TrainConfig, progress: bool) -> bool:
    """Whether the run was asked to stop after `update` (and says so)."""
    if not should_stop():
        return False
    if progress:
        print(f"[train] stopping after update {update} of {cfg.updates}: evaluating and writing what it has",
              file=sys.stderr, flush=True)
    return True


def finish(out: Path | None, cfg: TrainConfig, pcfg: PolicyConfig, policies, critic, layers, history: list,
           updates_done: int, wall_s: float, env_steps: int, device, log, board, value_norm=None) -> dict:
    """The end of a run: its logs closed, the held-out evaluation, OUT written with what a
    continued run goes on from. `value_norm`: the MAPPO critic's normalizer state, which
    its outputs only mean something with."""
    if log:
        log.close()
    if board:
        board.close()
    summary = final_summary(policies, cfg, history, updates_done, wall_s, env_steps, device,
                            layer_deltas(layers) if cfg.learn_delta else None)
    if out:
        write_run(out, cfg, pcfg, policies, critic, summary, continuation(layers, value_norm))
    return summary


def final_summary(policies, cfg: TrainConfig, history: list, updates_done: int, wall_s: float, env_steps: int,
                  device, deltas: list | None = None) -> dict:
    """The held-out evaluation and the run's figures: summary.json. `deltas`: the learned
    steps (agent k's at k), which the checkpoint carries."""
    final, silent = held_out([p.eval() for p in policies], cfg, cfg.seed, deltas)
    summary = {"config": asdict(cfg), "final": final, "history": history, "updates_done": updates_done,
               "no_communication_success": silent["success_rate"], "wall_s": wall_s, "env_steps": env_steps,
               "env_steps_per_s": env_steps / wall_s, "device": str(device)}
    if deltas is not None:
        summary["deltas"], summary["delta_spread"] = deltas, delta_spread(deltas)
    if cfg.env == "goal":
        summary["goal_frequency_fit"] = goal_fit(final, cfg.codec)
    return summary


def eval_row(policies, layers, cfg: TrainConfig, update: int, env_steps: int, wall_s: float, train_success: float,
             rate_bits: float) -> dict:
    """A training-time evaluation (greedy, on instances of its own) as a train.jsonl row."""
    ev = evaluate([p.eval() for p in policies], layers, cfg, cfg.seed + EVAL_SEED_OFFSET)
    for p in policies:
        p.train()
    row = {"update": update, "env_steps": env_steps, "wall_s": wall_s, "train_success": train_success,
           "rate_loss_bits": rate_bits, "eval_success": ev["success_rate"], "eval_episode_steps": ev["episode_steps"],
           "bits": [a["bits_per_message"][cfg.codec] for a in ev["agents"]],
           "surrogate": [a["surrogate_bits"] for a in ev["agents"]]}
    if cfg.learn_delta:
        row["delta_spread"] = delta_spread(layer_deltas(layers))
    return row


def log_row(row: dict, cfg: TrainConfig, log, board, progress: bool) -> None:
    """An evaluation row to train.jsonl and TensorBoard (where open) and the terminal."""
    if log:
        log.write(json.dumps(row) + "\n")
        log.flush()
    if board:
        board.add_scalar("success/train", row["train_success"], row["env_steps"])
        board.add_scalar("success/eval", row["eval_success"], row["env_steps"])
        board.add_scalar("rate_loss_bits", row["rate_loss_bits"], row["env_steps"])
        for k, (bits, sur) in enumerate(zip(row["bits"], row["surrogate"])):
            board.add_scalar(f"bits_per_message/{cfg.codec}/agent{k}", bits, row["env_steps"])
            board.add_scalar(f"bits_per_message/surrogate/agent{k}", sur, row["env_steps"])
        for k, spread in enumerate(row.get("delta_spread", [])):
            for name, x in zip(("min", "median", "max"), spread):
                board.add_scalar(f"delta/{name}/agent{k}", x, row["env_steps"])
        board.flush()
    if progress:
        print(f"[train] update {row['update']}/{cfg.updates}  {row['env_steps'] / row['wall_s']:.0f} env steps/s  "
              f"train success {row['train_success']:.3f}  eval success {row['eval_success']:.3f}  "
              f"{cfg.codec} bits/msg {['%.2f' % b for b in row['bits']]}  "
              f"surrogate {['%.2f' % b for b in row['surrogate']]}"
              + (f"  delta min/median/max {[' / '.join('%.3g' % x for x in d) for d in row['delta_spread']]}"
                 if "delta_spread" in row else ""), file=sys.stderr, flush=True)


def write_run(out: Path, cfg: TrainConfig, pcfg: PolicyConfig, policies, critic: Critic, summary: dict,
              carry: dict | None = None) -> None:
    """OUT as `ddcl evaluate` and `ddcl up --checkpoint` read it: the policies with the
    final range models, the config and the summary. The critic rides in the checkpoint's
    extra (a networked run is checked against an in-process one by it too), with `carry`:
    more that `--init` goes on from (the value normalizer, the learned priors)."""
    models = summary["final"]["models"]
    # the learned steps travel with the models: both ends quantize with them, whatever the codec
    codec_spec = {"name": cfg.codec, "options": {"model": models[0]} if cfg.codec == "range" else {},
                  "models": models if cfg.codec == "range" else None, "deltas": summary.get("deltas")}
    save_checkpoint(out / "checkpoint.pt", cfg.env, pcfg, [p.cpu() for p in policies], codec_spec,
                    extra={"train_config": asdict(cfg), "critic": {k: v.cpu() for k, v in critic.state_dict().items()},
                           **(carry or {})})
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


def live_line(update: int, updates: int, env_steps: int, wall_s: float, success: float, rate_bits: float) -> str:
    """Between evaluations: where the run is, its pace, and the training batch's own figures
    (success since the last evaluation; the rate loss's bits, not real ones)."""
    eta = wall_s / update * (updates - update)
    return (f"[train] update {update}/{updates} ({update / updates:.0%})  {env_steps / wall_s:.0f} env steps/s  "
            f"eta {eta / 60:.1f} min  train success {success:.3f}  rate-loss bits {rate_bits:.2f}")


def tensorboard_writer(out: Path | None):
    """TensorBoard event files in OUT/tensorboard (`tensorboard --logdir OUT`); None without
    OUT, or where tensorboard is not installed (the `train` extra: the roles' container image
    goes without it, and train.jsonl holds the same rows)."""
    if out is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when writing
    except ImportError:
        print("[train] tensorboard is not installed (pip install 'ddcl-sim[train]'): no event files; "
              "train.jsonl has every row", file=sys.stderr, flush=True)
        return None
    return SummaryWriter(str(out / "tensorboard"))


def goal_fit(ev: dict, codec: str) -> dict:
    """Speaker's real bits per goal against goal probability: the paper's Pearson r."""
    from .envs.goal import GOAL_P

    per_goal = ev["agents"][0]["bits_per_goal"]
    g = sorted(per_goal)
    p = np.array([GOAL_P[i] for i in g])
    bits = np.array([per_goal[i] for i in g])
    ok = len(g) > 2 and bits.std() > 0
    r = float(np.corrcoef(p, bits)[0, 1]) if ok else float("nan")
    r_log = float(np.corrcoef(np.log(p), bits)[0, 1]) if ok else float("nan")
    shannon = float(-(GOAL_P * np.log2(GOAL_P)).sum())
    return {"goals": g, "probability": p.tolist(), "bits": bits.tolist(), "pearson_r": r, "pearson_r_log": r_log,
            "shannon_bound_bits": shannon, "codec": codec, "mean_bits": float((p * bits).sum() / p.sum()) if len(g) else math.nan}
