"""`ddcl bench scaling`: how the lockstep step grows with the number of agents, with the
broker's per-recipient bundles and without (each agent message forwarded on its own,
N(N-1) sends a step). Both runs of a configuration go back to back, so their ratio is
measured at the same moment of a noisy machine."""

from __future__ import annotations

import sys

from .common import table
from .net_bench import lockstep


WARMUP = 100  # steps before the measured ones: a 32-agent run's steps are slow enough that 300 cost minutes


def run(agents: tuple[int, ...] = (2, 4, 8, 16, 32), batches: tuple[int, ...] = (1, 64), steps: int = 200,
        device: str = "cpu") -> str:
    rows, base = [], {}
    for b in batches:
        for n in agents:
            single = lockstep(n, b, steps, device, bundle=False, warmup=WARMUP)
            bundled = lockstep(n, b, steps, device, bundle=True, warmup=WARMUP)
            base.setdefault(b, (single["p50"], bundled["p50"]))
            rows.append([n, b, n * (n - 1), n, single["p50"] * 1e3, bundled["p50"] * 1e3,
                         single["p50"] / bundled["p50"], single["p50"] / base[b][0], bundled["p50"] / base[b][1]])
            print(f"[bench scaling] {n} agents, B={b}: single {single['p50'] * 1e3:.2f} ms, bundled "
                  f"{bundled['p50'] * 1e3:.2f} ms", file=sys.stderr, flush=True)
    return "\n".join([
        f"goal env, untrained policies on {device}; each run steps {WARMUP} warm-up steps, then {steps} measured (p50)",
        "single: each agent message forwarded on its own; bundled: one message per recipient per step",
        "",
        table(["agents", "B", "single sends/step", "bundled sends/step", "single p50 ms", "bundled p50 ms",
               "single / bundled", "single / its N=2", "bundled / its N=2"], rows),
    ])
