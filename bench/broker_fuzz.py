"""`ddcl bench fuzz --target broker`: a live broker under hostile input, then a normal run.

A real `ddcl broker serve` process is driven by real libzmq DEALERs (random and mutated
multipart messages from many connections, registrations with hostile ids, oversize
messages, floods of retained publishes, registered and not) and by raw TCP connections
(garbage, half ZMTP greetings, connections opened and dropped). Then it checks:

- the broker process never exited;
- its RSS after the fuzz stays within a stated bound of its RSS before;
- a `ddcl up --broker` run against the fuzzed broker gives the same agent-message bytes
  per step as the same run with a fresh broker.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

from agents.launcher import dies_with, free_port, wait_or_kill, wait_port
from bench.common import table
from broker import protocol
from broker.peer import Peer
from channel import codecs, frame

MAX_MESSAGE = 1 << 16  # the fuzzed broker's --max-message: oversize input is cheap to make
RSS_BOUND_MB = 64  # the most the fuzz may grow the broker's resident memory
SEND_TIMEOUT_S = 600  # a send that waits this long means the broker stopped reading
CHECK_RUN = ["--steps", "200", "--batch", "4", "--seed", "3", "--device", "cpu"]

COMMANDS = [protocol.REGISTER, protocol.HEARTBEAT, protocol.SEND, protocol.STATS, protocol.CONTROL, protocol.PUBLISH, protocol.SUBSCRIBE, protocol.BYE, b"\x3f", b"\x00"]
HOSTILE_IDS = [b"\xc5", b"agent-" + b"9" * 5000, b"agent-007", b"agent-255", b"world\x00", b"x" * 100_000, b"",
               b"agent-3", b"world", b"sync", b"cli-fuzz", "ü".encode() * 50]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class Inputs:
    """The hostile messages, from one seeded stream."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        rice = codecs.get("rice")
        self.valid = [
            frame.pack(kind=frame.Kind.MESSAGE, sender=k, codec=rice.wire_id, count=4, payload=rice.encode([1, -2, 0, k]))
            for k in range(4)
        ] + [protocol.pack({"op": protocol.FAULT_ADD, "kind": "delay", "target": "*", "value": 5}), protocol.pack({"op": protocol.FAULT_LIST})]

    def mutate(self, data: bytes) -> bytes:
        b = bytearray(data)
        for _ in range(self.rng.randint(1, 4)):
            op = self.rng.randrange(3)
            if op == 0 and b:
                b[self.rng.randrange(len(b))] ^= 1 << self.rng.randrange(8)
            elif op == 1 and b:
                del b[self.rng.randrange(len(b)):]
            else:
                b += self.rng.randbytes(self.rng.randint(1, 8))
        return bytes(b)

    def part(self) -> bytes:
        r = self.rng.random()
        if r < 0.3:
            return self.rng.choice(COMMANDS)
        if r < 0.5:
            return self.rng.choice(HOSTILE_IDS)
        if r < 0.8:
            return self.mutate(self.rng.choice(self.valid))
        return self.rng.randbytes(self.rng.randint(0, 64))

    def message(self) -> tuple[str, list[bytes]]:
        """(what kind of input, its parts)."""
        r = self.rng.random()
        if r < 0.35:
            return "random", [self.part() for _ in range(self.rng.randint(1, 6))]
        if r < 0.55:
            return "mutated frame", [self.mutate(self.rng.choice(self.valid[:4]))]
        if r < 0.7:
            return "registration", [protocol.REGISTER, self.rng.choice(list(protocol.ROLES) + [b"wizard"]), self.rng.choice(HOSTILE_IDS)]
        if r < 0.85:
            topic = b"ddcl/fuzz/%d" % self.rng.randrange(100_000)
            return "retained publish", [protocol.PUBLISH, topic, self.rng.randbytes(self.rng.randint(1, 1024)), b"1"]
        if r < 0.87:
            return "oversize", [protocol.STATS, b"\x00" * (MAX_MESSAGE + self.rng.randint(1, MAX_MESSAGE))]
        if r < 0.95:
            return "control", [protocol.CONTROL, self.mutate(self.rng.choice(self.valid[4:]))]
        return "subscribe", [protocol.SUBSCRIBE, self.rng.choice([b"#", b"ddcl/#", b"a/#/b", b"+", self.rng.randbytes(8)])]


def drive_dealers(endpoint: str, inputs: Inputs, count: int, connections: int, progress) -> tuple[dict, float]:
    """`count` messages over `connections` DEALERs, reconnected now and then; replies are
    drained and dropped. Returns the inputs sent, by kind, and the longest a send waited
    for the broker to catch up."""
    ctx = zmq.Context.instance()
    sent: dict[str, int] = {}
    socks: list[zmq.Socket] = []

    def fresh() -> zmq.Socket:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        # a broker that stops reading fails the run rather than hang it; a slow one (the
        # fuzz keeps 32 connections x 100 messages queued at it, on a loaded machine) is
        # given its time
        s.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_S * 1000)
        s.setsockopt(zmq.RCVHWM, 1000)  # replies past it are dropped by libzmq, unread
        s.connect(endpoint)
        return s

    socks = [fresh() for _ in range(connections)]
    longest = 0.0
    start = last = time.monotonic()
    for i in range(count):
        k = inputs.rng.randrange(connections)
        kind, parts = inputs.message()
        before = time.monotonic()
        try:
            socks[k].send_multipart(parts)
        except zmq.Again:
            raise RuntimeError(f"the broker stopped reading: a send waited {SEND_TIMEOUT_S} s at input {i}") from None
        # a full queue makes a send wait for the broker: how long is how far behind it fell
        longest = max(longest, time.monotonic() - before)
        sent[kind] = sent.get(kind, 0) + 1
        if inputs.rng.random() < 0.002:  # a new connection: a new routing id, a fresh strike count
            socks[k].close(0)
            socks[k] = fresh()
        if i % 512 == 0:
            for s in socks:
                while s.poll(0):
                    s.recv_multipart()
        if time.monotonic() - last >= 2:
            last = time.monotonic()
            progress(f"  {i + 1}/{count} inputs, {(i + 1) / (last - start):.0f}/s")
    for s in socks:
        s.close(0)
    return sent, longest


def drive_raw_tcp(port: int, inputs: Inputs, connections: int) -> int:
    """Raw TCP connections: garbage, half ZMTP greetings, or nothing before closing."""
    greeting = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x01" + b"NULL" + b"\x00" * 16 + b"\x00" + b"\x00" * 31
    for _ in range(connections):
        with socket.create_connection(("127.0.0.1", port), 5) as raw:
            r = inputs.rng.random()
            if r < 0.4:
                raw.sendall(greeting[:inputs.rng.randint(1, len(greeting) - 1)])
            elif r < 0.8:
                raw.sendall(inputs.rng.randbytes(inputs.rng.randint(1, 2048)))
    return connections


def drained(endpoint: str, progress) -> dict:
    """The broker's stats once it has read every fuzz message: its queues can hold many
    thousand when the fuzz outruns it, and a backlogged REGISTER world would take the
    check run's world id over (as a restarted world does: ids are not authenticated
    without CURVE)."""
    def handled(s: dict) -> float:  # bytes read, refused or not: they grow while it reads
        return sum(v["bytes"] for v in s["refused"].values()) + sum(k["total"] for k in s["totals"]["up"].values())

    asked = 1 + 2  # bytes of the STATS request itself: one command byte, ZMTP's 2
    with Peer(endpoint, b"cli") as cli:
        last = handled(cli.stats(60))
        while True:
            time.sleep(1.0)
            s = cli.stats(60)
            if handled(s) == last + asked:
                return s
            progress(f"  the broker still reads its backlog ({(handled(s) - last) / 1e6:.1f} MB in the last second)")
            last = handled(s)


def checked_run(endpoint: str | None, folder: Path) -> dict:
    """A short `ddcl up` (against `endpoint`, or with its own broker): its summary."""
    cmd = [sys.executable, "-m", "ddcl", "up", *CHECK_RUN, "--out", str(folder)]
    if endpoint:
        cmd += ["--broker", endpoint]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, preexec_fn=dies_with(os.getpid()))
    if done.returncode != 0:
        raise RuntimeError(f"the check run failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads((folder / "summary.json").read_text())


def run(inputs: int = 100_000, seed: int = 0, connections: int = 32, raw: int = 1000, progress=print) -> dict:
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    # its log to a file: a pipe nobody reads fills, and the broker's next log line blocks it
    log = tempfile.TemporaryFile()
    broker = subprocess.Popen([sys.executable, "-m", "ddcl", "broker", "serve", "--bind", endpoint,
                               "--max-message", str(MAX_MESSAGE)], stdout=subprocess.DEVNULL, stderr=log,
                              preexec_fn=dies_with(os.getpid()))
    try:
        wait_port(port, alive=lambda: broker.poll() is None)
        time.sleep(0.5)  # past its imports: the RSS before is the serving broker's
        report = {"inputs": inputs, "seed": seed, "rss_before_mb": rss_mb(broker.pid)}
        rng = Inputs(seed)
        progress(f"fuzzing a live broker ({endpoint}): {inputs} messages over {connections} connections, "
                 f"{raw} raw TCP connections")
        report["sent"], report["longest_send_wait_s"] = drive_dealers(endpoint, rng, inputs, connections, progress)
        report["raw_tcp"] = drive_raw_tcp(port, rng, raw)
        report["alive_after_fuzz"] = broker.poll() is None
        if not report["alive_after_fuzz"]:
            log.seek(0)
            raise RuntimeError(f"the broker exited ({broker.returncode}): {log.read()[-2000:]!r}")
        s = drained(endpoint, progress)
        report["refused"] = {k: v["messages"] for k, v in s["refused"].items()}
        report["ignored_connections"] = s["ignored_connections"]
        time.sleep(1.0)
        report["rss_after_mb"] = rss_mb(broker.pid)
        with Peer(endpoint, b"cli") as cli:  # faults the fuzz added are its input, not the check run's
            cli.request([protocol.CONTROL, protocol.pack({"op": protocol.FAULT_CLEAR, "id": None})], protocol.CONTROL_REPLY, 60)
        with tempfile.TemporaryDirectory() as tmp:
            progress("a normal run against the fuzzed broker, then the same run with a fresh one")
            after = checked_run(endpoint, Path(tmp) / "after-fuzz")
            fresh = checked_run(None, Path(tmp) / "fresh")
        report["bytes_per_step_after_fuzz"] = after["bytes_per_step"]["sum"]["total"]
        report["bytes_per_step_fresh"] = fresh["bytes_per_step"]["sum"]["total"]
        report["same_bytes"] = after["bytes_per_step"] == fresh["bytes_per_step"]
        report["alive_at_end"] = broker.poll() is None
    finally:
        if broker.poll() is None:
            broker.terminate()
        wait_or_kill([broker], 10)
        log.close()
    report["ok"] = (report.get("alive_at_end", False) and report.get("same_bytes", False)
                    and report["rss_after_mb"] - report["rss_before_mb"] <= RSS_BOUND_MB)
    return report


def render(r: dict) -> str:
    lines = [table(["input", "sent"], [[k, v] for k, v in sorted(r["sent"].items())] + [["raw TCP connections", r["raw_tcp"]]]),
             "",
             f"refused by the broker: {', '.join(f'{k} {v}' for k, v in r['refused'].items())}; "
             f"connections ignored past their strikes: {r['ignored_connections']}",
             f"broker alive after the fuzz: {r['alive_after_fuzz']}, at the end: {r['alive_at_end']}; the longest a "
             f"send waited for it to catch up: {r['longest_send_wait_s']:.1f} s",
             f"broker RSS: {r['rss_before_mb']:.1f} MB before, {r['rss_after_mb']:.1f} MB after "
             f"(bound: +{RSS_BOUND_MB} MB)",
             f"agent-message bytes per step, same run: {r['bytes_per_step_after_fuzz']:.2f} after the fuzz, "
             f"{r['bytes_per_step_fresh']:.2f} on a fresh broker (every figure equal: {r['same_bytes']})",
             f"result: {'PASS' if r['ok'] else 'FAIL'}"]
    return "\n".join(lines)
