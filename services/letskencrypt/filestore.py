"""The certificate directory: cert.pem, chain.pem and fullchain.pem, replaced
together so that a reader (nginx, ...) never sees a mix of two sets.

Layout inside the certificate directory:

    .sets/<id>/{cert.pem,chain.pem,fullchain.pem}   complete sets, mode 0444
    .live -> .sets/<id>                             the current set
    cert.pem -> .live/cert.pem                      stable names for readers
    chain.pem -> .live/chain.pem
    fullchain.pem -> .live/fullchain.pem

A new set is written and fsynced under `.sets/.tmp-<id>`, renamed to
`.sets/<id>`, and then published by renaming a fresh symlink over `.live`: one
atomic rename switches all three files.  A crash at any instant therefore
leaves either the complete old set or the complete new set visible; the
leftovers are removed before every change, and by `tidy` when fileproc starts.

A certificate directory written by an older tool holds regular files at the
stable names.  The first install copies them into `.sets/legacy-<id>/`,
points `.live` there, and only then replaces each regular file with its
symlink, so readers keep seeing the same bytes throughout.  If the directory
already has a `.live` but a regular file at a stable name, that file is
backed up the same way, but its replacement is not atomic with the rest.

Every operation goes through a descriptor of the certificate directory,
with O_NOFOLLOW and fixed names, so a symlink planted in the directory
cannot redirect a write or a removal outside it.

One run at a time: `CertDir.lock` takes flock(LOCK_EX) on the certificate
directory itself, waiting at most LOCK_WAIT seconds for another holder and
then refusing, naming the holder's pid where /proc/locks shows it (not
across pid namespaces, i.e. not from one container to another).  fileproc
takes it when it starts, before it serves, and holds it until it exits, so
nothing of a second run reaches the CA before the first is over (see
roles/fileproc.py); the native supervisor tries it first, to refuse before
any role starts.  The kernel drops the lock with its holder, so a crash
leaves none behind.  Without the run's lock (the path-based `install`, the
tests) each change takes the lock for itself, and refuses at once.

A kept set: when a new set is complete under `.sets/<id>` but cannot be
published (a read-only certificate directory, a directory planted at a
stable name), it is renamed `.sets/kept-<id>` and the error says so.  The
newest kept set newer than the live one (or any, with no live set) is
*pending*: `tidy` keeps it, revokeproc offers it to the next run
(`read_pending`), and the next run installs it, verified again, without a
new order.  Once another set is live, a kept set is retired like any old
set; a removal (revocation) removes kept sets whatever the backup policy.
The mark is explicit so that nothing else comes back: not a backup left
after a revocation or after `.live` was removed by hand, not a set a crash
interrupted before its switch (tidied as before).
fileproc creates `.sets` when an issue run starts (`prepare_install`), so
that a later chmod of the certificate directory (which does not reach into
`.sets`) cannot stop it from keeping a set, and removes it again when it
closes the directory if the run put nothing there: a run that fails leaves
the directory as it found it.
"""

import contextlib
import errno
import fcntl
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable, Collection, Iterator
from datetime import UTC, datetime

from letskencrypt import fsutil
from letskencrypt.errors import CertificateRejected, FileStoreError, InputError
from letskencrypt.fsutil import FileTooLarge, NotRegularFile, make_directories
from letskencrypt.pem import BEGIN, MAX_CHAIN_BYTES, certificate_ders
from letskencrypt.validate import safe_text

CERT = "cert.pem"
CHAIN = "chain.pem"
FULLCHAIN = "fullchain.pem"
CERT_FILES = (CERT, CHAIN, FULLCHAIN)
SETS = ".sets"
# Rewritten after every change of the set: what a web server watches to reload.
GENERATION = ".generation"
LIVE = ".live"
LEGACY_PREFIX = "legacy-"
KEPT_PREFIX = "kept-"
TEMP_PREFIX = ".tmp-"
MAX_BACKUPS = 5
FILE_MODE = 0o444
DIR_MODE = 0o755
MAX_FILE_BYTES = 1024 * 1024
# Each of cert.pem and chain.pem as fileproc is given them.
MAX_CERT_BYTES = 128 * 1024
PEM_BEGIN = BEGIN.encode("ascii")
# How long a run waits for another to release the certificate directory.
LOCK_WAIT = 5.0
LOCK_POLL = 0.1
# Where the kernel lists the locks it holds, and the most of it we read.
PROC_LOCKS = "/proc/locks"
MAX_PROC_LOCKS = 1024 * 1024

_SET_ID_RE = re.compile(r"(?:legacy-|kept-)?\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{4}")
_TEMP_LINK_RE = re.compile(r"\.(?:live|cert\.pem|chain\.pem|fullchain\.pem)\.tmp-[0-9a-f]{8}")
_TEMP_GENERATION_RE = re.compile(r"\.tmp-\.generation-[0-9a-f]{8}")

_SUBDIR_FLAGS = fsutil.DIRECTORY_FLAGS | os.O_NOFOLLOW


# --- small fd-relative helpers ----------------------------------------------


def installed_set(cert_dir: str | None) -> str | None:
    """Which certificate set is live in `cert_dir` (`.sets/<id>`), if any."""
    if cert_dir is None:
        return None
    try:
        return os.readlink(os.path.join(cert_dir, LIVE))
    except OSError:
        return None


class _EntryError(Exception):
    """A problem with one entry; CertDir adds the directory to the message."""


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _readlink(name: str, dir_fd: int) -> str | None:
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # exists but is not a symlink
            return None
        raise


def _open_subdir(name: str, dir_fd: int) -> int:
    """Open a subdirectory, refusing a symlink in its place."""
    return os.open(name, _SUBDIR_FLAGS, dir_fd=dir_fd)


def _read_file(name: str, dir_fd: int, limit: int) -> bytes:
    try:
        return fsutil.read_file(name, limit, dir_fd=dir_fd)
    except NotRegularFile:
        raise _EntryError(f"{name} is not a regular file") from None
    except FileTooLarge:
        raise _EntryError(f"{name} is larger than {limit} bytes") from None


def _write_file(dir_fd: int, name: str, data: bytes) -> None:
    """Write `name` in `dir_fd` as a complete mode-0444 file, via a temp file.

    The directory is not fsynced: the callers do, once for all their files.
    """
    temp = f"{TEMP_PREFIX}{name}-{secrets.token_hex(4)}"
    fsutil.replace(name, data, FILE_MODE, dir_fd=dir_fd, temp_name=temp, sync_directory=False)


def _replace_symlink(dir_fd: int, name: str, target: str) -> None:
    """Atomically make `name` a symlink to `target` (whatever was there before)."""
    temp = f".{name.lstrip('.')}.tmp-{secrets.token_hex(4)}"
    try:
        os.symlink(target, temp, dir_fd=dir_fd)
    except OSError as exc:
        # Named by what it was to become: OSError names the symlink's target.
        raise OSError(exc.errno, exc.strerror, name) from None
    try:
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        os.unlink(temp, dir_fd=dir_fd)
        raise


def _remove_tree(parent_fd: int, name: str, depth: int = 0) -> None:
    """Remove `name` and, if a directory, its contents; never follows a symlink."""
    st = _lstat(name, parent_fd)
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent_fd)
        return
    if depth > 8:
        raise _EntryError(f"{name}: directory nesting too deep to remove")
    fd = _open_subdir(name, parent_fd)
    try:
        for entry in os.listdir(fd):
            _remove_tree(fd, entry, depth + 1)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)


def _new_set_id(prefix: str = "") -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{prefix}{stamp}-{secrets.token_hex(2)}"


def _age_key(set_id: str) -> str:
    """Sort key: the timestamp, legacy and kept sets among the others."""
    return set_id.removeprefix(LEGACY_PREFIX).removeprefix(KEPT_PREFIX)


def _reason(exc: OSError | _EntryError) -> str:
    """The text of a low-level failure, naming the entry it concerns."""
    if isinstance(exc, _EntryError):
        return str(exc)
    name = f": {exc.filename}" if exc.filename else ""
    return f"{exc.strerror}{name}"


def _live_set(dir_fd: int) -> str | None:
    """The id of the set `.live` points to, or None if none (or foreign)."""
    target = _readlink(LIVE, dir_fd)
    if target is None or not target.startswith(SETS + "/"):
        return None
    set_id = target[len(SETS) + 1 :]
    return set_id if _SET_ID_RE.fullmatch(set_id) else None


def _pending(sets_fd: int, live_id: str | None) -> list[str]:
    """Complete kept sets newer than the live one (all, if none is live),
    newest first: sets an install wrote but could not publish."""
    found = [
        name
        for name in os.listdir(sets_fd)
        if _SET_ID_RE.fullmatch(name)
        and name.startswith(KEPT_PREFIX)
        and (live_id is None or _age_key(name) > _age_key(live_id))
        and _is_complete(sets_fd, name)
    ]
    return sorted(found, key=_age_key, reverse=True)


def lock_holder(dir_fd: int) -> str | None:
    """Who holds the flock on the directory `dir_fd` ("pid N, NAME"), from
    /proc/locks; None where that is not visible."""
    st = os.fstat(dir_fd)
    # /proc/locks names the file by device (hex major:minor) and inode.
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        text = fsutil.read_file(PROC_LOCKS, MAX_PROC_LOCKS).decode("ascii", "replace")
    except (OSError, FileTooLarge, NotRegularFile):
        return None
    for line in text.splitlines():
        # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"; a waiter's has "->" after "1:".
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted:
            pid = fields[4]
            if not pid.isdigit() or pid == "0":
                return None
            try:
                name = fsutil.read_file(f"/proc/{pid}/comm", 64).decode("utf-8", "replace")
            except (OSError, FileTooLarge, NotRegularFile):
                return f"pid {pid}"
            return f"pid {pid}, {safe_text(name.strip(), 16)}"
    return None


def read_pending(dir_fd: int, path: str) -> tuple[str, bytes] | None:
    """The newest pending set of the certificate directory `dir_fd` (named
    `path` in messages): its id and its fullchain.pem, or None.

    For revokeproc, which only reads (an O_PATH descriptor will do).
    """
    set_id = ""
    try:
        st = _lstat(SETS, dir_fd)
        if st is None or not stat.S_ISDIR(st.st_mode):
            return None
        sets_fd = _open_subdir(SETS, dir_fd)
        try:
            pending = _pending(sets_fd, _live_set(dir_fd))
            if not pending:
                return None
            set_id = pending[0]
            set_fd = _open_subdir(set_id, sets_fd)
            try:
                return set_id, _read_file(FULLCHAIN, set_fd, MAX_CHAIN_BYTES)
            finally:
                os.close(set_fd)
        finally:
            os.close(sets_fd)
    except (OSError, _EntryError) as exc:
        where = f"{path}/{SETS}/{set_id}" if set_id else f"{path}/{SETS}"
        raise FileStoreError(f"kept certificate set {where}: {_reason(exc)}") from None


def _is_complete(sets_fd: int, set_id: str) -> bool:
    try:
        fd = _open_subdir(set_id, sets_fd)
    except OSError:
        return False
    try:
        for name in CERT_FILES:
            st = _lstat(name, fd)
            if st is None or not stat.S_ISREG(st.st_mode):
                return False
        return True
    finally:
        os.close(fd)


def _build_set(sets_fd: int, files: dict[str, bytes], prefix: str = "") -> str:
    """Write `files` into a new, fully fsynced set directory; return its id."""
    set_id = _new_set_id(prefix)
    temp = TEMP_PREFIX + set_id
    os.mkdir(temp, DIR_MODE, dir_fd=sets_fd)
    try:
        fd = _open_subdir(temp, sets_fd)
        try:
            os.fchmod(fd, DIR_MODE)  # mkdir's mode is subject to umask
            for name, data in files.items():
                _write_file(fd, name, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, set_id, src_dir_fd=sets_fd, dst_dir_fd=sets_fd)
    except Exception:
        # E.g. a full disk: leave nothing behind (_recover would, later).
        with contextlib.suppress(OSError, _EntryError):
            _remove_tree(sets_fd, temp)
        raise
    os.fsync(sets_fd)
    return set_id


def _check_pem(data: bytes, what: str, allow_empty: bool) -> int:
    """Count the certificates in `data`, refusing anything that is not PEM.

    fileproc's one check of what it is given: it trusts certproc's
    verification of the chain but not the bytes that reach it, and carries
    no X.509 parser, so this checks the text and the DER framing (see pem).
    """
    if not data:
        if allow_empty:
            return 0
        raise InputError(f"{what} rejected: empty")
    if len(data) > MAX_CERT_BYTES:
        raise InputError(f"{what} rejected: larger than {MAX_CERT_BYTES} bytes")
    if not data.startswith(PEM_BEGIN) or not data.isascii():
        raise InputError(f"{what} rejected: not a PEM certificate")
    try:
        return len(certificate_ders(data, MAX_CERT_BYTES))
    except CertificateRejected as exc:
        raise InputError(f"{what} rejected: {exc}") from None


def _make_files(cert_pem: bytes, chain_pem: bytes) -> dict[str, bytes]:
    if _check_pem(cert_pem, CERT, allow_empty=False) != 1:
        raise InputError(f"{CERT} must hold exactly one certificate")
    _check_pem(chain_pem, CHAIN, allow_empty=True)
    separator = b"" if cert_pem.endswith(b"\n") else b"\n"
    return {CERT: cert_pem, CHAIN: chain_pem, FULLCHAIN: cert_pem + separator + chain_pem}


# --- the certificate directory ----------------------------------------------


class CertDir:
    """A certificate directory, opened once; every operation is relative to it."""

    def __init__(self, path: str, create: bool = False) -> None:
        self.path = path
        # Whether this CertDir holds the run's lock (see lock), and made .sets.
        self.locked = False
        self.made_sets = False
        # flock does not exclude the threads that share our descriptor.
        self._mutex = threading.Lock()
        if create:
            make_directories(path, DIR_MODE)
        try:
            if create:
                make_directories(path, DIR_MODE)
            self.fd = fsutil.open_directory(path)
        except FileNotFoundError:
            raise FileStoreError(f"certificate directory {path}: no such directory") from None
        except OSError as exc:
            raise FileStoreError(f"certificate directory {path}: {exc.strerror}") from None

    def close(self) -> None:
        """Remove `.sets` if prepare_install made it and it is still empty,
        then close the directory, which releases the run's lock."""
        with self._mutex:
            if self.fd < 0:
                return
            if self.made_sets:
                # Best effort: an empty .sets left behind is harmless.
                with contextlib.suppress(OSError):
                    self._remove_empty_sets()
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "CertDir":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _error(self, message: str) -> FileStoreError:
        return FileStoreError(f"certificate directory {self.path}: {message}")

    @contextlib.contextmanager
    def _errors_named(self) -> Iterator[None]:
        """Turn low-level failures into one FileStoreError naming the directory."""
        try:
            yield
        except (OSError, _EntryError) as exc:
            raise self._error(_reason(exc)) from None

    def lock(self, wait: float = LOCK_WAIT, give_up: Callable[[], bool] = lambda: False) -> bool:
        """Take the run's lock on the directory, held until close(): wait up to
        `wait` seconds while another holds it, then refuse, naming it.  False
        if `give_up()` said so while waiting (a stop signal came)."""
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if give_up():
                    return False
                if time.monotonic() < deadline:
                    time.sleep(LOCK_POLL)
                    continue
                holder = lock_holder(self.fd)
                who = f" ({holder})" if holder else ""
                waited = f"; gave up after {wait:g} s" if wait else ""
                raise self._error(f"another run holds its lock{who}{waited}") from None
            self.locked = True
            return True

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One change at a time: under the run's lock, or a lock of its own."""
        with self._mutex:
            if self.locked:
                with self._errors_named():
                    yield
                return
            self.lock(wait=0)
            try:
                with self._errors_named():
                    yield
            finally:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
                self.locked = False

    # --- inspection ---

    def _open_sets(self) -> int | None:
        """Open `.sets` if it exists; refuse anything but a real directory."""
        st = _lstat(SETS, self.fd)
        if st is None:
            return None
        if not stat.S_ISDIR(st.st_mode):
            raise self._error(f"{SETS} is not a directory (a symlink?), refusing to use it")
        return _open_subdir(SETS, self.fd)

    def _create_sets(self) -> int:
        fd = self._open_sets()
        if fd is not None:
            return fd
        os.mkdir(SETS, DIR_MODE, dir_fd=self.fd)
        fd = _open_subdir(SETS, self.fd)
        os.fchmod(fd, DIR_MODE)  # mkdir's mode is subject to umask
        os.fsync(self.fd)
        return fd

    def _remove_empty_sets(self) -> None:
        sets_fd = self._open_sets()
        if sets_fd is None:
            return
        try:
            empty = not os.listdir(sets_fd)
        finally:
            os.close(sets_fd)
        if empty:
            os.rmdir(SETS, dir_fd=self.fd)
            os.fsync(self.fd)

    def _preflight(self) -> list[str]:
        """Refuse entries we must not replace; return stable names that are regular files."""
        live = _lstat(LIVE, self.fd)
        if live is not None and not stat.S_ISLNK(live.st_mode):
            raise _EntryError(f"{LIVE} exists and is not a symlink, refusing to replace it")
        legacy: list[str] = []
        for name in CERT_FILES:
            st = _lstat(name, self.fd)
            if st is None or stat.S_ISLNK(st.st_mode):
                continue
            if not stat.S_ISREG(st.st_mode):
                raise _EntryError(f"{name} is neither a file nor a symlink, refusing to replace it")
            legacy.append(name)
        return legacy

    # --- recovery ---

    def _remove_temp_links(self) -> None:
        """Temporary symlinks and generation files that a crash left behind."""
        removed = False
        for name in os.listdir(self.fd):
            is_temp_link = _TEMP_LINK_RE.fullmatch(name) is not None
            is_temp_generation = _TEMP_GENERATION_RE.fullmatch(name) is not None
            st = _lstat(name, self.fd) if is_temp_link or is_temp_generation else None
            if st is None:
                continue
            if (is_temp_link and stat.S_ISLNK(st.st_mode)) or (
                is_temp_generation and stat.S_ISREG(st.st_mode)
            ):
                os.unlink(name, dir_fd=self.fd)
                removed = True
        if removed:
            os.fsync(self.fd)

    def _is_leftover(self, sets_fd: int, name: str, live_id: str | None) -> bool:
        """A set being written when a crash came, or half removed."""
        if name.startswith(TEMP_PREFIX):
            return True
        return (
            _SET_ID_RE.fullmatch(name) is not None
            and not name.startswith(LEGACY_PREFIX)
            and name != live_id
            and not _is_complete(sets_fd, name)
        )

    def _recover(self) -> None:
        self._remove_temp_links()
        sets_fd = self._open_sets()
        if sets_fd is None:
            return
        try:
            live_id = _live_set(self.fd)
            leftovers = [n for n in os.listdir(sets_fd) if self._is_leftover(sets_fd, n, live_id)]
            for name in leftovers:
                _remove_tree(sets_fd, name)
            if leftovers:
                os.fsync(sets_fd)
        finally:
            os.close(sets_fd)

    def _repair_generation(self) -> None:
        """A crash between the switch of .live and the write of .generation
        leaves the web server's signal naming the old set: name the live one."""
        live_id = _live_set(self.fd)
        if live_id is None:
            return
        wanted = f"{live_id}\n".encode()
        try:
            current = _read_file(GENERATION, self.fd, 4096)
        except (FileNotFoundError, _EntryError):
            current = b""
        if current != wanted:
            _write_file(self.fd, GENERATION, wanted)

    def tidy(self, backup: bool) -> None:
        """Remove what an interrupted install or removal left behind, then keep
        only what the backup policy keeps: without backups, the live set and
        the newest pending set alone (a crash may have left others behind)."""
        with self._locked():
            self._recover()
            # Reads .generation: fileproc's sandbox allows that only at start.
            self._repair_generation()
            sets_fd = self._open_sets()
            if sets_fd is None:
                return
            try:
                live_id = _live_set(self.fd)
                keep = [live_id] if live_id else []
                keep += _pending(sets_fd, live_id)[:1]
                if keep:
                    self._retire(sets_fd, keep, backup)
            finally:
                os.close(sets_fd)

    def prepare_install(self) -> None:
        """Make `.sets` now, while the directory is writable: a set written
        there is kept even if the directory itself is made read-only before
        the install.  close() removes it again if it is still empty."""
        with self._locked():
            existed = _lstat(SETS, self.fd) is not None
            os.close(self._create_sets())
            self.made_sets = not existed

    # --- install ---

    def _switch_live(self, set_id: str) -> None:
        _replace_symlink(self.fd, LIVE, f"{SETS}/{set_id}")
        os.fsync(self.fd)

    def _adopt_legacy(self, sets_fd: int, legacy: list[str]) -> None:
        """Back up regular files at the stable names into a legacy set."""
        files = {name: _read_file(name, self.fd, MAX_FILE_BYTES) for name in legacy}
        legacy_id = _build_set(sets_fd, files, LEGACY_PREFIX)
        if _lstat(LIVE, self.fd) is None:
            # The stable links will then show exactly the bytes readers saw.
            self._switch_live(legacy_id)

    def _ensure_links(self) -> None:
        changed = False
        for name in CERT_FILES:
            target = f"{LIVE}/{name}"
            if _readlink(name, self.fd) != target:
                _replace_symlink(self.fd, name, target)
                changed = True
        if changed:
            os.fsync(self.fd)

    def _retire(self, sets_fd: int, keep: Collection[str], backup: bool) -> None:
        """Remove the sets but `keep` that the backup policy does not keep."""
        if not backup:
            # Not only the previous set: a crash may have left complete sets
            # that never went live, or a previous one that was never retired.
            stale = [
                name
                for name in os.listdir(sets_fd)
                if _SET_ID_RE.fullmatch(name)
                and name not in keep
                and not name.startswith(LEGACY_PREFIX)
            ]
            for name in stale:
                _remove_tree(sets_fd, name)
        else:
            backups = sorted(
                (n for n in os.listdir(sets_fd) if _SET_ID_RE.fullmatch(n) and n not in keep),
                key=_age_key,
            )
            for name in backups[: max(0, len(backups) - MAX_BACKUPS)]:
                _remove_tree(sets_fd, name)
        os.fsync(sets_fd)

    def install(self, cert_pem: bytes, chain_pem: bytes, backup: bool = False) -> str:
        """Publish a new set (fullchain = cert + chain); return the new set's id.

        With `backup`, the previous sets are kept (at most MAX_BACKUPS);
        otherwise only the new one remains once it is live.  If the new set
        is complete but cannot be published, it is kept (see the module's
        docstring) and the error says so.
        """
        files = _make_files(cert_pem, chain_pem)
        with self._locked():
            self._recover()
            sets_fd = self._create_sets()
            try:
                new_id = _build_set(sets_fd, files)
                try:
                    self._publish(sets_fd, new_id)
                except (OSError, _EntryError) as exc:
                    reason = _reason(exc)
                    kept = KEPT_PREFIX + new_id
                    os.rename(new_id, kept, src_dir_fd=sets_fd, dst_dir_fd=sets_fd)
                    os.fsync(sets_fd)
                    raise self._error(
                        f"{reason}; kept the new certificate in {SETS}/{kept}: "
                        "the next run installs it"
                    ) from None
                _write_file(self.fd, GENERATION, f"{new_id}\n".encode())
                self._retire(sets_fd, [new_id], backup)
            finally:
                os.close(sets_fd)
        return new_id

    def _publish(self, sets_fd: int, new_id: str) -> None:
        """Make the complete set `new_id` the one the stable names show."""
        legacy = self._preflight()
        if legacy:
            self._adopt_legacy(sets_fd, legacy)
        # Links first: on a first install they dangle until .live
        # appears, so all three files appear at once.
        self._ensure_links()
        self._switch_live(new_id)

    # --- removal ---

    def remove_set(self, backup: bool = False) -> None:
        """Remove the current set (for revocation): `.live` first, so all three
        names disappear at once, then the stable names and the set itself.
        With `backup`, other (older) sets are kept, otherwise all are removed;
        kept sets are removed either way."""
        with self._locked():
            self._recover()
            live = _lstat(LIVE, self.fd)
            if live is not None and not stat.S_ISLNK(live.st_mode):
                raise self._error(f"{LIVE} exists and is not a symlink, refusing to remove it")
            current = _live_set(self.fd)
            if live is not None:
                os.unlink(LIVE, dir_fd=self.fd)
                os.fsync(self.fd)
            for name in CERT_FILES:
                st = _lstat(name, self.fd)
                if st is not None and not stat.S_ISDIR(st.st_mode):
                    os.unlink(name, dir_fd=self.fd)
            os.fsync(self.fd)
            self._remove_sets(current, keep_others=backup)
            if live is not None:
                _write_file(self.fd, GENERATION, b"removed\n")

    def _remove_sets(self, current: str | None, keep_others: bool) -> None:
        """Remove the current set, and the others unless `keep_others`; kept
        sets always: a removal supersedes them."""
        sets_fd = self._open_sets()
        if sets_fd is None:
            return
        try:
            for name in os.listdir(sets_fd):
                others = not keep_others or name.startswith(KEPT_PREFIX)
                if name == current or (others and _SET_ID_RE.fullmatch(name)):
                    _remove_tree(sets_fd, name)
            os.fsync(sets_fd)
        finally:
            os.close(sets_fd)
        self._remove_empty_sets()


# --- path-based conveniences ------------------------------------------------


def install(certdir: str, cert_pem: bytes, chain_pem: bytes, backup: bool = False) -> str:
    """Open `certdir` and install a new set in it; see CertDir.install."""
    with CertDir(certdir) as directory:
        return directory.install(cert_pem, chain_pem, backup)

