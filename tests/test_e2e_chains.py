"""End to end, native mode: alternate chains (RFC 8555 section 7.4.2) and
--preferred-chain, against pebble 2.10 (Debian unstable's) and 2.4 (Debian
12's), each with two more issuance hierarchies (PEBBLE_ALTERNATE_ROOTS)."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.conftest import Paths, run_client, run_config, write_config
from tests.pebble import Pebble
from tests.test_e2e_native import assert_installed

ALTERNATES = 2


@pytest.fixture(scope="module", params=["2.4", "2.10"])
def pebble_chains(request: pytest.FixtureRequest) -> Iterator[Pebble]:
    with Pebble(generation=request.param, alternate_roots=ALTERNATES) as server:
        os.chmod(server.challenge_dir, 0o755)
        yield server


def paths_for(tmp_path: Path, server: Pebble) -> Paths:
    tmp_path.chmod(0o755)
    return Paths(base=tmp_path, challenge_dir=server.challenge_dir)


def common_name(name: x509.Name) -> str:
    return str(name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def root_name(server: Pebble, index: int) -> str:
    return common_name(x509.load_pem_x509_certificate(server.root_pem(index).encode()).subject)


def top_issuer(paths: Paths) -> str:
    chain = x509.load_pem_x509_certificates((paths.cert_dir / "chain.pem").read_bytes())
    return common_name(chain[-1].issuer)


def issue(server: Pebble, tmp_path: Path, name: str, *args: str) -> tuple[Paths, str]:
    paths = paths_for(tmp_path, server)
    result = run_client(server, paths, "-v", "-n", "-N", *args, name)
    assert result.code == 0, result.stderr
    assert_installed(paths, [name])
    return paths, result.stderr


def generation(server: Pebble) -> str:
    return server.generation.replace(".", "")


def test_the_roots_differ(pebble_chains: Pebble) -> None:
    names = {root_name(pebble_chains, index) for index in range(1 + ALTERNATES)}
    assert len(names) == 1 + ALTERNATES


def test_without_the_option_the_default_chain(pebble_chains: Pebble, tmp_path: Path) -> None:
    name = f"default{generation(pebble_chains)}.example.org"
    paths, stderr = issue(pebble_chains, tmp_path, name)
    assert top_issuer(paths) == root_name(pebble_chains, 0)
    # Every alternate is downloaded and handed to certproc all the same.
    assert stderr.count("downloaded a chain") == 1 + ALTERNATES


@pytest.mark.parametrize("index", range(1, 1 + ALTERNATES))
def test_the_preferred_alternate_chain(
    pebble_chains: Pebble, tmp_path: Path, index: int
) -> None:
    wanted = root_name(pebble_chains, index)
    name = f"alt{index}-{generation(pebble_chains)}.example.org"
    paths, stderr = issue(pebble_chains, tmp_path, name, "--preferred-chain", wanted)
    assert top_issuer(paths) == wanted
    assert f"certproc: chose alternate chain {index} (--preferred-chain)" in stderr
    chain = x509.load_pem_x509_certificates((paths.cert_dir / "chain.pem").read_bytes())
    intermediate = x509.load_pem_x509_certificate(pebble_chains.intermediate_pem(index).encode())
    assert chain[-1] == intermediate


def test_the_default_root_named(pebble_chains: Pebble, tmp_path: Path) -> None:
    wanted = root_name(pebble_chains, 0)
    name = f"named-default{generation(pebble_chains)}.example.org"
    paths, stderr = issue(pebble_chains, tmp_path, name, "--preferred-chain", wanted)
    assert top_issuer(paths) == wanted
    assert "chose alternate chain" not in stderr


def test_a_name_that_matches_nothing(pebble_chains: Pebble, tmp_path: Path) -> None:
    name = f"nomatch{generation(pebble_chains)}.example.org"
    paths, stderr = issue(pebble_chains, tmp_path, name, "--preferred-chain", "No Such Root")
    assert top_issuer(paths) == root_name(pebble_chains, 0)
    lines = [line for line in stderr.splitlines() if "No Such Root" in line]
    assert lines == [
        f"letskencrypt: certproc: no verified chain of the {1 + ALTERNATES} ends in a "
        "certificate issued by 'No Such Root' (--preferred-chain): the default chain"
    ]
    assert stderr.count("downloaded a chain") == 1 + ALTERNATES


def preferred_chains(preferred: dict[str, str | None]) -> dict[str, list[str]]:
    """The domain blocks' extra lines: `preferred chain NAME` where a name is given."""
    return {handle: [f'preferred chain "{name}"'] if name else []
            for handle, name in preferred.items()}  # fmt: skip


def test_the_preferred_chain_directive(pebble_chains: Pebble, tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    tag = generation(pebble_chains)
    preferred = {
        f"plain{tag}.conf.example.org": None,
        f"alt{tag}.conf.example.org": root_name(pebble_chains, ALTERNATES),
        f"none{tag}.conf.example.org": "No Such Root",
    }
    result = run_config(write_config(tmp_path, pebble_chains, preferred_chains(preferred)))
    assert result.code == 0, result.stderr
    for handle, name in preferred.items():
        chain = x509.load_pem_x509_certificates(
            (tmp_path / "state" / "certs" / handle / "chain.pem").read_bytes()
        )
        wanted = name if name == root_name(pebble_chains, ALTERNATES) else None
        assert common_name(chain[-1].issuer) == (wanted or root_name(pebble_chains, 0)), handle


def test_the_option_goes_in_the_file_with_config(pebble_chains: Pebble, tmp_path: Path) -> None:
    config = write_config(tmp_path, pebble_chains, {"x.example.org": []})
    result = run_config(config, "--preferred-chain", "Root")
    assert result.code == 1
    assert result.stderr == (
        "letskencrypt: --preferred-chain goes in the configuration file (preferred chain) "
        "with --config\n"
    )
