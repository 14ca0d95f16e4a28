"""Issue 8, the key files: --key-type against an existing key, the list of
compromised domain keys, the new key of --rotate-domain-key (keyfiles.py),
and keyproc and acctproc refusing at their start what the command line
refuses in a native run (in containers nothing else checks it)."""

import hashlib
import os
import shutil
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from letskencrypt import keyfiles, keys, launch, options
from letskencrypt.context import Logger
from letskencrypt.errors import InputError, KeyFileError, KeyFileMissing
from letskencrypt.roles import keyproc
from letskencrypt.settings import KeyprocSettings, RoleSettings
from letskencrypt.supervisor import Supervisor

from tests.certfactory import make_pki, pem

NAMES = ("a.example.org",)
NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


def write_pem(path: Path, key: keys.PrivateKey) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))  # fmt: skip
    path.chmod(0o400)
    return path


def digest(key: keys.PrivateKey) -> str:
    return keys.spki_sha256(key)


# --- --key-type -------------------------------------------------------------------------


def test_the_key_type_messages() -> None:
    assert keyfiles.key_type_mismatch("domain key", "/k/privkey.pem", "ecdsa256", "rsa2048") == (
        "domain key /k/privkey.pem is ecdsa256, not rsa2048 as --key-type asks: give "
        "--rotate-domain-key to replace it with a new rsa2048 key, or leave out --key-type"
    )
    assert keyfiles.key_type_mismatch("account key", "/a/privkey.pem", "rsa2048", "ecdsa384") == (
        "account key /a/privkey.pem is rsa2048, not ecdsa384: give --account-key-type rsa2048 "
        "to keep it, or --rollover-account-key NEWKEY to change the account to a new "
        "ecdsa384 key"
    )
    keyfiles.check_key_type("domain key", "/k", "rsa2048", "rsa2048")
    with pytest.raises(KeyFileError, match="is rsa2048, not rsa3072"):
        keyfiles.check_key_type("domain key", "/k", "rsa2048", "rsa3072")


# --- the list of compromised keys ----------------------------------------------------


def test_record_and_read_the_list(tmp_path: Path) -> None:
    key_path = str(tmp_path / "privkey.pem")
    first, second = keys.generate_key("ecdsa256"), keys.generate_key("rsa2048")
    assert keyfiles.read_compromised(key_path) == frozenset()
    assert keyfiles.record_compromised(key_path, digest(first), NOW)
    assert not keyfiles.record_compromised(key_path, digest(first), NOW)  # once
    assert keyfiles.record_compromised(key_path, digest(second).upper(), NOW)
    assert keyfiles.read_compromised(key_path) == {digest(first), digest(second)}
    assert keyfiles.is_compromised(key_path, digest(second))
    listed = tmp_path / "compromised-keys"
    lines = listed.read_text().splitlines()
    assert lines[0].startswith("# ")
    assert lines[-2:] == [f"{digest(first)} keyCompromise 2025-06-01T12:00:00Z",
                          f"{digest(second)} keyCompromise 2025-06-01T12:00:00Z"]  # fmt: skip
    assert stat.S_IMODE(listed.stat().st_mode) == 0o644
    assert sorted(os.listdir(tmp_path)) == ["compromised-keys"]  # no temporary file left


def test_a_list_written_by_hand(tmp_path: Path) -> None:
    key = keys.generate_key("ecdsa256")
    (tmp_path / "compromised-keys").write_text(
        f"# mine\n\n   \n{digest(key).upper()}   leaked on a laptop\n"
    )
    assert keyfiles.is_compromised(str(tmp_path / "k.pem"), digest(key))
    # Appending keeps what was there.
    other = keys.generate_key("ecdsa256")
    keyfiles.record_compromised(str(tmp_path / "k.pem"), digest(other))
    text = (tmp_path / "compromised-keys").read_text()
    assert text.startswith("# mine\n") and "leaked on a laptop" in text


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"abc\n", "line 1 does not start with a SHA-256 digest"),
        (b"# ok\n" + b"a" * 63 + b"\n", "line 2 does not start"),
        (b"\xff\n", "not ASCII text"),
        (b"#" * (keyfiles.MAX_COMPROMISED_LIST + 1), "larger than"),
    ],
)
def test_a_list_that_cannot_be_read_fails_closed(tmp_path: Path, content: bytes,
                                                  words: str) -> None:
    listed = tmp_path / "compromised-keys"
    listed.write_bytes(content)
    with pytest.raises(KeyFileError, match=words) as info:
        keyfiles.read_compromised(str(tmp_path / "k.pem"))
    assert str(info.value).startswith(f"{listed}: ")
    with pytest.raises(KeyFileError, match=words):
        keyfiles.record_compromised(str(tmp_path / "k.pem"), "0" * 64)
    assert listed.read_bytes() == content


def test_a_list_that_is_a_symlink_or_a_directory(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    (tmp_path / "compromised-keys").symlink_to(target)
    with pytest.raises(KeyFileError, match="symbolic link"):
        keyfiles.read_compromised(str(tmp_path / "k.pem"))
    (tmp_path / "compromised-keys").unlink()
    (tmp_path / "compromised-keys").mkdir()
    with pytest.raises(KeyFileError, match="not a regular file"):
        keyfiles.read_compromised(str(tmp_path / "k.pem"))


# --- probe: what the command line learns of a key, in a child ---------------------------


def test_probe(tmp_path: Path) -> None:
    key = keys.generate_key("ecdsa384")
    path = write_pem(tmp_path / "k.pem", key)
    facts = keyfiles.probe(str(path), "domain key", "-N")
    assert facts == keyfiles.KeyFacts(key_type="ecdsa384", spki_sha256=digest(key))
    with pytest.raises(KeyFileMissing, match=f"domain key {tmp_path}/none.pem: no such file"):
        keyfiles.probe(str(tmp_path / "none.pem"), "domain key", "-N")
    (tmp_path / "bad.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n")
    with pytest.raises(KeyFileError, match="not a valid PEM private key") as info:
        keyfiles.probe(str(tmp_path / "bad.pem"), "account key", "-n")
    assert str(info.value) == f"account key {tmp_path}/bad.pem: not a valid PEM private key"


# --- rotation ----------------------------------------------------------------------------


@pytest.fixture
def rotation(tmp_path: Path) -> tuple[Path, Path]:
    """A key directory with a live key, and a certificate directory."""
    key_path = write_pem(tmp_path / "keys" / "privkey.pem", keys.generate_key("ecdsa256"))
    cert_dir = tmp_path / "certs"
    cert_dir.mkdir()
    return key_path, cert_dir


def install_certificate_for(cert_dir: Path, key: keys.PrivateKey) -> None:
    (cert_dir / "cert.pem").write_bytes(pem(make_pki().leaf(list(NAMES), key=key)))


def test_no_rotation_pending(rotation: tuple[Path, Path]) -> None:
    key_path, cert_dir = rotation
    assert keyfiles.finish_rotation(str(key_path), str(cert_dir)) is None


def test_the_new_key_goes_in_place_when_its_certificate_is_installed(
    rotation: tuple[Path, Path],
) -> None:
    key_path, cert_dir = rotation
    old = key_path.read_bytes()
    new = keys.write_key(keyfiles.pending_key(str(key_path)), "rsa2048")
    install_certificate_for(cert_dir, new)
    done = keyfiles.finish_rotation(str(key_path), str(cert_dir), NOW)
    kept = f"{key_path}.old-20250601T120000Z"
    assert done == keyfiles.Rotation(promoted=True, key_type="rsa2048", old=kept)
    assert keys.spki_sha256(keys.load_key(str(key_path))) == digest(new)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o400
    assert Path(kept).read_bytes() == old
    assert sorted(os.listdir(key_path.parent)) == [
        "privkey.pem", "privkey.pem.old-20250601T120000Z"
    ]
    # A second rotation in the same second keeps both old keys.
    newer = keys.write_key(keyfiles.pending_key(str(key_path)), "ecdsa256")
    install_certificate_for(cert_dir, newer)
    done = keyfiles.finish_rotation(str(key_path), str(cert_dir), NOW)
    assert done is not None and done.old == kept + "-1"
    assert Path(kept + "-1").read_bytes() != old


def test_a_new_key_without_its_certificate_is_removed(rotation: tuple[Path, Path]) -> None:
    """The run failed before the certificate was installed: the old key and
    certificate still belong together, and the unused key goes."""
    key_path, cert_dir = rotation
    old = key_path.read_bytes()
    install_certificate_for(cert_dir, keys.load_key(str(key_path)))
    keys.write_key(keyfiles.pending_key(str(key_path)), "rsa2048")
    assert keyfiles.finish_rotation(str(key_path), str(cert_dir)) == keyfiles.Rotation(
        promoted=False
    )
    assert key_path.read_bytes() == old
    assert sorted(os.listdir(key_path.parent)) == ["privkey.pem"]
    # No certificate at all, or an unreadable one: the same.
    for content in (None, b"garbage"):
        (cert_dir / "cert.pem").unlink(missing_ok=True)
        if content is not None:
            (cert_dir / "cert.pem").write_bytes(content)
        keys.write_key(keyfiles.pending_key(str(key_path)), "rsa2048")
        assert keyfiles.finish_rotation(str(key_path), str(cert_dir)) == keyfiles.Rotation(
            promoted=False
        )
        assert key_path.read_bytes() == old


def test_a_rotation_without_an_old_key(tmp_path: Path) -> None:
    key_path = tmp_path / "privkey.pem"
    new = keys.write_key(keyfiles.pending_key(str(key_path)), "ecdsa384")
    install_certificate_for(tmp_path, new)
    done = keyfiles.finish_rotation(str(key_path), str(tmp_path))
    assert done == keyfiles.Rotation(promoted=True, key_type="ecdsa384", old=None)
    assert digest(keys.load_key(str(key_path))) == digest(new)


def test_the_old_key_moves_aside_without_hard_links(
    rotation: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    def no_links(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    key_path, cert_dir = rotation
    old = key_path.read_bytes()
    new = keys.write_key(keyfiles.pending_key(str(key_path)), "ecdsa256")
    install_certificate_for(cert_dir, new)
    monkeypatch.setattr(os, "link", no_links)
    done = keyfiles.finish_rotation(str(key_path), str(cert_dir), NOW)
    assert done is not None and done.old is not None
    assert Path(done.old).read_bytes() == old
    assert digest(keys.load_key(str(key_path))) == digest(new)


# --- keyproc: what it does at its start ---------------------------------------------------


class Lines(Logger):
    def __init__(self) -> None:
        super().__init__("keyproc", 1)
        self.lines: list[str] = []

    def _write(self, message: str) -> None:
        self.lines.append(message)


def keyproc_settings(key_path: Path, **changes: object) -> KeyprocSettings:
    return KeyprocSettings(key_path=str(key_path), names=NAMES, **changes)  # type: ignore[arg-type]


def test_keyproc_refuses_a_key_of_another_type(tmp_path: Path) -> None:
    path = write_pem(tmp_path / "privkey.pem", keys.generate_key("ecdsa256"))
    settings = keyproc_settings(path, key_type="rsa2048", require_key_type=True)
    with pytest.raises(KeyFileError) as info:
        keyproc.open_key(settings, Lines())
    assert str(info.value) == keyfiles.key_type_mismatch("domain key", str(path), "ecdsa256",
                                                         "rsa2048")  # fmt: skip
    # Not given: the key is what it is.
    keyproc.open_key(keyproc_settings(path, key_type="rsa2048"), Lines())
    keyproc.open_key(keyproc_settings(path, key_type="ecdsa256", require_key_type=True), Lines())


def test_keyproc_records_a_compromised_key_and_then_refuses_it(tmp_path: Path) -> None:
    key = keys.generate_key("ecdsa256")
    path = write_pem(tmp_path / "privkey.pem", key)
    log = Lines()
    revoking = keyproc_settings(path, operation="revoke", key_compromised=True)
    keyproc.open_key(revoking, log)
    assert keyfiles.read_compromised(str(path)) == {digest(key)}
    assert log.lines == [
        f"domain key {path} recorded as compromised in {tmp_path}/compromised-keys: it is "
        "never used again (--rotate-domain-key makes a new one)"
    ]
    # A revocation may be repeated (the first may have failed at the CA) ...
    keyproc.open_key(revoking, Lines())
    keyproc.open_key(keyproc_settings(path, operation="revoke"), Lines())
    # ... but no certificate is issued for the key again.
    with pytest.raises(KeyFileError) as info:
        keyproc.open_key(keyproc_settings(path), Lines())
    assert str(info.value) == (
        f"domain key {path} was revoked for keyCompromise (listed in "
        f"{tmp_path}/compromised-keys): give --rotate-domain-key to make a new key"
    )


def test_an_issue_run_never_records(tmp_path: Path) -> None:
    path = write_pem(tmp_path / "privkey.pem", keys.generate_key("ecdsa256"))
    keyproc.open_key(keyproc_settings(path), Lines())
    keyproc.open_key(keyproc_settings(path, operation="revoke"), Lines())
    assert sorted(os.listdir(tmp_path)) == ["privkey.pem"]
    with pytest.raises(InputError, match="key_compromised goes with a revoke run only"):
        keyproc_settings(path, key_compromised=True)
    with pytest.raises(InputError, match="rotate goes with an issue run only"):
        keyproc_settings(path, operation="revoke", rotate=True)


def test_keyproc_rotating_writes_the_new_key_beside_the_old(tmp_path: Path) -> None:
    old_key = keys.generate_key("ecdsa256")
    path = write_pem(tmp_path / "privkey.pem", old_key)
    keyfiles.record_compromised(str(path), digest(old_key))
    before = path.read_bytes()
    key = keyproc.open_key(keyproc_settings(path, key_type="rsa2048", rotate=True), Lines())
    assert keys.key_type_of(key) == "rsa2048"
    pending = Path(keyfiles.pending_key(str(path)))
    assert digest(keys.load_key(str(pending))) == digest(key)
    assert stat.S_IMODE(pending.stat().st_mode) == 0o400
    assert path.read_bytes() == before  # the live key is untouched
    # Whatever the old key is, even unusable: it is being replaced.
    path.chmod(0o600)
    path.write_bytes(b"garbage")
    keyproc.open_key(keyproc_settings(path, rotate=True), Lines())


def test_keyproc_rotating_without_a_key(tmp_path: Path) -> None:
    path = tmp_path / "privkey.pem"
    with pytest.raises(KeyFileMissing, match="use -N to create it"):
        keyproc.open_key(keyproc_settings(path, rotate=True), Lines())
    assert not Path(keyfiles.pending_key(str(path))).exists()
    keyproc.open_key(keyproc_settings(path, rotate=True, create=True), Lines())
    assert Path(keyfiles.pending_key(str(path))).exists() and not path.exists()


# --- the roles refuse at their start (containers: no preflight there) ---------------------


@pytest.fixture
def run_dir() -> Iterator[str]:
    path = Supervisor(settings={}).make_run_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def settings_for(base: Path, *extra: str) -> dict[str, RoleSettings]:
    anchors = base / "anchors.pem"
    anchors.write_bytes(pem(make_pki().root))
    args = options.build_parser().parse_args([
        "--server", "https://ca.test/dir", "--trust-anchors", str(anchors),
        "-C", str(base / "challenge"), "-c", str(base / "certs"),
        "-f", str(base / "account" / "privkey.pem"), "-k", str(base / "domain" / "privkey.pem"),
        *extra, *NAMES,
    ])  # fmt: skip
    return options.role_settings(args)


def refused_at_start(role: str, settings: RoleSettings, run_dir: str) -> str:
    """The role exits 1 with one line, before it serves anything."""
    process = launch.start_role(role, launch.role_document(role, run_dir, settings))
    assert process.stderr is not None and process.stdout is not None
    try:
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = process.stderr.read()
    process.stderr.close()
    process.stdout.close()
    assert process.returncode == 1, stderr
    lines = stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert not any(name == "sock" for _d, _s, files in os.walk(run_dir) for name in files)
    return lines[0]


@pytest.mark.parametrize(
    ("role", "key_name", "words"),
    [
        ("keyproc", "domain", "give --rotate-domain-key"),
        ("acctproc", "account", "give --account-key-type ecdsa256 to keep it"),
    ],
)
def test_a_role_refuses_a_key_of_another_type(
    tmp_path: Path, run_dir: str, role: str, key_name: str, words: str
) -> None:
    path = write_pem(tmp_path / key_name / "privkey.pem", keys.generate_key("ecdsa256"))
    before = path.read_bytes()
    line = refused_at_start(role, settings_for(tmp_path, "--key-type", "ecdsa384")[role],
                            run_dir)  # fmt: skip
    assert line.startswith(f"letskencrypt: {role}: {key_name} key {path} is ecdsa256, "
                           "not ecdsa384")  # fmt: skip
    assert words in line
    assert path.read_bytes() == before


def test_keyproc_refuses_a_compromised_key_at_its_start(tmp_path: Path, run_dir: str) -> None:
    key = keys.generate_key("ecdsa256")
    path = write_pem(tmp_path / "domain" / "privkey.pem", key)
    keyfiles.record_compromised(str(path), digest(key))
    line = refused_at_start("keyproc", settings_for(tmp_path)["keyproc"], run_dir)
    assert line == f"letskencrypt: keyproc: {keyfiles.compromised_message(str(path))}"


def test_the_command_line_says_what_each_role_checks(tmp_path: Path) -> None:
    plain = settings_for(tmp_path)
    assert plain["keyproc"].require_key_type is False  # type: ignore[attr-defined]
    assert plain["keyproc"].key_type == "ecdsa256"  # type: ignore[attr-defined]
    typed = settings_for(tmp_path, "--key-type", "rsa3072")
    assert typed["keyproc"].require_key_type and typed["acctproc"].require_key_type  # type: ignore[attr-defined]
    assert typed["keyproc"].key_type == typed["acctproc"].key_type == "rsa3072"  # type: ignore[attr-defined]
    rotating = settings_for(tmp_path, "--rotate-domain-key", "--key-type", "rsa3072")
    assert rotating["keyproc"].rotate  # type: ignore[attr-defined]
    # Rotating the domain key to another type: the account key is not held to it.
    assert not rotating["acctproc"].require_key_type  # type: ignore[attr-defined]
    assert rotating["revokeproc"].force  # type: ignore[attr-defined]
    # Its own type, given: held to that, in any run.
    for extra in ([], ["--rotate-domain-key"], ["--key-type", "rsa3072"]):
        own = settings_for(tmp_path, "--account-key-type", "ecdsa384", *extra)
        assert own["acctproc"].require_key_type  # type: ignore[attr-defined]
        assert own["acctproc"].key_type == "ecdsa384"  # type: ignore[attr-defined]
        assert own["keyproc"].require_key_type == ("--key-type" in extra)  # type: ignore[attr-defined]
    compromised = settings_for(tmp_path, "-r", "--revoke-reason", "keyCompromise")
    assert compromised["keyproc"].key_compromised  # type: ignore[attr-defined]
    assert compromised["keyproc"].operation == "revoke"  # type: ignore[attr-defined]
    for reason in ("superseded", "unspecified"):
        other = settings_for(tmp_path, "-r", "--revoke-reason", reason)
        assert not other["keyproc"].key_compromised  # type: ignore[attr-defined]
    for extra, words in ((["-r"], "does not go with -r"),
                         (["--daemon"], "does not go with --daemon")):  # fmt: skip
        with pytest.raises(InputError, match=words):
            settings_for(tmp_path, "--rotate-domain-key", *extra)


def test_the_probe_reply_holds_nothing_of_the_key(tmp_path: Path) -> None:
    key = keys.generate_key("ecdsa256")
    path = write_pem(tmp_path / "k.pem", key)
    facts = keyfiles.probe(str(path), "domain key", "-N")
    secret = key.private_numbers().private_value.to_bytes(32, "big")
    assert secret.hex() not in repr(facts)
    assert hashlib.sha256(keys.public_key_der(key)).hexdigest() == facts.spki_sha256


def test_a_child_that_hangs_or_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setattr(keyfiles, "PROBE_TIMEOUT", 0.5)
    started = time.monotonic()
    with pytest.raises(KeyFileError, match=r"^thing /x: cannot be read$"):
        keyfiles.in_child(lambda: time.sleep(60) or {}, "thing /x")  # type: ignore[func-returns-value]
    assert time.monotonic() - started < 10

    def fails() -> dict[str, object]:
        raise RuntimeError("boom")

    assert keyfiles.in_child(fails, "thing /x") == {"error": "thing /x: cannot be read"}
    assert keyfiles.in_child(lambda: {"a": 1}, "thing /x") == {"a": 1}
