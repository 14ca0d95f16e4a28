"""End to end: -r signed with the account key and with the domain key
(--revoke-with domain-key, RFC 8555 7.6), each RFC 5280 reason, against
pebble 2.4 and 2.10 (both take every reason but the unused 7 and codes
beyond 10, which the client never sends); "revoked already" ends with exit
0 and one line; a CA that refuses the reason (as Let's Encrypt refuses
cACompromise) ends with one line naming it.

Each revocation with the domain key runs without the account key (lost, as
when this form is needed) and sends the CA nothing but the directory, a
nonce and the revokeCert: no account is looked up.
"""

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from letskencrypt import keys
from letskencrypt.constants import REVOCATION_REASONS

from tests.conftest import (
    LETSKENCRYPT,
    RUN_TIMEOUT,
    Paths,
    Result,
    run_client,
    run_config,
    write_config,
)
from tests.hostile_ca import HostileCA, Material, Misbehaviour
from tests.pebble import Pebble

CERT_FILES = ("cert.pem", "chain.pem", "fullchain.pem")
# No --revoke-reason (the request names none), then each RFC 5280 reason.
REASONS = [None, *REVOCATION_REASONS]
ROUTES = ("account", "domain-key")
# What a revocation with the domain key may send the CA.
DOMAIN_KEY_REQUESTS = {("GET", "/dir"), ("HEAD", "/nonce-plz"), ("POST", "/revoke-cert")}
ALREADY = (
    "letskencrypt: netproc: the certificate was revoked already (the CA says alreadyRevoked)\n"
)


@pytest.fixture(params=["2.4", "2.10"])
def ca(request: pytest.FixtureRequest) -> Pebble:
    server = request.getfixturevalue("pebble" if request.param == "2.4" else "pebble_sid")
    assert isinstance(server, Pebble) and server.generation == request.param
    return server


@pytest.fixture
def paths(tmp_path: Path, ca: Pebble) -> Paths:
    tmp_path.chmod(0o755)
    return Paths(base=tmp_path, challenge_dir=ca.challenge_dir)


def issue(ca: Pebble, paths: Paths, *names: str) -> x509.Certificate:
    result = run_client(ca, paths, "-n", "-N", *names)
    assert result.code == 0, result.stderr
    return x509.load_pem_x509_certificate((paths.cert_dir / "cert.pem").read_bytes())


def compromised_line(paths: Paths) -> str:
    listed = paths.domain_key.parent / "compromised-keys"
    return (
        f"letskencrypt: keyproc: domain key {paths.domain_key} recorded as compromised in "
        f"{listed}: it is never used again (--rotate-domain-key makes a new one)\n"
    )


def assert_files_removed(paths: Paths) -> None:
    for name in CERT_FILES:
        assert not (paths.cert_dir / name).exists(), name


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("reason", REASONS, ids=lambda r: r or "none")
def test_revoke_with_each_key_and_reason(
    ca: Pebble, paths: Paths, route: str, reason: str | None
) -> None:
    names = [f"{route}.{reason or 'none'}.revoke.example.org".lower()]
    certificate = issue(ca, paths, *names)
    domain_key = paths.domain_key.read_bytes()
    account_key = paths.account_key.read_bytes()
    if route == "domain-key":
        paths.account_key.unlink()
    with_reason = ("--revoke-reason", reason) if reason else ()
    before = ca.request_count()
    revoked = run_client(ca, paths, "-r", "--revoke-with", route, *with_reason, *names)
    assert revoked.code == 0, revoked.stderr
    assert revoked.stderr == (compromised_line(paths) if reason == "keyCompromise" else "")

    info = ca.cert_info(certificate.serial_number)
    assert info["Status"] == "Revoked"
    if reason is None:
        assert "Reason" not in info
    else:
        assert info["Reason"] == REVOCATION_REASONS[reason]
    assert_files_removed(paths)
    assert paths.domain_key.read_bytes() == domain_key
    sent = set(ca.request_lines()[before:])
    if route == "domain-key":
        assert sent <= DOMAIN_KEY_REQUESTS and ("POST", "/revoke-cert") in sent
        # Lost, and not made again.
        assert not paths.account_key.exists()
    else:
        assert ("POST", "/sign-me-up") in sent
        assert paths.account_key.read_bytes() == account_key


@pytest.mark.parametrize("first", ROUTES)
def test_revoked_already_is_a_documented_end(ca: Pebble, paths: Paths, first: str) -> None:
    names = [f"already-{first}.revoke.example.org"]
    certificate = issue(ca, paths, *names)
    kept = paths.base / "kept-certs"
    shutil.copytree(paths.cert_dir, kept, symlinks=True)
    done = run_client(ca, paths, "-r", "--revoke-with", first, "--revoke-reason", "superseded",
                      *names)  # fmt: skip
    assert done.code == 0, done.stderr

    # The certificate comes back to the directory; revoked again with the
    # domain key: the CA says alreadyRevoked, the run ends with exit 0, one
    # line and the files removed.
    shutil.rmtree(paths.cert_dir)
    shutil.copytree(kept, paths.cert_dir, symlinks=True)
    again = run_client(ca, paths, "-r", "--revoke-with", "domain-key", "--revoke-reason",
                       "superseded", *names)  # fmt: skip
    assert again.code == 0, again.stderr
    assert again.stderr == ALREADY
    assert_files_removed(paths)
    info = ca.cert_info(certificate.serial_number)
    assert (info["Status"], info["Reason"]) == ("Revoked", 4)


def test_a_certificate_of_another_key_is_not_signed_for(ca: Pebble, paths: Paths) -> None:
    """The installed certificate is not for the key -k names (the operator
    gave the wrong one): keyproc refuses, the CA is not asked to revoke."""
    names = ["otherkey.revoke.example.org"]
    certificate = issue(ca, paths, *names)
    paths.domain_key.chmod(0o600)
    other = keys.generate_key("ecdsa256").private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    paths.domain_key.write_bytes(other)
    before = paths.snapshot()
    requests = ca.request_count()
    refused = run_client(ca, paths, "-r", "--revoke-with", "domain-key", *names)
    assert refused.code == 1
    assert refused.stderr == (
        "letskencrypt: netproc: keyproc: refused to sign a revocation with the domain key: "
        f"certificate serial {certificate.serial_number:x} is not for the domain key\n"
    )
    assert ("POST", "/revoke-cert") not in ca.request_lines()[requests:]
    assert ca.cert_status(certificate.serial_number) == "Valid"
    assert paths.snapshot() == before


def against(hostile: HostileCA, material: Material, paths: Paths, *args: str) -> Result:
    """The client against `hostile` (run_client's, for another CA than pebble)."""
    completed = subprocess.run(
        [LETSKENCRYPT, "--server", hostile.directory_url, "--ca-bundle", str(material.ca_bundle),
         "--trust-anchors", str(material.trust_anchors), "-C", str(paths.challenge_dir),
         "-c", str(paths.cert_dir), "-f", str(paths.account_key), "-k", str(paths.domain_key),
         *args],
        capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
    )  # fmt: skip
    return Result(completed.returncode, completed.stdout, completed.stderr)


def test_a_reason_the_ca_refuses_is_one_line_naming_it(tmp_path: Path) -> None:
    """pebble takes every reason the client can send; this CA answers as
    Let's Encrypt does to cACompromise (badRevocationReason)."""
    material = Material.create(tmp_path / "material")
    paths = Paths(base=tmp_path / "run", challenge_dir=tmp_path / "run" / "challenges")
    paths.challenge_dir.mkdir(parents=True, mode=0o755)
    refusal = (400, {"type": "urn:ietf:params:acme:error:badRevocationReason",
                     "detail": "disallowed revocation reason: 2"}, {})  # fmt: skip
    names = ["refused.revoke.example.org"]
    with HostileCA(material, Misbehaviour("revokeCert", "problem", refusal),
                   challenge_dir=paths.challenge_dir) as hostile:  # fmt: skip
        issued = against(hostile, material, paths, "-n", "-N", *names)
        assert issued.code == 0, issued.stderr
        before = paths.snapshot()
        refused = against(hostile, material, paths, "-r", "--revoke-with", "domain-key",
                          "--revoke-reason", "cACompromise", *names)  # fmt: skip
        assert hostile.triggered == 1
    assert refused.code == 1
    assert refused.stderr == (
        "letskencrypt: netproc: the CA does not accept the revocation reason cACompromise (2) "
        "(badRevocationReason): HTTP 400: badRevocationReason: disallowed revocation reason: 2\n"
    )
    assert paths.snapshot() == before


def test_a_configuration_file_revokes_with_the_domain_keys(pebble: Pebble, tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    handles = ("one.conf.revoke.example.org", "two.conf.revoke.example.org")
    config = write_config(tmp_path, pebble, {handle: [] for handle in handles})
    issued = run_config(config)
    assert issued.code == 0, issued.stderr
    serials = {}
    for handle in handles:
        pem = (tmp_path / "state" / "certs" / handle / "cert.pem").read_bytes()
        serials[handle] = x509.load_pem_x509_certificate(pem).serial_number
    (tmp_path / "account" / "privkey.pem").unlink()
    revoked = run_config(config, "-r", "--revoke-with", "domain-key", "--revoke-reason",
                         "cessationOfOperation")  # fmt: skip
    assert revoked.code == 0, revoked.stderr
    for handle, serial in serials.items():
        info = pebble.cert_info(serial)
        assert (info["Status"], info["Reason"]) == ("Revoked", 5), handle
        assert not (tmp_path / "state" / "certs" / handle / "cert.pem").exists()
    assert not (tmp_path / "account" / "privkey.pem").exists()
