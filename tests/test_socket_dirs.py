"""In a native run of many certificates, each keyproc (one per certificate)
and each acctproc (one per account) makes its sockets in a directory of its
own (rpc.socket_path): its sandbox lets it make a socket there and nowhere
else.  Were they all in the edge's directory, a compromised keyproc could
bind the socket of a certificate whose keyproc has not bound yet, and be
sent that certificate's edge token by netproc or certproc; a compromised
acctproc could take another account's calls the same way."""

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from letskencrypt import namespace, sandbox_check, supervisor

TRY_TO_BIND = """
import errno, json, os, socket, sys
from pathlib import Path
from letskencrypt import process, sandbox_check
from letskencrypt.context import RoleConfig

base, role, number = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
run_dir = sys.argv[4]
settings = sandbox_check.role_settings(base)[role]
config = RoleConfig(role, run_dir, settings, instance=number if role == "keyproc" else None,
                    part=number if role == "acctproc" else None)
process.confine(config)
outcomes = {}
for target in sys.argv[5:]:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.bind(os.path.join(run_dir, target))
            outcomes[target] = "bound"
        except OSError as error:
            outcomes[target] = errno.errorcode[error.errno]
print(json.dumps(outcomes))
"""


@pytest.fixture(params=["namespaces", "landlock alone"])
def world(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Path, str]]:
    """Each layer on its own: the role's mount namespace shows it its own
    socket directory only, and Landlock lets it make sockets there only."""
    if request.param == "landlock alone":
        monkeypatch.setenv(namespace.DISABLE_VARIABLE, "1")
    for directory in (sandbox_check.CHALLENGE, sandbox_check.CERTS):
        (tmp_path / directory).mkdir(parents=True)
    for key in (sandbox_check.ACCOUNT_KEY, sandbox_check.DOMAIN_KEY):
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
    run_dir = supervisor.make_run_dir(None, instances=2, parts={"acct": 2})
    yield tmp_path, run_dir
    shutil.rmtree(run_dir)


def try_to_bind(world: tuple[Path, str], role: str, number: int, *targets: str) -> dict[str, str]:
    base, run_dir = world
    completed = subprocess.run(
        [sys.executable, "-c", TRY_TO_BIND, str(base), role, str(number), run_dir, *targets],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


@pytest.mark.parametrize("edge", ["key", "keyinfo", "keyacct"])
def test_a_keyproc_binds_its_own_certificate_s_socket_only(
    world: tuple[Path, str], edge: str
) -> None:
    outcomes = try_to_bind(world, "keyproc", 0, f"{edge}/0/sock", f"{edge}/1/sock", f"{edge}/sock")
    assert outcomes[f"{edge}/0/sock"] == "bound", outcomes
    assert outcomes[f"{edge}/1/sock"] != "bound", outcomes
    assert outcomes[f"{edge}/sock"] != "bound", outcomes


def test_an_acctproc_binds_its_own_account_s_socket_only(world: tuple[Path, str]) -> None:
    outcomes = try_to_bind(world, "acctproc", 1, "acct/p1/sock", "acct/p0/sock", "acct/sock")
    assert outcomes == {"acct/p1/sock": "bound", "acct/p0/sock": outcomes["acct/p0/sock"],
                        "acct/sock": outcomes["acct/sock"]}  # fmt: skip
    assert "bound" not in (outcomes["acct/p0/sock"], outcomes["acct/sock"]), outcomes
