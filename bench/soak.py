"""`ddcl bench soak`: many agent processes for many steps; nothing lost, memory flat.

One `ddcl up` of the goal env with N agents (every agent hears N - 1 peers each step),
sampled from outside every few seconds: each process's RSS and the steps done. At the
end it checks the broker's message identity (sent = delivered + dropped + rejected,
nothing dropped or rejected, one message per agent per step), fits each process's RSS
after the warm-up to a line (the slope, MB per 10^4 steps), and plots the step time and
the RSS over the run (samples in rss.jsonl as they come).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from agents.launcher import dies_with
from bench.common import table

WARMUP = 0.1  # the share of the run before the RSS fit starts: imports, caches, first episodes
SAMPLE_S = 2.0


def children(pid: int) -> dict[int, str]:
    """The processes `pid` started, named by their role (broker, sync, world, agent-K)."""
    found = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != pid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        words = [a.decode(errors="replace") for a in argv]
        role = next((w for w in ("broker", "sync", "world", "agent") if w in words), "?")
        if role == "agent" and "--id" in words:
            role = words[words.index("--id") + 1]
        found[int(entry)] = role
    return found


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of (step, MB), in MB per 10^4 steps."""
    if len(points) < 3:
        return float("nan")
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return 1e4 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else float("nan")


def steps_done(out: Path) -> int:
    try:
        with open(out / "metrics.jsonl", "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def run(agents: int = 16, steps: int = 100_000, batch: int = 1, out: Path = Path("runs/soak"), progress=print) -> dict:
    out = Path(out)
    cmd = [sys.executable, "-m", "ddcl", "up", "--env", "goal", "--agents", str(agents), "--batch", str(batch),
           "--steps", str(steps), "--deadline", "10", "--device", "cpu", "--out", str(out)]
    up = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                          preexec_fn=dies_with(os.getpid()))
    samples: dict[str, list[tuple[int, float]]] = {}
    start = time.monotonic()
    log = open(out / "rss.jsonl", "w")  # the samples as they come: a stopped soak keeps them
    try:
        while up.poll() is None:
            time.sleep(SAMPLE_S)
            step = steps_done(out)
            for pid, role in children(up.pid).items():
                if (mb := rss_mb(pid)) is not None and step:
                    samples.setdefault(role, []).append((step, mb))
                    log.write(json.dumps({"step": step, "role": role, "rss_mb": mb}) + "\n")
            log.flush()
            progress(f"  step {step}/{steps}, {time.monotonic() - start:.0f} s, broker "
                     f"{samples.get('broker', [(0, 0)])[-1][1]:.0f} MB")
    finally:
        log.close()
        if up.poll() is None:
            up.terminate()
            up.wait(30)
    if up.returncode != 0:
        raise RuntimeError(f"the soak run failed ({up.returncode}); see {out / 'logs'}")
    summary = json.loads((out / "summary.json").read_text())
    latency = [json.loads(line)["latency_s"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    # the fit covers the steps run, past the warm-up and before the last 1 %: the world's
    # end-of-run work (the desync analysis of every oracle log, 0.5 GB at 16 agents and
    # 10^5 steps) runs while its last metrics rows are still unwritten
    after, before = int(WARMUP * steps), int(0.99 * steps)
    fit = {role: slope([p for p in pts if after <= p[0] < before]) for role, pts in samples.items()}
    m = summary["messages"]
    report = {
        "agents": agents, "batch": batch, "steps": summary["steps"], "wall_s": time.monotonic() - start,
        "messages": m, "deadline_misses": sum(summary["deadline_misses"]),
        "identity": m["sent"] == m["delivered"] + m["dropped"] + m["rejected"],
        "lost": m["dropped"] + m["rejected"] + (agents * summary["steps"] - m["sent"]),
        "rss_first_mb": {r: pts[0][1] for r, pts in samples.items()},
        "rss_last_mb": {r: pts[-1][1] for r, pts in samples.items()},
        "rss_slope_mb_per_1e4": fit,
        "step_ms_median": 1e3 * statistics.median(latency),
        "bytes_per_step": summary["bytes_per_step"]["sum"]["total"],
    }
    (out / "soak.json").write_text(json.dumps(report, indent=2))
    plot(latency, samples, out / "soak.png", agents, batch)
    return report


def plot(latency: list[float], samples: dict, path: Path, agents: int, batch: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    width = max(1, len(latency) // 200)
    bins = [(i + width / 2, 1e3 * statistics.median(latency[i:i + width])) for i in range(0, len(latency), width)]
    ax1.plot([b[0] for b in bins], [b[1] for b in bins])
    ax1.set_ylabel(f"step time, ms (median of {width})")
    ax1.set_title(f"ddcl bench soak: goal, {agents} agents, B = {batch}")
    agent_roles = sorted(r for r in samples if r.startswith("agent-"))
    for role in ["broker", "world", "sync"] + agent_roles[:1]:
        if role in samples:
            pts = samples[role]
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], label=role if role in ("broker", "world", "sync")
                     else f"{role} (one of {len(agent_roles)})")
    ax2.set_ylabel("RSS, MB")
    ax2.set_xlabel("step")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def render(r: dict) -> str:
    roles = ["broker", "world", "sync"] + sorted((k for k in r["rss_slope_mb_per_1e4"] if k.startswith("agent-")),
                                                 key=lambda k: int(k.split("-")[1]))
    rows = [[role, r["rss_first_mb"][role], r["rss_last_mb"][role], r["rss_slope_mb_per_1e4"][role]]
            for role in roles if role in r["rss_first_mb"]]
    m = r["messages"]
    return "\n".join([
        f"goal, {r['agents']} agents, B = {r['batch']}: {r['steps']} steps in {r['wall_s']:.0f} s "
        f"(step median {r['step_ms_median']:.2f} ms, {r['bytes_per_step']:.1f} agent-message B/step)",
        f"messages: sent {m['sent']}, delivered {m['delivered']}, dropped {m['dropped']}, rejected {m['rejected']}; "
        f"identity holds: {r['identity']}; lost or unaccounted: {r['lost']}; deadline misses: {r['deadline_misses']}",
        "",
        table(["process", "RSS first MB", "RSS last MB", f"slope, {WARMUP:.0%}-99 % of steps, MB/1e4 steps"], rows),
    ])
