"""The broker as a real process: routing, rejection of bad input, byte accounting."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from agents.run_config import RunConfig
from broker import protocol
from broker.peer import BrokerError, LibzmqDealer, Peer
from broker.sync import fetch_epoch
from broker.zmtp import ZmtpDealer
from channel import codecs, frame
from tests.conftest import SLOW_S, ddcl, stats, until, wait_steps

RICE = codecs.get("rice")


def message(sender: int, values) -> bytes:
    return frame.pack(kind=frame.Kind.MESSAGE, sender=sender, codec=RICE.wire_id, count=len(values), payload=RICE.encode(values))


def test_assigns_ids_routes_broadcasts_and_counts(procs):
    ep = procs.broker()
    with Peer(ep, b"agent") as a0, Peer(ep, b"agent") as a1, Peer(ep, b"agent") as a2, Peer(ep, b"world", protocol.WORLD_ID) as w:
        assert (a0.id, a1.id, a2.id) == (b"agent-0", b"agent-1", b"agent-2")
        data = message(0, [1, -2, 0, 3])
        a0.broadcast_frame(data)
        assert a1.recv(5) == [data] and a2.recv(5) == [data]
        assert a0.recv(0.2) is None  # not echoed to the sender, nor sent to the world
        assert w.recv(0.2) is None
        a1.send_to(protocol.WORLD_ID, b"\x81\xa2op\xa1x")
        assert w.recv(5) == [protocol.DELIVER, b"agent-1", b"\x81\xa2op\xa1x"]
        a1.send_to(b"agent-9", b"\x80")  # unknown destination: counted, not fatal
        s = stats(ep)
    assert s["messages"] == {"sent": 1, "delivered": 1, "dropped": 0, "rejected": 0}
    assert s["other"]["unknown_destination"] == 1
    header = len(data) - len(RICE.encode([1, -2, 0, 3]))
    up = s["totals"]["up"]["message"]
    assert up == {"payload": len(data) - header, "header": header, "framing": 2, "total": len(data) + 2}
    assert s["totals"]["down"]["message"]["total"] == 2 * (len(data) + 2)


def test_one_send_reaches_several_destinations_and_a_bad_frame_refuses_it_whole(procs):
    ep = procs.broker()
    obs = [frame.pack(kind=frame.Kind.OBSERVATION, sender=protocol.WORLD_SENDER, codec=0, count=1,
                      payload=np.float32(k).tobytes(), stamp_mode=frame.StampMode.FULL, stamp=7) for k in range(2)]
    with Peer(ep, b"agent") as a0, Peer(ep, b"agent") as a1, Peer(ep, b"world", protocol.WORLD_ID) as w:
        w.send_each([(b"agent-0", obs[0]), (b"agent-1", obs[1])])
        assert a0.recv(5) == [protocol.DELIVER, protocol.WORLD_ID, obs[0]] and a1.recv(5) == [protocol.DELIVER, protocol.WORLD_ID, obs[1]]
        s = stats(ep)
        assert s["step"] == 7 and s["steps"] == 1  # the step boundary, marked once
        up = s["totals"]["up"]["env"]
        # one message: the command, two ids, two frames; payload is the frames' float32 bytes
        assert up == {"payload": 8, "header": 1 + 2 * 7 + sum(len(o) for o in obs) - 8, "framing": 2 * 5,
                      "total": 1 + 2 * 7 + sum(len(o) for o in obs) + 2 * 5}
        assert s["totals"]["down"]["env"]["total"] == sum(1 + 5 + len(o) + 2 * 3 for o in obs)
        w.send_each([(b"agent-0", obs[0]), (b"agent-1", b"\x40\x01")])  # the second frame is truncated
        assert w.recv(5) == [protocol.ERROR, b"malformed frame"]
        assert a0.recv(0.3) is None  # nothing of a refused message is delivered
        w.send_parts([protocol.SEND, b"agent-0", obs[0], b"agent-1"])  # a destination without a body
        assert w.recv(5) == [protocol.ERROR, b"malformed command"]
        s = stats(ep)
    assert s["other"]["rejected"] == 2


def test_malformed_input_is_counted_and_the_broker_keeps_serving(procs):
    ep = procs.broker()
    port = int(ep.rsplit(":", 1)[1])
    for junk in (b"GET / HTTP/1.1\r\n\r\n", bytes(range(256)) * 4, b"\xff" * 10 + b"\x7f" + b"\x00" * 100):
        with socket.create_connection(("127.0.0.1", port)) as raw:  # not even ZMTP
            raw.sendall(junk)
            time.sleep(0.1)
    with Peer(ep, b"agent") as a0, Peer(ep, b"agent") as a1:
        a0.broadcast_frame(b"\x40\x00\x00\xff\xff\xff\xff\x7f")  # count too large
        a0.broadcast_frame(message(5, [1, 2]))  # claims another sender id
        a0.send_parts([b"\x3f", b"junk"])  # unknown command
        err = a0.recv(5)
        assert err[0] == protocol.ERROR
        a0.send_to(protocol.WORLD_ID, b"\x40\x01")  # truncated observation frame
        assert a0.recv(5)[0] == protocol.ERROR
        good = message(0, [0, 0, 1, 0])
        a0.broadcast_frame(good)
        assert a1.recv(5) == [good]
        s = stats(ep)
    assert s["messages"] == {"sent": 3, "delivered": 1, "dropped": 0, "rejected": 2}
    assert s["other"]["rejected"] == 2
    assert procs.procs["broker"].poll() is None


def test_unregistered_and_bad_registrations_are_refused(procs):
    ep = procs.broker()
    with pytest.raises(BrokerError, match="unknown role"):
        Peer(ep, b"wizard")
    with pytest.raises(BrokerError, match="agent-K"):
        Peer(ep, b"agent", b"bob")
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(ep)
    s.send_multipart([protocol.SEND, protocol.WORLD_ID, b"\x80"])
    assert s.poll(5000) and s.recv_multipart() == [protocol.ERROR, b"register first"]
    s.close()


def test_dead_peers_expire_and_restarted_agents_reclaim_their_id(procs):
    ep = procs.broker()
    a = Peer(ep, b"agent", b"agent-3")
    a.close(bye=False)  # vanishes without a word
    until(ep, lambda s: "agent-3" not in s["peers"])  # after LIVENESS silent heartbeats; later when loaded
    with Peer(ep, b"agent", b"agent-3") as again, Peer(ep, b"agent") as other:
        assert again.id == b"agent-3"
        other.broadcast_frame(message(protocol.agent_index(other.id), [1]))
        assert again.recv(5) is not None


def test_a_peer_waiting_past_the_liveness_is_not_given_up(procs):
    """A role blocked in one long receive (a world waiting out a step deadline that a dead
    agent never meets) heartbeats from inside it: the broker keeps it, and what it sends
    next is delivered, not answered with "register first"."""
    ep = procs.broker()
    with Peer(ep, b"world", protocol.WORLD_ID) as w:
        assert w.recv(protocol.LIVENESS * protocol.HEARTBEAT_S + 1.5) is None
        assert stats(ep)["peers"].get("world") == "world"
        with Peer(ep, b"agent") as a:
            w.send_to(a.id, b"\x80")
            assert a.recv(5) == [protocol.DELIVER, protocol.WORLD_ID, b"\x80"]
        assert w.reregistrations == 0


def test_a_peer_given_up_for_dead_registers_again_under_its_id(procs):
    ep = procs.broker()
    with Peer(ep, b"agent", b"agent-2") as stalled:
        until(ep, lambda s: "agent-2" not in s["peers"])  # nothing sent, nothing read: a stopped process
        stalled.send_to(protocol.WORLD_ID, b"\x80")  # answered with ERROR register first
        deadline = time.monotonic() + SLOW_S
        while stalled.reregistrations == 0 and time.monotonic() < deadline:
            assert stalled.recv(0.1) is None  # the error and the new REGISTERED stay inside Peer
        assert stalled.reregistrations == 1
        assert stats(ep)["peers"].get("agent-2") == "agent"


def test_a_replaced_peer_is_told_so_instead_of_taking_its_id_back(procs):
    ep = procs.broker()
    with Peer(ep, b"agent", b"agent-4") as old, Peer(ep, b"agent", b"agent-4") as new, Peer(ep, b"agent") as other:
        old.send_to(protocol.WORLD_ID, b"\x80")
        with pytest.raises(BrokerError, match="taken over"):
            old.recv(5)
        data = message(protocol.agent_index(other.id), [1, 2])
        other.broadcast_frame(data)
        assert new.recv(5) == [data] and new.reregistrations == 0


def test_an_idle_peer_hears_the_brokers_heartbeats(procs):
    """Liveness both ways: a registered peer the broker has nothing for still hears from it
    every interval, and the Peer class keeps those heartbeats from the role."""
    ep = procs.broker()
    raw = zmq.Context.instance().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(ep)
    raw.send_multipart([protocol.REGISTER, b"agent", b"agent-5"])
    assert raw.poll(5000) and raw.recv_multipart() == [protocol.REGISTERED, b"agent-5"]
    assert raw.poll(int(2.5 * protocol.HEARTBEAT_S * 1000)) and raw.recv_multipart() == [protocol.HEARTBEAT]
    raw.close()
    with Peer(ep, b"agent") as quiet:
        assert quiet.recv(2.5 * protocol.HEARTBEAT_S) is None
        assert quiet.silent_s() < 2 * protocol.HEARTBEAT_S


class CountingRelay:
    """A TCP relay that counts every byte each way: an independent view of the wire."""

    def __init__(self, target_port: int):
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        self.target = target_port
        self.up = self.down = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        client, _ = self.srv.accept()
        server = socket.create_connection(("127.0.0.1", self.target))
        threading.Thread(target=self._pump, args=(client, server, "up"), daemon=True).start()
        threading.Thread(target=self._pump, args=(server, client, "down"), daemon=True).start()

    def _pump(self, src, dst, direction):
        while data := src.recv(65536):
            with self.lock:
                setattr(self, direction, getattr(self, direction) + len(data))
            dst.sendall(data)

    def counts(self):
        with self.lock:
            return self.up, self.down

    def settle(self, quiet_s: float = 0.3):
        last = None
        while (now := self.counts()) != last:
            last = now
            time.sleep(quiet_s)
        return now


@pytest.mark.parametrize("dealer", [LibzmqDealer, ZmtpDealer])
def test_broker_byte_count_equals_the_bytes_on_the_socket(procs, dealer):
    ep = procs.broker()
    relay = CountingRelay(int(ep.rsplit(":", 1)[1]))
    with Peer(ep, b"agent") as other:
        s = dealer(f"tcp://127.0.0.1:{relay.port}")
        deadline = time.monotonic() + SLOW_S
        while min(relay.counts()) <= 64:  # both 64-byte greetings through, then the READYs settle
            assert time.monotonic() < deadline, f"no ZMTP handshake through the relay: {relay.counts()}"
            s.recv(0.05)  # a ZmtpDealer connects and greets in here
        greeting = relay.settle()  # ZMTP greeting + READY handshake, which the broker cannot see
        assert greeting[0] > 64 and greeting[1] > 64
        s.send([protocol.REGISTER, b"agent", b"agent-7"])
        assert s.recv(5) == [protocol.REGISTERED, b"agent-7"]
        rng = np.random.default_rng(0)
        for n in (1, 4, 100, 700):  # small and > 255-byte frames
            s.send([message(7, np.round(rng.laplace(0, 30, n)).astype(int))])
            other.broadcast_frame(message(protocol.agent_index(other.id), np.round(rng.laplace(0, 3, n)).astype(int)))
        s.send([protocol.HEARTBEAT])
        s.send([protocol.SEND, b"agent-0", b"\x80"])
        for _ in range(4):
            assert s.recv(5) is not None
        assert other.recv(5) is not None and other.recv(0.2) is not None
        up, down = relay.settle()
        link = stats(ep)["links"]["agent-7"]
        s.close()
    assert link["up"] == up - greeting[0]
    assert link["down"] == down - greeting[1]


def control(endpoint: str, **req) -> dict:
    with Peer(endpoint, b"cli") as p:
        return p.request([protocol.CONTROL, protocol.pack(req)], protocol.CONTROL_REPLY)


def test_link_faults_drop_duplicate_delay_and_reorder_agent_messages(procs):
    ep = procs.broker()
    with Peer(ep, b"agent") as a0, Peer(ep, b"agent") as a1:
        msgs = [message(0, [i, 0, 0, 0]) for i in range(4)]
        assert control(ep, op="fault-add", kind="drop", target="agent-0>agent-1", value=1.0)["ok"]
        a0.broadcast_frame(msgs[0])
        assert a1.recv(0.5) is None
        assert control(ep, op="fault-clear", id=None)["ok"]
        assert control(ep, op="fault-add", kind="duplicate", target="*", value=1.0)["ok"]
        a0.broadcast_frame(msgs[1])
        assert [a1.recv(30), a1.recv(30)] == [[msgs[1]], [msgs[1]]]
        control(ep, op="fault-clear", id=None)
        assert control(ep, op="fault-add", kind="delay", target="agent-1", value=400)["ok"]
        t = time.monotonic()
        a0.broadcast_frame(msgs[2])
        assert a1.recv(30) == [msgs[2]] and time.monotonic() - t >= 0.35
        control(ep, op="fault-clear", id=None)
        assert control(ep, op="fault-add", kind="reorder", target="*", value=3)["ok"]
        for m in msgs[:3]:
            assert a1.recv(0.2) is None  # held until the window fills
            a0.broadcast_frame(m)
        got = [a1.recv(30)[0] for _ in range(3)]
        assert sorted(got) == sorted(msgs[:3])
        s = stats(ep)
    assert s["messages"]["dropped"] == 1 and s["other"]["fault_dropped"] == 1
    assert s["messages"]["sent"] == s["messages"]["delivered"] + s["messages"]["dropped"] + s["messages"]["rejected"]


def test_partition_corrupt_bandwidth_and_burst_loss_from_the_cli(procs):
    ep = procs.broker()
    fault = lambda *args: ddcl("broker", "fault", *args, "--broker", ep)  # noqa: E731
    with Peer(ep, b"agent") as a0, Peer(ep, b"agent") as a1:
        m0, m1 = message(0, [5, -3, 0, 1]), message(1, [2, 2, 2, 2])
        r = fault("partition", "--link", "agent-0>agent-1")
        assert r.returncode == 0 and "partition agent-0>agent-1" in r.stdout, r.stderr
        a0.broadcast_frame(m0)
        a1.broadcast_frame(m1)
        assert a0.recv(30) == [m1] and a1.recv(0.5) is None  # one way only
        assert fault("clear", "--all").returncode == 0
        assert control(ep, op="fault-add", kind="corrupt", target="*", value=1.0)["ok"]
        a0.broadcast_frame(m0)
        (got,) = a1.recv(30)
        header = len(m0) - len(RICE.encode([5, -3, 0, 1]))
        assert got[:header] == m0[:header] and sum(bin(a ^ b).count("1") for a, b in zip(got, m0)) == 1
        fault("clear", "--all")
        assert fault("bandwidth", "800").returncode == 0  # 100 bytes a second
        t = time.monotonic()
        a0.broadcast_frame(m0)
        assert a1.recv(30) == [m0] and time.monotonic() - t >= 8 * len(m0) / 800 - 0.01
        fault("clear", "--all")
        assert "--r" in fault("burst-loss", "0.1").stderr  # r is required, and said so
        r = fault("burst-loss", "0.1", "--r", "0.4", "--loss-good", "0.01", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["fault"]["params"] == {"r": 0.4, "loss_bad": 1.0,
                                                                                 "loss_good": 0.01}
        s = stats(ep)
    assert s["messages"]["dropped"] == 1 and s["other"]["fault_dropped"] == 1


def test_malformed_control_requests_get_errors_and_change_nothing(procs):
    ep = procs.broker()
    with Peer(ep, b"cli") as p:
        for body in (b"\xc1garbage", protocol.pack([1, 2]), protocol.pack({"op": "explode"}), protocol.pack({"op": "fault-clear", "id": "x"})):
            reply = p.request([protocol.CONTROL, body], protocol.CONTROL_REPLY)
            assert reply["ok"] is False and reply["error"]
    assert control(ep, op="fault-list")["faults"] == []


def test_beacons_from_anyone_but_the_sync_service_are_ignored_and_counted(procs, tmp_path):
    import json

    ep = procs.broker()
    procs.start("sync", "sync", "serve", "--broker", ep, "--beacon-every", "0")
    for k in range(2):
        procs.start(f"agent-{k}", "agent", "--broker", ep, "--id", f"agent-{k}", "--device", "cpu")
    world = procs.start("world", "world", "--broker", ep, "--steps", "3000", "--out", str(tmp_path / "run"))
    wait_steps(tmp_path / "run", 1, world)  # five processes importing torch beside other workers
    # registered only now: a silent peer would be declared dead after 3 heartbeats
    with Peer(ep, b"agent", b"agent-9") as rogue:  # registered, but not the sync service
        for _ in range(5):
            rogue.send_to(protocol.ALL_AGENTS, protocol.pack({"op": "beacon", "ref_step": 0, "ref_time": 0.0, "run_seed": 0,
                                                "epoch": 9, "epochs": [[0, 12345]]}))
        # the run's length, not a fixed window: 3000 steps take 5 s alone and over a minute
        # beside seven other test workers on two cores (seen failing at 60 s under -n 8)
        assert world.wait(600) == 0
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["bad_beacons"] == 10, {k: s[k] for k in ("agents_reporting", "steps", "silent_peers", "beacons_received")}  # 5 x 2 agents, all ignored
    assert s["beacons_received"] == 0


def test_the_broker_and_sync_service_load_neither_torch_nor_numba():
    """Peers wait on a restarted broker: it parses frames (channel.frame) but must not pay
    the second that torch and the numba kernels take to import."""
    code = ("import sys, broker.server, broker.sync; from channel import ChannelError, frame; "
            "print(sorted(m for m in ('torch', 'numba', 'numpy') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert r.stdout.strip() == "[]"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_sync_service_runs_the_run_config_it_is_handed_without_torch(procs):
    """`ddcl up` hands the sync service the whole run config: its schedule is what it
    serves, and the process, once serving, has mapped neither torch nor numba."""
    ep = procs.broker()
    cfg = RunConfig(seed=7, epoch_seed=9, beacon_every=3, epoch_steps=40, env="tj-easy", batch=4)
    sync = procs.start("sync", "-v", "sync", "serve", "--broker", ep, "--config", cfg.to_json())
    procs.wait_log("sync", "sync service up: run seed 7, epoch seed 9, E=40, beacons every 3")
    maps = Path(f"/proc/{sync.pid}/maps").read_text()
    assert "torch" not in maps and "numba" not in maps
    with Peer(ep, b"agent", b"agent-0") as agent:
        reply = fetch_epoch(agent, timeout_s=SLOW_S)
    assert reply["run_seed"] == 7 and reply["epochs"][0] == [0, 9] and reply["epochs"][1][0] == 40
