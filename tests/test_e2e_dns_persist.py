"""End to end, native mode: dns-persist-01 (draft-ietf-acme-dns-persist)
against pebble 2.10 (Debian unstable's), which validates it, and BIND's
named on loopback (tests/dnsserver.py), which pebble asks and which holds
the records.

`letskencrypt persist-record` prints the records; the test provisions them
as an operator would (an RFC 2136 update, signed with the zone's key: the
operator's, never the client's); `letskencrypt --challenge dns-persist-01`
then issues with no DNS credential anywhere in its configuration.  A
missing record, or one for another account or another CA, ends the run in
one line that names the record expected, before the challenge is answered.
"""

import subprocess
from collections.abc import Iterator
from pathlib import Path

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest
from cryptography import x509
from letskencrypt import keys

from tests.conftest import LETSKENCRYPT, RUN_TIMEOUT, Paths, Result, run_config, write_config
from tests.dnsserver import AuthoritativeDns
from tests.pebble import Pebble

ZONE = "example.test"
ISSUER = "pebble.letsencrypt.org"  # pebble's default caaIdentities


@pytest.fixture(scope="module")
def named() -> Iterator[AuthoritativeDns]:
    with AuthoritativeDns(zones=(ZONE,)) as server:
        yield server


@pytest.fixture(scope="module")
def ca(named: AuthoritativeDns) -> Iterator[Pebble]:
    with Pebble(generation="2.10", dns_server=f"{named.address}:{named.port}") as server:
        yield server


@pytest.fixture
def files(tmp_path: Path, ca: Pebble) -> Paths:
    tmp_path.chmod(0o755)
    # No http-01 here: the directory exists only because a run names one.
    challenge_dir = tmp_path / "challenges"
    challenge_dir.mkdir()
    return Paths(base=tmp_path, challenge_dir=challenge_dir)


def letskencrypt(
    ca: Pebble, named: AuthoritativeDns, paths: Paths, *args: str, command: tuple[str, ...] = ()
) -> Result:
    argv = [
        LETSKENCRYPT, *command,
        "--server", ca.directory_url,
        "--ca-bundle", ca.ca_bundle,
        "--trust-anchors", ca.trust_anchors,
        "-C", str(paths.challenge_dir),
        "-c", str(paths.cert_dir),
        "-f", str(paths.account_key),
        "-k", str(paths.domain_key),
        *args,
    ]  # fmt: skip
    completed = subprocess.run(
        argv, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
    )
    return Result(completed.returncode, completed.stdout, completed.stderr)


def persist_record(ca: Pebble, named: AuthoritativeDns, paths: Paths, *args: str) -> Result:
    return letskencrypt(ca, named, paths, *args, command=("persist-record",))


def issue(ca: Pebble, named: AuthoritativeDns, paths: Paths, *args: str) -> Result:
    return letskencrypt(
        ca, named, paths, "--challenge", "dns-persist-01",
        "--dns-check-server", f"{named.address}:{named.port}", *args,
    )  # fmt: skip


def provision(named: AuthoritativeDns, line: str) -> None:
    """A zone-file line `OWNER IN TXT "..." ...` into the server, as the
    operator would (an update signed with the zone's key)."""
    owner, klass, kind, rdata = line.split(None, 3)
    assert (klass, kind) == ("IN", "TXT")
    record = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, rdata)
    update = named.update_message(owner)
    update.add(owner, 60, record)
    named._check(update, f"add {line}")


def clear(named: AuthoritativeDns, name: str) -> None:
    named.delete_txt(f"_validation-persist.{name}")


def sans(paths: Paths) -> list[str]:
    leaf = x509.load_pem_x509_certificate((paths.cert_dir / "cert.pem").read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted(san.get_values_for_type(x509.DNSName))


def account_url(ca: Pebble, named: AuthoritativeDns, paths: Paths) -> tuple[str, str]:
    """Register the account (-n) through persist-record; its record line and URL."""
    result = persist_record(ca, named, paths, "-n", "-N", f"web.{ZONE}")
    assert result.code == 0, result.stderr
    (line,) = result.stdout.splitlines()
    return line, line.split("accounturi=", 1)[1].split(";")[0].rstrip('"')


def test_persist_record_then_issue_without_dns_credentials(
    ca: Pebble, named: AuthoritativeDns, files: Paths
) -> None:
    name = f"web.{ZONE}"
    result = persist_record(ca, named, files, "-n", "-N", name)
    assert result.code == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert line.startswith(f'_validation-persist.{name}. IN TXT "{ISSUER}; accounturi=https://')
    assert "policy=" not in line and "persistUntil" not in line
    # Only the account was looked at: no order.
    assert not files.cert_dir.exists() or not list(files.cert_dir.iterdir())
    # The same key finds the same account: the record does not change.
    again = persist_record(ca, named, files, name)
    assert again.code == 0, again.stderr
    assert again.stdout.splitlines() == [line]

    provision(named, line)
    try:
        issued = issue(ca, named, files, name)
        assert issued.code == 0, issued.stderr
        assert sans(files) == [name]
        # Nothing was published anywhere, and no DNS update was made.
        assert list(files.challenge_dir.iterdir()) == []
        assert named.txt(f"_validation-persist.{name}") == [
            line.split(" IN TXT ", 1)[1].strip('"')
        ]
    finally:
        clear(named, name)


def test_missing_record_fails_in_one_line_naming_it(
    ca: Pebble, named: AuthoritativeDns, files: Paths
) -> None:
    name = f"www.{ZONE}"
    expected, _ = account_url(ca, named, files)
    expected = expected.replace(f"web.{ZONE}", name)
    before = ca.request_count()
    result = issue(ca, named, files, name)
    assert result.code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "there is no TXT record" in lines[0]
    assert lines[0].endswith(f"expected: {expected}"), lines[0]
    # The challenge was never answered.
    answered = [path for method, path in ca.request_lines()[before:]
                if method == "POST" and path.startswith("/chalZ/")]
    assert answered == []
    assert not (files.cert_dir / "cert.pem").exists()


@pytest.mark.parametrize("wrong", ["account", "issuer"])
def test_wrong_record_fails_in_one_line_naming_the_right_one(
    ca: Pebble, named: AuthoritativeDns, files: Paths, wrong: str
) -> None:
    name = f"web.{ZONE}"
    expected, url = account_url(ca, named, files)
    if wrong == "account":
        bad = expected.replace(url, url.rstrip("0123456789") + "999999")
        said = "names another account"
    else:
        bad = expected.replace(ISSUER, "ca.example.net")
        said = "name other CAs (ca.example.net)"
    assert bad != expected
    provision(named, bad)
    try:
        result = issue(ca, named, files, name)
    finally:
        clear(named, name)
    assert result.code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert said in lines[0], lines[0]
    assert lines[0].endswith(f"expected: {expected}"), lines[0]


def test_wildcard_certificate(ca: Pebble, named: AuthoritativeDns, files: Paths) -> None:
    base = f"web.{ZONE}"
    result = persist_record(ca, named, files, "-n", "-N", "--persist-until", "2099-01-01",
                            base, f"*.{base}")  # fmt: skip
    assert result.code == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert line.endswith('; policy=wildcard; persistUntil=4070908800"'), line
    # Without policy=wildcard, a wildcard is refused before the CA is told.
    plain = line.replace("; policy=wildcard", "")
    provision(named, plain)
    try:
        refused = issue(ca, named, files, f"*.{base}", base)
    finally:
        clear(named, base)
    assert refused.code == 1
    assert "has no policy=wildcard" in refused.stderr
    # What a run expects carries no persistUntil: that is the operator's to add.
    expected = line.replace("; persistUntil=4070908800", "")
    assert refused.stderr.strip().endswith(f"expected: {expected}")
    provision(named, line)
    try:
        issued = issue(ca, named, files, f"*.{base}", base)
    finally:
        clear(named, base)
    assert issued.code == 0, issued.stderr
    assert sans(files) == sorted([f"*.{base}", base])


def test_wildcard_needs_a_dns_challenge(ca: Pebble, named: AuthoritativeDns, files: Paths) -> None:
    result = letskencrypt(ca, named, files, "-n", "-N", f"*.web.{ZONE}")
    assert result.code == 1
    assert result.stderr.strip().splitlines() == [
        f"letskencrypt: invalid domain name '*.web.{ZONE}': a wildcard name needs "
        "--challenge dns-01 or dns-persist-01"
    ]


def test_configuration_file_authority_challenge(
    ca: Pebble, named: AuthoritativeDns, files: Paths
) -> None:
    """`challenge dns-persist-01` for an authority: its domains use it (with
    --dns-check-server given once on the command line)."""
    name = f"www.{ZONE}"
    line, _ = account_url(ca, named, files)
    line = line.replace(f"web.{ZONE}", name)
    config = write_config(files.base, ca, {name: []}, authority=("challenge dns-persist-01",))
    check = ("--dns-check-server", f"{named.address}:{named.port}")
    missing = run_config(config, *check)
    assert missing.code == 1
    assert f"expected: {line}" in missing.stderr
    provision(named, line)
    try:
        issued = run_config(config, *check)
    finally:
        clear(named, name)
    assert issued.code == 0, issued.stderr
    installed = files.base / "state" / "certs" / name / "cert.pem"
    leaf = x509.load_pem_x509_certificate(installed.read_bytes())
    assert leaf.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == [name]


def test_persist_record_registers_no_account_without_n(
    ca: Pebble, named: AuthoritativeDns, files: Paths
) -> None:
    files.account_key.parent.mkdir(mode=0o700)
    keys.load_or_create_key(str(files.account_key), True, "ecdsa256", "account key", "-n")
    before = ca.request_lines()
    result = persist_record(ca, named, files, "-N", f"web.{ZONE}")
    assert result.code == 1
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "letskencrypt: netproc: the CA has no account for this key; give -n to register one"
    ]
    # A lookup (onlyReturnExisting) and nothing more.
    sent = ca.request_lines()[len(before):]
    assert [request for request in sent if request[0] == "POST"] == [("POST", "/sign-me-up")]
