"""deploy/kubernetes: every manifest meets the restricted Pod Security Standard,
the graph's volumes are mounted only where they belong, and the CronJob's Pod
template really gets a certificate under `podman play kube` against pebble."""

import copy
import os
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from tests.conftest import ROOT
from tests.pebble import Pebble
from tests.test_compose import CONTAINERS_CONF, EDGES, ROLES

MANIFESTS = ROOT / "deploy" / "kubernetes"
# Volume types the restricted profile allows.
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
    "persistentVolumeClaim", "projected", "secret",
}


def documents() -> list[dict[str, Any]]:
    found = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        found.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return found


def pod_specs() -> dict[str, dict[str, Any]]:
    specs = {}
    for doc in documents():
        if doc["kind"] == "CronJob":
            specs["cronjob"] = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            specs[doc["kind"].lower()] = doc["spec"]["template"]["spec"]
        elif doc["kind"] == "Pod":
            specs["pod"] = doc["spec"]
    return specs


def test_manifests_parse_and_cover_both_uses() -> None:
    kinds = {doc["kind"] for doc in documents()}
    assert {"CronJob", "Deployment", "NetworkPolicy", "ConfigMap"} <= kinds
    assert set(pod_specs()) == {"cronjob", "deployment"}


@pytest.mark.parametrize("workload", ["cronjob", "deployment"])
def test_every_container_meets_the_restricted_standard(workload: str) -> None:
    spec = pod_specs()[workload]
    pod_context = spec["securityContext"]
    assert pod_context["runAsNonRoot"] is True
    assert pod_context["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod_context.get("runAsUser", 1) != 0
    for forbidden in ("hostNetwork", "hostPID", "hostIPC"):
        assert not spec.get(forbidden), forbidden
    assert spec.get("automountServiceAccountToken") is False
    for volume in spec["volumes"]:
        kinds = set(volume) - {"name"}
        assert kinds <= RESTRICTED_VOLUMES, (volume["name"], kinds)
    containers = spec["containers"] + spec.get("initContainers", [])
    for container in containers:
        context = container["securityContext"]
        name = container["name"]
        assert context["runAsNonRoot"] is True, name
        assert context.get("runAsUser", 1) != 0, name
        assert context["readOnlyRootFilesystem"] is True, name
        assert context["allowPrivilegeEscalation"] is False, name
        assert context["capabilities"]["drop"] == ["ALL"], name
        assert not context["capabilities"].get("add"), name
        assert not context.get("privileged"), name
        assert context["seccompProfile"]["type"] == "RuntimeDefault", name
        assert not container.get("ports") or all(
            "hostPort" not in port for port in container["ports"]
        ), name
        assert container["resources"]["limits"]["memory"], name


@pytest.mark.parametrize("workload", ["cronjob", "deployment"])
def test_volumes_follow_the_graph(workload: str) -> None:
    spec = pod_specs()[workload]
    mounts: dict[str, set[str]] = {}
    for container in spec["containers"]:
        for mount in container.get("volumeMounts", []):
            mounts.setdefault(mount["name"], set()).add(container["name"])
    roles = {c["name"] for c in spec["containers"]} & set(ROLES)
    assert roles == set(ROLES)
    for edge, ends in EDGES.items():
        assert mounts[f"sock-{edge}"] == set(ends), edge
    assert mounts["account-key"] == {"acctproc"}
    # The web server of the sidecar example needs the domain key to serve TLS.
    assert mounts["domain-key"] - {"web"} == {"keyproc"}
    assert mounts["certificates"] - {"web"} == {"fileproc", "revokeproc"}
    assert mounts["challenge"] - {"web"} == {"chngproc"}
    assert mounts["ca-bundle"] == {"netproc"}
    assert mounts["trust-anchors"] == {"certproc", "revokeproc"}
    netproc = next(c for c in spec["containers"] if c["name"] == "netproc")
    assert {m["name"] for m in netproc["volumeMounts"]} == {
        f"sock-{edge}" for edge, ends in EDGES.items() if "netproc" in ends
    } | {"ca-bundle"}


def test_network_policy_allows_only_dns_and_https_out() -> None:
    policy = next(doc for doc in documents() if doc["kind"] == "NetworkPolicy")
    assert "Egress" in policy["spec"]["policyTypes"]
    ports = {
        (port["protocol"], port["port"])
        for rule in policy["spec"]["egress"]
        for port in rule["ports"]
    }
    assert ports == {("UDP", 53), ("TCP", 53), ("TCP", 443)}
    for rule in policy["spec"]["egress"]:
        assert "to" not in rule or rule["to"]


def podman(
    *args: str, check: bool = True, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, check=check, timeout=timeout,
        env={**os.environ, "CONTAINERS_CONF": CONTAINERS_CONF},
    )


def cronjob_as_test_pod(name: str, pebble: Pebble, dirs: dict[str, Path]) -> dict[str, Any]:
    """The CronJob's Pod template as a Pod podman can play: the user's volumes
    become host directories, and the host's network reaches pebble on loopback."""
    spec = copy.deepcopy(pod_specs()["cronjob"])
    spec["hostNetwork"] = True
    environment = {
        "DOMAINS": "kube.example.org www.kube.example.org",
        "ACME_SERVER": pebble.directory_url,
        "VERBOSE": "1",
    }
    for container in spec["containers"]:
        container.pop("envFrom", None)
        container["env"] = [
            *container.get("env", []),
            *({"name": k, "value": v} for k, v in environment.items()),
        ]
    for volume in spec["volumes"]:
        if volume["name"] in dirs:
            for kind in ("persistentVolumeClaim", "configMap"):
                volume.pop(kind, None)
            volume["hostPath"] = {"path": str(dirs[volume["name"]]), "type": "Directory"}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def test_cronjob_pod_gets_a_certificate_under_podman(
    pebble: Pebble, tmp_path: Path, built_images: None
) -> None:
    tmp_path.chmod(0o755)
    dirs = {name: tmp_path / name for name in
            ("account-key", "domain-key", "certificates", "ca-bundle", "trust-anchors")}
    for path in dirs.values():
        path.mkdir()
        path.chmod(0o777)
    shutil.copy(pebble.ca_bundle, dirs["ca-bundle"] / "ca.pem")
    shutil.copy(pebble.trust_anchors, dirs["trust-anchors"] / "trust-anchors.pem")
    dirs["challenge"] = pebble.challenge_dir
    pebble.challenge_dir.chmod(0o777)
    name = f"lkt-kube-{secrets.token_hex(3)}"
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(yaml.safe_dump(cronjob_as_test_pod(name, pebble, dirs)))
    try:
        podman("play", "kube", str(manifest))
        status = podman("wait", f"{name}-netproc", timeout=240).stdout.strip()
        logs = podman("logs", f"{name}-netproc", check=False)
        assert status == "0", logs.stdout + logs.stderr
        certificate = x509.load_pem_x509_certificate(
            (dirs["certificates"] / "cert.pem").read_bytes()
        )
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        assert sorted(names.value.get_values_for_type(x509.DNSName)) == [
            "kube.example.org", "www.kube.example.org",
        ]
        assert list(pebble.challenge_dir.iterdir()) == []
        # Every container of the Pod ends by itself.
        for role in ROLES:
            assert podman("wait", f"{name}-{role}", timeout=60).stdout.strip() == "0", role
    finally:
        podman("play", "kube", "--down", str(manifest), check=False)
        pebble.challenge_dir.chmod(0o755)
