"""The CA's trust anchors: the built-in Let's Encrypt roots, --trust-anchors,
and the refusal to start without anchors for a CA that is not Let's Encrypt."""

import hashlib
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from letskencrypt import anchors, container, options
from letskencrypt.errors import InputError

from tests.certfactory import LEAF_KEY, ROOT_KEY, make_cert, pem
from tests.conftest import LETSKENCRYPT

# SHA-256 of the DER, as Let's Encrypt publishes them (letsencrypt.org/certificates,
# /docs/staging-environment).
BUILT_IN = {
    "letsencrypt-production.pem": {
        "CN=ISRG Root X1,O=Internet Security Research Group,C=US":
            "96bcec06264976f37460779acf28c5a7cfe8a3c0aae11a8ffcee05c0bddf08c6",
        "CN=ISRG Root X2,O=Internet Security Research Group,C=US":
            "69729b8e15a86efc177a57afb7171dfc64add28c2fca8cf1507e34453ccb1470",
    },
    "letsencrypt-staging.pem": {
        "CN=(STAGING) Pretend Pear X1,O=(STAGING) Internet Security Research Group,C=US":
            "e70570a989f8565aabdf7cae27abd1621872d6a3f811e3fef27e3dba02912198",
        "CN=(STAGING) Bogus Broccoli X2,O=(STAGING) Internet Security Research Group,C=US":
            "9b2a339fe6a3e85585c4cd75536cb8c1cf7cd603b9a64bec2521858ae48da85d",
    },
}  # fmt: skip
NAMES = ["anchors.example.org"]
NOW = datetime.now(UTC)


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_built_in_roots_are_lets_encrypts(name: str) -> None:
    certificates = x509.load_pem_x509_certificates(anchors.built_in(name))
    found = {
        cert.subject.rfc4514_string(): hashlib.sha256(
            cert.public_bytes(serialization.Encoding.DER)
        ).hexdigest()
        for cert in certificates
    }
    assert found == BUILT_IN[name]
    for cert in certificates:
        cert.verify_directly_issued_by(cert)  # self-signed roots
    assert anchors.validate(anchors.built_in(name), name) == anchors.built_in(name).decode()


def test_the_server_picks_the_built_in_roots(tmp_path: Path) -> None:
    production = settings()
    staging = settings("-s")
    assert production["certproc"].trust_anchors == anchors.built_in(
        "letsencrypt-production.pem").decode()
    assert staging["certproc"].trust_anchors == anchors.built_in(
        "letsencrypt-staging.pem").decode()
    assert production["revokeproc"].trust_anchors == production["certproc"].trust_anchors
    # The roots are for certproc and revokeproc only.
    for role in ("netproc", "acctproc", "keyproc", "dnsproc", "chngproc", "fileproc"):
        assert not hasattr(production[role], "trust_anchors")
    ours = pem(root())
    given = write(tmp_path / "roots.pem", ours)
    assert settings("-s", "--trust-anchors", str(given))["certproc"].trust_anchors == (
        ours.decode())


def test_the_operation_is_each_roles_own() -> None:
    for argv, operation in (((), "issue"), (("-r",), "revoke")):
        got = settings(*argv)
        for role in ("acctproc", "certproc", "fileproc"):
            assert got[role].operation == operation
        assert not hasattr(got["netproc"], "operation")


def test_another_ca_needs_trust_anchors() -> None:
    with pytest.raises(InputError, match=r"^https://ca\.test/dir is not Let's Encrypt: give "
                       r"the CA's root certificates with --trust-anchors FILE$"):
        settings("--server", "https://ca.test/dir")


def test_refused_before_any_role_or_request(tmp_path: Path) -> None:
    """One line, exit 1, nothing created, no role started (no socket, no key)."""
    argv = [
        LETSKENCRYPT, "--server", "https://127.0.0.1:9/dir", "-n", "-N",
        "-c", str(tmp_path / "certs"), "-f", str(tmp_path / "account" / "key.pem"),
        "-k", str(tmp_path / "domain" / "key.pem"), "-C", str(tmp_path), *NAMES,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr == (
        "letskencrypt: https://127.0.0.1:9/dir is not Let's Encrypt: give the CA's root "
        "certificates with --trust-anchors FILE\n"
    )
    assert sorted(os.listdir(tmp_path)) == []


def root(days: float = 3650) -> x509.Certificate:
    return make_cert("root", "root", ROOT_KEY.public_key(), ROOT_KEY, ca=True,
                     not_before=NOW - timedelta(days=1), not_after=NOW + timedelta(days=days))


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def settings(*argv: str) -> dict[str, dict[str, object]]:
    return options.role_settings(options.build_parser().parse_args([*argv, *NAMES]))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.pem", "No such file or directory"),
        (lambda d: d, "not a regular file"),
        (lambda d: write(d / "empty.pem", b""), "PEM chain contains no certificate"),
        (lambda d: write(d / "text.pem", b"hello\n"), "unexpected data at offset 0"),
        (lambda d: write(d / "big.pem", pem(root()) + b"\n" * 16 * 1024),
         "larger than 16384 bytes; give only the CA's root certificates"),
        (lambda d: write(d / "nine.pem", pem(*[root()] * 9)), "more than 8 certificates"),
        (lambda d: write(d / "leaf.pem", pem(make_cert(
            "leaf", "root", LEAF_KEY.public_key(), ROOT_KEY, ca=False, names=NAMES))),
         r"trust anchor 0 \('CN=leaf'\) is not a CA certificate"),
        (lambda d: write(d / "old.pem", pem(make_cert(
            "root", "root", ROOT_KEY.public_key(), ROOT_KEY, ca=True,
            not_before=NOW - timedelta(days=900), not_after=NOW - timedelta(days=1)))),
         "trust anchor 0 expired on"),
        (lambda d: write(d / "key.pem", ROOT_KEY.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())), "unexpected PEM block 'PRIVATE KEY'"),
    ],
    ids=["missing", "directory", "empty", "not-pem", "too-large", "too-many", "a-leaf",
         "expired", "a-private-key"],
)
def test_bad_anchor_files_fail_at_once(tmp_path: Path, make, message: str) -> None:
    path = make(tmp_path)
    with pytest.raises(InputError, match=message) as info:
        settings("--server", "https://ca.test/dir", "--trust-anchors", str(path))
    assert str(info.value).startswith(f"--trust-anchors {path}: ")
    assert "\n" not in str(info.value)


def test_a_fifo_does_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        settings("--server", "https://ca.test/dir", "--trust-anchors", str(fifo))


def test_containers_give_the_anchors_to_certproc_and_revokeproc_only() -> None:
    environ = {"DOMAINS": " ".join(NAMES), "ACME_SERVER": "https://ca.test/dir"}
    assert not os.path.exists(container.TRUST_ANCHORS)  # no container here
    # No anchors file mounted, not Let's Encrypt: the two roles refuse to start.
    for role in ("certproc", "revokeproc"):
        assert "--trust-anchors" not in container.command_line(role, environ)
        with pytest.raises(InputError, match="is not Let's Encrypt"):
            container.role_config(role, environ)
    # The others start without them.
    config = container.role_config("fileproc", environ)
    assert config.settings.operation == "issue"
    assert not hasattr(config.settings, "trust_anchors")


def test_containers_read_a_mounted_anchors_file(tmp_path: Path, monkeypatch) -> None:
    environ = {"DOMAINS": " ".join(NAMES), "ACME_SERVER": "https://ca.test/dir"}
    ours = pem(root())
    monkeypatch.setattr(container, "TRUST_ANCHORS", str(write(tmp_path / "roots.pem", ours)))
    for role in ("certproc", "revokeproc"):
        assert container.role_config(role, environ).settings.trust_anchors == ours.decode()
    assert "--trust-anchors" not in container.command_line("netproc", environ)
    # compose mounts /dev/null there when no file is given: not a regular file, not used.
    monkeypatch.setattr(container, "TRUST_ANCHORS", os.devnull)
    assert "--trust-anchors" not in container.command_line("certproc", environ)
    monkeypatch.setattr(container, "TRUST_ANCHORS", str(write(tmp_path / "empty.pem", b"")))
    assert "--trust-anchors" not in container.command_line("certproc", environ)
