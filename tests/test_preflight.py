"""What a native run refuses before any role starts, so before it spends a
request at the CA (issue 8): each in one line, exit 1."""

import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import pytest
from letskencrypt import cli
from letskencrypt.errors import InputError

from tests.certfactory import make_pki, pem

NOBODY = 65534


def run(tmp_path: Path, *extra: str, challenge: Path | None = None) -> subprocess.CompletedProcess:
    anchors = tmp_path / "anchors.pem"
    anchors.write_bytes(pem(make_pki().root))
    challenge = challenge or tmp_path / "challenge"
    challenge.mkdir(exist_ok=True)
    argv = ["--server", "https://127.0.0.1:9/dir", "--trust-anchors", str(anchors),
            "-C", str(challenge), "-c", str(tmp_path / "certs"),
            "-f", str(tmp_path / "account.pem"), "-k", str(tmp_path / "domain.pem"),
            "-n", "-N", *extra, "example.org"]  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "letskencrypt.cli", *argv],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


def refused_before_any_role(
    result: subprocess.CompletedProcess, tmp_path: Path, words: str
) -> None:
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert words in result.stderr, result.stderr
    # No role ran: no key was created.
    assert not (tmp_path / "account.pem").exists()
    assert not (tmp_path / "domain.pem").exists()


def test_the_same_file_for_both_keys(tmp_path: Path) -> None:
    result = run(tmp_path, "-f", str(tmp_path / "same.pem"), "-k", str(tmp_path / "same.pem"))
    refused_before_any_role(result, tmp_path, "the account key and the domain key are the same")


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "no PEM certificate OpenSSL can use"),
        (b"garbage\n" * 10, "no PEM certificate OpenSSL can use"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "OpenSSL"),
    ],
)
def test_a_ca_bundle_openssl_cannot_use(tmp_path: Path, content: bytes, words: str) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(content)
    refused_before_any_role(run(tmp_path, "--ca-bundle", str(bundle)), tmp_path, words)


def test_a_directory_as_ca_bundle(tmp_path: Path) -> None:
    refused_before_any_role(
        run(tmp_path, "--ca-bundle", str(tmp_path)), tmp_path, "a directory, not a file"
    )


def test_a_challenge_directory_chngproc_cannot_write(tmp_path: Path) -> None:
    challenge = tmp_path / "webroot"
    challenge.mkdir(mode=0o755)
    if os.geteuid() == 0:
        os.chown(challenge, NOBODY, NOBODY)  # root without capabilities: not its owner
    else:
        challenge.chmod(0o555)
    result = run(tmp_path, challenge=challenge)
    refused_before_any_role(result, tmp_path, f"challenge directory {challenge}: chngproc")


def test_a_certificate_directory_fileproc_cannot_write(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir(mode=0o755)
    if os.geteuid() == 0:
        os.chown(certs, NOBODY, NOBODY)
    else:
        certs.chmod(0o555)
    refused_before_any_role(run(tmp_path), tmp_path, f"certificate directory {certs}: fileproc")


@pytest.mark.parametrize(
    ("owner", "mode", "writable"),
    [
        ("self", 0o755, True),
        ("self", 0o555, False),
        ("other", 0o755, False),
        ("other", 0o777, True),
        ("group", 0o775, True),
        ("group", 0o755, False),
    ],
)
def test_writable_by_the_bits_alone(tmp_path: Path, owner: str, mode: int, writable: bool) -> None:
    """Root without capabilities has the owner's bits only: the check reads
    the mode, not os.access (which answers for root with its capabilities)."""
    directory = tmp_path / "d"
    directory.mkdir()
    directory.chmod(mode)
    status = directory.stat()
    uid = status.st_uid if owner == "self" else status.st_uid + 1
    gids = {status.st_gid} if owner == "group" else {status.st_gid + 1}
    if writable:
        cli.check_writable_directory(str(directory), "x", "role", uid, gids)
    else:
        with pytest.raises(InputError, match="could not write there"):
            cli.check_writable_directory(str(directory), "x", "role", uid, gids)


# --- room where the roles write ------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a file system (root only)")


@needs_root
@pytest.mark.parametrize(
    ("options", "words"),
    [
        ("size=512k", "only 512 KiB free on its file system"),
        ("size=4m,nr_inodes=16", "only 15 free inodes on its file system"),
        ("size=4m,ro", "on a read-only file system"),
    ],
)
def test_a_certificate_directory_without_room(tmp_path: Path, options: str, words: str) -> None:
    """A small file system of its own, in a mount namespace of the command's."""
    certs = tmp_path / "certs"
    certs.mkdir()
    anchors = tmp_path / "anchors.pem"
    anchors.write_bytes(pem(make_pki().root))
    (tmp_path / "challenge").mkdir()
    command = (
        f"mount -t tmpfs -o {options},mode=755 tmpfs {certs} && exec {sys.executable} "
        f"-m letskencrypt.cli --server https://127.0.0.1:9/dir --trust-anchors {anchors} "
        f"-C {tmp_path / 'challenge'} -c {certs} -f {tmp_path / 'account.pem'} "
        f"-k {tmp_path / 'domain.pem'} -n -N example.org"
    )
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                             command], capture_output=True, text=True, check=False,
                            timeout=60)  # fmt: skip
    refused_before_any_role(result, tmp_path, f"certificate directory {certs}: {words}")


def test_room_is_measured_where_the_directory_will_be(tmp_path: Path) -> None:
    """A certificate directory fileproc will create: its nearest parent's file system."""
    cli.check_room(str(tmp_path / "not" / "yet"), "certificate directory")


# --- the roles' code, readable by the user they run as ---------------------------------

RUN_USER = cli.RunUser(NOBODY, NOBODY)


def installed_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: int) -> Path:
    """A module loaded from a tree on sys.path, below a 0700 directory."""
    home = tmp_path / "home"
    tree = home / "site-packages"
    (tree / "pkg").mkdir(parents=True)
    module = tree / "pkg" / "mod.py"
    module.write_text("")
    module.chmod(mode)
    home.chmod(0o700)
    monkeypatch.syspath_prepend(str(tree))
    fake = types.ModuleType("letskencrypt_test_pkg_mod")
    fake.__file__ = str(module)
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    return tree


def test_code_below_a_private_home_is_fine_in_namespaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The roles see the tree mirrored: the 0700 directory above it is no obstacle."""
    installed_module(tmp_path, monkeypatch, 0o644)
    cli.check_code_readable(RUN_USER, mirrored=True)


def test_code_the_run_user_cannot_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = installed_module(tmp_path, monkeypatch, 0o600)
    with pytest.raises(InputError, match=rf"mod\.py: the roles run as .*chmod -R a\+rX {tree}"):
        cli.check_code_readable(RUN_USER, mirrored=True)


def test_code_below_a_private_home_without_namespaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed_module(tmp_path, monkeypatch, 0o644)
    with pytest.raises(InputError, match=r"mode 700\): chmod a\+x /"):
        cli.check_code_readable(RUN_USER, mirrored=False)


def test_a_run_directory_the_run_user_cannot_reach(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private = tmp_path / "private"
    (private / "tmp").mkdir(parents=True)
    private.chmod(0o700)
    monkeypatch.setattr(tempfile, "tempdir", str(private / "tmp"))
    with pytest.raises(InputError, match=r"TMPDIR .*: set TMPDIR to a directory it can reach"):
        cli.check_run_dir_reachable(RUN_USER, "turned off")
