"""End to end, native mode: certificates for IP addresses (RFC 8738).

Against both pebbles (Debian 12's 2.4 and unstable's 2.10), which issue for
"ip" identifiers and validate http-01 by connecting to the address itself on
their httpPort (tests/pebble.py serves the challenge directory on 127.0.0.1
and ::1 at that port).  Against tests/hostile_ca.py, a CA that knows only
"dns" identifiers and answers rejectedIdentifier: the run says, in one line,
that the CA does not issue for IP addresses, before any authorization.
"""

import ipaddress
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.conftest import (
    LETSKENCRYPT,
    RUN_TIMEOUT,
    Paths,
    run_client,
    run_config,
    without_terms,
    write_config,
)
from tests.hostile_ca import HostileCA, Material
from tests.pebble import Pebble


@pytest.fixture(params=["pebble", "pebble_sid"])
def ca(request: pytest.FixtureRequest) -> Pebble:
    """Each test once with pebble 2.4 and once with pebble 2.10."""
    return request.getfixturevalue(request.param)


@pytest.fixture
def ip_paths(tmp_path: Path, ca: Pebble) -> Paths:
    tmp_path.chmod(0o755)
    return Paths(base=tmp_path, challenge_dir=ca.challenge_dir)


def leaf(paths: Paths) -> x509.Certificate:
    return x509.load_pem_x509_certificate((paths.cert_dir / "cert.pem").read_bytes())


def sans(certificate: x509.Certificate) -> tuple[list[str], list[str]]:
    """The leaf's dNSName entries and iPAddress entries (as text), sorted."""
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (
        sorted(san.get_values_for_type(x509.DNSName)),
        sorted(str(address) for address in san.get_values_for_type(x509.IPAddress)),
    )


def common_names(certificate: x509.Certificate) -> list[str]:
    return [str(a.value) for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def issue_then_nothing_to_do(
    ca: Pebble, paths: Paths, first: list[str], again: list[str]
) -> x509.Certificate:
    """A first run for `first` installs a certificate; a second for `again`
    (the same names, maybe written otherwise) exits 2 without a request."""
    issued = run_client(ca, paths, "-n", "-N", *first)
    assert issued.code == 0, issued.stderr
    assert list(paths.challenge_dir.iterdir()) == []
    certificate = leaf(paths)
    before = ca.request_count()
    # --no-ari: the CA's renewal information is test_e2e_ari's.
    rerun = run_client(ca, paths, "--no-ari", *again)
    assert rerun.code == 2, rerun.stderr
    assert ca.request_count() == before
    assert leaf(paths) == certificate
    return certificate


def test_ipv4_loopback(ca: Pebble, ip_paths: Paths) -> None:
    certificate = issue_then_nothing_to_do(ca, ip_paths, ["127.0.0.1"], ["127.0.0.1"])
    assert sans(certificate) == ([], ["127.0.0.1"])
    # The address is in iPAddress only: our CSR has no CN, nor has the leaf one
    # that is not its address.
    assert set(common_names(certificate)) <= {"127.0.0.1"}


def test_ipv6_loopback_written_otherwise(ca: Pebble, ip_paths: Paths) -> None:
    # "0:0:0::1" is ::1 (RFC 5952 text): the order, the CSR, the leaf and the
    # renewal check all see the one canonical address.
    log_before = len(ca.log_text())
    certificate = issue_then_nothing_to_do(ca, ip_paths, ["0:0:0::1"], ["::1"])
    assert sans(certificate) == ([], ["::1"])
    # The CA fetched the challenge from the address itself.
    validated = f"validate w/ HTTP: http://[::1]:{ca.http_port}/.well-known/acme-challenge/"
    assert validated in ca.log_text()[log_before:]
    address = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert address.value.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("::1")]


def test_domain_name_and_addresses(ca: Pebble, ip_paths: Paths) -> None:
    names = ["127.0.0.1", "ip.example.org", "::1"]
    certificate = issue_then_nothing_to_do(ca, ip_paths, names, names)
    assert sans(certificate) == (["ip.example.org"], ["127.0.0.1", "::1"])
    assert common_names(certificate) in ([], ["ip.example.org"])

    # One address less: the names changed, so a new certificate without -F.
    fewer = run_client(ca, ip_paths, "-v", "127.0.0.1", "ip.example.org")
    assert fewer.code == 0, fewer.stderr
    assert "names changed: removing ['::1']" in fewer.stderr
    assert sans(leaf(ip_paths)) == (["ip.example.org"], ["127.0.0.1"])


def test_addresses_in_a_configuration_file(pebble: Pebble, tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    config = write_config(tmp_path, pebble, {"::1": ["alternative names { 127.0.0.1 }"]})
    first = run_config(config)
    assert first.code == 0, first.stderr
    cert_dir = tmp_path / "state" / "certs" / "::1"
    certificate = x509.load_pem_x509_certificate((cert_dir / "cert.pem").read_bytes())
    assert sans(certificate) == ([], ["127.0.0.1", "::1"])
    before = pebble.request_count()
    again = run_config(config)
    assert again.code == 2, again.stderr
    assert pebble.request_count() == before


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("fe80::1%lo", "a zone id"),
        ("127.000.0.1", "without leading zeros"),
        ("::ffff:127.0.0.1", "IPv4-mapped address; give the IPv4 address 127.0.0.1"),
        ("10.0.0.0/8", "a prefix is no address"),
        ("[::1]", "without brackets"),
        ("*.127.0.0.1", "a wildcard cannot cover an IP address"),
        ("224.0.0.1", "a multicast address cannot be validated"),
    ],
)
def test_bad_addresses_fail_in_one_line_before_the_ca(
    pebble: Pebble, paths: Paths, name: str, reason: str
) -> None:
    before = pebble.request_count()
    result = run_client(pebble, paths, "-n", "-N", "ok.example.org", name)
    assert result.code == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert reason in result.stderr
    assert pebble.request_count() == before
    assert not paths.account_key.exists() and not paths.domain_key.exists()


def test_a_ca_without_ip_identifiers_is_named_before_any_authorization(tmp_path: Path) -> None:
    material = Material.create(tmp_path / "material")
    paths = Paths(base=tmp_path / "client", challenge_dir=tmp_path / "challenges")
    paths.challenge_dir.mkdir()
    with HostileCA(material, challenge_dir=paths.challenge_dir) as hostile:
        argv = [
            LETSKENCRYPT, "--server", hostile.directory_url,
            "--ca-bundle", str(material.ca_bundle), "--trust-anchors", str(material.trust_anchors),
            "-C", str(paths.challenge_dir), "-c", str(paths.cert_dir),
            "-f", str(paths.account_key), "-k", str(paths.domain_key),
            "-n", "-N", "ip.example.org", "::1",
        ]  # fmt: skip
        result = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT)
        stages = hostile.stages_seen()
    assert result.returncode == 1
    line = without_terms(result.stderr)
    assert line.startswith(
        "letskencrypt: netproc: the CA does not issue certificates for IP addresses "
        "(HTTP 400: rejectedIdentifier: "
    ), result.stderr
    assert line.count("\n") == 1
    assert "newOrder" in stages
    assert not {"authz", "challenge", "finalize"} & set(stages)
    assert not (paths.cert_dir / "cert.pem").exists()
