"""Beyond one key: what a run checks and keeps about the key files.

- **--key-type against an existing key.**  Given on the command line, it is
  the type the keys must have: an existing key of another type is refused
  (`key_type_mismatch`), never silently used.  The domain key can be
  replaced (`--rotate-domain-key`); the account key is replaced by an ACME
  key rollover (`--rollover-account-key`, below), so its type can be given
  on its own (`--account-key-type`), and a run that rotates the domain key
  does not hold the account key to --key-type.
- **Compromised domain keys.**  `-r --revoke-reason keyCompromise` says the
  domain key is compromised: keyproc records the SHA-256 of its public key
  (SubjectPublicKeyInfo, DER) in `compromised-keys` next to the key, at its
  start, before netproc sends anything, whether or not the CA then accepts
  the revocation (the operator's word is enough, and never using the key
  again is the safe side).  The run's own settings say so, never a peer:
  no RPC records a key.  keyproc refuses to serve a listed key in an issue
  run (a revocation of its certificate may still be repeated), and the
  command line refuses such a run before any role starts.  One digest per
  line, then the reason and the time; `#` starts a comment.
- **Rotation.**  `--rotate-domain-key` has keyproc make a new key at its
  start and write it next to the key as `<key>.new` (mode 0400, fsynced,
  renamed into place); the run is a forced renewal whose CSR is for the new
  key.  The live key is not touched during the run: if it fails, the old key
  and the old certificate still belong together, and the `.new` file is
  removed.  Once a certificate for the new key is installed the command line
  (native mode: the supervisor, which holds no key, and only renames) keeps
  the old key as `<key>.old-<UTC time>` (a hard link) and renames `.new` over
  the key, then fsyncs the directory: the old key is never lost, and the
  live key file is at every instant a whole key.  Between fileproc's switch
  to the new certificate and that rename (the few seconds the roles take to
  stop) the live pair does not match; a crash there leaves `.new` with the
  installed certificate for it, and the next run finishes the rotation
  before it starts any role (`finish_rotation`).  keyproc drops to an
  unprivileged user once it has opened its files, so it could not rename
  in a root-owned key directory after the certificate is in.
- **Account key rollover.**  `--rollover-account-key NEWKEY`: once acctproc
  says the CA accepted the key change (relay.REPORT_MARKER; see
  roles/acctproc.py), the command line copies NEWKEY to the account key's
  path (`replace_account_key`, in a child: mode 0400, fsynced, renamed
  into place), keeping the old key as `<key>.old-<UTC time>` as a rotation
  does.  NEWKEY itself stays where it is.
- **`probe`**: the type and public-key digest of key files, learned in a
  child process (not dumpable, which exits at once), so that no private key
  enters the memory of the supervisor; the installed certificate, which
  fileproc wrote, is parsed there too (`in_child`).

Standard library only at import (the command line runs in every container
image, some without cryptography); `keys` is imported where a key is read.
"""

import contextlib
import errno
import json
import os
import re
import secrets
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from letskencrypt import fsutil
from letskencrypt.errors import KeyFileError, KeyFileMissing, LetskencryptError
from letskencrypt.linux import PR_SET_DUMPABLE, prctl

COMPROMISED_LIST = "compromised-keys"
MAX_COMPROMISED_LIST = 256 * 1024
COMPROMISED_LIST_MODE = 0o644
COMPROMISED_HEADER = (
    "# SHA-256 of the public keys (SubjectPublicKeyInfo, DER) of domain keys revoked\n"
    "# for keyCompromise: letskencrypt never uses them again.\n"
)
_DIGEST = re.compile(r"[0-9a-f]{64}")
PENDING_SUFFIX = ".new"
OLD_SUFFIX = ".old-"
# What a probe child may send back: a few short lines of JSON; how long it
# may take (an RSA key and a certificate parse in milliseconds).
MAX_PROBE_REPLY = 64 * 1024
PROBE_TIMEOUT = 30.0


# --- --key-type ---------------------------------------------------------------------


def key_type_mismatch(what: str, path: str, actual: str, wanted: str) -> str:
    """The one line that refuses an existing key of another type than asked
    (--key-type; for the account key --account-key-type if given)."""
    if what == "domain key":
        return (
            f"domain key {path} is {actual}, not {wanted} as --key-type asks: give "
            f"--rotate-domain-key to replace it with a new {wanted} key, or leave out --key-type"
        )
    return (
        f"{what} {path} is {actual}, not {wanted}: give --account-key-type {actual} to keep "
        f"it, or --rollover-account-key NEWKEY to change the account to a new {wanted} key"
    )


def check_key_type(what: str, path: str, actual: str, wanted: str) -> None:
    if actual != wanted:
        raise KeyFileError(key_type_mismatch(what, path, actual, wanted))


# --- compromised domain keys --------------------------------------------------------------


def compromised_list(key_path: str) -> str:
    """The deny list that goes with a domain key: in the key's directory."""
    return os.path.join(os.path.dirname(os.path.abspath(key_path)), COMPROMISED_LIST)


def compromised_message(key_path: str) -> str:
    return (
        f"domain key {key_path} was revoked for keyCompromise (listed in "
        f"{compromised_list(key_path)}): give --rotate-domain-key to make a new key"
    )


def _read_list(path: str) -> bytes:
    try:
        return fsutil.read_file(path, MAX_COMPROMISED_LIST)
    except FileNotFoundError:
        return b""
    except fsutil.FileTooLarge:
        raise KeyFileError(f"{path}: larger than {MAX_COMPROMISED_LIST} bytes") from None
    except fsutil.NotRegularFile:
        raise KeyFileError(f"{path}: not a regular file") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise KeyFileError(f"{path}: is a symbolic link, refusing to follow it") from None
        raise KeyFileError(f"{path}: cannot read: {error.strerror}") from None


def _parse_list(path: str, data: bytes) -> frozenset[str]:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: not ASCII text") from None
    digests = set()
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        digest = words[0].lower()
        if not _DIGEST.fullmatch(digest):
            raise KeyFileError(f"{path}: line {number} does not start with a SHA-256 digest")
        digests.add(digest)
    return frozenset(digests)


def read_compromised(key_path: str) -> frozenset[str]:
    """The digests listed next to `key_path` (none if there is no list).
    A list that cannot be read or parsed is an error: it fails closed."""
    path = compromised_list(key_path)
    return _parse_list(path, _read_list(path))


def is_compromised(key_path: str, digest: str) -> bool:
    return digest.lower() in read_compromised(key_path)


def record_compromised(key_path: str, digest: str, now: datetime | None = None) -> bool:
    """Add `digest` to the list next to `key_path`, replacing the list
    atomically (temporary file, fsync, rename, directory fsync).
    Returns False if it was listed already."""
    path = compromised_list(key_path)
    data = _read_list(path)
    if digest.lower() in _parse_list(path, data):
        return False
    if not _DIGEST.fullmatch(digest.lower()):
        raise KeyFileError(f"{path}: {digest[:80]!r} is not a SHA-256 digest")
    when = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    if not data:
        data = COMPROMISED_HEADER.encode()
    elif not data.endswith(b"\n"):
        data += b"\n"
    data += f"{digest.lower()} keyCompromise {when}\n".encode()
    try:
        dir_fd = fsutil.open_directory(os.path.dirname(path))
    except OSError as error:
        raise KeyFileError(f"{path}: cannot open its directory: {error.strerror}") from None
    try:
        fsutil.replace(
            COMPROMISED_LIST,
            data,
            COMPROMISED_LIST_MODE,
            dir_fd=dir_fd,
            temp_name=f".{COMPROMISED_LIST}-{secrets.token_hex(8)}.tmp",
        )
    except OSError as error:
        raise KeyFileError(f"{path}: cannot write: {error.strerror}") from None
    finally:
        os.close(dir_fd)
    return True


# --- what the command line learns of a key file ------------------------------------------


@dataclass(frozen=True)
class KeyFacts:
    key_type: str
    spki_sha256: str


def probe(path: str, what: str, create_flag: str) -> KeyFacts:
    """The type and public-key digest of the key at `path`, read and parsed
    in a child process: the caller never holds the private key.  Raises
    KeyFileError with the message a role reading the key would give
    (KeyFileMissing when there is none)."""
    reply = in_child(lambda: _key_facts(path, what, create_flag), f"{what} {path}")
    return _facts(reply)


def _facts(reply: dict[str, object]) -> KeyFacts:
    if "missing" in reply:
        raise KeyFileMissing(str(reply["missing"]))
    if "error" in reply:
        raise KeyFileError(str(reply["error"]))
    return KeyFacts(key_type=str(reply["key_type"]), spki_sha256=str(reply["spki_sha256"]))


def in_child(work: Callable[[], dict[str, object]], what: str) -> dict[str, object]:
    """`work()`'s JSON answer, computed in a child process that is not
    dumpable and exits at once: what it reads (a private key, a certificate
    a role wrote) never enters this process, nor can a parser that
    misbehaves on it hang or crash us (PROBE_TIMEOUT, then SIGKILL)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_end)
        code = 0
        try:
            prctl(PR_SET_DUMPABLE, 0)
            reply = work()
        except BaseException:
            reply, code = {"error": f"{what}: cannot be read"}, 1
        try:
            fsutil.write_all(write_end, json.dumps(reply).encode()[:MAX_PROBE_REPLY])
        finally:
            os._exit(code)
    os.close(write_end)
    data = b""
    deadline = time.monotonic() + PROBE_TIMEOUT
    try:
        while len(data) <= MAX_PROBE_REPLY:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([read_end], [], [], remaining)[0]:
                os.kill(pid, signal.SIGKILL)
                data = b""
                break
            chunk = os.read(read_end, MAX_PROBE_REPLY + 1 - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    try:
        reply = json.loads(data)
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise KeyFileError(f"{what}: cannot be read")
    return reply


def _key_facts(path: str, what: str, create_flag: str) -> dict[str, object]:  # pragma: no cover
    from letskencrypt import keys

    try:
        key = keys.load_key(path, what, create_flag)
    except KeyFileMissing as error:
        return {"missing": str(error)}
    except KeyFileError as error:
        return {"error": str(error)}
    return {"key_type": keys.key_type_of(key), "spki_sha256": keys.spki_sha256(key)}


# --- rotation ----------------------------------------------------------------------------


def pending_key(key_path: str) -> str:
    """Where keyproc writes the new key of a rotation."""
    return key_path + PENDING_SUFFIX


def _installed_spki_sha256(cert_dir: str) -> str | None:  # pragma: no cover - in the child
    """The public-key digest of the installed certificate (cert.pem, which
    fileproc wrote), or None if there is none or it cannot be read (then no
    new key matches it)."""
    from letskencrypt import keys
    from letskencrypt.errors import CertificateFileError
    from letskencrypt.renewal import load_certificate_file

    try:
        certificate = load_certificate_file(os.path.join(cert_dir, "cert.pem"))
    except CertificateFileError:
        return None
    if certificate is None:
        return None
    try:
        return keys.spki_sha256(certificate.public_key())  # type: ignore[arg-type]
    except (LetskencryptError, ValueError):  # a key type we do not use
        return None


def _rotation_facts(pending: str, cert_dir: str) -> dict[str, object]:  # pragma: no cover
    facts = _key_facts(pending, "new domain key", "--rotate-domain-key")
    return {"pending": facts, "installed": _installed_spki_sha256(cert_dir)}


@dataclass(frozen=True)
class Rotation:
    """What finish_rotation did: `promoted` the new key (the old one kept as
    `old`, None if there was none), or removed an unused `.new`."""

    promoted: bool
    key_type: str = ""
    old: str | None = None


def finish_rotation(key_path: str, cert_dir: str, now: datetime | None = None) -> Rotation | None:
    """If `<key>.new` is there: put it in place when the installed
    certificate is for it, else remove it (no certificate for it was
    installed: the run that made it failed).  None if there is no `.new`."""
    pending = pending_key(key_path)
    try:
        os.lstat(pending)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise KeyFileError(f"{pending}: {error.strerror}") from None
    reply = in_child(lambda: _rotation_facts(pending, cert_dir), f"new domain key {pending}")
    try:
        pending_reply = reply.get("pending")
        facts: KeyFacts | None = _facts(pending_reply if isinstance(pending_reply, dict) else {})
    except (KeyFileError, KeyError):
        facts = None
    if facts is not None and facts.spki_sha256 == reply.get("installed"):
        old = promote(key_path, now or datetime.now(UTC))
        return Rotation(promoted=True, key_type=facts.key_type, old=old)
    try:
        os.unlink(pending)
        fsutil.fsync_directory(os.path.dirname(os.path.abspath(pending)))
    except FileNotFoundError:
        pass
    except OSError as error:
        raise KeyFileError(f"{pending}: cannot remove: {error.strerror}") from None
    return Rotation(promoted=False)


def promote(
    key_path: str, now: datetime, pending: str | None = None, what: str = "domain key"
) -> str | None:
    """Rename `pending` (a name in the key's directory; `<key>.new` by
    default) over the key, keeping the old key as `<key>.old-<time>`;
    returns that name (None: there was no old key)."""
    directory, name = os.path.split(os.path.abspath(key_path))
    pending = pending or name + PENDING_SUFFIX
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    try:
        dir_fd = fsutil.open_directory(directory)
    except OSError as error:
        raise KeyFileError(
            f"{what} {key_path}: cannot open {directory}: {error.strerror}"
        ) from None
    try:
        old = _keep_old(dir_fd, name, f"{name}{OLD_SUFFIX}{stamp}", f"{what} {key_path}")
        os.rename(pending, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)
    except OSError as error:
        raise KeyFileError(
            f"{what} {key_path}: cannot put the new key in place: {error.strerror}"
        ) from None
    finally:
        os.close(dir_fd)
    return None if old is None else os.path.join(directory, old)


def _keep_old(dir_fd: int, name: str, wanted: str, label: str) -> str | None:
    """A second name for the old key (a hard link; a rename where the file
    system has none), never over an existing file."""
    try:
        os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    for attempt in range(100):
        old = wanted if attempt == 0 else f"{wanted}-{attempt}"
        try:
            os.link(name, old, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileExistsError:
            continue
        except OSError as error:
            if error.errno not in (errno.EPERM, errno.EOPNOTSUPP):
                raise
            try:
                os.stat(old, dir_fd=dir_fd, follow_symlinks=False)
                continue
            except FileNotFoundError:
                pass
            # No hard links here: the old key moves aside (a crash before the
            # next rename leaves no key at the name, and the next run's
            # finish_rotation puts the new one there).
            os.rename(name, old, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)
        return old
    raise KeyFileError(f"{label}: too many old keys named {wanted}-N")


# --- account key rollover ----------------------------------------------------------------


def _copy_new_account_key(
    source: str, directory: str, temp_name: str, expected: str
) -> dict[str, object]:  # pragma: no cover - in the child
    """Write the key at `source` as `temp_name` in `directory` (mode 0400,
    fsynced), if its public key is the one whose digest is `expected`."""
    from cryptography.hazmat.primitives import serialization

    from letskencrypt import keys

    try:
        key = keys.load_key(source, "new account key", "--rollover-account-key")
    except KeyFileError as error:
        return {"error": str(error)}
    if keys.spki_sha256(key) != expected:
        return {"error": f"new account key {source}: no longer the key the CA changed the "
                         "account to"}  # fmt: skip
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    dir_fd = fsutil.open_directory(directory)
    try:
        fsutil.write_new(temp_name, pem, fsutil.KEY_FILE_MODE, dir_fd=dir_fd,
                         create_mode=fsutil.KEY_FILE_MODE)  # fmt: skip
    finally:
        os.close(dir_fd)
    return {"written": temp_name}


def replace_account_key(
    key_path: str, new_key_path: str, expected: str, now: datetime | None = None
) -> str | None:
    """After the CA accepted a key rollover to the key at `new_key_path`
    (whose public key's SHA-256 is `expected`): put a copy of it at
    `key_path`, keeping the old key as `<key>.old-<time>` (`promote`);
    returns that name.  The copy is made in a child (`in_child`): no private
    key enters this process.  `new_key_path` is left as it is.  A crash in
    between leaves the old key at `key_path` (and at most a temporary file
    beside it): the new key is still at `new_key_path`."""
    directory = os.path.dirname(os.path.abspath(key_path))
    temp_name = f".key-{secrets.token_hex(8)}.tmp"
    reply = in_child(
        lambda: _copy_new_account_key(new_key_path, directory, temp_name, expected),
        f"new account key {new_key_path}",
    )
    if reply.get("written") != temp_name:
        raise KeyFileError(str(reply.get("error") or f"new account key {new_key_path}: "
                                                     "cannot be copied"))  # fmt: skip
    try:
        return promote(key_path, now or datetime.now(UTC), pending=temp_name, what="account key")
    except KeyFileError:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, temp_name))
        raise
