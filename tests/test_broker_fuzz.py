"""The broker fuzzer's short version: a live broker under hostile ZeroMQ and raw TCP
input lives, stays within its memory bound, and then serves a normal run with the same
bytes per step as a fresh broker (bench/broker_fuzz.py; the long run is a benchmark)."""

import pytest

from bench import broker_fuzz


# two `ddcl up` runs and 4000 inputs: a minute on a quiet machine, over five beside others
@pytest.mark.timeout(1200)
def test_a_fuzzed_broker_lives_stays_bounded_and_then_counts_a_run_as_a_fresh_one():
    r = broker_fuzz.run(inputs=4000, seed=1, connections=16, raw=100, progress=lambda _: None)
    assert r["alive_after_fuzz"] and r["alive_at_end"]
    assert sum(r["sent"].values()) == 4000 and r["refused"]["malformed"] > 0 and r["refused"]["oversize"] > 0
    assert r["rss_after_mb"] - r["rss_before_mb"] <= broker_fuzz.RSS_BOUND_MB, r
    assert r["same_bytes"], (r["bytes_per_step_after_fuzz"], r["bytes_per_step_fresh"])
    assert r["ok"]
