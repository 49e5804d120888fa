"""`ddcl sweep skew`: one networked run per (skew, sync mode), with agent-1's clock skewed
from step 0 and no beacons (so nothing corrects it); writes a CSV and a PNG of success
rate and bits per message against skew, one line per sync mode."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from agents.launcher import ddcl


def sweep_skew(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    skews = args.values
    modes = args.sync.split(",")
    rows = []
    for mode in modes:
        for skew in skews:
            run = out / f"{mode.replace(':', '')}-skew{skew}"
            faults = out / f"faults-skew{skew}.toml"
            faults.write_text(f'[[fault]]\nstep = 0\nkind = "skew"\ntarget = "agent-1"\nvalue = {skew}\n' if skew else "")
            cmd = ddcl("up", "--steps", str(args.steps), "--batch", str(args.batch), "--codec", args.codec,
                       "--sync", mode, "--beacon-every", "0", "--out", str(run), "--faults", str(faults))
            if args.checkpoint:
                cmd += ["--checkpoint", args.checkpoint]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                print(f"run {run} failed:\n{r.stderr[-2000:]}", file=sys.stderr)
                return r.returncode
            s = json.loads((run / "summary.json").read_text())
            row = {"sync": mode, "skew": skew, "success_rate": s["success_rate"], "bits_per_message": s["bits_per_message"],
                   "bytes_per_step": s["bytes_per_step"]["sum"]["total"], "desynced_fraction": s["desync"]["desynced_fraction"],
                   "mean_error": s["desync"]["mean_error"]}
            rows.append(row)
            print(f"[sweep] {mode:<11} skew {skew:>3}: success {row['success_rate']}, bits/msg {row['bits_per_message']:.2f}, "
                  f"desynced {100 * row['desynced_fraction']:.0f}%", file=sys.stderr, flush=True)
    with open(out / "sweep_skew.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(rows, modes, out / "sweep_skew.png")
    print(f"wrote {out / 'sweep_skew.csv'} and {out / 'sweep_skew.png'}")
    return 0


def plot(rows: list[dict], modes: list[str], path: Path) -> None:
    try:
        import matplotlib
    except ImportError as e:  # an extra: the roles (and their container image) go without it
        raise ImportError("the sweep's plot needs matplotlib: pip install 'ddcl-sim[plots]'") from e

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for mode in modes:
        rs = [r for r in rows if r["sync"] == mode]
        x = [float(r["skew"]) for r in rs]
        axes[0].plot(x, [float(r["success_rate"] or 0) for r in rs], marker="o", label=mode)
        axes[1].plot(x, [float(r["bits_per_message"]) for r in rs], marker="o", label=mode)
        axes[2].plot(x, [float(r["bytes_per_step"]) for r in rs], marker="o", label=mode)
        axes[3].plot(x, [float(r["mean_error"]) for r in rs], marker="o", label=mode)
    xl = "skew of agent-1 (steps)"
    axes[0].set(xlabel=xl, ylabel="success rate", title="task success", ylim=(0, 1.02))
    axes[1].set(xlabel=xl, ylabel="bits per message (real payload)", title="payload bits", ylim=(0, None))
    axes[2].set(xlabel=xl, ylabel="agent-message bytes per step", title="wire bytes (headers incl.)", ylim=(0, None))
    axes[3].set(xlabel=xl, ylabel="mean |z_hat - ideal|", title="reconstruction error")
    for a in axes:
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
