"""The control/telemetry bus, the same tests against both backends: the embedded hub in
our broker and a real Mosquitto through aiomqtt."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import msgpack
import pytest

from broker.bus import BusClient, BusError, parse_url, topic_matches
from tests.conftest import SLOW_S, free_port, start_mosquitto, wait_port


def test_topic_filters_match_like_mqtt():
    assert topic_matches("ddcl/run/#", "ddcl/run/status/agent-0")
    assert topic_matches("ddcl/run/#", "ddcl/run")
    assert topic_matches("ddcl/+/epoch", "ddcl/run/epoch")
    assert not topic_matches("ddcl/+/epoch", "ddcl/run/x/epoch")
    assert not topic_matches("ddcl/run/status", "ddcl/run/status/agent-0")


def test_bad_bus_urls_are_clear_errors():
    assert parse_url("embedded") is None
    assert parse_url("mqtt://localhost:1884") == ("localhost", 1884)
    for bad in ("http://x", "mqtt://", "tcp://1.2.3.4:5"):
        with pytest.raises(BusError):
            parse_url(bad)


async def collect(client: BusClient, seconds: float, until=lambda got: False) -> list:
    """Messages for `seconds`, or fewer once `until(messages so far)` holds: a process
    starting on a loaded machine (parallel workers) may take many seconds."""
    out, deadline = [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0 and not until(out):
        m = await client.next_message(left)
        if m is not None:
            out.append(m)
    return out


def metric_steps(messages: list, run: str) -> list[int]:
    return [json.loads(row)["step"] for m in messages if m.topic == f"ddcl/{run}/metrics"
            for row in m.payload.splitlines()]


def last_payload(messages: list) -> bytes | None:
    return messages[-1].payload if messages else None


@pytest.fixture(params=["embedded", "mqtt"])
def bus_url(request):
    if request.param == "embedded":
        return "embedded"
    return request.getfixturevalue("mosquitto")


async def test_run_status_epoch_faults_and_metrics_on_the_bus(procs, bus_url, tmp_path):
    run = f"t{free_port()}"
    port = free_port()
    ep = f"tcp://127.0.0.1:{port}"
    common = ["--bus", bus_url, "--run", run]
    procs.start("broker", "broker", "serve", "--bind", ep, "--heartbeat", "0.5", *common)
    wait_port(port)
    procs.start("sync", "sync", "serve", "--broker", ep, "--epoch-steps", "50", "--beacon-every", "10", *common)
    for k in range(2):
        procs.start(f"agent-{k}", "agent", "--broker", ep, "--id", f"agent-{k}", "--device", "cpu", *common)
    async with BusClient(bus_url, run, broker=ep) as live:
        await live.subscribe("metrics")
        await asyncio.sleep(0.5)
        world = procs.start("world", "world", "--broker", ep, "--steps", "120", "--out", str(tmp_path / "run"), *common)
        metrics = []
        deadline = time.monotonic() + 2 * SLOW_S
        while world.poll() is None:  # the whole run, however slow
            assert time.monotonic() < deadline, f"the world still runs after {2 * SLOW_S} s:\n{procs.log('world')}"
            metrics += await collect(live, 0.5)
        # the last rows may still be on their way through a loaded machine's MQTT server
        metrics += await collect(live, SLOW_S, until=lambda got: len(metric_steps(metrics + got, run)) >= 120)
    assert await asyncio.to_thread(world.wait, SLOW_S) == 0
    # every step's row arrives, in order, batched as JSON lines
    assert metric_steps(metrics, run) == list(range(120))

    from ddcl.cli import main as ddcl_main

    assert await asyncio.to_thread(ddcl_main, ["broker", "fault", "drop", "0.25", "--broker", ep]) == 0

    async with BusClient(bus_url, run, broker=ep) as watch:  # a last will on SIGKILL
        await watch.subscribe("status/agent-7")
        doomed = procs.start("agent-7", "agent", "--broker", ep, "--id", "agent-7", "--device", "cpu", *common)
        seen = [m.payload for m in await collect(watch, SLOW_S, until=lambda got: last_payload(got) == b"online")]
        assert seen and seen[-1] == b"online"
        doomed.send_signal(signal.SIGKILL)
        seen = [m.payload for m in await collect(watch, SLOW_S, until=lambda got: last_payload(got) == b"offline")]
        assert seen[-1:] == [b"offline"]

    async with BusClient(bus_url, run, broker=ep) as late:  # retained messages reach a late subscriber
        await late.subscribe("#")
        wanted = {f"ddcl/{run}/{t}" for t in ("epoch", "faults", "status/world", "status/agent-0", "status/sync")}
        got = {m.topic: m for m in await collect(late, SLOW_S, until=lambda got: wanted <= {m.topic for m in got})}
    epoch = got[f"ddcl/{run}/epoch"]
    assert epoch.retain and msgpack.unpackb(epoch.payload)["epoch"] == 2  # steps 100..119 are epoch 2
    faults = json.loads(got[f"ddcl/{run}/faults"].payload)
    assert [(f["kind"], f["target"], f["value"]) for f in faults] == [("drop", "*", 0.25)]
    assert got[f"ddcl/{run}/status/world"].payload == b"offline"  # a clean exit says so itself
    assert got[f"ddcl/{run}/status/agent-0"].payload == b"offline"
    assert got[f"ddcl/{run}/status/sync"].payload == b"online"


async def wait_log(procs, name: str, text: str, timeout_s: float = SLOW_S) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in procs.log(name):
        assert time.monotonic() < deadline, f"{name} never logged {text!r}:\n{procs.log(name)}"
        await asyncio.sleep(0.1)


async def test_ddcl_bus_sub_names_a_missing_broker_and_outlives_a_restart(procs):
    run, port = f"t{free_port()}", free_port()
    ep = f"tcp://127.0.0.1:{port}"
    async with BusClient("embedded", run, broker=ep, timeout_s=1.0) as nobody:  # nothing listens yet
        with pytest.raises(BusError, match=f"no reply from the broker at {ep} in 1.0s"):
            await nobody.subscribe("#")
    lonely = procs.start("lonely", "bus", "sub", "--broker", ep)
    assert await asyncio.to_thread(lonely.wait, SLOW_S) == 2
    assert f"error: no reply from the broker at {ep} in 3.0s" in procs.log("lonely")

    broker = procs.start("broker", "broker", "serve", "--bind", ep, "--run", run)
    wait_port(port)
    async with BusClient("embedded", run, broker=ep) as pub:
        await pub.publish("news", b"one", retain=True)
    sub = procs.start("sub", "bus", "sub", "--topic", "news", "--count", "2", "--broker", ep, "--run", run)
    await wait_log(procs, "sub", f"ddcl/{run}/news one")
    broker.send_signal(signal.SIGKILL)
    broker.wait()
    await wait_log(procs, "sub", f"[bus] no word from the broker at {ep}; waiting for it")
    procs.start("broker-again", "broker", "serve", "--bind", ep, "--run", run)
    wait_port(port)
    await wait_log(procs, "sub", "[bus] the broker answers again")  # it subscribed again to learn that
    async with BusClient("embedded", run, broker=ep) as pub:
        await pub.publish("news", b"two")
    assert await asyncio.to_thread(sub.wait, SLOW_S) == 0
    assert procs.log("sub").count(f"ddcl/{run}/news") == 2 and f"ddcl/{run}/news two" in procs.log("sub")
    endless = procs.start("endless", "bus", "sub", "--broker", ep, "--run", run)
    await wait_log(procs, "endless", f"ddcl/{run}/faults []")  # the new broker's retained fault list
    endless.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(endless.wait, SLOW_S) == 0  # stopped, not killed


async def test_ddcl_bus_sub_ends_with_the_reason_when_mqtt_goes(procs, tmp_path):
    mqtt, url = start_mosquitto(tmp_path)
    try:
        sub = procs.start("sub", "bus", "sub", "--bus", url, "--run", "t")
        async with BusClient(url, "t") as pub:  # retained: it reaches the subscriber whenever it subscribes
            await pub.publish("news", b"one", retain=True)
        await wait_log(procs, "sub", "ddcl/t/news one")
    finally:
        mqtt.kill()
        mqtt.wait()
    assert await asyncio.to_thread(sub.wait, SLOW_S) == 2
    assert f"error: lost MQTT at {url}" in procs.log("sub")
