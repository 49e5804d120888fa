"""`ddcl bench net`: the raw pyzmq DEALER<->ROUTER round trip between two processes (the
floor), then lockstep steps/s and per-step latency of whole networked runs.

A lockstep step is 6 sequential one-way hops (world->broker->agent observations,
agent->broker->agents messages, agent->broker->world actions), so its latency is also
shown as a multiple of floor/2 x 6 = 3 round trips (the bound the target is read
against), and as a multiple of floor x 6 (the issue's words taken with the floor as a
whole round trip: half the first figure). Beside them: the same run with libzmq's DEALER
in every role (the baseline for the peers' own ZMTP socket, broker/zmtp.py), and a bare
skeleton of the lockstep with the run's sockets, which splits a step into the
transport's share and the roles' work.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

from agents.launcher import dies_with
from broker.peer import SOCKET_ENV, dealer

from .common import table, up_command

ROOT = Path(__file__).resolve().parent.parent

HOPS_PER_STEP = 6
# A run's first ~250 steps are 15-20 % slower than the rest (median per 50-step bin over
# five 3000-step runs: 1.23 ms, then 1.0 from step 250; docs/notes/latency.md): each
# run steps these first and measures the steps after them.
WARMUP_STEPS = 300

_ECHO = """
import sys, zmq
ctx = zmq.Context(); s = ctx.socket(zmq.ROUTER); s.setsockopt(zmq.LINGER, 0)
s.bind(sys.argv[1]); print("ready", flush=True)
while True:
    m = s.recv_multipart()
    if m[-1] == b"stop": break
    s.send_multipart(m)
"""


def _helper(script: str, *args: str, stdout=None) -> subprocess.Popen:
    """A helper process running `script`, which may import the project."""
    return subprocess.Popen([sys.executable, "-c", script, *args], stdout=stdout, text=True, preexec_fn=dies_with(os.getpid()),
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))


def _router(script: str, *args: str) -> tuple[subprocess.Popen, str]:
    """A ROUTER process running `script` (endpoint first in its argv), once it is bound,
    and its endpoint."""
    from agents.launcher import free_port

    ep = f"tcp://127.0.0.1:{free_port()}"
    proc = _helper(script, ep, *args, stdout=subprocess.PIPE)
    proc.stdout.readline()  # "ready"
    return proc, ep


def pyzmq_round_trip(n: int = 3000, gap_s: float = 0.0) -> float:
    """Median seconds for one DEALER->ROUTER->DEALER round trip across two processes,
    back to back, or with gap_s of sleep between round trips (both ends then idle, as
    in a lockstep step, and on a VM an idle vCPU wakes slowly)."""
    echo, ep = _router(_ECHO)
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(ep)
    samples = []
    for i in range(n):
        t = time.perf_counter()
        s.send(b"x" * 16)
        s.recv()
        if i >= 100:
            samples.append(time.perf_counter() - t)
        if gap_s:
            time.sleep(gap_s)
    s.send(b"stop")
    _reap([echo])
    s.close()
    return statistics.median(samples)


def _reap(procs: list[subprocess.Popen]) -> None:
    """The bench's helper processes, told to stop: one still running after 10 s is killed."""
    from agents.launcher import wait_or_kill

    for p in wait_or_kill(procs, 10.0):
        print(f"[bench net] helper process {p.pid} did not stop when told: killed", file=sys.stderr, flush=True)


_SKELETON = """
import sys, zmq
ep, role, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
ctx = zmq.Context()
if role == "broker":
    s = ctx.socket(zmq.ROUTER); s.setsockopt(zmq.LINGER, 0); s.bind(ep); print("ready", flush=True)
    who = {}
    while True:
        src, kind, body = s.recv_multipart()
        if kind == b"hi":
            who[body] = src
            if len(who) == n + 1: s.send_multipart([who[b"w"], b"go", b""])
        elif kind == b"obs":
            for k in range(n): s.send_multipart([who[b"%d" % k], b"obs", b""])
        elif kind == b"msg":
            for k in range(n):
                if b"%d" % k != body: s.send_multipart([who[b"%d" % k], b"msg", body])
        elif kind == b"act":
            s.send_multipart([who[b"w"], b"act", body])
        elif kind == b"stop":
            for peer in who.values(): s.send_multipart([peer, b"stop", b""])
            s.close(linger=1000); ctx.term()  # LINGER 0 would drop the stops, and a peer would wait forever
            break
else:
    from broker.peer import dealer
    s = dealer(ep)  # the DEALER the roles use (DDCL_PEER_SOCKET)
    me = role.encode(); s.send([b"hi", me]); heard = 0
    while True:
        kind, body = s.recv(None)
        if kind == b"stop": break
        if kind == b"obs": s.send([b"msg", me])
        elif kind == b"msg":
            heard += 1
            if heard == n - 1: heard = 0; s.send([b"act", me])
"""


def skeleton(agents: int, steps: int) -> float:
    """Median seconds per lockstep step of a bare skeleton, `steps` measured after
    WARMUP_STEPS: the same processes, the same six hops (world -> broker -> agents ->
    broker -> peers, agents -> broker -> world) and the same sockets (a libzmq ROUTER,
    the roles' DEALER) as `ddcl up`, with no env, policy, channel, accounting or checks.
    What the transport alone costs on this machine; the rest of a real step is the
    roles' work."""
    broker, ep = _router(_SKELETON, "broker", str(agents))
    peers = [_helper(_SKELETON, ep, str(k), str(agents)) for k in range(agents)]
    s = dealer(ep)
    try:
        s.send([b"hi", b"w"])
        s.recv(None)  # "go": every agent has registered
        samples = []
        for i in range(WARMUP_STEPS + steps):
            t = time.perf_counter()
            s.send([b"obs", b""])
            for _ in range(agents):
                s.recv(None)
            if i >= WARMUP_STEPS:  # as in the real runs
                samples.append(time.perf_counter() - t)
        return statistics.median(samples)
    finally:
        s.send([b"stop", b""])
        _reap([broker, *peers])
        s.close()


def lockstep(agents: int, batch: int, steps: int, device: str = "cpu", peer_socket: str = "zmtp",
             bundle: bool = False, warmup: int = WARMUP_STEPS) -> dict:
    """`steps` measured steps of a run that steps `warmup` steps first."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        subprocess.run(up_command(agents, batch, warmup + steps, out, device, bundle), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600, preexec_fn=dies_with(os.getpid()),
                       env=dict(os.environ, **{SOCKET_ENV: peer_socket}))
        summary = json.loads((out / "summary.json").read_text())
        lat = [json.loads(x)["latency_s"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    lat = lat[warmup:]
    return {"steps_per_s": summary["steps_per_second"], "p50": statistics.median(lat),
            "p90": sorted(lat)[int(0.9 * len(lat))], "header_framing": per_message_overhead(summary)}


def per_message_overhead(summary: dict) -> float:
    up = summary["bytes_per_step"]["up"]
    per_msg = summary["agents"]  # each agent sends one message per step
    return (up["header"] + up["framing"]) / per_msg


def cpuidle() -> str:
    """The guest's idle driver and halt polling: with none, every idle vCPU halts and its
    wake-up goes through the hypervisor, which the floor pays on every message."""
    def read(path: str) -> str | None:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return None

    driver = read("/sys/devices/system/cpu/cpuidle/current_driver") or "unknown"
    poll = read("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
    return f"cpuidle {driver}" + (f", guest_halt_poll_ns {poll}" if poll is not None else "")


def run(steps: int = 1000, agents: tuple[int, ...] = (2, 4, 8), batches: tuple[int, ...] = (1, 256), repeat: int = 3,
        device: str = "cpu") -> str:
    """Each configuration `repeat` times, each run between two floor measurements: the
    VM's speed drifts within minutes, so a ratio is only fair against the floor of the
    same moment. The row is the run with the median ratio; the spread is shown beside it."""
    rows, floors = [], []
    configs = [(n, b) for n in agents for b in batches]
    for i, (n, b) in enumerate(configs):
        runs = []
        for rep in range(repeat):
            print(f"[bench net] {n} agents, B={b}: run {rep + 1}/{repeat} (configuration {i + 1}/{len(configs)})",
                  file=sys.stderr, flush=True)
            before = pyzmq_round_trip(1000)
            r = lockstep(n, b, steps, device)
            r["libzmq"] = lockstep(n, b, steps, device, "libzmq")["p50"]  # the baseline, the same moment
            bare = skeleton(n, max(steps, 1000))
            r["floor"] = (before + pyzmq_round_trip(1000)) / 2
            bound = r["floor"] / 2 * HOPS_PER_STEP
            r["ratio"], r["skeleton"], r["skeleton_ratio"] = r["p50"] / bound, bare, bare / bound
            floors.append(r["floor"])
            runs.append(r)
        runs.sort(key=lambda r: r["ratio"])
        mid = runs[len(runs) // 2]
        spread = f"{runs[0]['ratio']:.2f}-{runs[-1]['ratio']:.2f}"
        rows.append([n, b, mid["floor"] * 1e6, mid["steps_per_s"], mid["p50"] * 1e3, mid["p90"] * 1e3, mid["ratio"],
                     spread, mid["ratio"] / 2, mid["libzmq"] * 1e3, mid["p50"] / mid["libzmq"], mid["skeleton"] * 1e3,
                     mid["skeleton_ratio"], mid["header_framing"]])
    paced = pyzmq_round_trip(500, gap_s=0.003)
    return "\n".join([
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}, "
        f"pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}, {cpuidle()}; agents' torch device: {device}",
        f"floor: pyzmq DEALER<->ROUTER round trip, back to back, median, measured before and after each run "
        f"({min(floors) * 1e6:.0f}-{max(floors) * 1e6:.0f} us); bound per step = {HOPS_PER_STEP} hops x floor/2",
        f"each run: {WARMUP_STEPS} warm-up steps, then {steps} measured (p50, p90); steps/s: the whole run's",
        f"each row: the median of {repeat} runs by p50 / bound; the spread of that ratio beside it; "
        f"p50 / (floor x hops): the same step against {HOPS_PER_STEP} whole round trips",
        "libzmq peers: the same run with libzmq's DEALER in every role (DDCL_PEER_SOCKET=libzmq), right after it",
        "skeleton: a bare lockstep with the same processes, hops and sockets and no work, right after each run",
        f"the same round trip with 3 ms idle between round trips: {paced * 1e6:.0f} us",
        "",
        table(["agents", "B", "floor us", "steps/s", "p50 ms", "p90 ms", "p50 / bound", "spread", "p50 / (floor x hops)",
               "libzmq peers p50 ms", "p50 / libzmq peers", "skeleton ms", "skeleton / bound", "hdr+framing B/msg"], rows),
    ])
