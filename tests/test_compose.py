"""deploy/compose.yaml without a Docker engine: its structure, then the same service
commands run as local processes with service names mapped to loopback (Mosquitto too).
The file on a real engine: tests/test_compose_e2e.py (scripts/compose-e2e)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from agents.train_config import TrainConfig
from ddcl.cli import build_parser
from broker.bus import BusClient
from tests.conftest import ROOT, free_port, wait_port

COMPOSE = ROOT / "deploy" / "compose.yaml"
DDCL_SERVICES = ("broker", "sync", "world", "agent", "agent-gpu")


VAR = re.compile(r"\$\{(\w+)(:?-)([^}]*)\}")


def interpolate(value, env: dict):
    """Compose's ${VAR:-default} (unset or empty: default) and ${VAR-default} (unset only),
    as `docker compose config` resolves them; $$ is a literal $."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m):
        name, op, default = m.groups()
        if name not in env or (op == ":-" and env[name] == ""):
            return default
        return env[name]

    return VAR.sub(one, value).replace("$$", "$")


@pytest.fixture(scope="module")
def compose() -> dict:
    """The file as compose runs it with no knob set (the defaults)."""
    return interpolate(yaml.safe_load(COMPOSE.read_text()), {})


def image_command(svc: dict) -> list[str]:
    """What a container of this service executes: the image's ENTRYPOINT, then the command.
    (The entrypoint plus a command that repeats `ddcl` ran `ddcl ddcl ...` in every container.)"""
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    entry = re.findall(r"^ENTRYPOINT\s+(.+)$", dockerfile, re.M)
    return (json.loads(entry[-1]) if entry else []) + svc["command"]


def env_of(svc: dict) -> dict:
    return {k: str(v) for k, v in (svc.get("environment") or {}).items()}


def test_every_service_runs_one_valid_ddcl_command(compose):
    parser = build_parser()
    for name in DDCL_SERVICES:
        argv = image_command(compose["services"][name])
        assert argv[0] == "ddcl" and argv[1] != "ddcl", f"{name} runs {argv[:3]}"
        parser.parse_args(argv[1:])  # argparse exits (SystemExit) on anything invalid


def test_knobs_reach_the_commands():
    """DDCL_AGENTS sets the replicas and the world's --agents together; an empty
    DDCL_CHECKPOINT means untrained policies (which fit any number of agents)."""
    env = {"DDCL_AGENTS": "4", "DDCL_CHECKPOINT": "", "DDCL_STEPS": "9", "DDCL_PUBLISH": "127.0.0.1:0",
           "DDCL_BEACON_EVERY": "7", "DDCL_EPOCH_STEPS": "70"}
    s = interpolate(yaml.safe_load(COMPOSE.read_text()), env)["services"]
    world = s["world"]["command"]
    assert world[world.index("--agents") + 1] == "4" and world[world.index("--steps") + 1] == "9"
    for cmd in (world, s["sync"]["command"]):  # the sync service's schedule, recorded by the world too
        assert cmd[cmd.index("--beacon-every") + 1] == "7" and cmd[cmd.index("--epoch-steps") + 1] == "70"
    assert int(s["agent"]["deploy"]["replicas"]) == 4
    agent = s["agent"]["command"]
    assert agent[agent.index("--checkpoint") + 1] == ""
    assert s["broker"]["ports"] == ["127.0.0.1:0:5555"]
    build_parser().parse_args(agent[1:])


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
        if int((svc.get("deploy") or {}).get("replicas", 1)) > 1:
            assert "container_name" not in svc, f"{name} is scaled: a fixed container name breaks it"
            assert "--id" not in svc["command"], f"{name} is scaled: the broker must assign ids"
    gpu = s["agent-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    world_agents = int(s["world"]["command"][s["world"]["command"].index("--agents") + 1])
    assert world_agents == int(s["agent"]["deploy"]["replicas"])
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
        for k in range(int(s["agent"]["deploy"]["replicas"])):
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


def test_one_service_builds_the_image_the_others_name(compose):
    """Four services with a build each built four untagged copies: only the broker builds
    ddcl-sim:latest, the others run it by name; the GPU profile builds its own image."""
    s = compose["services"]
    builders = [n for n in ("broker", "sync", "world", "agent") if "build" in s[n]]
    assert builders == ["broker"]
    for name in ("broker", "sync", "world", "agent"):
        assert s[name]["image"] == "ddcl-sim:latest", name
    assert s["agent-gpu"]["image"] == "ddcl-sim:gpu"
    for name in ("broker", "agent-gpu"):
        build = s[name]["build"]
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context == ROOT and (context / build["dockerfile"]).exists(), name
        assert set(build["args"]) == {"BASE", "TORCH_INDEX"}, name
    assert "cuda" in s["agent-gpu"]["build"]["args"]["BASE"]
    assert s["broker"]["build"]["args"]["TORCH_INDEX"].endswith("/cpu")
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    sources = re.findall(r"^COPY (.+) \S+$", dockerfile, re.M)
    assert sources
    for line in sources:
        for src in line.split():
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repo"
    assert re.search(r"^ARG TORCH_VERSION=2\.13\.0$", dockerfile, re.M)
    assert re.search(r"pip install .*torch==\$\{TORCH_VERSION\}", dockerfile)
    # Debian's and Ubuntu's system pythons refuse pip (PEP 668): everything goes into a venv
    assert "python3 -m venv /opt/venv" in dockerfile and "PATH=/opt/venv/bin:" in dockerfile


def test_the_image_installs_the_roles_dependencies_only():
    """The runtime image carries what the roles need, not the test, plot or train extras
    (with them the project's layer was 453 MB): torch alone, then pyproject.toml's [project]
    dependencies, then the project itself with --no-deps."""
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def name(req: str) -> str:
        return re.match(r"[A-Za-z0-9_.-]+", req).group(0).lower()

    core = {name(d) for d in project["dependencies"]}
    extras = {name(d) for reqs in project["optional-dependencies"].values() for d in reqs}
    assert not core & extras, f"packages of the extras among the core dependencies: {core & extras}"
    installs = re.findall(r"pip install ([^&\n]+)", dockerfile)
    assert len(installs) == 3, installs
    assert not any("[" in i for i in installs), f"an extra is installed: {installs}"
    assert "torch==" in installs[0] and "-r /tmp/requirements.txt" in installs[1] and "--no-deps" in installs[2]
    assert "['project']['dependencies']" in dockerfile  # what /tmp/requirements.txt is made of


TRAIN = ROOT / "deploy" / "compose.train.yaml"


def test_the_training_compose_file_runs_end_to_end_as_local_processes(procs, tmp_path):
    """deploy/compose.train.yaml's commands, as processes: a broker, the learning world and
    two learner replicas that take the ids the broker assigns; a short training finishes
    and leaves a checkpoint `ddcl evaluate` reads."""
    env = {"DDCL_UPDATES": "3", "DDCL_BATCH": "32"}
    s = interpolate(yaml.safe_load(TRAIN.read_text()), env)["services"]
    parser = build_parser()
    for name in ("broker", "learn-world", "learner"):
        assert s[name]["image"] == "ddcl-sim:latest" and s[name]["command"][0] == "ddcl", name
        parser.parse_args(s[name]["command"][1:])
    port, runs = free_port(), tmp_path / "runs"

    def start(name: str, instance: str | None = None):
        svc = s[name]
        extra = {k: localize(str(v), port, "", runs) for k, v in (svc.get("environment") or {}).items()}
        return procs.start(instance or name, *[localize(a, port, "", runs) for a in svc["command"][1:]], env_extra=extra)

    start("broker")
    wait_port(port)
    world = start("learn-world")
    for k in range(int(s["learner"]["deploy"]["replicas"])):
        start("learner", f"learner-replica-{k}")
    assert world.wait(600) == 0, procs.log("learn-world")
    summary = json.loads((runs / "compose-train" / "summary.json").read_text())
    assert summary["updates_done"] == 3 and summary["networked"]["grad_codec"] == "float32"
    values = TrainConfig().rollout * 32 * 1  # T x B x D floats a listener sends its speaker
    assert summary["networked"]["bytes_per_update"]["gradient"]["payload"] == 2 * 2 * 4 * values  # 2 links, up + down
    r = subprocess.run([sys.executable, "-m", "ddcl", "evaluate", str(runs / "compose-train"), "--episodes", "64"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "success" in r.stdout, r.stdout + r.stderr
