"""The sandbox on older kernels: LETSKENCRYPT_LANDLOCK_ABI=N makes every role
use at most Landlock ABI N (0: as if the kernel had none).  For each N, what
`letskencrypt sandbox-check` shows, and that a real issuance still works.

What Landlock alone protects shows as `not available` below its ABI; what
seccomp, the session, capabilities or the second stage protect holds at every
level.  (The README's table comes from these expectations.)"""

import os
import subprocess
import sys

import pytest
from letskencrypt import namespace, sandbox
from letskencrypt.roles import ROLES
from letskencrypt.sandbox_check import ATTEMPTS, STATE_ROWS

from tests.conftest import Paths, run_client
from tests.pebble import Pebble

KERNEL = sandbox.kernel_landlock_abi()
LEVELS = range(0, 8)
# Landlock's file rules: ABI 1.
BY_LANDLOCK_FS = {"read", "account_key", "domain_key", "write", "create", "mem", "environ"}
NETWORK = {"netproc", "dnsproc"}
# They call other roles, so no second seccomp stage (see sandbox.seal).
CLIENTS = {"netproc", "certproc", "acctproc"}


def expected(key: str, role: str, abi: int, namespaces: bool) -> str:
    """`enforced`, `not available` or `allowed`, for one cell of the table."""
    if key in {"inet_tcp", "inet_udp", "inet6_tcp", "inet6_udp", "netlink"} and role in NETWORK:
        return "allowed"
    if key == "named" and role in CLIENTS:
        # Only the private mount namespace leaves the clients their peers' sockets alone.
        return "enforced" if namespaces else "not available"
    if key in BY_LANDLOCK_FS:
        return "enforced" if abi >= 1 or namespaces else "not available"
    if key == "tcp_connect":
        if role == "netproc":
            return "allowed"
        if role == "dnsproc":  # port 53 only, by Landlock
            return "enforced" if abi >= 4 else "not available"
        # The second stage forbids connect() to the server-only roles; the
        # socket was made before the sandbox, in the host's network namespace.
        return "enforced" if abi >= 4 or role not in CLIENTS else "not available"
    if key == "abstract":
        if role not in CLIENTS:
            return "enforced"  # the second stage
        if namespaces and role not in NETWORK:
            return "enforced"  # a network namespace of its own has no abstract names
        return "enforced" if abi >= 6 else "not available"
    return "enforced"


def sandbox_check(abi: int, namespaces: bool) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ, LETSKENCRYPT_LANDLOCK_ABI=str(abi))
    environment.pop(namespace.DISABLE_VARIABLE, None)
    if not namespaces:
        environment[namespace.DISABLE_VARIABLE] = "1"
    return subprocess.run(
        [sys.executable, "-m", "letskencrypt", "sandbox-check"], env=environment,
        capture_output=True, text=True, cwd="/", timeout=300, check=False,
    )  # fmt: skip


def test_this_kernel_has_every_level() -> None:
    assert max(LEVELS) <= KERNEL


def test_a_bad_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sandbox.ABI_VARIABLE, "two")
    with pytest.raises(sandbox.SandboxError):
        sandbox.landlock_abi()
    monkeypatch.setenv(sandbox.ABI_VARIABLE, "3")
    assert sandbox.landlock_abi() == min(3, KERNEL)


@pytest.mark.parametrize("namespaces", [True, False], ids=["namespaces", "no-namespaces"])
@pytest.mark.parametrize("abi", LEVELS)
def test_sandbox_check_at_each_landlock_abi(abi: int, namespaces: bool) -> None:
    result = sandbox_check(abi, namespaces)
    # Nothing applied fails to hold, and every role's own paths still work.
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert (f"Landlock ABI {abi}" if abi else "no Landlock") in lines[0]
    assert lines[2].split() == list(ROLES)
    rows = {line[:37].strip(): line[37:].split() for line in lines[3:] if line[:37].strip()}
    for attempt in ATTEMPTS:
        cells = [cell.rstrip("*") for cell in rows[attempt.label]]
        # "not available" is two words.
        cells = " ".join(cells).replace("not available", "not_available").split()
        for role, cell in zip(ROLES, cells, strict=True):
            want = expected(attempt.key, role, abi, namespaces).replace(" ", "_")
            assert cell == want, (abi, namespaces, attempt.key, role, cell)
    for _key, label in STATE_ROWS:
        cells = [cell for cell in rows[label] if not cell.startswith("(")]  # thread counts
        assert cells == ["enforced"] * len(ROLES), (label, rows[label])
    assert all(cell == "works" for cell in rows["own sockets and paths work"])


@pytest.mark.parametrize("abi", LEVELS)
def test_issuance_at_each_landlock_abi(
    pebble: Pebble, paths: Paths, abi: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(sandbox.ABI_VARIABLE, str(abi))
    name = f"abi{abi}.example.org"
    result = run_client(pebble, paths, "-n", "-N", name)
    assert result.code == 0, result.stderr
    assert (paths.cert_dir / "cert.pem").exists()
    assert list(paths.challenge_dir.iterdir()) == []
    if abi == 0:
        # Without Landlock each role says so, once, and goes on.
        assert "sandbox: not applied: landlock" in result.stderr
