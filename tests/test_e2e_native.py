"""End to end, native mode: the real `letskencrypt` against a real pebble."""

import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

from tests.conftest import LETSKENCRYPT, Paths, run_client
from tests.pebble import Pebble

ROLES = {
    "netproc", "acctproc", "keyproc", "dnsproc",
    "chngproc", "certproc", "fileproc", "revokeproc",
}


def leaf(paths: Paths) -> x509.Certificate:
    return x509.load_pem_x509_certificate((paths.cert_dir / "cert.pem").read_bytes())


def names_of(certificate: x509.Certificate) -> list[str]:
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted(san.get_values_for_type(x509.DNSName))


def assert_installed(paths: Paths, names: list[str]) -> x509.Certificate:
    certificate = leaf(paths)
    assert names_of(certificate) == sorted(names)
    chain = x509.load_pem_x509_certificates((paths.cert_dir / "chain.pem").read_bytes())
    full = x509.load_pem_x509_certificates((paths.cert_dir / "fullchain.pem").read_bytes())
    assert full == [certificate, *chain]
    certificate.verify_directly_issued_by(chain[0])
    key = load_pem_private_key(paths.domain_key.read_bytes(), None)
    assert certificate.public_key() == key.public_key()
    for name in ("cert.pem", "chain.pem", "fullchain.pem"):
        assert stat.S_IMODE((paths.cert_dir / name).stat().st_mode) == 0o444
    return certificate


def assert_challenges_cleaned(paths: Paths) -> None:
    assert list(paths.challenge_dir.iterdir()) == []


def test_issue_renew_and_revoke_ecdsa(pebble: Pebble, paths: Paths) -> None:
    names = ["a.example.org", "b.example.org"]
    first = run_client(pebble, paths, "-n", "-N", *names)
    assert first.code == 0, first.stderr
    certificate = assert_installed(paths, names)
    assert_challenges_cleaned(paths)
    for key in (paths.account_key, paths.domain_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o400
        assert isinstance(load_pem_private_key(key.read_bytes(), None), ec.EllipticCurvePrivateKey)

    # Nothing to do: exit 2, and (without asking the CA's renewal
    # information, see test_e2e_ari) not one request reaches the CA.
    before = pebble.request_count()
    again = run_client(pebble, paths, "--no-ari", *names)
    assert again.code == 2, again.stderr
    assert pebble.request_count() == before
    assert leaf(paths) == certificate

    # -F forces a new certificate.
    forced = run_client(pebble, paths, "-F", *names)
    assert forced.code == 0, forced.stderr
    renewed = assert_installed(paths, names)
    assert renewed.serial_number != certificate.serial_number

    # A changed list of names means a renewal without -F.
    changed = [*names, "c.example.org"]
    grown = run_client(pebble, paths, *changed)
    assert grown.code == 0, grown.stderr
    latest = assert_installed(paths, changed)
    assert_challenges_cleaned(paths)

    # -r revokes the current certificate and removes the files.
    keys_before = {p: p.read_bytes() for p in (paths.account_key, paths.domain_key)}
    kept = paths.base / "kept-certs"
    shutil.copytree(paths.cert_dir, kept, symlinks=True)
    revoked = run_client(pebble, paths, "-r", *changed)
    assert revoked.code == 0, revoked.stderr
    assert pebble.cert_status(latest.serial_number) == "Revoked"
    for name in ("cert.pem", "chain.pem", "fullchain.pem"):
        assert not (paths.cert_dir / name).exists()
    assert {p: p.read_bytes() for p in keys_before} == keys_before

    # Revoked already (the CA says alreadyRevoked): the end asked for, not a
    # failure; exit 0, one line says so, and the files go all the same.
    shutil.rmtree(paths.cert_dir)
    shutil.copytree(kept, paths.cert_dir, symlinks=True)
    again_revoked = run_client(pebble, paths, "-r", *changed)
    assert again_revoked.code == 0, again_revoked.stderr
    assert again_revoked.stderr == (
        "letskencrypt: netproc: the certificate was revoked already (the CA says alreadyRevoked)\n"
    )
    for name in ("cert.pem", "chain.pem", "fullchain.pem"):
        assert not (paths.cert_dir / name).exists()

    # Nothing left to revoke.
    nothing = run_client(pebble, paths, "-r", *changed)
    assert nothing.code == 1
    assert "no certificate to revoke" in nothing.stderr


@pytest.mark.parametrize("key_type", ["rsa2048", "ecdsa384"])
def test_issue_with_other_key_types(pebble: Pebble, paths: Paths, key_type: str) -> None:
    names = [f"{key_type}.example.org", f"www.{key_type}.example.org"]
    result = run_client(pebble, paths, "-n", "-N", "--key-type", key_type, *names)
    assert result.code == 0, result.stderr
    assert_installed(paths, names)
    key = load_pem_private_key(paths.account_key.read_bytes(), None)
    expected = rsa.RSAPrivateKey if key_type.startswith("rsa") else ec.EllipticCurvePrivateKey
    assert isinstance(key, expected)


def issued(pebble: Pebble, paths: Paths, *names: str) -> dict[str, str]:
    result = run_client(pebble, paths, "-n", "-N", *names)
    assert result.code == 0, result.stderr
    return paths.snapshot()


def test_missing_account_key_without_n(pebble: Pebble, paths: Paths) -> None:
    before = issued(pebble, paths, "keys.example.org")
    paths.account_key.rename(paths.account_key.with_suffix(".moved"))
    before = paths.snapshot()
    result = run_client(pebble, paths, "-F", "keys.example.org")
    assert result.code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(paths.account_key) in lines[0] and "-n" in lines[0]
    assert paths.snapshot() == before


def test_missing_domain_key_without_n(pebble: Pebble, paths: Paths) -> None:
    result = run_client(pebble, paths, "-n", "nokey.example.org")
    assert result.code == 1
    assert str(paths.domain_key) in result.stderr and "-N" in result.stderr
    assert not paths.domain_key.exists()


@pytest.mark.parametrize(
    "bad", ["-bad.example.org", "a..example.org", "exa mple.org", "x" * 64 + ".org", "localhost"]
)
def test_bad_domain_name(pebble: Pebble, paths: Paths, bad: str) -> None:
    before = pebble.request_count()
    started = time.monotonic()
    result = run_client(pebble, paths, "-n", "-N", "--", "good.example.org", bad)
    assert result.code == 1
    assert "invalid domain name" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert time.monotonic() - started < 5
    assert pebble.request_count() == before
    assert not paths.account_key.exists()


def test_unreachable_server(pebble: Pebble, paths: Paths) -> None:
    before = issued(pebble, paths, "down.example.org")
    # A loopback port with nothing listening on it.
    result = run_client(pebble, paths, "-F", "down.example.org", server="https://127.0.0.1:9/dir")
    assert result.code == 1
    assert "127.0.0.1" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert paths.snapshot() == before
    assert_challenges_cleaned(paths)


def test_usage_errors_exit_1(pebble: Pebble, paths: Paths) -> None:
    for args in (["--key-type", "dsa", "x.example.org"], ["--server", "http://127.0.0.1/dir",
                 "x.example.org"], []):
        result = run_client(pebble, paths, *args)
        assert result.code == 1, (args, result.stderr)
        assert result.stderr.startswith("letskencrypt: ")


def processes_under(parent: int) -> dict[int, tuple[str, int]]:
    """pid -> (comm, uid) of the live children of `parent`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if int(fields.get("PPid", "0")) == parent:
            found[int(entry.name)] = (fields["Name"].strip(), int(fields["Uid"].split()[0]))
    return found


def start_client(pebble: Pebble, paths: Paths, *args: str) -> subprocess.Popen[str]:
    argv = [
        LETSKENCRYPT, "--server", pebble.directory_url, "--ca-bundle", pebble.ca_bundle,
        "--trust-anchors", pebble.trust_anchors,
        "-C", str(paths.challenge_dir), "-c", str(paths.cert_dir),
        "-f", str(paths.account_key), "-k", str(paths.domain_key), *args,
    ]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def watch_roles(client: subprocess.Popen[str]) -> dict[int, tuple[str, int]]:
    seen: dict[int, tuple[str, int]] = {}
    while client.poll() is None:
        seen.update(processes_under(client.pid))
        time.sleep(0.01)
    return seen


def test_eight_roles_are_eight_processes(pebble: Pebble, paths: Paths) -> None:
    client = start_client(pebble, paths, "-n", "-N", "procs.example.org")
    seen = watch_roles(client)
    _, stderr = client.communicate()
    assert client.returncode == 0, stderr
    roles = {pid: seen[pid] for pid in seen if seen[pid][0] in ROLES}
    # The only other child: the supervisor's fork that tries namespaces
    # (namespace.available) before any role starts.
    assert {name for name, _uid in seen.values() if name not in ROLES} <= {"letskencrypt"}
    assert sorted(name for name, _uid in roles.values()) == sorted(ROLES), seen
    assert len(roles) == 8
    seen = roles
    if os.geteuid() == 0:
        # Started as root: only the two directory writers keep root.
        for name, uid in seen.values():
            assert (uid == 0) == (name in {"chngproc", "fileproc"}), (name, uid)
    assert processes_under(client.pid) == {}
    for pid in seen:
        assert not Path(f"/proc/{pid}").exists()


@pytest.mark.parametrize("victim", ["keyproc", "chngproc", "netproc"])
def test_a_dying_role_fails_the_run(pebble: Pebble, paths: Paths, victim: str) -> None:
    before = issued(pebble, paths, "dies.example.org")
    client = start_client(pebble, paths, "-F", "dies.example.org")
    deadline = time.monotonic() + 20
    killed = None
    while killed is None and time.monotonic() < deadline and client.poll() is None:
        for pid, (name, _uid) in processes_under(client.pid).items():
            if name == victim:
                os.kill(pid, signal.SIGKILL)
                killed = pid
        time.sleep(0.005)
    _, stderr = client.communicate(timeout=60)
    assert killed is not None
    assert client.returncode == 1
    assert victim in stderr
    assert processes_under(client.pid) == {}
    # Killed before it could install anything, or after: never a mix.
    after = paths.snapshot()
    assert after == before or after.keys() == before.keys()
    assert_challenges_cleaned(paths)


# --- issue 8: no silent ignores ---------------------------------------------------------


def test_a_domain_key_of_another_type_is_refused_before_any_request(
    pebble: Pebble, paths: Paths
) -> None:
    names = ["keytype.example.org"]
    issued(pebble, paths, *names)
    before, requests = paths.snapshot(), pebble.request_count()
    result = run_client(pebble, paths, "-F", "--key-type", "rsa2048", *names)
    assert result.code == 1
    assert result.stderr == (
        f"letskencrypt: domain key {paths.domain_key} is ecdsa256, not rsa2048 as --key-type "
        "asks: give --rotate-domain-key to replace it with a new rsa2048 key, or leave out "
        "--key-type\n"
    )
    assert pebble.request_count() == requests
    assert paths.snapshot() == before
    # The type it is: accepted (and nothing is due).
    same = run_client(pebble, paths, "--key-type", "ecdsa256", *names)
    assert same.code == 2, same.stderr


def test_rotate_domain_key_to_another_type(pebble: Pebble, paths: Paths) -> None:
    names = ["rotate.example.org", "www.rotate.example.org"]
    issued(pebble, paths, *names)
    old_key = paths.domain_key.read_bytes()
    old_certificate = leaf(paths)
    result = run_client(pebble, paths, "--rotate-domain-key", "--key-type", "rsa2048", *names)
    assert result.code == 0, result.stderr
    key = load_pem_private_key(paths.domain_key.read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    assert stat.S_IMODE(paths.domain_key.stat().st_mode) == 0o400
    certificate = assert_installed(paths, names)  # for the new key
    assert certificate.serial_number != old_certificate.serial_number
    # The old key is kept beside it; no new key is left pending.
    (old,) = paths.domain_key.parent.glob("privkey.pem.old-*")
    assert old.read_bytes() == old_key
    assert sorted(p.name for p in paths.domain_key.parent.iterdir()) == [
        "privkey.pem", old.name
    ]
    assert result.stderr == (
        f"letskencrypt: replaced the domain key {paths.domain_key} with a new rsa2048 key "
        f"(the old one is kept as {old})\n"
    )
    # The account key (ecdsa256) was not held to --key-type in that run; in
    # the next ones it is, unless its own type is given.
    again = run_client(pebble, paths, *names)
    assert again.code == 2, again.stderr
    typed = run_client(pebble, paths, "--key-type", "rsa2048", *names)
    assert typed.code == 1
    assert typed.stderr == (
        f"letskencrypt: account key {paths.account_key} is ecdsa256, not rsa2048: give "
        "--account-key-type ecdsa256 to keep it, or --rollover-account-key NEWKEY to change "
        "the account to a new rsa2048 key\n"
    )
    both = run_client(pebble, paths, "--key-type", "rsa2048", "--account-key-type", "ecdsa256",
                      *names)  # fmt: skip
    assert both.code == 2, both.stderr


def test_a_rotation_that_fails_keeps_the_old_key_and_certificate(
    pebble: Pebble, paths: Paths
) -> None:
    before = issued(pebble, paths, "rotfail.example.org")
    result = run_client(pebble, paths, "--rotate-domain-key", "rotfail.example.org",
                        server="https://127.0.0.1:9/dir")  # fmt: skip
    assert result.code == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert paths.snapshot() == before
    assert_installed(paths, ["rotfail.example.org"])


def test_a_key_revoked_for_key_compromise_is_never_reused(pebble: Pebble, paths: Paths) -> None:
    import hashlib

    names = ["compromised.example.org"]
    issued(pebble, paths, *names)
    certificate = leaf(paths)
    key_bytes = paths.domain_key.read_bytes()
    spki = load_pem_private_key(key_bytes, None).public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo)  # fmt: skip
    digest = hashlib.sha256(spki).hexdigest()
    revoked = run_client(pebble, paths, "-r", "--revoke-reason", "keyCompromise", *names)
    assert revoked.code == 0, revoked.stderr
    assert pebble.cert_status(certificate.serial_number) == "Revoked"
    assert pebble.cert_info(certificate.serial_number).get("Reason") == 1
    listed = paths.domain_key.parent / "compromised-keys"
    assert revoked.stderr == (
        f"letskencrypt: keyproc: domain key {paths.domain_key} recorded as compromised in "
        f"{listed}: it is never used again (--rotate-domain-key makes a new one)\n"
    )
    assert digest in listed.read_text().split()
    assert paths.domain_key.read_bytes() == key_bytes

    # The next run (nothing is installed: an issuance) refuses the key, before any request.
    requests = pebble.request_count()
    refused = run_client(pebble, paths, *names)
    assert refused.code == 1
    assert refused.stderr == (
        f"letskencrypt: domain key {paths.domain_key} was revoked for keyCompromise (listed "
        f"in {listed}): give --rotate-domain-key to make a new key\n"
    )
    assert pebble.request_count() == requests
    assert not (paths.cert_dir / "cert.pem").exists()

    # A new key: issued for it.
    rotated = run_client(pebble, paths, "--rotate-domain-key", *names)
    assert rotated.code == 0, rotated.stderr
    assert_installed(paths, names)
    assert paths.domain_key.read_bytes() != key_bytes
    again = run_client(pebble, paths, *names)
    assert again.code == 2, again.stderr


def account_contact(pebble: Pebble, paths: Paths) -> tuple[str, ...] | None:
    """The account's contact as pebble shows it, looked up with its key."""
    from letskencrypt import keys
    from letskencrypt.acme import AcmeClient, Transport

    from tests.test_acme import KeySigner, LoopbackResolver

    client = AcmeClient(
        Transport(LoopbackResolver(), Path(pebble.ca_bundle).read_bytes()),
        KeySigner(keys.load_key(str(paths.account_key))),
        pebble.directory_url,
        bad_nonce_retries=40,
    )
    client.account([], create=False)
    return client.account_contact


def test_a_changed_contact_updates_the_account(pebble: Pebble, paths: Paths) -> None:
    names = ["contact.example.org"]
    first = run_client(pebble, paths, "-n", "-N", "--contact", "mailto:one@example.org", *names)
    assert first.code == 0, first.stderr
    assert account_contact(pebble, paths) == ("mailto:one@example.org",)
    # Nothing due: no request, the contact stays (it is not even looked at).
    assert run_client(pebble, paths, "--contact", "mailto:two@example.org", *names).code == 2
    assert account_contact(pebble, paths) == ("mailto:one@example.org",)
    changed = run_client(pebble, paths, "-F", "-v", "--contact", "mailto:two@example.org",
                         "--contact", "mailto:three@example.org", *names)  # fmt: skip
    assert changed.code == 0, changed.stderr
    assert "contact set to mailto:two@example.org, mailto:three@example.org" in changed.stderr
    assert account_contact(pebble, paths) == ("mailto:two@example.org",
                                              "mailto:three@example.org")  # fmt: skip
    # Without --contact the account's contact is left as it is.
    left = run_client(pebble, paths, "-F", *names)
    assert left.code == 0, left.stderr
    assert account_contact(pebble, paths) == ("mailto:two@example.org",
                                              "mailto:three@example.org")  # fmt: skip


def test_a_deploy_hook_that_failed_runs_again_at_the_next_run(
    pebble: Pebble, paths: Paths, tmp_path: Path
) -> None:
    """One certificate, --deploy-hook: run after an issue; when it fails, the
    certificate stays installed, the run exits 1, and the certificate
    directory remembers the hook is owed; the next runs, with nothing due,
    try it again until it succeeds (exit 0), then there is nothing to do."""
    ready, log = tmp_path / "hook-can-run", tmp_path / "hook.log"
    hook = ("--deploy-hook", f'test -e {ready} && echo "$LETSKENCRYPT_CERTIFICATE" >> {log}')
    names = ["hook.example.org"]
    for attempt in range(2):
        failed = run_client(pebble, paths, "-n", "-N", *hook, *names)
        assert failed.code == 1, (attempt, failed.stderr)
        assert ("letskencrypt: deploy hook: exited with status 1 (the certificate stays "
                "installed; the hook runs again at the next run)") in failed.stderr.splitlines()
        assert_installed(paths, names)
        assert (paths.cert_dir / ".deploy-owed").read_text().startswith(".sets/")
    assert not log.exists()
    ready.touch()
    deployed = run_client(pebble, paths, *hook, *names)
    assert deployed.code == 0, deployed.stderr
    assert ("letskencrypt: deploy hook: ran for the certificate an earlier run installed"
            in deployed.stderr.splitlines()), deployed.stderr  # fmt: skip
    assert log.read_text() == "hook.example.org\n"
    assert not (paths.cert_dir / ".deploy-owed").exists()
    idle = run_client(pebble, paths, *hook, *names)
    assert idle.code == 2, idle.stderr
    assert log.read_text() == "hook.example.org\n"
