"""`ddcl sweep train-skew`: networked training (`ddcl up --train`) under clock faults.

One run per cell: a fault kind (a skew from step 0, the same skew from the middle
update, a drift with no correction, the same drift with beacon-like corrections), a
magnitude and a sync mode, each with the desync probe on (agents/learn_desync.py), and
one synchronized run they are all drawn against. A cell whose folder holds its
summary is not run again, so an interrupted sweep resumes where it stopped. Writes
train_skew.csv (a row per run) and train_skew_<kind>.png (learning curves: training
success, real bits per message and the gradient's bias, a row of panels per sync mode).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .sweep import pyplot, write_csv

KINDS = ("skew", "skew-mid", "drift")
SMOOTH = 10  # updates in the moving average of the training-success curves
TAIL = 0.2  # the last fraction of updates the "final" training figures average over


@dataclass(frozen=True)
class Cell:
    name: str
    kind: str  # "sync" or one of KINDS
    sync: str
    label: str  # the magnitude, as the plot's legend says it
    desync: dict


def cells(args) -> list[Cell]:
    mid = args.updates // 2 + 1
    out = [Cell("sync", "sync", "implicit", "synchronized", {})]
    for mode in args.sync.split(","):
        tag = mode.replace(":", "")
        for kind in args.kinds.split(","):
            if kind in ("skew", "skew-mid"):
                for v in args.skews:
                    start = mid if kind == "skew-mid" else 1
                    out.append(Cell(f"{tag}-{kind}{v}", kind, mode, f"skew {v}",
                                    {"sync": mode, "agent": args.agent, "skew": v, "from_update": start, "probe": True}))
            else:
                for every in (0, args.beacon_every):
                    label = f"{args.drift_ppm:g} ppm" + (f", beacon every {every}" if every else ", no beacon")
                    out.append(Cell(f"{tag}-drift{'-beacon' if every else ''}", kind, mode, label,
                                    {"sync": mode, "agent": args.agent, "drift_ppm": args.drift_ppm,
                                     "beacon_every": every, "probe": True}))
    return out


def sweep_train_skew(args) -> int:
    from agents.learn import train_up
    from agents.train_config import TrainConfig

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = dict(env="goal", msg_dim=1, codec="range", rate_loss="entropy", entropy_coef=0.05, lam=args.lam,
               lam_warmup=0.5, lr=args.lr, batch=args.batch, updates=args.updates, eval_every=args.updates,
               seed=args.seed, device="cpu")
    grid = cells(args)
    (out / "sweep.json").write_text(json.dumps({"config": cfg, "cells": [c.__dict__ for c in grid]}, indent=1))
    start, ran = time.monotonic(), 0
    for i, cell in enumerate(grid, 1):
        run = out / cell.name
        if (run / "summary.json").exists() and (run / "updates.jsonl").exists():
            print(f"[sweep] {i}/{len(grid)} {cell.name}: done before, kept", file=sys.stderr, flush=True)
            continue
        t = time.monotonic()
        rc = train_up(TrainConfig(**cfg), run, progress=False, desync=cell.desync)
        if rc != 0:
            print(f"[sweep] {cell.name} failed (status {rc}): see {run}/logs", file=sys.stderr)
            return rc
        ran += 1
        left = (time.monotonic() - start) / ran * sum(1 for c in grid[i:] if not (out / c.name / "summary.json").exists())
        r = row(cell, run, cfg["updates"])
        print(f"[sweep] {i}/{len(grid)} {cell.name}: success {r['train_success']:.3f} (held out "
              f"{r['heldout_success']:.3f}), {r['wire_bits']:.2f} bits/msg, desynced {100 * r['desynced']:.0f}%, "
              f"cos {fmt(r.get('cos_mean_1>0'))}; {time.monotonic() - t:.0f} s, about {left / 60:.0f} min left",
              file=sys.stderr, flush=True)
    rows = [row(c, out / c.name, cfg["updates"]) for c in grid]
    write_csv(out / "train_skew.csv", rows, list(dict.fromkeys(k for r in rows for k in r)))
    written = [out / "train_skew.csv"]
    for kind in args.kinds.split(","):
        if kind != "skew-mid" or args.skews:
            path = out / f"train_skew_{kind}.png"
            plot(grid, out, kind, args.sync.split(","), path, cfg["updates"])
            written.append(path)
    print("wrote " + ", ".join(map(str, written)))
    return 0


def fmt(x) -> str:
    return "-" if x is None else f"{x:.6f}"


def curves(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "updates.jsonl").read_text().splitlines()]


def row(cell: Cell, run: Path, updates: int) -> dict:
    """A run's figures: training success and bits over the last TAIL of its updates, the
    held-out (synchronized) success, and while the fault is in force the desynced
    fraction and per link the mean and lowest gradient cosine and the mean norm ratio."""
    rows = curves(run)
    summary = json.loads((run / "summary.json").read_text())
    tail = rows[-max(1, int(len(rows) * TAIL)):]
    won = sum(r["success"] * r["episodes"] for r in tail) / max(1, sum(r["episodes"] for r in tail))
    start = cell.desync.get("from_update", 1)
    active = [r for r in rows if r["update"] >= start]
    out = {"run": cell.name, "kind": cell.kind, "sync": cell.sync, "fault": cell.label,
           "from_update": start if cell.desync else "", "train_success": won,
           "heldout_success": summary["final"]["success_rate"],
           "wire_bits": sum(r["wire_bits"] for r in tail) / len(tail),
           "desynced": sum(r["desynced"] for r in active) / max(1, len(active))}
    for link in sorted(k[4:] for k in rows[0] if k.startswith("cos_")):
        cos = [r[f"cos_{link}"] for r in active if r.get(f"cos_{link}") is not None]
        ratio = [r[f"ratio_{link}"] for r in active if r.get(f"ratio_{link}") is not None]
        out[f"cos_mean_{link}"] = sum(cos) / len(cos) if cos else None
        out[f"cos_min_{link}"] = min(cos) if cos else None
        out[f"ratio_mean_{link}"] = sum(ratio) / len(ratio) if ratio else None
    return out


def smooth(values: list[float], weights: list[float]) -> list[float]:
    """Episode-weighted moving average over SMOOTH updates (an update ends few episodes)."""
    out = []
    for i in range(len(values)):
        v, w = values[max(0, i - SMOOTH + 1):i + 1], weights[max(0, i - SMOOTH + 1):i + 1]
        out.append(sum(a * b for a, b in zip(v, w)) / max(sum(w), 1))
    return out


def plot(grid: list[Cell], out: Path, kind: str, modes: list[str], path: Path, updates: int) -> None:
    plt = pyplot()
    base = curves(out / "sync")
    fig, axes = plt.subplots(len(modes), 3, figsize=(15, 3.2 * len(modes)), squeeze=False)
    for m, mode in enumerate(modes):
        ax = axes[m]
        x = [r["update"] for r in base]
        ax[0].plot(x, smooth([r["success"] for r in base], [r["episodes"] for r in base]), color="black",
                   lw=2, label="synchronized")
        ax[1].plot(x, [r["wire_bits"] for r in base], color="black", lw=2, label="synchronized")
        for cell in (c for c in grid if c.kind == kind and c.sync == mode):
            rs = curves(out / cell.name)
            x = [r["update"] for r in rs]
            ax[0].plot(x, smooth([r["success"] for r in rs], [r["episodes"] for r in rs]), label=cell.label)
            ax[1].plot(x, [r["wire_bits"] for r in rs], label=cell.label)
            link = next((k for k in ("cos_1>0", "cos_0>1") if k in rs[0]), None)
            if link:
                ax[2].plot(x, [max(1 - r[link], 1e-9) if r[link] is not None else float("nan") for r in rs],
                           label=cell.label)
        if kind == "skew-mid":
            for a in ax:
                a.axvline(updates // 2 + 1, color="grey", ls=":", lw=1)
        ax[0].set(ylabel=f"{mode}\ntraining success ({SMOOTH}-update mean)", ylim=(0, 1.02))
        ax[1].set(ylabel="real bits per message", ylim=(0, None))
        ax[2].set(ylabel="1 - cos(gradient to agent 0,\nsynchronized one)", yscale="log")
        ax[0].legend(fontsize=7)
        ax[2].legend(fontsize=7)
    for a in axes[-1]:
        a.set_xlabel("update")
    titles = {"skew": "skew of agent-1 from step 0", "skew-mid": f"skew of agent-1 from update {updates // 2 + 1}",
              "drift": "drift of agent-1's clock, with and without beacons"}
    fig.suptitle(f"Learning under desync: {titles.get(kind, kind)} (goal toy)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
