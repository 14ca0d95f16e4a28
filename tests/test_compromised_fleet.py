"""A `--config` run shares its roles between its certificates (host.py): a
compromised netproc there holds every certificate's tokens.  What it must
still not do is use one certificate's run against another's: reach the
other certificate's keyproc with its own token, have acctproc sign an
order for the first certificate's names as the second's, or have the
second certificate's order finalized with the first one's CSR.

tests/attacker_fleet.py does each of these from inside netproc's real
sandbox during a real run of two certificates against pebble
(tests/compromised_fleet.py), then finishes the run as netproc would.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from tests.conftest import ROOT
from tests.pebble import Pebble
from tests.test_fleet_e2e import Site, write_config

SITES = [Site("a.fleet.example.org", ["a.fleet.example.org"]),
         Site("b.fleet.example.org", ["b.fleet.example.org"])]  # fmt: skip
# a and b sign with two authorities' accounts.
AUTHORITY_OF = {"a.fleet.example.org": "first", "b.fleet.example.org": "second"}
EXPECTED = {
    "key-a-csr": "allowed",
    "key-b-csr": "allowed",
    "key-b-with-a-token": "refused",
    "acct-b-order-for-a-names": "refused",
    "acct-a-with-b-token": "refused",
    "acct-b-finalize-with-a-csr": "refused",
}


@pytest.fixture(scope="module")
def compromised(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    base = tmp_path_factory.mktemp("compromised-fleet")
    base.chmod(0o755)
    for directory in ("keys", "certs", "published"):
        (base / directory).mkdir()
    with Pebble() as pebble:
        pebble.challenge_dir.chmod(0o755)
        config = write_config(base, pebble, SITES, authority_of=AUTHORITY_OF)
        completed = subprocess.run(
            [sys.executable, "-m", "tests.compromised_fleet", "--config", str(config), "-n", "-N"],
            cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
        )  # fmt: skip
    return base, completed


def attacks(output: str) -> dict[str, dict[str, str]]:
    found = {}
    for line in output.splitlines():
        _, marker, rest = line.partition("ATTACK {")
        if marker:
            attempt = json.loads("{" + rest)
            found[attempt["name"]] = attempt
    return found


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_attack(compromised: tuple[Path, subprocess.CompletedProcess[str]], name: str) -> None:
    _, completed = compromised
    attempt = attacks(completed.stderr).get(name)
    assert attempt is not None, completed.stderr[-3000:]
    wanted = "succeeded" if EXPECTED[name] == "allowed" else "refused"
    assert attempt["outcome"] == wanted, attempt


def test_the_run_still_issues_each_certificate_for_its_own_key(
    compromised: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    base, completed = compromised
    assert "ATTACK-DONE" in completed.stderr, completed.stderr[-3000:]
    assert completed.returncode == 0, completed.stderr[-3000:]
    for site in SITES:
        leaf = x509.load_pem_x509_certificate(
            (base / "certs" / site.handle / "cert.pem").read_bytes()
        )
        key = load_pem_private_key((base / "keys" / f"{site.handle}.pem").read_bytes(), None)
        assert leaf.public_key() == key.public_key()
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == site.names


def test_each_account_has_an_acctproc_that_is_given_its_secrets_only(
    compromised: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    """Two authorities, two account keys: two acctprocs, each told of its
    own account's certificate only (tests/spy_role.py reports what each was
    given before it served), so no process ever loads both keys."""
    base, completed = compromised
    spied = [json.loads(line.partition("SPY ")[2]) for line in completed.stderr.splitlines()
             if "SPY {" in line]  # fmt: skip
    assert len(spied) == 2, completed.stderr[-3000:]
    given = {tuple(spy["certificates"]): spy["secrets"] for spy in spied}
    assert given == {(0,): [str(base / "first.pem")], (1,): [str(base / "second.pem")]}, spied
    assert sorted(spy["part"] for spy in spied) == [0, 1]
