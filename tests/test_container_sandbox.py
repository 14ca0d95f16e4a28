"""Off the network inside containers too: in a Kubernetes Pod every container
shares the Pod's network namespace, so the runtime cannot keep seven of the
roles off it; their own seccomp filter must.  Each role image runs
`sandbox-check --strict` in a container that *has* a network (the host's, as
`hostNetwork` would give it) with the compose file's restrictions, for the
roles whose wheels the image carries (its own, and those that need fewer)."""

import os
import subprocess

import pytest

from tests.test_compose import CONTAINERS_CONF, ROLES, image

NETWORK_ROLES = {"netproc", "dnsproc"}
TCP_CONNECT_ROW = "TCP connect (socket made before)"
SOCKET_ROWS = (
    "socket AF_INET TCP", "socket AF_INET UDP", "socket AF_INET6 TCP", "socket AF_INET6 UDP",
    TCP_CONNECT_ROW,
)


def sandbox_check(image_role: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "podman", "run", "--rm", "--network", "host", "--read-only", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges", "--user", "65532:65532",
            "--entrypoint", "python3", image(image_role),
            "-m", "letskencrypt", "sandbox-check", "--strict",
        ],
        capture_output=True, text=True, timeout=180, check=False,
        env={**os.environ, "CONTAINERS_CONF": CONTAINERS_CONF},
    )


def table(output: str) -> dict[str, dict[str, str]]:
    lines = output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["netproc", "acctproc"])
    roles = lines[header].split()
    rows: dict[str, dict[str, str]] = {}
    for line in lines[header + 1:]:
        for name in SOCKET_ROWS:
            if line.startswith(name):
                cells = line[len(name):].split()
                rows[name] = dict(zip(roles, [c.rstrip("*") for c in cells], strict=True))
    return rows


@pytest.mark.parametrize("image_role", ROLES)
def test_roles_stay_off_a_network_they_could_reach(built_images: None, image_role: str) -> None:
    result = sandbox_check(image_role)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = table(result.stdout)
    assert set(rows) == set(SOCKET_ROWS), result.stdout
    # An image carries one role's wheels: the roles it cannot run are not
    # probed ("-"), its own role always is.
    probed = {role for role in ROLES if rows[SOCKET_ROWS[0]][role] != "-"}
    assert image_role in probed, result.stdout
    assert f"{image_role}: not in this image" not in result.stdout
    for row, cells in rows.items():
        for role in probed:
            expected = "allowed" if role in NETWORK_ROLES else "enforced"
            if role == "dnsproc" and row == TCP_CONNECT_ROW:
                expected = "enforced"  # Landlock: TCP to port 53 only
            assert cells[role] == expected, (image_role, row, role, cells[role])
