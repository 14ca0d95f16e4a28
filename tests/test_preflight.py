"""What a native run refuses before any role starts, so before it spends a
request at the CA (issue 8): each in one line, exit 1."""

import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import pytest
from letskencrypt import cli, options
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


# --- the key files (issue 8: no silent ignores) --------------------------------------


def write_key(path: Path, key_type: str) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from letskencrypt import keys

    data = keys.generate_key(key_type).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())  # fmt: skip
    path.write_bytes(data)
    path.chmod(0o400)
    return data


def refused_in_one_line(result: subprocess.CompletedProcess, line: str) -> None:
    assert result.returncode == 1, result.stderr
    assert result.stderr == f"letskencrypt: {line}\n"


def test_a_domain_key_of_another_type(tmp_path: Path) -> None:
    domain = tmp_path / "domain.pem"
    before = write_key(domain, "ecdsa256")
    result = run(tmp_path, "--key-type", "rsa2048")
    refused_in_one_line(result, (
        f"domain key {domain} is ecdsa256, not rsa2048 as --key-type asks: give "
        "--rotate-domain-key to replace it with a new rsa2048 key, or leave out --key-type"
    ))
    assert domain.read_bytes() == before
    # No role ran: acctproc would have made the account key (-n).
    assert not (tmp_path / "account.pem").exists()


def test_an_account_key_of_another_type(tmp_path: Path) -> None:
    account = tmp_path / "account.pem"
    before = write_key(account, "rsa2048")
    result = run(tmp_path, "--key-type", "ecdsa384")
    refused_in_one_line(result, (
        f"account key {account} is rsa2048, not ecdsa384: give --account-key-type rsa2048 "
        "to keep it, or --rollover-account-key NEWKEY to change the account to a new "
        "ecdsa384 key"
    ))
    assert account.read_bytes() == before
    assert not (tmp_path / "domain.pem").exists()
    # Its own type, given, is what it is held to.
    refused_in_one_line(run(tmp_path, "--account-key-type", "rsa4096"), (
        f"account key {account} is rsa2048, not rsa4096: give --account-key-type rsa2048 "
        "to keep it, or --rollover-account-key NEWKEY to change the account to a new "
        "rsa4096 key"
    ))
    passed = run(tmp_path, "--key-type", "ecdsa384", "--account-key-type", "rsa2048")
    assert passed.returncode == 1 and "127.0.0.1" in passed.stderr, passed.stderr
    assert "key-type" not in passed.stderr


def test_keys_of_the_asked_type_pass(tmp_path: Path) -> None:
    """Past the preflight: the run fails later, at the CA that is not there."""
    write_key(tmp_path / "domain.pem", "ecdsa384")
    write_key(tmp_path / "account.pem", "ecdsa384")
    result = run(tmp_path, "--key-type", "ecdsa384")
    assert result.returncode == 1
    assert "--key-type" not in result.stderr and "127.0.0.1" in result.stderr, result.stderr


def test_a_domain_key_listed_as_compromised(tmp_path: Path) -> None:
    from letskencrypt import keyfiles, keys

    domain = tmp_path / "domain.pem"
    write_key(domain, "ecdsa256")
    keyfiles.record_compromised(str(domain), keys.spki_sha256(keys.load_key(str(domain))))
    refused_in_one_line(run(tmp_path), (
        f"domain key {domain} was revoked for keyCompromise (listed in "
        f"{tmp_path}/compromised-keys): give --rotate-domain-key to make a new key"
    ))
    assert not (tmp_path / "account.pem").exists()
    # A revocation of its certificate is not refused (it fails at the absent CA).
    again = run(tmp_path, "-r", "--revoke-reason", "keyCompromise")
    assert again.returncode == 1 and "keyCompromise" not in again.stderr, again.stderr


def test_an_unreadable_list_of_compromised_keys(tmp_path: Path) -> None:
    write_key(tmp_path / "domain.pem", "ecdsa256")
    (tmp_path / "compromised-keys").write_text("not a digest\n")
    refused_in_one_line(run(tmp_path), (
        f"{tmp_path}/compromised-keys: line 1 does not start with a SHA-256 digest"
    ))


@pytest.mark.parametrize(("extra", "words"), [
    (["-r"], "--rotate-domain-key does not go with -r (revoke first, then rotate)"),
    (["--daemon"], "--rotate-domain-key does not go with --daemon: rotate in a one-shot run"),
])  # fmt: skip
def test_what_a_rotation_does_not_go_with(tmp_path: Path, extra: list[str], words: str) -> None:
    refused_in_one_line(run(tmp_path, "--rotate-domain-key", *extra), words)


def test_a_failed_rotation_leaves_the_key_as_it_was(tmp_path: Path) -> None:
    """The key is of another type than asked: no refusal when it is being
    replaced; the run fails (no CA), and the new key is gone again."""
    domain = tmp_path / "domain.pem"
    before = write_key(domain, "ecdsa256")
    result = run(tmp_path, "--rotate-domain-key", "--key-type", "rsa2048")
    assert result.returncode == 1
    assert "127.0.0.1" in result.stderr and "--key-type" not in result.stderr, result.stderr
    assert domain.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("domain")) == [
        "domain.pem"
    ]


def test_an_interrupted_rotation_is_finished_first(tmp_path: Path) -> None:
    """A crash after the new certificate was installed, before its key was
    put in place: the next run does it before any role starts."""
    from letskencrypt import keyfiles, keys

    from tests.certfactory import make_pki

    domain = tmp_path / "domain.pem"
    before = write_key(domain, "ecdsa256")
    new = keys.write_key(keyfiles.pending_key(str(domain)), "ecdsa384")
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "cert.pem").write_bytes(pem(make_pki().leaf(["example.org"], key=new)))
    result = run(tmp_path)
    first = result.stderr.splitlines()[0]
    assert first.startswith(
        f"letskencrypt: finished replacing the domain key {domain} with its new ecdsa384 key, "
        f"whose certificate is installed (the old one is kept as {domain}.old-"
    ), result.stderr
    assert keys.spki_sha256(keys.load_key(str(domain))) == keys.spki_sha256(new)
    (old,) = tmp_path.glob("domain.pem.old-*")
    assert old.read_bytes() == before


def test_an_unfinished_rotation_without_its_certificate(tmp_path: Path) -> None:
    from letskencrypt import keyfiles, keys

    domain = tmp_path / "domain.pem"
    before = write_key(domain, "ecdsa256")
    pending = keyfiles.pending_key(str(domain))
    keys.write_key(pending, "ecdsa384")
    result = run(tmp_path)
    assert result.stderr.splitlines()[0] == (
        f"letskencrypt: removed {pending}: the new key of an unfinished --rotate-domain-key, "
        "with no certificate for it installed"
    )
    assert domain.read_bytes() == before
    assert not Path(pending).exists()


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


def test_a_config_run_checks_the_roles_user_once_for_every_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--config: what the roles' user lacks is looked at once (it is the same
    for every certificate, and costs a fork and a stat of every module's
    directories), and refuses every certificate with the same line."""
    from letskencrypt import conf, confrun

    tmp_path.chmod(0o755)
    challenges = tmp_path / "challenges"
    challenges.mkdir(mode=0o777)
    challenges.chmod(0o777)
    blocks = [
        "authority le {\n"
        '  api url "https://acme-staging-v02.api.letsencrypt.org/directory"\n'
        f'  account key "{tmp_path}/account.pem"\n'
        "}\n"
    ]
    for index in range(3):
        certs = tmp_path / f"certs-{index}"
        certs.mkdir(mode=0o777)
        certs.chmod(0o777)
        blocks.append(
            f"domain site{index}.example.org {{\n"
            f'  domain key "{tmp_path}/key-{index}.pem"\n'
            f'  certificate directory "{certs}"\n'
            f'  challengedir "{challenges}"\n'
            "  sign with le\n"
            "}\n"
        )
    path = tmp_path / "acme-client.conf"
    path.write_text("\n".join(blocks))
    calls = []

    def unreadable(user: cli.RunUser) -> None:
        calls.append(user)
        raise InputError("the roles cannot read their code")

    monkeypatch.setattr(cli, "check_roles_user", unreadable)
    args = options.build_parser().parse_args(["--config", str(path), "-n", "-N"])
    jobs = confrun.build_jobs(args, conf.load(str(path)), RUN_USER)
    assert len(calls) == 1
    assert [job.refused for job in jobs] == ["the roles cannot read their code"] * 3
