"""The interoperability matrix (issue 12): each cell end to end, through all
eight roles, against both generations of pebble — Debian 12's 2.4 and Debian
unstable's 2.10 — or the one that supports the feature.

This module holds the cells of the basic life cycle on both generations;
the other cells live with their feature and are listed here so the matrix
can be read in one place:

| cell                                   | 2.4 | 2.10 | where                              |
|----------------------------------------|-----|------|------------------------------------|
| issue, skip (no request), force        | yes | yes  | here                               |
| revoke with the account key            | yes | yes  | here, test_e2e_revoke.py           |
| revoke with the domain key, each reason| yes | yes  | test_e2e_revoke.py                 |
| already revoked: exit 0, files removed | yes | yes  | here                               |
| contact update                         | yes | yes  | here                               |
| EAB required / right / wrong key       | yes | yes  | test_e2e_eab_profiles.py           |
| each profile pebble offers             | no profiles: refused | yes | test_e2e_eab_profiles.py |
| preferred chain (alternate roots)      | yes | yes  | test_e2e_chains.py                 |
| key rollover, then issue with new key  | yes | yes  | test_e2e_account.py                |
| deactivate (-F / terminal / refused)   | yes | yes  | test_e2e_account.py                |
| IPv4 and IPv6 identifiers              | yes | yes  | test_e2e_ip.py                     |
| ARI window / replaces / --config state | no renewalInfo: lifetime rule | yes | test_e2e_ari.py |
"""

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Paths, run_client
from tests.pebble import Pebble
from tests.test_e2e_native import account_contact, assert_installed, leaf

FILES = ("cert.pem", "chain.pem", "fullchain.pem")


@pytest.fixture(params=["2.4", "2.10"])
def server(request: pytest.FixtureRequest) -> Iterator[Pebble]:
    yield request.getfixturevalue("pebble" if request.param == "2.4" else "pebble_sid")


@pytest.fixture
def client(tmp_path: Path, server: Pebble) -> Paths:
    tmp_path.chmod(0o755)
    return Paths(base=tmp_path, challenge_dir=server.challenge_dir)


def tag(server: Pebble) -> str:
    return server.generation.replace(".", "")


def issue(server: Pebble, paths: Paths, names: list[str], *args: str) -> None:
    result = run_client(server, paths, "-n", "-N", *args, *names)
    assert result.code == 0, result.stderr
    assert_installed(paths, names)


def test_issue_skip_force(server: Pebble, client: Paths) -> None:
    names = [f"life{tag(server)}.example.org", f"www.life{tag(server)}.example.org"]
    issue(server, client, names)
    first = leaf(client)
    assert list(server.challenge_dir.iterdir()) == []

    before = server.request_count()
    # --no-ari: no request at all (the CA's renewal information is test_e2e_ari's).
    skipped = run_client(server, client, "--no-ari", *names)
    assert skipped.code == 2, skipped.stderr
    assert server.request_count() == before
    assert leaf(client) == first

    forced = run_client(server, client, "-F", *names)
    assert forced.code == 0, forced.stderr
    assert assert_installed(client, names).serial_number != first.serial_number


def test_revoke_with_the_account_key_then_already_revoked(
    server: Pebble, client: Paths, tmp_path: Path
) -> None:
    names = [f"revoke{tag(server)}.example.org"]
    issue(server, client, names)
    certificate = leaf(client)
    kept = tmp_path / "kept-certs"
    shutil.copytree(client.cert_dir, kept, symlinks=True)

    revoked = run_client(server, client, "-r", "--revoke-reason", "superseded", *names)
    assert revoked.code == 0, revoked.stderr
    assert server.cert_status(certificate.serial_number) == "Revoked"
    assert not any((client.cert_dir / name).exists() for name in FILES)

    shutil.rmtree(client.cert_dir)
    shutil.copytree(kept, client.cert_dir, symlinks=True)
    again = run_client(server, client, "-r", *names)
    assert again.code == 0, again.stderr
    assert "revoked already (the CA says alreadyRevoked)" in again.stderr
    assert not any((client.cert_dir / name).exists() for name in FILES)


def test_contact_update(server: Pebble, client: Paths) -> None:
    names = [f"contact{tag(server)}.example.org"]
    issue(server, client, names, "--contact", "mailto:first@example.org")
    assert account_contact(server, client) == ("mailto:first@example.org",)
    changed = run_client(server, client, "-F", "--contact", "mailto:second@example.org", *names)
    assert changed.code == 0, changed.stderr
    assert account_contact(server, client) == ("mailto:second@example.org",)
