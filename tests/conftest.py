"""Fixtures that start real processes (broker, sync, world, agents) and always stop them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from agents.launcher import free_port, wait_port  # noqa: F401  (the tests use the launcher's)
from channel import load_kernels

ROOT = Path(__file__).resolve().parents[1]

# The devices a test runs on: the CPU always, CUDA where present (not a skip where absent:
# the CPU case is the test's coverage there). `pytest -k cuda` runs the CUDA cases alone.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# Here, not mid-test: a cold numba cache costs seconds, and peers of a test that
# compiled while they waited would miss their heartbeats.
load_kernels()


def stats(endpoint: str) -> dict:
    """A running broker's live figures, asked as the CLI asks."""
    from broker.peer import Peer

    with Peer(endpoint, b"cli") as p:
        return p.stats()


def ddcl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """One `ddcl` command run to its end, output captured."""
    return subprocess.run([sys.executable, "-m", "agents.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def wait_registered(endpoint: str, peer: str, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    """Until `peer` has registered with the broker (`proc` must stay alive meanwhile)."""
    deadline = time.monotonic() + timeout_s
    while peer not in stats(endpoint)["peers"]:
        assert time.monotonic() < deadline and proc.poll() is None, f"{peer} never registered"
        time.sleep(0.1)


def steps_done(run: Path) -> int:
    path = run / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def wait_steps(run: Path, n: int, proc: subprocess.Popen, timeout_s: float = 60, log=lambda: "") -> None:
    """Until the run in folder `run` has n steps in its metrics; a run that died fails at
    once. A run's first wait also covers its processes' start-up, which beside many other
    test workers on two cores took over a minute (pytest -n 14), so callers give that one
    longer where a loaded machine outran it."""
    deadline = time.monotonic() + timeout_s
    while steps_done(run) < n:
        if proc.poll() is not None:  # its last metrics may have landed since the check above
            assert steps_done(run) >= n, f"the run exited ({proc.returncode}) at {steps_done(run)} steps\n{log()}"
            return
        assert time.monotonic() < deadline, f"run stuck at {steps_done(run)} steps\n{log()}"
        time.sleep(0.05)


class Procs:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str, env_extra: dict | None = None) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "a")
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", **(env_extra or {}))
        p = subprocess.Popen([sys.executable, "-m", "agents.cli", *args], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.procs[name] = p
        return p

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()

    def broker(self, port: int | None = None) -> str:
        port = port or free_port()
        self.start("broker", "broker", "serve", "--bind", f"tcp://127.0.0.1:{port}")
        wait_port(port)
        return f"tcp://127.0.0.1:{port}"

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def procs(tmp_path):
    group = Procs(tmp_path)
    yield group
    group.stop_all()


def mosquitto_binary() -> str | None:
    import shutil

    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if Path(p).exists()), None)


def start_mosquitto(folder: Path) -> tuple[subprocess.Popen, str]:
    """A private Mosquitto on a free port, and its URL: the real MQTT broker (scripts/setup
    installs it)."""
    binary = mosquitto_binary()
    if binary is None:
        pytest.fail("mosquitto is not installed: run scripts/setup (apt package 'mosquitto')")
    port = free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    p = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return p, f"mqtt://127.0.0.1:{port}"


@pytest.fixture
def mosquitto(tmp_path):
    p, url = start_mosquitto(tmp_path)
    try:
        yield url
    finally:
        p.terminate()
        p.wait(5)


@pytest.fixture
def scripted_success():
    """Success rate of a hand-written policy (env -> actions) over `episodes` episode lengths
    of a batched env."""

    def run(env, policy, episodes: int) -> float:
        env.reset()
        wins = done_count = 0
        for _ in range(episodes * env.max_steps):
            _, _, done, ok = env.step(policy(env))
            wins, done_count = wins + ok.sum(), done_count + done.sum()
        return wins / done_count

    return run
