"""The desync analysis of the oracle logs, on logs written by hand, and the agents'
writer against the same reader."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agents.desync import OracleLog, analyze, frame_tag, oracle_path, read_oracle
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


def test_the_agents_log_reads_back_step_for_step_and_writes_in_batches(tmp_path):
    frames = {k: [bytes([0x40, k, t]) for t in range(70)] for k in (0, 1)}
    logs = {k: OracleLog(tmp_path, k) for k in (0, 1)}
    for t in range(70):
        for k in (0, 1):
            logs[k].note(t, frames[k][t], t, 5, [(1 - k, frames[1 - k][t], t, 5 if t != 3 else 6)])
    # one batch of WRITE_EVERY lines is out by now; the rest waits for a flush or close
    logs[0].file.flush()
    assert len(oracle_path(tmp_path, 0).read_text().splitlines()) == OracleLog.WRITE_EVERY
    logs[0].flush()
    logs[1].close()
    records, torn = read_oracle(tmp_path)
    assert torn == 0 and [len(records[k]) for k in (0, 1)] == [70, 70]
    assert records[0][3] == {"step": 3, "sent": (frame_tag(frames[0][3]), 3, 5), "heard": [(1, frame_tag(frames[1][3]), 3, 6)]}
    d = analyze(tmp_path, 0.2, 77, 1)
    assert d["messages"] == 140 and d["desynced_fraction"] == pytest.approx(2 / 140)  # step 3, both ways
