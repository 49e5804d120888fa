"""`ddcl report DIR`: PNG plots of a training run: learning curves, and for `goal` the
speaker's real bits per goal against goal probability with the fitted line and r."""

from __future__ import annotations

import json
from pathlib import Path

try:
    import matplotlib
except ImportError as e:  # an extra: the roles (and their container image) go without it
    raise ImportError("ddcl report draws with matplotlib: pip install 'ddcl-sim[plots]'") from e

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def report(run: Path) -> list[Path]:
    run = Path(run)
    summary_path = run / "summary.json"
    if not summary_path.exists():
        raise FileNotFoundError(f"{summary_path} not found: is {run} a `ddcl train` output folder?")
    summary = json.loads(summary_path.read_text())
    history = summary["history"]
    codec = summary["config"]["codec"]
    written = []
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    steps = [h["env_steps"] for h in history]
    a1.plot(steps, [h["eval_success"] for h in history], marker="o", label="eval (greedy)")
    a1.plot(steps, [h["train_success"] for h in history], marker=".", label="train (sampled)")
    a1.set(xlabel="env steps", ylabel="success rate", ylim=(0, 1.02), title="success")
    a1.legend()
    for k in range(len(history[0]["bits"]) if history else 0):
        a2.plot(steps, [h["bits"][k] for h in history], marker="o", label=f"agent {k}: {codec} (real)")
        a2.plot(steps, [h["surrogate"][k] for h in history], ls="--", label=f"agent {k}: surrogate")
    a2.set(xlabel="env steps", ylabel="bits per message", title="message length")
    a2.legend()
    fig.tight_layout()
    written.append(run / "learning_curves.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    fit = summary.get("goal_frequency_fit")
    if fit and fit["goals"]:
        p, bits = np.array(fit["probability"]), np.array(fit["bits"])
        fig, ax = plt.subplots(figsize=(5.5, 4))
        ax.scatter(p, bits, zorder=3)
        for g, x, y in zip(fit["goals"], p, bits):
            ax.annotate(f"goal {g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if len(p) > 1:
            slope, icept = np.polyfit(p, bits, 1)
            xs = np.linspace(0, p.max() * 1.05, 50)
            ax.plot(xs, slope * xs + icept, color="gray", label=f"fit, r = {fit['pearson_r']:.3f}")
        ax.set(xlabel="goal probability", ylabel=f"speaker bits per message ({codec}, real)",
               title=f"frequency-aware messages: {fit['mean_bits']:.2f} bits/msg (bound {fit['shannon_bound_bits']:.2f})")
        ax.legend()
        fig.tight_layout()
        written.append(run / "bits_per_goal.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written
