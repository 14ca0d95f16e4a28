"""End to end, native mode: dns-01 (RFC 8555 section 8.4) by RFC 2136 update
with TSIG, against pebble and a real BIND `named` (tests/dnsserver.py).

pebble resolves every name, and validates dns-01, through named
(`Pebble(dns_server=...)`); the client's chngproc signs the updates, dnsproc
carries them to named and asks named (--dns-check-server: it listens on a
port of its own, not on the 53 its NS record implies) until the TXT record
is served.  After every run the records are asked of named itself: none may
be left, whatever became of the run.
"""

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests.conftest import (
    LETSKENCRYPT,
    RUN_TIMEOUT,
    Paths,
    Result,
    run_client,
    run_config,
    write_config,
)
from tests.dnsserver import AuthoritativeDns
from tests.pebble import Pebble

ZONE = "example.test"
# Every name the tests validate, with an A record for http-01.
HOSTS = {"web": "127.0.0.1", "www": "127.0.0.1", "mixed": "127.0.0.1"}


@pytest.fixture(scope="module")
def named() -> Iterator[AuthoritativeDns]:
    with AuthoritativeDns(a_records=HOSTS) as server:
        yield server


@pytest.fixture(scope="module")
def ca(named: AuthoritativeDns) -> Iterator[Pebble]:
    """pebble 2.4 resolving through named; pebble 2.10 is in test_e2e_dns01_sid."""
    with Pebble(dns_server=named.dns_server) as server:
        os.chmod(server.challenge_dir, 0o755)
        yield server


@pytest.fixture
def paths(tmp_path: Path, ca: Pebble) -> Paths:
    tmp_path.chmod(0o755)
    return Paths(base=tmp_path, challenge_dir=ca.challenge_dir)


def dns_args(named: AuthoritativeDns, *extra: str) -> list[str]:
    return [
        "--challenge", "dns-01",
        "--dns-server", named.dns_server,
        "--tsig-key", named.tsig_key_file,
        "--dns-check-server", named.dns_server,
        *extra,
    ]  # fmt: skip


def acme_records(named: AuthoritativeDns) -> dict[str, list[str]]:
    """Every _acme-challenge TXT record named holds under the names the tests use."""
    owners = [f"_acme-challenge.{ZONE}", *(f"_acme-challenge.{h}.{ZONE}" for h in HOSTS)]
    return {owner: values for owner in owners if (values := named.txt(owner))}


def dns_names(paths: Paths, name: str = "cert.pem") -> list[str]:
    leaf = x509.load_pem_x509_certificate((paths.cert_dir / name).read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted(san.get_values_for_type(x509.DNSName))


def one_line(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_name_and_its_wildcard(ca: Pebble, named: AuthoritativeDns, paths: Paths) -> None:
    result = run_client(ca, paths, "-n", "-N", *dns_args(named), ZONE, f"*.{ZONE}")
    assert result.code == 0, result.stderr
    assert dns_names(paths) == sorted([ZONE, f"*.{ZONE}"])
    assert acme_records(named) == {}
