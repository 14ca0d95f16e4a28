"""Each native role lives in namespaces of its own (namespace.py): it sees
only its own paths, and the roles without network have no network at all.
And no key may live where a role writes (options.check_key_places)."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from letskencrypt import cli, launch, namespace, options, rpc, sandbox, supervisor
from letskencrypt.errors import InputError
from letskencrypt.roles import ROLES

from tests.certfactory import make_pki, pem
from tests.test_sandbox import base, serving_role, start_role, wait_for_socket  # noqa: F401


def own_namespace(kind: str, pid: int | str = "self") -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


NETWORK_ROLES = frozenset({"netproc", "dnsproc"})


def visible_edges(role: str) -> set[str]:
    return {edge.name for edge in rpc.EDGES.values() if role in (edge.client, edge.server)}


@pytest.mark.parametrize("role", [role for role in ROLES if role != "netproc"])
def test_a_running_role_sees_only_its_own_paths(base: Path, role: str) -> None:  # noqa: F811
    with serving_role(role, base) as process:
        pid = process.process.pid
        assert own_namespace("mnt", pid) != own_namespace("mnt")
        assert own_namespace("ipc", pid) != own_namespace("ipc")
        if role in NETWORK_ROLES:
            assert own_namespace("net", pid) == own_namespace("net")
        else:
            assert own_namespace("net", pid) != own_namespace("net")
        root = Path(f"/proc/{pid}/root")
        top = set(os.listdir(root))
        assert not {"run", "home", "root", "var", "boot"} & top, top
        assert set(os.listdir(root / "dev")) == {"null", "urandom"}
        assert set(os.listdir(root / "proc")) == {str(pid), "self", "sys"}
        run_dir = str(process.base / "run")
        assert set(os.listdir(str(root) + run_dir)) == visible_edges(role)
        # The role's view of /tmp is not the host's: only the run directory
        # and, for a checkout under /tmp, the Python paths are mounted there.
        mounted = [run_dir, *sandbox.python_paths()]
        tops = {Path(path).parts[2] for path in mounted if Path(path).parts[1:2] == ("tmp",)}
        assert set(os.listdir(root / "tmp")) <= tops


def test_a_role_cannot_reach_a_socket_of_the_host(base: Path, tmp_path: Path) -> None:  # noqa: F811
    """The socket exists and is open to all, yet the role's root has no such path."""
    process = start_role("chngproc", base)
    bait = Path("/tmp") / f"letskencrypt-bait-{os.getpid()}.sock"
    listener = socket.socket(socket.AF_UNIX)
    try:
        listener.bind(str(bait))
        bait.chmod(0o777)
        listener.listen(1)
        wait_for_socket(process)
        assert not os.path.lexists(f"/proc/{process.process.pid}/root{bait}")
        process.stop()
    finally:
        listener.close()
        bait.unlink(missing_ok=True)
        if process.process.poll() is None:
            process.process.kill()
            process.process.wait()


def test_namespaces_are_available_here() -> None:
    """As root and (through a user namespace) as an ordinary user."""
    assert namespace.available() is None
    code = "from letskencrypt import namespace; print(namespace.available())"
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
        capture_output=True, text=True, check=True, cwd="/",
    )  # fmt: skip
    assert result.stdout.strip() == "None", result


def test_the_switch_turns_them_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(namespace.DISABLE_VARIABLE, "1")
    assert "turned off" in (namespace.available() or "")


# --- keys out of the directories that roles write ------------------------------------


def settings_for(tmp_path: Path, *extra: str) -> dict:
    anchors = tmp_path / "anchors.pem"
    anchors.write_bytes(pem(make_pki().root))
    argv = ["--server", "https://ca.example/dir", "--trust-anchors", str(anchors),
            "-C", str(tmp_path / "challenge"),
            "-c", str(tmp_path / "certs"), "-f", str(tmp_path / "account.pem"),
            "-k", str(tmp_path / "keys" / "domain.pem"), *extra, "example.org"]  # fmt: skip
    return options.role_settings(options.build_parser().parse_args(argv))


@pytest.mark.parametrize(
    ("option", "place", "what"),
    [
        ("-k", "certs/private/privkey.pem", "domain key"),
        ("-k", "certs/privkey.pem", "domain key"),
        ("-k", "challenge/key.pem", "domain key"),
        ("-f", "certs/account.pem", "account key"),
        ("--audit-log", "certs/audit.log", "audit log"),
    ],
)
def test_a_key_inside_a_written_directory_is_refused(
    tmp_path: Path, option: str, place: str, what: str
) -> None:
    with pytest.raises(InputError, match=f"^{what} .* is inside the"):
        settings_for(tmp_path, option, str(tmp_path / place))


def test_a_key_reached_through_a_symlink_is_refused_too(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    (tmp_path / "keys-link").symlink_to(tmp_path / "certs")
    with pytest.raises(InputError, match="inside the certificate directory"):
        settings_for(tmp_path, "-k", str(tmp_path / "keys-link" / "domain.pem"))


def test_the_refusal_comes_before_any_role_starts(tmp_path: Path) -> None:
    anchors = tmp_path / "anchors.pem"
    anchors.write_bytes(pem(make_pki().root))
    argv = ["--server", "https://127.0.0.1:9/dir", "--trust-anchors", str(anchors),
            "-C", str(tmp_path / "ch"),
            "-c", str(tmp_path / "certs"), "-f", str(tmp_path / "a.pem"),
            "-k", str(tmp_path / "certs" / "private" / "k.pem"),
            "-n", "-N", "example.org"]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "letskencrypt.cli", *argv],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "domain key" in result.stderr and "inside the certificate directory" in result.stderr
    assert not (tmp_path / "certs").exists()


def test_the_default_domain_key_is_outside_the_default_directories() -> None:
    for directory in (options.DEFAULT_CERT_DIR, options.DEFAULT_CHALLENGE_DIR):
        assert not options.is_within(options.DEFAULT_DOMAIN_KEY, directory)
        assert not options.is_within(options.DEFAULT_ACCOUNT_KEY, directory)


def test_a_key_at_the_former_default_place_moves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    former = tmp_path / "certs" / "private" / "privkey.pem"
    new = tmp_path / "private" / "acme" / "privkey.pem"
    former.parent.mkdir(parents=True)
    former.write_bytes(b"key bytes")
    former.chmod(0o400)
    monkeypatch.setattr(cli, "FORMER_DEFAULT_DOMAIN_KEY", str(former))
    monkeypatch.setattr(cli, "DEFAULT_DOMAIN_KEY", str(new))
    args = options.build_parser().parse_args(["-k", str(new), "example.org"])
    message = cli.move_former_default_domain_key(args)
    assert message is not None and str(new) in message
    assert new.read_bytes() == b"key bytes"
    assert new.stat().st_mode & 0o777 == 0o400
    assert not former.exists() and not former.parent.exists()
    # Once moved, or with a key of the operator's choosing, nothing happens.
    assert cli.move_former_default_domain_key(args) is None
    other = options.build_parser().parse_args(["-k", str(tmp_path / "x.pem"), "example.org"])
    assert cli.move_former_default_domain_key(other) is None


def test_the_callers_pythonpath_does_not_reach_a_role(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each entry of a role's sys.path is mirrored into its root and readable:
    the roles get this package's own root and nothing of the caller's."""
    monkeypatch.setenv("PYTHONPATH", "/root:/etc")
    environment = launch.role_environment()
    assert environment["PYTHONPATH"] == launch.PACKAGE_ROOT
    assert Path(launch.PACKAGE_ROOT, "letskencrypt", "roles").is_dir()


def test_the_run_directory_is_open_to_no_one_else() -> None:
    """With namespaces each role mounts its own edges while still privileged:
    the run directory is 0700 and the caller's; started as root, no one else,
    the run group included, can reach a socket to replace it."""
    run_user = cli.run_user("nobody")  # None unless we are root
    started = supervisor.Supervisor(settings={}, run_user=run_user)
    run_dir = started.make_run_dir()
    try:
        status = os.stat(run_dir)
        assert (status.st_uid, status.st_mode & 0o777) == (os.geteuid(), 0o700)
        if run_user is not None:
            code = f"import os; os.listdir({os.path.join(run_dir, 'acct')!r})"
            denied = subprocess.run(
                ["setpriv", f"--reuid={run_user.uid}", f"--regid={run_user.gid}",
                 "--clear-groups", sys.executable, "-c", code],
                capture_output=True, text=True, check=False, cwd="/",
            )  # fmt: skip
            assert denied.returncode != 0 and "PermissionError" in denied.stderr
    finally:
        shutil.rmtree(run_dir)
