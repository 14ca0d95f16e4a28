"""compose.yaml under real podman-compose, against pebble on the host's loopback.

Every container's security settings are read back from `podman inspect`.
"""

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from letskencrypt import container, roles, rpc

from tests.conftest import ROOT
from tests.pebble import Pebble

PODMAN_COMPOSE = str(Path(sys.executable).parent / "podman-compose")
CONTAINERS_CONF = str(ROOT / "deploy" / "podman" / "containers.conf")
ROLES = (
    "netproc", "acctproc", "keyproc", "dnsproc",
    "chngproc", "certproc", "fileproc", "revokeproc",
)
EDGES = {
    "acct": ("netproc", "acctproc"),
    "key": ("netproc", "keyproc"),
    "dns": ("netproc", "dnsproc"),
    "chng": ("netproc", "chngproc"),
    "rvk": ("netproc", "revokeproc"),
    "cert": ("netproc", "certproc"),
    "file": ("certproc", "fileproc"),
    "keyinfo": ("certproc", "keyproc"),
    "keyacct": ("acctproc", "keyproc"),
}
RUN_TIMEOUT = 240
# The images under test: compose.yaml reads IMAGE_PREFIX too (`make images
# IMAGE_PREFIX=...` builds them).
IMAGE_PREFIX = os.environ.get("IMAGE_PREFIX") or "localhost/letskencrypt-"
CONFIG_MOUNT = container.CONFIG_PATH


def image(role: str) -> str:
    return f"{IMAGE_PREFIX}{role}:latest"


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, check=check,
        env={**os.environ, "CONTAINERS_CONF": CONTAINERS_CONF}, timeout=RUN_TIMEOUT,
    )


@dataclass
class Pod:
    project: str
    pebble: Pebble
    dirs: dict[str, Path]
    # An acme-client.conf file instead of DOMAINS (LETSKENCRYPT_CONFIG).
    config: Path | None = None

    def environment(self, **extra: str) -> dict[str, str]:
        names = "compose.example.org www.compose.example.org"
        return {
            **os.environ,
            "CONTAINERS_CONF": CONTAINERS_CONF,
            "DOMAINS": "" if self.config else names,
            "LETSKENCRYPT_CONFIG": str(self.config or ""),
            "ACME_SERVER": self.pebble.directory_url,
            "ACME_CA_BUNDLE": self.pebble.ca_bundle,
            "ACME_TRUST_ANCHORS": self.pebble.trust_anchors,
            "NETPROC_NETWORK": "host",
            "CERT_DIR": str(self.dirs["certs"]),
            "CHALLENGE_DIR": str(self.dirs["challenge"]),
            "ACCOUNT_KEY_DIR": str(self.dirs["account"]),
            "DOMAIN_KEY_DIR": str(self.dirs["domain-key"]),
            "VERBOSE": "1",
            **extra,
        }

    def compose(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PODMAN_COMPOSE, "-p", self.project, "-f", str(ROOT / "compose.yaml"), *args],
            capture_output=True, text=True, env=self.environment(**extra), timeout=RUN_TIMEOUT,
            check=False,
        )

    def up(self, **extra: str) -> subprocess.CompletedProcess[str]:
        return self.compose("up", "--abort-on-container-exit", "--exit-code-from", "netproc",
                            **extra)

    def containers(self) -> dict[str, dict]:
        listing = podman("ps", "-a", "--format", "json",
                         "--filter", f"label=io.podman.compose.project={self.project}")
        found = {}
        for entry in json.loads(listing.stdout or "[]"):
            service = entry["Labels"]["com.docker.compose.service"]
            found[service] = json.loads(podman("inspect", entry["Id"]).stdout)[0]
        return found


@contextlib.contextmanager
def made_pod(
    pebble: Pebble, base: Path, config: Callable[[Path], Path] | None = None
) -> Iterator[Pod]:
    """A compose project of its own with host directories under `base`
    (`config` writes its configuration file there), removed afterwards."""
    base.chmod(0o755)
    dirs = {name: base / name for name in ("certs", "account", "domain-key")}
    for path in dirs.values():
        # Host directories owned by root with open permissions must do.
        path.mkdir()
        path.chmod(0o777)
    dirs["challenge"] = pebble.challenge_dir
    pebble.challenge_dir.chmod(0o777)
    project = f"lkt{secrets.token_hex(4)}"
    pod = Pod(project, pebble, dirs, config(base) if config else None)
    try:
        yield pod
    finally:
        pod.compose("down", "-v", "-t", "2")
        leftovers = podman("ps", "-a", "-q", "--filter",
                           f"label=io.podman.compose.project={project}").stdout.split()
        if leftovers:
            podman("rm", "-f", *leftovers, check=False)
        volumes = podman(
            "volume", "ls", "-q", "--filter", f"label=io.podman.compose.project={project}"
        ).stdout.split()
        if volumes:
            podman("volume", "rm", "-f", *volumes, check=False)
        pebble.challenge_dir.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def pod(
    pebble: Pebble, tmp_path_factory: pytest.TempPathFactory, built_images: None
) -> Iterator[Pod]:
    with made_pod(pebble, tmp_path_factory.mktemp("compose")) as made:
        yield made


def leaf(pod: Pod) -> x509.Certificate:
    return x509.load_pem_x509_certificate((pod.dirs["certs"] / "cert.pem").read_bytes())


def test_compose_issues_then_has_nothing_to_do_then_forces(pod: Pod) -> None:
    started = time.monotonic()
    first = pod.up()
    elapsed = time.monotonic() - started
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    certificate = leaf(pod)
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(names.get_values_for_type(x509.DNSName)) == [
        "compose.example.org", "www.compose.example.org",
    ]
    print(f"podman-compose up to certificate on disk: {elapsed:.1f} s")
    for key in (pod.dirs["account"] / "privkey.pem", pod.dirs["domain-key"] / "privkey.pem"):
        assert oct(key.stat().st_mode & 0o777) == oct(0o400)
    assert list(pod.dirs["challenge"].iterdir()) == []
    # Every container stopped by itself.
    containers = pod.containers()
    assert sorted(containers) == sorted(ROLES)
    for service, info in containers.items():
        assert not info["State"]["Running"], service

    again = pod.up()
    assert again.returncode == 2, again.stdout[-3000:] + again.stderr[-3000:]
    assert leaf(pod) == certificate

    forced = pod.up(FORCE="1")
    assert forced.returncode == 0, forced.stdout[-3000:] + forced.stderr[-3000:]
    assert leaf(pod).serial_number != certificate.serial_number


def mounts_of(info: dict) -> dict[str, tuple[str, bool]]:
    """destination -> (volume name or host path, read-write)"""
    return {
        mount["Destination"]: (mount.get("Name") or mount["Source"], mount["RW"])
        for mount in info["Mounts"]
    }


def test_the_graph_here_is_the_one_in_rpc() -> None:
    """This file's copy of the graph (which test_kubernetes uses too) follows
    rpc.EDGES: an edge added there must be placed in every deployment."""
    assert {name: (e.client, e.server) for name, e in rpc.EDGES.items()} == EDGES
    assert set(roles.ROLES) == set(ROLES)


def test_compose_file_mounts_each_edge_only_on_its_ends() -> None:
    """Read from compose.yaml itself, without podman (the pod tests read it back
    from `podman inspect`)."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    socket_volume = {"driver_opts": {"o": "uid=65532,gid=65532"}}
    assert compose["volumes"] == dict.fromkeys(EDGES, socket_volume)
    for service, spec in compose["services"].items():
        sockets = {
            volume.split(":")[0]: volume.split(":", 1)[1]
            for volume in spec.get("volumes", [])
            if volume.split(":")[0] in EDGES
        }
        assert sockets == {
            edge: f"/run/letskencrypt/{edge}" for edge, ends in EDGES.items() if service in ends
        }, service


def test_every_container_is_locked_down(pod: Pod) -> None:
    containers = pod.containers()
    if not containers:
        assert pod.up().returncode in (0, 2)
        containers = pod.containers()
    assert_locked_down(containers)


def assert_locked_down(containers: dict[str, dict]) -> None:
    """Read-only root, no capabilities, no network but netproc's (and dnsproc in it)."""
    assert sorted(containers) == sorted(ROLES)
    netproc_id = containers["netproc"]["Id"]
    for service, info in containers.items():
        host = info["HostConfig"]
        assert host["ReadonlyRootfs"] is True, service
        assert info["EffectiveCaps"] in (None, []), (service, info["EffectiveCaps"])
        assert info["BoundingCaps"] in (None, []), (service, info["BoundingCaps"])
        assert "no-new-privileges" in " ".join(host["SecurityOpt"] or []), service
        assert info["Config"]["User"] == "65532:65532", service
        assert host["Init"] is True, service
        assert host["Memory"] > 0 and host["PidsLimit"] > 0, service
        expected_network = {"netproc": "host", "dnsproc": f"container:{netproc_id}"}
        assert host["NetworkMode"] == expected_network.get(service, "none"), service


def test_each_container_mounts_exactly_its_edges(pod: Pod) -> None:
    containers = pod.containers()
    if not containers:
        assert pod.up().returncode in (0, 2)
        containers = pod.containers()
    assert_mounts(pod, containers)


def assert_mounts(pod: Pod, containers: dict[str, dict]) -> None:
    """Each container mounts its edges' volumes, its own host files and the
    configuration file, nothing else."""
    for service, info in containers.items():
        expected: dict[str, tuple[str, bool]] = {
            f"/run/letskencrypt/{edge}": (f"{pod.project}_{edge}", True)
            for edge, ends in EDGES.items()
            if service in ends
        }
        extra = {
            "netproc": {"/etc/letskencrypt/ca.pem": (pod.pebble.ca_bundle, False)},
            "acctproc": {"/etc/acme": (str(pod.dirs["account"]), True)},
            "keyproc": {"/etc/ssl/private/acme": (str(pod.dirs["domain-key"]), True)},
            "chngproc": {
                "/var/www/acme": (str(pod.dirs["challenge"]), True),
                # dns-01's TSIG key (TSIG_KEY; /dev/null without one), here alone.
                "/etc/letskencrypt/tsig.key": ("/dev/null", False),
            },
            "revokeproc": {
                "/etc/ssl/acme": (str(pod.dirs["certs"]), False),
                "/etc/letskencrypt/trust-anchors.pem": (pod.pebble.trust_anchors, False),
            },
            "certproc": {
                "/etc/letskencrypt/trust-anchors.pem": (pod.pebble.trust_anchors, False),
            },
            "fileproc": {"/etc/ssl/acme": (str(pod.dirs["certs"]), True)},
        }
        expected.update(extra.get(service, {}))
        # Every role reads the configuration file, if any (/dev/null: none).
        expected[CONFIG_MOUNT] = (str(pod.config or "/dev/null"), False)
        assert mounts_of(info) == expected, service


def test_a_role_without_network_cannot_connect(pod: Pod) -> None:
    port = pod.pebble.directory_url.split(":")[2].split("/")[0]
    # pebble listens on the host's 127.0.0.1; a role's own namespace has only lo.
    probe = (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
        "    print('CONNECTED 127.0.0.1')\n"
        "except OSError as error:\n"
        "    print('refused 127.0.0.1', error)\n"
    )
    for service in ("acctproc", "keyproc", "fileproc"):
        result = pod.compose("run", "--rm", "--entrypoint", "python3", service, "-c", probe)
        assert "CONNECTED" not in result.stdout, (service, result.stdout, result.stderr)
        assert "refused 127.0.0.1" in result.stdout, (service, result.stdout, result.stderr)


def test_compose_daemon_renews_when_due_and_stops_cleanly(pod: Pod) -> None:
    """DAEMON=1: the pod stays up, renews when the certificate goes away,
    rewrites .generation for the web server, and stops with status 0."""
    generation = pod.dirs["certs"] / ".generation"
    up = pod.compose("up", "-d", DAEMON="1", RENEW_INTERVAL="2", RENEW_BACKOFF="1")
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    try:
        deadline = time.monotonic() + 90
        while not (pod.dirs["certs"] / "cert.pem").exists() or not generation.exists():
            assert time.monotonic() < deadline, "no certificate from the daemon"
            time.sleep(0.2)
        first = generation.read_text()
        running = pod.containers()
        assert all(info["State"]["Running"] for info in running.values()), running.keys()
        # The certificate goes away (as if expired): the next check renews.
        (pod.dirs["certs"] / ".live").unlink()
        while generation.read_text() == first or not (pod.dirs["certs"] / "cert.pem").exists():
            assert time.monotonic() < deadline, "the daemon did not renew"
            time.sleep(0.2)
    finally:
        stopped = pod.compose("stop", "-t", "20")
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    containers = pod.containers()
    for service, info in containers.items():
        assert not info["State"]["Running"], service
    assert containers["netproc"]["State"]["ExitCode"] == 0
    assert list(pod.dirs["challenge"].iterdir()) == []


# --- CONFIG: every certificate of an acme-client.conf file ------------------------

CONFIGURED = {
    "alpha": ["alpha.compose.example.org", "www.alpha.compose.example.org"],
    "beta": ["beta.compose.example.org"],
    "gamma.compose.example.org": ["gamma.compose.example.org"],
}


def write_configuration(pebble: Pebble) -> Callable[[Path], Path]:
    """An acme-client.conf of three certificates; its paths are the host's
    and are ignored in the containers (fixed paths there)."""

    def write(base: Path) -> Path:
        lines = [
            f'ca = "{pebble.directory_url}"',
            "authority pebble {",
            "    api url $ca",
            '    account key "/etc/acme/ignored.pem"',
            '    contact "mailto:ops@compose.example.org"',
            "}",
        ]
        for handle, names in CONFIGURED.items():
            lines += [
                f"domain {handle} {{",
                f"    domain name {names[0]}",
                *([f"    alternative names {{ {' '.join(names[1:])} }}"] if names[1:] else []),
                f'    domain key "/ignored/{handle}.pem"',
                "    sign with pebble",
                "}",
            ]
        path = base / "acme-client.conf"
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o644)
        return path

    return write


@pytest.fixture(scope="module")
def config_pod(
    pebble: Pebble, tmp_path_factory: pytest.TempPathFactory, built_images: None
) -> Iterator[Pod]:
    base = tmp_path_factory.mktemp("compose-config")
    with made_pod(pebble, base, write_configuration(pebble)) as made:
        yield made


def installed(pod: Pod, handle: str) -> x509.Certificate:
    path = pod.dirs["certs"] / handle / "cert.pem"
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_compose_renews_every_certificate_of_a_configuration(config_pod: Pod) -> None:
    pod = config_pod
    started = time.monotonic()
    first = pod.up()
    elapsed = time.monotonic() - started
    output = first.stdout[-6000:] + first.stderr[-6000:]
    assert first.returncode == 0, output
    print(f"podman-compose up to three certificates on disk: {elapsed:.1f} s")
    for handle, names in CONFIGURED.items():
        san = installed(pod, handle).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value
        assert sorted(san.get_values_for_type(x509.DNSName)) == sorted(names), handle
        key = pod.dirs["domain-key"] / f"{handle}.pem"
        assert oct(key.stat().st_mode & 0o777) == oct(0o400), handle
    # One account for the authority, at the fixed path; the file's own is ignored.
    keys = sorted(p.name for p in pod.dirs["account"].iterdir() if p.suffix == ".pem")
    assert keys == ["pebble.pem"]
    assert list(pod.dirs["challenge"].iterdir()) == []
    containers = pod.containers()
    for service, info in containers.items():
        assert not info["State"]["Running"], service
        assert info["State"]["ExitCode"] == 0, (service, output)
    assert_locked_down(containers)
    assert_mounts(pod, containers)

    before = {handle: installed(pod, handle).serial_number for handle in CONFIGURED}
    requests = pod.pebble.request_count()
    started = time.monotonic()
    again = pod.up()
    elapsed = time.monotonic() - started
    assert again.returncode == 2, again.stdout[-6000:] + again.stderr[-6000:]
    print(f"podman-compose up with nothing due: {elapsed:.1f} s")
    # No order, not even a nonce: nothing reached the CA but the unsigned
    # GETs of its directory for renewal information (RFC 9773; a container
    # keeps no state between runs, so it asks each time, see test_e2e_ari).
    asked = pod.pebble.request_lines()[requests:]
    assert all(method == "GET" and (url == "/dir" or "renewalInfo" in url)
               for method, url in asked), asked  # fmt: skip
    assert {handle: installed(pod, handle).serial_number for handle in CONFIGURED} == before


def test_compose_configuration_with_a_broken_key_fails_that_certificate_alone(
    config_pod: Pod,
) -> None:
    """A role that cannot start for one certificate (keyproc, its domain key
    is garbage) answers that certificate's calls with why: netproc fails it at
    once, names it, and renews the others; nobody waits for a timeout."""
    pod = config_pod
    if not (pod.dirs["certs"] / "beta" / "cert.pem").exists():
        assert pod.up().returncode == 0
    before = {handle: installed(pod, handle).serial_number for handle in CONFIGURED}
    broken = pod.dirs["domain-key"] / "beta.pem"
    broken.unlink()
    broken.write_text("not a key\n")
    broken.chmod(0o444)
    started = time.monotonic()
    forced = pod.up(FORCE="1")
    elapsed = time.monotonic() - started
    output = forced.stdout[-8000:] + forced.stderr[-8000:]
    assert forced.returncode == 1, output
    print(f"podman-compose up, one of three failing: {elapsed:.1f} s")
    assert elapsed < 90, output  # READY_TIMEOUT is 120 s: nobody waited for it
    assert "netproc: certificate beta: failed" in output, output
    assert "could not start for certificate beta" in output, output
    after = {handle: installed(pod, handle).serial_number for handle in CONFIGURED}
    assert after["beta"] == before["beta"]
    assert after["alpha"] != before["alpha"]
    assert after["gamma.compose.example.org"] != before["gamma.compose.example.org"]
    codes = {service: info["State"]["ExitCode"] for service, info in pod.containers().items()}
    assert codes == {**dict.fromkeys(ROLES, 0), "netproc": 1, "keyproc": 1}, output
    assert list(pod.dirs["challenge"].iterdir()) == []


def test_compose_dns01_keeps_the_tsig_key_in_chngproc_alone(
    tmp_path_factory: pytest.TempPathFactory, built_images: None
) -> None:
    """dns-01 in the pod, against pebble and BIND named on the host's
    loopback: a name and its wildcard; the TSIG key is mounted into
    chngproc's container and no other, which stays off every network; no
    record is left."""
    from tests.dnsserver import AuthoritativeDns

    with (
        AuthoritativeDns() as named,
        Pebble(dns_server=named.dns_server) as ca,
        made_pod(ca, tmp_path_factory.mktemp("compose-dns01")) as pod,
    ):
        key = pod.dirs["certs"].parent / "tsig.key"
        shutil.copyfile(named.tsig_key_file, key)
        os.chown(key, 65532, 65532)  # the containers' user: its owner alone reads it
        key.chmod(0o400)
        names = f"{named.zone} *.{named.zone}"
        run = pod.up(DOMAINS=names, CHALLENGE="dns-01", DNS_SERVER=named.dns_server,
                     DNS_CHECK_SERVER=named.dns_server, TSIG_KEY=str(key))  # fmt: skip
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        san = leaf(pod).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sorted(san.get_values_for_type(x509.DNSName)) == sorted(names.split())
        assert named.txt(f"_acme-challenge.{named.zone}") == []
        containers = pod.containers()
        holders = {
            role for role, info in containers.items()
            if any(m["Destination"] == "/etc/letskencrypt/tsig.key" and m["Source"] == str(key)
                   for m in info["Mounts"])
        }  # fmt: skip
        assert holders == {"chngproc"}
        assert containers["chngproc"]["HostConfig"]["NetworkMode"] == "none"
