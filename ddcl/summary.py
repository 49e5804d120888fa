"""How a run's results print: the world's summary.json as `ddcl up` and `ddcl world` show it."""

from __future__ import annotations

from bench.common import table


def byte_table(first: str, sent: dict, as_float32: dict) -> str:
    """Agent-message bytes per step, up, down and both, beside what float32 messages take."""
    rows = [[d, sent[d]["payload"], sent[d]["header"], sent[d]["framing"], sent[d]["total"], as_float32[d]["total"]]
            for d in ("up", "down", "sum")]
    return table([first, "payload", "header", "framing", "total", "as float32"], rows)


def render_summary(s: dict) -> str:
    lines = [f"env {s['env']}, {s['agents']} agents, B={s['batch']}, {s['steps']} steps, codec {s['codec']}", ""]
    if (b := s["bytes_per_step"]) is not None:
        f, m = s["float32_bytes_per_step"], s["messages"]
        ratio = f["sum"]["total"] / b["sum"]["total"] if b["sum"]["total"] else float("nan")
        lines += [
            "Agent-message bytes per step (on the wire, ZMTP framing included)",
            byte_table("direction", b, f),
            "",
            f"float32 / {s['codec']} bytes: {ratio:.2f}x",
            f"messages: sent {m['sent']}, delivered {m['delivered']}, dropped {m['dropped']}, rejected {m['rejected']}",
        ]
        if refused := {k: v["messages"] for k, v in s["broker"]["refused"].items() if v["messages"]}:
            lines.append("refused by the broker (not in the figures above): "
                         + ", ".join(f"{k} {v}" for k, v in refused.items()))
    else:
        lines.append("byte figures: none (the broker was gone before the world could ask for them)")
    lines += [
        f"bits per message (real): {s['bits_per_message']:.2f} for {s['values_per_message']} "
        f"value{'s' if s['values_per_message'] != 1 else ''}"
        if s["bits_per_message"] is not None else "bits per message: n/a",
        f"success rate {s['success_rate'] if s['success_rate'] is not None else float('nan'):.3f} over "
        f"{s['episodes']} episodes, mean reward {s['mean_reward']:.4f}, {s['steps_per_second']:.1f} steps/s",
        f"deadline misses per agent: {s['deadline_misses']}",
    ]
    d = s.get("desync")
    if d and d["messages"]:
        lines.append(f"desync ({s['sync']} sync): {100 * d['desynced_fraction']:.1f}% of {d['messages']} decodes used "
                     f"the wrong noise, mean |z_hat error| {d['mean_error']:.4f}")
    return "\n".join(lines)

