"""The desync analysis of the oracle logs, on logs written by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agents.desync import analyze, oracle_path
from channel import NoiseKey, uniform_numpy


def write_log(run, agent: int, lines: list[str]) -> None:
    oracle_path(run, agent).write_text("".join(lines))


def test_a_torn_line_loses_its_records_and_nothing_else(tmp_path):
    """Agent 1 was killed mid-write and restarted: its step-1 record is glued to a torn
    prefix. That record's send and decode drop out; every other decode counts, and the one
    that used seed 6 instead of 5 is the desynced one, priced with the real noise."""
    sent0 = [{"step": t, "sent": [f"a{t}", t, 5], "heard": [[1, f"b{t}", t, 5]]} for t in range(4)]
    sent1 = [{"step": t, "sent": [f"b{t}", t, 5], "heard": [[0, f"a{t}", t, 6 if t == 2 else 5]]} for t in range(4)]
    write_log(tmp_path, 0, [json.dumps(r) + "\n" for r in sent0])
    torn = json.dumps(sent1[3])[:25]
    write_log(tmp_path, 1, [json.dumps(sent1[0]) + "\n", torn + json.dumps(sent1[1]) + "\n",
                            json.dumps(sent1[2]) + "\n", json.dumps(sent1[3]) + "\n"])
    d = analyze(tmp_path, 0.2, 77, 4)
    assert d["torn_lines"] == 1
    assert d["messages"] == 6  # agent 0 heard b0, b2, b3; agent 1 heard a0, a2, a3
    assert d["desynced_fraction"] == pytest.approx(1 / 6)
    u_sent, u_used = (uniform_numpy(4, NoiseKey(77, seed, 0), 2) for seed in (5, 6))
    assert d["mean_error"] == pytest.approx(0.2 * np.abs(u_sent - u_used).mean() / 6)
    assert d["links"]["agent-0>agent-1"] == {"messages": 3, "desynced_fraction": pytest.approx(1 / 3),
                                             "mean_error": pytest.approx(0.2 * np.abs(u_sent - u_used).mean() / 3)}
