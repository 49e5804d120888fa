"""`ddcl bench train`: the goal toy trained once per rate loss; one table of the speaker's
real bits per message under every codec, success, the no-communication ablation,
Pearson r, wall time and env steps/s."""

from __future__ import annotations

import platform

import torch

from agents.train import train
from agents.train_config import RATE_LOSSES, TrainConfig

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
