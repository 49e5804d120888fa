"""deploy/k8s without a cluster (none can run here): every overlay rendered by the real
kustomize (`kubectl kustomize`), every object validated against Kubernetes' own OpenAPI
schemas (kubernetes-validate, strict: an unknown or misspelled field fails), the wiring
between objects checked, and the one behaviour of the project's own code the manifests rely
on, an agent id from the StatefulSet pod's name, run with real processes."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from agents.agent import wanted_agent_id
from ddcl.cli import build_parser
from tests.conftest import ROOT, wait_registered

K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.31.0"  # a version kubernetes-validate ships schemas for; the manifests use only GA APIs
KUBECTL = shutil.which("kubectl")
NO_KUBECTL = "kubectl (with its kustomize) is not installed"
# CI's machine has kubectl: there a missing one is a failure, not manifests left unchecked
IN_CI = os.environ.get("CI") == "true"
needs_kubectl = pytest.mark.skipif(KUBECTL is None and not IN_CI, reason=NO_KUBECTL)


def render(folder: Path) -> list[dict]:
    out = subprocess.run([KUBECTL, "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module")
def overlays(tmp_path_factory) -> dict[str, list[dict]]:
    """base, gpu and curve rendered; curve from a copy with keys made by `ddcl keys gen`
    (real keys are never in git)."""
    if KUBECTL is None:
        if IN_CI:
            pytest.fail(f"CI=true but {NO_KUBECTL}: the manifests would go unvalidated")
        pytest.skip(NO_KUBECTL)
    copy = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("keys"))
    keys = copy / "overlays" / "curve" / "keys"
    gen = subprocess.run([sys.executable, "-m", "ddcl", "keys", "gen", str(keys)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert gen.returncode == 0, gen.stderr
    return {"base": render(copy / "base"), "gpu": render(copy / "overlays" / "gpu"),
            "curve": render(copy / "overlays" / "curve"), "keys": keys}


def by(docs: list[dict], kind: str, name: str) -> dict:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name)]
    assert len(hits) == 1, f"{kind}/{name}: {len(hits)} objects"
    return hits[0]


def pod(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


def ddcl_container(doc: dict) -> dict:
    (c,) = [c for c in pod(doc)["containers"] if c["name"] == "ddcl"]
    return c


def env(c: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


WORKLOADS = [("Deployment", "broker"), ("Deployment", "sync"), ("StatefulSet", "ddcl-agent"), ("Job", "ddcl-world")]


@needs_kubectl
@pytest.mark.parametrize("name", ["base", "gpu", "curve"])
def test_every_object_is_valid_against_the_kubernetes_schemas(overlays, name):
    docs = overlays[name]
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "StatefulSet", "Job", "ConfigMap",
                                          "PersistentVolumeClaim"}
    for d in docs:
        # raises ValidationError (field, path) on a schema violation, strict: unknown fields too
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)


def test_the_validator_rejects_a_broken_manifest():
    """The check above can fail: a misspelled field and a wrong type are refused."""
    docs = yaml.safe_load_all((K8S / "base" / "broker.yaml").read_text())
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    bad = json.loads(json.dumps(deployment))
    bad["spec"]["replica"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    bad = json.loads(json.dumps(deployment))
    bad["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "5555"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


@needs_kubectl
def test_the_objects_are_wired_to_each_other(overlays):
    docs = overlays["base"]
    parser = build_parser()
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    for kind, name in WORKLOADS:
        w = by(docs, kind, name)
        c = ddcl_container(w)
        assert c["image"] == "ddcl-sim:latest", name
        assert c["command"][0] == "ddcl" and c["command"][1] != "ddcl", name
        parser.parse_args(c["command"][1:])  # argparse exits on anything invalid
        e = env(c)
        assert e["DDCL_BROKER"] == "tcp://broker:5555" and e["DDCL_BUS"] == "mqtt://mosquitto:1883", name
        # each Service selects pods of a workload that exists, on a port the container opens
        for vol in pod(w).get("volumes", []):
            if "persistentVolumeClaim" in vol:
                by(docs, "PersistentVolumeClaim", vol["persistentVolumeClaim"]["claimName"])
    for sname, port, workload in (("broker", 5555, ("Deployment", "broker")),
                                  ("mosquitto", 1883, ("Deployment", "mosquitto"))):
        svc = services[sname]
        w = by(docs, *workload)
        assert svc["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
        (sp,) = svc["spec"]["ports"]
        assert sp["port"] == port
        ports = {p["name"]: p["containerPort"] for c in pod(w)["containers"] for p in c.get("ports", [])}
        assert ports[sp["targetPort"]] == port, sname
    assert env(ddcl_container(by(docs, "Deployment", "broker")))["DDCL_BIND"] == "tcp://*:5555"
    # the agents: a StatefulSet whose pod name is the agent id, as many as the world expects
    sts = by(docs, "StatefulSet", "ddcl-agent")
    assert env(ddcl_container(sts))["DDCL_AGENT_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert services[sts["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
    world = ddcl_container(by(docs, "Job", "ddcl-world"))["command"]
    assert int(world[world.index("--agents") + 1]) == sts["spec"]["replicas"]
    assert [wanted_agent_id(f"{sts['metadata']['name']}-{k}") for k in range(sts["spec"]["replicas"])] == \
        [b"agent-0", b"agent-1"]
    # the bus: Mosquitto configured exactly as compose configures it
    conf = by(docs, "ConfigMap", "mosquitto-config")["data"]["mosquitto.conf"]
    assert conf == (ROOT / "deploy" / "mosquitto.conf").read_text()


@needs_kubectl
def test_the_gpu_overlay_puts_agents_on_gpus(overlays):
    sts = by(overlays["gpu"], "StatefulSet", "ddcl-agent")
    c = ddcl_container(sts)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["command"][c["command"].index("--device") + 1] == "cuda"
    assert c["image"] == "ddcl-sim:gpu"
    assert env(c)["DDCL_AGENT_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}  # the patch kept it
    build_parser().parse_args(c["command"][1:])
    # only the agents: the rest of the base is unchanged
    base = {(d["kind"], d["metadata"]["name"]): d for d in overlays["base"]}
    for d in overlays["gpu"]:
        if d["kind"] != "StatefulSet":
            assert d == base[(d["kind"], d["metadata"]["name"])]


@needs_kubectl
def test_the_curve_overlay_gives_every_role_its_keys(overlays):
    docs = overlays["curve"]
    secret = by(docs, "Secret", "ddcl-keys")
    keys: Path = overlays["keys"]
    for name in ("server.key", "server.key_secret", "client.key", "client.key_secret"):
        assert base64.b64decode(secret["data"][name]) == (keys / name).read_bytes(), name
    for kind, name in WORKLOADS:
        w = by(docs, kind, name)
        c = ddcl_container(w)
        assert env(c)["DDCL_KEYS"] == "/keys", name
        assert {"name": "keys", "mountPath": "/keys", "readOnly": True} in c["volumeMounts"], name
        (vol,) = [v for v in pod(w)["volumes"] if v["name"] == "keys"]
        assert vol["secret"]["secretName"] == secret["metadata"]["name"], name  # the hashed name
        paths = {i["path"] for i in vol["secret"]["items"]}
        if name == "broker":  # `ddcl keys gen`'s layout: its pair, the clients' keys in authorized/
            assert paths == {"server.key", "server.key_secret", "authorized/client.key"}
        else:  # never the broker's secret key
            assert paths == {"server.key", "client.key", "client.key_secret"}, name
        if name in ("ddcl-agent", "ddcl-world"):  # the runs volume mount survived the patch
            assert any(m["mountPath"] == "/runs" for m in c["volumeMounts"]), name


@pytest.mark.parametrize("given,claimed", [
    ("ddcl-agent-2", b"agent-2"), ("agent-3", b"agent-3"), ("my-agents-10", b"agent-10"), ("ddcl-agent-0", b"agent-0"),
    ("", b""), ("ddcl-agent-02", b"ddcl-agent-02"), ("Ddcl-agent-1", b"Ddcl-agent-1"), ("agent", b"agent"),
])
def test_a_statefulset_pod_name_claims_its_ordinal(given, claimed):
    assert wanted_agent_id(given) == claimed


def test_agents_named_like_statefulset_pods_take_their_ordinals(procs, tmp_path):
    """Real processes: agents given only a pod name register as agent-K for ordinal K, in any
    start order (the broker would assign agent-0 to the first); one killed and restarted
    under the same name takes agent-1 back, and a world then runs with both."""
    endpoint = procs.broker()
    pod_env = lambda name: {"DDCL_AGENT_ID": name, "DDCL_BROKER": endpoint}  # noqa: E731
    procs.start("sync", "sync", "serve", env_extra={"DDCL_BROKER": endpoint})  # agents ask it for the epoch
    first = procs.start("pod-1", "agent", env_extra=pod_env("ddcl-agent-1"))
    wait_registered(endpoint, "agent-1", first)
    procs.start("pod-0", "agent", env_extra=pod_env("ddcl-agent-0"))
    wait_registered(endpoint, "agent-0", procs.procs["pod-0"])
    # the pod is killed (no goodbye) and the StatefulSet starts it again under its name
    first.kill()
    first.wait(10)
    # Only the restarted process can answer for agent-1 now: had it claimed anything else,
    # the world would wait for agent-1 in vain (its join timeout) and fail.
    procs.start("pod-1-again", "agent", env_extra=pod_env("ddcl-agent-1"))
    out = tmp_path / "run"
    world = procs.start("world", "world", "--agents", "2", "--batch", "8", "--steps", "40", "--codec", "range",
                        "--out", str(out), env_extra={"DDCL_BROKER": endpoint})
    assert world.wait(120) == 0, procs.log("world")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["agents_reporting"] == [0, 1]  # slots, which are the ids' K
    assert summary["deadline_misses"] == [0, 0]
    assert summary["messages"]["delivered"] == 2 * 40
