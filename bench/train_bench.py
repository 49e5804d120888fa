"""`ddcl bench train`: the goal toy trained once per rate loss; one table of the speaker's
real bits per message under every codec, success, the no-communication ablation,
Pearson r, wall time and env steps/s. `ddcl bench train-speed`: env steps/s of each
algorithm x core (`speed`), and of MAPPO's agents batched against its loop over them."""

from __future__ import annotations

import platform
import time

import torch

from agents import mappo
from agents.train import train
from agents.train_config import ALGOS, CORES, RATE_LOSSES, TrainConfig

from .common import table

# codelength needs one codec's length: rice, a real prefix code (range's is the entropy loss's)
CODELENGTH_CODEC = "rice"


def run(updates: int, batch: int, lam: float, msg_dim: int = 1, seed: int = 0, device: str = "auto",
        losses=RATE_LOSSES) -> str:
    rows = []
    for loss in losses:
        cfg = TrainConfig(rate_loss=loss, codec=CODELENGTH_CODEC if loss == "codelength" else "range",
                          updates=updates, batch=batch, lam=lam, msg_dim=msg_dim, lam_warmup=0.5, entropy_coef=0.05,
                          eval_every=updates, seed=seed, device=device)
        s = train(cfg, progress=False)
        f, fit = s["final"], s["goal_frequency_fit"]
        bits = f["agents"][0]["bits_per_message"]
        rows.append([loss, f["success_rate"], s["no_communication_success"], bits["float32"], bits["expgolomb"],
                     bits["rice"], bits["range"], f["agents"][0]["surrogate_bits"], fit["pearson_r"],
                     fit["pearson_r_log"], s["wall_s"], f"{s['env_steps_per_s']:.0f}"])
    head = (f"goal, {updates} updates x B={batch} x rollout 10, lam={lam}, seed {seed}; "
            f"device {s['device']}, torch {torch.__version__}, {platform.machine()}\n"
            f"speaker's real bits per message ({msg_dim} values), greedy evaluation on fresh episodes\n")
    return head + table(["rate loss", "success", "no-comm", "float32", "expgolomb", "rice", "range", "surrogate",
                         "r(p,bits)", "r(log p,bits)", "wall s", "env steps/s"], rows)


def _steps_per_s(cfg: TrainConfig, measured: int, batched: bool | None = None) -> float:
    """Env steps/s of `measured` updates of cfg: the first update (warm-up) and the last
    (it evaluates) are run but not timed. Times are taken where the trainer polls its stop
    hook, once after each update."""
    polls = []

    def poll() -> bool:
        polls.append(time.perf_counter())
        return False

    cfg.updates, cfg.eval_every = measured + 2, 10**9
    if batched is None:
        train(cfg, progress=False, should_stop=poll)
    else:
        mappo.train(cfg, progress=False, should_stop=poll, batched=batched)
    return measured * cfg.rollout * cfg.batch / (polls[measured] - polls[0])


def speed(env: str = "goal", batches=(512, 4096), cores=CORES, algos=ALGOS, measured: int = 3, share: bool = False,
          device: str = "cpu", seed: int = 0) -> str:
    """Env steps/s of each algorithm x core at each B, against the first of each (A2C + MLP
    by default) at that B in the same run; then MAPPO with the agents batched into one module against its loop over
    agents (one shared policy, so one module holds every agent)."""
    base = dict(env=env, share=share, device=device, seed=seed, msg_dim=4)
    rows, ref = [], {}
    for b in batches:
        for algo in algos:
            for core in cores:
                sps = _steps_per_s(TrainConfig(algo=algo, core=core, batch=b, **base), measured)
                ref.setdefault(b, sps)  # the first algo with the first core: the baseline
                rows.append([algo, core, b, f"{sps:.0f}", f"{sps / ref[b]:.2f}"])
    out = [table(["algo", "core", "B", "env steps/s", f"x {algos[0]}+{cores[0]}"], rows)]
    rows = []
    for b in batches:
        for core in cores:
            cfg = dict(algo="mappo", core=core, batch=b, **{**base, "share": True})
            loop = _steps_per_s(TrainConfig(**cfg), measured, batched=False)
            one = _steps_per_s(TrainConfig(**cfg), measured, batched=True)
            rows.append([core, b, f"{loop:.0f}", f"{one:.0f}", f"{one / loop:.2f}"])
    out.append(table(["core", "B", "loop over agents", "agents batched", "gain"], rows))
    head = (f"{env}, {TrainConfig(env=env).agents} agents, rollout {TrainConfig().rollout}, 4-value messages; "
            f"{measured} updates timed after one warm-up; mappo: {TrainConfig().ppo_epochs} epochs x "
            f"{TrainConfig().minibatches} minibatch; device {device}, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}, {platform.machine()}\n")
    return head + "\n\n".join(out)
