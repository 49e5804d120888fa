"""The step tracer (broker/trace.py) and `ddcl bench timeline`'s reading of its files."""

from __future__ import annotations

import os
import subprocess
import sys

from bench.timeline import read_traces, step_events, timeline
from broker import trace
from tests.conftest import ROOT


def test_a_traced_run_marks_every_role_in_causal_order(tmp_path):
    """Events of separate processes on one clock: whatever causes an event in another
    process is marked before it, in every step kept."""
    folder = tmp_path / "trace"
    folder.mkdir()
    # a deadline no loaded machine misses: an agent that missed its peer's message acts
    # without it, and the step it ends is not a causal chain
    r = subprocess.run([sys.executable, "-m", "ddcl", "up", "--steps", "300", "--deadline", "30",
                        "--out", str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), **{trace.ENV: str(folder)}))
    assert r.returncode == 0, r.stdout + r.stderr
    traces = read_traces(folder)
    assert {"world", "broker", "agent-0", "agent-1"} <= set(traces)
    steps, dropped = step_events(traces)
    # a step is kept when its events are the usual set; on a loaded machine a late mark (an
    # agent's "actions sent" after the world's next step began) leaves out half or more
    assert len(steps) >= 40 and len(steps) + dropped == 300 - 30 - 1  # warm-up 10 %; the last has no end
    for s in steps:
        assert s["world", "obs out", 1] == 0 and s["world", "next obs out", 1] > s["world", "env stepped", 1]
        assert 0 < s["broker", "recv", 1] and 0 < s["world", "obs sent", 1]  # "sent": after the send returned
        for k, other in (("agent-0", "agent-1"), ("agent-1", "agent-0")):
            # not "actions sent": marked after its send returns, it can fall after the world's next step began
            chain = [s["broker", "recv", 1]] + [s[k, e, 1] for e in ("obs in", "encoded", "message sent", "peers heard",
                                                                     "decoded")]
            assert chain == sorted(chain)
            assert s[other, "encoded", 1] < s[k, "peers heard", 1]  # the peer's message, on its way
            assert s[k, "decoded", 1] < s["world", "action in", 2] < s["world", "env stepped", 1]


def test_steps_with_unusual_events_are_left_out_and_counted():
    ms = 1_000_000
    traces = {
        "world": [("obs out", k * ms) for k in range(12)],
        # step 5 has a second "recv" (say, a beacon passing through)
        "broker": [("recv", k * ms + 100_000) for k in range(11)] + [("recv", 5 * ms + 300_000)],
    }
    traces["broker"].sort(key=lambda e: e[1])
    steps, dropped = step_events(traces)
    assert dropped == 1 and len(steps) == 9  # 11 whole steps, the first (10 % warm-up) and step 5 left out
    assert all(s == {("world", "obs out", 1): 0, ("world", "next obs out", 1): ms, ("broker", "recv", 1): 100_000}
               for s in steps)
    assert timeline(steps) == [[0.0, 0.0, "world", "obs out"], [100.0, 100.0, "broker", "recv"],
                               [1000.0, 900.0, "world", "next obs out"]]


def test_marks_cost_nothing_and_write_nothing_when_tracing_is_off(tmp_path):
    code = ("from broker import trace; trace.mark('x'); "
            "assert trace.mark is trace._off and not trace._events; print('ok')")
    env = {k: v for k, v in os.environ.items() if k != trace.ENV}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                       env=dict(env, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    assert not list(tmp_path.iterdir())


def test_a_trace_folder_is_made_and_an_unwritable_one_is_named(tmp_path):
    (tmp_path / "file").write_text("")
    code = "from broker import trace; trace.name('probe'); trace.mark('x')"
    for folder in (tmp_path / "new" / "sub", tmp_path / "file" / "sub"):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, PYTHONPATH=str(ROOT), **{trace.ENV: str(folder)}))
        assert r.returncode == 0, r.stderr
        if folder.parent.name == "new":
            [written] = folder.iterdir()
            assert written.name.startswith("probe-") and written.read_text().startswith("x ")
        else:
            assert f"{trace.ENV}: cannot write {folder}/probe-" in r.stderr and "Not a directory" in r.stderr


def test_too_short_a_traced_run_is_refused_with_its_reason(capsys):
    from ddcl.cli import main

    assert main(["bench", "timeline", "--steps", "5"]) == 2
    assert "error: the trace holds 5 steps: too few to take medians; run more steps" in capsys.readouterr().err
