"""`ddcl sweep ...`: grids of runs, each a CSV and PNGs, each resumable.

- `skew`: one networked run (`ddcl up`) per (skew, sync mode), the skewed agents' clocks
  off from step 0 and no beacons; a finished run (its summary.json) is not run again.
- `desync`: the robustness grid, each cell in one process (agents/desync_grid.py):
  skew on one agent and on all but one, drift against the beacon period, a clock jump
  with beacons lost, a stale seed across an epoch rotation; per sync mode and seed.
  Cells append to results.jsonl as they finish and a rerun skips them.
- `wall-clock`: networked runs on the wall clock with one agent's clock offset and
  drifting through libfaketime, with and without beacons.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from agents.launcher import ddcl

DRIFT_PPM = 50_000  # desync: one step in twenty, so a 150-step cell sees it
JUMP = 4  # desync: the jump scenario's clock jump, in steps
METRICS = ("success_rate", "episode_steps", "bits_per_message", "header_bytes", "desynced_fraction", "mean_error",
           "steps_to_recover")


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def write_csv(path: Path, rows: list[dict], fields: list[str] | None = None) -> None:
    """rows as a CSV with a header: `fields` (others in a row are left out), or the first row's keys."""
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields or list(rows[0]), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


# ---------------------------------------------------------------- networked skew sweep

def sweep_skew(args) -> int:
    from agents.desync_grid import checkpoint_env, targets

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = ["--env", args.env] if args.env else []
    n = 2
    if args.checkpoint:  # a checkpoint says which env and how many agents it plays
        name, n = checkpoint_env(args.checkpoint)
        env = ["--env", name, "--agents", str(n)]
    modes = args.sync.split(",")
    rows = []
    cells = [(mode, skew) for mode in modes for skew in args.values]
    for i, (mode, skew) in enumerate(cells):
        run = out / f"{mode.replace(':', '')}-{args.target}-skew{skew}"
        if not (run / "summary.json").exists():
            faults = out / f"faults-{args.target}-skew{skew}.toml"
            hit = targets(args.target, n) if skew else []
            faults.write_text("".join(f'[[fault]]\nstep = 0\nkind = "skew"\ntarget = "agent-{k}"\nvalue = {skew}\n'
                                      for k in hit))
            if (rc := _skew_run(run, faults, mode, env, args)) != 0:
                return rc
        s = json.loads((run / "summary.json").read_text())
        row = {"sync": mode, "skew": skew, "success_rate": s["success_rate"], "bits_per_message": s["bits_per_message"],
               "bytes_per_step": s["bytes_per_step"]["sum"]["total"],
               "desynced_fraction": s["desync"]["desynced_fraction"],
               "mean_error": s["desync"]["mean_error"]}
        rows.append(row)
        _progress(f"[sweep {i + 1}/{len(cells)}] {mode:<11} skew {skew:>3}: success {row['success_rate']}, "
                  f"bits/msg {row['bits_per_message']:.2f}, desynced {100 * row['desynced_fraction']:.0f}%")
    write_csv(out / "sweep_skew.csv", rows)
    plot_skew(rows, modes, out / "sweep_skew.png")
    print(f"wrote {out / 'sweep_skew.csv'} and {out / 'sweep_skew.png'}")
    return 0


def _skew_run(run: Path, faults: Path, mode: str, env: list[str], args) -> int:
    """One `ddcl up` of the skew sweep, no beacons (nothing corrects the skew); its status."""
    cmd = ddcl("up", "--steps", str(args.steps), "--batch", str(args.batch), "--codec", args.codec, *env,
               "--sync", mode, "--beacon-every", "0", "--out", str(run), "--faults", str(faults))
    if args.checkpoint:
        cmd += ["--checkpoint", args.checkpoint]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        print(f"run {run} failed:\n{r.stderr[-2000:]}", file=sys.stderr)
    return r.returncode


def pyplot():
    try:
        import matplotlib
    except ImportError as e:  # an extra: the roles (and their container image) go without it
        raise ImportError("the sweep's plots need matplotlib: pip install 'ddcl-sim[plots]'") from e

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_skew(rows: list[dict], modes: list[str], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for mode in modes:
        rs = [r for r in rows if r["sync"] == mode]
        x = [float(r["skew"]) for r in rs]
        axes[0].plot(x, [float(r["success_rate"] or 0) for r in rs], marker="o", label=mode)
        axes[1].plot(x, [float(r["bits_per_message"]) for r in rs], marker="o", label=mode)
        axes[2].plot(x, [float(r["bytes_per_step"]) for r in rs], marker="o", label=mode)
        axes[3].plot(x, [float(r["mean_error"]) for r in rs], marker="o", label=mode)
    xl = "skew (steps)"
    axes[0].set(xlabel=xl, ylabel="success rate", title="task success", ylim=(0, 1.02))
    axes[1].set(xlabel=xl, ylabel="bits per message (real payload)", title="payload bits", ylim=(0, None))
    axes[2].set(xlabel=xl, ylabel="agent-message bytes per step", title="wire bytes (headers incl.)", ylim=(0, None))
    axes[3].set(xlabel=xl, ylabel="mean |z_hat - ideal|", title="reconstruction error")
    for a in axes:
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- the desync grid

def grid(args) -> list:
    """Every cell, seed by seed: a sweep stopped early has whole seeds."""
    from agents.desync_grid import TARGETS, Cell, checkpoint_env

    cells = []
    policies = list(zip(args.checkpoints.split(","), args.batch))
    for seed in range(args.seeds):
        for ck, batch in policies:
            _, n = checkpoint_env(ck)
            for sync in args.sync.split(","):
                def cell(scenario, target="one", value=0.0, beacon_every=0, lost=0):
                    return Cell(ck, scenario, target, float(value), beacon_every, lost, sync, seed, args.steps, batch)

                for target in TARGETS if n > 2 else ("one",):
                    cells += [cell("skew", target, v) for v in args.skews if v or target == "one"]
                if args.only_skew:
                    continue
                cells += [cell("drift", value=DRIFT_PPM, beacon_every=b) for b in args.beacons]
                cells += [cell("jump", value=JUMP, beacon_every=b) for b in args.beacons]
                cells += [cell("jump", value=JUMP, beacon_every=10, lost=k) for k in args.lost if k]
                cells.append(cell("stale-seed", beacon_every=10))
    return cells


def sweep_desync(args) -> int:
    from agents.desync_grid import run_cell

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = {}
    if results.exists():
        for line in results.read_text().splitlines():
            try:
                rec = json.loads(line)
                done[rec["key"]] = rec
            except (ValueError, KeyError):  # a line torn by a kill mid-write: its cell runs again
                continue
    cells = grid(args)
    todo = [c for c in cells if c.key() not in done]
    _progress(f"[desync] {len(cells)} cells, {len(cells) - len(todo)} done before, {len(todo)} to run")
    t0 = time.monotonic()
    with open(results, "a") as fh:
        for i, c in enumerate(todo):
            r = run_cell(c, args.codec)
            rec = {"key": c.key(), **c.__dict__, **r}
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            done[c.key()] = rec
            left = (time.monotonic() - t0) / (i + 1) * (len(todo) - i - 1)
            _progress(f"[desync {i + 1}/{len(todo)}] {Path(c.checkpoint).stem} {c.scenario} {c.target} {c.value:g} "
                      f"beacons {c.beacon_every} lost {c.lost} {c.sync} seed {c.seed}: success "
                      f"{_fmt(r['success_rate'])}, desynced {100 * r['desynced_fraction']:.0f}%, "
                      f"eta {left / 60:.1f} min")
    rows = summarize([done[c.key()] for c in cells])
    path = out / "desync_grid.csv"
    write_csv(path, rows)
    figures = plot_desync(rows, out)
    print(f"wrote {results}, {path} and {', '.join(str(f) for f in figures)}")
    return 0


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def summarize(records: list[dict]) -> list[dict]:
    """One row per cell over its seeds: mean, min and max of each figure; the success
    against the synchronized run of the same policy and seed (implicit, no fault)."""
    synced = {(r["checkpoint"], r["seed"]): r["success_rate"] for r in records
              if r["scenario"] == "skew" and r["value"] == 0 and r["sync"] == "implicit"}
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        # what a noisier message costs where success holds: the steps an episode takes
        r["episode_steps"] = r["steps"] * r["batch"] / r["episodes"] if r["episodes"] else None
        key = (Path(r["checkpoint"]).stem, r["scenario"], r["target"], r["value"], r["beacon_every"], r["lost"],
               r["sync"])
        groups.setdefault(key, []).append(r)
    rows = []
    for (policy, scenario, target, value, beacons, lost, sync), rs in groups.items():
        row = {"policy": policy, "scenario": scenario, "target": target, "value": value, "beacon_every": beacons,
               "lost": lost, "sync": sync, "seeds": len(rs)}
        for m in METRICS:
            vals = [r[m] for r in rs if r[m] is not None]
            row[m] = statistics.fmean(vals) if vals else None
            row[m + "_min"] = min(vals) if vals else None
            row[m + "_max"] = max(vals) if vals else None
        row["recovered"] = f"{sum(r['steps_to_recover'] is not None for r in rs)}/{len(rs)}"
        diffs = [r["success_rate"] - synced[(r["checkpoint"], r["seed"])] for r in rs
                 if (r["checkpoint"], r["seed"]) in synced and r["success_rate"] is not None]
        row["success_vs_synced"] = statistics.fmean(diffs) if diffs else None
        row["success_vs_synced_worst"] = min(diffs) if diffs else None
        rows.append(row)
    return rows


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_desync(rows: list[dict], out: Path) -> list[Path]:
    plt = pyplot()
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    modes = list(dict.fromkeys(r["sync"] for r in rows))
    colors = {m: f"C{i}" for i, m in enumerate(modes)}
    return [_save(plt, plot(plt, rows, policies, modes, colors), out / name)
            for plot, name in ((_plot_skews, "desync_skew.png"), (_plot_protection, "desync_bits.png"),
                               (_plot_recovery, "desync_recovery.png"))]


def _plot_skews(plt, rows: list[dict], policies: list[str], modes: list[str], colors: dict):
    """Success against the synchronized run, episode length, desynced fraction and error
    against skew; a row per policy. Modes are drawn a little apart, to be told apart."""
    shown = {"success_vs_synced": ("points against synchronized", "task success", 100),
             "episode_steps": ("steps per episode", "episode length", 1),
             "desynced_fraction": ("desynced fraction", "decodes off", 1),
             "mean_error": ("mean |z_hat - ideal|", "reconstruction error", 1)}
    fig, axes = plt.subplots(len(policies), 4, figsize=(20, 3.6 * len(policies)), squeeze=False)
    for i, pol in enumerate(policies):
        for k, mode in enumerate(modes):
            for target, style in (("one", "-"), ("all-but-one", "--")):
                rs = sorted((r for r in rows if r["policy"] == pol and r["sync"] == mode and r["scenario"] == "skew"
                             and (r["target"] == target or r["value"] == 0)), key=lambda r: r["value"])
                if len(rs) < 2 or all(r["target"] == "one" for r in rs) and target != "one":
                    continue
                x = [r["value"] * (1 + 0.07 * (k - len(modes) / 2)) for r in rs]
                label = f"{mode}" + ("" if target == "one" else " (all but one)")
                for ax, (m, (_, _, scale)) in zip(axes[i], shown.items()):
                    lo, hi = ("success_vs_synced_worst", None) if m == "success_vs_synced" else (m + "_min", m + "_max")
                    y = [scale * r[m] for r in rs]
                    err = [[max(scale * (r[m] - r[lo]), 0) for r in rs],
                           [max(scale * (r[hi] - r[m]), 0) if hi else 0 for r in rs]]
                    ax.errorbar(x, y, yerr=err, marker="o", ms=3, capsize=2, ls=style, color=colors[mode], label=label)
        for ax, (m, (yl, t, _)) in zip(axes[i], shown.items()):
            ax.set(xlabel="skew (steps)", ylabel=yl, title=f"{pol}: {t}")
            ax.set_xscale("symlog", linthresh=1)
        axes[i][0].axhspan(-0.5, 0.5, color="grey", alpha=0.15, lw=0)
        axes[i][0].legend(fontsize=7)
    return fig


def _plot_protection(plt, rows: list[dict], policies: list[str], modes: list[str], colors: dict):
    """Protection against its cost: header bytes per frame, worst success loss over skews."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for j, pol in enumerate(policies):
        for mode in modes:
            rs = [r for r in rows if r["policy"] == pol and r["sync"] == mode and r["scenario"] == "skew"]
            worst = min(r["success_vs_synced"] for r in rs if r["success_vs_synced"] is not None)
            header = statistics.fmean(r["header_bytes"] for r in rs)
            axes[0].scatter(header, 100 * worst, color=colors[mode], marker="osd^v"[j % 5],
                            label=f"{pol} {mode}")
            every = [r for r in rows if r["policy"] == pol and r["sync"] == mode]
            axes[1].scatter(header, statistics.fmean(r["desynced_fraction"] for r in every), color=colors[mode],
                            marker="osd^v"[j % 5])
    axes[0].set(xlabel="header bytes per frame", ylabel="worst success change over skews (points)",
                title="what protection buys")
    axes[1].set(xlabel="header bytes per frame", ylabel="desynced fraction, mean over every cell",
                title="decodes off: skew, drift, jump, stale seed")
    axes[0].axhline(-0.5, color="grey", lw=0.8, ls=":")
    axes[0].legend(fontsize=6, ncol=2)
    return fig


def _plot_recovery(plt, rows: list[dict], policies: list[str], modes: list[str], colors: dict):
    """Recovery after a clock jump against the beacon period; drift's desync the same way."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for j, pol in enumerate(policies):
        for mode in modes:
            for ax, scen, m in ((axes[0], "jump", "steps_to_recover"), (axes[1], "drift", "desynced_fraction")):
                rs = sorted((r for r in rows if r["policy"] == pol and r["sync"] == mode and r["scenario"] == scen
                             and r["lost"] == 0 and r["beacon_every"]), key=lambda r: r["beacon_every"])
                pts = [(r["beacon_every"], r[m]) for r in rs if r[m] is not None]
                if pts:
                    ax.plot(*zip(*pts), marker="osd^v"[j % 5], color=colors[mode], label=f"{pol} {mode}")
    axes[0].set(xscale="log", xlabel="beacon period (steps)", ylabel="steps to recover",
                title=f"after a {JUMP}-step clock jump")
    axes[1].set(xscale="log", xlabel="beacon period (steps)", ylabel="desynced fraction",
                title=f"under {DRIFT_PPM:,} ppm of drift")
    axes[0].legend(fontsize=6)
    return fig


# ---------------------------------------------------------------- wall clock

FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


def sweep_wall_clock(args) -> int:
    """Per beacon period: a networked wall-clock run with agent-1 under libfaketime."""
    if not Path(FAKETIME_LIB).exists():
        print(f"error: {FAKETIME_LIB} is missing (the faketime package)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for beacons in args.beacons:
        run = out / f"beacons{beacons}"
        if not (run / "summary.json").exists() and (rc := _wall_clock_run(run, beacons, args)) != 0:
            print(f"run {run} failed: see {run / 'logs'}", file=sys.stderr)
            return rc
        rows.append(wall_row(run, beacons, args.tick))
        r = rows[-1]
        _progress(f"[wall-clock] beacons every {beacons}: agent-1 off by {r['mean_abs_offset']:.2f} steps on average, "
                  f"exact on {100 * r['exact_fraction']:.0f}% of steps, "
                  f"{r['beacon_bytes_per_step']:.1f} beacon bytes/step")
    write_csv(out / "wall_clock.csv", rows, [k for k in rows[0] if k != "offsets"])
    plot_wall(rows, args, out / "wall_clock.png")
    print(f"wrote {out / 'wall_clock.csv'} and {out / 'wall_clock.png'}")
    return 0


def _wall_clock_run(run: Path, beacons: int, args) -> int:
    """One run, its roles started here: agent-1 under libfaketime; the world's status."""
    from agents.launcher import ProcessGroup, free_port, wait_port

    (run / "logs").mkdir(parents=True, exist_ok=True)
    port = free_port()
    ep = f"tcp://127.0.0.1:{port}"
    group = ProcessGroup(run / "logs")
    try:
        group.start("broker", ddcl("broker", "serve", "--bind", ep, "--log-dir", str(run)))
        wait_port(port)
        group.start("sync", ddcl("sync", "serve", "--broker", ep, "--beacon-every", str(beacons)))
        # agent-1's time, and only its wall clock: its deadlines stay true
        fake = ["env", f"LD_PRELOAD={FAKETIME_LIB}", f"FAKETIME={args.faketime}", "FAKETIME_DONT_FAKE_MONOTONIC=1"]
        for k in range(2):
            agent = ddcl("agent", "--broker", ep, "--id", f"agent-{k}", "--device", "cpu")
            group.start(f"agent-{k}", fake + agent if k == 1 else agent)
        world = group.start("world", ddcl("world", "--broker", ep, "--steps", str(args.steps), "--clock", "wall",
                                          "--tick", str(args.tick), "--deadline", "30", "--batch", str(args.batch),
                                          "--beacon-every", str(beacons), "--out", str(run)))
        return world.wait()
    finally:
        group.stop(first=("world",), grace_s=10.0)


def wall_row(run: Path, beacons: int, tick: float) -> dict:
    """Agent-1's noise step against agent-0's, per world step (from agent-0's decodes of
    agent-1's frames), and what its beacons cost."""
    from agents.desync import decodes
    from broker import protocol
    from broker.sync import Schedule

    offsets = {}
    for step, sender, dst, tx, rx in decodes(run):
        if sender == 1 and dst == 0:
            offsets[step] = tx[0] - rx[0]  # agent-1's view less agent-0's
    s = json.loads((run / "summary.json").read_text())
    # a beacon as the sync service sends it (SEND, to all agents, the body) and as the
    # broker delivers it to each of the two agents (DELIVER, from sync, the body), with
    # ZMTP's 2 bytes of framing per frame
    body = len(protocol.pack({"op": protocol.BEACON, "ref_step": 1000, "ref_time": time.time(),
                              **Schedule(0, 1, 0).announcement(1000)}))
    per_beacon = (len(protocol.SEND) + len(protocol.ALL_AGENTS) + body + 3 * 2
                  + 2 * (len(protocol.DELIVER) + len(protocol.SYNC_ID) + body + 3 * 2))
    vals = list(offsets.values())
    return {"beacon_every": beacons, "steps": len(vals), "mean_abs_offset": statistics.fmean(abs(v) for v in vals),
            "max_abs_offset": max(abs(v) for v in vals), "exact_fraction": sum(v == 0 for v in vals) / len(vals),
            "desynced_fraction": s["desync"]["desynced_fraction"], "success_rate": s["success_rate"],
            "beacon_bytes_per_step": per_beacon / beacons if beacons else 0.0, "offsets": offsets}


def plot_wall(rows: list[dict], args, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for r in rows:
        steps = sorted(r["offsets"])
        ax.plot(steps, [r["offsets"][s] for s in steps], drawstyle="steps-post",
                label=f"beacons every {r['beacon_every']}" if r["beacon_every"] else "no beacons")
    ax.set(xlabel="world step", ylabel="agent-1's noise step - agent-0's",
           title=f"agent-1 under FAKETIME='{args.faketime}', tick {args.tick} s")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
