"""deploy/compose.yaml without a Docker engine: its structure, then the same service
commands run as local processes with service names mapped to loopback (Mosquitto too)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
import yaml

from agents.cli import build_parser
from broker.bus import BusClient
from tests.conftest import ROOT, free_port, wait_port

COMPOSE = ROOT / "deploy" / "compose.yaml"
DDCL_SERVICES = ("broker", "sync", "world", "agent", "agent-gpu")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def env_of(svc: dict) -> dict:
    return {k: str(v) for k, v in (svc.get("environment") or {}).items()}


def test_every_service_command_is_a_valid_ddcl_invocation(compose):
    parser = build_parser()
    for name in DDCL_SERVICES:
        cmd = compose["services"][name]["command"]
        assert cmd[0] == "ddcl", name
        parser.parse_args(cmd[1:])  # argparse exits (SystemExit) on anything invalid


def test_ports_environment_and_health_agree(compose):
    s = compose["services"]
    bind = env_of(s["broker"])["DDCL_BIND"]
    port = int(bind.rsplit(":", 1)[1])
    assert f"{port}:{port}" in s["broker"]["ports"]
    assert "5555" in " ".join(s["broker"]["healthcheck"]["test"])
    conf = (ROOT / "deploy" / "mosquitto.conf").read_text()
    mqtt_port = int(re.search(r"^listener (\d+)", conf, re.M).group(1))
    for name in ("broker", "sync", "world", "agent", "agent-gpu"):
        env = env_of(s[name])
        assert env["DDCL_BROKER"] == f"tcp://broker:{port}", name
        assert env["DDCL_BUS"] == f"mqtt://mosquitto:{mqtt_port}", name
        assert env["DDCL_RUN"] == "compose", name
    assert s["mosquitto"]["healthcheck"]["test"][1] == "mosquitto_sub"
    assert s["broker"]["depends_on"]["mosquitto"]["condition"] == "service_healthy"
    for name in ("sync", "world", "agent", "agent-gpu"):
        assert s[name]["depends_on"]["broker"]["condition"] == "service_healthy", name
    for name, svc in s.items():
        if (svc.get("deploy") or {}).get("replicas", 1) > 1:
            assert "container_name" not in svc, f"{name} is scaled: a fixed container name breaks it"
            assert "--id" not in svc["command"], f"{name} is scaled: the broker must assign ids"
    gpu = s["agent-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    world_agents = int(s["world"]["command"][s["world"]["command"].index("--agents") + 1])
    assert world_agents == s["agent"]["deploy"]["replicas"]
    ck = next(a for a in s["agent"]["command"] if a.endswith(".pt"))
    assert (ROOT / "deploy" / "checkpoint" / Path(ck).name).exists(), "the shipped checkpoint is missing"


def localize(value: str, broker_port: int, mqtt_url: str, runs: Path) -> str:
    return (value.replace("tcp://broker:5555", f"tcp://127.0.0.1:{broker_port}")
            .replace("tcp://*:5555", f"tcp://127.0.0.1:{broker_port}")
            .replace("mqtt://mosquitto:1883", mqtt_url)
            .replace("/runs", str(runs))
            .replace("/app/checkpoint", str(ROOT / "deploy" / "checkpoint")))


async def test_compose_services_run_end_to_end_as_local_processes(compose, procs, mosquitto, tmp_path):
    s = compose["services"]
    port = free_port()
    runs = tmp_path / "runs"

    def start(name: str, instance: str | None = None):
        svc = s[name]
        env = {k: localize(v, port, mosquitto, runs) for k, v in env_of(svc).items()}
        args = [localize(a, port, mosquitto, runs) for a in svc["command"][1:]]
        if name == "world":  # the same service, fewer steps for CI
            args[args.index("--steps") + 1] = "150"
        return procs.start(instance or name, *args, env_extra=env)

    start("broker")
    wait_port(port)
    async with BusClient(mosquitto, "compose") as bus:
        await bus.subscribe("#")
        start("sync")
        for k in range(s["agent"]["deploy"]["replicas"]):
            start("agent", f"agent-replica-{k}")
        world = start("world")
        assert await asyncio.to_thread(world.wait, 180) == 0, procs.log("world")
        topics = set()
        while (m := await bus.next_message(1.0)) is not None:
            topics.add(m.topic)
    out = procs.log("world")
    assert "Agent-message bytes per step" in out, out
    summary = json.loads((runs / "compose" / "summary.json").read_text())
    assert summary["steps"] == 150 and summary["codec"] == "range"
    assert summary["messages"]["delivered"] == 2 * 150
    assert summary["success_rate"] > 0.9  # the shipped trained checkpoint
    shipped = json.loads((ROOT / "deploy" / "checkpoint" / "goal.config.json").read_text())
    assert (summary["values_per_message"], summary["delta"]) == (shipped["msg_dim"], shipped["delta"])
    assert {"ddcl/compose/metrics", "ddcl/compose/epoch", "ddcl/compose/status/world"} <= topics


def test_every_ddcl_service_builds_one_image_from_files_that_exist(compose):
    for name in DDCL_SERVICES:
        svc = compose["services"][name]
        assert svc["image"] == "ddcl-sim:latest", name
        context = (COMPOSE.parent / svc["build"]["context"]).resolve()
        assert context == ROOT and (context / svc["build"]["dockerfile"]).exists(), name
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    sources = re.findall(r"^COPY (.+) \S+$", dockerfile, re.M)
    assert sources
    for line in sources:
        for src in line.split():
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repo"
    assert re.search(r"pip install .*torch==2\.13\.0", dockerfile)
