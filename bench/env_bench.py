"""`ddcl bench envs`: env steps per second of the batched torch envs, per device and B.

An env step here is one instance stepping once, so a call at B = 4096 counts 4096. The
same-run baselines are B = 1 on the same device (what batching buys) and, where CUDA is
present, the CPU at the same B.
"""

from __future__ import annotations

import platform
import time

import torch

from agents.envs import default_agents, make

from .common import table

ENVS = ("goal", "tj-easy", "tj-medium", "pp-easy", "pp-medium")


@torch.inference_mode()
def steps_per_s(name: str, batch: int, device: str, budget_s: float) -> float:
    env = make(name, batch, 0, default_agents(name), device=device)
    env.reset()
    actions = torch.zeros((batch, env.n_agents), dtype=torch.int64, device=device)
    for _ in range(5):
        env.step(actions)
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < budget_s:
        env.step(actions)
        calls += 1
    if device == "cuda":
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    return calls * batch / elapsed


def run(batches: tuple[int, ...] = (1, 256, 4096), budget_s: float = 0.5) -> str:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for name in ENVS:
        cpu = None
        for device in devices:
            rates = [steps_per_s(name, b, device, budget_s) for b in batches]
            cpu = cpu or rates
            rows.append([name, device] + [r / 1e3 for r in rates] + [rates[-1] / rates[0], rates[-1] / cpu[-1]])
    headers = (["env", "device"] + [f"B={b} k/s" for b in batches]
               + [f"B={batches[-1]} / B={batches[0]}", f"vs cpu at B={batches[-1]}"])
    lines = [f"machine: {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
             + (f", {torch.cuda.get_device_name()}" if "cuda" in devices else ", no CUDA"),
             "env steps/s in thousands (one instance stepping once is one step)", "",
             table(headers, rows)]
    return "\n".join(lines)
