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
    stop_when,
    without_terms,
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
    """pebble 2.4 resolving through named."""
    with Pebble(dns_server=named.dns_server) as server:
        os.chmod(server.challenge_dir, 0o755)
        yield server


@pytest.fixture(scope="module")
def ca_sid(named: AuthoritativeDns) -> Iterator[Pebble]:
    """pebble 2.10 resolving through named."""
    with Pebble(generation="2.10", dns_server=named.dns_server) as server:
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


def dns_names(cert: Path) -> list[str]:
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted(san.get_values_for_type(x509.DNSName))


def one_line(result: Result) -> str:
    """The one line of the run's stderr (an account's creation aside)."""
    lines = without_terms(result.stderr).strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_name_and_its_wildcard(ca: Pebble, named: AuthoritativeDns, paths: Paths) -> None:
    result = run_client(ca, paths, "-n", "-N", *dns_args(named), ZONE, f"*.{ZONE}")
    assert result.code == 0, result.stderr
    assert dns_names(paths.cert_dir / "cert.pem") == sorted([ZONE, f"*.{ZONE}"])
    assert acme_records(named) == {}
    # The wildcard is one of the certificate's names: a rerun has nothing to
    # do (and without ARI's unsigned GETs, asks the CA nothing).
    before = ca.request_count()
    again = run_client(ca, paths, "--no-ari", *dns_args(named), ZONE, f"*.{ZONE}")
    assert again.code == 2, again.stderr
    assert ca.request_count() == before


def test_a_name_and_its_wildcard_on_pebble_2_10(
    ca_sid: Pebble, named: AuthoritativeDns, tmp_path: Path
) -> None:
    tmp_path.chmod(0o755)
    paths = Paths(base=tmp_path, challenge_dir=ca_sid.challenge_dir)
    result = run_client(ca_sid, paths, "-n", "-N", *dns_args(named), f"*.{ZONE}", f"www.{ZONE}")
    assert result.code == 0, result.stderr
    assert dns_names(paths.cert_dir / "cert.pem") == sorted([f"www.{ZONE}", f"*.{ZONE}"])
    assert acme_records(named) == {}


def test_a_record_a_killed_run_left_is_removed(
    ca: Pebble, named: AuthoritativeDns, paths: Paths
) -> None:
    """Records at _acme-challenge names belong to ACME validation: the first
    record a run adds under a name replaces what is there."""
    owner = f"_acme-challenge.www.{ZONE}"
    named.add_txt(owner, "left-by-a-killed-run")
    result = run_client(ca, paths, "-n", "-N", *dns_args(named), f"www.{ZONE}")
    assert result.code == 0, result.stderr
    assert acme_records(named) == {}


def test_http01_and_dns01_certificates_in_one_run(
    ca: Pebble, named: AuthoritativeDns, tmp_path: Path
) -> None:
    """Two certificates of one --config run: one by http-01 (its name has an A
    record in named, which pebble resolves), one by dns-01 with a wildcard,
    the dns-01 settings from the authority, http-01 the domain's own choice."""
    tmp_path.chmod(0o755)
    config = write_config(
        tmp_path, ca,
        {
            "web": ["alternative names { mixed.example.test }",
                    f'domain name "web.{ZONE}"', "challenge http-01"],
            "wild": [f'domain name "{ZONE}"', f'alternative names {{ "*.{ZONE}" }}'],
        },
        authority=(
            "challenge dns-01",
            f'dns server "{named.dns_server}"',
            f'tsig key "{named.tsig_key_file}"',
            f'dns check server "{named.dns_server}"',
        ),
    )  # fmt: skip
    result = run_config(config)
    assert result.code == 0, result.stderr
    certs = tmp_path / "state" / "certs"
    assert dns_names(certs / "web" / "cert.pem") == [f"mixed.{ZONE}", f"web.{ZONE}"]
    assert dns_names(certs / "wild" / "cert.pem") == [f"*.{ZONE}", ZONE]
    assert acme_records(named) == {}
    assert list(ca.challenge_dir.iterdir()) == []


def test_a_wrong_tsig_key_fails_in_one_line(
    ca: Pebble, named: AuthoritativeDns, paths: Paths
) -> None:
    """The server refuses the update (BADSIG): the run says so in one line at
    once, answers no challenge (the CA validates nothing) and leaves no record."""
    wrong = paths.base / "wrong.key"
    text = Path(named.tsig_key_file).read_text()
    secret = text.split('secret "')[1].split('"')[0]
    wrong.write_text(text.replace(secret, "A" * 43 + "="))
    before = ca.request_count()
    started = time.monotonic()
    result = run_client(
        ca, paths, "-n", "-N", "--challenge", "dns-01", "--dns-server", named.dns_server,
        "--tsig-key", str(wrong), "--dns-check-server", named.dns_server, f"www.{ZONE}",
    )  # fmt: skip
    assert result.code == 1
    line = one_line(result)
    assert "did not apply the update of _acme-challenge.www.example.test TXT" in line
    assert "BADSIG" in line
    assert time.monotonic() - started < 30
    assert acme_records(named) == {}
    # Not one challenge was answered: no POST to a challenge URL.
    posted = [path for method, path in ca.request_lines()[before:] if "/chalZ/" in path]
    assert posted == []


def test_a_failed_run_leaves_no_authorization_pending(
    ca: Pebble, named: AuthoritativeDns, paths: Paths
) -> None:
    """RFC 8555 7.5.2: once the run cannot go on (here the server refuses the
    update), the order's pending authorizations are deactivated, so nothing
    waits at the CA for the authorization to expire."""
    from letskencrypt import keys
    from letskencrypt.acme import AcmeClient, Transport

    from tests.test_acme import KeySigner, LoopbackResolver

    wrong = paths.base / "wrong.key"
    text = Path(named.tsig_key_file).read_text()
    wrong.write_text(text.replace(text.split('secret "')[1].split('"')[0], "B" * 43 + "="))
    result = run_client(
        ca, paths, "-v", "-n", "-N", "--challenge", "dns-01", "--dns-server", named.dns_server,
        "--tsig-key", str(wrong), "--dns-check-server", named.dns_server, f"web.{ZONE}",
    )  # fmt: skip
    assert result.code == 1
    prefix = "letskencrypt: netproc: deactivated the pending authorization "
    urls = [line[len(prefix):] for line in result.stderr.splitlines() if line.startswith(prefix)]
    assert len(urls) == 1, result.stderr
    client = AcmeClient(
        Transport(LoopbackResolver(), Path(ca.ca_bundle).read_bytes()),
        KeySigner(keys.load_key(str(paths.account_key))),
        ca.directory_url,
        bad_nonce_retries=40,
    )
    client.account([], create=False)
    assert client.authorization(urls[0], "dns-01").status == "deactivated"


def test_sigterm_during_the_propagation_check_leaves_no_record(
    ca: Pebble, named: AuthoritativeDns, paths: Paths
) -> None:
    """The check asks a second named, which never gets the record: the run
    waits until SIGTERM, then removes its record and dies of the signal."""
    with AuthoritativeDns(a_records=HOSTS) as elsewhere:
        argv = [
            LETSKENCRYPT, "--server", ca.directory_url, "--ca-bundle", ca.ca_bundle,
            "--trust-anchors", ca.trust_anchors, "-c", str(paths.cert_dir),
            "-f", str(paths.account_key), "-k", str(paths.domain_key), "-n", "-N",
            "--challenge", "dns-01", "--dns-server", named.dns_server,
            "--tsig-key", named.tsig_key_file, "--dns-check-server", elsewhere.dns_server,
            "--dns-propagation-timeout", "100", f"www.{ZONE}",
        ]  # fmt: skip
        process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
        stderr = stop_when(process, lambda: acme_records(named))
    assert process.returncode == -signal.SIGTERM, stderr
    assert acme_records(named) == {}, stderr
    assert not (paths.cert_dir / "cert.pem").exists()


def test_the_record_of_a_run_killed_outright_is_removed_by_the_next(
    ca: Pebble, named: AuthoritativeDns, paths: Paths
) -> None:
    """SIGKILL to the whole command during the propagation check: nothing can
    withdraw the record; the next run for the name replaces it, then removes it."""
    with AuthoritativeDns(a_records=HOSTS) as elsewhere:
        argv = [
            LETSKENCRYPT, "--server", ca.directory_url, "--ca-bundle", ca.ca_bundle,
            "--trust-anchors", ca.trust_anchors, "-c", str(paths.cert_dir),
            "-f", str(paths.account_key), "-k", str(paths.domain_key), "-n", "-N",
            "--challenge", "dns-01", "--dns-server", named.dns_server,
            "--tsig-key", named.tsig_key_file, "--dns-check-server", elsewhere.dns_server,
            f"www.{ZONE}",
        ]  # fmt: skip
        process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + RUN_TIMEOUT
            while not acme_records(named) and time.monotonic() < deadline:
                assert process.poll() is None, process.communicate()[1]
                time.sleep(0.05)
            left = acme_records(named)
            process.kill()
            process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
    assert list(left) == [f"_acme-challenge.www.{ZONE}"]
    assert acme_records(named) == left
    result = run_client(ca, paths, "-n", "-N", *dns_args(named), f"www.{ZONE}")
    assert result.code == 0, result.stderr
    assert acme_records(named) == {}


def test_a_wildcard_with_http01_is_refused_before_any_request(
    ca: Pebble, paths: Paths
) -> None:
    before = ca.request_count()
    result = run_client(ca, paths, "-n", "-N", f"*.{ZONE}")
    assert result.code == 1
    assert one_line(result) == (
        "letskencrypt: invalid domain name '*.example.test': a wildcard name needs "
        "--challenge dns-01 or dns-persist-01"
    )
    assert ca.request_count() == before
    assert not paths.account_key.exists()


@pytest.mark.parametrize(("extra", "message"), [
    (["--challenge", "dns-01", "--tsig-key", "/nonexistent"],
     "--challenge dns-01 needs --dns-server and --tsig-key"),
    (["--challenge", "dns-01", "--dns-server", "ns1.example.test", "--tsig-key", "/x"],
     "--dns-server 'ns1.example.test': give an IP address (and :PORT), not a name"),
    (["--challenge", "dns-01", "--dns-server", "127.0.0.1", "--tsig-key", "/nonexistent"],
     "--tsig-key /nonexistent: no such file"),
    (["--dns-server", "127.0.0.1"], "--dns-server goes with --challenge dns-01"),
])
def test_dns01_options_are_checked_before_any_request(
    ca: Pebble, paths: Paths, extra: list[str], message: str
) -> None:
    before = ca.request_count()
    result = run_client(ca, paths, "-n", "-N", *extra, f"www.{ZONE}")
    assert result.code == 1
    assert one_line(result) == f"letskencrypt: {message}"
    assert ca.request_count() == before


def test_addresses_alone_with_dns01_are_refused(
    ca: Pebble, named: AuthoritativeDns, paths: Paths
) -> None:
    result = run_client(ca, paths, "-n", "-N", *dns_args(named), "127.0.0.1")
    assert result.code == 1
    assert one_line(result) == (
        "letskencrypt: dns-01 validates domain names only; IP addresses need http-01"
    )


def test_one_certificate_by_dns01_and_http01(
    ca: Pebble, named: AuthoritativeDns, paths: Paths
) -> None:
    """A wildcard needs dns-01, an address http-01: in one certificate, each
    name goes by the one that can validate it (the address's file in -C)."""
    result = run_client(
        ca, paths, "-n", "-N", *dns_args(named), f"*.{ZONE}", "127.0.0.1", "-v")
    assert result.code == 0, result.stderr
    leaf = x509.load_pem_x509_certificate((paths.cert_dir / "cert.pem").read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [f"*.{ZONE}"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert f"published _acme-challenge.{ZONE} TXT" in result.stderr
    assert acme_records(named) == {}
    assert list(ca.challenge_dir.iterdir()) == []


def test_a_malformed_tsig_key_fails_in_one_line(
    ca: Pebble, named: AuthoritativeDns, paths: Paths
) -> None:
    """chngproc, the only reader of the key, says what is wrong with it; not the secret."""
    bad = paths.base / "bad.key"
    bad.write_text('key "k" {\n\talgorithm hmac-md5;\n\tsecret "c2VjcmV0c2VjcmV0c2VjcmV0";\n};\n')
    before = ca.request_count()
    result = run_client(
        ca, paths, "-n", "-N", "--challenge", "dns-01", "--dns-server", named.dns_server,
        "--tsig-key", str(bad), f"www.{ZONE}",
    )  # fmt: skip
    assert result.code == 1
    assert f"TSIG key {bad}: algorithm 'hmac-md5' is not one of hmac-sha256" in result.stderr
    assert "c2VjcmV0" not in result.stderr
    assert ca.request_count() == before


def test_sigterm_to_a_config_run_withdraws_every_certificate_s_record(
    ca: Pebble, named: AuthoritativeDns, tmp_path: Path
) -> None:
    """Two dns-01 certificates of one --config run, in flight at once in its
    one netproc, each waiting for a propagation check that never succeeds:
    SIGTERM removes both records, says of each that nothing was installed,
    and the run dies of the signal."""
    tmp_path.chmod(0o755)
    with AuthoritativeDns(a_records=HOSTS) as elsewhere:
        config = write_config(
            tmp_path, ca,
            {"one": [f'domain name "web.{ZONE}"'], "two": [f'domain name "www.{ZONE}"']},
            authority=(
                "challenge dns-01",
                f'dns server "{named.dns_server}"',
                f'tsig key "{named.tsig_key_file}"',
                f'dns check server "{elsewhere.dns_server}"',
            ),
        )  # fmt: skip
        process = subprocess.Popen(
            [LETSKENCRYPT, "--config", str(config), "-n", "-N"], stderr=subprocess.PIPE, text=True
        )
        stderr = stop_when(process, lambda: len(acme_records(named)) == 2)
    assert process.returncode == -signal.SIGTERM, stderr
    assert "did not stop" not in stderr
    assert acme_records(named) == {}, stderr
    for handle in ("one", "two"):
        assert (f"letskencrypt: {handle}: interrupted by SIGTERM; no certificate was installed "
                "or removed") in stderr.splitlines(), stderr  # fmt: skip
        assert not (tmp_path / "state" / "certs" / handle / "cert.pem").exists()
