import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from letskencrypt import filestore, process
from letskencrypt.errors import FileStoreError, InputError
from letskencrypt.filestore import CERT_FILES, CertDir

from tests.certfactory import make_pki, pem

SET_ID = filestore._SET_ID_RE
HELD_BY_US = rf"another run holds its lock \(pid {os.getpid()}, "


@pytest.fixture(scope="module")
def sets():
    """Four distinct (cert.pem, chain.pem) pairs."""
    pki = make_pki()
    return [(pem(pki.leaf([f"n{i}.example"])), pem(pki.intermediate)) for i in range(4)]


def trio(pair):
    cert, chain = pair
    return (cert, chain, cert + chain)


def read_trio(certdir: Path):
    """What a reader such as nginx sees, following the symlinks."""
    result = []
    for name in CERT_FILES:
        try:
            result.append((certdir / name).read_bytes())
        except FileNotFoundError:
            result.append(None)
    return tuple(result)


def set_dirs(certdir: Path):
    sets_dir = certdir / ".sets"
    return sorted(os.listdir(sets_dir)) if sets_dir.exists() else []


def install(certdir: Path, pair, backup=False):
    with CertDir(str(certdir)) as directory:
        return directory.install(*pair, backup=backup)


def remove_set(certdir: Path, backup=False):
    with CertDir(str(certdir)) as directory:
        directory.remove_set(backup=backup)


def tidy(certdir: Path, backup=True):
    """What fileproc does when it starts: clean up after a crash."""
    with CertDir(str(certdir)) as directory:
        directory.tidy(backup)


def read_current(certdir: Path):
    """The current cert.pem as a reader (revokeproc) sees it, or None."""
    try:
        return (certdir / "cert.pem").read_bytes()
    except FileNotFoundError:
        return None


def assert_clean_layout(certdir: Path):
    for name in CERT_FILES:
        assert os.readlink(certdir / name) == f".live/{name}"
    live = os.readlink(certdir / ".live")
    assert live.startswith(".sets/") and SET_ID.fullmatch(live[6:])
    for name in set_dirs(certdir):
        assert SET_ID.fullmatch(name), name
    assert not [n for n in os.listdir(certdir) if ".tmp-" in n]


# --- install ---------------------------------------------------------------


def test_install_layout_and_modes(tmp_path, sets):
    old = os.umask(0o077)
    try:
        set_id = install(tmp_path, sets[0])
    finally:
        os.umask(old)
    assert read_trio(tmp_path) == trio(sets[0])
    assert_clean_layout(tmp_path)
    assert os.readlink(tmp_path / ".live") == f".sets/{set_id}"
    assert set_dirs(tmp_path) == [set_id]
    set_dir = tmp_path / ".sets" / set_id
    assert sorted(os.listdir(set_dir)) == sorted(CERT_FILES)
    assert stat.S_IMODE(os.stat(set_dir).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(tmp_path / ".sets").st_mode) == 0o755
    for name in CERT_FILES:
        st = os.lstat(set_dir / name)
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o444
    assert read_current(tmp_path) == sets[0][0]


def test_reinstall_replaces_and_removes_previous(tmp_path, sets):
    install(tmp_path, sets[0])
    second = install(tmp_path, sets[1])
    assert read_trio(tmp_path) == trio(sets[1])
    assert set_dirs(tmp_path) == [second]
    assert_clean_layout(tmp_path)


def test_backup_keeps_previous_and_prunes_to_five(tmp_path, sets):
    ids = [install(tmp_path, sets[i % 4], backup=True) for i in range(8)]
    assert read_trio(tmp_path) == trio(sets[7 % 4])
    assert set_dirs(tmp_path) == sorted(ids[-6:])  # live set + 5 backups
    # Without -b only the live set is kept.
    latest = install(tmp_path, sets[0])
    assert set_dirs(tmp_path) == [latest]


def test_empty_chain(tmp_path, sets):
    cert = sets[0][0]
    install(tmp_path, (cert, b""))
    assert read_trio(tmp_path) == (cert, b"", cert)
    first = set_dirs(tmp_path)
    install(tmp_path, sets[1], backup=True)
    # The empty chain.pem does not make the backup look incomplete to recover.
    tidy(tmp_path)
    assert set(first) < set(set_dirs(tmp_path))


def test_cert_without_final_newline(tmp_path, sets):
    cert, chain = sets[0]
    install(tmp_path, (cert.rstrip(b"\n"), chain))
    assert read_trio(tmp_path)[2] == cert + chain


@pytest.mark.parametrize(
    ("cert", "chain", "reason"),
    [
        (b"", b"", "cert.pem rejected: empty"),
        (b"garbage", b"", "cert.pem rejected: not a PEM certificate"),
        (None, b"garbage", "chain.pem rejected: not a PEM certificate"),
        ("big", b"", "cert.pem rejected: larger than 131072 bytes"),
        (None, b"-----BEGIN CERTIFICATE-----\n", "chain.pem rejected: certificate 0"),
        ("two", b"", "exactly one certificate"),
    ],
)
def test_install_rejects_bad_input(tmp_path, sets, cert, chain, reason):
    if cert is None:
        cert = sets[0][0]
    elif cert == "big":
        cert = sets[0][0] + b"\n" * (128 * 1024)
    elif cert == "two":
        cert = sets[0][0] + sets[1][0]
    with pytest.raises(InputError, match=reason):
        install(tmp_path, (cert, chain))
    assert [n for n in os.listdir(tmp_path) if n != filestore.GENERATION] == []


def test_missing_directory(tmp_path):
    with pytest.raises(FileStoreError, match=f"certificate directory {tmp_path}/x: no such"):
        CertDir(str(tmp_path / "x"))
    CertDir(str(tmp_path / "x"), create=True).close()
    assert (tmp_path / "x").is_dir()


def test_concurrent_writer_is_refused(tmp_path, sets):
    with CertDir(str(tmp_path)) as first, CertDir(str(tmp_path)) as second:
        with first._locked(), pytest.raises(FileStoreError, match=HELD_BY_US):
            second.install(*sets[0])
        second.install(*sets[0])
    assert read_trio(tmp_path) == trio(sets[0])


def test_directory_is_used_through_its_descriptor(tmp_path, sets):
    # fileproc opens the directory, then may lose access to the path.
    original = tmp_path / "certs"
    original.mkdir()
    directory = CertDir(str(original))
    original.rename(tmp_path / "moved")
    directory.install(*sets[0])
    directory.close()
    assert read_trio(tmp_path / "moved") == trio(sets[0])


# --- one run at a time ----------------------------------------------------------

# A process that holds the lock as another run's fileproc would, until killed.
HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[Callable[[float], subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(seconds: float) -> subprocess.Popen[str]:
        child = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(tmp_path), str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None and child.stdout.readline() == "locked\n"
        started.append(child)
        return child

    yield start
    for child in started:
        child.kill()
        child.wait()


def test_lock_waits_then_refuses_naming_the_holder(tmp_path, holder):
    child = holder(60)
    with CertDir(str(tmp_path)) as directory:
        started = time.monotonic()
        with pytest.raises(FileStoreError) as refused:
            directory.lock(wait=0.5)
        assert time.monotonic() - started >= 0.5
        assert not directory.locked
    name = Path(f"/proc/{child.pid}/comm").read_text().strip()
    assert str(refused.value) == (
        f"certificate directory {tmp_path}: another run holds its lock "
        f"(pid {child.pid}, {name}); gave up after 0.5 s"
    )


def test_lock_is_taken_once_the_holder_is_done(tmp_path, holder):
    holder(0.3)
    with CertDir(str(tmp_path)) as directory:
        directory.lock(wait=10)
        assert directory.locked
        assert filestore.lock_holder(directory.fd) == f"pid {os.getpid()}, " + Path(
            "/proc/self/comm"
        ).read_text().strip()


def test_the_run_lock_is_held_until_close(tmp_path, sets):
    run = CertDir(str(tmp_path))
    run.lock(wait=0)
    run.tidy(backup=False)
    run.install(*sets[0])
    # Its own changes leave the run's lock in place: another writer still waits.
    with CertDir(str(tmp_path)) as other:
        with pytest.raises(FileStoreError, match=HELD_BY_US):
            other.install(*sets[1])
        with pytest.raises(FileStoreError, match=HELD_BY_US + r".*gave up after 0\.2 s"):
            other.lock(wait=0.2)
    run.close()
    install(tmp_path, sets[1])
    assert read_trio(tmp_path) == trio(sets[1])


def test_lock_holder_of_an_unlocked_directory(tmp_path):
    with CertDir(str(tmp_path)) as directory:
        assert filestore.lock_holder(directory.fd) is None


# --- .sets only while it is needed, and kept sets ------------------------------------


def listing(path: Path) -> dict[str, tuple[int, bytes | str | None]]:
    """Every entry below `path`, not following links: mode, and content or target."""
    found: dict[str, tuple[int, bytes | str | None]] = {}
    for entry in sorted(path.rglob("*")):
        info = entry.lstat()
        if stat.S_ISLNK(info.st_mode):
            content: bytes | str | None = os.readlink(entry)
        elif stat.S_ISREG(info.st_mode):
            content = entry.read_bytes()
        else:
            content = None
        found[str(entry.relative_to(path))] = (info.st_mode, content)
    return found


def prepared(certdir: Path, backup: bool = False) -> CertDir:
    """What fileproc does when an issue run starts."""
    directory = CertDir(str(certdir))
    directory.lock(wait=0)
    directory.tidy(backup)
    directory.prepare_install()
    return directory


@pytest.mark.parametrize("before", ["empty", "installed"])
def test_a_run_that_installs_nothing_leaves_no_trace(tmp_path, sets, before):
    if before == "installed":
        install(tmp_path, sets[0])
    was = listing(tmp_path)
    directory = prepared(tmp_path)
    assert (tmp_path / ".sets").is_dir()
    directory.close()
    assert listing(tmp_path) == was


def test_an_empty_sets_directory_that_was_there_stays(tmp_path):
    (tmp_path / ".sets").mkdir()
    prepared(tmp_path).close()
    assert os.listdir(tmp_path) == [".sets"]


def test_sets_made_at_start_stays_with_what_was_installed(tmp_path, sets):
    directory = prepared(tmp_path)
    directory.install(*sets[0])
    directory.close()
    assert read_trio(tmp_path) == trio(sets[0])
    assert_clean_layout(tmp_path)


def pending(certdir: Path) -> tuple[str, bytes] | None:
    fd = os.open(certdir, os.O_PATH | os.O_DIRECTORY)
    try:
        return filestore.read_pending(fd, str(certdir))
    finally:
        os.close(fd)


def without_capabilities(action: Callable[[], object]) -> str:
    """Run `action` in a child without capabilities (as fileproc runs, even as
    root, so that a read-only directory is read-only to it); its error or "ok"."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_end)
        try:
            process.drop_capabilities()
            action()
            message = "ok"
        except BaseException as error:
            message = str(error)
        os.write(write_end, message.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        message = reader.read().decode()
    os.waitpid(pid, 0)
    return message


@pytest.mark.parametrize("before", ["empty", "installed"])
def test_a_read_only_directory_keeps_the_new_set(tmp_path, sets, before):
    certdir = tmp_path / "certs"
    certdir.mkdir()
    if before == "installed":
        install(certdir, sets[0])
    directory = prepared(certdir)
    certdir.chmod(0o555)
    try:
        error = without_capabilities(lambda: directory.install(*sets[1]))
    finally:
        certdir.chmod(0o755)
        directory.close()
    found = pending(certdir)
    assert found is not None
    set_id, fullchain = found
    # The first entry it would make: a stable name, or .live if those exist.
    first = "cert.pem" if before == "empty" else ".live"
    assert error == (
        f"certificate directory {certdir}: Permission denied: {first}; "
        f"kept the new certificate in .sets/{set_id}: the next run installs it"
    )
    assert fullchain == trio(sets[1])[2]
    # What readers see has not changed.
    old = (None, None, None) if before == "empty" else trio(sets[0])
    assert read_trio(certdir) == old
    # The next run's tidy keeps it; installing it (again) supersedes it.
    directory = prepared(certdir)
    assert pending(certdir) == found
    directory.install(*sets[1])
    directory.close()
    assert read_trio(certdir) == trio(sets[1])
    assert set_dirs(certdir) == [os.readlink(certdir / ".live").removeprefix(".sets/")]
    assert pending(certdir) is None


def kept_set(certdir: Path, pair) -> str:
    """Install `pair` with a directory planted at chain.pem: the set is kept."""
    chain = certdir / "chain.pem"
    link = os.readlink(chain) if chain.is_symlink() else None
    if link is not None:
        chain.unlink()
    chain.mkdir()
    try:
        with pytest.raises(FileStoreError, match=r"kept the new certificate in \.sets/") as info:
            install(certdir, pair)
    finally:
        chain.rmdir()
        if link is not None:
            chain.symlink_to(link)
    return str(info.value).rsplit(".sets/", 1)[1].split(":")[0]


@pytest.mark.parametrize("backup", [False, True])
def test_tidy_keeps_the_newest_pending_set(tmp_path, sets, backup):
    live = install(tmp_path, sets[0])
    older = kept_set(tmp_path, sets[1])
    newer = kept_set(tmp_path, sets[2])
    assert pending(tmp_path) == (newer, trio(sets[2])[2])
    tidy(tmp_path, backup=backup)
    assert pending(tmp_path) == (newer, trio(sets[2])[2])
    expected = {live, older, newer} if backup else {live, newer}
    assert set(set_dirs(tmp_path)) == expected
    assert read_trio(tmp_path) == trio(sets[0])


def test_tidy_without_a_live_set_keeps_the_newest_pending_set(tmp_path, sets):
    older = kept_set(tmp_path, sets[1])
    newer = kept_set(tmp_path, sets[2])
    assert {older, newer} == set(set_dirs(tmp_path))
    tidy(tmp_path, backup=False)
    assert set_dirs(tmp_path) == [newer]
    assert pending(tmp_path) == (newer, trio(sets[2])[2])


def test_what_is_not_pending(tmp_path, sets):
    assert pending(tmp_path) is None  # no .sets
    first = install(tmp_path, sets[0], backup=True)
    install(tmp_path, sets[1], backup=True)
    # A backup is older than the live set; a legacy set is no install's.
    assert first in set_dirs(tmp_path)
    (tmp_path / ".sets" / "legacy-29991231T235959.999999Z-abcd").mkdir()
    assert pending(tmp_path) is None
    # A complete set that never went live, as a crash before the switch leaves it.
    crashed = tmp_path / ".sets" / "29991231T235959.999999Z-beef"
    crashed.mkdir()
    for name, data in zip(CERT_FILES, trio(sets[2]), strict=True):
        (crashed / name).write_bytes(data)
    assert pending(tmp_path) is None
    # Nor an incomplete kept set, which tidy removes.
    half = tmp_path / ".sets" / "kept-29991231T235959.999999Z-cafe"
    half.mkdir()
    (half / "cert.pem").write_bytes(sets[2][0])
    assert pending(tmp_path) is None
    # With .live gone (by hand), the sets left are still not pending.
    (tmp_path / ".live").unlink()
    assert pending(tmp_path) is None


@pytest.mark.parametrize("backup", [False, True])
def test_a_removal_supersedes_kept_sets(tmp_path, sets, backup):
    first = install(tmp_path, sets[0], backup=True)
    install(tmp_path, sets[1], backup=True)
    kept = kept_set(tmp_path, sets[2])
    remove_set(tmp_path, backup=backup)
    assert pending(tmp_path) is None
    assert kept not in set_dirs(tmp_path)
    assert set_dirs(tmp_path) == ([first] if backup else [])


def test_a_pending_set_is_superseded_by_the_next_install(tmp_path, sets):
    install(tmp_path, sets[0])
    kept = kept_set(tmp_path, sets[1])
    latest = install(tmp_path, sets[2])
    assert set_dirs(tmp_path) == [latest]
    assert kept != latest and pending(tmp_path) is None


def test_read_pending_refuses_an_oversized_fullchain(tmp_path, sets):
    kept = kept_set(tmp_path, sets[1])
    fullchain = tmp_path / ".sets" / kept / "fullchain.pem"
    fullchain.chmod(0o644)
    fullchain.write_bytes(b"x" * (filestore.MAX_CHAIN_BYTES + 1))
    with pytest.raises(FileStoreError, match=rf"kept certificate set {tmp_path}/.sets/{kept}: "
                       r"fullchain\.pem is larger than 262144 bytes"):
        pending(tmp_path)


# --- legacy migration --------------------------------------------------------


def test_legacy_regular_files_are_migrated(tmp_path, sets):
    legacy = trio(sets[0])
    for name, data in zip(CERT_FILES, legacy, strict=True):
        (tmp_path / name).write_bytes(data)
    assert read_current(tmp_path) == legacy[0]
    install(tmp_path, sets[1])
    assert read_trio(tmp_path) == trio(sets[1])
    assert_clean_layout(tmp_path)
    [legacy_id] = [n for n in set_dirs(tmp_path) if n.startswith("legacy-")]
    backup = tmp_path / ".sets" / legacy_id
    assert tuple((backup / n).read_bytes() for n in CERT_FILES) == legacy
    # Later installs without -b keep the one-time legacy backup.
    install(tmp_path, sets[2])
    assert legacy_id in set_dirs(tmp_path)
    assert len(set_dirs(tmp_path)) == 2


def test_partial_legacy(tmp_path, sets):
    (tmp_path / "cert.pem").write_bytes(sets[0][0])
    install(tmp_path, sets[1])
    assert read_trio(tmp_path) == trio(sets[1])
    [legacy_id] = [n for n in set_dirs(tmp_path) if n.startswith("legacy-")]
    assert os.listdir(tmp_path / ".sets" / legacy_id) == ["cert.pem"]
    tidy(tmp_path)  # an incomplete legacy set is still kept
    assert legacy_id in set_dirs(tmp_path)


def test_regular_file_next_to_live_set(tmp_path, sets):
    install(tmp_path, sets[0])
    (tmp_path / "chain.pem").unlink()
    (tmp_path / "chain.pem").write_bytes(b"someone else's")
    install(tmp_path, sets[1])
    assert read_trio(tmp_path) == trio(sets[1])
    [legacy_id] = [n for n in set_dirs(tmp_path) if n.startswith("legacy-")]
    assert (tmp_path / ".sets" / legacy_id / "chain.pem").read_bytes() == b"someone else's"


# --- removal ---------------------------------------------------------------


def test_remove_set_keeping_backups(tmp_path, sets):
    first = install(tmp_path, sets[0], backup=True)
    second = install(tmp_path, sets[1], backup=True)
    with CertDir(str(tmp_path)) as directory:
        directory.remove_set(backup=True)
    assert read_trio(tmp_path) == (None, None, None)
    assert not any(os.path.lexists(tmp_path / n) for n in (*CERT_FILES, ".live"))
    assert set_dirs(tmp_path) == [first]
    assert second not in set_dirs(tmp_path)
    assert read_current(tmp_path) is None
    install(tmp_path, sets[2])
    assert read_trio(tmp_path) == trio(sets[2])


def test_remove_set_without_backups(tmp_path, sets):
    install(tmp_path, sets[0], backup=True)
    install(tmp_path, sets[1], backup=True)
    remove_set(tmp_path)
    assert [n for n in os.listdir(tmp_path) if n != filestore.GENERATION] == []


def test_remove_set_on_empty_and_legacy_directories(tmp_path, sets):
    remove_set(tmp_path)
    assert [n for n in os.listdir(tmp_path) if n != filestore.GENERATION] == []
    (tmp_path / "cert.pem").write_bytes(sets[0][0])
    (tmp_path / "other.txt").write_bytes(b"not ours")
    remove_set(tmp_path)
    assert os.listdir(tmp_path) == ["other.txt"]


# --- recovery --------------------------------------------------------------


def test_tidy_removes_leftovers_only(tmp_path, sets):
    keep = install(tmp_path, sets[0], backup=True)
    live = install(tmp_path, sets[1], backup=True)
    sets_dir = tmp_path / ".sets"
    (sets_dir / ".tmp-20260101T000000.000000Z-abcd").mkdir()
    (sets_dir / ".tmp-20260101T000000.000000Z-abcd" / "cert.pem").write_bytes(b"x")
    half = sets_dir / "20260101T000000.000000Z-beef"
    half.mkdir()
    (half / "cert.pem").write_bytes(b"x")
    (sets_dir / "not-ours").mkdir()
    (tmp_path / ".live.tmp-0123abcd").symlink_to(".sets/x")
    (tmp_path / ".cert.pem.tmp-0123abcd").symlink_to(".live/cert.pem")
    (tmp_path / ".chain.pem.tmp-0123abcd").write_bytes(b"a regular file is not ours")
    tidy(tmp_path)
    assert set_dirs(tmp_path) == sorted([keep, live, "not-ours"])
    assert sorted(n for n in os.listdir(tmp_path) if ".tmp-" in n) == [".chain.pem.tmp-0123abcd"]
    assert read_trio(tmp_path) == trio(sets[1])


def test_read_current(tmp_path, sets):
    assert read_current(tmp_path) is None
    install(tmp_path, sets[0])
    assert read_current(tmp_path) == sets[0][0]


# --- hostile directory contents ------------------------------------------------


@pytest.fixture
def outside(tmp_path):
    path = tmp_path / "outside"
    path.mkdir()
    (path / "victim").write_bytes(b"victim")
    return path


def snapshot(path: Path):
    return {
        str(p.relative_to(path)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(path.rglob("*"))
    }


def test_hostile_sets_symlink(tmp_path, outside, sets):
    certdir = tmp_path / "certs"
    certdir.mkdir()
    (certdir / ".sets").symlink_to(outside)
    before = snapshot(outside)
    with pytest.raises(FileStoreError, match=r"\.sets is not a directory"):
        install(certdir, sets[0])
    assert snapshot(outside) == before


def test_hostile_stable_symlink_is_replaced_not_followed(tmp_path, outside, sets):
    certdir = tmp_path / "certs"
    certdir.mkdir()
    (certdir / "cert.pem").symlink_to(outside / "victim")
    (certdir / "fullchain.pem").symlink_to(outside / "new-file")
    install(certdir, sets[0])
    assert (outside / "victim").read_bytes() == b"victim"
    assert not (outside / "new-file").exists()
    assert read_trio(certdir) == trio(sets[0])


def test_hostile_live_symlink(tmp_path, outside, sets):
    certdir = tmp_path / "certs"
    certdir.mkdir()
    for name in CERT_FILES:
        (outside / name).write_bytes(b"outside " + name.encode())
    (certdir / ".live").symlink_to(outside)
    before = snapshot(outside)
    install(certdir, sets[0])
    install(certdir, sets[1])
    remove_set(certdir)
    assert snapshot(outside) == before


def test_hostile_entries_in_sets(tmp_path, outside, sets):
    certdir = tmp_path / "certs"
    certdir.mkdir()
    install(certdir, sets[0])
    sets_dir = certdir / ".sets"
    # A set whose files point outside, and a "set" that is a symlink to outside.
    fake = sets_dir / "20200101T000000.000000Z-0000"
    fake.mkdir()
    for name in CERT_FILES:
        (fake / name).symlink_to(outside / "victim")
    (sets_dir / "20200101T000000.000000Z-1111").symlink_to(outside)
    (certdir / ".live.tmp-deadbeef").symlink_to(outside)
    before = snapshot(outside)
    install(certdir, sets[1], backup=True)
    remove_set(certdir)
    assert snapshot(outside) == before
    assert not sets_dir.exists()


def test_directory_at_stable_name_is_refused(tmp_path, sets):
    (tmp_path / "chain.pem").mkdir()
    with pytest.raises(FileStoreError, match=r"chain\.pem is neither a file nor a symlink"):
        install(tmp_path, sets[0])
    # Refused, but the new set is kept for the next run (see the kept-set tests).
    assert sorted(os.listdir(tmp_path)) == [".sets", "chain.pem"]


def test_live_directory_is_refused(tmp_path, sets):
    (tmp_path / ".live").mkdir()
    with pytest.raises(FileStoreError, match=r"\.live exists and is not a symlink"):
        install(tmp_path, sets[0])


# --- crash consistency -------------------------------------------------------

# Every os function install (or remove_set) uses to change the disk.
CRASH_POINTS = ("open", "write", "fchmod", "fsync", "mkdir", "rename", "symlink", "unlink", "rmdir")


def _die_at(n: int, action) -> bool:
    """Run `action` in a child that SIGKILLs itself at its n-th os call; True if it died."""
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            calls = [0]

            def wrap(function):
                def wrapper(*args, **kwargs):
                    calls[0] += 1
                    if calls[0] == n:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return function(*args, **kwargs)

                return wrapper

            for name in CRASH_POINTS:
                setattr(os, name, wrap(getattr(os, name)))
            action()
        except BaseException:
            code = 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.WEXITSTATUS(status) == 0, "the uninterrupted action failed"
    return False


def _describe(seen, old, new) -> str:
    def which(name, got, was, will):
        if got == was:
            return f"{name}=old"
        return f"{name}=new" if got == will else f"{name}=other({got!r:.40})"

    return ", ".join(map(which, CERT_FILES, seen, old, new))


def _crash_everywhere(tmp_path: Path, prepare, action, old, new, after) -> int:
    """Kill `action` at every crash point in turn; check what readers see."""
    for n in range(1, 500):
        certdir = tmp_path / f"run{n}"
        certdir.mkdir()
        prepare(certdir)
        assert read_trio(certdir) == old
        died = _die_at(n, lambda d=certdir: action(d))
        seen = read_trio(certdir)
        assert seen in (old, new), f"crash at os call {n}: {_describe(seen, old, new)}"
        if not died:
            assert seen == new
            return n
        # The next run recovers and succeeds.
        install(certdir, after)
        assert read_trio(certdir) == trio(after)
        assert_clean_layout(certdir)
    pytest.fail("the action never finished")


def _write_legacy(certdir: Path, pair) -> None:
    for name, data in zip(CERT_FILES, trio(pair), strict=True):
        (certdir / name).write_bytes(data)


@pytest.mark.parametrize(
    ("scenario", "backup"),
    [("replace", False), ("replace", True), ("first", False), ("legacy", False)],
)
def test_crash_during_install(tmp_path, sets, scenario, backup):
    def prepare(certdir: Path) -> None:
        if scenario == "replace":
            install(certdir, sets[0], backup=True)
            install(certdir, sets[0], backup=True)
        elif scenario == "legacy":
            _write_legacy(certdir, sets[0])

    old = (None, None, None) if scenario == "first" else trio(sets[0])
    calls = _crash_everywhere(
        tmp_path,
        prepare,
        lambda certdir: filestore.install(str(certdir), *sets[1], backup=backup),
        old,
        trio(sets[1]),
        sets[2],
    )
    assert calls > 20  # the test did reach deep into install


def test_crash_during_remove(tmp_path, sets):
    calls = _crash_everywhere(
        tmp_path,
        lambda certdir: install(certdir, sets[0]),
        lambda certdir: remove_set(certdir),
        trio(sets[0]),
        (None, None, None),
        sets[2],
    )
    assert calls > 5
