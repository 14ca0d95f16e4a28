"""deploy/kubernetes: every manifest meets the restricted Pod Security Standard,
the graph's volumes are mounted only where they belong, and the CronJob's Pod
template really gets a certificate under `podman play kube` against pebble."""

import contextlib
import copy
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from letskencrypt import conf, pod

from tests.conftest import ROOT
from tests.pebble import Pebble
from tests.test_compose import CONFIG_MOUNT, CONTAINERS_CONF, EDGES, IMAGE_PREFIX, ROLES

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


def config_map(name: str) -> dict[str, Any]:
    return next(
        doc for doc in documents() if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == name
    )


def configmap_sources(volume: dict[str, Any]) -> list[dict[str, Any]]:
    """The ConfigMaps a volume shows: its own, or each of a projected one's."""
    if "configMap" in volume:
        return [volume["configMap"]]
    return [source["configMap"] for source in volume.get("projected", {}).get("sources", [])
            if "configMap" in source]  # fmt: skip


def test_every_role_of_the_cronjob_reads_the_configuration_read_only() -> None:
    """CONFIG: every role container sees the `letskencrypt-config` ConfigMap's
    acme-client.conf at /etc/letskencrypt/acme-client.conf, read-only, and
    no container sees another role's files because of it."""
    spec = pod_specs()["cronjob"]
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    wanted = {"name": "letskencrypt-config", "optional": True,
              "items": [{"key": "acme-client.conf", "path": "acme-client.conf"}]}  # fmt: skip
    directory, file_name = CONFIG_MOUNT.rsplit("/", 1)
    assert file_name == "acme-client.conf"
    for container in spec["containers"]:
        if container["name"] not in ROLES:
            continue
        mounts = [m for m in container["volumeMounts"] if m["mountPath"] == directory]
        assert len(mounts) == 1, container["name"]
        assert mounts[0]["readOnly"] is True, container["name"]
        assert "subPath" not in mounts[0], container["name"]
        assert wanted in configmap_sources(volumes[mounts[0]["name"]]), container["name"]
    # The CA bundle only for netproc, the trust anchors only for certproc and
    # revokeproc, as before: the configuration joins them in the same directory.
    assert [c["name"] for c in configmap_sources(volumes["ca-bundle"])] == [
        "letskencrypt-ca-bundle", "letskencrypt-config",
    ]
    assert [c["name"] for c in configmap_sources(volumes["trust-anchors"])] == [
        "letskencrypt-trust-anchors", "letskencrypt-config",
    ]


def test_the_example_configuration_suits_the_containers() -> None:
    """The example acme-client.conf parses, and its handles and authorities
    can name the containers' fixed files."""
    text = config_map("letskencrypt-config")["data"]["acme-client.conf"]
    config = conf.parse(text, "letskencrypt-config")
    assert config.domains
    for domain in conf.select(config, []):
        assert pod.paths(domain)
    settings = config_map("letskencrypt")["data"]
    assert "CONFIG" not in settings  # one certificate (DOMAINS) unless asked


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


def cronjob_as_test_pod(
    name: str, pebble: Pebble, dirs: dict[str, Path], environment: dict[str, str] | None = None
) -> dict[str, Any]:
    """The CronJob's Pod template as a Pod podman can play: the user's volumes
    become host directories, the images are the ones under test
    (IMAGE_PREFIX), and the host's network reaches pebble on loopback."""
    spec = copy.deepcopy(pod_specs()["cronjob"])
    spec["hostNetwork"] = True
    environment = environment or {
        "DOMAINS": "kube.example.org www.kube.example.org",
        "ACME_SERVER": pebble.directory_url,
        "VERBOSE": "1",
    }
    for container in spec["containers"]:
        role = container["image"].removeprefix("localhost/letskencrypt-").split(":")[0]
        if role in ROLES:
            container["image"] = f"{IMAGE_PREFIX}{role}:latest"
        container.pop("envFrom", None)
        container["env"] = [
            *container.get("env", []),
            *({"name": k, "value": v} for k, v in environment.items()),
        ]
    for volume in spec["volumes"]:
        if volume["name"] in dirs:
            for kind in ("persistentVolumeClaim", "configMap", "projected"):
                volume.pop(kind, None)
            volume["hostPath"] = {"path": str(dirs[volume["name"]]), "type": "Directory"}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


@contextlib.contextmanager
def played(
    pebble: Pebble, tmp_path: Path, environment: dict[str, str] | None = None,
    config: str | None = None,
) -> Iterator[tuple[str, dict[str, Path]]]:
    """The CronJob's Pod under `podman play kube` (its name and host
    directories), taken down afterwards; `config` is acme-client.conf."""
    tmp_path.chmod(0o755)
    dirs = {name: tmp_path / name for name in
            ("account-key", "domain-key", "certificates", "ca-bundle", "trust-anchors", "config")}
    for path in dirs.values():
        path.mkdir()
        path.chmod(0o777)
    shutil.copy(pebble.ca_bundle, dirs["ca-bundle"] / "ca.pem")
    shutil.copy(pebble.trust_anchors, dirs["trust-anchors"] / "trust-anchors.pem")
    if config is not None:
        # The three views of /etc/letskencrypt that the projected volumes make.
        for view in ("config", "ca-bundle", "trust-anchors"):
            (dirs[view] / "acme-client.conf").write_text(config)
            (dirs[view] / "acme-client.conf").chmod(0o644)
    dirs["challenge"] = pebble.challenge_dir
    pebble.challenge_dir.chmod(0o777)
    name = f"lkt-kube-{secrets.token_hex(3)}"
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(yaml.safe_dump(cronjob_as_test_pod(name, pebble, dirs, environment)))
    try:
        podman("play", "kube", str(manifest))
        yield name, dirs
    finally:
        podman("play", "kube", "--down", str(manifest), check=False)
        pebble.challenge_dir.chmod(0o755)


def dns_names(path: Path) -> list[str]:
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return sorted(names.value.get_values_for_type(x509.DNSName))


def test_cronjob_pod_gets_a_certificate_under_podman(
    pebble: Pebble, tmp_path: Path, built_images: None
) -> None:
    with played(pebble, tmp_path) as (name, dirs):
        status = podman("wait", f"{name}-netproc", timeout=240).stdout.strip()
        logs = podman("logs", f"{name}-netproc", check=False)
        assert status == "0", logs.stdout + logs.stderr
        assert dns_names(dirs["certificates"] / "cert.pem") == [
            "kube.example.org", "www.kube.example.org",
        ]
        assert list(pebble.challenge_dir.iterdir()) == []
        # Every container of the Pod ends by itself.
        for role in ROLES:
            assert podman("wait", f"{name}-{role}", timeout=60).stdout.strip() == "0", role


KUBE_CONFIGURED = {
    "one": ["one.kube.example.org", "www.one.kube.example.org"],
    "two": ["two.kube.example.org"],
}


def test_cronjob_pod_renews_every_certificate_of_a_configuration(
    pebble: Pebble, tmp_path: Path, built_images: None
) -> None:
    """CONFIG in the Pod: both certificates of the file, one after the other."""
    config = "\n".join([
        "authority pebble {",
        f'    api url "{pebble.directory_url}"',
        '    account key "/ignored/account.pem"',
        "}",
        *(line for handle, names in KUBE_CONFIGURED.items() for line in (
            f"domain {handle} {{",
            f"    domain name {names[0]}",
            *([f"    alternative names {{ {' '.join(names[1:])} }}"] if names[1:] else []),
            f'    domain key "/ignored/{handle}.pem"',
            "    sign with pebble",
            "}",
        )),
    ]) + "\n"  # fmt: skip
    environment = {"CONFIG": CONFIG_MOUNT, "VERBOSE": "1"}
    with played(pebble, tmp_path, environment, config) as (name, dirs):
        status = podman("wait", f"{name}-netproc", timeout=240).stdout.strip()
        logs = podman("logs", f"{name}-netproc", check=False)
        assert status == "0", logs.stdout + logs.stderr
        for handle, names in KUBE_CONFIGURED.items():
            assert dns_names(dirs["certificates"] / handle / "cert.pem") == sorted(names)
        assert (dirs["account-key"] / "pebble.pem").exists()
        for role in ROLES:
            assert podman("wait", f"{name}-{role}", timeout=60).stdout.strip() == "0", role
